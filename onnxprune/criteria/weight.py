"""Weight-based criteria: a channel is scored by the weight slices that produce it.

Every criterion here follows the same three steps:

1. per weight (a *layer*) and axis, a scorer gives one score per position along the axis;
2. `group_policy` combines the positions of one unit inside that weight (a grouped conv holds one slice
   per group for each unit, a projection before a Reshape into heads one slice per head (or per dim when
   whole heads go), a depthwise conv with a channel multiplier one per multiplied filter):
   ``sum`` / ``average`` of the slice scores, ``none`` takes the first slice (the first group's),
   ``count`` ranks every slice row (one row per group) independently and scores a unit by the number of
   slices it beats, summed over the rows (a Borda count: a unit that most groups would remove scores low);
   units with a single slice keep their score under every group policy;
3. `policy` combines the layers of a group (``sum``, ``average`` or ``max`` over the layers that hold the unit).

By default only producer slices (role "out", bias excluded) are scored; `Options.score_consumers` adds the
consumer slices (the input-channel slices of the layers reading the group), as Torch-Pruning can.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import replace
from typing import Callable, Iterator

import numpy as np

from onnxprune.allocation import lamp_scores
from onnxprune.criteria.registry import CriterionContext, register_criterion
from onnxprune.errors import UnsupportedError

Scorer = Callable[[np.ndarray, int, str], np.ndarray]  # (value, axis, constant name) -> score per position
Select = Callable[[str, int, str], bool]  # (op_type, input slot, role) -> is this weight axis scored


def weight_roles(ctx: CriterionContext) -> Select:
    """Producer slices; consumer slices too when `options.score_consumers`."""
    roles = ("out", "in") if ctx.options.score_consumers else ("out",)
    return lambda op_type, slot, role: role in roles


def layer_scores(ctx: CriterionContext, scorer: Scorer, select: Select,
                 per_layer: Callable[[np.ndarray], np.ndarray] | None = None) -> dict[int, list[np.ndarray]]:
    """Per group: one unit-score vector per selected weight axis (NaN where the weight lacks the unit).

    `per_layer` transforms each vector (e.g. LAMP) before the layers are combined.
    """
    sizes = {g: ctx.analysis.groups[g].size for g in ctx.groups}
    per_group: dict[int, list[np.ndarray]] = {g: [] for g in ctx.groups}
    wanted = set(ctx.groups)
    for name, value, axis, groups, positions in _weight_axes(ctx, select):
        position_scores = scorer(value, axis, name)
        for g in sorted(wanted.intersection(groups.tolist())):
            chosen = groups == g
            vector = group_slices(position_scores[chosen], positions[chosen], sizes[g], ctx.options.group_policy)
            per_group[g].append(vector if per_layer is None else per_layer(vector))
    return per_group


def _weight_axes(ctx: CriterionContext, select: Select) -> Iterator[tuple[str, np.ndarray, int, np.ndarray, np.ndarray]]:
    """(constant name, value, axis, and per position along the axis: its public group and its unit's position
    in that group) of the selected weight axes."""
    channels = ctx.analysis.channels
    wanted = set(ctx.groups)
    for (i, slot), use in channels.const_uses.items():
        node = channels.index.nodes[i]
        for axis, role in use.roles.items():
            if not select(node.op_type, slot, role):
                continue
            ids = use.axes[axis]
            groups = channels.group[ids]
            if not wanted.intersection(groups.tolist()):
                continue
            value = channels.resolver.value(node.input[slot])
            if value is None:
                continue
            yield channels.constant_source(node.input[slot]), value, axis, groups, channels.position[ids]


def group_slices(scores: np.ndarray, positions: np.ndarray, n_units: int, group_policy: str) -> np.ndarray:
    """One score per unit from the scores of its slices (`positions[k]` = unit of slice k), by group policy."""
    order = np.argsort(positions, kind="stable")
    sorted_positions = positions[order]
    starts = np.searchsorted(sorted_positions, sorted_positions, side="left")
    occurrence = np.arange(len(order)) - starts
    grid = np.full((int(occurrence.max(initial=0)) + 1, n_units), np.nan)
    grid[occurrence, sorted_positions] = scores[order]
    if grid.shape[0] == 1:
        return grid[0]
    present = ~np.isnan(grid)
    if group_policy == "none":
        return grid[0]
    if group_policy == "count":
        grid = np.where(present, _row_ranks(grid), np.nan)
    total = np.where(present, grid, 0.0).sum(axis=0)
    if group_policy == "average":
        total = total / np.maximum(present.sum(axis=0), 1)
    return np.where(present.any(axis=0), total, np.nan)


def _row_ranks(grid: np.ndarray) -> np.ndarray:
    """Per row: how many present entries each entry beats (ties broken by position)."""
    order = np.argsort(np.nan_to_num(grid, nan=np.inf), axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(grid.shape[1])[None, :].repeat(grid.shape[0], axis=0), axis=1)
    return ranks.astype(np.float64)


def combine_layers(scores: list[np.ndarray], n: int, policy: str) -> np.ndarray:
    """One score per unit from the layers holding it (NaN = the layer lacks the unit), by `policy`."""
    if not scores:
        return np.zeros(n)
    stacked = np.vstack(scores)
    present = ~np.isnan(stacked)
    if policy == "max":
        return np.nan_to_num(np.where(present, stacked, -np.inf).max(axis=0), neginf=0.0)
    total = np.where(present, stacked, 0.0).sum(axis=0)
    return total if policy == "sum" else total / np.maximum(present.sum(axis=0), 1)


def combined(ctx: CriterionContext, per_group: dict[int, list[np.ndarray]]) -> dict[int, np.ndarray]:
    """`combine_layers` for every group, by the context's policy."""
    groups = ctx.analysis.groups
    return {g: combine_layers(vectors, groups[g].size, ctx.options.policy) for g, vectors in per_group.items()}


