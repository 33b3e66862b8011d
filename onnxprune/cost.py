"""Cost models: the cost of a model (latency, MACs or params) as a function of its layers' kept channels.

`CostModel` is the protocol the budget allocator (onnxprune.budget) reads; the measured latency profile
(`op.profile`) and the analytic counts here (`analytic_cost`) implement it. The predicted cost of a pruned model is

    total - sum(layer_cost(n, *layers[n])) + sum(layer_cost(n, kept_in[n], kept_out[n]))   (`predicted_cost`,
                                                                       with the tensor terms below if any)

"input channels" are those of a layer's data input (Conv / ConvTranspose: X's channel axis; Gemm / MatMul: the
reduction axis), "output channels" those of its output (Conv: weight axis 0; Gemm: N; MatMul: the last axis).

A cost model may also have `tensors`: {tensor name: (size_in, size_out, cost at full size)}, the cost of the
work outside the layers that reads or writes that activation tensor (a measured profile's elementwise ops,
pooling, ...), scaling with its kept elements: tensor_cost = cost x kept_in / size_in x kept_out / size_out over
the tensor's pruned axes (size_in = 1 for a tensor pruned along one axis). The allocator and predicted_cost
treat such a tensor as one more term, keyed TENSOR_TERM + name (`term_sizes`, `term_cost`).

A cost model may also say `stepped = True`: its curves are staircases (a measured runtime's blocked layouts), so
the allocator steps to where the cost really drops instead of by `Options.step_size`. Without the attribute the
curves count as smooth.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from onnxprune.errors import InvalidRequestError
from onnxprune.graph import attribute
from onnxprune.stats import node_macs, stats

KINDS = ("macs", "params")
LAYER_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@runtime_checkable
class CostModel(Protocol):
    """Cost of a model as a function of the kept channels of its layers (latency ms, MACs or params)."""

    total: float  # cost of the whole unpruned model
    layers: Mapping[str, tuple[int, int]]  # node name -> (input channels, output channels), unpruned

    def layer_cost(self, node: str, kept_in: int, kept_out: int) -> float:
        """Cost of that layer when kept_in of its input and kept_out of its output channels remain."""
        ...


def is_stepped(cost: CostModel) -> bool:
    """True when the cost model's curves are staircases (see the module doc)."""
    return bool(getattr(cost, "stepped", False))


TENSOR_TERM = "tensor:"


def term_sizes(cost: CostModel) -> dict[str, tuple[int, int]]:
    """{term: (input size, output size)} of every cost term: the layers (by node name), then the tensor terms."""
    sizes = dict(cost.layers)
    for name, (size_in, size_out, _) in sorted(getattr(cost, "tensors", {}).items()):
        sizes[TENSOR_TERM + name] = (size_in, size_out)
    return sizes


def term_cost(cost: CostModel, term: str, kept_in: int, kept_out: int) -> float:
    """The cost of one term (a layer, or a tensor term: see the module doc) at these kept counts."""
    if term in cost.layers:
        return cost.layer_cost(term, kept_in, kept_out)
    tensor = term[len(TENSOR_TERM):]
    if hasattr(cost, "tensor_cost"):  # a cost model with its own tensor curves (profile: attention's products)
        return cost.tensor_cost(tensor, kept_in, kept_out)
    size_in, size_out, full = cost.tensors[tensor]
    return full * kept_in / size_in * kept_out / size_out


def predicted_cost(cost: CostModel, kept: Mapping[str, tuple[int, int]]) -> float:
    """The model's cost when the terms in `kept` (layer node or tensor term -> (kept_in, kept_out)) keep those
    counts."""
    sizes = term_sizes(cost)
    change = sum(term_cost(cost, name, *kept[name]) - term_cost(cost, name, *sizes[name])
                 for name in sorted(kept) if name in sizes)
    return float(cost.total) + change


# --------------------------------------------------------------------------- analytic: MACs and params

@dataclass(frozen=True)
class Term:
    """One part of a layer's cost: `value` when unpruned, scaled by the kept fraction of the input and/or output
    channels it depends on."""

    value: float
    by_in: bool
    by_out: bool


@dataclass(frozen=True)
class AnalyticCost:
    """MACs or params (onnxprune.stats counts) of each Conv / ConvTranspose / Gemm / MatMul as a function of its
    kept channels. A depthwise conv's cost scales with its channels once (input and output are tied), a grouped
    conv's with kept_in/in x kept_out/out (its group count stays), a Gemm's / MatMul's with both."""

    kind: str
    total: float
    layers: Mapping[str, tuple[int, int]]
    terms: Mapping[str, tuple[Term, ...]]
    stepped: bool = False

    def layer_cost(self, node: str, kept_in: int, kept_out: int) -> float:
        cin, cout = self.layers[node]
        f_in = kept_in / cin if cin else 1.0
        f_out = kept_out / cout if cout else 1.0
        return sum(t.value * (f_in if t.by_in else 1.0) * (f_out if t.by_out else 1.0) for t in self.terms[node])


