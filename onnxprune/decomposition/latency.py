"""Decomposition against the measured cost model (op.profile(model, decomposition=method)).

request:  `latency_request` checks cost= / target_latency= / threads= and gives a LatencyModel (profiling the
          model when a target is asked for without cost=), or None when neither is given
per layer: LatencyModel.pair (the layer's and its chain's predicted ms), .snap (computed ranks moved to the
          largest ranks of the same latency step, profile.chains.snap)
target:   `target_ranks` picks per-layer ranks so that the predicted latency is at most target x the measured
          original, losing the least reconstruction accuracy per ms saved

The loss of a chain is the energy its ranks discard, relative to the kernel's (rank_loss): for SVD the squared
singular values of the weight matrix beyond the rank; for Tucker-2 the sum over the input and output unfoldings
(the HOSVD bound on the relative squared error); for CP, which has no closed form, the same sum at rank R on both
unfoldings (a lower bound: a CP fit loses at least that). Every layer counts alike (relative, not absolute).

The choice is a greedy knapsack, as onnxprune.budget does for pruning: each layer's options are its measured
rank points (every pair of measured ranks for Tucker) whose chain is faster than the layer, reduced to the
Pareto front (no option both slower and lossier than another) and its lower convex hull, so that within a layer
the price (loss added per ms saved) only rises; the cheapest step over all layers is taken until the prediction
is at most the target. Layers are independent (a chain replaces one layer), so this is the exact greedy of the
convex relaxation. The last step may overshoot: then every layer may move to a less lossy front option while
the prediction stays under the target, the most loss removed per ms added first.
"""
from __future__ import annotations

import heapq
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from onnxprune.decomposition.candidates import DecomposableLayer
from onnxprune.decomposition.ranks import unfold
from onnxprune.errors import InvalidRequestError


# --------------------------------------------------------------------------- the request

@dataclass(frozen=True)
class LatencyModel:
    """A latency cost model with measured chains of `method`, seen from one decomposition."""

    cost: Any  # onnxprune.profile.LatencyCostModel with .chains
    method: str

    def curve(self, layer: str):
        return self.cost.chains.curve(layer, self.method)

    def reason(self, layer: str) -> str:
        """Why `layer` has no measured chain."""
        why = self.cost.chains.skipped.get(layer) or self.cost.skipped.get(layer)
        return f"its {self.method} chain is not in the cost model" + (f" ({why})" if why else "")

    def before(self, layer: str) -> float:
        """The layer's ms in the model (its curve at full channels times its context, profile.chains.ChainCosts)."""
        return float(self.cost.layer_cost(layer, *self.cost.layers[layer])) * self.cost.chains.factor(layer)

    def chain_ms(self, layer: str, ranks: tuple[int, ...]) -> float:
        """The layer's chain's predicted ms at `ranks` in the model."""
        return float(self.cost.chains.cost(layer, self.method, tuple(ranks)))

    def pair(self, layer: str, ranks: tuple[int, ...]) -> tuple[float, float] | None:
        """(the layer's latency, its chain's at `ranks`) in ms, or None when the chain was not measured."""
        if self.curve(layer) is None or layer not in self.cost.layers:
            return None
        return self.before(layer), self.chain_ms(layer, ranks)

    def snap(self, layer: str, ranks: tuple[int, ...]) -> tuple[int, ...]:
        from onnxprune.profile.chains import snap

        curve = self.curve(layer)
        return tuple(ranks) if curve is None else snap(curve, tuple(ranks))

    def summary(self, records, target: float | None) -> dict:
        """{target, total, predicted, predicted_fraction}: the measured original and the prediction after the
        decomposed layers of `records` (LayerDecomposition)."""
        total = float(self.cost.total)
        saved = sum(r.latency_before - r.latency_after for r in records
                    if r.decomposed and r.latency_before is not None and r.latency_after is not None)
        return {"target": target, "total": total, "predicted": total - saved,
                "predicted_fraction": (total - saved) / total if total else 1.0}


def latency_request(model, method: str, cost, target_latency, threads) -> LatencyModel | None:
    """The checked request: target_latency in (0, 1], threads= only to profile for a target, a cost model with
    measured `method` chains made for this model. None when neither cost= nor target_latency= is given."""
    if target_latency is not None and (isinstance(target_latency, bool) or not isinstance(target_latency, (int, float))
                                       or not 0.0 < float(target_latency) <= 1.0):
        raise InvalidRequestError(f"target_latency={target_latency!r} must be a fraction of the original's measured "
                                  "latency in (0, 1]")
    if threads is not None:
        if target_latency is None or cost is not None:
            raise InvalidRequestError("threads= is for profiling the model for target_latency= without cost=; a "
                                      "given cost model was measured already")
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise InvalidRequestError(f"threads={threads!r} must be a positive integer")
    if cost is None and target_latency is None:
        return None
    if cost is None:
        from onnxprune.profile import profile  # measuring is the costly path: imported only when taken

        cost = profile(model, threads=threads, decomposition=method)
    chains = getattr(cost, "chains", None)
    if chains is None or method not in chains.methods:
        raise InvalidRequestError(f"the cost model has no measured {method} chains: make it with "
                                  f"op.profile(model, decomposition='{method}') (CLI: onnxprune profile MODEL "
                                  f"--decomposition {method} -o cost.json)")
    from onnxprune.plan import fingerprint

    if getattr(cost, "fingerprint", None) != fingerprint(model):
        raise InvalidRequestError("the cost model was made for another model (graph fingerprint differs); profile "
                                  "this model")
    return LatencyModel(cost, method)


