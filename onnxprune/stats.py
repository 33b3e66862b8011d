"""Parameter and MAC counts per node and in total, computed from shapes (no weights read)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import onnx
from onnx import TensorProto

from . import ir
from .layout import weight_layout
from .text import human

_FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16}
_FLOAT_TYPES |= {getattr(TensorProto, n) for n in ("FLOAT8E4M3FN", "FLOAT8E4M3FNUZ", "FLOAT8E5M2",
                                                     "FLOAT8E5M2FNUZ", "FLOAT8E8M0", "FLOAT4E2M1")
                 if hasattr(TensorProto, n)}


@dataclass(frozen=True)
class NodeStats:
    """One node: its floating-point constant inputs (params) and multiply-accumulates."""

    op_type: str
    params: int
    macs: int


@dataclass
class ModelStats:
    """Totals (each constant counted once) and per-node counts keyed by node name."""

    params: int
    macs: int
    size_bytes: int
    nodes: dict[str, NodeStats] = field(default_factory=dict)

    def __str__(self) -> str:
        by_op: dict[str, list[int]] = {}
        for node in self.nodes.values():
            row = by_op.setdefault(node.op_type, [0, 0, 0])
            row[0] += 1
            row[1] += node.params
            row[2] += node.macs
        lines = [f"params {human(self.params)}  MACs {human(self.macs)}  size {human(self.size_bytes)}B  "
                 f"nodes {len(self.nodes)}",
                 f"{'op_type':<24} {'count':>6} {'params':>10} {'MACs':>10}"]
        for op, (count, params, macs) in sorted(by_op.items(), key=lambda kv: (-kv[1][2], -kv[1][1], kv[0])):
            lines.append(f"{op:<24} {count:>6} {human(params):>10} {human(macs):>10}")
        return "\n".join(lines)


def stats(model: ir.ModelLike, *, shapes: dict[str, tuple] | None = None) -> ModelStats:
    """Params, MACs and size of a model.

    params: elements of floating-point constants (initializers, Constant values, ConstantOfShape
    with a constant shape), counted from dims. MACs: Conv, ConvTranspose, Gemm, MatMul; other
    ops count 0. Dynamic dims (e.g. batch) count as 1. Nodes without a name get "<op_type>_<index>".
    `shapes` (from ir.infer_shapes) saves inferring them again.
    """
    model = ir.load_model(model)
    if shapes is None:
        shapes = ir.infer_shapes(model)
    constants = _float_constants(model)
    nodes: dict[str, NodeStats] = {}
    for index, node in enumerate(model.graph.node):
        key = node.name or f"{node.op_type}_{index}"
        if key in nodes:
            key = f"{key}_{index}"
        params = sum(constants.get(name, 0) for name in dict.fromkeys(node.input) if name)
        nodes[key] = NodeStats(node.op_type, params, node_macs(node, shapes))
    return ModelStats(params=sum(constants.values()), macs=sum(n.macs for n in nodes.values()),
                      size_bytes=ir.serialized_size(model), nodes=nodes)


def _float_constants(model: onnx.ModelProto) -> dict[str, int]:
    """Name -> element count of every floating-point constant value of the main graph."""
    g = model.graph
    counts = {t.name: math.prod(t.dims) for t in g.initializer if t.data_type in _FLOAT_TYPES}
    int_values = {t.name: t for t in g.initializer if t.data_type == TensorProto.INT64}
    for node in g.node:
        if node.domain not in ("", "ai.onnx"):
            continue
        if node.op_type == "Constant":
            _constant_node(node, counts, int_values)
        elif node.op_type == "ConstantOfShape" and node.input and node.input[0] in int_values:
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            if value is None or value.data_type in _FLOAT_TYPES:
                shape = ir.tensor_array(int_values[node.input[0]], ir.base_dir(model))
                counts[node.output[0]] = math.prod(int(d) for d in shape.reshape(-1))
    return counts


def _constant_node(node: onnx.NodeProto, counts: dict[str, int], int_values: dict[str, TensorProto]) -> None:
    for attr in node.attribute:
        if attr.name == "value" and attr.t.data_type in _FLOAT_TYPES:
            counts[node.output[0]] = math.prod(attr.t.dims)
        elif attr.name == "value" and attr.t.data_type == TensorProto.INT64:
            int_values[node.output[0]] = attr.t
        elif attr.name == "value_float":
            counts[node.output[0]] = 1
        elif attr.name == "value_floats":
            counts[node.output[0]] = len(attr.floats)


def _size(shape: tuple | None) -> int | None:
    """Element count with dynamic dims taken as 1; None when the rank is unknown."""
    if shape is None:
        return None
    return math.prod(d if isinstance(d, int) else 1 for d in shape)


def _dim(shape: tuple, axis: int) -> int:
    d = shape[axis]
    return d if isinstance(d, int) else 1


def node_macs(node: onnx.NodeProto, shapes: dict[str, tuple]) -> int:
    """Multiply-accumulates of one node (0 for ops without a formula or unknown shapes)."""
    get = shapes.get
    if node.op_type == "Conv" and len(node.input) > 1:
        out, weight = get(node.output[0]), get(node.input[1])
        if out and weight:
            return _dim(out, 0) * _size(out[2:]) * _size(weight)
    elif node.op_type == "ConvTranspose" and len(node.input) > 1:
        x, weight = get(node.input[0]), get(node.input[1])
        if x and weight:
            return _dim(x, 0) * _size(x[2:]) * _size(weight)
    elif node.op_type == "Gemm":
        a, out = get(node.input[0]), get(node.output[0])
        if a and out and len(a) == 2:
            return _size(out) * _dim(a, weight_layout(node, 2).x_axis)
    elif node.op_type == "MatMul":
        a, out = get(node.input[0]), get(node.output[0])
        if a and out is not None:
            return _size(out) * _dim(a, -1)
    return 0


def compare(before: ModelStats, after: ModelStats) -> str:
    """Table of params, MACs and size before and after, with the after/before ratio."""
    lines = [f"{'':<8} {'before':>12} {'after':>12} {'ratio':>8}"]
    for label, b, a in (("params", before.params, after.params), ("MACs", before.macs, after.macs),
                        ("size", before.size_bytes, after.size_bytes)):
        ratio = f"{a / b:.3f}" if b else "-"
        lines.append(f"{label:<8} {human(b):>12} {human(a):>12} {ratio:>8}")
    return "\n".join(lines)
