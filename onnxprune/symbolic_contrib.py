"""Output shapes of onnxruntime's com.microsoft ops, which have no ONNX schema to infer them from.

One rule per op: the op's documented output shapes from its input shapes and attributes (onnxruntime's
ContribOperators.md). An output a rule does not give (present key/value caches, statistics) stays unknown.
"""
from __future__ import annotations

from collections.abc import Callable

import onnx

from .graph import attribute
from .symbolic_dims import broadcast, div, is_unknown_dim, mul

Shapes = dict[str, tuple]
Values = Callable[[str], "tuple | None"]  # the entries of a shape vector or scalar (SymbolicValues.get)
Rule = Callable[[onnx.NodeProto, Shapes, Values], "list[tuple | None] | None"]
RULES: dict[str, Rule] = {}


def _rule(*ops: str):
    def register(fn: Rule) -> Rule:
        for op in ops:
            RULES[op] = fn
        return fn
    return register


def _shape(node: onnx.NodeProto, shapes: Shapes, slot: int) -> tuple | None:
    name = node.input[slot] if len(node.input) > slot else ""
    shape = shapes.get(name) if name else None
    return None if shape is None or any(is_unknown_dim(d) for d in shape) else shape


@_rule("Gelu", "FastGelu", "BiasGelu", "QuickGelu", "RotaryEmbedding", "BiasAdd")
def _same_as_input(node: onnx.NodeProto, shapes: Shapes, values: Values):
    x = _shape(node, shapes, 0)
    return None if x is None else [x]


@_rule("SkipLayerNormalization", "SkipSimplifiedLayerNormalization", "SimplifiedLayerNormalization")
def _layer_norm(node: onnx.NodeProto, shapes: Shapes, values: Values):
    """output, mean, inv_std_var (over the last axis, kept as 1), input + skip + bias sum."""
    x = _shape(node, shapes, 0)
    if x is None:
        return None
    stats = x[:-1] + (1,)
    return [x, stats, stats, x] if node.op_type.startswith("Skip") else [x, stats]


@_rule("MatMulNBits")
def _matmul_nbits(node: onnx.NodeProto, shapes: Shapes, values: Values):
    x = _shape(node, shapes, 0)
    n = attribute(node, "N")
    return None if x is None or n is None else [x[:-1] + (int(n),)]


def _matmul(a: tuple, b: tuple) -> tuple | None:
    if len(a) < 2 or len(b) < 2:
        return None
    batch = broadcast(a[:-2], b[:-2])
    return None if batch is None else batch + (a[-2], b[-1])


@_rule("FusedMatMul")
def _fused_matmul(node: onnx.NodeProto, shapes: Shapes, values: Values):
    a, b = _shape(node, shapes, 0), _shape(node, shapes, 1)
    if a is None or b is None or attribute(node, "transBatchA", 0) or attribute(node, "transBatchB", 0):
        return None
    if attribute(node, "transA", 0):
        a = a[:-2] + (a[-1], a[-2])
    if attribute(node, "transB", 0):
        b = b[:-2] + (b[-1], b[-2])
    out = _matmul(a, b)
    return None if out is None else [out]


@_rule("QLinearAdd", "QLinearMul")
def _qlinear_binary(node: onnx.NodeProto, shapes: Shapes, values: Values):
    a, b = _shape(node, shapes, 0), _shape(node, shapes, 3)
    out = None if a is None or b is None else broadcast(a, b)
    return None if out is None else [out]


@_rule("QLinearGlobalAveragePool")
def _qlinear_gap(node: onnx.NodeProto, shapes: Shapes, values: Values):
    x = _shape(node, shapes, 0)
    if x is None or len(x) < 3:
        return None
    if attribute(node, "channels_last", 0):
        return [(x[0],) + (1,) * (len(x) - 2) + (x[-1],)]
    return [x[:2] + (1,) * (len(x) - 2)]


@_rule("QGemm")
def _qgemm(node: onnx.NodeProto, shapes: Shapes, values: Values):
    a, b = _shape(node, shapes, 0), _shape(node, shapes, 3)
    if a is None or b is None or len(a) != 2 or len(b) != 2:
        return None
    m = a[1] if attribute(node, "transA", 0) else a[0]
    n = b[0] if attribute(node, "transB", 0) else b[1]
    return [(m, n)]


@_rule("Attention")
def _attention(node: onnx.NodeProto, shapes: Shapes, values: Values):
    """Packed QKV attention: input (B, S, D_in), weights (D_in, q + k + v hidden): output (B, S, v hidden)."""
    x, w = _shape(node, shapes, 0), _shape(node, shapes, 1)
    if x is None or w is None or len(x) != 3:
        return None
    sizes = attribute(node, "qkv_hidden_sizes")
    v_hidden = int(sizes[2]) if sizes else div(w[-1], 3)
    return None if v_hidden is None else [(x[0], x[1], v_hidden)]


@_rule("MultiHeadAttention")
def _multi_head_attention(node: onnx.NodeProto, shapes: Shapes, values: Values):
    """Query (B, S, D): output (B, S, v hidden) with the value (B, L, Dv) or (B, N, L, H); a packed query
    (B, S, N, 3, H) gives (B, S, N*H)."""
    q, v = _shape(node, shapes, 0), _shape(node, shapes, 2)
    if q is None:
        return None
    if len(q) == 5:
        return [(q[0], q[1], mul(q[2], q[4]))]
    if len(q) != 3 or v is None:
        return None
    if len(v) == 3:
        return [(q[0], q[1], v[2])]
    return [(q[0], q[1], mul(v[1], v[3]))] if len(v) == 4 else None


@_rule("GroupQueryAttention")
def _group_query_attention(node: onnx.NodeProto, shapes: Shapes, values: Values):
    """Query (B, S, D), or packed QKV (B, S, (N + 2 * N_kv) * H) when no key is given: output (B, S, N * H);
    without a past cache, present key and value are (B, N_kv, total_sequence_length, H)."""
    q = _shape(node, shapes, 0)
    heads, kv_heads = attribute(node, "num_heads"), attribute(node, "kv_num_heads")
    if q is None or len(q) != 3 or heads is None or kv_heads is None:
        return None
    packed = not (len(node.input) > 1 and node.input[1])
    head = div(q[2], int(heads) + 2 * int(kv_heads) if packed else int(heads))
    if head is None:
        return None
    out: list[tuple | None] = [(q[0], q[1], mul(head, int(heads)))]
    total = values(node.input[6]) if len(node.input) > 6 and node.input[6] else None
    has_past = len(node.input) > 3 and node.input[3]
    if total is not None and len(total[0]) == 1 and not has_past:
        out += [(q[0], int(kv_heads), total[0][0], head)] * 2
    return out


def contrib_rule(node: onnx.NodeProto, shapes: Shapes, types: dict[str, int],
                 values: Values) -> list[tuple | None] | None:
    """Output shapes of a com.microsoft node (None: no rule, or its inputs are not known). The element types of
    outputs it gives are added to `types`: the first input's (statistics of the layer norms: float)."""
    if node.domain != "com.microsoft" or node.op_type not in RULES:
        return None
    found = RULES[node.op_type](node, shapes, values)
    first = types.get(node.input[0]) if node.input else None
    for k, (name, shape) in enumerate(zip(node.output, found or [])):
        if name and shape is not None and name not in types and first is not None:
            statistic = node.op_type.endswith("LayerNormalization") and k in (1, 2)
            types[name] = onnx.TensorProto.FLOAT if statistic else first
    return found
