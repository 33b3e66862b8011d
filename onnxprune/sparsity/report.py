"""ShrinkBench's metrics for a sparsified model: size, nonzero size, compression, MACs, nonzero MACs, speed-up.

size: elements of every floating-point initializer (weights, biases, norms); nonzero size: those not zero;
compression = size / nonzero size. MACs: Conv / Gemm / MatMul (stats.node_macs); a layer's nonzero MACs are its
MACs times the density of its weight (each weight element takes part in the same number of MACs);
theoretical speed-up = MACs / nonzero MACs. Per layer and in total (non-weight MACs count dense).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from onnxprune.text import human

NOTE = ("onnxruntime on CPU runs zeros at dense speed: only the file size (storage 'sparse' or 'bitmask') and the "
        "theoretical figures (nonzero size, nonzero MACs, speed-up) change; latency does not. Remove channels "
        "(op.prune) or factorise layers (op.decompose) for a real speed-up.")


@dataclass
class LayerReport:
    name: str  # node name (first node reading the weight)
    op_type: str
    weight: str  # initializer name
    status: str  # "sparsified", "excluded: ...", "skipped: ..."
    size: int
    nonzero: int
    macs: int
    nonzero_macs: int
    storage: str = "dense"

    @property
    def sparsity(self) -> float:
        return 1 - self.nonzero / self.size if self.size else 0.0


@dataclass
class SparsityReport:
    strategy: str
    sparsity: float | None  # requested fraction of participating weights (None for nm)
    n: int  # the N:M pattern asked for (used by strategies without a sparsity, e.g. nm)
    m: int
    storage: str
    layers: list[LayerReport]
    size: int
    nonzero_size: int
    macs: int
    nonzero_macs: int
    size_before: int  # nonzero size of the input model
    file_bytes_before: int
    file_bytes: int
    note: str = NOTE
    extra: dict = field(default_factory=dict)

    @property
    def compression(self) -> float:
        return self.size / self.nonzero_size if self.nonzero_size else float("inf")

    @property
    def speedup(self) -> float:
        return self.macs / self.nonzero_macs if self.nonzero_macs else float("inf")

    @property
    def participating(self) -> list[LayerReport]:
        return [layer for layer in self.layers if layer.status == "sparsified"]

    @property
    def achieved_sparsity(self) -> float:
        """Fraction of zeros over the participating weights."""
        size = sum(layer.size for layer in self.participating)
        return 1 - sum(layer.nonzero for layer in self.participating) / size if size else 0.0

    def as_dict(self) -> dict:
        out = asdict(self)
        for entry, layer in zip(out["layers"], self.layers):
            entry["sparsity"] = layer.sparsity
        out.update(compression=self.compression, speedup=self.speedup, achieved_sparsity=self.achieved_sparsity)
        return out

    def __str__(self) -> str:
        rows = [[r.name, r.op_type, f"{r.size}", f"{r.sparsity:.1%}", human(r.macs), human(r.nonzero_macs),
                 r.storage if r.status == "sparsified" else "", r.status] for r in self.layers]
        header = ["layer", "op", "size", "sparsity", "MACs", "nz MACs", "storage", "status"]
        widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
        widths[0] = min(widths[0], 48)
        lines = ["  ".join(str(c)[-w:].ljust(w) for c, w in zip(row, widths)).rstrip() for row in [header] + rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        pattern = f" {self.n}:{self.m}" if self.sparsity is None else f" sparsity {self.sparsity:.3g}"
        lines += [
            "",
            f"strategy {self.strategy}{pattern}: {len(self.participating)} of {len(self.layers)} weight layers, "
            f"{self.achieved_sparsity:.2%} of their weights zero",
            f"size {human(self.size)}  nonzero {human(self.nonzero_size)} (was {human(self.size_before)})  "
            f"compression {self.compression:.2f}x",
            f"MACs {human(self.macs)}  nonzero MACs {human(self.nonzero_macs)}  "
            f"theoretical speed-up {self.speedup:.2f}x",
            f"file {human(self.file_bytes_before)}B -> {human(self.file_bytes)}B (storage {self.storage})",
            "note: " + self.note,
        ]
        return "\n".join(lines)
