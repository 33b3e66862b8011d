"""`prune()` and `prune_by_index()`: analysis -> scores -> plan -> surgery -> (oracle)."""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from onnxprune import ir
from onnxprune.allocation import check_ratio, kept_count, lowest_scores
from onnxprune.coupling import Analysis, analyze
from onnxprune.criteria import CriterionContext, criterion_for
from onnxprune.errors import InvalidRequestError, UnsupportedError, VerificationError
from onnxprune.options import Options
from onnxprune.surgery.prune import apply


@dataclass
class PruneResult:
    model: onnx.ModelProto
    channels: dict[str, dict]  # tensor (original name) -> {"axes": [...], "mask": nested bools}
    plan: dict[int, list[int]]  # group id -> kept channel positions (units) of that group
    summary: "PruneSummary"
    exact: bool  # every pruned group is exact (the mask oracle applies to the whole model)
    pruned_groups: list[int] = field(default_factory=list)
    verification: Any = None
    reference: onnx.ModelProto | None = None  # the original's inputs/outputs, for save_model(reference=...)


class PruneSummary:
    """Params / MACs / size before and after; the after side is computed when first asked for."""

    def __init__(self, before, model_after: onnx.ModelProto, groups: list[dict]):
        self.before = before
        self.groups = groups  # per pruned group: id, layers, size, kept, exact
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
        }

    def __str__(self) -> str:
        from onnxprune.stats import compare

        return compare(self.before, self.after)


def prune(model, method: str = "l2", ratio: float | None = None, *, ratios: dict[str, float] | None = None,
          scope: str = "uniform", options: Options | None = None, calibration=None,
          gradients: dict[str, np.ndarray] | None = None, verify: bool = False, seed: int = 0) -> PruneResult:
    """Prune channels by a criterion.

    ratio: fraction of channels removed from every prunable group (uniform scope).
    ratios: {layer name: fraction} for chosen layers only (a layer's whole channel group is pruned;
        when two layers of one group get different ratios the larger wins).
    verify: run the mask oracle on the result and raise VerificationError if an exact group fails.
    """
    if (ratio is None) == (ratios is None):
        raise InvalidRequestError("give exactly one of ratio= (every group) or ratios= ({layer: ratio})")
    if scope != "uniform":
        raise InvalidRequestError(f"scope={scope!r} is not available yet; use scope='uniform'")
    options = options or Options()
    own = not isinstance(model, onnx.ModelProto) and not verify  # loaded here: ours to change in place
    model = ir.load_model(model)
    criterion = criterion_for(method)
    analysis = analyze(model, options)
    targets = _targets(analysis, ratio, ratios)
    context = CriterionContext(analysis, options, sorted(targets), calibration, gradients, seed)
    scores = criterion(context)
    removed: dict[int, np.ndarray] = {}
    for g, group_ratio in targets.items():
        size = analysis.groups[g].size
        n_remove = size - kept_count(size, group_ratio, options)
        if n_remove > 0:
            removed[g] = lowest_scores(np.asarray(scores.get(g, np.zeros(size)), dtype=np.float64), n_remove)
    _rescue_emptied_tensors(analysis, removed, scores)
    return _finish(model, analysis, removed, verify, own)


def prune_by_index(model, indices: dict[str, list[int]], *, options: Options | None = None,
                   verify: bool = False) -> PruneResult:
    """Remove exactly these output channels of these layers, and every channel coupled to them."""
    own = not isinstance(model, onnx.ModelProto) and not verify
    model = ir.load_model(model)
    if not isinstance(indices, dict) or not indices:
        raise InvalidRequestError("indices must be a non-empty {layer name: [channel indices]} mapping")
    analysis = analyze(model, options or Options())
    res = analysis.resolution
    removed_units: dict[int, set[int]] = {}
    for name, chosen in indices.items():
        layer = _find_layer(analysis, name)
        group = analysis.groups[layer.group]
        if not group.prunable:
            raise UnsupportedError(f"layer '{name}' ({layer.op_type}) cannot be pruned: {group.reason}")
        ids = analysis.layer_output_ids(name)
        chosen = list(chosen)
        bad = [c for c in chosen if not isinstance(c, (int, np.integer)) or isinstance(c, bool) or not 0 <= c < len(ids)]
        if bad:
            raise InvalidRequestError(f"layer '{name}' ({layer.op_type}) has {len(ids)} output channels; "
                                      f"indices {bad[:5]} are out of range [0, {len(ids) - 1}]")
        positions = analysis.unit_positions(group.id)
        removed_units.setdefault(group.id, set()).update(positions[int(u)] for u in res.unit[ids[chosen]])
    removed = {}
    for g, units in removed_units.items():
        if len(units) >= analysis.groups[g].size:
            raise InvalidRequestError(f"removing these channels would empty channel group {g} "
                                      f"(layers {analysis.groups[g].layers[:5]}); keep at least one")
        removed[g] = np.array(sorted(units), dtype=np.int64)
    for tensor, axis in _emptied_axes(analysis, removed):
        raise InvalidRequestError(f"removing these channels would empty tensor '{tensor}' (no channel left on axis "
                                  f"{axis}); keep at least one of its channels")
    return _finish(model, analysis, removed, verify, own)


