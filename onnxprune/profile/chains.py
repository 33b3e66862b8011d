"""Measured latency of decomposition factor chains as a function of their ranks (the decomposition side of the
cost model).

For every decomposable layer (onnxprune.decomposition candidates) and method asked for, a ChainSpec: the layer's
LayerSpec (input shape, attributes, dtype, folded bias, epilogue) and the method. Its micro-graph (chain_graph) is
the layer's own micro-graph at full channels with the layer node replaced by the chain that `decompose` builds
(decomposition.chains.build, random factors), so the chain sees the same boundaries, bias and epilogue as the
layer. Chains with the same signature (method + layer signature) are measured once.

Grid (rank_points): along each rank axis multiples of STEP (SMALL_STEP for ranks of at most SMALL_AXIS) up to the
axis limit, widened in multiples of 2 x STEP to at most MAX_RANK_POINTS, then the next multiple above the limit
and the full rank. The limit is the largest rank whose chain (other ranks at 1) has no more MACs than the layer:
above it a chain is seldom faster, so it is only sampled coarsely (next multiple, full). Tucker has two axes:
each with the other rank at full, plus the corner (smallest, smallest) and one held-out point at about half of
both limits.

Points are timed beside the layer at full channels in the same chunk (timing.Timer.chain_points) and stored as
ratios to it (in the latency cache, under the chain signature); the cost model turns them into ms with the
layer's own curve (ratio x the layer's latency at full channels), so "the chain measures faster than its layer"
is exactly the measured ratio < 1.

Between points (ChainCurve): piecewise linear along an axis (snap moves computed ranks onto measured points);
Tucker in 2-D as the axes plus an interaction fitted at the corner,

    L(i, o) = A_in(i) + A_out(o) - F + beta (A_in(i) - F)(A_out(o) - F),     F = L(I, O),

exact on both axes and at the corner, and exact everywhere when the chain costs c0 + a s(i) + c t(o) + b s(i) t(o)
for any staircases s, t (first and last 1x1 convs depend on one rank each, the core on both). It is the layer
curves' separable model with a fixed part (beta = 1 / (F - L0)), written so that beta may take either sign.
"""
from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TextIO

import numpy as np
import onnx
from onnx import helper

from onnxprune.decomposition.candidates import DecomposableLayer, decomposable_layers, normalise_method
from onnxprune.decomposition.chains import build
from onnxprune.decomposition.cost import chain_cost, layer_cost
from onnxprune.errors import InvalidRequestError
from onnxprune.graph import NameSource
from onnxprune.profile.curves import SMALL_AXIS, SMALL_STEP, STEP
from onnxprune.profile.layers import OPSET, LayerSpec, WeightPool, micro_graph
from onnxprune.progress import track

METHODS = ("tucker", "cp", "svd")
MAX_RANK_POINTS = 12
SAME_STEP = 0.01  # snapping: a larger rank whose predicted latency is at most this much higher is "the same step"


# --------------------------------------------------------------------------- what is measured

@dataclass(frozen=True)
class ChainSpec:
    """The factor chain of one layer by one method: the layer's spec, the method, full ranks and axis limits."""

    layer: LayerSpec
    method: str
    full_ranks: tuple[int, ...]
    limits: tuple[int, ...]

    def signature(self) -> str:
        return json.dumps(["chain", self.method, self.layer.signature()], separators=(",", ":"))


def rank_limits(layer: DecomposableLayer, method: str) -> tuple[int, ...]:
    """Per rank axis, the largest rank whose chain (other ranks 1) has at most the layer's MACs (at least 1)."""
    full = layer.full_ranks[method]
    macs = layer_cost(layer.geometry)[1]
    out = []
    for axis, top in enumerate(full):
        best = 1
        for rank in range(1, top + 1):
            ranks = tuple(rank if k == axis else 1 for k in range(len(full)))
            if chain_cost(layer.geometry, method, ranks)[1] > macs:
                break
            best = rank
        out.append(best)
    return tuple(out)


def rank_axis(full: int, limit: int) -> list[int]:
    """Measured ranks along one axis (see the module doc)."""
    step = SMALL_STEP if full <= SMALL_AXIS else STEP
    top = min(max(limit, 1), full)
    if top // step > MAX_RANK_POINTS:
        step = 2 * STEP * math.ceil(top / (MAX_RANK_POINTS * 2 * STEP))
    ranks = list(range(step, top + 1, step)) or [min(step, full)]
    above = ranks[-1] + step
    return sorted({*ranks, *([above] if above < full else []), full})


