"""A latency budget closed on measurement: `op.prune(model, target_latency=t)` measures what it cut.

The allocator (onnxprune.budget) removes channels until the cost model predicts at most t x the original's
latency. The prediction is a sum of layers measured alone (micro-graphs), and a whole model is not exactly that
sum: onnxruntime converts layouts (NCHW <-> blocked NCHWc) between neighbouring layers, and a micro-graph sees
those conversions only at its own edges. So the pruned model is measured against the original (interleaved
rounds, medians, on the cost model's provider and thread count, in blocks of fresh sessions:
profile.timing.timed_in_blocks), and when the measured fraction is more than
TOLERANCE (relative) off t, the allocation is asked again for a corrected prediction:

  * after one measurement: measured savings per predicted saving, 1 - m = s (1 - p), solved for m = t;
  * after two or more: the secant through the last two (prediction, measurement) points, its slope bounded to
    [1/MAX_SLOPE, MAX_SLOPE] (two close attempts under machine noise can give any slope).

At most ATTEMPTS allocations are measured; the result is the one measured closest to t, and the summary
reports its prediction beside its measurement (and every attempt). A target the cost model predicts out of reach
is still tried: all that the constraints allow is cut and measured, and only when that measures more than
TOLERANCE above t is the budget refused.

The allocator is the knapsack (onnxprune.budget), or with `allocator="uniform"` one ratio for every group, the
least whose cut the cost model predicts within the request: the recommended pipeline's alternative to the
knapsack's cut (onnxprune.latency_allocation keeps whichever re-fits closer to the original on the calibration
data).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import numpy as np
import onnx

from onnxprune.allocation import lowest_removal, removal_counts, rescue_emptied_tensors
from onnxprune.budget import allocate_budget, layer_kept
from onnxprune.cost import CostModel, predicted_cost
from onnxprune.errors import BudgetOutOfReachError, InvalidRequestError
from onnxprune.options import Options
from onnxprune.surgery.prune import apply

TOLERANCE = 0.03
ATTEMPTS = 4
LOWEST_REQUEST = 0.01
MAX_SLOPE = 2.0
RATIO_STEPS = 14  # bisection steps of the uniform ratio (max_ratio / 2^14: under one unit of a 16k-unit group)

T = TypeVar("T")


@dataclass(frozen=True)
class Attempt:
    """One measured allocation: the fraction asked of the allocator, the cost model's prediction for what it
    chose, and the measured latency (ms, and as a fraction of the original's measured in the same rounds)."""

    asked: float
    predicted: float
    measured: float
    original_ms: float
    measured_ms: float
    exhausted: bool = False  # the allocator removed all that the constraints allow (its prediction is its floor)


def next_request(target: float, attempts: list[Attempt]) -> float | None:
    """The prediction to ask for next so that the measurement lands on `target`; None when the measurements
    give no usable direction (nothing saved, or latency rising as more is cut)."""
    last = attempts[-1]
    if last.exhausted and last.measured > target:
        return None  # nothing more can be cut
    if len(attempts) >= 2:
        before = attempts[-2]
        if last.predicted != before.predicted:
            slope = (last.measured - before.measured) / (last.predicted - before.predicted)
            if slope > 0:  # bounded: two close attempts under noise can give any slope
                slope = min(MAX_SLOPE, max(1.0 / MAX_SLOPE, slope))
                return _clamped(last.predicted + (target - last.measured) / slope)
    measured_saving, predicted_saving = 1.0 - last.measured, 1.0 - last.predicted
    if measured_saving <= 0 or predicted_saving <= 0:
        return None
    return _clamped(1.0 - (1.0 - target) * predicted_saving / measured_saving)


def _clamped(request: float) -> float:
    return min(1.0, max(LOWEST_REQUEST, request))


def close_on_measurement(target: float, attempt: Callable[[float], tuple[Attempt, T]]) -> tuple[Attempt, T,
                                                                                                list[Attempt]]:
    """Run `attempt(asked fraction)` from `target` until its measurement is within TOLERANCE of `target` or
    ATTEMPTS ran; (closest attempt, its payload, all attempts in order). The first attempt's errors propagate;
    a later request the allocator cannot reach ends the search."""
    first, payload = attempt(target)
    tried = [(first, payload)]
    while len(tried) < ATTEMPTS and abs(tried[-1][0].measured / target - 1.0) > TOLERANCE:
        request = next_request(target, [a for a, _ in tried])
        if request is None or any(abs(request - a.asked) < 1e-4 for a, _ in tried):
            break
        try:
            tried.append(attempt(request))
        except InvalidRequestError:
            break
        if any(abs(tried[-1][0].predicted - a.predicted) < 1e-9 for a, _ in tried[:-1]):
            break  # the allocator's steps are coarser than the correction: the same cut again
    best, chosen = min(tried, key=lambda pair: abs(pair[0].measured - target))
    return best, chosen, [a for a, _ in tried]


# --------------------------------------------------------------------------- measuring pruned models

def model_meter(model: onnx.ModelProto, environment: Mapping[str, Any]):
    """A ModelMeter on the original `model` with the environment's provider, threads and batch (the seam tests
    replace with a fake that has `measure(candidate) -> (original ms, candidate ms)`)."""
    from onnxprune.profile.timing import ModelMeter
    from onnxprune.workflows.bench import bench_inputs

    feed = bench_inputs(model, int(environment.get("batch") or 1))
    return ModelMeter(model, feed, environment.get("provider") or "CPUExecutionProvider", environment.get("threads"))


def predicted_fraction(analysis, cost: CostModel, removed: Mapping[int, np.ndarray]) -> float:
    """The cost model's latency for the model without `removed`, as a fraction of the original's."""
    return predicted_cost(cost, layer_kept(analysis, cost, removed)) / float(cost.total)


def measured_removal(model: onnx.ModelProto, analysis, scores: Mapping[int, np.ndarray], cost: CostModel,
                     target: float, options: Options, threads: int | None = None,
                     allocator: str = "knapsack") -> tuple[dict[int, np.ndarray], dict[str, Any]]:
    """Units to remove per group for a latency budget of `target` x the original, closed on measurement (see the
    module doc); (removed positions per group, the summary's measurement entries). `allocator`: "knapsack" or
    "uniform"."""
    environment = dict(getattr(cost, "environment", None) or {"threads": threads})
    meter = model_meter(model, environment)
    allocate = ALLOCATORS[allocator](analysis, scores, cost, options)

    def attempt(fraction: float) -> tuple[Attempt, dict[int, np.ndarray]]:
        removed, exhausted = allocate(fraction)
        predicted = predicted_fraction(analysis, cost, removed)
        original_ms, measured_ms = meter.measure(apply(analysis, analysis.channels.keep_mask(removed)).model)
        return Attempt(fraction, predicted, measured_ms / original_ms, original_ms, measured_ms, exhausted), removed

    best, removed, attempts = close_on_measurement(target, attempt)
    if best.exhausted and best.measured > target * (1.0 + TOLERANCE):
        raise BudgetOutOfReachError(
            f"the latency budget of {target:g} x the original cannot be reached: removing all that Options.max_ratio"
            f"={options.max_ratio:g} allows from the prunable groups measures {best.measured:.3f} x (predicted "
            f"{best.predicted:.3f} x); ask for more, or raise max_ratio")
    return removed, {"measured_fraction": best.measured, "measured_ms": best.measured_ms,
                     "original_ms": best.original_ms, "attempts": [asdict(a) for a in attempts]}


# --------------------------------------------------------------------------- allocators: fraction -> cut

Allocate = Callable[[float], tuple[dict[int, np.ndarray], bool]]  # (removed per group, exhausted)


def knapsack_allocator(analysis, scores: Mapping[int, np.ndarray], cost: CostModel, options: Options) -> Allocate:
    """The budget knapsack's cut for a predicted fraction (all that max_ratio allows when out of reach)."""
    def allocate(fraction: float) -> tuple[dict[int, np.ndarray], bool]:
        allocation = allocate_budget(analysis, scores, cost, fraction, options, exhaust=True)
        removed = rescue_emptied_tensors(analysis.channels, lowest_removal(scores, allocation.counts), scores)
        return removed, allocation.exhausted

    return allocate


def uniform_allocator(analysis, scores: Mapping[int, np.ndarray], cost: CostModel, options: Options) -> Allocate:
    """The least uniform ratio (bisection up to options.max_ratio) whose cut the cost model predicts within a
    fraction; exhausted (the max_ratio cut) when no ratio gets there."""
    def allocate(fraction: float) -> tuple[dict[int, np.ndarray], bool]:
        low, high = 0.0, float(options.max_ratio)
        widest = uniform_removal(analysis, scores, high, options)
        if predicted_fraction(analysis, cost, widest) > fraction:
            return widest, True
        for _ in range(RATIO_STEPS):
            middle = (low + high) / 2
            fits = predicted_fraction(analysis, cost, uniform_removal(analysis, scores, middle, options)) <= fraction
            low, high = (low, middle) if fits else (middle, high)
        return uniform_removal(analysis, scores, high, options), False

    return allocate


def uniform_removal(analysis, scores: Mapping[int, np.ndarray], ratio: float,
                    options: Options) -> dict[int, np.ndarray]:
    """The lowest-scored `ratio` of every group of `scores` (rounded by the options' step, tensors never
    emptied)."""
    sizes = {g: analysis.groups[g].size for g in scores}
    counts = removal_counts({g: ratio for g in scores}, sizes, options)
    return rescue_emptied_tensors(analysis.channels, lowest_removal(scores, counts), scores)


ALLOCATORS: dict[str, Callable[..., Allocate]] = {"knapsack": knapsack_allocator, "uniform": uniform_allocator}