def analytic_cost(analysis_or_model, kind: str = "macs") -> AnalyticCost:
    """The analytic cost model of a model (an Analysis, a ModelProto or a path): kind "macs" or "params".

    Its total is `op.stats(model).macs` / `.params`; every Conv, ConvTranspose, Gemm and MatMul with MACs or
    constant inputs is a layer (MatMuls of two activations too: attention's, whose cost follows the head dims).
    A constant read by several layers counts for the first of them only, as op.stats counts it once.
    """
    from onnxprune.coupling import Analysis, analyze

    if kind not in KINDS:
        raise InvalidRequestError(f"cost kind {kind!r} is not one of {list(KINDS)}")
    analysis = analysis_or_model if isinstance(analysis_or_model, Analysis) else analyze(analysis_or_model)
    channels = analysis.channels
    shapes = dict(channels.shapes)
    counted = stats(analysis.model, shapes=shapes)
    layers: dict[str, tuple[int, int]] = {}
    terms: dict[str, tuple[Term, ...]] = {}
    claimed: set[str] = set()
    for i, node in enumerate(channels.index.nodes):
        if node.op_type not in LAYER_OPS or node.domain not in ("", "ai.onnx"):
            continue
        sizes = layer_channel_sizes(channels, node)
        if sizes is None:
            continue
        depthwise = is_depthwise(channels, node)
        if kind == "macs":
            found = (Term(float(node_macs(node, shapes)), not depthwise, True),)
        else:
            found = _param_terms(channels, node, sizes[1], depthwise, claimed)
        if any(t.value for t in found):
            layers[channels.index.names[i]] = sizes
            terms[channels.index.names[i]] = found
    return AnalyticCost(kind, float(counted.macs if kind == "macs" else counted.params), layers, terms)


def _param_terms(channels, node, cout: int, depthwise: bool, claimed: set[str]) -> tuple[Term, ...]:
    """The layer's constant inputs not counted by an earlier layer: the weight (input slot 1) scales like the
    MACs, a bias whose size is a multiple of the output channels with them, anything else not at all."""
    out = []
    for slot, name in enumerate(node.input):
        if not name or not channels.is_const(name):
            continue
        source = channels.constant_source(name)
        shape = channels.shape(name)
        if source in claimed or shape is None or not all(isinstance(d, int) for d in shape):
            continue
        claimed.add(source)
        size = 1
        for d in shape:
            size *= d
        if slot == 1:
            out.append(Term(float(size), not depthwise, True))
        else:
            out.append(Term(float(size), False, bool(cout) and size % cout == 0 and size > 0))
    return tuple(out)


# --------------------------------------------------------------------------- the channel axes of a layer

def layer_axes(channels, node) -> tuple[int | None, int | None]:
    """(axis of node.input[0] holding its input channels, axis of node.output[0] holding its output channels)."""
    if node.op_type in ("Conv", "ConvTranspose"):
        return 1, 1
    if node.op_type == "Gemm":
        return (0 if attribute(node, "transA", 0) else 1), 1
    a, y = channels.rank(node.input[0]), channels.rank(node.output[0])
    return (None if not a else a - 1), (None if not y else y - 1)


def layer_channel_sizes(channels, node) -> tuple[int, int] | None:
    """(input channels, output channels) of a layer from its inferred shapes; None when unknown."""
    axis_in, axis_out = layer_axes(channels, node)
    if axis_in is None or axis_out is None:
        return None
    cin, cout = channels.dim(node.input[0], axis_in), channels.dim(node.output[0], axis_out)
    if not isinstance(cin, int) or not isinstance(cout, int):
        return None
    return cin, cout


def is_depthwise(channels, node) -> bool:
    """A Conv / ConvTranspose with one input channel per group: its input and output channels are tied."""
    if node.op_type not in ("Conv", "ConvTranspose") or attribute(node, "group", 1) == 1:
        return False
    w = channels.shape(node.input[1])
    if w is None or len(w) < 3:  # not a convolution kernel: analysis blocks such a layer (layout.layer_problem)
        return False
    groups = attribute(node, "group", 1)
    return (w[1] if node.op_type == "Conv" else w[0] // groups) == 1
