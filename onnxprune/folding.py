"""Constant tensors: which tensors are constant, and their values, folded on demand.

A tensor is *constant* when no graph input reaches it (initializers, Constant nodes,
ConstantOfShape of a constant shape, Unsqueeze of a constant, ...). Its *value* can
also be folded from static shapes (Shape of a tensor whose dims are known), which is
how exporters compute Reshape targets; such values are parameters, never weights.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from onnxprune import external_data as ext
from onnxprune.graph import GraphIndex, attribute

_NONDETERMINISTIC = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"}
_MEMO_LIMIT = 4096  # values with more elements are recomputed rather than kept


class ConstantResolver:
    def __init__(self, index: GraphIndex, shapes: dict[str, tuple], base_dir: str | None, opset: int,
                 types: dict[str, int] | None = None, weights: dict[str, np.ndarray] | None = None):
        """weights: initializer values known already (loading.load_with_weights), read instead of the protos."""
        self.index = index
        self.opset = opset
        self.types = types or {}
        self.shapes = shapes
        self.base_dir = base_dir
        self._constant: dict[str, bool] = {}
        self._values: dict[str, np.ndarray | None] = {}
        self._initializer_arrays: dict[str, np.ndarray] = dict(weights or {})

    # ---- constancy ----------------------------------------------------------------
    def is_constant(self, name: str) -> bool:
        """True when the tensor does not depend on any graph input."""
        if not name:
            return False
        known = self._constant.get(name)
        if known is not None:
            return known
        stack, order = [name], []
        while stack:  # iterative: exporters make long constant chains
            current = stack.pop()
            if current in self._constant:
                continue
            if current in self.index.initializers:
                self._constant[current] = True
                continue
            found = self.index.producer.get(current)
            if found is None:
                self._constant[current] = False
                continue
            node = self.index.nodes[found[0]]
            if node.op_type in _NONDETERMINISTIC or node.domain not in ("", "ai.onnx"):
                self._constant[current] = False
                continue
            reads = _value_inputs(node)
            pending = [t for t in reads if t not in self._constant]
            if pending:
                stack.append(current)
                if current in order:
                    raise onnx.checker.ValidationError(f"graph has a cycle through tensor '{current}'")
                order.append(current)
                stack.extend(pending)
                continue
            self._constant[current] = all(self._constant[t] for t in reads)
        return self._constant[name]

    def shape_of(self, name: str) -> tuple | None:
        """Static shape of a tensor: from initializers/Constant dims, else inferred shapes."""
        init = self.index.initializers.get(name)
        if init is not None:
            return tuple(init.dims)
        return self.shapes.get(name)

    # ---- values -------------------------------------------------------------------
    def _reads_shape(self, node: onnx.NodeProto) -> bool:
        source = self.index.producer_node(node.input[0])
        return source is not None and source.op_type == "Shape" and self.shapes.get(source.input[0]) is not None

    def _fold_dims_pick(self, node: onnx.NodeProto) -> list[np.ndarray] | None:
        """x.shape[k] with a symbolic batch elsewhere: fold when the picked dims are static."""
        source = self.index.producer_node(node.input[0])
        entries = _shape_entries(source, self.shapes[source.input[0]])
        positions = np.arange(len(entries))
        rest = [self.value(t) if t else None for t in node.input[1:]]
        if any(v is None for v, t in zip(rest, node.input[1:]) if t):
            return None
        picked = _evaluate(node, [positions] + rest, self.opset)
        if picked is None:
            return None
        dims = [entries[int(k)] for k in np.asarray(picked[0]).reshape(-1)]
        if not all(isinstance(d, int) for d in dims):
            return None
        return [np.array(dims, dtype=np.int64).reshape(np.asarray(picked[0]).shape)]

    def value(self, name: str) -> np.ndarray | None:
        """The folded value of a tensor, or None when it cannot be known statically."""
        if not name:
            return None
        if name in self._values:
            return self._values[name]
        init = self.index.initializers.get(name)
        if init is not None:
            value = self._initializer_arrays.get(name)
            if value is None:
                value = ext.tensor_array(init, self.base_dir)
                if not ext.is_external(init):  # reading raw_data copies it: read each weight once
                    self._initializer_arrays[name] = value
        else:
            found = self.index.producer.get(name)
            value = None
            if found is not None:
                node = self.index.nodes[found[0]]
                try:
                    outputs = self._fold(node)
                except (ValueError, TypeError, IndexError, KeyError, OverflowError, ArithmeticError, RuntimeError):
                    outputs = None
                if outputs is not None and found[1] < len(outputs):
                    value = outputs[found[1]]
        if value is None or value.size <= _MEMO_LIMIT:
            self._values[name] = value
        return value

    def int_list(self, name: str) -> list[int] | None:
        value = self.value(name)
        if value is None or value.dtype.kind not in "iu":
            return None
        return [int(v) for v in value.reshape(-1)]

    def _fold(self, node: onnx.NodeProto) -> list[np.ndarray] | None:
        op = node.op_type
        if node.domain not in ("", "ai.onnx") or op in _NONDETERMINISTIC:
            return None
        if op == "Constant":
            return [_constant_node_value(node, self.base_dir)]
        if op == "Shape":
            shape = self.shapes.get(node.input[0])
            if shape is None or not all(isinstance(d, int) for d in shape):
                return None
            start, end = attribute(node, "start", 0), attribute(node, "end", None)
            return [np.array(shape[start:end], dtype=np.int64)]
        if op == "Size":
            shape = self.shapes.get(node.input[0])
            if shape is None or not all(isinstance(d, int) for d in shape):
                return None
            return [np.array(int(np.prod(shape)), dtype=np.int64)]
        if op in ("Gather", "Slice") and self._reads_shape(node):
            return self._fold_dims_pick(node)
        if op == "CastLike":
            source, like = self.value(node.input[0]), self.types.get(node.input[1])
            if source is None or like is None:
                return None
            return [source.astype(onnx.helper.tensor_dtype_to_np_dtype(like))]
        inputs = []
        for tensor in node.input:
            if not tensor:
                inputs.append(None)
                continue
            value = self.value(tensor)
            if value is None:
                return None
            inputs.append(value)
        return _evaluate(node, inputs, self.opset)


def _shape_entries(node: onnx.NodeProto, shape: tuple) -> list:
    start, end = attribute(node, "start", 0), attribute(node, "end", None)
    return list(shape[start:end])


def _value_inputs(node: onnx.NodeProto) -> list[str]:
    """Inputs whose values the node's output depends on (CastLike reads only the type of its second)."""
    if node.op_type == "CastLike":
        return [node.input[0]]
    return [t for t in node.input if t]


