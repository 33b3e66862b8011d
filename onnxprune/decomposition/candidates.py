"""Which layers can be factorised, by which method, and their full ranks (or why not)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from onnxprune import ir
from onnxprune.decomposition.cost import Geometry, chain_cost, layer_cost, movable_strides
from onnxprune.errors import InvalidRequestError
from onnxprune.graph import attribute
from onnxprune.layout import layer_problem, weight_layout

METHODS = ("tucker", "cp", "svd")
_FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16)
_MIN_RANKS = {"tucker": (1, 1), "cp": (1,), "svd": (1,)}


@dataclass(frozen=True)
class DecomposableLayer:
    """One Conv, ConvTranspose, Gemm or MatMul-with-constant node and what decomposition can do with it.

    `full_ranks[method]` is (input rank, output rank) for Tucker and (rank,) for CP and SVD;
    `reasons[method]` says why a method does not apply.
    """

    name: str
    op_type: str
    kernel_shape: tuple[int, ...]
    full_ranks: dict[str, tuple[int, ...]]
    reasons: dict[str, str]
    node_index: int = field(repr=False, compare=False)
    weight: str = field(repr=False, compare=False)
    geometry: Geometry | None = field(repr=False, compare=False)

    @property
    def decomposable(self) -> bool:
        return bool(self.full_ranks)

    @property
    def methods(self) -> tuple[str, ...]:
        return tuple(m for m in METHODS if m in self.full_ranks)

    @property
    def reason(self) -> str:
        """Why no method applies ('' when decomposable)."""
        if self.decomposable:
            return ""
        return "; ".join(dict.fromkeys(self.reasons.values()))


def layer_name(node: onnx.NodeProto) -> str:
    """A node's layer name: its name, or its first output when it has none."""
    return node.name or node.output[0]


