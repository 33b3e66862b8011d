"""Budgets in what users mean: how many units each group loses so that a cost model's prediction (latency, MACs
or params) is at most a fraction of the original's, losing the least importance per unit of cost saved.

request:   `budget_request` (target_macs= / target_params= / target_latency= -> Budget), `budget_cost` (its model)
allocate:  `allocate_budget` (the greedy knapsack below) -> Allocation
exact:     `layer_kept` (each cost term's kept input / output counts after a removal: layers, tensor terms), with
           onnxprune.cost.predicted_cost the cost that follows

The allocator is a greedy knapsack as in HALP (Shen et al., NeurIPS 2022). Within a group the lowest scores go
first (as `allocation.lowest_removal` takes them), so a group's state is one number, k units removed, and its next
*step* is the smallest further removal that lowers the predicted cost: to the next multiple of `Options.step_size`
kept for a smooth cost model, to where the staircase really drops for a stepped one (cost.is_stepped). Every step
has a price, the importance it loses divided by the cost it saves. A unit's importance is its score normalised by
`Options.layer_norm` (as the global scope compares them, shifted to be >= 0) times the weights that go with it
(`unit_weights`: its slice of every weight tensor of the group, one position per head for a head-dim unit).
Normalising per group keeps the ranking within a group and drops the scale, so a normalised score is read as the
importance per weight, and a unit counts once per weight it removes, as HALP's group importance is a sum over the
group's weights. Without that factor every unit weighed the same: a channel of a narrow residual stream
(MobileNetV2's 24 channels: about 720 weights in five 1x1 convs) as much as one of the expanded layer beside it
(about 60: its expand and project slices and a 3x3 depthwise filter), and the knapsack emptied the streams first
(24 -> 4), taking most of the 1x1 convs' MACs for little latency (speed-up per MAC 0.69 at t=0.7) where the
expanded layers' depthwise work was the cheaper latency. The cheapest step is taken until the prediction is at
most the target. A step changes the kept channels of the layers it touches, so only the groups sharing a layer
with the stepped group get their next step recomputed (a heap with lazy invalidation): the work is about
(groups x steps x layers per group) cost evaluations, never a rescan of the model. Greedy rather than a DP: costs
are not additive over groups (a layer's cost depends on the kept counts of its input and output groups together),
which a DP over groups cannot express without fixing neighbours; the greedy handles that coupling exactly and
stops within one step of the target. It then gives back the steps that still fit under the target, the most
importance per cost added first (the knapsack's fill of its remaining capacity). Afterwards, with a stepped model, each group takes back the units it can
keep for free (the cheapest point of its step: the most channels at the same predicted cost).

Constraints: only the groups given (prunable, in scope) lose units; at most `allocation.removable` of a group
(`Options.max_ratio`, never all); no tensor axis that carries units of one group only is emptied (the caller's
`rescue_emptied_tensors` still guards axes shared by several groups). Ties go to the lower group id.
"""
from __future__ import annotations

import heapq
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from onnxprune.allocation import normalize, removable
from onnxprune.cost import (TENSOR_TERM, CostModel, analytic_cost, is_stepped, layer_axes, predicted_cost, term_cost,
                             term_sizes)
from onnxprune.errors import BudgetOutOfReachError, InvalidRequestError
from onnxprune.options import Options

KINDS = ("macs", "params", "latency")


# --------------------------------------------------------------------------- the request

@dataclass(frozen=True)
class Budget:
    """Keep at most `fraction` of the model's `kind` cost (of `cost`, or the analytic / profiled one)."""

    kind: str
    fraction: float
    cost: CostModel | None = None
    threads: int | None = None

    @property
    def keyword(self) -> str:
        return f"target_{self.kind}"


