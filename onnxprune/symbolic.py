"""Shapes where ONNX shape inference stops, worked out node by node without running the model.

ONNX inference (with data propagation) leaves a tensor unknown when a shape operand is computed by ops it does
not propagate (Range over the sequence length, Where/Equal/Mod of torch's Expand and Reshape targets,
ConstantOfShape) or holds symbolic dims. Here the *values* of such operands are evaluated as tuples of dims -
an int, or a str for a symbolic dim ('batch', 'sequence', '12*batch') - from the constant folder
(onnxprune.folding) and from the shapes known so far (Shape, Gather, Slice, Concat, Unsqueeze, Squeeze, Cast,
arithmetic over symbolic dims). Each node with an unknown output then gets its outputs inferred from its inputs:
by onnx's own per-node inference given the operand values, or, where an operand is symbolic, by the rules of
Reshape, Expand, ConstantOfShape, Range, Resize and Tile below; onnxruntime's com.microsoft ops by the rules of
symbolic_contrib.py.
"""
from __future__ import annotations

import math

import numpy as np
import onnx

from .folding import ConstantResolver
from .graph import GraphIndex, attribute
from .symbolic_contrib import contrib_rule
from .symbolic_dims import arith, broadcast, div, is_unknown_dim, mul

MAX_VALUE_ENTRIES = 128  # operands with more entries are not shape vectors: never evaluated symbolically


# --------------------------------------------------------------------------- values of shape operands

class SymbolicValues:
    """Values of small integer tensors (shape vectors and scalars) as tuples of dims; `scalar` marks 0-D."""

    def __init__(self, index: GraphIndex, resolver: ConstantResolver, shapes: dict[str, tuple]):
        self.index = index
        self.resolver = resolver
        self.shapes = shapes
        self._memo: dict[str, tuple[tuple, bool] | None] = {}

    def concrete(self, name: str) -> np.ndarray | None:
        """The folded value of a small tensor (None for big or unknown ones: weights are never read here)."""
        shape = self.resolver.shape_of(name)
        if shape is None or any(not isinstance(d, int) for d in shape) or math.prod(shape) > MAX_VALUE_ENTRIES:
            return None
        return self.resolver.value(name)

    def get(self, name: str) -> tuple[tuple, bool] | None:
        """(entries, is_scalar) of a 0-D or 1-D integer (or bool) tensor, or None."""
        if not name:
            return None
        if name in self._memo:
            return self._memo[name]
        found = None
        value = self.concrete(name)
        if value is not None:
            if value.ndim <= 1 and value.dtype.kind in "iub":
                found = tuple(v.item() for v in value.reshape(-1)), value.ndim == 0
        elif name in self.index.producer:
            node = self.index.nodes[self.index.producer[name][0]]
            if node.domain in ("", "ai.onnx") and self.index.producer[name][1] == 0:
                try:
                    found = self._evaluate(node)
                except (ValueError, TypeError, IndexError, KeyError, ZeroDivisionError):
                    found = None
        self._memo[name] = found
        return found

    def _evaluate(self, node: onnx.NodeProto) -> tuple[tuple, bool] | None:
        op = node.op_type
        if op == "Shape":
            shape = self.shapes.get(node.input[0])
            if shape is None:
                return None
            start, end = attribute(node, "start", 0), attribute(node, "end", None)
            dims = tuple(shape[start:end])
            return None if any(is_unknown_dim(d) for d in dims) else (dims, False)
        if op == "Size":
            shape = self.shapes.get(node.input[0])
            if shape is None or any(is_unknown_dim(d) for d in shape):
                return None
            total = 1
            for d in shape:
                total = mul(total, d)
            return (total,), True
        x = self.get(node.input[0])
        if x is None:
            return None
        entries, scalar = x
        if op in ("Identity", "Cast"):
            return x
        if op == "Unsqueeze":
            return (entries, False) if scalar else None
        if op == "Squeeze":
            return (entries, True) if len(entries) == 1 else None
        if op == "Reshape":
            target = self.concrete(node.input[1])  # to a scalar ([]) or a vector ([n] / [-1]) only
            return None if target is None or target.size > 1 else (entries, target.size == 0)
        if op == "Gather":
            indices = self.concrete(node.input[1])
            if indices is None or scalar or indices.ndim > 1:
                return None
            picked = tuple(entries[int(k)] for k in indices.reshape(-1))
            return picked, indices.ndim == 0
        if op == "Slice":
            return self._slice(node, entries, scalar)
        if op == "Concat":
            parts = [self.get(t) for t in node.input]
            if any(p is None or p[1] for p in parts):
                return None
            return tuple(e for p in parts for e in p[0]), False
        if op in ("Add", "Sub", "Mul", "Div", "Mod", "Max", "Min", "Equal") and len(node.input) == 2:
            other = self.get(node.input[1])
            if other is None:
                return None
            a, b = entries, other[0]
            if len(a) != len(b) and 1 not in (len(a), len(b)):
                return None
            n = max(len(a), len(b))
            out = tuple(arith(op, a[k if len(a) > 1 else 0], b[k if len(b) > 1 else 0]) for k in range(n))
            return None if any(v is None for v in out) else (out, scalar and other[1])
        if op == "Where":
            left, right = self.get(node.input[1]), self.get(node.input[2])
            if left is None or right is None:
                return None
            n = max(len(entries), len(left[0]), len(right[0]))
            pick = [(entries[k if len(entries) > 1 else 0], left[0][k if len(left[0]) > 1 else 0],
                     right[0][k if len(right[0]) > 1 else 0]) for k in range(n)]
            if any(not isinstance(c, (bool, np.bool_)) for c, _, _ in pick):
                return None
            return tuple(a if c else b for c, a, b in pick), scalar and left[1] and right[1]
        return None

    def _slice(self, node: onnx.NodeProto, entries: tuple, scalar: bool) -> tuple[tuple, bool] | None:
        if scalar:
            return None
        bounds = [self.concrete(t) if len(node.input) > k and node.input[k] else None for k, t in
                  ((k, node.input[k] if len(node.input) > k else "") for k in range(1, 5))]
        if bounds[0] is None or bounds[1] is None:
            return None
        if bounds[2] is not None and any(int(a) not in (0, -1) for a in bounds[2].reshape(-1)):
            return None
        step = int(bounds[3].reshape(-1)[0]) if bounds[3] is not None else 1
        start, end = int(bounds[0].reshape(-1)[0]), int(bounds[1].reshape(-1)[0])
        return tuple(entries[slice(start, end, step)]), False


