"""`obs`: channels scored by the error they leave AFTER the least-squares re-fit that reconstruction performs.

For every layer that reads a group across channels (a weight axis of role "in": Conv with group 1, Gemm, MatMul;
its design rows and weights exactly as onnxprune.reconstruction re-fits them), the calibration data give the
centred Gram matrix H of its input columns (centred: the re-fit includes the bias). Removing a set B of columns
and re-fitting the rest costs the structured Optimal Brain Surgeon error tr(W_B^T [H^-1]_BB^-1 W_B), and the
re-fitted rest is W - H^-1[:, B] [H^-1]_BB^-1 W_B (ZipLM / OBC, Kurtic et al. 2023, Frantar et al. 2022). A
unit's columns are its input channel x kernel offsets (Conv), or every column it feeds (Gemm after Flatten).

Per group, units are eliminated greedily (the unit whose removal adds the least error, summed over the group's
consumer layers, goes next; the rest is re-fitted after each step; a group of more than STEPS units removes
ceil(size / STEPS) per step); a unit's score is the cumulative error when it goes, so the lowest scores are the
units to remove at any count. Groups with no such layer (or only layers with more than MAX_COLUMNS columns, or
grouped ones, or layers with no more design rows than columns on the calibration data: their Gram is singular,
so removals look free, e.g. a classifier after global pooling with fewer samples than features) are scored by
`fluctuation`, computed in the same pass.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from onnxprune import calibration
from onnxprune.criteria.data import consumer_slices, fluctuation_requests
from onnxprune.criteria.registry import CriterionContext, register_criterion
from onnxprune.graph import GraphIndex
from onnxprune.reconstruction import layers
from onnxprune.reconstruction.refit import DEFAULT_RIDGE

STEPS = 128  # elimination steps per group at most (a larger group removes ceil(size / STEPS) units per step)
MAX_COLUMNS = 4096  # layers with more input columns are left to `fluctuation` (their Gram is d x d)


class CenteredGram:
    """Streams the centred Gram matrix of one layer's design rows (group 1): (H - s s^T / n) / n."""

    def __init__(self, consumer: layers.Consumer) -> None:
        self.consumer = consumer
        self.tensors = (consumer.x,)
        self.H: np.ndarray | float = 0.0
        self.sums: np.ndarray | float = 0.0
        self.rows = 0

    def update(self, x: np.ndarray) -> None:
        rows = self.consumer.design(np.asarray(x))[0]
        self.H = self.H + rows.T @ rows
        self.sums = self.sums + rows.sum(axis=0)
        self.rows += len(rows)

    def merge(self, other: "CenteredGram") -> None:
        self.H = self.H + other.H
        self.sums = self.sums + other.sums
        self.rows += other.rows

    def result(self) -> tuple[np.ndarray, int]:
        """(the centred Gram, the number of design rows it sums)."""
        n = max(self.rows, 1)
        mean = np.asarray(self.sums) / n
        return np.asarray(self.H) / n - np.outer(mean, mean), self.rows


@dataclass
class Reader:
    """One layer reading groups across channels: its consumer view, weights (columns, outputs), and per column
    the group and unit position it belongs to."""

    consumer: layers.Consumer
    weights: np.ndarray
    groups: np.ndarray
    positions: np.ndarray


def readers(ctx: CriterionContext) -> list[Reader]:
    """The layers whose re-fit error scores the context's groups (see the module doc)."""
    a = ctx.analysis
    model, channels = a.model, a.channels
    index = GraphIndex.build(model.graph)
    found = []
    for s in consumer_slices(a, ctx.groups):
        i, ids = s.node, s.ids
        try:
            c = layers.find_at(model, index, i, None)
        except layers.Skip:
            continue
        theta = layers.current(model, c)
        columns = theta.shape[1] - 1
        per_channel = math.prod(c.attrs["kernel"]) if c.op_type == "Conv" else 1
        if c.groups != 1 or columns != len(ids) * per_channel or columns > MAX_COLUMNS:
            continue
        column_ids = np.repeat(ids, per_channel)
        found.append(Reader(c, theta[0, :columns], channels.group[column_ids], channels.position[column_ids]))
    return found


