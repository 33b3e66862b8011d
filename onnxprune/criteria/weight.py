"""Weight-based criteria: a channel is scored by the slices of the weights that produce it."""
from __future__ import annotations

import numpy as np

from onnxprune.criteria.registry import CriterionContext, register_criterion


def producer_slice_norms(ctx: CriterionContext, order: int) -> dict[int, np.ndarray]:
    """Per group: the Lp norm of each unit's producer-weight slices, combined over layers by `policy`."""
    a = ctx.analysis
    res = a.resolution
    wanted = set(ctx.groups)
    per_group: dict[int, list[np.ndarray]] = {g: [] for g in wanted}
    for (i, slot), use in a.walker.const_uses.items():
        for axis, role in use.roles.items():
            if role != "out":
                continue
            ids = use.axes[axis]
            groups = np.array([a.group_of_internal[int(g)] for g in res.group[ids]])
            if not wanted.intersection(groups.tolist()):
                continue
            value = a.walker.resolver.value(a.index.nodes[i].input[slot])
            if value is None:
                continue
            powered = axis_power_sums(value, axis, order)
            for g in set(groups.tolist()) & wanted:
                units = a.group_units[g]
                chosen = groups == g
                positions = np.searchsorted(units, res.unit[ids[chosen]])
                total = np.zeros(len(units))
                np.add.at(total, positions, powered[chosen])
                present = np.zeros(len(units), dtype=bool)
                present[positions] = True
                per_group[g].append(np.where(present, total ** (1.0 / order), np.nan))
    return {g: _combine(scores, len(a.group_units[g]), ctx.options.policy) for g, scores in per_group.items()}


_CHUNK_ELEMENTS = 1 << 22


def axis_power_sums(value: np.ndarray, axis: int, order: int) -> np.ndarray:
    """sum(|w|^order) over every axis but `axis`, in float32 chunks with a float64 accumulator."""
    value = np.asarray(value) if not isinstance(value, np.ndarray) else value
    if value.ndim == 0:
        return np.array([float(abs(value)) ** order])
    total = np.zeros(value.shape[axis], dtype=np.float64)
    rows = max(1, _CHUNK_ELEMENTS // max(1, value[:1].size))
    others = tuple(a for a in range(value.ndim) if a != axis)
    for start in range(0, value.shape[0], rows):
        chunk = np.asarray(value[start : start + rows], dtype=np.float32)
        powered = np.square(chunk) if order == 2 else np.abs(chunk) ** order
        if axis == 0:
            total[start : start + len(chunk)] = powered.reshape(len(chunk), -1).sum(axis=1, dtype=np.float64)
        else:
            total += powered.sum(axis=others, dtype=np.float64)
    return total


def _combine(scores: list[np.ndarray], n: int, policy: str) -> np.ndarray:
    if not scores:
        return np.zeros(n)
    stacked = np.vstack(scores)
    if policy == "sum":
        return np.nansum(stacked, axis=0)
    if policy == "max":
        return np.nan_to_num(np.nanmax(np.where(np.isnan(stacked), -np.inf, stacked), axis=0), neginf=0.0)
    counts = np.maximum((~np.isnan(stacked)).sum(axis=0), 1)
    return np.nansum(stacked, axis=0) / counts


@register_criterion("l2")
def l2(ctx: CriterionContext) -> dict[int, np.ndarray]:
    """PR_L2: L2 norm of the filters that produce each channel."""
    return producer_slice_norms(ctx, 2)


@register_criterion("l1")
def l1(ctx: CriterionContext) -> dict[int, np.ndarray]:
    """L1 norm of the filters that produce each channel."""
    return producer_slice_norms(ctx, 1)
