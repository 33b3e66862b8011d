"""Fine-grained, channel and N:M sparsity: masks applied to Conv / Gemm / MatMul weights (see api.sparsify).

Extension API: subclass LayerStrategy / ModelStrategy (or LayerImportance / GlobalImportance, or LayerRefit for
strategies that also change the kept weights) and register it
with register_strategy; the built-in strategies (strategies.py) are written the same way.
"""
from onnxprune.sparsity import calibrated as _calibrated  # noqa: F401  (registers wanda, sparsegpt)
from onnxprune.sparsity import strategies as _builtins  # noqa: F401  (registers the built-in strategies)
from onnxprune.sparsity.api import SparsifyResult, sparsify
from onnxprune.sparsity.base import (
    STRATEGIES,
    Context,
    GlobalImportance,
    LayerImportance,
    LayerRefit,
    LayerStrategy,
    ModelStrategy,
    Strategy,
    channel_mask,
    fraction_mask,
    global_masks,
    nm_mask,
    register_strategy,
)
from onnxprune.sparsity.layers import WeightLayer
from onnxprune.sparsity.report import LayerReport, SparsityReport

__all__ = [
    "STRATEGIES", "Context", "GlobalImportance", "LayerImportance", "LayerRefit", "LayerReport", "LayerStrategy",
    "ModelStrategy", "SparsifyResult", "SparsityReport", "Strategy", "WeightLayer", "channel_mask", "fraction_mask",
    "global_masks", "nm_mask", "register_strategy", "sparsify",
]
