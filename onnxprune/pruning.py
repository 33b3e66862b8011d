"""`prune()` and `prune_by_index()`: analysis -> scores -> plan -> surgery -> (oracle)."""
from __future__ import annotations

from collections.abc import Iterator
import difflib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from onnxprune import ir
from onnxprune.allocation import check_ratio, kept_count, lowest_scores, normalize, pooled_counts
from onnxprune.coupling import Analysis, analyze
from onnxprune.criteria import CRITERIA, CriterionContext, criterion_for
from onnxprune.errors import InvalidRequestError, UnsupportedError, VerificationError
from onnxprune.options import Options
from onnxprune.plan import Plan, apply_plan, fingerprint, record_plan
from onnxprune.reconstruction.refit import DEFAULT_RIDGE
from onnxprune.surgery.prune import apply

SCOPES = ("uniform", "global")
RECOMMENDATIONS = (None, "slamp")


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
          scope: str = "uniform", recommendation: str | None = None, options: Options | None = None,
          calibration=None, gradients: dict[str, np.ndarray] | None = None, verify: bool = False,
          seed: int = 0, compensate: bool = False, reconstruct: bool = False,
          ridge: float = DEFAULT_RIDGE) -> PruneResult:
    """Prune channels by a criterion (`method`: a registered criterion or its NetsPresso spelling).

    ratio: fraction of channels to remove.
        scope="uniform": from every prunable group.
        scope="global": over all prunable groups together; the criterion's scores are normalised per group by
            `options.layer_norm` and the lowest ratio*N go (N: all units); no group loses more than
            `options.max_ratio` of its units, nor all of them.
        recommendation="slamp": per-group ratios from LAMP scores (the `lamp` criterion: per layer, channel L2
            norms w sorted ascending score w_i^2 / sum_{j>=i} w_j^2; layers of a group combine by `policy`),
            pooled over all groups, the lowest ratio*N allotted as above; `method` then picks which channels
            go inside each group.
    ratios: {layer name: fraction} for chosen layers only (a layer's whole channel group is pruned;
        when two layers of one group get different ratios the larger wins).
    Kept counts are rounded per group by `options.step_size`/`step_op`; `result.achieved_ratio` reports
    the fraction actually removed from the targeted groups.
    gradients: {initializer name: gradient} for method="taylor". seed: for method="random".
    verify: run the mask oracle on the result and raise VerificationError if an exact group fails.
    compensate: after surgery, fold each removed channel's mean over `calibration` into the bias of every
        Conv / Gemm / MatMul that read it (one onnxruntime pass; onnxprune.reconstruction.compensate): the
        layers keep their average input level, which is what keeps a freshly pruned network from collapsing.
        With verify=True the compensation oracle also runs; `result.compensation` lists the layers. A one-shot
        iterator given as calibration is kept as a list (compensation reads the data in its own pass).
    reconstruct: after surgery (and compensation), re-fit every Conv / Gemm / MatMul that reads pruned channels
        on `calibration` (ridge least squares, layer by layer in topological order; onnxprune.reconstruction) so
        its output matches the unpruned model's; `ridge` is relative to the mean diagonal of X^T X. With verify=True the
        mask oracle checks the surgery BEFORE reconstruction (the fit changes values on purpose);
        `result.reconstruction` reports each layer's calibration error before and after its fit.
    """
    recommendation = _check_scope(scope, recommendation, ratio, ratios)
    options = options or Options()
    own = not isinstance(model, onnx.ModelProto) and not (verify or compensate or reconstruct)  # ours to change
    calibration = _check_data_fixes(compensate, reconstruct, calibration)
    model = ir.load_model(model)
    criterion = criterion_for(method)
    analysis = analyze(model, options)
    targets = _targets(analysis, ratio, ratios)
    context = CriterionContext(analysis, options, sorted(targets), calibration, gradients, seed)
    scores = _checked_scores(criterion(context), analysis, targets, method)
    counts = _removal_counts(context, scores, targets, scope, recommendation, ratio)
    removed = {g: lowest_scores(scores[g], n) for g, n in counts.items() if n > 0}
    _rescue_emptied_tensors(analysis, removed, scores)
    result = _finish(model, analysis, removed, verify, own, sorted(targets), str(method))
    # the plan's layer values: the ratio asked for, or (global, SLAMP) each group's computed ratio
    requested = targets if scope == "uniform" and not recommendation else \
        {g: counts.get(g, 0) / analysis.groups[g].size for g in targets}
    result.plan.describe(analysis, ratios=requested, scope=scope, recommendation=recommendation,
                         ratio=None if ratio is None else float(ratio), seed=seed)
    return _corrected(model, result, compensate, reconstruct, calibration, ridge, verify, analysis, removed)