def budget_request(target_macs: float | None = None, target_params: float | None = None,
                   target_latency: float | None = None, cost: CostModel | None = None,
                   threads: int | None = None) -> Budget | None:
    """The budget asked for (None when no target_* is given), checked: one target, a fraction in (0, 1], cost= and
    threads= only with target_latency."""
    given = {kind: value for kind, value in (("macs", target_macs), ("params", target_params),
                                            ("latency", target_latency)) if value is not None}
    if len(given) > 1:
        raise InvalidRequestError(f"give one budget, not {', '.join('target_' + k + '=' for k in given)}")
    if not given:
        if cost is not None or threads is not None:
            raise InvalidRequestError("cost= and threads= go with target_latency= (the measured latency budget)")
        return None
    (kind, value), = given.items()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < float(value) <= 1.0:
        raise InvalidRequestError(f"target_{kind}={value!r} must be a fraction of the original in (0, 1]")
    if kind != "latency" and (cost is not None or threads is not None):
        raise InvalidRequestError(f"cost= and threads= go with target_latency=; target_{kind} uses the analytic "
                                  f"{kind} counts")
    if cost is not None and threads is not None:
        raise InvalidRequestError("threads= is for profiling the model; a given cost= was measured already")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise InvalidRequestError(f"threads={threads!r} must be a positive integer")
    if cost is not None and not isinstance(cost, CostModel):
        raise InvalidRequestError("cost= must be a cost model (op.profile(model) gives one): an object with "
                                  "`total`, `layers` and `layer_cost(node, kept_in, kept_out)`")
    return Budget(kind, float(value), cost, threads)


def budget_cost(budget: Budget, analysis) -> CostModel:
    """The cost model the budget is counted in: the analytic MACs / params, the given one, or a fresh profile
    (onnxprune.profile) of the model; checked against the model's layers."""
    if budget.kind != "latency":
        return analytic_cost(analysis, budget.kind)
    cost = budget.cost
    if cost is None:
        from onnxprune.profile import profile  # measuring is the costly path: imported only when taken

        cost = profile(analysis.model, threads=budget.threads)
    unknown = [name for name in cost.layers if name not in analysis.index.by_name]
    if unknown:
        raise InvalidRequestError(f"the cost model names layers this model does not have ({unknown[:3]}); it was "
                                  "made for another model: profile this one")
    return cost


# --------------------------------------------------------------------------- exact kept counts per cost term

def term_axes(analysis, cost: CostModel) -> dict[str, tuple[tuple[str | None, int | None, int], ...]]:
    """term -> ((tensor, axis, size) of its input side, (tensor, axis, size) of its output side) for every term of
    the cost model: a layer's data input and output channel axes; a tensor term's last two pruned axes (one
    axis: the input side is untouched, (None, None, its size))."""
    channels = analysis.channels
    out = {}
    for name, sizes in term_sizes(cost).items():
        if name in cost.layers:
            node = channels.index.nodes[analysis.index.by_name[name]]
            axis_in, axis_out = layer_axes(channels, node)
            out[name] = ((node.input[0], axis_in, sizes[0]), (node.output[0], axis_out, sizes[1]))
            continue
        tensor = name[len(TENSOR_TERM):]
        axes = ([None, None] + sorted(channels.tracked(tensor)))[-2:]
        out[name] = tuple((None if axis is None else tensor, axis, size) for axis, size in zip(axes, sizes))
    return out


@dataclass(frozen=True)
class LayerSide:
    """One channel axis of a cost term: its unpruned count and, per group, the sorted removal ranks of its
    elements (an element goes once its unit's rank < the group's removed count)."""

    size: int
    ranks: Mapping[int, np.ndarray]

    def removed(self, counts: Mapping[int, int]) -> int:
        return sum(int(np.searchsorted(r, counts.get(g, 0))) for g, r in self.ranks.items())


def layer_sides(analysis, cost: CostModel, element_rank: np.ndarray, groups) -> dict[str, tuple[LayerSide, LayerSide]]:
    """term -> (input side, output side) for every term of the cost model (ranks of `groups` only)."""
    channels = analysis.channels
    wanted = np.zeros(len(channels.group_units), dtype=bool)
    wanted[list(groups)] = True
    out = {}
    for name, axes in term_axes(analysis, cost).items():
        sides = []
        for tensor, axis, size in axes:
            ids = channels.tracked(tensor).get(axis) if axis is not None else None
            ranks = {}
            if ids is not None and len(ids):
                owner = channels.group[ids]
                for g in np.unique(owner[wanted[owner]]).tolist():
                    ranks[g] = np.sort(element_rank[ids[owner == g]])
            sides.append(LayerSide(int(size), ranks))
        out[name] = (sides[0], sides[1])
    return out


