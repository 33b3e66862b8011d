"""A budget met by one ratio: the uniform and global scopes under target_macs= / target_params=.

`ratio_for_budget` bisects the ratio (uniform: of every group; global: of the pooled normalised scores, as the
global scope allots it) for the smallest one whose predicted cost (onnxprune.budget.layer_kept on the removal it
gives, counted exactly on the channel map) is at most fraction x the original, then gives back single steps
(highest-ranked removed unit first) while the prediction stays within the target. The knapsack
(onnxprune.budget.allocate_budget) prices each group's steps instead; which of the two keeps more accuracy is
measured in benchmarks/recovery.py (README "The recommended pipeline").
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from onnxprune.allocation import lowest_removal, normalize, removal_counts
from onnxprune.budget import layer_kept
from onnxprune.cost import CostModel, predicted_cost
from onnxprune.errors import BudgetOutOfReachError
from onnxprune.options import Options

HIGHEST = 0.999  # the largest ratio tried (allocation caps each group below all of it anyway)
ITERATIONS = 30  # bisection steps: the ratio to about 1e-9, far below one unit of any group


def ratio_for_budget(analysis, scores: Mapping[int, np.ndarray], cost: CostModel, fraction: float,
                     options: Options, scope: str) -> tuple[float, dict[int, int]]:
    """(ratio, units removed per group) of the smallest ratio whose predicted cost is at most fraction x
    cost.total; scope "uniform" (every group loses `ratio`) or "global" (the ratio*N lowest pooled scores).
    Raises BudgetOutOfReachError when even the largest ratio does not reach the target."""
    sizes = {g: len(s) for g, s in scores.items()}
    pool = {g: normalize(s, options.layer_norm) for g, s in scores.items()} if scope == "global" else None
    goal = fraction * float(cost.total) * (1 + 1e-12)

    def counts_at(ratio: float) -> dict[int, int]:
        return removal_counts({g: ratio for g in sizes}, sizes, options, pool=pool, ratio=ratio)

    def fits(counts: dict[int, int]) -> bool:
        return predicted_cost(cost, layer_kept(analysis, cost, lowest_removal(scores, counts))) <= goal

    if fits(counts_at(0.0)):
        return 0.0, counts_at(0.0)
    high = counts_at(HIGHEST)
    if not fits(high):
        predicted = predicted_cost(cost, layer_kept(analysis, cost, lowest_removal(scores, high)))
        raise BudgetOutOfReachError(
            f"the budget of {fraction:g} x the original cannot be reached with scope={scope!r}: the largest ratio "
            f"(at most Options.max_ratio={options.max_ratio:g} of a group, step {options.step_size}) predicts "
            f"{predicted / float(cost.total):.3f} x; ask for more, or raise max_ratio / lower step_size")
    low, top = 0.0, HIGHEST
    for _ in range(ITERATIONS):
        middle = 0.5 * (low + top)
        if fits(counts_at(middle)):
            top = middle
        else:
            low = middle
    return top, _refill(scores, counts_at(top), options, fits, pool or scores)


def _refill(scores: Mapping[int, np.ndarray], counts: dict[int, int], options: Options, fits,
            ranking: Mapping[int, np.ndarray]) -> dict[int, int]:
    """Give back one step of a group at a time while the budget still holds, the group whose last removed unit
    ranks highest (`ranking`: pooled or raw scores) first: one ratio moves every group's count at once, so it
    can overshoot the target by many units."""
    step = options.step_size if options.step_op != "none" else 1
    while True:
        order = sorted((g for g, k in counts.items() if k > 0),
                       key=lambda g: (-float(np.sort(ranking[g])[counts[g] - 1]), g))
        for g in order:
            size = len(scores[g])
            kept = min(size, ((size - counts[g]) // step + 1) * step)
            trial = {**counts, g: size - kept}
            if fits(trial):
                counts = trial
                break
        else:
            return counts