_CHUNK_ELEMENTS = 1 << 22


def axis_power_sums(value: np.ndarray, axis: int, order: int) -> np.ndarray:
    """sum(|w|^order) over every axis but `axis`, as float64.

    Read in chunks of at most 4M elements (element types other than float32/float64 cast to float32); squares
    are summed by einsum, one pass with no temporary array; other orders take |w|^order of each chunk first.
    """
    value = np.asarray(value) if not isinstance(value, np.ndarray) else value
    if value.ndim == 0:
        return np.array([float(abs(value)) ** order])
    total = np.zeros(value.shape[axis], dtype=np.float64)
    rows = max(1, _CHUNK_ELEMENTS // max(1, value[:1].size))
    for start in range(0, value.shape[0], rows):
        chunk = value[start : start + rows]
        if chunk.dtype not in (np.float32, np.float64):
            chunk = np.asarray(chunk, dtype=np.float32)
        if order != 2:
            chunk = np.abs(chunk) ** order
        if axis == 0:
            total[start : start + len(chunk)] = _row_sums(chunk.reshape(len(chunk), -1), order == 2)
        else:
            columns = _column_sums(chunk.reshape(math.prod(chunk.shape[:axis]), -1), order == 2)
            total += columns.reshape(chunk.shape[axis], -1).sum(axis=1, dtype=np.float64)
    return total


def _row_sums(rows: np.ndarray, square: bool) -> np.ndarray:
    return np.einsum("ij,ij->i", rows, rows) if square else rows.sum(axis=1, dtype=np.float64)


def _column_sums(rows: np.ndarray, square: bool) -> np.ndarray:
    return np.einsum("ij,ij->j", rows, rows) if square else rows.sum(axis=0, dtype=np.float64)


def norm_scorer(order: int) -> Scorer:
    return lambda value, axis, name: axis_power_sums(value, axis, order) ** (1.0 / order)


def slice_rows(value: np.ndarray, axis: int) -> np.ndarray:
    """The weight as (positions along `axis`, everything else), float64."""
    value = np.asarray(value, dtype=np.float64)
    if value.ndim == 0:
        return value.reshape(1, 1)
    return np.moveaxis(value, axis, 0).reshape(value.shape[axis], -1)


def distance_sums(value: np.ndarray, axis: int, name: str) -> np.ndarray:
    """FPGM: per filter, the sum of its Euclidean distances to every other filter of the layer."""
    rows = slice_rows(value, axis)
    squared = np.einsum("ij,ij->i", rows, rows)
    single = rows.astype(np.float32)  # the Gram product dominates; float32 halves its time
    d2 = squared[:, None] + squared[None, :] - 2.0 * (single @ single.T).astype(np.float64)
    return np.sqrt(np.clip(d2, 0.0, None)).sum(axis=1)


def producer_slice_norms(ctx: CriterionContext, order: int) -> dict[int, np.ndarray]:
    """Per group: the Lp norm of each unit's weight slices, combined by group policy and policy."""
    return combined(ctx, layer_scores(ctx, norm_scorer(order), weight_roles(ctx)))


@register_criterion("l2")
def l2(ctx: CriterionContext) -> dict[int, np.ndarray]:
    """PR_L2: L2 norm of the filters that produce each channel."""
    return producer_slice_norms(ctx, 2)


@register_criterion("l1")
def l1(ctx: CriterionContext) -> dict[int, np.ndarray]:
    """L1 norm of the filters that produce each channel."""
    return producer_slice_norms(ctx, 1)


@register_criterion("gm")
def gm(ctx: CriterionContext) -> dict[int, np.ndarray]:
    """PR_GM (FPGM): per layer, a filter scores the sum of its distances to the layer's other filters;
    the filters nearest the geometric median (the most replaceable) score lowest."""
    return combined(ctx, layer_scores(ctx, distance_sums, weight_roles(ctx)))


@register_criterion("lamp")
def lamp(ctx: CriterionContext) -> dict[int, np.ndarray]:
    """LAMP on channel L2 norms, per layer: with the norms w sorted ascending, w_i^2 / sum_{j>=i} w_j^2."""
    return combined(ctx, layer_scores(ctx, norm_scorer(2), weight_roles(ctx), per_layer=_lamp_present))


def _lamp_present(vector: np.ndarray) -> np.ndarray:
    present = ~np.isnan(vector)
    out = np.full(len(vector), np.nan)
    out[present] = lamp_scores(vector[present])
    return out


@register_criterion("random")
def random(ctx: CriterionContext) -> dict[int, np.ndarray]:
    """Uniform random scores, one stream per (seed, group): the same seed gives the same choice."""
    return {g: np.random.default_rng([ctx.seed, g]).random(ctx.analysis.groups[g].size) for g in ctx.groups}


@register_criterion("bn_scale")
def bn_scale(ctx: CriterionContext) -> dict[int, np.ndarray]:
    """|gamma| of the BatchNormalization on each channel (network slimming).

    Refuses a model without any BatchNormalization (folded by the exporter); groups without BN in a model
    that has some (e.g. squeeze-excitation convs) are scored by `l2`, with a warning naming them.
    """
    per_group = layer_scores(ctx, lambda value, axis, name: np.abs(np.asarray(value, dtype=np.float64)).reshape(-1),
                             lambda op_type, slot, role: op_type == "BatchNormalization" and slot == 1)
    missing = [g for g, vectors in per_group.items() if not vectors]
    if missing and len(missing) == len(per_group):
        raise UnsupportedError(_bn_missing_message(ctx, missing))
    scores = combined(ctx, {g: v for g, v in per_group.items() if v})
    if missing:
        layers = sorted({name for g in missing for name in ctx.analysis.groups[g].layers})
        warnings.warn(f"bn_scale: channel groups {missing[:8]} (layers {layers[:6]}) have no BatchNormalization; "
                      "they are scored by l2", RuntimeWarning, stacklevel=2)
        scores.update(l2(replace(ctx, groups=missing)))
    return scores


def _bn_missing_message(ctx: CriterionContext, missing: list[int]) -> str:
    layers = sorted({name for g in missing for name in ctx.analysis.groups[g].layers})
    has_bn = any(n.op_type == "BatchNormalization" for n in ctx.analysis.index.nodes)
    where = f"channel groups {missing[:8]} (layers {layers[:6]}) have no BatchNormalization"
    if not has_bn:
        return (f"method 'bn_scale' needs BatchNormalization, but the model has none: {where}. The exporter "
                "probably folded BN into the Conv weights; export without folding, e.g. torch.onnx.export(..., "
                "training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False), or use another method "
                "such as 'l2'")
    return (f"method 'bn_scale': {where} (BN folded into the Conv, or none there); prune only layers followed "
            f"by BN with ratios={{layer: ratio}}, or use another method such as 'l2'")