def layer_kept(analysis, cost: CostModel, removed: Mapping[int, np.ndarray]) -> dict[str, tuple[int, int]]:
    """term -> (kept input count, kept output count) of every term of the cost model (layers by node name, tensor
    terms) after `removed` (group id -> removed unit positions), counted on the channel map."""
    channels = analysis.channels
    keep = channels.keep_mask(removed)
    out = {}
    for name, axes in term_axes(analysis, cost).items():
        kept = []
        for tensor, axis, size in axes:
            ids = channels.tracked(tensor).get(axis) if axis is not None else None
            gone = 0 if ids is None else int(len(ids) - np.count_nonzero(keep[ids]))
            kept.append(int(size) - gone)
        out[name] = (kept[0], kept[1])
    return out


# --------------------------------------------------------------------------- the allocator

@dataclass
class Allocation:
    """What `allocate_budget` chose: units removed per group and the predicted cost (same units as cost.total)."""

    counts: dict[int, int]
    total: float
    goal: float  # fraction x total
    predicted: float
    steps: int = 0
    last_saving: float = 0.0  # cost saved by the last step taken (the prediction is within it of the goal)
    kept: dict[str, tuple[int, int]] = field(default_factory=dict)  # node -> (kept in, kept out)
    exhausted: bool = False  # the goal was out of reach: all that the constraints allow is removed

    @property
    def fraction(self) -> float:
        return self.predicted / self.total if self.total else 1.0


def unit_weights(analysis, g: int) -> float:
    """The weights (constant elements) that go with one unit of group g: its slice of every weight member, at
    least 1 (a unit's importance in the knapsack is its normalised score per weight times these; see the module
    doc). A member's slice per unit is the weights per position of its axis times the positions one unit holds
    there: a ViT's head-dim unit holds one position per head (12 of a query weight's 768 columns), a unit read by
    a convolution after a Concat holds one of that weight's input positions, not its whole axis."""
    group = analysis.groups[g]
    count = 0.0
    for member in group.members:
        shape = analysis.channels.shape(member.tensor) if member.kind == "weight" else None
        if shape and member.size and group.size and all(isinstance(d, int) for d in shape) and shape[member.axis]:
            count += float(np.prod(shape)) / shape[member.axis] * member.size / group.size
    return max(count, 1.0)


def removal_order(scores: np.ndarray) -> np.ndarray:
    """Unit positions in the order they go: lowest score first, NaN lowest, ties to the lower position."""
    return np.argsort(np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=-np.inf), kind="stable")


def allocate_budget(analysis, scores: Mapping[int, np.ndarray], cost: CostModel, fraction: float,
                    options: Options, *, exhaust: bool = False) -> Allocation:
    """Units to remove per group (the groups of `scores`) so that the predicted cost is at most fraction x
    cost.total, losing the least normalised importance per unit of cost saved (see the module doc).
    Raises BudgetOutOfReachError when the groups cannot reach the target within max_ratio, unless `exhaust`: then
    all that is allowed is removed and the allocation says `exhausted`."""
    return _Knapsack(analysis, scores, cost, options).run(fraction, exhaust)


