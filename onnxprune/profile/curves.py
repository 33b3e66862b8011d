"""Latency of one layer as a function of its kept channels: the measured grid and the model between its points.

Grid (grid_points): along each axis, counts 1 (one unit), every multiple of STEP (SMALL_STEP for axes of at most
SMALL_AXIS units) and the full count, with the other axis at full. On wide axes the step grows in multiples of
STEP so that an axis has at most MAX_POINTS points (budget: a 2048-channel axis is measured every 64). Plus
the corner (1 unit, 1 unit) and CHECKS diagonal points (i/I = o/O = 1/4, 1/2, 3/4) that are never fitted, only
used to measure the model's error. Depthwise (tied) layers have one axis: the kept input count, the output and
`group` following it.

The axis curves A_in(i) = L(i, O), A_out(o) = L(I, o) are staircases, as the runtime's blocked layouts make
them (a count off the block size runs as slowly as the next block, or slower). From the measured points
(axis_curve): latency never falls as channels are added (a measured dip, e.g. 8 channels slower than 16
because 8 is off the runtime's block, is pooled with its neighbours: isotonic regression), and neighbouring
points within STAIR_TOL of the layer's full latency of the top of their stair are one stair (measurement noise is
no step). Between grid points a count costs what the next grid point costs (the stair it is padded up to). So
the cheapest point of a stair is its top, the largest count at that latency, where the allocator snaps kept
counts. Not linear between points, on purpose: on wide axes (measured every 16 to 64 channels) a count between
two points is off the runtime's block, and in a whole model such a count costs more than the next block, not
less (a residual stream of 2037 channels instead of 2048 runs without the blocked layout, with layout
conversions around it).

The 2-D cost is the separable model with a fixed part

    L(i, o) = L0 + (A_in(i) - L0) * (A_out(o) - L0) / (F - L0),      F = L(I, O)

exact on both axes (o = O or i = I), with L0 (the cost that does not scale with either count: reading,
writing, the call) fitted so that the corner (1, 1) is exact too. With L0 = 0 this is the plain product model
L(F,F) * a(i) * b(o); the fixed part makes it right for small layers where overhead dominates.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import numpy as np

from onnxprune.errors import InvalidRequestError
from onnxprune.profile.layers import LayerSpec

STEP = 8
SMALL_STEP = 4
SMALL_AXIS = 32
MAX_POINTS = 32
CHECKS = (0.25, 0.5, 0.75)
STAIR_TOL = 0.02
OFF_TREND = 0.06  # a point this far (of the layer's full latency) off its neighbours' trend is timed again


def axis_grid(full: int, unit: int = 1) -> list[int]:
    """Measured counts along one axis of `full` channels kept in multiples of `unit`."""
    units = full // unit
    step = SMALL_STEP if units <= SMALL_AXIS else STEP
    if units > MAX_POINTS * step:
        step = STEP * math.ceil(units / (MAX_POINTS * STEP))
    return [u * unit for u in sorted({1, *range(step, units, step), units})]


def nearest(grid: list[int], value: float) -> int:
    return min(grid, key=lambda g: (abs(g - value), g))


def grid_points(spec: LayerSpec) -> list[tuple[int, int]]:
    """Every (kept_in, kept_out) to measure for the layer, without repeats."""
    full_in, full_out = spec.in_channels, spec.out_channels
    ins = axis_grid(full_in, spec.unit)
    if spec.tied:
        return [(k, k * spec.multiplier) for k in ins]
    outs = axis_grid(full_out, spec.unit)
    points = [(i, full_out) for i in ins] + [(full_in, o) for o in outs] + [(ins[0], outs[0])]
    points += [(nearest(ins, f * full_in), nearest(outs, f * full_out)) for f in CHECKS]
    return list(dict.fromkeys(points))


def axes_of(spec: LayerSpec, counts: list[tuple[int, int]]) -> list[list[tuple[int, int]]]:
    """Each axis's points of `counts` (grid_points) as (index into counts, count along the axis), in the order of
    the count: the input axis (kept_out full), then the output axis (kept_in full); a depthwise layer has one."""
    if spec.tied:
        return [sorted((k, i) for k, (i, _) in enumerate(counts))]
    along_in = [(k, i) for k, (i, o) in enumerate(counts) if o == spec.out_channels]
    along_out = [(k, o) for k, (i, o) in enumerate(counts) if i == spec.in_channels]
    return [sorted(along_in, key=lambda p: p[1]), sorted(along_out, key=lambda p: p[1])]


def trend_value(counts: list[int], values: list[float], j: int) -> float | None:
    """What point j's neighbours on its axis say it should cost: the line through the points either side (the
    last point: the line through the two before it); None for the first point (one unit, where the call's
    overhead dominates) and on axes of fewer than three points."""
    if j == 0 or len(values) < 3:
        return None
    a, b = (j - 1, j + 1) if j + 1 < len(values) else (j - 2, j - 1)
    slope = (values[b] - values[a]) / (counts[b] - counts[a])
    return values[a] + slope * (counts[j] - counts[a])


def off_trend(spec: LayerSpec, counts: list[tuple[int, int]], values: list[float],
              tolerance: float = OFF_TREND) -> dict[int, float]:
    """{index: its trend value} of the measured points more than `tolerance` x the layer's full latency off
    their neighbours' trend (trend_value), and farther off than those neighbours, to be timed again. One session
    can run several percent slow or fast for its whole life (on a ViT-B/16-like model's 768 x 3072 MatMul, 24
    input channels below full measured 19 % faster than full), and the allocator, which looks for cheap points,
    would choose exactly those."""
    if not values:
        return {}
    full = max(values)
    flagged: dict[int, float] = {}
    for axis in axes_of(spec, counts):
        along = [count for _, count in axis]
        ms = [values[k] for k, _ in axis]
        trend = [trend_value(along, ms, j) for j in range(len(ms))]
        off = [0.0 if t is None else abs(m - t) for m, t in zip(ms, trend)]
        for j, (k, _) in enumerate(axis):  # a point off the trend also bends its neighbours' lines: the worst only
            if off[j] > tolerance * full and off[j] >= max(off[max(j - 1, 0):j + 2]):
                flagged.setdefault(k, trend[j])
    return flagged


class LayerCurve:
    """The latency model of one layer signature, built from its measured points {(kept_in, kept_out): ms}."""

    def __init__(self, spec_in: int, spec_out: int, tied: bool, points: Mapping[tuple[int, int], float]) -> None:
        self.full = (int(spec_in), int(spec_out))
        self.tied = tied
        self.points = {(int(i), int(o)): float(ms) for (i, o), ms in points.items()}
        full_in, full_out = self.full
        if tied:
            self.in_axis = axis_curve([(i, ms) for (i, _), ms in self.points.items()])
            self.out_axis = self.in_axis
            self.fixed = 0.0
            return
        self.in_axis = self._through_full(axis_curve([(i, ms) for (i, o), ms in self.points.items() if o == full_out]))
        self.out_axis = self._through_full(axis_curve([(o, ms) for (i, o), ms in self.points.items() if i == full_in]))
        self.fixed = self._fit_fixed()

    @property
    def full_ms(self) -> float:
        """The modelled latency at full counts (the top of both axis curves)."""
        return float(self.in_axis[1][-1])

    def _through_full(self, axis: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """The axis curve scaled so that its top is the measured full point (both axes then agree there)."""
        counts, values = axis
        measured = self.points[self.full]
        return counts, values * (measured / values[-1]) if values[-1] > 0 else values

    def _fit_fixed(self) -> float:
        ins, outs = self.in_axis[0], self.out_axis[0]
        corner = (int(ins[0]), int(outs[0]))
        if corner not in self.points or corner[0] == self.full[0] or corner[1] == self.full[1]:
            return 0.0
        lc, f = self.points[corner], self.full_ms
        ai, ao = float(self.in_axis[1][0]), float(self.out_axis[1][0])
        denominator = lc + f - ai - ao
        if abs(denominator) < 1e-12:
            return 0.0
        fixed = (lc * f - ai * ao) / denominator
        lowest = min(float(self.in_axis[1].min()), float(self.out_axis[1].min()), f)
        return float(min(max(fixed, 0.0), 0.999 * lowest))  # below every axis value: costs stay positive

    def cost(self, kept_in: float, kept_out: float) -> float:
        """Latency in ms with kept_in / kept_out channels (any counts in [1, full])."""
        a_in = stair_value(self.in_axis, kept_in)
        if self.tied:
            return a_in
        a_out = stair_value(self.out_axis, kept_out)
        f, fixed = self.full_ms, self.fixed
        if f - fixed <= 1e-12:
            return max(a_in + a_out - f, 0.0)
        return a_in - (a_in - fixed) * (1.0 - (a_out - fixed) / (f - fixed))  # written so that o = O gives a_in

    def check_errors(self) -> list[float]:
        """Relative error of the model at the measured points it was not built on (the diagonal checks)."""
        if self.tied:
            return []
        full_in, full_out = self.full
        corner = (int(self.in_axis[0][0]), int(self.out_axis[0][0]))
        return [(self.cost(i, o) - ms) / ms for (i, o), ms in self.points.items()
                if i != full_in and o != full_out and (i, o) != corner and ms > 0]

    def as_list(self) -> list[list[float]]:
        return [[i, o, ms] for (i, o), ms in sorted(self.points.items())]


def axis_curve(pairs: Iterable[tuple[int, float]]) -> tuple[np.ndarray, np.ndarray]:
    """(counts, latencies) of one axis from its measured (count, ms) points: non-decreasing, noise-level
    differences within a stair flattened (see the module doc)."""
    ordered = sorted(pairs)
    counts = np.array([c for c, _ in ordered], float)
    values = isotonic([m for _, m in ordered])
    if len(values):
        tolerance = STAIR_TOL * values[-1]
        top = len(values) - 1
        for k in range(len(values) - 2, -1, -1):  # from the full count down: join the stair above or start one
            if values[top] - values[k] <= tolerance:
                continue
            values[k + 1:top + 1] = values[k + 1:top + 1].mean()
            top = k
        values[:top + 1] = values[:top + 1].mean()
    return counts, values


def isotonic(values: Iterable[float]) -> np.ndarray:
    """The closest non-decreasing sequence (least squares; pool adjacent violators)."""
    blocks: list[list[float]] = []  # [mean, weight]
    for v in values:
        blocks.append([float(v), 1.0])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            (m2, w2), (m1, w1) = blocks.pop(), blocks.pop()
            blocks.append([(m1 * w1 + m2 * w2) / (w1 + w2), w1 + w2])
    return np.array([m for m, w in blocks for _ in range(int(w))], float)


def stair_value(axis: tuple[np.ndarray, np.ndarray], kept: float) -> float:
    """The axis curve's latency at `kept`: the value of the smallest measured count >= kept (its stair)."""
    counts, values = axis
    return float(values[min(int(np.searchsorted(counts, kept, side="left")), len(counts) - 1)])


def check_counts(node: str, full: tuple[int, int], kept_in: float, kept_out: float) -> None:
    """InvalidRequestError unless 1 <= kept <= full on both axes."""
    for what, kept, total in (("input", kept_in, full[0]), ("output", kept_out, full[1])):
        if not 1 <= kept <= total:
            raise InvalidRequestError(f"layer '{node}': {kept} kept {what} channels is outside 1..{total}")
