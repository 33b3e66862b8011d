"""How many units each group loses, and which: every function returns one value, typically
{group id: removed unit positions} or {group id: count}.

targets:  `group_targets` (ratio= / ratios= -> {group: ratio}), `find_layer`
counts:   `removal_counts` (uniform or per-layer ratios; global and SLAMP from a pool of scores),
          with `kept_count` / `pooled_counts` / `normalize` / `lamp_scores` underneath
which:    `lowest_removal` (the lowest scores go), `rescue_emptied_tensors` (never empty a tensor axis),
          `index_removal` (exactly these channels), `emptied_axes`
"""
from __future__ import annotations

import difflib
import math
from collections.abc import Mapping

import numpy as np

from onnxprune.errors import InvalidRequestError, UnsupportedError
from onnxprune.options import Options


def check_ratio(ratio: float, what: str = "ratio") -> float:
    if not isinstance(ratio, (int, float)) or isinstance(ratio, bool) or not (0.0 <= float(ratio) < 1.0):
        raise InvalidRequestError(f"{what}={ratio!r} must be a number in [0, 1)")
    return float(ratio)


def kept_count(size: int, ratio: float, options: Options) -> int:
    """Channels a group of `size` keeps after removing `ratio` of them, rounded to the step."""
    keep = size - math.floor(ratio * size + 1e-9)
    step = options.step_size
    if step > 1 and options.step_op != "none" and ratio > 0:
        quotient = keep / step
        rounded = {"round": math.floor(quotient + 0.5), "round_up": math.ceil(quotient),
                   "round_down": math.floor(quotient)}[options.step_op]
        keep = rounded * step
        if keep == 0:
            keep = step
    return int(min(max(keep, 1), size))


def lowest_scores(scores: np.ndarray, n_remove: int) -> np.ndarray:
    """Indices of the n lowest scores; ties go to the lower index (deterministic)."""
    order = np.argsort(np.nan_to_num(scores, nan=-np.inf), kind="stable")
    return np.sort(order[:n_remove])


def normalize(scores: np.ndarray, layer_norm: str) -> np.ndarray:
    """Scale one group's scores so that groups compare (global scope). With s the scores, n their count:

    standard_score: (s - mean(s)) / std(s)          (all zeros when std = 0)
    tss_norm:       s / sum(|s|)                     (total sum scaling; 1/n each when the sum is 0)
    linear_scaling: (s - min(s)) / (max(s) - min(s)) (all zeros when max = min)
    softmax_norm:   exp(s - max(s)) / sum(exp(s - max(s)))
    none:           s
    """
    s = np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=0.0)
    if layer_norm == "none" or len(s) == 0:
        return s
    if layer_norm == "standard_score":
        std = s.std()
        return (s - s.mean()) / std if std > 0 else np.zeros_like(s)
    if layer_norm == "tss_norm":
        total = np.abs(s).sum()
        return s / total if total > 0 else np.full_like(s, 1.0 / len(s))
    if layer_norm == "linear_scaling":
        span = s.max() - s.min()
        return (s - s.min()) / span if span > 0 else np.zeros_like(s)
    if layer_norm == "softmax_norm":
        e = np.exp(s - s.max())
        return e / e.sum()
    raise InvalidRequestError(f"layer_norm={layer_norm!r} is not one of standard_score, tss_norm, "
                              "linear_scaling, softmax_norm, none")


def lamp_scores(norms: np.ndarray) -> np.ndarray:
    """LAMP (Lee et al., ICLR 2021) on channel norms w of one layer: with w sorted ascending,
    score(w_i) = w_i^2 / sum_{j >= i} w_j^2. The largest channel scores 1; ties keep index order."""
    w2 = np.square(np.nan_to_num(np.asarray(norms, dtype=np.float64), nan=0.0))
    order = np.argsort(w2, kind="stable")
    tail = np.cumsum(w2[order][::-1])[::-1]
    out = np.empty_like(w2)
    out[order] = np.divide(w2[order], tail, out=np.zeros_like(tail), where=tail > 0)
    return out


