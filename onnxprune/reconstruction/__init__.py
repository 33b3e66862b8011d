"""Least-squares reconstruction: re-fit the layers after pruned channels (or the last factor of a decomposition
chain) on calibration data so their outputs match the unpruned model's (ThiNet; He et al. 2017).

    gram.py    streamed X^T X, X^T Y, sum Y^2 and the ridge solve
    activation.py  activation-aware targets of a layer read by a Relu / Clip alone (refit activation_aware=)
    layers.py  per consumer type: design rows (im2col for Conv), targets, reading and writing weights
    refit.py   topological stages, consecutive stages sharing a pass (at most DEFAULT_PASSES), the per-layer report
    api.py     reconstruct_pruned (prune(..., reconstruct=True)), reconstruct_chains (decompose(...))
    compensate.py  mean compensation (prune(..., compensate=True)) and its oracle
"""
from onnxprune.reconstruction.api import pruned_consumers, reconstruct_chains, reconstruct_pruned
from onnxprune.reconstruction.compensate import (
    Compensation,
    compensate_pruned,
    compensation_reference,
    verify_compensation,
)
from onnxprune.reconstruction.refit import (
    DEFAULT_RIDGE,
    FewSamplesWarning,
    LayerReconstruction,
    Reconstruction,
    refit,
)

__all__ = ["DEFAULT_RIDGE", "Compensation", "FewSamplesWarning", "LayerReconstruction", "Reconstruction",
           "compensate_pruned", "compensation_reference", "pruned_consumers", "reconstruct_chains",
           "reconstruct_pruned", "refit", "verify_compensation"]
