"""What the profiler measures: one LayerSpec per modelled layer, and its micro-graph at given kept channels.

A LayerSpec holds everything that decides a layer's cost and nothing else (so identical layers share one
signature and are measured once): op, input shape (symbolic dims set to `batch`), attributes, weight shape,
bias, dtype, and the epilogue onnxruntime fuses into the layer in the real model:
  * a BatchNormalization right after a Conv / ConvTranspose is folded into it: the micro-graph gets a bias;
  * an Add of a constant right after a MatMul (its bias) is kept as an Add;
  * an activation right after (Relu, Clip, LeakyRelu, Sigmoid, HardSigmoid, HardSwish, Tanh) is kept: ORT fuses
    it into the conv, and its cost scales with the output channels.
Each step only counts when the layer's output feeds that node alone. Layout conversions (ORT's NCHWc
reorders) come from onnxruntime's own optimiser on the micro-graph, at its boundaries: a kept count off the
runtime's block size changes the conv kernel and its reorders, and the micro-graph sees that.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxprune.coupling import Analysis

MODELLED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
ACTIVATIONS = ("Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh")
OPSET = 17


@dataclass(frozen=True)
class LayerSpec:
    """A modelled layer, described by what sets its cost (the `name` is not part of the signature)."""

    name: str
    op_type: str
    x_shape: tuple[int, ...]
    weight_shape: tuple[int, ...]
    attrs: tuple[tuple[str, Any], ...]
    dtype: int
    bias: bool
    epilogue: tuple[str, ...]
    in_channels: int
    out_channels: int

    @property
    def groups(self) -> int:
        return int(dict(self.attrs).get("group", 1))

    @property
    def tied(self) -> bool:
        """Depthwise conv: input and output channels go together, `group` follows the kept count."""
        if self.op_type not in ("Conv", "ConvTranspose") or self.groups == 1:
            return False
        per_group_in = self.weight_shape[1] if self.op_type == "Conv" else self.weight_shape[0] // self.groups
        return per_group_in == 1

    @property
    def unit(self) -> int:
        """Kept counts are multiples of this (grouped convs keep the same positions in every group)."""
        return self.groups if self.op_type in ("Conv", "ConvTranspose") and not self.tied else 1

    @property
    def multiplier(self) -> int:
        """Depthwise channel multiplier: output channels per input channel."""
        return self.out_channels // self.in_channels if self.tied else 1

    def signature(self) -> str:
        """Stable text key of everything that sets the layer's cost."""
        return json.dumps([self.op_type, list(self.x_shape), list(self.weight_shape), [list(a) for a in self.attrs],
                           int(self.dtype), self.bias, list(self.epilogue)], separators=(",", ":"))


# --------------------------------------------------------------------------- specs from a model

def layer_specs(analysis: Analysis, batch: int) -> tuple[list[LayerSpec], dict[str, str]]:
    """The modelled layers of an analysed model, and {layer: reason} for those that cannot be measured."""
    graph = analysis.model.graph
    nodes = {n.name: n for n in graph.node}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    dtypes = _constant_dtypes(graph)
    specs, skipped = [], {}
    for layer in analysis.layers:
        if layer.op_type not in MODELLED_OPS or layer.name not in nodes:
            continue
        node = nodes[layer.name]
        reason = _unmeasurable(analysis, node, layer)
        if reason:
            skipped[layer.name] = reason
            continue
        x_shape = tuple(d if isinstance(d, int) else int(batch) for d in analysis.channels.shape(node.input[0]))
        weight = node.input[1]
        attrs = tuple(sorted((a.name, _plain(helper.get_attribute_value(a))) for a in node.attribute))
        bias, epilogue = _epilogue(node, consumers, outputs, analysis)
        specs.append(LayerSpec(layer.name, node.op_type, x_shape, tuple(analysis.channels.shape(weight)), attrs,
                               dtypes.get(weight, TensorProto.FLOAT), bias or _has_bias(node), epilogue,
                               int(layer.in_channels), int(layer.out_channels)))
    return specs, skipped


def _unmeasurable(analysis: Analysis, node: onnx.NodeProto, layer) -> str | None:
    channels = analysis.channels
    if len(node.input) < 2 or not channels.is_const(node.input[1]):
        return "its weight (input 1) is not a constant"
    x_shape, w_shape = channels.shape(node.input[0]), channels.shape(node.input[1])
    if x_shape is None or any(d is None for d in x_shape) or w_shape is None or not all(
            isinstance(d, int) for d in w_shape):
        return "the shape of its input or weight is unknown"
    if not layer.in_channels or not layer.out_channels:
        return "its channel counts are unknown"
    if node.op_type == "MatMul" and len(w_shape) != 2:
        return "its weight is not a matrix"
    return None


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (int, float, str)):
        return value
    return repr(value)


