"""What a pruning run returns: the pruned model, its record, plan and summary."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import onnx

from onnxprune.plan import Plan


@dataclass
class PruneResult:
    model: onnx.ModelProto
    channels: dict[str, dict]  # tensor (original name) -> {"axes": [...], "mask": nested bools}
    plan: Plan | None  # every prunable group -> kept unit positions; JSON with .to_json() / .save(path)
    summary: "PruneSummary"
    exact: bool  # every pruned group is exact (the mask oracle applies to the whole model)
    pruned_groups: list[int] = field(default_factory=list)
    achieved_ratio: float = 0.0  # units removed / units of the targeted groups
    verification: Any = None
    reference: onnx.ModelProto | None = None  # the original's inputs/outputs, for save_model(reference=...)
    compensation: Any = None  # compensate=True: onnxprune.reconstruction.Compensation (layers, means)
    reconstruction: Any = None  # reconstruct=True: onnxprune.reconstruction.Reconstruction (per-layer errors)
    # read-only: constant (original name) -> {axis: kept positions} for every sliced constant (onnxprune.torch)
    weights: dict[str, dict[int, list[int]]] = field(default_factory=dict)


class PruneSummary:
    """Params / MACs / size before and after; the after side is computed when first asked for."""

    def __init__(self, before, model_after: onnx.ModelProto, groups: list[dict]):
        self.before = before
        self.groups = groups  # per pruned group: id, layers, size, kept, exact
        # target_*= runs: kind, target, total, predicted, predicted_fraction; latency also measured_fraction,
        # measured_ms, original_ms and attempts (onnxprune.latency_target)
        self.budget: dict | None = None
        self.pipeline = None  # prune(): the onnxprune.recipe.Recipe that ran (what the recommended pipeline chose)
        self._model_after = model_after
        self._after = None

    @property
    def after(self):
        if self._after is None:
            from onnxprune.stats import stats

            self._after = stats(self._model_after)
        return self._after

    def as_dict(self) -> dict:
        return {
            "params": {"before": self.before.params, "after": self.after.params},
            "macs": {"before": self.before.macs, "after": self.after.macs},
            "size_bytes": {"before": self.before.size_bytes, "after": self.after.size_bytes},
            "layers": {name: {"params_before": s.params, "macs_before": s.macs,
                              "params_after": self.after.nodes[name].params if name in self.after.nodes else 0,
                              "macs_after": self.after.nodes[name].macs if name in self.after.nodes else 0}
                       for name, s in self.before.nodes.items() if s.params or s.macs},
            "groups": self.groups,
            **({"budget": self.budget} if self.budget is not None else {}),
            **({"pipeline": self.pipeline.as_dict()} if self.pipeline is not None else {}),
        }

    def __str__(self) -> str:
        from onnxprune.stats import compare

        text = compare(self.before, self.after)
        if self.budget is not None:
            b = self.budget
            text += (f"\nbudget: {b['kind']} <= {b['target']:g} x the original; predicted "
                     f"{b['predicted_fraction']:.3f} x")
            if "measured_fraction" in b:
                text += (f", measured {b['measured_fraction']:.3f} x ({b['measured_ms']:.3g} ms vs "
                         f"{b['original_ms']:.3g} ms, {len(b['attempts'])} measured attempt(s))")
        if self.pipeline is not None and self.pipeline.recommended:
            text += f"\n{self.pipeline}"
        return text
