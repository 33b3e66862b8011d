"""Products of two activations (attention's q @ k^T and p @ v): their measured latency against the kept count.

Such a MatMul has no weight, so it is no layer of the cost model; its time is a tensor term
(profile.activations). A tensor term scales with its kept elements, which is right for an elementwise op and
wrong for these products: on a ViT-B/16-like model (12 heads, 197 tokens, 1 thread), q @ k^T with 8 of 64 head
dims kept still takes 62 % of its time and p @ v with 16 of 64 45 %, where the term says 12.5 % and 25 %: the
product writes (or reads) the whole tokens x tokens matrix whatever the head dim. So the allocator took deep
head-dim cuts for savings the model never showed.

A ProductSpec describes such a MatMul by what sets its cost (operand shapes, dtype, which operand axes follow the
pruned axis of its term's tensor), product_graph builds it alone at a kept count, and the profiler measures it
on axis_grid like a layer's axis. The cost model then charges the product's time in the model (from the
whole model's profile) along that curve instead of linearly (LatencyCostModel.tensor_cost).
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import onnx
from onnx import helper

from onnxprune.coupling import Analysis
from onnxprune.profile.layers import OPSET


@dataclass(frozen=True)
class ProductSpec:
    """A MatMul of two activations whose cost follows one pruned axis: operand shapes at full size (symbolic
    dims set to the batch), the (operand, axis) pairs that shrink with the kept count, that axis's full size."""

    name: str
    a_shape: tuple[int, ...]
    b_shape: tuple[int, ...]
    shrink: tuple[tuple[int, int], ...]
    size: int
    dtype: int

    def signature(self) -> str:
        return json.dumps(["MatMul", list(self.a_shape), list(self.b_shape), [list(s) for s in self.shrink],
                           int(self.dtype)], separators=(",", ":"))


def shrinking_axes(node: onnx.NodeProto, tensor: str, axis: int, ranks: tuple[int, int]) -> tuple[tuple[int, int],
                                                                                                   ...] | None:
    """The (operand, axis) pairs of MatMul `node` that shrink when `tensor` (one of its operands or its output)
    loses elements on `axis`; None for an axis the product's shape rules do not tie to its operands (a
    broadcast batch axis of another rank)."""
    rank_a, rank_b = ranks
    if tensor == node.input[0]:
        place, rank = "a", rank_a
    elif tensor == node.input[1]:
        place, rank = "b", rank_b
    else:
        place, rank = "y", max(rank_a, rank_b)
    from_end = axis - rank  # -1: the last axis
    if rank_a < 2 or rank_b < 2:
        return None
    if from_end == -1:
        return {"a": ((0, rank_a - 1), (1, rank_b - 2)), "b": ((1, rank_b - 1),), "y": ((1, rank_b - 1),)}[place]
    if from_end == -2:
        return {"a": ((0, rank_a - 2),), "b": ((1, rank_b - 2), (0, rank_a - 1)), "y": ((0, rank_a - 2),)}[place]
    if rank_a != rank_b:
        return None
    return (0, rank_a + from_end), (1, rank_b + from_end)  # a batch axis (heads): both operands


def product_spec(analysis: Analysis, node: onnx.NodeProto, tensor: str, batch: int) -> ProductSpec | None:
    """The ProductSpec of MatMul `node` charged to the one-axis tensor term `tensor`; None when the node is not
    a product of two activations of known shape, or the term's axis does not map onto its operands."""
    channels = analysis.channels
    if node.op_type != "MatMul" or any(channels.is_const(name) for name in node.input[:2]):
        return None
    axes = channels.tracked(tensor)
    shapes = [channels.shape(name) for name in node.input[:2]]
    if len(axes) != 1 or any(s is None or any(d is None for d in s) for s in shapes):
        return None
    (axis, elements), = axes.items()
    a_shape, b_shape = (tuple(d if isinstance(d, int) else int(batch) for d in s) for s in shapes)
    shrink = shrinking_axes(node, tensor, axis, (len(a_shape), len(b_shape)))
    if shrink is None or any((a_shape, b_shape)[k][ax] != len(elements) for k, ax in shrink):
        return None
    return ProductSpec(node.name, a_shape, b_shape, shrink, len(elements), _elem_type(analysis.model, node.input[0]))


def _elem_type(model: onnx.ModelProto, name: str) -> int:
    """The element type the graph declares for tensor `name` (float when it declares none)."""
    graph = model.graph
    for info in (*graph.input, *graph.value_info, *graph.output):
        if info.name == name and info.type.tensor_type.elem_type:
            return info.type.tensor_type.elem_type
    return onnx.TensorProto.FLOAT


def product_graph(spec: ProductSpec, kept: int) -> tuple[onnx.ModelProto, dict[str, tuple[int, ...]]]:
    """The product alone with `kept` of its pruned axis: the model and the shapes of its inputs 'a' and 'b'."""
    shapes = [list(spec.a_shape), list(spec.b_shape)]
    for k, axis in spec.shrink:
        shapes[k][axis] = kept
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["y"])], "onnxprune_product",
                              [helper.make_tensor_value_info(n, spec.dtype, s) for n, s in zip("ab", shapes)],
                              [helper.make_tensor_value_info("y", spec.dtype, [None] * max(map(len, shapes)))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="onnxprune")
    model.ir_version = 8
    return model, {"a": tuple(shapes[0]), "b": tuple(shapes[1])}