# --------------------------------------------------------------------------- accuracy lost

def discarded(matrix: np.ndarray) -> np.ndarray:
    """d[r] = fraction of the squared singular values beyond rank r (d[0] = 1, d[len] = 0)."""
    s2 = np.linalg.svd(np.asarray(matrix, dtype=np.float64), compute_uv=False) ** 2
    total = float(s2.sum())
    if total == 0.0:
        return np.zeros(s2.size + 1)
    return np.clip(1.0 - np.concatenate([[0.0], np.cumsum(s2)]) / total, 0.0, 1.0)


def rank_loss(method: str, kernel: np.ndarray) -> Callable[[tuple[int, ...]], float]:
    """Relative energy discarded at given ranks (see the module doc); `kernel` (O, I, ...) or a 2-D weight."""
    out = discarded(unfold(kernel, 0))

    def at(d: np.ndarray, rank: int) -> float:
        return float(d[min(rank, d.size - 1)])

    if method == "svd":
        return lambda ranks: at(out, ranks[0])
    inp = discarded(unfold(kernel, 1))
    if method == "tucker":
        return lambda ranks: at(inp, ranks[0]) + at(out, ranks[1])
    return lambda ranks: at(inp, ranks[0]) + at(out, ranks[0])


# --------------------------------------------------------------------------- the knapsack

@dataclass(frozen=True)
class Option:
    ranks: tuple[int, ...] | None  # None: the layer as it is
    ms: float
    loss: float


def front(before: float, options: list[Option]) -> list[Option]:
    """The layer itself and the options faster than it that no other option beats on both ms and loss,
    slowest (least lossy) first."""
    kept, best = [], float("inf")
    for option in sorted((o for o in options if o.ms < before), key=lambda o: (o.ms, o.loss)):
        if option.loss < best:
            kept.append(option)
            best = option.loss
    return [Option(None, before, 0.0)] + kept[::-1]


def hull(states: list[Option]) -> list[Option]:
    """The lower convex hull of a front (slowest first): loss per ms saved rises from each point to the next."""
    out: list[Option] = []
    for state in states:
        while len(out) >= 2 and _slope(out[-2], out[-1]) >= _slope(out[-2], state):
            out.pop()
        out.append(state)
    return out


def _slope(a: Option, b: Option) -> float:
    saved = a.ms - b.ms
    return (b.loss - a.loss) / saved if saved > 0 else float("inf")


def target_ranks(latency: LatencyModel, layers: list[DecomposableLayer], kernel: Callable[[DecomposableLayer], Any],
                 fraction: float) -> dict[str, tuple[int, ...] | str]:
    """{layer: ranks to decompose it at, or why it stays}: the predicted latency at most fraction x the measured
    original, the least energy lost per ms saved (module doc). InvalidRequestError when even every faster chain at
    its fastest measured ranks does not reach the target."""
    total = float(latency.cost.total)
    goal = fraction * total
    eps = 1e-12 * max(total, 1e-30)
    out: dict[str, tuple[int, ...] | str] = {}
    fronts: dict[str, list[Option]] = {}
    for layer in layers:
        curve = latency.curve(layer.name)
        if curve is None or layer.name not in latency.cost.layers:
            out[layer.name] = latency.reason(layer.name)
            continue
        before = latency.before(layer.name)
        loss = rank_loss(latency.method, kernel(layer))
        options = [Option(r, latency.chain_ms(layer.name, r), loss(r)) for r in curve.grid()]
        states = front(before, options)
        if len(states) == 1:
            fastest = min(o.ms for o in options)
            out[layer.name] = (f"no measured {latency.method} chain is faster than the layer (fastest {fastest:.4g} "
                               f"ms vs {before:.4g} ms)")
            continue
        fronts[layer.name] = states
    position = {name: 0 for name in fronts}
    paths = {name: hull(states) for name, states in fronts.items()}
    predicted = total
    heap = [(_slope(p[0], p[1]), name) for name, p in paths.items() if len(p) > 1]
    heapq.heapify(heap)
    current = {name: p[0] for name, p in paths.items()}
    while predicted > goal + eps:
        if not heap:
            raise InvalidRequestError(
                f"target_latency={fraction:g} cannot be reached by {latency.method}: every layer whose chain "
                f"measures faster, at its fastest measured ranks, predicts {predicted / total:.3f} x the original; "
                "ask for more, or prune channels (op.prune(..., target_latency=...))")
        _, name = heapq.heappop(heap)
        path, k = paths[name], position[name] + 1
        predicted -= current[name].ms - path[k].ms
        current[name], position[name] = path[k], k
        if k + 1 < len(path):
            heapq.heappush(heap, (_slope(path[k], path[k + 1]), name))
    _refill(fronts, current, goal - predicted, eps)
    for name, state in current.items():
        out[name] = state.ranks if state.ranks is not None else (
            f"not needed to reach target_latency={fraction:g} (its chains lose more accuracy per ms saved)")
    return out


def _refill(fronts: Mapping[str, list[Option]], current: dict[str, Option], slack: float, eps: float) -> None:
    """Move layers to less lossy front options that still fit in `slack` ms, the most loss removed per ms added
    first, until none fits."""
    while True:
        best = None
        for name in sorted(fronts):
            now = current[name]
            for option in fronts[name]:
                added = option.ms - now.ms
                gain = now.loss - option.loss
                if gain <= 0 or added > slack + eps:
                    continue
                price = gain / max(added, eps)
                if best is None or price > best[0]:
                    best = (price, name, option, added)
        if best is None:
            return
        _, name, option, added = best
        current[name] = option
        slack -= added
