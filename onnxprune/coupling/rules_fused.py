"""Rules for onnxruntime's fused com.microsoft ops (transformer optimizer, model builder): normalisations with a
residual input, GELU variants with a bias, FusedConv and FusedMatMul. Attention ops: rules_attention.py."""
from __future__ import annotations

import numpy as np
import onnx

from onnxprune.coupling.registry import rule
from onnxprune.coupling.rules_elementwise import broadcasting, merge_aligned, pass_through
from onnxprune.coupling.rules_layers import conv, matmul, rewrite_conv_group
from onnxprune.coupling.walker import Walker
from onnxprune.graph import attribute

MS = "com.microsoft"

rule("Gelu", "QuickGelu", domain=MS)(pass_through)
# numpy broadcasting of every input: FastGelu(X, bias), BiasGelu(A, B). (BiasAdd and BiasSplitGelu have no CPU
# kernel, so no fixture can check a rule for them: they block, as every op without a rule does.)
rule("FastGelu", "BiasGelu", domain=MS)(broadcasting)
# SimplifiedLayerNormalization has no rule: onnxruntime registers it in the default ONNX domain, where onnx.checker
# rejects it, so no model holding it loads here (the optimizer's fused SkipSimplifiedLayerNormalization is covered).


@rule("SkipLayerNormalization", "SkipSimplifiedLayerNormalization", domain=MS)
def skip_layer_norm(w: Walker, i: int, node: onnx.NodeProto) -> None:
    """Norm(input + skip + bias) * gamma (+ beta): the inputs merge as an Add; the norm mixes the last axis.

    Inputs: input, skip, gamma, beta, bias (SkipLayerNormalization) or input, skip, gamma, bias (Simplified):
    every one broadcasts against the output, so all merge per axis. Output 3 (input + skip + bias) shares the ids;
    outputs 1 and 2 (mean, inverse std) block when read.
    """
    out = node.output[0]
    rank = w.rank(node.input[0])
    if rank is None:
        w.block_inputs(i, node, "input rank unknown")
        return
    inputs = [(slot, t) for slot, t in enumerate(node.input) if t]
    result: dict[int, np.ndarray] = {}
    for k in range(rank):
        ids = merge_aligned(w, i, node, inputs, rank, k, w.dim(out, k))
        if ids is not None:
            result[k] = ids
    if rank - 1 in result:
        w.inexact(result[rank - 1], f"{w.where(i, node)} normalises over channel axis {rank - 1} "
                                    "(values change when channels go)")
    w.set_axes(out, result)
    for k, extra in enumerate(node.output[1:], start=1):
        if extra and w.used(extra):
            if k == 3:
                w.set_axes(extra, result)
            else:
                w.block_inputs(i, node, "mean/inverse-std outputs are used")


def _as_default_op(node: onnx.NodeProto, op_type: str) -> onnx.NodeProto:
    """The node as the default-domain op it extends (for the rules and layouts of that op)."""
    proxy = onnx.NodeProto()
    proxy.CopyFrom(node)
    proxy.op_type, proxy.domain = op_type, ""
    return proxy


def rewrite_fused_conv(s, i: int, node: onnx.NodeProto, nodes: list) -> None:
    proxy = _as_default_op(node, "Conv")
    rewrite_conv_group(s, i, proxy, nodes)
    del node.attribute[:]
    node.attribute.extend(proxy.attribute)


@rule("FusedConv", domain=MS, rewrite=rewrite_fused_conv, source=True)
def fused_conv(w: Walker, i: int, node: onnx.NodeProto) -> None:
    """activation(Conv(X, W, B) + Z): a Conv whose output also merges with the residual input Z (slot 3)."""
    proxy = _as_default_op(node, "Conv")
    z = node.input[3] if len(node.input) > 3 else ""
    conv(w, i, proxy)
    if not z:
        return
    out = w.tracked(node.output[0]).get(1)
    z_ids = w.tracked(z).get(1)
    if out is None:
        return
    if z_ids is not None and len(z_ids) == len(out):
        w.union(out, z_ids)
    else:
        w.block(out, f"{w.where(i, node)}: residual input '{z}' carries channels that cannot change")


@rule("FusedMatMul", domain=MS, source=True)
def fused_matmul(w: Walker, i: int, node: onnx.NodeProto) -> None:
    """alpha * op(A) @ op(B), op a transpose of the last two axes (transA / transB)."""
    if attribute(node, "transBatchA", 0) or attribute(node, "transBatchB", 0):
        w.block_inputs(i, node, "transBatchA / transBatchB are not supported")
        return
    trans_a, trans_b = attribute(node, "transA", 0), attribute(node, "transB", 0)
    if not trans_a and not trans_b:
        matmul(w, i, _as_default_op(node, "MatMul"))
        return
    a, b = node.input[0], node.input[1]
    ra, rb = w.rank(a), w.rank(b)
    if ra is None or rb is None or ra < 2 or rb < 2:
        w.block_inputs(i, node, "FusedMatMul with a 1-D or unknown-rank operand is not supported")
        return
    r = max(ra, rb)
    ta, tb = w.tracked(a), w.tracked(b)
    rows_a, k_a = (ra - 1, ra - 2) if trans_a else (ra - 2, ra - 1)  # op(A) = [rows, K]
    k_b, cols_b = (rb - 1, rb - 2) if trans_b else (rb - 2, rb - 1)  # op(B) = [K, cols]
    result: dict[int, np.ndarray] = {}
    if w.is_const(a):
        w.block_inputs(i, node, "a constant left operand with transA/transB is not supported")
        return
    if w.is_const(b):
        if k_a in ta:
            w.use_const(i, 1, k_b, ta[k_a], "in")
        out = w.new_channels(w.shape(b)[cols_b], i)
        w.use_const(i, 1, cols_b, out, "out")
        result[r - 1] = out
        w.layer_out[i] = out
    else:
        ka, kb = ta.get(k_a), tb.get(k_b)
        if ka is not None and kb is not None:
            w.union(ka, kb)
        elif ka is not None or kb is not None:
            w.block(ka if ka is not None else kb,
                    f"{w.where(i, node)}: contracted axis carries channels on one operand only")
        if cols_b in tb:
            result[r - 1] = tb[cols_b]
    if rows_a in ta:
        result[r - 2] = ta[rows_a]
    inputs = [(0, a), (1, b)]
    for k in range(r - 2):
        ids = merge_aligned(w, i, node, inputs, r, k, w.dim(node.output[0], k))
        if ids is not None:
            result[k] = ids
    w.set_axes(node.output[0], result)
