"""Filter decomposition: replace Conv / Gemm / MatMul layers by low-rank factor chains (Tucker-2, CP, SVD)."""
from onnxprune.decomposition.api import decomposable_layers, decompose, normalise_method
from onnxprune.decomposition.candidates import DecomposableLayer
from onnxprune.decomposition.oracle import DecompositionReport, verify_decomposition
from onnxprune.decomposition.results import DecompositionResult, LayerDecomposition

__all__ = [
    "DecomposableLayer", "DecompositionReport", "DecompositionResult", "LayerDecomposition",
    "decomposable_layers", "decompose", "normalise_method", "verify_decomposition",
]
