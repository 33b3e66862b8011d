"""One consumer layer to re-fit: how its input becomes design rows, its target becomes columns, and where its
weights live. Conv (any kernel size, stride, pads, dilation, auto_pad, group; via im2col of its input), Gemm
(transB, alpha, beta; transA=0) and MatMul with a constant (K, M) weight, optionally followed by an Add of a
constant (M,) bias, which then becomes the layer's bias.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxprune import ir
from onnxprune.graph import GraphIndex, attribute
from onnxprune.layout import WeightLayout, weight_layout
from onnxprune.reconstruction.activation import activation_bounds

OPS = ("Conv", "Gemm", "MatMul")
_FLOATS = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16)


class Skip(Exception):
    """The layer cannot be re-fitted; the message says why."""


@dataclass
class Consumer:
    name: str  # node name in the model being re-fitted
    op_type: str
    node_index: int
    x: str  # the input tensor read by the layer (in the model being re-fitted)
    y: str  # the tensor whose reference value is the target (the node's output, or its bias Add's output)
    out_keep: np.ndarray | None  # kept positions of the reference output's channel axis (None: all)
    weight: str
    bias: str | None  # initializer holding the bias (None: absent)
    layout: WeightLayout
    bias_node: int | None = None  # MatMul: index of the Add node holding the bias
    fit_bias: bool = True
    attrs: dict = field(default_factory=dict)  # Conv: kernel, strides, dilations, pads, auto_pad
    target_map: np.ndarray | None = None  # MatMul / Gemm: target = reference output @ target_map (instead of out_keep)
    thin: bool = True  # Conv: design rows from a sample of a large feature map's output positions (_position_step)
    bounds: tuple[float, float] | None = None  # the flat ends of the Relu / Clip that alone reads the target

    @property
    def groups(self) -> int:
        return self.layout.group

    # ---- design rows / targets --------------------------------------------------------------
    def columns(self, x_shape: tuple) -> int:
        """Design columns (unknowns per output without the bias) for an input of shape `x_shape`."""
        if self.op_type == "Conv":
            return x_shape[1] // self.groups * math.prod(self.attrs["kernel"])
        return x_shape[-1]

    def design(self, x: np.ndarray, dtype=np.float64) -> np.ndarray:
        """(groups, rows, unknowns per output without the bias), in `dtype`. A Conv's is the transposed view of a
        contiguous (groups, unknowns, rows) array: each column is contiguous, so X^T X and X^T Y run as plain
        matrix products and im2col writes whole runs of positions."""
        if self.op_type == "Conv":
            self.attrs["every"] = _position_step(x.shape, self.attrs, self.groups) if self.thin else 1
            return _im2col(x, self.attrs, self.groups, dtype)
        return np.asarray(x, dtype=dtype).reshape(1, -1, x.shape[-1])

    def target(self, y: np.ndarray, dtype=np.float64) -> np.ndarray:
        """(groups, rows, outputs per group), in `dtype`, restricted to the kept output channels."""
        if self.target_map is not None:
            y = np.asarray(y, dtype=np.float64)
            return (y.reshape(-1, y.shape[-1]) @ self.target_map).astype(dtype, copy=False)[None]
        if self.out_keep is not None:
            y = np.take(y, self.out_keep, axis=self.layout.y_axis)
        if self.op_type != "Conv":
            return np.asarray(y, dtype=dtype).reshape(1, -1, y.shape[-1])
        g = self.groups
        step = self.attrs.get("every", 1)
        if step > 1:
            y = y[(slice(None), slice(None)) + (slice(None, None, step),) * (y.ndim - 2)]
        y = y.reshape(y.shape[0], g, y.shape[1] // g, -1)  # (N, g, k, positions)
        out = np.empty((g, y.shape[2], y.shape[0], y.shape[3]), dtype=dtype)
        out[...] = y.transpose(1, 2, 0, 3)  # one copy, straight into dtype, positions contiguous
        return out.reshape(g, y.shape[2], -1).transpose(0, 2, 1)


def find(model: onnx.ModelProto, index: GraphIndex, name: str, out_keep: np.ndarray | None) -> Consumer:
    """The Consumer for node `name`, or Skip."""
    i = index.by_name.get(name)
    if i is None:
        raise Skip(f"no node named '{name}'")
    return find_at(model, index, i, out_keep, name)


def find_at(model: onnx.ModelProto, index: GraphIndex, i: int, out_keep: np.ndarray | None,
            name: str | None = None) -> Consumer:
    """The Consumer for the node at position `i` (reported as `name`, default its own name), or Skip."""
    node = index.nodes[i]
    name = name or node.name or f"{node.op_type}_{i}"
    if node.op_type not in OPS:
        raise Skip(f"{node.op_type} is not a Conv, Gemm or MatMul")
    w = node.input[1] if len(node.input) > 1 else ""
    if w not in index.initializers:
        raise Skip("its weight is not an initializer (computed or shared through a subgraph)")
    if index.initializers[w].data_type not in _FLOATS:
        raise Skip(f"its weight has data type {onnx.TensorProto.DataType.Name(index.initializers[w].data_type)}, "
                   "not a float type")
    wdims = list(index.initializers[w].dims)
    layout = weight_layout(node, len(wdims))
    bias = None if layout.bias is None else node.input[layout.bias]
    if node.op_type == "Conv":
        if bias is not None and bias not in index.initializers:
            raise Skip("its bias is not an initializer")
        k = wdims[2:]
        n = len(k)
        attrs = {"kernel": k, "strides": list(attribute(node, "strides", None) or [1] * n),
                 "dilations": list(attribute(node, "dilations", None) or [1] * n),
                 "pads": list(attribute(node, "pads", None) or [0] * (2 * n)),
                 "auto_pad": _text(attribute(node, "auto_pad", "NOTSET"))}
        return Consumer(name, "Conv", i, node.input[0], node.output[0], out_keep, w, bias, layout, attrs=attrs,
                        bounds=activation_bounds(index, node.output[0]))
    if node.op_type == "Gemm":
        if layout.trans_a:
            raise Skip("Gemm with transA=1")
        m = layout.out_channels(wdims)
        if bias is not None:
            if bias not in index.initializers:
                raise Skip("its bias C is not an initializer")
            if math.prod(index.initializers[bias].dims) not in (1, m):
                raise Skip(f"its bias C has shape {list(index.initializers[bias].dims)}, not per output")
        return Consumer(name, "Gemm", i, node.input[0], node.output[0], out_keep, w, bias, layout,
                        bounds=activation_bounds(index, node.output[0]))
    if len(wdims) != 2:
        raise Skip(f"MatMul weight of rank {len(wdims)} (only a (K, M) matrix is re-fitted)")
    m = layout.out_channels(wdims)
    y, bias_node = node.output[0], None
    uses = index.consumers.get(node.output[0], [])
    if len(uses) == 1 and node.output[0] not in index.graph_outputs:
        j, slot = uses[0]
        add = index.nodes[j]
        other = add.input[1 - slot] if add.op_type == "Add" and slot in (0, 1) else None
        if other in index.initializers and list(index.initializers[other].dims) in ([m], [1, m]) \
                and len(index.consumers.get(other, [])) == 1:
            y, bias, bias_node = add.output[0], other, j
    return Consumer(name, "MatMul", i, node.input[0], y, out_keep, w, bias, layout, bias_node=bias_node,
                    fit_bias=bias is not None, bounds=activation_bounds(index, y))


def gram_bytes(c: Consumer, weight_dims) -> int:
    """Bytes of the layer's Gram sums (float64 X^T X and X^T Y over all its groups), from its weight's shape."""
    out = c.layout.out_channels(weight_dims)
    unknowns = math.prod(weight_dims) // out + 1  # per output, bias included
    outputs = c.target_map.shape[1] if c.target_map is not None else out if c.out_keep is None else len(c.out_keep)
    return 8 * unknowns * (c.groups * unknowns + outputs)


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# --------------------------------------------------------------------------- im2col

MIN_ROWS_PER_UNKNOWN = 8  # output positions kept per sample and unknown before positions are thinned out
MIN_POSITIONS = 64


def _position_step(shape: tuple, attrs: dict, groups: int) -> int:
    """Every how many output positions (along each spatial axis) a Conv's design rows are taken. Large
    feature maps repeat themselves: a layer with d unknowns per output keeps at least max(MIN_POSITIONS,
    MIN_ROWS_PER_UNKNOWN * d) positions per sample (ThiNet samples positions the same way)."""
    k, s, d = attrs["kernel"], attrs["strides"], attrs["dilations"]
    n = len(k)
    pads = conv_pads(attrs, shape[2:])
    out = [(shape[2 + a] + pads[a] + pads[a + n] - d[a] * (k[a] - 1) - 1) // s[a] + 1 for a in range(n)]
    unknowns = shape[1] // groups * math.prod(k) + 1
    wanted = max(MIN_POSITIONS, MIN_ROWS_PER_UNKNOWN * unknowns)
    step = 1
    while math.prod(-(-o // (step + 1)) for o in out) >= wanted:
        step += 1
    return step


def _im2col(x: np.ndarray, attrs: dict, groups: int, dtype=np.float64) -> np.ndarray:
    """Conv input (N, C, *spatial) -> (groups, N * output positions, C / groups * prod(kernel)), in dtype, the
    transposed view of a contiguous (groups, columns, rows) array; positions every attrs["every"] along each
    spatial axis (default all)."""
    k, s, d = attrs["kernel"], attrs["strides"], attrs["dilations"]
    n = len(k)
    c = x.shape[1]
    pads = conv_pads(attrs, x.shape[2:])
    if any(pads):
        x = np.pad(x, [(0, 0), (0, 0)] + [(pads[a], pads[a + n]) for a in range(n)])
    out = [(x.shape[2 + a] - d[a] * (k[a] - 1) - 1) // s[a] + 1 for a in range(n)]
    every = attrs.get("every", 1)
    if every > 1:  # thin the output positions: a coarser stride over the same taps
        s = [sa * every for sa in s]
        out = [-(-o // every) for o in out]
    taps = list(itertools.product(*(range(ka) for ka in k)))
    positions = math.prod(out)
    # (g, C/g, taps, N, *out): columns (channel, tap) as the weight is laid out, rows in (sample, position) order
    cols = np.empty((groups, c // groups, len(taps), x.shape[0], *out), dtype=dtype)
    grouped = x.reshape(x.shape[0], groups, c // groups, *x.shape[2:])
    for t, offset in enumerate(taps):
        index = (slice(None), slice(None), slice(None)) + tuple(
            slice(offset[a] * d[a], offset[a] * d[a] + s[a] * (out[a] - 1) + 1, s[a]) for a in range(n))
        cols[:, :, t] = grouped[index].transpose(1, 2, 0, *range(3, 3 + n))  # (g, C/g, N, *out)
    return cols.reshape(groups, (c // groups) * len(taps), x.shape[0] * positions).transpose(0, 2, 1)


def conv_pads(attrs: dict, spatial) -> list[int]:
    k, s, d, auto = attrs["kernel"], attrs["strides"], attrs["dilations"], attrs["auto_pad"]
    n = len(k)
    if auto in ("NOTSET", ""):
        return list(attrs["pads"])
    if auto == "VALID":
        return [0] * (2 * n)
    begin, end = [], []
    for a in range(n):
        out = -(-spatial[a] // s[a])
        total = max(0, (out - 1) * s[a] + d[a] * (k[a] - 1) + 1 - spatial[a])
        small, large = total // 2, total - total // 2
        begin.append(large if auto == "SAME_LOWER" else small)
        end.append(small if auto == "SAME_LOWER" else large)
    return begin + end


# --------------------------------------------------------------------------- weights

def current(model: onnx.ModelProto, c: Consumer) -> np.ndarray:
    """The layer's present weights as theta (groups, unknowns + 1, outputs per group); bias row last."""
    inits = {t.name: t for t in model.graph.initializer}
    base = ir.base_dir(model)
    w = np.asarray(ir.tensor_array(inits[c.weight], base), dtype=np.float64)
    b = None if c.bias is None else np.asarray(ir.tensor_array(inits[c.bias], base), dtype=np.float64).reshape(-1)
    if c.op_type == "Conv":
        cout = w.shape[0]
        g = c.groups
        wt = w.reshape(g, cout // g, -1).transpose(0, 2, 1)  # (g, d, k)
        bias = np.zeros(cout) if b is None else np.broadcast_to(b, (cout,))
        return np.concatenate([wt, bias.reshape(g, 1, cout // g)], axis=1)
    if c.op_type == "Gemm":
        wt = (w.T if c.layout.trans_b else w) * c.layout.alpha
        m = wt.shape[1]
        bias = np.zeros(m) if b is None else np.broadcast_to(b * c.layout.beta, (m,))
        return np.concatenate([wt, bias[None]], axis=0)[None]
    m = w.shape[1]
    bias = np.zeros(m) if b is None else np.broadcast_to(b, (m,))
    return np.concatenate([w, bias[None]], axis=0)[None]


def write(model: onnx.ModelProto, c: Consumer, theta: np.ndarray) -> None:
    """Store theta as the layer's weights (and bias), in place. Shared initializers get a private copy."""
    graph = model.graph
    node = graph.node[c.node_index]
    inits = {t.name: k for k, t in enumerate(graph.initializer)}
    dtype = helper.tensor_dtype_to_np_dtype(graph.initializer[inits[c.weight]].data_type)
    d = theta.shape[1] - 1
    if c.op_type == "Conv":
        g, _, k = theta.shape
        w = theta[:, :d, :].transpose(0, 2, 1).reshape(g * k, -1, *c.attrs["kernel"])
        bias = theta[:, d, :].reshape(-1)
        _store(model, node, 1, w.astype(dtype), inits)
        if c.bias is not None:
            _store(model, node, 2, bias.astype(dtype), inits)
        elif np.any(bias):
            name = _fresh(model, f"{c.weight}_bias")
            graph.initializer.append(numpy_helper.from_array(bias.astype(dtype), name))
            while len(node.input) < 2:
                node.input.append("")
            node.input.append(name)
        return
    w, bias = theta[0, :d, :], theta[0, d, :]
    if c.op_type == "Gemm":
        w = w / c.layout.alpha
        _store(model, node, 1, (w.T if c.layout.trans_b else w).astype(dtype), inits)
        if c.bias is not None or np.any(bias):
            _set_beta_one(node)
            if c.bias is not None:
                _store(model, node, 2, bias.astype(dtype), inits)
            else:
                name = _fresh(model, f"{c.weight}_bias")
                graph.initializer.append(numpy_helper.from_array(bias.astype(dtype), name))
                node.input.append(name)
        return
    _store(model, node, 1, w.astype(dtype), inits)
    if c.bias is not None:
        add = graph.node[c.bias_node]
        slot = list(add.input).index(c.bias)
        shape = list(graph.initializer[inits[c.bias]].dims)
        _store(model, add, slot, bias.reshape(shape).astype(dtype), inits)


def add_to_bias(model: onnx.ModelProto, c: Consumer, delta: np.ndarray) -> None:
    """Add `delta` (one value per output channel of the layer in `model`) to its bias, in place; a Conv or Gemm
    without one gets a new bias initializer. A MatMul needs its bias Add (Skip otherwise)."""
    graph = model.graph
    node = graph.node[c.node_index]
    inits = {t.name: k for k, t in enumerate(graph.initializer)}
    dtype = helper.tensor_dtype_to_np_dtype(graph.initializer[inits[c.weight]].data_type)
    delta = np.asarray(delta, dtype=np.float64).reshape(-1)
    old = None
    if c.bias is not None:
        old = np.asarray(ir.tensor_array(graph.initializer[inits[c.bias]], ir.base_dir(model)), dtype=np.float64)
    if c.op_type == "MatMul":
        if old is None:
            raise Skip("a MatMul without a bias Add has no bias to absorb the shift")
        add = graph.node[c.bias_node]
        _store(model, add, list(add.input).index(c.bias), (old + delta.reshape(old.shape)).astype(dtype), inits)
        return
    if c.op_type == "Gemm":
        beta = float(c.layout.beta)
        new = delta if old is None else np.broadcast_to(old.reshape(-1) * beta, delta.shape) + delta
        _set_beta_one(node)
    else:
        new = delta if old is None else old.reshape(-1) + delta
    slot = 2
    if old is not None:
        _store(model, node, slot, new.astype(dtype), inits)
        return
    name = _fresh(model, f"{c.weight}_bias")
    graph.initializer.append(numpy_helper.from_array(new.astype(dtype), name))
    while len(node.input) < slot:
        node.input.append("")
    node.input.append(name)


def _store(model: onnx.ModelProto, node: onnx.NodeProto, slot: int, value: np.ndarray, inits: dict) -> None:
    graph = model.graph
    name = node.input[slot]
    users = sum(1 for n in graph.node for t in n.input if t == name)
    outputs = {o.name for o in graph.output}
    if users > 1 or name in outputs:
        fresh = _fresh(model, f"{name}_refit")
        graph.initializer.append(numpy_helper.from_array(value, fresh))
        node.input[slot] = fresh
        return
    graph.initializer[inits[name]].CopyFrom(numpy_helper.from_array(value, name))


def _set_beta_one(node: onnx.NodeProto) -> None:
    for a in node.attribute:
        if a.name == "beta":
            a.f = 1.0
            return
    node.attribute.append(helper.make_attribute("beta", 1.0))


def _fresh(model: onnx.ModelProto, base: str) -> str:
    taken = {t.name for t in model.graph.initializer} | {o for n in model.graph.node for o in n.output}
    name, k = base, 0
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    return name
