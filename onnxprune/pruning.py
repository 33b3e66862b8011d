"""The pruning path: `prune`, `prune_by_index`, `make_plan` and `apply_plan` run the same stages,

    load -> analyze -> score -> allocate -> record -> surgery -> verify -> recover

(ir.load_model -> coupling.analyze -> criteria -> allocation -> plan.record_plan -> surgery.apply ->
recover.mask_oracle -> recover.recovered: reconstruction.compensate / reconstruct). With no method= named,
recipe.recommend chooses the criterion, scope, options and recovery first. A latency budget is allocated by
latency_allocation (the measured knapsack, and with the recommended re-fit its check against a uniform cut).
"""
from __future__ import annotations

import numpy as np
import onnx

from onnxprune import ir
from onnxprune.allocation import (check_ratio, emptied_axes, find_layer, group_targets, index_removal,
                                  lowest_removal, normalize, removal_counts, rescue_emptied_tensors)
from onnxprune.budget import Budget, allocate_budget, budget_cost, budget_request, budget_summary
from onnxprune.budget_ratio import ratio_for_budget
from onnxprune.cost import CostModel
from onnxprune.coupling import Analysis, analyze
from onnxprune.criteria import CRITERIA, CriterionContext, criterion_for
from onnxprune.criteria.registry import ALIASES
from onnxprune.errors import InvalidRequestError, UnsupportedError
from onnxprune.executor import uses_executor
from onnxprune.latency_allocation import checked_allocation, measured_latency, relaxed_latency
from onnxprune.options import Options
from onnxprune.plan import Plan, fingerprint, layers_digest, plan_removal, record_plan
from onnxprune.recipe import Recipe, checks_allocation, recommend
from onnxprune.recover import check_data_fixes, mask_oracle, recovered
from onnxprune.reconstruction.refit import DEFAULT_RIDGE
from onnxprune.result import PruneResult, PruneSummary
from onnxprune.surgery.prune import apply

__all__ = ["PruneResult", "PruneSummary", "apply_plan", "make_plan", "prune", "prune_by_index", "prune_with_plan"]

SCOPES = ("uniform", "global", "knapsack")  # knapsack: budgets only
RECOMMENDATIONS = (None, "slamp")


# --------------------------------------------------------------------------- the entry points