def removable(size: int, options: Options) -> int:
    """The most units global allocation may take from a group of `size`: max_ratio of it, never all."""
    return max(0, min(math.floor(options.max_ratio * size + 1e-9), size - 1))


def rounded_removal(size: int, n_remove: int, options: Options, cap: int) -> int:
    """`n_remove` rounded so that the kept count is a step multiple, then held to at most `cap`."""
    if n_remove <= 0:
        return 0
    keep = kept_count(size, n_remove / size, options)
    if size - keep > cap:
        keep = size - cap
        if options.step_op != "none" and options.step_size > 1:
            keep = min(size, math.ceil(keep / options.step_size) * options.step_size)
    return size - keep


def pooled_counts(pool: dict[int, np.ndarray], ratio: float, options: Options) -> dict[int, int]:
    """Units to remove per group when the ratio*N lowest pooled scores go (N: all units of the pool).

    No group loses more than `removable()`; each count is then rounded by `rounded_removal`.
    """
    groups = sorted(pool)
    sizes = {g: len(pool[g]) for g in groups}
    target = math.floor(check_ratio(ratio) * sum(sizes.values()) + 1e-9)
    caps = {g: removable(sizes[g], options) for g in groups}
    owner = np.concatenate([np.full(caps[g], g, dtype=np.int64) for g in groups] or [np.zeros(0, np.int64)])
    lowest = np.concatenate([np.sort(np.nan_to_num(pool[g], nan=-np.inf))[: caps[g]] for g in groups]
                            or [np.zeros(0)])
    chosen = owner[np.argsort(lowest, kind="stable")[:target]]
    counts = {g: int(np.count_nonzero(chosen == g)) for g in groups}
    return {g: rounded_removal(sizes[g], counts[g], options, caps[g]) for g in groups}


def removal_counts(targets: Mapping[int, float], sizes: Mapping[int, int], options: Options, *,
                   pool: Mapping[int, np.ndarray] | None = None, ratio: float | None = None) -> dict[int, int]:
    """Units to remove per targeted group: each group its own ratio (`targets`, uniform or per layer), or,
    given a `pool` of comparable scores, the ratio*N lowest of the pool (global scope, SLAMP)."""
    if pool is not None:
        return pooled_counts(pool, ratio, options)
    return {g: sizes[g] - kept_count(sizes[g], r, options) for g, r in targets.items()}


# --------------------------------------------------------------------------- targets

def find_layer(analysis, name: str):
    """The analysed layer called `name` that belongs to a channel group; an error naming close matches if none."""
    layer = analysis.layer(name)
    if layer is None or layer.group is None:
        known = [layer.name for layer in analysis.layers]
        hint = difflib.get_close_matches(str(name), known, n=3)
        raise InvalidRequestError(f"no prunable layer named '{name}'"
                                  + (f"; did you mean {hint}?" if hint else "")
                                  + " (`onnxprune inspect MODEL` lists the layers)")
    return layer


def prunable_group(analysis, name: str):
    """The prunable channel group of layer `name` (errors for an unknown or unprunable layer)."""
    layer = find_layer(analysis, name)
    group = analysis.groups[layer.group]
    if not group.prunable:
        raise UnsupportedError(f"layer '{name}' ({layer.op_type}) cannot be pruned: {group.reason}")
    return group


def group_targets(analysis, ratio: float | None, ratios: Mapping[str, float] | None) -> dict[int, float]:
    """group id -> ratio to remove: `ratio` for every prunable group, or `ratios` {layer: ratio} for the
    groups of those layers (the larger ratio wins when two layers of a group disagree)."""
    if ratio is not None:
        check_ratio(ratio)
        return {g.id: float(ratio) for g in analysis.groups if g.prunable}
    if not isinstance(ratios, dict) or not ratios:
        raise InvalidRequestError("ratios must be a non-empty {layer name: ratio} mapping")
    targets: dict[int, float] = {}
    for name, value in ratios.items():
        check_ratio(value, f"ratios['{name}']")
        group = prunable_group(analysis, name)
        targets[group.id] = max(targets.get(group.id, 0.0), float(value))
    return targets