def eliminate(group_size: int, parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> np.ndarray:
    """Greedy structured-OBS elimination of one group's units; parts: (H, W, unit of each column or -1 for
    columns of other groups, which stay). Returns each unit's cumulative error when it goes."""
    states = []
    for H, W, units in parts:
        ridge = DEFAULT_RIDGE * max(float(np.mean(np.diag(H))), 1e-12)
        inverse = np.linalg.inv(H + ridge * np.eye(len(H)))
        states.append([inverse, W.astype(np.float64).copy(), units])
    n = max(1, math.ceil(group_size / STEPS))  # units per step
    alive = np.ones(group_size, dtype=bool)
    score = np.zeros(group_size)
    total = 0.0
    while alive.any():
        delta = np.zeros(group_size)
        for inverse, W, units in states:
            delta += unit_errors(inverse, W, units, group_size)
        delta[~alive] = np.inf
        chosen = np.argsort(delta, kind="stable")[:n]
        chosen = chosen[np.isfinite(delta[chosen])]
        joint = sum(remove(state, chosen) for state in states)
        # within a step: in order of the units' own errors, spread over the step's joint error
        score[chosen] = total + joint * np.arange(1, len(chosen) + 1) / len(chosen)
        total += joint
        alive[chosen] = False
    return score


def unit_errors(inverse: np.ndarray, W: np.ndarray, units: np.ndarray, size: int) -> np.ndarray:
    """Per unit: tr(W_B^T [H^-1]_BB^-1 W_B) over its columns B (0 for units this layer does not read)."""
    errors = np.zeros(size)
    present = np.flatnonzero(units >= 0)
    if not len(present):
        return errors
    order = present[np.argsort(units[present], kind="stable")]
    unit_ids, counts = np.unique(units[order], return_counts=True)
    if np.all(counts == 1):
        errors[unit_ids] = np.einsum("um,um->u", W[order], W[order]) / inverse[order, order]
    elif np.all(counts == counts[0]):
        blocks = order.reshape(len(unit_ids), counts[0])  # (units, columns per unit)
        w = W[blocks]
        solved = np.linalg.solve(inverse[blocks[:, :, None], blocks[:, None, :]], w)
        errors[unit_ids] = np.einsum("ukm,ukm->u", w, solved)
    else:
        for u in unit_ids:
            block = order[units[order] == u]
            errors[u] = float(np.sum(W[block] * np.linalg.solve(inverse[np.ix_(block, block)], W[block])))
    return errors


def remove(state: list, gone: np.ndarray) -> float:
    """Remove the columns of units `gone` from one layer's state (the rest re-fitted, the state shrunk to the
    kept columns); the error it adds."""
    inverse, W, units = state
    drop = np.isin(units, gone)
    if not drop.any():
        return 0.0
    block, keep = np.flatnonzero(drop), np.flatnonzero(~drop)
    h = inverse[np.ix_(block, block)]
    solved = np.linalg.solve(h, W[block])
    error = float(np.sum(W[block] * solved))
    column = inverse[np.ix_(keep, block)]
    state[1] = W[keep] - column @ solved
    state[0] = inverse[np.ix_(keep, keep)] - column @ np.linalg.solve(h, column.T)
    state[2] = units[keep]
    return error


@register_criterion("obs")
def obs(ctx: CriterionContext) -> dict[int, np.ndarray]:
    """The error each unit leaves after the consumers' least-squares re-fit (structured OBS, see the module doc)."""
    calibration.require(ctx.calibration, "obs")
    a = ctx.analysis
    found = readers(ctx)
    requests = {("gram", k): CenteredGram(r.consumer) for k, r in enumerate(found)}
    more, finish = fluctuation_requests(ctx)  # for the groups no (well-determined) reader scores
    requests.update(more)
    results = calibration.collect(a.model, ctx.calibration, requests)
    determined = [k for k, r in enumerate(found) if results["gram", k][1] > len(r.weights)]
    covered = set(ctx.groups).intersection(g for k in determined for g in found[k].groups.tolist())
    scores = finish(results) if covered != set(ctx.groups) else {}
    for g in sorted(covered):
        parts = [(results["gram", k][0], found[k].weights, np.where(found[k].groups == g, found[k].positions, -1))
                 for k in determined if np.any(found[k].groups == g)]
        scores[g] = eliminate(a.groups[g].size, parts)
    return {g: scores[g] for g in ctx.groups}
