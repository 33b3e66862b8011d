"""How prune() allocates a latency budget: the knapsack closed on measurement (onnxprune.latency_target), tried
again with a wider max_ratio when the recipe chose it and the target measured out of reach (recipe.relaxed); and
the recommended pipeline's check of that allocation (recipe.checks_allocation): the knapsack's cut against one
uniform ratio closed on measurement to the same budget, both re-fitted, the one whose outputs stay closer to the
original's on the calibration data kept."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np

from onnxprune.budget import Budget
from onnxprune.cost import CostModel
from onnxprune.criteria import CriterionContext
from onnxprune.errors import BudgetOutOfReachError
from onnxprune.fidelity import output_errors
from onnxprune.latency_target import TOLERANCE, measured_removal
from onnxprune.recipe import Recipe, relaxed
from onnxprune.result import PruneResult


def measured_latency(context: CriterionContext, scores: dict[int, np.ndarray], budget: Budget,
                     cost: CostModel) -> tuple[dict[int, np.ndarray], dict]:
    """A latency budget's removal, closed on measurement (onnxprune.latency_target), and its measurement."""
    analysis = context.analysis
    return measured_removal(analysis.model, analysis, scores, cost, budget.fraction, context.options, budget.threads)


def relaxed_latency(context: CriterionContext, scores: dict[int, np.ndarray], budget: Budget, cost: CostModel,
                    recipe: Recipe) -> tuple[dict[int, np.ndarray], dict, Recipe]:
    """measured_latency with the recipe's options; when the target measures out of reach there and the recipe
    chose the options, once more with its max_ratio raised (recipe.relaxed). Returns the recipe that ran."""
    try:
        return (*measured_latency(context, scores, budget, cost), recipe)
    except BudgetOutOfReachError:
        wider = relaxed(recipe)
        if wider is None:
            raise
    return (*measured_latency(replace(context, options=wider.options), scores, budget, cost), wider)


def checked_allocation(knapsack: PruneResult, context: CriterionContext, scores: dict[int, np.ndarray],
                       budget: Budget, cost: CostModel, recipe: Recipe,
                       finished: Callable[..., PruneResult]) -> PruneResult:
    """The knapsack's re-fitted result, or the uniform cut closed on measurement to the same budget and re-fitted
    the same way (`finished(removed, counts, measurement, recipe)`: prune()'s surgery and recovery), whichever stays
    closer to the original on the calibration data; the result's recipe says which, and why."""
    analysis = context.analysis
    try:
        removed, measurement = measured_removal(analysis.model, analysis, scores, cost, budget.fraction,
                                                recipe.options, budget.threads, allocator="uniform")
    except BudgetOutOfReachError:
        return described(knapsack, f"knapsack (no uniform ratio within max_ratio {recipe.options.max_ratio:g} "
                                   "reaches the budget)")
    within = max(knapsack.summary.budget["measured_fraction"], budget.fraction * (1.0 + TOLERANCE))
    if measurement["measured_fraction"] > within:
        return described(knapsack, f"knapsack (the closest uniform cut measured {measurement['measured_fraction']:.3f}"
                                   f" x, the knapsack's {knapsack.summary.budget['measured_fraction']:.3f} x)")
    uniform = finished(removed, {g: len(p) for g, p in removed.items()}, measurement, replace(recipe, scope="uniform"))
    errors = output_errors(analysis.model, [knapsack.model, uniform.model], context.calibration)
    chosen = uniform if errors[1] < errors[0] else knapsack
    return described(chosen, f"{chosen.summary.pipeline.scope} (output error on the calibration data after the "
                             f"re-fit: knapsack {errors[0]:.4f}, uniform ratio {uniform.achieved_ratio:.3f} "
                             f"{errors[1]:.4f}; measured {knapsack.summary.budget['measured_fraction']:.3f} x and "
                             f"{measurement['measured_fraction']:.3f} x)")


def described(result: PruneResult, allocation: str) -> PruneResult:
    """`result` with its recipe's `allocation` set."""
    result.summary.pipeline = replace(result.summary.pipeline, allocation=allocation)
    return result
