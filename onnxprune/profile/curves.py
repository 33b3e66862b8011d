"""Latency of one layer as a function of its kept channels: the measured grid and the model between its points.

Grid (grid_points): along each axis, counts 1 (one unit), every multiple of STEP (SMALL_STEP for axes of at most
SMALL_AXIS units) and the full count, with the other axis at full. On wide axes the step grows in multiples of
STEP so that an axis has at most MAX_POINTS points (budget: a 2048-channel axis is measured every 64). Plus
the corner (1 unit, 1 unit) and CHECKS diagonal points (i/I = o/O = 1/4, 1/2, 3/4) that are never fitted, only
used to measure the model's error. Depthwise (tied) layers have one axis: the kept input count, the output and
`group` following it.

Between grid points the axis curves A_in(i) = L(i, O), A_out(o) = L(I, o) are piecewise linear (so the
runtime's staircase is followed exactly at measured points). The 2-D cost is the separable model with a fixed
part

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


class LayerCurve:
    """The latency model of one layer signature, built from its measured points {(kept_in, kept_out): ms}."""

    def __init__(self, spec_in: int, spec_out: int, tied: bool, points: Mapping[tuple[int, int], float]) -> None:
        self.full = (int(spec_in), int(spec_out))
        self.tied = tied
        self.points = {(int(i), int(o)): float(ms) for (i, o), ms in points.items()}
        full_in, full_out = self.full
        if tied:
            axis = sorted((i, ms) for (i, _), ms in self.points.items())
            self.in_axis = np.array([a for a, _ in axis], float), np.array([m for _, m in axis], float)
            self.out_axis = self.in_axis
            self.fixed = 0.0
            return
        self.in_axis = _axis([(i, ms) for (i, o), ms in self.points.items() if o == full_out])
        self.out_axis = _axis([(o, ms) for (i, o), ms in self.points.items() if i == full_in])
        self.fixed = self._fit_fixed()

    @property
    def full_ms(self) -> float:
        return self.points[self.full] if not self.tied else float(self.in_axis[1][-1])

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
        a_in = float(np.interp(kept_in, *self.in_axis))
        if self.tied:
            return a_in
        a_out = float(np.interp(kept_out, *self.out_axis))
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


def _axis(pairs: Iterable[tuple[int, float]]) -> tuple[np.ndarray, np.ndarray]:
    ordered = sorted(pairs)
    return np.array([c for c, _ in ordered], float), np.array([m for _, m in ordered], float)


def check_counts(node: str, full: tuple[int, int], kept_in: float, kept_out: float) -> None:
    """InvalidRequestError unless 1 <= kept <= full on both axes."""
    for what, kept, total in (("input", kept_in, full[0]), ("output", kept_out, full[1])):
        if not 1 <= kept <= total:
            raise InvalidRequestError(f"layer '{node}': {kept} kept {what} channels is outside 1..{total}")
