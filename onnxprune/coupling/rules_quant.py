"""Rules for quantized layers: QLinearConv, ConvInteger, QLinearMatMul, MatMulInteger, DynamicQuantizeLinear, and
onnxruntime's com.microsoft QGemm, QLinearAdd, QLinearGlobalAveragePool and MatMulNBits.

Per-channel weight scales and zero points are sliced with the weight's output channels; per-tensor ones (scalars)
stay. QuantizeLinear / DequantizeLinear are in rules_elementwise. A removed element of a quantized activation holds
its zero point in the mask oracle (onnxprune.verify), which is what makes these groups exact.
"""
from __future__ import annotations

import numpy as np
import onnx

from onnxprune.coupling.registry import RewriteContext, rule, set_attribute
from onnxprune.coupling.rules_elementwise import merge_aligned, pool
from onnxprune.coupling.walker import Walker
from onnxprune.graph import attribute

MS = "com.microsoft"


def _weight(w: Walker, i: int, node: onnx.NodeProto, slots: tuple[int, ...]) -> bool:
    for slot in slots:
        if len(node.input) > slot and node.input[slot] and not w.is_const(node.input[slot]):
            w.block_inputs(i, node, f"input '{node.input[slot]}' is not a constant")
            return False
    return True


def _per_channel(w: Walker, i: int, node: onnx.NodeProto, slots: tuple[int, ...], ids: np.ndarray, role: str) -> None:
    """Slice 1-D constants of one entry per channel (per-channel scales, zero points, biases) along with `ids`."""
    for slot in slots:
        if len(node.input) > slot and node.input[slot] and w.rank(node.input[slot]) == 1 \
                and w.dim(node.input[slot], 0) == len(ids) and len(ids) > 1:
            w.use_const(i, slot, 0, ids, role)


