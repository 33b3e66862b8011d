"""onnxprune: structured channel pruning and low-rank decomposition of ONNX models, proven with onnxruntime."""
from onnxprune.coupling import Analysis, ChannelGroup, Layer, analyze
from onnxprune.criteria import register_criterion
from onnxprune.errors import (
    ExternalDataError,
    InvalidModelError,
    InvalidRequestError,
    OnnxPruneError,
    UnsupportedError,
    VerificationError,
)
from onnxprune.ir import load_model, save_model
from onnxprune.options import Options
from onnxprune.pruning import PruneResult, prune, prune_by_index
from onnxprune.stats import stats
from onnxprune.verify import verify, verify_pruning


def decompose(model, method: str = "tucker", **kwargs):
    """Low-rank decomposition of layers (Tucker-2, CP, SVD); see onnxprune.decomposition.decompose."""
    from onnxprune.decomposition import decompose as _decompose

    return _decompose(model, method=method, **kwargs)


__all__ = [
    "Analysis", "ChannelGroup", "Layer", "Options", "PruneResult",
    "analyze", "decompose", "load_model", "prune", "prune_by_index", "register_criterion", "save_model",
    "stats", "verify", "verify_pruning",
    "OnnxPruneError", "InvalidModelError", "InvalidRequestError", "ExternalDataError", "UnsupportedError",
    "VerificationError",
]