def _constant_dtypes(graph: onnx.GraphProto) -> dict[str, int]:
    dtypes = {t.name: t.data_type for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    dtypes[node.output[0]] = attr.t.data_type
    return dtypes


def _has_bias(node: onnx.NodeProto) -> bool:
    return node.op_type in ("Conv", "ConvTranspose", "Gemm") and len(node.input) > 2 and bool(node.input[2])


def _epilogue(node: onnx.NodeProto, consumers: dict[str, list[onnx.NodeProto]], outputs: set[str],
              analysis: Analysis) -> tuple[bool, tuple[str, ...]]:
    """(a bias is folded in, the ops kept after the layer) following single-consumer edges."""
    bias, ops = False, []
    tensor = node.output[0]

    def sole_next() -> onnx.NodeProto | None:
        users = consumers.get(tensor, [])
        return users[0] if len(users) == 1 and tensor not in outputs else None

    following = sole_next()
    if following is not None and node.op_type in ("Conv", "ConvTranspose") and following.op_type == \
            "BatchNormalization" and all(analysis.channels.is_const(i) for i in following.input[1:]):
        bias, tensor = True, following.output[0]
        following = sole_next()
    if following is not None and node.op_type == "MatMul" and following.op_type == "Add" and any(
            analysis.channels.is_const(i) for i in following.input):
        ops.append("Add")
        tensor = following.output[0]
        following = sole_next()
    if following is not None and following.op_type in ACTIVATIONS:
        ops.append(following.op_type)
    return bias, tuple(ops)


# --------------------------------------------------------------------------- micro-graphs

class WeightPool:
    """Random values sliced for every micro-graph weight (the values do not change dense kernels' speed)."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.values = np.zeros(0, np.float32)

    def take(self, shape: tuple[int, ...], dtype: int) -> np.ndarray:
        size = int(np.prod(shape))
        if size > self.values.size:
            self.values = self.rng.standard_normal(max(size, 2 * self.values.size), dtype=np.float32) * 0.05
        return self.values[:size].reshape(shape).astype(helper.tensor_dtype_to_np_dtype(dtype))


def kept_out_for(spec: LayerSpec, kept_in: int, kept_out: int) -> int:
    """The output count a micro-graph really has (depthwise: follows the input count)."""
    return kept_in * spec.multiplier if spec.tied else kept_out


def micro_graph(spec: LayerSpec, kept_in: int, kept_out: int, pool: WeightPool) -> tuple[onnx.ModelProto,
                                                                                          tuple[int, ...]]:
    """The layer alone (plus its epilogue) with `kept_in` input and `kept_out` output channels; the model and the
    shape of its input 'x'."""
    kept_out = kept_out_for(spec, kept_in, kept_out)
    attrs = dict(spec.attrs)
    x_shape, w_shape = list(spec.x_shape), list(spec.weight_shape)
    op = spec.op_type
    if op in ("Conv", "ConvTranspose"):
        x_shape[1] = kept_in
        groups = kept_in if spec.tied else spec.groups
        attrs["group"] = groups
        if op == "Conv":
            w_shape[0], w_shape[1] = kept_out, kept_in // groups
        else:
            w_shape[0], w_shape[1] = kept_in, kept_out // groups
    elif op == "Gemm":
        x_shape[0 if attrs.get("transA", 0) else 1] = kept_in
        w_shape = [kept_out, kept_in] if attrs.get("transB", 0) else [kept_in, kept_out]
    else:  # MatMul
        x_shape[-1] = kept_in
        w_shape = [kept_in, kept_out]
    inits = [numpy_helper.from_array(pool.take(tuple(w_shape), spec.dtype), "w")]
    inputs = ["x", "w"]
    if spec.bias:
        inits.append(numpy_helper.from_array(pool.take((kept_out,), spec.dtype), "b"))
        inputs.append("b")
    nodes = [helper.make_node(op, inputs, ["y0"], **attrs)]
    last = "y0"
    for k, step in enumerate(spec.epilogue, 1):
        extra = []
        if step == "Add":
            inits.append(numpy_helper.from_array(pool.take((kept_out,), spec.dtype), "add_b"))
            extra = ["add_b"]
        elif step == "Clip":
            np_type = helper.tensor_dtype_to_np_dtype(spec.dtype)
            inits.append(numpy_helper.from_array(np.array(0, np_type), "clip_lo"))
            inits.append(numpy_helper.from_array(np.array(6, np_type), "clip_hi"))
            extra = ["clip_lo", "clip_hi"]
        nodes.append(helper.make_node(step, [last] + extra, [f"y{k}"]))
        last = f"y{k}"
    graph = helper.make_graph(nodes, "onnxprune_profile", [helper.make_tensor_value_info("x", spec.dtype, x_shape)],
                              [helper.make_tensor_value_info(last, spec.dtype, [None] * len(x_shape))], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="onnxprune")
    model.ir_version = 8
    return model, tuple(x_shape)