def rank_points(spec: ChainSpec) -> list[tuple[int, ...]]:
    """Every rank tuple to measure for the chain, without repeats."""
    axes = [rank_axis(f, lim) for f, lim in zip(spec.full_ranks, spec.limits)]
    if len(axes) == 1:
        return [(r,) for r in axes[0]]
    (ins, outs), (full_in, full_out) = axes, spec.full_ranks
    points = [(r, full_out) for r in ins] + [(full_in, r) for r in outs] + [(ins[0], outs[0])]
    half = (min(ins, key=lambda r: abs(r - spec.limits[0] / 2)), min(outs, key=lambda r: abs(r - spec.limits[1] / 2)))
    return list(dict.fromkeys(points + [half]))


def chain_specs(layers: Iterable[DecomposableLayer], specs: Iterable[LayerSpec],
                methods: Iterable[str]) -> tuple[dict[str, dict[str, ChainSpec]], dict[str, str]]:
    """({layer: {method: ChainSpec}} for every candidate layer and each of `methods` it supports,
    {layer: reason} for decomposable layers the profiler cannot measure)."""
    by_name = {s.name: s for s in specs}
    out: dict[str, dict[str, ChainSpec]] = {}
    skipped: dict[str, str] = {}
    for layer in layers:
        wanted = [m for m in methods if m in layer.full_ranks]
        if not wanted:
            continue
        spec = by_name.get(layer.name)
        if spec is None or layer.geometry is None:
            skipped[layer.name] = "its layer is not modelled by the profiler (unknown shapes or weight)"
            continue
        out[layer.name] = {m: ChainSpec(spec, m, layer.full_ranks[m], rank_limits(layer, m)) for m in wanted}
    return out, skipped


