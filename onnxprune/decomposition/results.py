"""What `decompose` returns: one record per layer and the result model."""
from __future__ import annotations

from dataclasses import dataclass

import onnx


@dataclass(frozen=True)
class LayerDecomposition:
    """What happened to one layer. `skipped` is None when the layer was replaced by a chain.

    `ranks` / `full_ranks`: (input rank, output rank) for Tucker, (rank,) for CP and SVD.
    `rel_error`: ||K - K_chain|| / ||K|| of the kernel. Params count weights; MACs use inferred
    shapes (unknown batch counted as 1). `nodes` / `factors`: the chain's node and weight names.
    `latency_before` / `latency_after`: with a cost model (cost= or target_latency=), the layer's measured
    latency and its chain's predicted latency at `ranks` in ms (None without one, or when not measured).
    """

    name: str
    op_type: str
    method: str
    ranks: tuple[int, ...] | None
    full_ranks: tuple[int, ...] | None
    rel_error: float | None
    params_before: int | None
    params_after: int | None
    macs_before: int | None
    macs_after: int | None
    skipped: str | None = None
    nodes: tuple[str, ...] = ()
    factors: tuple[str, ...] = ()
    latency_before: float | None = None
    latency_after: float | None = None

    @property
    def decomposed(self) -> bool:
        return self.skipped is None


@dataclass(frozen=True)
class DecompositionResult:
    model: onnx.ModelProto
    layers: list[LayerDecomposition]
    method: str
    reconstruction: object = None  # reconstruct=True: onnxprune.reconstruction.Reconstruction (last factors)
    latency: dict | None = None  # with a cost model: {target, total, predicted, predicted_fraction} (ms, ms, ms, x)

    @property
    def decomposed(self) -> list[LayerDecomposition]:
        return [layer for layer in self.layers if layer.decomposed]
