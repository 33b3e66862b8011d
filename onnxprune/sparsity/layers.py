"""Which weights take part in sparsification: Conv, Gemm and MatMul weights held in initializers.

A `WeightLayer` is one weight initializer and the node(s) that read it. Its axes:
  * `out_axis`: the output-channel axis (Conv 0, Gemm the N axis, MatMul -1), zeroed whole by channel strategies;
  * `reduction_axis`: the axis summed over (Conv 1: input channels of the group, Gemm the K axis, MatMul -2),
    along which N:M groups of M consecutive weights are formed (as sparse tensor cores do for GEMMs and
    implicit-GEMM convolutions).
Layers come in graph (topological) order; a weight shared by several nodes is one layer (named after its first node).
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto

from onnxprune import ir
from onnxprune.errors import InvalidRequestError
from onnxprune.graph import attribute
from onnxprune.layout import weight_layout

FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16}
OP_TYPES = ("Conv", "Gemm", "MatMul")


@dataclass
class WeightLayer:
    """One participating weight. `value` is the read-only original array."""

    name: str  # node name of the first node reading the weight
    op_type: str
    weight: str  # initializer name
    shape: tuple[int, ...]
    out_axis: int
    reduction_axis: int
    input: str  # the node's data input (activations)
    output: str  # the node's output
    input_axis: int = 1  # channel axis of `input` (Conv 1, Gemm 1 or 0 with transA, MatMul -1)
    output_axis: int = 1  # channel axis of `output` (Conv and Gemm 1, MatMul -1)
    group: int = 1  # Conv group attribute
    nodes: list[str] = field(default_factory=list)
    conv: dict | None = None  # Conv geometry: kernel, strides, dilations, pads, auto_pad (for im2col)
    value: np.ndarray | None = field(default=None, repr=False)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def input_channel_index(self) -> np.ndarray:
        """For every element of the weight, the index of the data-input channel it multiplies.

        Conv with groups: weight[o, i] reads input channel (o // (O / group)) * (I / group) + i.
        """
        shape = self.shape
        if self.op_type == "Conv":
            out_per_group = shape[0] // max(self.group, 1)
            o = np.arange(shape[0]).reshape((-1,) + (1,) * (len(shape) - 1))
            i = np.arange(shape[1]).reshape((1, -1) + (1,) * (len(shape) - 2))
            return np.broadcast_to((o // out_per_group) * shape[1] + i, shape)
        axis = self.reduction_axis % len(shape)
        index = np.arange(shape[axis]).reshape([-1 if k == axis else 1 for k in range(len(shape))])
        return np.broadcast_to(index, shape)


def find_layers(model: onnx.ModelProto) -> list[WeightLayer]:
    """Every Conv / Gemm / MatMul weight held in a float initializer of the main graph, in graph order."""
    inits = {t.name: t for t in model.graph.initializer}
    graph_inputs = {v.name for v in model.graph.input}
    layers: dict[str, WeightLayer] = {}
    for index, node in enumerate(model.graph.node):
        if node.op_type not in OP_TYPES or node.domain not in ("", "ai.onnx") or len(node.input) < 2:
            continue
        weight = node.input[1]
        tensor = inits.get(weight)
        if tensor is None or tensor.data_type not in FLOAT_TYPES or weight in graph_inputs or node.input[0] in inits:
            continue
        rank = len(tensor.dims)
        if (node.op_type == "Conv" and rank < 3) or (node.op_type == "Gemm" and rank != 2) or rank < 2:
            continue
        layout = weight_layout(node, rank)
        name = node.name or f"{node.op_type}_{index}"
        if weight in layers:
            layers[weight].nodes.append(name)
            continue
        geometry = conv_geometry(node, list(tensor.dims[2:])) if node.op_type == "Conv" else None
        layers[weight] = WeightLayer(name=name, op_type=node.op_type, weight=weight, shape=tuple(tensor.dims),
                                     out_axis=layout.out_axis, reduction_axis=layout.in_axis, input=node.input[0],
                                     output=node.output[0], input_axis=layout.x_axis,
                                     output_axis=layout.y_axis, group=layout.group, nodes=[name],
                                     conv=geometry)
    return list(layers.values())


def conv_geometry(node: onnx.NodeProto, kernel: list[int]) -> dict:
    """A Conv's kernel, strides, dilations, pads and auto_pad, defaults filled in."""
    n = len(kernel)
    auto_pad = attribute(node, "auto_pad", "NOTSET")
    return {"kernel": kernel, "strides": list(attribute(node, "strides", None) or [1] * n),
            "dilations": list(attribute(node, "dilations", None) or [1] * n),
            "pads": list(attribute(node, "pads", None) or [0] * (2 * n)),
            "auto_pad": auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)}


def select(layers: list[WeightLayer], exclude: list[str] | tuple[str, ...] | str | None,
           exclude_first: bool, exclude_classifier: bool) -> tuple[list[WeightLayer], dict[str, str]]:
    """(participating layers, {weight: why excluded}). `exclude`: node or initializer names, or fnmatch patterns.

    exclude_first drops the first layer in graph order, exclude_classifier the last (the classifier of a
    classification network). A name or pattern that matches no layer is an error (typos would go unnoticed).
    """
    if isinstance(exclude, str):
        exclude = [exclude]
    patterns = list(exclude or [])
    for p in patterns:
        if not isinstance(p, str) or not p:
            raise InvalidRequestError(f"exclude entries must be non-empty layer names or patterns, not {p!r}")
    excluded: dict[str, str] = {}
    if layers and exclude_first:
        excluded[layers[0].weight] = "first layer (exclude_first)"
    if layers and exclude_classifier:
        excluded[layers[-1].weight] = "classifier, the last layer (exclude_classifier)"
    for pattern in patterns:
        hits = [layer for layer in layers
                if any(fnmatch.fnmatchcase(n, pattern) for n in (*layer.nodes, layer.weight))]
        if not hits:
            names = [layer.name for layer in layers]
            raise InvalidRequestError(f"exclude: '{pattern}' matches no Conv/Gemm/MatMul layer (node or weight "
                                      f"name, fnmatch pattern); layers are {names[:20]}"
                                      + (" ..." if len(names) > 20 else ""))
        for layer in hits:
            excluded.setdefault(layer.weight, f"excluded by '{pattern}'")
    return [layer for layer in layers if layer.weight not in excluded], excluded


def load_values(model: onnx.ModelProto, layers: list[WeightLayer]) -> None:
    """Attach each layer's weight array (read-only, from the initializer or its external data)."""
    inits = {t.name: t for t in model.graph.initializer}
    directory = ir.base_dir(model)
    for layer in layers:
        layer.value = ir.tensor_array(inits[layer.weight], directory)