# --------------------------------------------------------------------------- which units go

def lowest_removal(scores: Mapping[int, np.ndarray], counts: Mapping[int, int]) -> dict[int, np.ndarray]:
    """group id -> removed positions: the `counts[g]` lowest-scored units of every group with a count > 0."""
    return {g: lowest_scores(scores[g], n) for g, n in counts.items() if n > 0}


def emptied_axes(channels, removed: Mapping[int, np.ndarray]) -> list[tuple[str, int]]:
    """(tensor, axis) pairs that would lose every channel (e.g. one half of a Split), in channel-map order."""
    keep = channels.keep_mask(removed)
    return [(tensor, axis) for tensor, axes in channels.axes.items() for axis, ids in axes.items()
            if len(ids) and not keep[ids].any()]


def rescue_emptied_tensors(channels, removed: Mapping[int, np.ndarray],
                           scores: Mapping[int, np.ndarray]) -> dict[int, np.ndarray]:
    """`removed` with the best-scored channel of every tensor axis it would empty given back (a group
    without scores counts 0 for each unit; NaN counts lowest). The emptied axes are found once, in order;
    a rescue only gives channels back, so each later axis is re-checked against the units still gone."""
    removed = dict(removed)
    gone = channels.removed_units(removed)
    for tensor, axis in emptied_axes(channels, removed):
        ids = channels.axes[tensor][axis]
        if not gone[channels.unit[ids]].all():
            continue  # an earlier rescue gave this axis a channel back
        groups, positions = channels.group[ids], channels.position[ids]
        values = np.zeros(len(ids))
        for g in np.unique(groups).tolist():
            here = groups == g
            if g in scores:
                values[here] = np.asarray(scores[g], dtype=np.float64)[positions[here]]
        best = int(np.argmax(np.nan_to_num(values, nan=-np.inf)))  # the first of equal bests
        g, position = int(groups[best]), int(positions[best])
        removed[g] = removed[g][removed[g] != position]
        gone[channels.unit[ids[best]]] = False
    return removed


def index_removal(analysis, indices: Mapping[str, list[int]]) -> dict[int, np.ndarray]:
    """group id -> removed unit positions for {layer: [output channels]}, checked (no emptied group/tensor)."""
    channels = analysis.channels
    removed_units: dict[int, set[int]] = {}
    for name, chosen in indices.items():
        group = prunable_group(analysis, name)
        ids = analysis.layer_output_ids(name)
        chosen = list(chosen)
        bad = [c for c in chosen if not isinstance(c, (int, np.integer)) or isinstance(c, bool) or not 0 <= c < len(ids)]
        if bad:
            raise InvalidRequestError(f"layer '{name}' ({analysis.layer(name).op_type}) has {len(ids)} output "
                                      f"channels; indices {bad[:5]} are out of range [0, {len(ids) - 1}]")
        removed_units.setdefault(group.id, set()).update(channels.position[ids[chosen]].tolist())
    removed = {}
    for g, units in removed_units.items():
        if len(units) >= analysis.groups[g].size:
            raise InvalidRequestError(f"removing these channels would empty channel group {g} "
                                      f"(layers {analysis.groups[g].layers[:5]}); keep at least one")
        removed[g] = np.array(sorted(units), dtype=np.int64)
    for tensor, axis in emptied_axes(channels, removed):
        raise InvalidRequestError(f"removing these channels would empty tensor '{tensor}' (no channel left on axis "
                                  f"{axis}); keep at least one of its channels")
    return removed