def constant_tensors(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    """Initializers (not overridable by a graph input) and Constant-node tensors, by tensor name."""
    inputs = {value.name for value in graph.input}
    found = {t.name: t for t in graph.initializer if t.name not in inputs}
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            for attr in node.attribute:
                if attr.name == "value":
                    found[node.output[0]] = attr.t
    return found


def find_candidates(model: onnx.ModelProto, shapes: dict[str, tuple]) -> list[DecomposableLayer]:
    """Every Conv / ConvTranspose / Gemm node and every MatMul with a constant operand, in graph order."""
    constants = constant_tensors(model.graph)
    layers = []
    for index, node in enumerate(model.graph.node):
        if node.domain not in ("", "ai.onnx"):
            continue
        if node.op_type in ("Conv", "ConvTranspose"):
            layers.append(_conv(index, node, constants, shapes))
        elif node.op_type == "Gemm":
            layers.append(_gemm(index, node, constants, shapes))
        elif node.op_type == "MatMul" and any(t in constants for t in node.input):
            layers.append(_matmul(index, node, constants, shapes))
    return layers


def _layer(index, node, weight, dims, geometry, full, reasons) -> DecomposableLayer:
    """Drop methods whose cheapest chain (rank 1) already costs at least the layer itself."""
    if geometry is not None:
        before = layer_cost(geometry)[1]
        for method in list(full):
            after = chain_cost(geometry, method, _MIN_RANKS[method])[1]
            if after >= before:
                del full[method]
                reasons[method] = f"too small to gain: even rank 1 costs {after} MACs vs {before}"
    return DecomposableLayer(layer_name(node), node.op_type, tuple(dims), full, reasons, index, weight, geometry)


def _all(reason: str) -> dict[str, str]:
    return {m: reason for m in METHODS}


def _weight_problem(node: onnx.NodeProto, position: int, constants) -> str:
    name = node.input[position] if len(node.input) > position else ""
    if name not in constants:
        return f"weight '{name}' of {node.op_type} '{layer_name(node)}' is not a constant"
    tensor = constants[name]
    if tensor.data_type not in _FLOAT_TYPES:
        return f"weight '{name}' has data type {onnx.TensorProto.DataType.Name(tensor.data_type)}, not float"
    return ""


def _spatial(shape: tuple | None) -> tuple[int | None, ...] | None:
    if shape is None:
        return None
    return tuple(d if isinstance(d, int) else None for d in shape)


def _conv(index, node, constants, shapes) -> DecomposableLayer:
    weight = node.input[1] if len(node.input) > 1 else ""
    problem = _weight_problem(node, 1, constants)
    dims = tuple(constants[weight].dims) if weight in constants else ()
    if node.op_type == "ConvTranspose":
        problem = problem or "ConvTranspose is not supported: export it as Conv or keep it whole"
    if not problem and len(dims) < 3:
        problem = f"kernel of rank {len(dims)} is not a convolution kernel"
    problem = problem or layer_problem(node, dims, shapes.get(node.input[0]))
    layout = weight_layout(node, len(dims))
    group = layout.group
    if not problem and group != 1:
        c_in_group, c_out = layout.in_per_group(dims), dims[layout.out_axis]
        kind = "depthwise" if c_in_group == 1 and group == c_out else "grouped"
        problem = f"{kind} convolution (group={group}): each filter already sees {c_in_group} channel(s)"
    if problem:
        return DecomposableLayer(layer_name(node), node.op_type, dims, {}, _all(problem), index, weight, None)
    c_out, c_in, kernel = dims[layout.out_axis], dims[layout.in_axis], tuple(dims[2:])
    strides = tuple(attribute(node, "strides", [1] * len(kernel)))
    in_shape, out_shape = _spatial(shapes.get(node.input[0])), _spatial(shapes.get(node.output[0]))
    first = movable_strides(kernel, strides, attribute(node, "pads", None), attribute(node, "dilations", None),
                            attribute(node, "auto_pad", "NOTSET"))
    geometry = Geometry.for_conv(c_in, c_out, kernel, strides, in_shape, out_shape, first)
    full: dict[str, tuple[int, ...]] = {}
    reasons: dict[str, str] = {}
    if all(k == 1 for k in kernel):
        full["svd"] = (min(c_in, c_out),)
        reasons["tucker"] = reasons["cp"] = "1x1 kernel: Tucker-2 and CP reduce to SVD here, use method 'svd'"
    else:
        full["tucker"] = (c_in, c_out)
        full["cp"] = (min(c_in, c_out),)
        reasons["svd"] = "SVD applies to 1x1 Conv, Gemm and MatMul; use 'tucker' or 'cp' for a kxk kernel"
    return _layer(index, node, weight, dims, geometry, full, reasons)


def _gemm(index, node, constants, shapes) -> DecomposableLayer:
    weight = node.input[1]
    problem = _weight_problem(node, 1, constants)
    if not problem and node.input[0] in constants:
        problem = f"both inputs of Gemm '{layer_name(node)}' are constant: nothing to gain at run time"
    dims = tuple(constants[weight].dims) if weight in constants else ()
    problem = problem or layer_problem(node, dims)
    if problem:
        return DecomposableLayer(layer_name(node), node.op_type, dims, {}, _all(problem), index, weight, None)
    layout = weight_layout(node, len(dims))
    k, n = dims[layout.in_axis], dims[layout.out_axis]
    a_shape = shapes.get(node.input[0])
    rows = None
    if a_shape is not None and len(a_shape) == 2:
        rows = a_shape[1] if layout.trans_a else a_shape[0]
    geometry = Geometry.for_matrix(k, n, rows if isinstance(rows, int) else None)
    return _matrix_layer(index, node, weight, dims, geometry)


def _matmul(index, node, constants, shapes) -> DecomposableLayer:
    weight = node.input[1]
    if weight not in constants:
        problem = f"the constant of MatMul '{layer_name(node)}' is its left operand; only x @ W is supported"
    elif node.input[0] in constants:
        problem = f"both inputs of MatMul '{layer_name(node)}' are constant: nothing to gain at run time"
    else:
        problem = _weight_problem(node, 1, constants)
    dims = tuple(constants[weight].dims) if weight in constants else ()
    if not problem and len(dims) != 2:
        problem = f"constant weight of rank {len(dims)}: only a 2-D weight (any batch rank on the activation) is supported"
    if problem:
        return DecomposableLayer(layer_name(node), node.op_type, dims, {}, _all(problem), index, weight, None)
    a_shape = shapes.get(node.input[0])
    rows = None
    if a_shape is not None and all(isinstance(d, int) for d in a_shape[:-1]):
        rows = int(np.prod(a_shape[:-1], dtype=np.int64))
    layout = weight_layout(node, len(dims))
    return _matrix_layer(index, node, weight, dims,
                         Geometry.for_matrix(dims[layout.in_axis], dims[layout.out_axis], rows))


def _matrix_layer(index, node, weight, dims, geometry) -> DecomposableLayer:
    reason = f"Tucker-2 and CP apply to convolution kernels; use 'svd' for {node.op_type}"
    full = {"svd": (min(geometry.c_in, geometry.c_out),)}
    return _layer(index, node, weight, dims, geometry, full, {"tucker": reason, "cp": reason})


METHOD_ALIASES = {"tucker": "tucker", "fd_tk": "tucker", "cp": "cp", "fd_cp": "cp", "svd": "svd", "fd_svd": "svd"}


def normalise_method(method: str) -> str:
    """'tucker' | 'cp' | 'svd', accepting NetsPresso's FD_TK, FD_CP, FD_SVD in any case."""
    key = str(method).strip().lower()
    if key not in METHOD_ALIASES:
        raise InvalidRequestError(f"unknown decomposition method '{method}': use tucker (FD_TK), cp (FD_CP) "
                                  "or svd (FD_SVD)")
    return METHOD_ALIASES[key]


def decomposable_layers(model) -> list[DecomposableLayer]:
    """Every Conv / ConvTranspose / Gemm / MatMul-with-constant layer, its full ranks per method or why not."""
    model = ir.load_model(model)
    return find_candidates(model, ir.infer_shapes(model))