def _conv_like(w: Walker, i: int, node: onnx.NodeProto, x_slot: int, w_slot: int, out_params: tuple[int, ...],
               bias: int | None) -> None:
    """A quantized conv: weight [out, in / group, *kernel] at `w_slot`; per-channel params and bias follow `out`."""
    if not _weight(w, i, node, (w_slot,) + out_params):
        return
    shape = w.shape(node.input[w_slot])
    groups = attribute(node, "group", 1)
    axes = w.tracked(node.input[x_slot])
    for axis, ids in axes.items():
        if axis != 1:
            w.block(ids, f"{w.where(i, node)} mixes axis {axis}, which carries channels")
    xin = axes.get(1)
    if groups == 1:
        if xin is not None:
            w.use_const(i, w_slot, 1, xin, "in")
        out = w.new_channels(shape[0], i)
    elif shape[1] == 1 and xin is not None:  # depthwise: whole groups go
        out = np.repeat(xin, shape[0] // groups)
    else:
        w.block_inputs(i, node, "grouped (not depthwise) quantized conv is not supported")
        return
    w.use_const(i, w_slot, 0, out, "out")
    _per_channel(w, i, node, out_params, out, "param")
    if bias is not None:
        _per_channel(w, i, node, (bias,), out, "bias")
    w.set_axes(node.output[0], {1: out})
    w.layer_out[i] = out


def _depthwise_groups(x_slot: int):
    def rewrite(s: RewriteContext, i: int, node: onnx.NodeProto, nodes: list) -> None:
        x = s.original(i).input[x_slot]
        if attribute(node, "group", 1) > 1 and 1 in s.kept.get(x, {}):
            set_attribute(node, onnx.helper.make_attribute("group", int(s.new_dim(x, 1))))
    return rewrite


@rule("QLinearConv", rewrite=_depthwise_groups(0), source=True)
def qlinear_conv(w: Walker, i: int, node: onnx.NodeProto) -> None:
    """x, x_scale, x_zp, w, w_scale, w_zp, y_scale, y_zp, B (int32)."""
    _conv_like(w, i, node, 0, 3, (4, 5), 8)


@rule("ConvInteger", rewrite=_depthwise_groups(0), source=True)
def conv_integer(w: Walker, i: int, node: onnx.NodeProto) -> None:
    """x, w, x_zp, w_zp: int32 output, no bias."""
    _conv_like(w, i, node, 0, 1, (3,), None)


def _matmul_like(w: Walker, i: int, node: onnx.NodeProto, a_slot: int, b_slot: int, out_params: tuple[int, ...],
                 bias: int | None, trans_a: int = 0, trans_b: int = 0) -> None:
    """A quantized x @ W with a constant W [K, N] ([N, K] with trans_b) at `b_slot`."""
    if not _weight(w, i, node, (b_slot,) + out_params):
        return
    a = node.input[a_slot]
    ra = w.rank(a)
    shape = w.shape(node.input[b_slot])
    if ra is None or len(shape) != 2:
        w.block_inputs(i, node, "only a 2-D constant weight is supported")
        return
    k_axis, rows_axis = (ra - 2, ra - 1) if trans_a else (ra - 1, ra - 2)
    in_axis, out_axis = (1, 0) if trans_b else (0, 1)
    result: dict[int, np.ndarray] = {}
    for axis, ids in w.tracked(a).items():
        if axis == k_axis:
            w.use_const(i, b_slot, in_axis, ids, "in")
        elif axis == rows_axis or axis < ra - 2:
            result[axis] = ids
    out = w.new_channels(shape[out_axis], i)
    w.use_const(i, b_slot, out_axis, out, "out")
    _per_channel(w, i, node, out_params, out, "param")
    if bias is not None:
        _per_channel(w, i, node, (bias,), out, "bias")
    result[ra - 1] = out
    w.set_axes(node.output[0], result)
    w.layer_out[i] = out


@rule("QLinearMatMul", source=True)
def qlinear_matmul(w: Walker, i: int, node: onnx.NodeProto) -> None:
    """a, a_scale, a_zp, b [K, N], b_scale, b_zp (per column), y_scale, y_zp."""
    _matmul_like(w, i, node, 0, 3, (4, 5), None)


@rule("MatMulInteger", source=True)
def matmul_integer(w: Walker, i: int, node: onnx.NodeProto) -> None:
    """A, B [K, N], a_zp, b_zp (per column): int32 output."""
    _matmul_like(w, i, node, 0, 1, (3,), None)


@rule("QGemm", domain=MS, source=True)
def qgemm(w: Walker, i: int, node: onnx.NodeProto) -> None:
    """A, a_scale, a_zp, B, b_scale, b_zp, C (int32 bias), y_scale, y_zp."""
    _matmul_like(w, i, node, 0, 3, (4, 5), 6, attribute(node, "transA", 0), attribute(node, "transB", 0))


@rule("DynamicQuantizeLinear")
def dynamic_quantize(w: Walker, i: int, node: onnx.NodeProto) -> None:
    """y = quantize(x) with one scale and zero point for the whole tensor (outputs 1 and 2 are scalars)."""
    w.set_axes(node.output[0], w.tracked(node.input[0]))


@rule("QLinearAdd", domain=MS)
def qlinear_binary(w: Walker, i: int, node: onnx.NodeProto) -> None:
    """A, A_scale, A_zp, B, B_scale, B_zp, C_scale, C_zp: A and B merge as in Add (scales per tensor)."""
    for slot in (1, 2, 4, 5, 6, 7):
        if len(node.input) > slot and node.input[slot] and (w.rank(node.input[slot]) or 0) > 0 \
                and w.dim(node.input[slot], 0) not in (1, None):
            w.block_inputs(i, node, "per-channel scales of a quantized Add/Mul are not supported")
            return
    out = node.output[0]
    rank = w.rank(out)
    inputs = [(0, node.input[0]), (3, node.input[3])]
    result = {}
    for k in range(rank):
        ids = merge_aligned(w, i, node, inputs, rank, k, w.dim(out, k))
        if ids is not None:
            result[k] = ids
    w.set_axes(out, result)


@rule("QLinearGlobalAveragePool", domain=MS)
def qlinear_pool(w: Walker, i: int, node: onnx.NodeProto) -> None:
    if attribute(node, "channels_last", 0):
        w.block_inputs(i, node, "channels_last quantized pooling is not supported")
        return
    pool(w, i, node)


# --------------------------------------------------------------------------- MatMulNBits (weight-only, 2-8 bits)

def _nbits_layout(node: onnx.NodeProto) -> tuple[int, int, int, int]:
    """(K, N, bits, block_size) of a MatMulNBits node."""
    return (int(attribute(node, "K")), int(attribute(node, "N")), int(attribute(node, "bits", 4)),
            int(attribute(node, "block_size")))


def _packed_zero_points(w_or_s, node: onnx.NodeProto) -> bool:
    """Zero points stored packed (uint8, several blocks per byte), which only a rewrite can slice along K."""
    if len(node.input) <= 3 or not node.input[3]:
        return False
    k, _, bits, block = _nbits_layout(node)
    blocks = -(-k // block)
    shape = w_or_s.shape(node.input[3])
    return shape is not None and shape[-1] != blocks


def _unpack(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    per_byte = 8 // bits
    values = [(packed >> (bits * k)) & ((1 << bits) - 1) for k in range(per_byte)]
    return np.stack(values, axis=-1).reshape(packed.shape[0], -1)[:, :count]


def _pack(values: np.ndarray, bits: int) -> np.ndarray:
    per_byte = 8 // bits
    pad = -values.shape[1] % per_byte
    values = np.pad(values, ((0, 0), (0, pad))).reshape(values.shape[0], -1, per_byte).astype(np.uint8)
    return np.bitwise_or.reduce([values[..., k] << (bits * k) for k in range(per_byte)], axis=0).astype(np.uint8)


def rewrite_matmul_nbits(s: RewriteContext, i: int, node: onnx.NodeProto, nodes: list) -> None:
    """K and N follow the new sizes; packed zero points are unpacked, sliced (rows and blocks) and packed again."""
    original = s.original(i)
    k, n, bits, block = _nbits_layout(original)
    x = original.input[0]
    new_k, new_n = int(s.new_dim(x, len(s.shape(x)) - 1)), int(s.new_dim(original.output[0],
                                                                          len(s.shape(original.output[0])) - 1))
    set_attribute(node, onnx.helper.make_attribute("K", new_k))
    set_attribute(node, onnx.helper.make_attribute("N", new_n))
    if not _packed_zero_points(s, original):
        return
    kept = s.const_kept(i, 1)
    rows = kept.get(0, np.arange(n))
    blocks = kept.get(1, np.arange(-(-k // block)))
    values = _unpack(s.value(original.input[3]).reshape(n, -1), bits, -(-k // block))
    node.input[3] = s.add_initializer(f"{original.input[3]}_pruned", _pack(values[rows][:, blocks], bits))


@rule("MatMulNBits", domain=MS, rewrite=rewrite_matmul_nbits, source=True)
def matmul_nbits(w: Walker, i: int, node: onnx.NodeProto) -> None:
    """A [..., K] @ dequantize(B [N, K/block, bytes per block], scales [N, K/block], zero points): N channels go
    freely (with their scale and zero point rows); K channels only in whole quantisation blocks."""
    names = list(node.input) + [""] * 6
    if names[4]:
        w.block_inputs(i, node, "g_idx (act-order) blocks are not supported")
        return
    if not _weight(w, i, node, (1, 2, 3, 5)):
        return
    k, n, bits, block = _nbits_layout(node)
    a = names[0]
    rank = w.rank(a)
    result: dict[int, np.ndarray] = {}
    scales_2d = w.rank(names[2]) == 2
    for axis, ids in w.tracked(a).items():
        if axis != rank - 1:
            result[axis] = ids
            continue
        if k % block or not scales_2d:
            w.block(ids, f"{w.where(i, node)}: K={k} is not whole blocks of {block} or scales are not [N, blocks]")
            continue
        grid = ids.reshape(k // block, block)
        if block > 1:
            w.union(np.repeat(grid[:, :1], block - 1, axis=1), grid[:, 1:])
        w.use_const(i, 1, 1, grid[:, 0], "in")
        w.use_const(i, 2, 1, grid[:, 0], "in")
        if names[3] and not _packed_zero_points(w, node):
            w.use_const(i, 3, 1, grid[:, 0], "in")
    out = w.new_channels(n, i)
    w.use_const(i, 1, 0, out, "param")  # packed bytes: the scales carry each row's magnitude for criteria
    if scales_2d:
        w.use_const(i, 2, 0, out, "out")
    else:
        w.use_const(i, 2, 0, np.repeat(out, w.dim(names[2], 0) // n), "out")
    if names[3] and not _packed_zero_points(w, node):
        zp_rank = w.rank(names[3])
        w.use_const(i, 3, 0, out if zp_rank == 2 else np.repeat(out, w.dim(names[3], 0) // n), "param")
    if names[5]:
        w.use_const(i, 5, 0, out, "bias")
    result[w.rank(node.output[0]) - 1] = out
    w.set_axes(node.output[0], result)
    w.layer_out[i] = out