# Prune exactly as a plan says: see onnxprune.plan.apply_plan (kept under its earlier name).
prune_with_plan = apply_plan


def _check_scope(scope: str, recommendation: str | None, ratio, ratios) -> str | None:
    if scope not in SCOPES:
        raise InvalidRequestError(f"scope={scope!r} is not one of {list(SCOPES)}")
    if isinstance(recommendation, str):
        recommendation = recommendation.lower()
    if recommendation not in RECOMMENDATIONS:
        raise InvalidRequestError(f"recommendation={recommendation!r} is not one of {list(RECOMMENDATIONS)}")
    if (ratio is None) == (ratios is None):
        raise InvalidRequestError("give exactly one of ratio= (every group) or ratios= ({layer: ratio})")
    if scope == "global" and recommendation:
        raise InvalidRequestError("scope='global' and recommendation='slamp' both allocate a global ratio; pick one")
    if (scope == "global" or recommendation) and ratios is not None:
        raise InvalidRequestError("the global scope and the SLAMP recommendation take one ratio= for the whole "
                                  "model, not per-layer ratios=")
    return recommendation


def _checked_scores(scores, analysis: Analysis, targets: dict[int, float], method: str) -> dict[int, np.ndarray]:
    """The criterion's scores as float arrays, one per unit of every targeted group."""
    checked = {}
    for g in targets:
        value = scores.get(g) if isinstance(scores, dict) else None
        size = analysis.groups[g].size
        if value is None or np.shape(value) != (size,):
            raise InvalidRequestError(f"criterion '{method}' must return {{group id: {size} scores}} for group {g} "
                                      f"(layers {analysis.groups[g].layers[:4]}); got "
                                      f"{None if value is None else list(np.shape(value))}")
        checked[g] = np.asarray(value, dtype=np.float64)
    return checked


def _removal_counts(context: CriterionContext, scores: dict[int, np.ndarray], targets: dict[int, float],
                    scope: str, recommendation: str | None, ratio: float | None) -> dict[int, int]:
    """How many units leave each targeted group."""
    options = context.options
    if recommendation == "slamp":
        return pooled_counts(CRITERIA["lamp"](context), ratio, options)
    if scope == "global":
        return pooled_counts({g: normalize(s, options.layer_norm) for g, s in scores.items()}, ratio, options)
    sizes = {g: len(scores[g]) for g in targets}
    return {g: sizes[g] - kept_count(sizes[g], r, options) for g, r in targets.items()}


def prune_by_index(model, indices: dict[str, list[int]], *, options: Options | None = None,
                   verify: bool = False, calibration=None, compensate: bool = False, reconstruct: bool = False,
                   ridge: float = DEFAULT_RIDGE) -> PruneResult:
    """Remove exactly these output channels of these layers, and every channel coupled to them.
    compensate / reconstruct / calibration / ridge: as in prune()."""
    own = not isinstance(model, onnx.ModelProto) and not (verify or compensate or reconstruct)
    calibration = _check_data_fixes(compensate, reconstruct, calibration)
    model = ir.load_model(model)
    if not isinstance(indices, dict) or not indices:
        raise InvalidRequestError("indices must be a non-empty {layer name: [channel indices]} mapping")
    analysis = analyze(model, options or Options())
    removed = _index_removal(analysis, indices)
    result = _finish(model, analysis, removed, verify, own, sorted(removed), "index")
    result.plan.describe(analysis, indices={name: list(chosen) for name, chosen in indices.items()})
    return _corrected(model, result, compensate, reconstruct, calibration, ridge, verify, analysis, removed)