def _targets(analysis: Analysis, ratio: float | None, ratios: dict[str, float] | None) -> dict[int, float]:
    if ratio is not None:
        check_ratio(ratio)
        return {g.id: float(ratio) for g in analysis.groups if g.prunable}
    if not isinstance(ratios, dict) or not ratios:
        raise InvalidRequestError("ratios must be a non-empty {layer name: ratio} mapping")
    targets: dict[int, float] = {}
    for name, value in ratios.items():
        check_ratio(value, f"ratios['{name}']")
        layer = _find_layer(analysis, name)
        group = analysis.groups[layer.group]
        if not group.prunable:
            raise UnsupportedError(f"layer '{name}' ({layer.op_type}) cannot be pruned: {group.reason}")
        targets[group.id] = max(targets.get(group.id, 0.0), float(value))
    return targets


def _find_layer(analysis: Analysis, name: str):
    layer = analysis.layer(name)
    if layer is None or layer.group is None:
        known = [layer.name for layer in analysis.layers]
        hint = difflib.get_close_matches(str(name), known, n=3)
        raise InvalidRequestError(f"no prunable layer named '{name}'"
                                  + (f"; did you mean {hint}?" if hint else "")
                                  + " (`onnxprune inspect MODEL` lists the layers)")
    return layer


def _emptied_axes(analysis: Analysis, removed: dict[int, np.ndarray]):
    """(tensor, axis) pairs that would lose every channel (e.g. one half of a Split)."""
    keep = _keep_mask(analysis, removed)
    for tensor, axes in analysis.walker.axes.items():
        for axis, ids in axes.items():
            if len(ids) and not keep[ids].any():
                yield tensor, axis


def _rescue_emptied_tensors(analysis: Analysis, removed: dict[int, np.ndarray], scores: dict) -> None:
    """Give back the best-scored channel of every tensor axis that would otherwise become empty."""
    res = analysis.resolution
    while True:
        emptied = next(iter(_emptied_axes(analysis, removed)), None)
        if emptied is None:
            return
        tensor, axis = emptied
        ids = analysis.walker.axes[tensor][axis]
        best = None
        for unit, group in zip(res.unit[ids].tolist(), res.group[ids].tolist()):
            g = analysis.group_of_internal[group]
            position = analysis.unit_positions(g)[unit]
            score = float(np.nan_to_num(np.asarray(scores.get(g, [0.0] * (position + 1)))[position], nan=-np.inf))
            if best is None or score > best[0]:
                best = (score, g, position)
        _, g, position = best
        removed[g] = removed[g][removed[g] != position]


def _keep_mask(analysis: Analysis, removed: dict[int, np.ndarray]) -> np.ndarray:
    res = analysis.resolution
    removed_unit = np.zeros(len(res.unit), dtype=bool)
    for g, positions in removed.items():
        removed_unit[analysis.group_units[g][positions]] = True
    return ~removed_unit[res.unit]


def _finish(model: onnx.ModelProto, analysis: Analysis, removed: dict[int, np.ndarray], verify: bool,
            own: bool) -> PruneResult:
    from onnxprune.stats import stats

    before = stats(model, shapes=analysis.walker.shapes)
    reference = _signature(model)
    surgery = apply(analysis, _keep_mask(analysis, removed), own=own)
    plan = {g: sorted(set(range(analysis.groups[g].size)) - set(p.tolist())) for g, p in removed.items()}
    exact = all(analysis.groups[g].exact for g in removed)
    group_rows = [{"id": g, "layers": analysis.groups[g].layers, "size": analysis.groups[g].size,
                   "kept": len(plan[g]), "exact": analysis.groups[g].exact} for g in sorted(removed)]
    result = PruneResult(model=surgery.model, channels=surgery.channels, plan=plan,
                         summary=PruneSummary(before, surgery.model, group_rows),
                         exact=exact, pruned_groups=sorted(removed), reference=reference)
    if verify:
        result.verification = _oracle(model, analysis, removed, result)
    return result


def _signature(model: onnx.ModelProto) -> onnx.ModelProto:
    """A weightless copy holding the model's graph inputs and outputs (what save_model checks against)."""
    light = onnx.ModelProto(ir_version=model.ir_version)
    light.opset_import.extend(model.opset_import)
    light.graph.name = model.graph.name
    initializers = {t.name for t in model.graph.initializer}
    light.graph.input.extend(v for v in model.graph.input if v.name not in initializers)
    light.graph.output.extend(model.graph.output)
    return light


def _oracle(model: onnx.ModelProto, analysis: Analysis, removed: dict[int, np.ndarray], result: PruneResult):
    """The mask oracle on the exact groups (inexact ones legitimately change values)."""
    from onnxprune.verify import verify_pruning

    target = result
    if not result.exact:
        exact_only = {g: p for g, p in removed.items() if analysis.groups[g].exact}
        surgery = apply(analysis, _keep_mask(analysis, exact_only))
        target = PruneResult(surgery.model, surgery.channels, {}, result.summary, True)
    report = verify_pruning(model, target)
    if not report.ok:
        raise VerificationError(f"mask oracle failed (max relative error {report.max_rel_error:.3g}):\n{report}")
    return report
