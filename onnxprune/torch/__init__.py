"""The bridge back to PyTorch: apply an ONNX pruning result (or plan) to the `torch.nn.Module` it was exported from.

    result = op.prune("model.onnx", "l2", ratio=0.5)
    module = onnxprune.torch.apply_pruning(module, result)   # sliced in place, and returned
    optimizer = torch.optim.SGD(module.parameters(), ...)    # parameters were replaced: make the optimizer now

Needs PyTorch: pip install "onnxprune[torch]" (torch==2.13.0). torch is imported only when a function runs.
See onnxprune.torch.bridge for how names are matched and what is updated.
"""
from __future__ import annotations

from onnxprune.torch.bridge import BridgeError, apply_pruning, kept_indices

__all__ = ["apply_pruning", "kept_indices", "BridgeError"]