def _constant_node_value(node: onnx.NodeProto, base_dir: str | None) -> np.ndarray:
    for attr in node.attribute:
        if attr.name == "value":
            return ext.tensor_array(attr.t, base_dir)
        if attr.name == "sparse_value":
            raise ValueError(f"Constant node '{node.name}' holds a sparse tensor; it is not folded")
        value = onnx.helper.get_attribute_value(attr)
        if attr.name in ("value_float", "value_int"):
            return np.array(value, dtype=np.float32 if attr.name == "value_float" else np.int64)
        if attr.name in ("value_floats", "value_ints"):
            return np.array(value, dtype=np.float32 if attr.name == "value_floats" else np.int64)
    raise ValueError(f"Constant node '{node.name}' has no value")


_BINARY = {
    "Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Equal": np.equal, "Less": np.less,
    "Greater": np.greater, "Max": np.maximum, "Min": np.minimum, "And": np.logical_and, "Or": np.logical_or,
}


def _axes(node: onnx.NodeProto, inputs: list, slot: int) -> list[int] | None:
    """Axes given as an attribute (old opsets) or as input `slot` (new opsets)."""
    if len(inputs) > slot and inputs[slot] is not None:
        return [int(a) for a in np.asarray(inputs[slot]).reshape(-1)]
    axes = attribute(node, "axes")
    return None if axes is None else list(axes)


