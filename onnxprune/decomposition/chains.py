"""ONNX node chains that replace one layer, and the kernel a chain encodes.

Layouts (the last node always writes the replaced node's output tensor):
- tucker, Conv:  1x1 (C_in -> R_in), core k (R_in -> R_out, original strides/pads/dilations), 1x1 (R_out -> C_out,
                 bias);
                 where exact (cost.movable_strides), a factor g of the stride moves to the first 1x1 conv and the
                 core takes stride s/g, dilation d/g, pads p/g: the first conv then runs at 1/g of the input size
- cp, Conv:      1x1 (C_in -> R), one depthwise conv per spatial axis (its share of strides/pads/dilations),
                 1x1 (R -> C_out, bias)
- svd, 1x1 Conv: 1x1 (C_in -> R, original strides/pads), 1x1 (R -> C_out, bias)
- svd, Gemm:     Gemm(A, W1 (K, R), transA, alpha), Gemm(h, W2 (R, N), C, beta)
- svd, MatMul:   MatMul(x, W1 (K, R)), MatMul(h, W2 (R, N))
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxprune.decomposition.cost import movable_strides
from onnxprune.graph import NameSource, attributes
from onnxprune.layout import weight_layout


@dataclass(frozen=True)
class Chain:
    nodes: list[onnx.NodeProto]
    initializers: list[onnx.TensorProto]

    @property
    def node_names(self) -> tuple[str, ...]:
        return tuple(n.name for n in self.nodes)

    @property
    def factor_names(self) -> tuple[str, ...]:
        return tuple(n.input[1] for n in self.nodes)


def build(method: str, node: onnx.NodeProto, layer: str, factors: list[np.ndarray], dtype: np.dtype,
          namer: NameSource, opset: int) -> Chain:
    """Chain of nodes computing `node` with the given factors (see the module docstring for layouts)."""
    attrs = attributes(node)
    steps: list[tuple[str, str, np.ndarray, dict]] = []  # (role, op, weight, attributes)
    if node.op_type == "Conv":
        ones = {"kernel_shape": [1] * (factors[0].ndim - 2)}
        spatial = {k: v for k, v in attrs.items() if k in ("strides", "pads", "dilations", "auto_pad", "kernel_shape")}
        if method == "tucker":
            first, core = _tucker_strides(spatial, list(factors[1].shape[2:]))
            steps = [("first", "Conv", factors[0], {**ones, **first}), ("core", "Conv", factors[1], core),
                     ("last", "Conv", factors[2], ones)]
        elif method == "cp":
            steps = [("first", "Conv", factors[0], ones)]
            for axis, weight in enumerate(factors[1:-1]):
                steps.append((f"depthwise_{axis}", "Conv", weight, _axis_attributes(attrs, axis, weight)))
            steps.append(("last", "Conv", factors[-1], ones))
        else:
            steps = [("first", "Conv", factors[0], {**spatial, **ones}), ("last", "Conv", factors[1], ones)]
    elif node.op_type == "Gemm":
        layout = weight_layout(node, 2)
        first = {"transA": layout.trans_a, "alpha": layout.alpha}
        steps = [("first", "Gemm", factors[0], first), ("last", "Gemm", factors[1], {"beta": layout.beta})]
    else:
        steps = [("first", "MatMul", factors[0], {}), ("last", "MatMul", factors[1], {})]
    return _assemble(method, node, layer, steps, dtype, namer, opset)


def _tucker_strides(spatial: dict, kernel: list[int]) -> tuple[dict, dict]:
    """(extra attributes of the first 1x1 conv, attributes of the core): the movable part of the stride
    (cost.movable_strides, exact) goes to the first conv; the core keeps the rest."""
    n = len(kernel)
    strides = list(spatial.get("strides", [1] * n))
    auto_pad = spatial.get("auto_pad", "NOTSET")
    moved = movable_strides(kernel, strides, spatial.get("pads"), spatial.get("dilations"), auto_pad)
    if all(g == 1 for g in moved):
        return {}, spatial
    pads = list(spatial["pads"]) if "pads" in spatial and auto_pad in ("NOTSET", b"NOTSET") else [0] * (2 * n)
    dilations = list(spatial.get("dilations", [1] * n))
    core = {k: v for k, v in spatial.items() if k != "auto_pad"}
    core["strides"] = [s // g for s, g in zip(strides, moved)]
    core["pads"] = [p // moved[j % n] for j, p in enumerate(pads)]
    core["dilations"] = [d // g if k > 1 else d for d, g, k in zip(dilations, moved, kernel)]
    return {"strides": list(moved)}, core


def _axis_attributes(attrs: dict, axis: int, weight: np.ndarray) -> dict:
    """Attributes of the depthwise conv along one spatial axis: only that axis keeps stride, pads, dilation."""
    n = weight.ndim - 2
    out = {"group": weight.shape[0], "kernel_shape": list(weight.shape[2:])}
    if "strides" in attrs:
        out["strides"] = [s if j == axis else 1 for j, s in enumerate(attrs["strides"])]
    if "dilations" in attrs:
        out["dilations"] = [d if j == axis else 1 for j, d in enumerate(attrs["dilations"])]
    if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        out["auto_pad"] = attrs["auto_pad"]  # SAME_* / VALID padding is computed per axis: it splits by itself
    elif "pads" in attrs:
        pads = attrs["pads"]
        out["pads"] = [pads[j] if j % n == axis else 0 for j in range(2 * n)]
    return out


def _assemble(method, node, layer, steps, dtype, namer, opset) -> Chain:
    nodes, inits = [], []
    current = node.input[0]
    for position, (role, op, weight, attrs) in enumerate(steps):
        name = namer(f"{layer}/{method}_{role}")
        init = numpy_helper.from_array(np.ascontiguousarray(weight, dtype=dtype), namer(f"{name}/weight"))
        inits.append(init)
        inputs = [current, init.name]
        last = position == len(steps) - 1
        if last and op in ("Conv", "Gemm") and len(node.input) > 2 and node.input[2]:
            inputs.append(node.input[2])  # the original bias / C, unchanged
        elif op == "Gemm" and opset < 11:  # C is optional only from opset 11
            zeros = numpy_helper.from_array(np.zeros(weight.shape[1], dtype=dtype), namer(f"{name}/zero_bias"))
            inits.append(zeros)
            inputs.append(zeros.name)
        output = node.output[0] if last else namer(f"{name}/out")
        nodes.append(helper.make_node(op, inputs, [output], name=name, **attrs))
        current = output
    return Chain(nodes, inits)


def encoded_kernel(method: str, node: onnx.NodeProto, factors: list[np.ndarray]) -> np.ndarray:
    """The kernel, in the replaced node's weight layout, that the chain's factors compute (float64)."""
    f = [np.asarray(x, dtype=np.float64) for x in factors]
    if node.op_type == "Conv":
        first = f[0].reshape(f[0].shape[:2])  # (R, C_in)
        last = f[-1].reshape(f[-1].shape[:2])  # (C_out, R)
        if method == "tucker":
            return np.einsum("oa,ab...,bi->oi...", last, f[1], first, optimize=True)
        if method == "cp":
            axes = "hwdxyz"[: len(f) - 2]
            taps = [d.reshape(d.shape[0], -1) for d in f[1:-1]]  # (R, k_axis) each
            spec = "or,ri," + ",".join(f"r{a}" for a in axes) + "->oi" + axes
            return np.einsum(spec, last, first, *taps, optimize=True)
        return (last @ first).reshape(last.shape[0], first.shape[1], *f[0].shape[2:])
    product = f[0] @ f[1]  # (in, out)
    return product if weight_layout(node, 2).in_axis == 0 else product.T