# --------------------------------------------------------------------------- shapes of nodes

def shape_rule(node: onnx.NodeProto, shapes: dict[str, tuple], values: SymbolicValues) -> list[tuple] | None:
    """Output shapes of a node whose shape operand holds symbolic dims (None: not one of these cases)."""
    op = node.op_type
    if op == "Reshape":
        target, x = values.get(node.input[1]), shapes.get(node.input[0])
        if target is None or x is None or any(is_unknown_dim(d) for d in x):
            return None
        return _reshaped(x, list(target[0]), bool(attribute(node, "allowzero", 0)))
    if op == "Expand":
        target, x = values.get(node.input[1]), shapes.get(node.input[0])
        if target is None or x is None:
            return None
        out = broadcast(x, tuple(target[0]))
        return None if out is None else [out]
    if op == "ConstantOfShape":
        target = values.get(node.input[0])
        return None if target is None else [tuple(target[0])]
    if op == "Range":
        start, limit, delta = (values.get(t) for t in node.input[:3])
        if start is None or limit is None or delta is None:
            return None
        s, l, d = start[0][0], limit[0][0], delta[0][0]
        if all(isinstance(v, int) for v in (s, l, d)):
            return [(max(0, -(-(l - s) // d)),)] if d else None
        return [(arith("Sub", l, s),)] if d == 1 else None
    if op == "Resize" and len(node.input) > 2:
        return _resized(node, shapes.get(node.input[0]), values)
    if op == "Tile":
        repeats, x = values.get(node.input[1]), shapes.get(node.input[0])
        if repeats is None or x is None or len(repeats[0]) != len(x):
            return None
        return [tuple(mul(a, r) for a, r in zip(x, repeats[0]))]
    return None


def _resized(node: onnx.NodeProto, x: tuple | None, values: SymbolicValues) -> list[tuple] | None:
    """Resize by constant scales (a symbolic dim only at scale 1) or to given sizes."""
    sizes = values.get(node.input[3]) if len(node.input) > 3 and node.input[3] else None
    if sizes is not None:
        return [tuple(sizes[0])] if x is not None and len(sizes[0]) == len(x) else None
    scales = values.concrete(node.input[2]) if node.input[2] else None
    if x is None or scales is None or scales.size != len(x) or attribute(node, "axes") is not None:
        return None
    out = []
    for d, f in zip(x, scales.reshape(-1).tolist()):
        if f == 1:
            out.append(d)
        elif isinstance(d, int):
            out.append(int(math.floor(d * f)))
        else:
            return None
    return [tuple(out)]


def _reshaped(x: tuple, target: list, allowzero: bool) -> list[tuple] | None:
    target = [x[k] if d == 0 and not allowzero and k < len(x) else d for k, d in enumerate(target)]
    if target.count(-1) > 1:
        return None
    if -1 in target:
        total = 1
        for d in x:
            total = mul(total, d)
        for d in target:
            if d != -1:
                total = div(total, d)
                if total is None:
                    return None
        target[target.index(-1)] = total
    return [tuple(target)]


def type_proto(elem_type: int, shape: tuple | None) -> onnx.TypeProto:
    """A tensor TypeProto: symbolic dims as dim_param, unknown ones left empty."""
    t = onnx.TypeProto()
    t.tensor_type.elem_type = elem_type
    if shape is not None:
        t.tensor_type.shape.SetInParent()
        for d in shape:
            dim = t.tensor_type.shape.dim.add()
            if isinstance(d, int):
                dim.dim_value = d
            elif not is_unknown_dim(d):
                dim.dim_param = d
    return t


def onnx_rule(node: onnx.NodeProto, shapes: dict[str, tuple], types: dict[str, int], values: SymbolicValues,
              opsets: dict[str, int]) -> list[tuple | None] | None:
    """Output shapes from onnx's own inference of this one node, given its input shapes and operand values."""
    domain = "" if node.domain == "ai.onnx" else node.domain
    if domain not in opsets or any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                                   for a in node.attribute):
        return None
    try:
        schema = onnx.defs.get_schema(node.op_type, opsets[domain], domain)
    except onnx.defs.SchemaError:
        return None
    input_types, input_data = {}, {}
    for name in node.input:
        if not name:
            continue
        if name not in types:
            return None
        input_types[name] = type_proto(types[name], shapes.get(name))
        value = values.concrete(name)
        if value is not None:
            input_data[name] = onnx.numpy_helper.from_array(np.asarray(value), name)
    imports = [onnx.helper.make_opsetid(d, v) for d, v in opsets.items()]
    try:
        inferred = onnx.shape_inference.infer_node_outputs(schema, node, input_types, input_data,
                                                           opset_imports=imports)
    except Exception:  # noqa: BLE001  onnx raises assorted C++ errors for nodes it can't infer
        return None
    out = []
    for name in node.output:
        t = inferred.get(name)
        if t is None or not t.tensor_type.HasField("shape"):
            out.append(None)
            if t is not None and t.tensor_type.elem_type:
                types.setdefault(name, t.tensor_type.elem_type)
            continue
        if t.tensor_type.elem_type:
            types.setdefault(name, t.tensor_type.elem_type)
        out.append(tuple(d.dim_value if d.HasField("dim_value") else d.dim_param if d.HasField("dim_param")
                         else None for d in t.tensor_type.shape.dim))
    return out


def merge(known: tuple | None, found: tuple | None) -> tuple | None:
    """Two views of one shape: where one is unknown the other's dim is taken."""
    if found is None or known is not None and len(known) != len(found):
        return known
    if known is None:
        return found
    return tuple(k if not is_unknown_dim(k) and (is_unknown_dim(f) or isinstance(k, int)) else f
                 for k, f in zip(known, found))


def propagate(index: GraphIndex, resolver: ConstantResolver, shapes: dict[str, tuple], types: dict[str, int],
              opsets: dict[str, int]) -> None:
    """Fill unknown node output shapes in `shapes` (and types), in graph order."""
    values = SymbolicValues(index, resolver, shapes)
    for node in index.nodes:
        outputs = [o for o in node.output if o]
        if not any(shapes.get(o) is None or any(is_unknown_dim(d) for d in shapes[o]) for o in outputs):
            continue
        found = shape_rule(node, shapes, values)
        if found is not None:
            _rule_types(node, types)
        else:
            found = contrib_rule(node, shapes, types, values.get)
        if found is None or any(f is None or any(is_unknown_dim(d) for d in f) for f in found):
            found = merge_lists(found, onnx_rule(_as_standard(node), shapes, types, values, opsets))
        if found is None:
            continue
        for name, shape in zip(node.output, found):
            if name and shape is not None:
                shapes[name] = merge(shapes.get(name), shape)


def _rule_types(node: onnx.NodeProto, types: dict[str, int]) -> None:
    """Element type of a shape_rule op's output where ONNX inference gave none: its data input's (Range: its
    start's), a ConstantOfShape's fill value's (float when none)."""
    out = node.output[0]
    if out in types:
        return
    if node.op_type == "ConstantOfShape":
        fill = attribute(node, "value")
        types[out] = fill.data_type if fill is not None else onnx.TensorProto.FLOAT
    elif node.input[0] in types:
        types[out] = types[node.input[0]]


def _as_standard(node: onnx.NodeProto) -> onnx.NodeProto:
    """A com.microsoft FusedConv as the Conv it wraps (its activation does not change shapes); other nodes as
    they are."""
    if node.domain != "com.microsoft" or node.op_type != "FusedConv":
        return node
    conv = onnx.helper.make_node("Conv", list(node.input[:3]), list(node.output[:1]), name=node.name)
    conv.attribute.extend(a for a in node.attribute if a.name not in ("activation", "activation_params"))
    return conv


def merge_lists(first: list | None, second: list | None) -> list | None:
    if first is None:
        return second
    if second is None:
        return first
    return [merge(a, b) for a, b in zip(first, second)]