class _Knapsack:
    """The greedy state: removed counts per group, removed elements and cost per layer, a heap of next steps."""

    def __init__(self, analysis, scores: Mapping[int, np.ndarray], cost: CostModel, options: Options):
        channels = analysis.channels
        self.cost, self.options = cost, options
        self.groups = sorted(scores)
        self.stepped = is_stepped(cost)
        self.eps = 1e-12 * max(abs(float(cost.total)), 1e-30)
        unit_rank = np.full(len(channels.unit), np.iinfo(np.int64).max, dtype=np.int64)
        pooled = {g: normalize(scores[g], options.layer_norm) for g in self.groups}
        floor = min([float(v.min()) for v in pooled.values() if len(v)] + [0.0])
        self.prefix: dict[int, np.ndarray] = {}
        self.size: dict[int, int] = {}
        for g in self.groups:
            order = removal_order(scores[g])
            unit_rank[channels.group_units[g][order]] = np.arange(len(order))
            self.prefix[g] = np.concatenate([[0.0], np.cumsum(pooled[g][order] - floor)]) * unit_weights(analysis, g)
            self.size[g] = len(order)
        element_rank = unit_rank[channels.unit]
        self.cap = {g: removable(self.size[g], options) for g in self.groups}
        self._cap_single_group_axes(channels, element_rank)
        self.sides = layer_sides(analysis, cost, element_rank, self.groups)
        self.names = sorted(self.sides)
        self.links: dict[int, list[str]] = {g: [] for g in self.groups}
        for name in self.names:
            for g in sorted(set(self.sides[name][0].ranks) | set(self.sides[name][1].ranks)):
                self.links[g].append(name)
        self.neighbours = {g: sorted({h for name in self.links[g] for side in self.sides[name] for h in side.ranks})
                           for g in self.groups}
        self.counts = {g: 0 for g in self.groups}
        sizes = term_sizes(cost)
        self.kept = {name: sizes[name] for name in self.names}
        self.layer_costs = {name: float(term_cost(cost, name, *self.kept[name])) for name in self.names}

    def _cap_single_group_axes(self, channels, element_rank: np.ndarray) -> None:
        """Hold each group below emptying any tensor axis that carries its units only."""
        targeted = set(self.groups)
        for axes in channels.axes.values():
            for ids in axes.values():
                if not len(ids):
                    continue
                g = int(channels.group[ids[0]])
                if g in targeted and (channels.group[ids] == g).all():
                    self.cap[g] = min(self.cap[g], int(element_rank[ids].max()))

    # ---- one group's step ----------------------------------------------------------------------------------
    def _kept_after(self, g: int, k: int) -> dict[str, tuple[int, int]]:
        """The kept (in, out) of group g's layers if g had k units removed."""
        out = {}
        now = self.counts[g]
        for name in self.links[g]:
            kept = list(self.kept[name])
            for s, side in enumerate(self.sides[name]):
                r = side.ranks.get(g)
                if r is not None:
                    kept[s] -= int(np.searchsorted(r, k)) - int(np.searchsorted(r, now))
            out[name] = (kept[0], kept[1])
        return out

    def _saving(self, kept: Mapping[str, tuple[int, int]], stairs_only: bool = False) -> float:
        """Cost saved by moving these terms to these counts; `stairs_only`: by the layers alone (a stepped
        model's stairs are the layers'; tensor terms are smooth and would stop a group anywhere on a stair)."""
        return sum(self.layer_costs[name] - float(term_cost(self.cost, name, *kept[name])) for name in kept
                   if not stairs_only or name in self.cost.layers)

    def _next_step(self, g: int) -> tuple[int, float] | None:
        """(removed count after g's next step, cost it saves), or None when g can take no further step."""
        k, cap, size = self.counts[g], self.cap[g], self.size[g]
        if self.stepped:
            for after in range(k + 1, cap + 1):
                kept = self._kept_after(g, after)
                if self._saving(kept, stairs_only=True) > self.eps:
                    saving = self._saving(kept)
                    return (after, saving) if saving > self.eps else None
            return None
        step = self.options.step_size if self.options.step_op != "none" else 1
        kept = (size - k - 1) // step * step
        after = size - kept
        if kept < 1 or after > cap:
            return None
        saving = self._saving(self._kept_after(g, after))
        return (after, saving) if saving > self.eps else None

    def _step_back(self, g: int) -> tuple[int, float] | None:
        """(removed count after giving back g's last step, cost that adds), or None when g has nothing to give
        back. With a stepped model the whole next stair up: to its top, the most units at its layer cost."""
        k, size = self.counts[g], self.size[g]
        if k == 0:
            return None
        if self.stepped:
            after = k - 1
            stair = self._saving(self._kept_after(g, after), stairs_only=True)
            while after > 0 and abs(self._saving(self._kept_after(g, after - 1), stairs_only=True) - stair) <= self.eps:
                after -= 1
        else:
            step = self.options.step_size if self.options.step_op != "none" else 1
            after = max(0, size - min(size, ((size - k) // step + 1) * step))
        return after, -self._saving(self._kept_after(g, after))

    def _push(self, heap: list, version: dict[int, int], g: int, back: bool = False) -> None:
        """Queue g's next step (or, `back`, its step back) priced by importance per cost: the cheapest loss
        per cost saved first, or the largest gain per cost added first."""
        version[g] += 1
        step = self._step_back(g) if back else self._next_step(g)
        if step is not None:
            after, change = step
            importance = abs(float(self.prefix[g][after] - self.prefix[g][self.counts[g]]))
            price = -importance / max(change, self.eps) if back else importance / change
            heapq.heappush(heap, (price, g, version[g], after, change))

    def _apply(self, g: int, after: int) -> None:
        for name, kept in self._kept_after(g, after).items():
            self.kept[name] = kept
            self.layer_costs[name] = float(term_cost(self.cost, name, *kept))
        self.counts[g] = after

    # ---- the whole allocation ----------------------------------------------------------------------------
    def run(self, fraction: float, exhaust: bool = False) -> Allocation:
        total = float(self.cost.total)
        goal = fraction * total
        predicted = predicted_cost(self.cost, self.kept)
        heap: list = []
        version = {g: 0 for g in self.groups}
        for g in self.groups:
            self._push(heap, version, g)
        steps, last, exhausted = 0, 0.0, False
        while predicted > goal + self.eps:
            if not heap and exhaust:
                exhausted = True
                break
            if not heap:
                raise BudgetOutOfReachError(
                    f"the budget of {fraction:g} x the original cannot be reached: removing all that Options."
                    f"max_ratio={self.options.max_ratio:g} allows from the prunable groups predicts "
                    f"{predicted / total:.3f} x; ask for more, or raise max_ratio / lower step_size")
            _, g, seen, after, saving = heapq.heappop(heap)
            if seen != version[g]:
                continue
            self._apply(g, after)
            predicted -= saving
            steps, last = steps + 1, saving
            for h in self.neighbours[g]:
                self._push(heap, version, h)
        predicted = self._refill(goal, predicted)
        if self.stepped:
            self._snap(goal, predicted)
        predicted = predicted_cost(self.cost, self.kept)
        return Allocation(dict(self.counts), total, goal, predicted, steps, last, dict(self.kept), exhausted)

    def _refill(self, goal: float, predicted: float) -> float:
        """Give back the steps that still fit under the goal after the last step overshot it, the most importance
        per cost added first (the knapsack's fill of its remaining capacity); the new prediction."""
        heap: list = []
        version = {g: 0 for g in self.groups}
        for g in self.groups:
            self._push(heap, version, g, back=True)
        while heap:
            _, g, seen, after, added = heapq.heappop(heap)
            if seen != version[g] or predicted + added > goal + self.eps:
                continue
            self._apply(g, after)
            predicted += added
            for h in self.neighbours[g]:
                self._push(heap, version, h, back=True)
        return predicted

    def _snap(self, goal: float, predicted: float) -> None:
        """Give each group back the units its layers keep at no cost (up to the top of their stairs) while the
        prediction stays within the goal (tensor terms are not free)."""
        for g in self.groups:
            while self.counts[g] > 0:
                back = self._kept_after(g, self.counts[g] - 1)
                added = -self._saving(back)
                if -self._saving(back, stairs_only=True) > self.eps or predicted + added > goal + self.eps:
                    break
                predicted += added
                self._apply(g, self.counts[g] - 1)


def budget_summary(budget: Budget, cost: CostModel, analysis, removed: Mapping[int, np.ndarray]) -> dict:
    """The summary entry of a budgeted run: what was asked and the cost model's prediction for what was cut
    (`removed`: group id -> removed positions, after any rescue of emptied tensors)."""
    total = float(cost.total)
    predicted = predicted_cost(cost, layer_kept(analysis, cost, removed))
    return {"kind": budget.kind, "target": budget.fraction, "total": total, "predicted": predicted,
            "predicted_fraction": predicted / total if total else 1.0}