def _fold_numpy(node: onnx.NodeProto, x: list) -> list[np.ndarray] | None:
    """Fast numpy folding of the ops exporters use to compute shapes and constant weights."""
    op = node.op_type
    if op in ("Identity", "Dropout"):
        return [x[0]]
    if op == "Cast":
        return [x[0].astype(onnx.helper.tensor_dtype_to_np_dtype(attribute(node, "to")))]
    if op == "ConstantOfShape":
        fill = attribute(node, "value")
        fill = numpy_helper.to_array(fill).reshape(-1) if fill is not None else np.zeros(1, np.float32)
        return [np.full([int(d) for d in x[0].reshape(-1)], fill[0], dtype=fill.dtype)]
    if op == "Unsqueeze":
        axes = _axes(node, x, 1)
        rank = x[0].ndim + len(axes)
        return [np.expand_dims(x[0], tuple(sorted(a % rank for a in axes)))]
    if op == "Squeeze":
        axes = _axes(node, x, 1)
        return [np.squeeze(x[0], axis=None if axes is None else tuple(a % x[0].ndim for a in axes))]
    if op == "Concat":
        return [np.concatenate([v for v in x if v is not None], axis=attribute(node, "axis"))]
    if op == "Gather":
        return [np.take(x[0], x[1].astype(np.int64), axis=attribute(node, "axis", 0))]
    if op == "Reshape":
        target = [int(d) for d in x[1].reshape(-1)]
        if not attribute(node, "allowzero", 0):
            target = [x[0].shape[i] if d == 0 else d for i, d in enumerate(target)]
        return [x[0].reshape(target)]
    if op == "Transpose":
        return [np.transpose(x[0], attribute(node, "perm"))]
    if op in _BINARY and len(x) == 2:
        return [_BINARY[op](x[0], x[1]).astype(np.result_type(x[0], x[1]) if op in ("Add", "Sub", "Mul", "Max", "Min") else bool)]
    if op == "Div" and x[0].dtype.kind in "iu":
        return [(np.floor_divide(x[0], x[1]) if (x[0] >= 0).all() and (x[1] > 0).all() else np.trunc(x[0] / x[1])).astype(x[0].dtype)]
    if op == "Where":
        return [np.where(x[0], x[1], x[2])]
    if op == "Expand":
        shape = np.broadcast_shapes(x[0].shape, tuple(int(d) for d in x[1].reshape(-1)))
        return [np.broadcast_to(x[0], shape).copy()]
    if op == "Slice" and len(x) >= 3:
        data = x[0]
        starts, ends = x[1].reshape(-1), x[2].reshape(-1)
        axes = x[3].reshape(-1) if len(x) > 3 and x[3] is not None else np.arange(len(starts))
        steps = x[4].reshape(-1) if len(x) > 4 and x[4] is not None else np.ones(len(starts), np.int64)
        index = [slice(None)] * data.ndim
        for s, e, a, st in zip(starts, ends, axes, steps):
            index[int(a) % data.ndim] = slice(int(s), int(e), int(st))
        return [data[tuple(index)]]
    return None


def _evaluate(node: onnx.NodeProto, inputs: list[np.ndarray | None], opset: int) -> list[np.ndarray] | None:
    """Run one node on known inputs: numpy for common ops, onnx's reference implementation otherwise."""
    folded = _fold_numpy(node, inputs)
    if folded is not None:
        return folded
    from onnx.reference import ReferenceEvaluator

    names = [f"in{i}" if value is not None else "" for i, value in enumerate(inputs)]
    single = onnx.helper.make_node(node.op_type, names, [f"out{i}" for i in range(len(node.output))], domain=node.domain)
    single.attribute.extend(node.attribute)
    feeds = {n: v for n, v in zip(names, inputs) if n}
    try:
        evaluator = ReferenceEvaluator(single, opsets={"": opset})
        outputs = evaluator.run(None, feeds)
    except Exception:  # the reference evaluator raises anything on unsupported input; folding then just fails
        return None
    return [np.asarray(o) for o in outputs]