def factor_shapes(spec: LayerSpec, method: str, ranks: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Shapes of the chain's factors in the ONNX layouts decompose gives build()."""
    cin, cout = spec.in_channels, spec.out_channels
    if spec.op_type != "Conv":
        return [(cin, ranks[0]), (ranks[0], cout)]
    kernel = tuple(spec.weight_shape[2:])
    ones = (1,) * len(kernel)
    if method == "tucker":
        return [(ranks[0], cin, *ones), (ranks[1], ranks[0], *kernel), (cout, ranks[1], *ones)]
    if method == "cp":
        taps = [(ranks[0], 1, *(k if j == axis else 1 for j, k in enumerate(kernel))) for axis in range(len(kernel))]
        return [(ranks[0], cin, *ones), *taps, (cout, ranks[0], *ones)]
    return [(ranks[0], cin, *ones), (cout, ranks[0], *ones)]


def chain_graph(spec: ChainSpec, ranks: tuple[int, ...], pool: WeightPool) -> tuple[onnx.ModelProto,
                                                                                  tuple[int, ...]]:
    """The layer's micro-graph at full channels with the layer replaced by its chain at `ranks`; the model and
    the shape of its input 'x'."""
    layer = spec.layer
    model, x_shape = micro_graph(layer, layer.in_channels, layer.out_channels, pool)
    graph = model.graph
    dtype = helper.tensor_dtype_to_np_dtype(layer.dtype)
    factors = [pool.take(shape, layer.dtype) for shape in factor_shapes(layer, spec.method, ranks)]
    chain = build(spec.method, graph.node[0], "layer", factors, dtype, NameSource(graph), OPSET)
    rest = list(graph.node[1:])
    inits = [t for t in graph.initializer if t.name != "w"] + chain.initializers
    new = helper.make_graph(chain.nodes + rest, graph.name, list(graph.input), list(graph.output), inits)
    out = helper.make_model(new, opset_imports=list(model.opset_import), producer_name="onnxprune")
    out.ir_version = model.ir_version
    return out, x_shape


# --------------------------------------------------------------------------- the model between points

class ChainCurve:
    """Latency of one chain signature vs its ranks, from measured points {ranks: value} (ratios or ms)."""

    def __init__(self, full: tuple[int, ...], points: Mapping[tuple[int, ...], float]) -> None:
        self.full = tuple(int(f) for f in full)
        self.points = {tuple(int(r) for r in k): float(v) for k, v in points.items()}
        if len(self.full) == 1:
            self.axes = [_axis((k[0], v) for k, v in self.points.items())]
            self.beta = 0.0
            return
        full_in, full_out = self.full
        self.axes = [_axis((i, v) for (i, o), v in self.points.items() if o == full_out),
                     _axis((o, v) for (i, o), v in self.points.items() if i == full_in)]
        self.beta = self._fit_beta()

    @property
    def full_value(self) -> float:
        return float(self.axes[0][1][-1])

    def _fit_beta(self) -> float:
        corner = (int(self.axes[0][0][0]), int(self.axes[1][0][0]))
        if corner not in self.points:
            return 0.0
        f = self.full_value
        a, b = (float(np.interp(c, *axis)) - f for c, axis in zip(corner, self.axes))
        if abs(a * b) < 1e-12 * f * f:
            return 0.0
        return (self.points[corner] - a - b - f) / (a * b)

    def grid(self) -> list[tuple[int, ...]]:
        """The rank tuples on the measured axes (Tucker: every pair of measured input and output ranks)."""
        if len(self.full) == 1:
            return [(int(r),) for r in self.axes[0][0]]
        return [(int(i), int(o)) for i in self.axes[0][0] for o in self.axes[1][0]]

    def axis(self, k: int) -> list[int]:
        return [int(r) for r in self.axes[k][0]]

    def cost(self, ranks: tuple[int, ...]) -> float:
        """The value at these ranks (any ranks in 1..full; below the smallest measured rank it is held flat)."""
        values = [float(np.interp(r, *axis)) for r, axis in zip(ranks, self.axes)]
        if len(values) == 1:
            return values[0]
        f = self.full_value
        estimate = values[0] + values[1] - f + self.beta * (values[0] - f) * (values[1] - f)
        return max(estimate, 1e-3 * min(values))

    def check_errors(self) -> list[float]:
        """Relative error at the measured points the model was not built on (Tucker's held-out point)."""
        if len(self.full) == 1:
            return []
        corner = (int(self.axes[0][0][0]), int(self.axes[1][0][0]))
        return [(self.cost(k) - v) / v for k, v in self.points.items()
                if k[0] != self.full[0] and k[1] != self.full[1] and k != corner and v > 0]

    def scaled(self, factor: float) -> ChainCurve:
        return ChainCurve(self.full, {k: v * factor for k, v in self.points.items()})

    def as_list(self) -> list[list[float]]:
        """[[rank_a, rank_b, value], ...]; one-axis chains have rank_b 0 (the latency cache's point format)."""
        return [[*k, *([0] if len(k) == 1 else []), v] for k, v in sorted(self.points.items())]

    @classmethod
    def from_list(cls, full: tuple[int, ...], rows: Iterable[Iterable[float]]) -> ChainCurve:
        points = {}
        for row in rows:
            a, b, value = row
            points[(int(a),) if len(full) == 1 else (int(a), int(b))] = float(value)
        return cls(full, points)


def _axis(pairs: Iterable[tuple[int, float]]) -> tuple[np.ndarray, np.ndarray]:
    ordered = sorted(pairs)
    return np.array([c for c, _ in ordered], float), np.array([v for _, v in ordered], float)


def snap(curve: ChainCurve, ranks: tuple[int, ...]) -> tuple[int, ...]:
    """The cheapest point of the ranks' latency step. Per axis in turn: a rank less than one runtime block
    (2 x STEP) below the next measured rank goes up to it (the runtime computes whole blocks, so the measured
    point is what the rank really costs); then the rank walks up the measured ranks while the prediction stays
    within SAME_STEP of its own (the largest rank of the same predicted latency)."""
    ranks = list(ranks)
    for k in range(len(ranks)):
        measured = curve.axis(k)
        above = [r for r in measured if r >= ranks[k]]
        if above and above[0] - ranks[k] < 2 * STEP:
            ranks[k] = above[0]
        base = curve.cost(tuple(ranks))
        for rank in measured:
            if rank <= ranks[k]:
                continue
            trial = tuple(rank if j == k else r for j, r in enumerate(ranks))
            if curve.cost(trial) > base * (1 + SAME_STEP):
                break
            ranks[k] = rank
    return tuple(ranks)


# --------------------------------------------------------------------------- measured chains of a model

class ChainCosts:
    """The chains of a model's decomposable layers: per layer and method the chain's signature; the curves in
    ms of the layer signature's micro-graph (times the cost model's scale); layers that could not be measured
    and why; the methods profiled; per layer its `context`: its own time in the whole model over that (from the
    model's profile, profile.activations.in_context; 1 when unknown). A layer and its chain are both taken at
    the layer's context: one scale for all layers put the saving of a VGG-like model's 8x8 convs, whose
    micro-graphs measure 1.25x their time in the model, about a quarter too high, and the latency target
    picked exactly those (a prediction of 0.70 measured 0.77 on a busy machine)."""

    def __init__(self, methods: Iterable[str], layers: Mapping[str, Mapping[str, str]],
                 curves: Mapping[str, ChainCurve], skipped: Mapping[str, str] | None = None,
                 context: Mapping[str, float] | None = None) -> None:
        self.methods = tuple(methods)
        self.layers = {name: dict(m) for name, m in layers.items()}
        self.curves = dict(curves)
        self.skipped = dict(skipped or {})
        self.context = {name: float(f) for name, f in (context or {}).items()}

    def curve(self, layer: str, method: str) -> ChainCurve | None:
        """The chain's curve at the layer signature's scale (multiply by `factor(layer)` for this layer's ms)."""
        signature = self.layers.get(layer, {}).get(method)
        return None if signature is None else self.curves[signature]

    def factor(self, layer: str) -> float:
        """The layer's time in the model over its curve's (its chains' too)."""
        return self.context.get(layer, 1.0)

    def cost(self, layer: str, method: str, ranks: tuple[int, ...]) -> float:
        """Latency in ms of `layer`'s chain by `method` at `ranks`, in the model (times factor(layer))."""
        curve = self.curve(layer, method)
        if curve is None:
            raise InvalidRequestError(f"layer '{layer}' has no measured {method} chain in the cost model"
                                      + (f" ({self.skipped[layer]})" if layer in self.skipped else ""))
        for rank, full in zip(ranks, curve.full):
            if not 1 <= rank <= full:
                raise InvalidRequestError(f"layer '{layer}': rank {rank} is outside 1..{full}")
        return curve.cost(tuple(ranks)) * self.factor(layer)

    def as_dict(self) -> dict[str, Any]:
        used = sorted({s for m in self.layers.values() for s in m.values()})
        return {"methods": list(self.methods), "layers": self.layers, "skipped": self.skipped,
                "curves": {s: {"full": list(self.curves[s].full), "points": self.curves[s].as_list()} for s in used},
                "context": dict(sorted(self.context.items()))}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ChainCosts:
        curves = {s: ChainCurve.from_list(tuple(c["full"]), c["points"]) for s, c in data["curves"].items()}
        return cls(data["methods"], data["layers"], curves, data.get("skipped"), data.get("context"))


def methods_asked(decomposition: Any) -> tuple[str, ...]:
    """op.profile's decomposition=: None / False (none), True (all), a method name or a list of them."""
    if decomposition is None or decomposition is False:
        return ()
    if decomposition is True:
        return METHODS
    names = [decomposition] if isinstance(decomposition, str) else list(decomposition)
    return tuple(dict.fromkeys(normalise_method(n) for n in names))


def measure_chains(model: onnx.ModelProto, specs: list[LayerSpec], methods: tuple[str, ...], store, timer,
                   layer_ms: Mapping[str, float], context: Mapping[str, float] | None = None,
                   stream: TextIO | None = None) -> ChainCosts:
    """The ChainCosts of `model` for `methods`: unmeasured chain signatures timed by `timer.chain_points` and put
    in `store` (the latency cache) as ratios; curves scaled to ms by `layer_ms` ({layer name: ms at full, the
    same for every layer of a signature}); `context`: {layer: its ms in the model} where the model's profile
    gave it (ChainCosts.context is that over layer_ms)."""
    per_layer, skipped = chain_specs(decomposable_layers(model), specs, methods)
    unique: dict[str, ChainSpec] = {}
    for entry in per_layer.values():
        for spec in entry.values():
            unique.setdefault(spec.signature(), spec)
    todo = [s for s in unique if s not in store.layers]
    for signature in track(todo, "profiling chains", unit="chain", stream=stream):
        spec = unique[signature]
        points = rank_points(spec)
        ratios = timer.chain_points(spec, points)
        store.put_layer(signature, ChainCurve(spec.full_ranks, dict(zip(points, ratios))).as_list())
    curves: dict[str, ChainCurve] = {}
    layers: dict[str, dict[str, str]] = {}
    for name, entry in per_layer.items():
        layers[name] = {}
        for method, spec in entry.items():
            signature = spec.signature()  # same chain signature, same layer signature: the same layer_ms
            if signature not in curves:
                ratios = ChainCurve.from_list(spec.full_ranks, store.layers[signature])
                curves[signature] = ratios.scaled(layer_ms[name])
            layers[name][method] = signature
    factors = {name: context[name] / layer_ms[name] for name in layers
               if context is not None and name in context and layer_ms[name] > 0}
    return ChainCosts(methods, layers, curves, skipped, factors)