def _check_data_fixes(compensate: bool, reconstruct: bool, calibration):
    """The calibration data, kept as a list when compensation's own pass would use up a one-shot iterator."""
    for flag, on in (("compensate", compensate), ("reconstruct", reconstruct)):
        if on and calibration is None:
            raise InvalidRequestError(f"{flag}=True needs calibration data: pass calibration=... (a dict of input "
                                      "arrays, an array for a single-input model, an iterable of either, or a path)")
    if compensate and isinstance(calibration, Iterator):
        return list(calibration)
    return calibration


def _corrected(model: onnx.ModelProto, result: PruneResult, compensate: bool, reconstruct: bool, calibration,
               ridge: float, verify: bool, analysis: Analysis, removed: dict[int, np.ndarray]) -> PruneResult:
    """The result with mean compensation and/or re-fitting applied in place, after the mask oracle (which
    checks the surgery); with verify, the compensation oracle checks the compensated model (its exact groups)."""
    if compensate:
        from onnxprune.reconstruction.compensate import compensate_pruned, verify_compensation

        done = compensate_pruned(model, result, calibration)
        if verify:
            target = _exact_part(analysis, removed, result)
            if target is not result:
                compensate_pruned(model, target, None, tensor_means=done.tensor_means)
            report = verify_compensation(model, target)
            done.verification = report
            if not report.ok:
                raise VerificationError(f"compensation oracle failed (max relative error "
                                        f"{report.max_rel_error:.3g}):\n{report}")
    if reconstruct:
        from onnxprune.reconstruction import reconstruct_pruned

        reconstruct_pruned(model, result, calibration, ridge=ridge)
    return result


def _index_removal(analysis: Analysis, indices: dict[str, list[int]]) -> dict[int, np.ndarray]:
    """group id -> removed unit positions for {layer: [output channels]}, checked (no emptied group/tensor)."""
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
    return removed


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
            own: bool, targets: list[int], method: str | None) -> PruneResult:
    from onnxprune.stats import stats

    before = stats(model, shapes=analysis.walker.shapes)
    reference = _signature(model)
    plan = record_plan(analysis, removed, analysis.walker.options, method, fingerprint(model))
    surgery = apply(analysis, _keep_mask(analysis, removed), own=own)
    kept = {g: analysis.groups[g].size - len(p) for g, p in removed.items()}
    exact = all(analysis.groups[g].exact for g in removed)
    group_rows = [{"id": g, "layers": analysis.groups[g].layers, "size": analysis.groups[g].size,
                   "kept": kept[g], "exact": analysis.groups[g].exact} for g in sorted(removed)]
    total = sum(analysis.groups[g].size for g in targets)
    achieved = sum(len(p) for p in removed.values()) / total if total else 0.0
    result = PruneResult(model=surgery.model, channels=surgery.channels, plan=plan,
                         summary=PruneSummary(before, surgery.model, group_rows), exact=exact,
                         pruned_groups=sorted(removed), achieved_ratio=achieved, reference=reference,
                         weights=surgery.weights)
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


def _exact_part(analysis: Analysis, removed: dict[int, np.ndarray],
                result: PruneResult) -> PruneResult:
    """`result` when every pruned group is exact, else the surgery of its exact groups alone (a new model)."""
    if result.exact:
        return result
    exact_only = {g: p for g, p in removed.items() if analysis.groups[g].exact}
    surgery = apply(analysis, _keep_mask(analysis, exact_only))
    return PruneResult(surgery.model, surgery.channels, None, result.summary, True)


def _oracle(model: onnx.ModelProto, analysis: Analysis, removed: dict[int, np.ndarray], result: PruneResult):
    """The mask oracle on the exact groups (inexact ones legitimately change values)."""
    from onnxprune.verify import verify_pruning

    report = verify_pruning(model, _exact_part(analysis, removed, result))
    if not report.ok:
        raise VerificationError(f"mask oracle failed (max relative error {report.max_rel_error:.3g}):\n{report}")
    return report