@uses_executor
def prune(model, method: str | None = None, ratio: float | None = None, *, ratios: dict[str, float] | None = None,
          scope: str | None = None, recommendation: str | None = None, options: Options | None = None,
          calibration=None, gradients: dict[str, np.ndarray] | None = None, verify: bool = False,
          seed: int = 0, compensate: bool | None = None, reconstruct: bool | None = None,
          ridge: float = DEFAULT_RIDGE, target_macs: float | None = None, target_params: float | None = None,
          target_latency: float | None = None, cost: CostModel | None = None,
          threads: int | None = None) -> PruneResult:
    """Prune channels by a criterion (`method`: a registered criterion or its NetsPresso spelling).

    method=None (default): the recommended pipeline (onnxprune.recipe) fills every knob not given: with
        calibration data the `obs` criterion, scope="global" with layer_norm="tss_norm", then compensate and
        reconstruct (with reconstruct=False: `fluctuation`, layer_norm="linear_scaling", compensate); without data
        `l2` with score_consumers=True and no recovery (a note says data would help). With target_latency= and
        the re-fit, the knapsack's cut and the uniform cut of the same measured budget are both re-fitted and
        the one closer to the original on the calibration data is kept (`summary.pipeline.allocation`).
        A given method= is the explicit pipeline: scope uniform (a budget: the knapsack), options as given,
        compensate / reconstruct off unless asked. `result.summary.pipeline` says what ran.
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
    target_macs / target_params / target_latency (instead of ratio= / ratios=): a budget, the fraction in (0, 1] of
        the original's MACs / params (onnxprune.stats counts) / measured latency to keep at most. Every prunable
        group's count is chosen together (onnxprune.budget: a greedy knapsack over the cost model taking the
        step that loses the least normalised importance (`options.layer_norm`) per unit of cost saved; at most
        `options.max_ratio` of a group, never all of it). Latency is counted in `cost=` (a CostModel, e.g.
        `op.profile(model)`), or in a fresh `op.profile(model, threads=threads)`. A latency budget is closed on
        measurement (onnxprune.latency_target): the cut model is measured against the original and, when more
        than 3% off the target, allocated again for a corrected prediction (at most 4 measured attempts).
        `result.summary.budget` gives the cost model's prediction for the pruned model, and for latency the
        measured fraction and milliseconds beside it.
    Kept counts are rounded per group by `options.step_size`/`step_op` (with a budget: to where a stepped cost
    model's staircase drops); `result.achieved_ratio` reports the fraction actually removed from the targeted groups.
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
    budget = budget_request(target_macs, target_params, target_latency, cost, threads)
    recipe = recommend(method, scope, options, compensate, reconstruct, calibration, budget and budget.kind,
                       allotted=ratios is not None or bool(recommendation))
    method, scope, options = recipe.method, recipe.scope, recipe.options
    compensate, reconstruct = recipe.compensate, recipe.reconstruct
    recommendation = _check_scope(scope, recommendation, ratio, ratios, budget)
    own = not isinstance(model, onnx.ModelProto) and not (verify or compensate or reconstruct)  # ours to change
    calibration = check_data_fixes(compensate, reconstruct, calibration)
    criterion = criterion_for(method)
    # a file loaded here with nothing run on it before surgery keeps its large weights in the file's bytes until
    # surgery has replaced them (the rest are given back below): they are never copied into the parsed model
    lazy = own and calibration is None and (budget is None or budget.kind != "latency")
    model, weights = ir.load_with_weights(model, lazy=lazy)
    analysis = analyze(model, options, weights=weights.arrays)
    targets = group_targets(analysis, 0.0 if budget else ratio, ratios)
    cost_model = budget_cost(budget, analysis) if budget else None
    context = CriterionContext(analysis, options, sorted(targets), calibration, gradients, seed)
    scores = _checked_scores(criterion(context), analysis, targets, method)
    if budget is not None and budget.kind == "latency":
        removed, measurement, recipe = relaxed_latency(context, scores, budget, cost_model, recipe)
        counts = {g: len(p) for g, p in removed.items()}
    else:
        counts = _counts(context, scores, targets, scope, recommendation, ratio, budget, cost_model)
        removed, measurement = rescue_emptied_tensors(analysis.channels, lowest_removal(scores, counts), scores), None

    def finished(removed: dict[int, np.ndarray], counts: dict[int, int], measurement: dict | None,
                 recipe: Recipe) -> PruneResult:
        """The cut model: plan, surgery, verify, recovery."""
        result = _prune_removed(model, analysis, removed, verify, own, sorted(targets), str(method), recipe.options)
        weights.inline(result.model)
        result.summary.pipeline = recipe
        if budget is not None:
            result.summary.budget = {**budget_summary(budget, cost_model, analysis, removed), **(measurement or {})}
        # the plan's layer values: the ratio asked for, or (global, SLAMP, budget) each group's computed ratio
        allotted = recipe.scope != "uniform" or recommendation or budget is not None
        requested = _group_ratios(analysis, targets, counts) if allotted else targets
        result.plan.describe(analysis, ratios=requested, scope=_plan_scope(recipe.scope, budget),
                             recommendation=recommendation, ratio=None if ratio is None else float(ratio), seed=seed)
        return recovered(model, result, compensate, reconstruct, calibration, ridge, verify, analysis, removed)

    result = finished(removed, counts, measurement, recipe)
    if checks_allocation(recipe, budget and budget.kind, calibration):
        result = checked_allocation(result, context, scores, budget, cost_model, recipe, finished)
    return result


@uses_executor
def prune_by_index(model, indices: dict[str, list[int]], *, options: Options | None = None,
                   verify: bool = False, calibration=None, compensate: bool = False, reconstruct: bool = False,
                   ridge: float = DEFAULT_RIDGE) -> PruneResult:
    """Remove exactly these output channels of these layers, and every channel coupled to them.
    compensate / reconstruct / calibration / ridge: as in prune()."""
    own = not isinstance(model, onnx.ModelProto) and not (verify or compensate or reconstruct)
    calibration = check_data_fixes(compensate, reconstruct, calibration)
    if not isinstance(indices, dict) or not indices:
        raise InvalidRequestError("indices must be a non-empty {layer name: [channel indices]} mapping")
    analysis = analyze(model, options or Options())
    model = analysis.model
    removed = index_removal(analysis, indices)
    result = _prune_removed(model, analysis, removed, verify, own, sorted(removed), "index")
    result.plan.describe(analysis, indices={name: list(chosen) for name, chosen in indices.items()})
    return recovered(model, result, compensate, reconstruct, calibration, ridge, verify, analysis, removed)


@uses_executor
def make_plan(model, method: str = "l2", ratio: float | None = None, *, scope: str | None = None,
              recommendation: str | None = None, options: Options | None = None, calibration=None,
              gradients: dict[str, np.ndarray] | None = None, seed: int = 0, target_macs: float | None = None,
              target_params: float | None = None, target_latency: float | None = None,
              cost: CostModel | None = None, threads: int | None = None) -> Plan:
    """A plan to edit: every prunable layer with a value slot (see the module doc).

    method: a criterion (NetsPresso spellings accepted); "index"/PR_ID gives `indices: []` slots to fill.
    ratio: None gives `ratio: 0.0` slots; with scope="uniform" every layer gets `ratio`; with scope="global"
        or recommendation="slamp" every layer gets its group's computed ratio (as `op.prune` would allot).
    target_macs / target_params / target_latency (+ cost, threads): every layer gets the ratio the budget allots
        its group (as `op.prune` with that budget; MACs / params before its rescue of emptied tensors, latency
        after it, as measured).
    calibration/gradients are needed only when computing the global scope or a budget with a data/gradient
    criterion.
    """
    options = options or Options()
    key = _canonical_method(method)
    budget = budget_request(target_macs, target_params, target_latency, cost, threads)
    scope = scope or ("knapsack" if budget is not None else "uniform")
    analysis = analyze(model, options)
    model = analysis.model
    plan = Plan(fingerprint(model), options, [], key)
    if key == "index":
        if ratio is not None or recommendation or scope != "uniform" or budget is not None:
            raise InvalidRequestError("an index (PR_ID) plan has `indices` slots to fill by hand; ratio=, scope=, "
                                      "recommendation= and target_*= do not apply to it")
        return plan.describe(analysis, indices={}, seed=seed)
    criterion = criterion_for(method)
    if budget is not None:
        _check_scope(scope, recommendation, ratio, None, budget)
        targets = group_targets(analysis, 0.0, None)
        context = CriterionContext(analysis, options, sorted(targets), calibration, gradients, seed)
        scores = _checked_scores(criterion(context), analysis, targets, key)
        if budget.kind == "latency":
            counts = {g: len(p) for g, p in measured_latency(context, scores, budget,
                                                             budget_cost(budget, analysis))[0].items()}
        else:
            counts = _counts(context, scores, targets, scope, None, None, budget, budget_cost(budget, analysis))
        return plan.describe(analysis, ratios=_group_ratios(analysis, targets, counts),
                             scope=_plan_scope(scope, budget), seed=seed)
    if ratio is None:
        if recommendation or scope != "uniform":
            raise InvalidRequestError(f"scope={scope!r}/recommendation={recommendation!r} allocate a ratio: give ratio=")
        return plan.describe(analysis, ratios={}, scope=scope, seed=seed)
    recommendation = _check_scope(scope, recommendation, ratio, None)
    targets = group_targets(analysis, ratio, None)
    if scope == "uniform" and not recommendation:
        values = targets
    else:
        context = CriterionContext(analysis, options, sorted(targets), calibration, gradients, seed)
        scores = (_checked_scores(criterion(context), analysis, targets, key) if scope == "global"
                  else {g: np.zeros(analysis.groups[g].size) for g in targets})  # SLAMP allots from lamp scores
        values = _group_ratios(analysis, targets, _counts(context, scores, targets, scope, recommendation, ratio))
    return plan.describe(analysis, ratios=values, scope=scope, recommendation=recommendation, ratio=float(ratio),
                         seed=seed)


@uses_executor
def apply_plan(model, plan, *, verify: bool = False, calibration=None,
               gradients: dict[str, np.ndarray] | None = None) -> PruneResult:
    """Prune exactly as a plan says (a Plan, its dict, a JSON file path or JSON text); see the module doc.

    A recorded plan (with `groups`) is replayed; otherwise its layer values are applied (indices first, then
    ratios with the plan's method, options and seed; calibration=/gradients= for data/gradient criteria).
    `result.plan` is the plan with what was actually removed recorded: applying it again replays the run.
    verify: run the mask oracle on the result and raise VerificationError if an exact group fails.
    """
    own = not isinstance(model, onnx.ModelProto) and not verify  # loaded here: ours to change in place
    plan = Plan.load(plan)
    analysis = analyze(model, plan.options)
    model = analysis.model
    actual = fingerprint(model)
    if plan.fingerprint != actual:
        raise InvalidRequestError(f"plan was made for another model (fingerprint {plan.fingerprint[:12]}..., this "
                                  f"model {actual[:12]}...); make a new plan for this model")
    if plan.recorded:
        if plan.layers_digest is not None and plan.layers_digest != layers_digest(plan.layers):
            raise InvalidRequestError("the plan's layer values were edited after its 'groups' were recorded; delete "
                                      "'groups' and 'layers_digest' to apply the edited values, or undo the edit to "
                                      "replay the recorded run")
        removed = plan_removal(analysis, plan)
        for tensor, axis in emptied_axes(analysis.channels, removed):
            raise InvalidRequestError(f"this plan would empty tensor '{tensor}' (no channel left on axis {axis}); "
                                      "keep at least one of its channels")
        result = _prune_removed(model, analysis, removed, verify, own, [g.id for g in plan.groups], plan.method)
    else:
        result = _apply_layer_values(model, analysis, plan, verify, own, calibration, gradients)
    result.plan.adopt(plan)
    return result


# Prune exactly as a plan says (kept under its earlier name).
prune_with_plan = apply_plan


# --------------------------------------------------------------------------- request checks

def _check_scope(scope: str, recommendation: str | None, ratio, ratios, budget: Budget | None = None) -> str | None:
    if scope not in SCOPES:
        raise InvalidRequestError(f"scope={scope!r} is not one of {list(SCOPES)}")
    if isinstance(recommendation, str):
        recommendation = recommendation.lower()
    if recommendation not in RECOMMENDATIONS:
        raise InvalidRequestError(f"recommendation={recommendation!r} is not one of {list(RECOMMENDATIONS)}")
    if budget is not None:
        if ratio is not None or ratios is not None:
            raise InvalidRequestError(f"give exactly one of ratio=, ratios= or a budget ({budget.keyword}=), not both")
        if recommendation:
            raise InvalidRequestError(f"{budget.keyword}= allots every group's count itself; recommendation= does "
                                      "not apply to it (scope= chooses how: knapsack, global or uniform)")
        if budget.kind == "latency" and scope != "knapsack":
            raise InvalidRequestError(f"target_latency= is allotted by the measured knapsack only; scope={scope!r} "
                                      "applies to target_macs= / target_params= (drop scope= or use 'knapsack')")
        return None
    if scope == "knapsack":
        raise InvalidRequestError("scope='knapsack' allots a budget: give target_macs=, target_params= or "
                                  "target_latency= with it (or scope 'uniform' / 'global' with ratio=)")
    if (ratio is None) == (ratios is None):
        raise InvalidRequestError("give exactly one of ratio= (every group) or ratios= ({layer: ratio}), or a budget: "
                                  "target_macs=, target_params= or target_latency=")
    if scope == "global" and recommendation:
        raise InvalidRequestError("scope='global' and recommendation='slamp' both allocate a global ratio; pick one")
    if (scope == "global" or recommendation) and ratios is not None:
        raise InvalidRequestError("the global scope and the SLAMP recommendation take one ratio= for the whole "
                                  "model, not per-layer ratios=")
    return recommendation


def _canonical_method(method) -> str:
    if not isinstance(method, str):
        criterion_for(method)  # raises the usual error
    key = ALIASES.get(method.lower(), method.lower())
    if key != "index":
        criterion_for(method)
    return key


# --------------------------------------------------------------------------- score and allocate

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


def _counts(context: CriterionContext, scores: dict[int, np.ndarray], targets: dict[int, float],
            scope: str, recommendation: str | None, ratio: float | None, budget: Budget | None = None,
            cost: CostModel | None = None) -> dict[int, int]:
    """How many units leave each targeted group: the one place a request's ratios (or budget) become counts."""
    analysis, options = context.analysis, context.options
    if budget is not None and scope != "knapsack":
        return ratio_for_budget(analysis, scores, cost, budget.fraction, options, scope)[1]
    if budget is not None:
        return allocate_budget(analysis, scores, cost, budget.fraction, options).counts
    pool = None
    if recommendation == "slamp":
        pool = CRITERIA["lamp"](context)
    elif scope == "global":
        pool = {g: normalize(s, options.layer_norm) for g, s in scores.items()}
    sizes = {g: analysis.groups[g].size for g in targets}
    return removal_counts(targets, sizes, options, pool=pool, ratio=ratio)


def _plan_scope(scope: str, budget: Budget | None) -> str:
    """The plan header's `scope`: the scope, or the budget that allotted the ratios ("target_macs=0.5" by the
    knapsack, "global target_macs=0.5" by one pooled ratio)."""
    if budget is None:
        return scope
    target = f"{budget.keyword}={budget.fraction:g}"
    return target if scope == "knapsack" else f"{scope} {target}"


def _group_ratios(analysis: Analysis, targets: dict[int, float], counts: dict[int, int]) -> dict[int, float]:
    """Each targeted group's computed ratio (removed / size): the layer values of global and SLAMP plans."""
    return {g: counts.get(g, 0) / analysis.groups[g].size for g in targets}


def _apply_layer_values(model: onnx.ModelProto, analysis: Analysis, plan: Plan, verify: bool, own: bool,
                        calibration, gradients) -> PruneResult:
    """A plan without a recording: its `indices` first (exactly those channels), then its ratios."""
    indices: dict[str, list[int]] = {}
    ratios: dict[str, float] = {}
    seen: set[str] = set()
    for entry in plan.layers:
        if entry.name in seen:
            raise InvalidRequestError(f"plan layer '{entry.name}' is listed twice")
        seen.add(entry.name)
        layer = find_layer(analysis, entry.name)
        group = analysis.groups[layer.group]
        if not group.prunable:
            raise UnsupportedError(f"layer '{entry.name}' ({layer.op_type}) cannot be pruned: {group.reason}")
        if (entry.group is not None and entry.group != layer.group) or \
                (entry.channels is not None and entry.channels != layer.out_channels):
            raise InvalidRequestError(f"plan layer '{entry.name}' (group {entry.group}, {entry.channels} channels) does "
                                      f"not match the model (group {layer.group}, {layer.out_channels} channels); "
                                      "were the plan's options edited? Make a new plan")
        if entry.indices is not None:
            if len(entry.indices):
                indices[entry.name] = list(entry.indices)
        elif check_ratio(entry.ratio, f"ratio of plan layer '{entry.name}'") > 0:
            ratios[entry.name] = entry.ratio
    removed = index_removal(analysis, indices) if indices else {}
    fixed = set(removed)
    method = plan.method or "l2"
    if ratios:
        targets = group_targets(analysis, None, ratios)
        for g in sorted(set(targets) & fixed):
            raise InvalidRequestError(f"channel group {g} (layers {analysis.groups[g].layers[:5]}) gets both indices "
                                      "and a ratio in this plan; give the layers of one group one kind of value")
        context = CriterionContext(analysis, plan.options, sorted(targets), calibration, gradients, plan.seed)
        scores = _checked_scores(criterion_for(method)(context), analysis, targets, method)
        removed.update(lowest_removal(scores, _counts(context, scores, targets, "uniform", None, None)))
        # channels picked by index are never given back; the rescue takes the best-scored ratio channel
        scores.update({g: np.full(analysis.groups[g].size, -np.inf) for g in fixed})
        removed = rescue_emptied_tensors(analysis.channels, removed, scores)
        removed = {g: p for g, p in removed.items() if len(p)}
    else:
        targets, method = {}, "index" if indices else method
    return _prune_removed(model, analysis, removed, verify, own, sorted(set(targets) | fixed), method)


# --------------------------------------------------------------------------- record, surgery, verify

def _prune_removed(model: onnx.ModelProto, analysis: Analysis, removed: dict[int, np.ndarray], verify: bool,
                   own: bool, targets: list[int], method: str | None, options: Options | None = None) -> PruneResult:
    """Record the plan (with `options`, default the analysis's), cut the model (surgery), and with `verify` run
    the mask oracle."""
    from onnxprune.stats import stats

    channels = analysis.channels
    before = stats(model, shapes=channels.shapes)
    reference = _signature(model)
    plan = record_plan(analysis, removed, options or channels.options, method, fingerprint(model))
    surgery = apply(analysis, channels.keep_mask(removed), own=own)
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
        result.verification = mask_oracle(model, analysis, removed, result)
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


