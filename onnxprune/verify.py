"""The correctness oracles (DESIGN.md §4): output comparison, the mask oracle and its reports."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from . import ir
from .errors import InvalidRequestError
from .graph import GraphIndex, zeros_like
from .runtime import make_inputs, run
from .shapes import infer_shapes_and_types


# --------------------------------------------------------------------------- reports

@dataclass
class VerifyReport:
    """Comparison of two runs: per output / per tensor max abs and relative error."""

    ok: bool
    max_rel_error: float
    tol: float
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    tensors: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [f"verify: {'OK' if self.ok else 'FAILED'} (max rel error {self.max_rel_error:.3g}, "
                 f"tol {self.tol:g})",
                 f"{'kind':<7} {'name':<40} {'max_abs':>11} {'rel':>11}  shapes"]
        for kind, rows in (("output", self.outputs), ("tensor", self.tensors)):
            for name, row in rows.items():
                shapes = f"{row['shape_ref']} vs {row['shape_cand']}"
                lines.append(f"{kind:<7} {name:<40} {row['max_abs']:>11.3g} {row['rel']:>11.3g}  {shapes}")
        return "\n".join(lines)


# relative error a float type's rounding alone can cause in a model (about 8-10 ulps of 1.0 at its precision)
DTYPE_TOLERANCE = {"float16": 1e-2, "bfloat16": 6e-2, "float8_e4m3fn": 0.5, "float8_e4m3fnuz": 0.5,
                   "float8_e5m2": 1.0, "float8_e5m2fnuz": 1.0}


def tolerance_for(dtype: np.dtype | None, tol: float) -> float:
    """`tol`, raised to what the element type's precision allows (fp16 1e-2, bf16 6e-2, fp8 0.5-1)."""
    return max(tol, DTYPE_TOLERANCE.get(str(dtype), 0.0)) if dtype is not None else tol


def compare_arrays(ref: np.ndarray | None, cand: np.ndarray | None) -> dict[str, Any]:
    """max_abs and rel = max|a-b| / (max|a| + 1e-12); inf when shapes differ or one side is missing; `dtype`: the
    reference's element type (its precision sets the tolerance)."""
    row = {"shape_ref": None if ref is None else tuple(ref.shape),
           "shape_cand": None if cand is None else tuple(cand.shape),
           "dtype": None if ref is None else str(ref.dtype)}
    if ref is None or cand is None or ref.shape != cand.shape:
        return {"max_abs": float("inf"), "rel": float("inf"), **row}
    if ref.dtype == object or cand.dtype == object:
        same = bool(np.array_equal(ref, cand))
        return {"max_abs": 0.0 if same else float("inf"), "rel": 0.0 if same else float("inf"), **row}
    a, b = _as_float(ref), _as_float(cand)
    both_nan = np.isnan(a) & np.isnan(b)
    diff = np.where(both_nan, 0.0, np.abs(a - b))
    diff = np.where(np.isnan(diff), np.inf, diff)
    max_abs = float(diff.max()) if diff.size else 0.0
    scale = float(np.nanmax(np.abs(a))) if a.size and not np.isnan(a).all() else 0.0
    return {"max_abs": max_abs, "rel": max_abs / (scale + 1e-12) if max_abs else 0.0, **row}


def _as_float(x: np.ndarray) -> np.ndarray:
    if np.issubdtype(x.dtype, np.complexfloating):
        return np.abs(x.astype(np.complex128))
    return np.asarray(x).astype(np.float64)


def _report(outputs: dict, tensors: dict, tol: float) -> VerifyReport:
    rows = [*outputs.values(), *tensors.values()]
    worst = max((row["rel"] for row in rows), default=0.0)
    ok = all(row["rel"] <= tolerance_for(row.get("dtype"), tol) for row in rows)
    shown = max((tolerance_for(row.get("dtype"), tol) for row in rows), default=tol)
    return VerifyReport(ok=ok, max_rel_error=worst, tol=shown, outputs=outputs, tensors=tensors)


# --------------------------------------------------------------------------- oracles

def verify(reference: ir.ModelLike, candidate: ir.ModelLike, inputs: Mapping[str, np.ndarray] | None = None,
           *, tol: float = 1e-4) -> VerifyReport:
    """Run both models on the same inputs and compare every graph output of the reference by name."""
    reference, candidate = ir.load_model(reference), ir.load_model(candidate)
    inputs = make_inputs(reference) if inputs is None else inputs
    names = [o.name for o in reference.graph.output]
    ref_out = run(reference, inputs)
    cand_names = {o.name for o in candidate.graph.output}
    cand_out = run(candidate, inputs, [n for n in names if n in cand_names])
    outputs = {n: compare_arrays(ref_out[n], cand_out.get(n)) for n in names}
    return _report(outputs, {}, tol)


def verify_pruning(model: ir.ModelLike, result: Any, inputs: Mapping[str, np.ndarray] | None = None,
                   *, tol: float = 1e-4) -> VerifyReport:
    """Mask oracle: the masked original and the pruned model agree on outputs and kept elements.

    `result` has `.model` (pruned) and `.channels` ({tensor: {"axes": [...], "mask": nested bools}}).
    """
    model = ir.load_model(model)
    pruned, channels = _result_parts(result)
    inputs = make_inputs(model) if inputs is None else dict(inputs)
    masks = channel_masks(model, channels)
    masked, masked_names = masked_original(model, masks)
    graph_outputs = [o.name for o in model.graph.output]
    ref = run(masked, inputs, graph_outputs + [masked_names[t] for t in masks])
    pruned_inputs = {k: masks[k].kept(v) if k in masks else v for k, v in inputs.items()}
    present = _value_names(pruned)
    cand = run(pruned, pruned_inputs, [n for n in [*graph_outputs, *masks] if n in present])
    outputs = {n: compare_arrays(ref[n], cand.get(n)) for n in graph_outputs if n not in masks}
    tensors = {t: compare_arrays(m.kept(ref[masked_names[t]]), cand.get(t)) for t, m in masks.items()}
    return _report(outputs, tensors, tol)


def verify_blocks(model: ir.ModelLike, result: Any, inputs: Mapping[str, np.ndarray] | None = None,
                  *, tol: float = 1e-4) -> VerifyReport:
    """Zero-branch oracle for depth pruning: the pruned model (`result.model`, residual blocks
    `result.removed_parts` of `result.blocks`) equals the original with each removed branch's output zeroed."""
    model = ir.load_model(model)
    parts = set(result.removed_parts)
    removed = {b.name: b for b in result.blocks if b.name in parts and b.kind != "layer"}
    _, types = infer_shapes_and_types(model)
    zeroed = onnx.ModelProto()
    zeroed.CopyFrom(model)
    g = zeroed.graph
    names = GraphIndex.build(model.graph).names
    nodes = []
    for name, node in zip(names, g.node):
        block = removed.get(name)
        if block is not None:
            zeros = zeros_like(block.branch_output, f"{block.branch_output}/zeroed", types)
            nodes += zeros
            node.input[block.join_slot] = zeros[-1].output[0]
        nodes.append(node)
    del g.node[:]
    g.node.extend(nodes)
    return verify(zeroed, result.model, inputs, tol=tol)


def _result_parts(result: Any) -> tuple[onnx.ModelProto, Mapping]:
    if isinstance(result, Mapping):
        return ir.load_model(result["model"]), result["channels"]
    return ir.load_model(result.model), result.channels


def _value_names(model: onnx.ModelProto) -> set[str]:
    """Names a run can return: graph inputs, initializers (a weight may be a graph output) and node outputs."""
    g = model.graph
    return {v.name for v in g.input} | {t.name for t in g.initializer} | {o for n in g.node for o in n.output}


@dataclass(frozen=True)
class ChannelMask:
    """One pruning-record entry: normalised axes, boolean mask (dims in axes order), tensor rank and type."""

    axes: tuple[int, ...]
    mask: np.ndarray
    rank: int
    elem_type: int

    def kept_shape(self) -> tuple[int, ...]:
        """Sizes along `axes` after pruning (the kept elements must form a box)."""
        shape, sub = [], self.mask
        while sub.ndim:
            rows = [row for row in sub if row.any()]
            shape.append(len(rows))
            sub = rows[0] if rows else sub[0]
        if int(np.prod(shape)) != int(self.mask.sum()):
            raise InvalidRequestError(f"mask keeps {int(self.mask.sum())} elements, which do not form a "
                                      f"{shape} block; every kept slice must keep the same count")
        return tuple(shape)

    def kept(self, array: np.ndarray) -> np.ndarray:
        """The kept elements of an original-sized array, in order."""
        array = np.asarray(array)
        k = len(self.axes)
        tail = list(range(array.ndim - k, array.ndim))
        moved = np.moveaxis(array, list(self.axes), tail)
        lead = moved.shape[:-k] if k else moved.shape
        flat = moved.reshape(lead + (int(np.prod(moved.shape[-k:])),))
        picked = flat[..., np.flatnonzero(self.mask.ravel())].reshape(lead + self.kept_shape())
        return np.moveaxis(picked, tail, list(self.axes))


def channel_masks(model: onnx.ModelProto, channels: Mapping) -> dict[str, ChannelMask]:
    """Validate a pruning record against the original model's shapes."""
    shapes, types = infer_shapes_and_types(model)
    masks = {}
    for name, entry in channels.items():
        shape = shapes.get(name)
        if shape is None:
            raise InvalidRequestError(f"pruning record names tensor {name!r}, which has no known shape "
                                      "in the original model")
        axes = tuple(a % len(shape) for a in entry["axes"])
        mask = np.asarray(entry["mask"], dtype=bool)
        if mask.ndim != len(axes) or any(isinstance(shape[a], int) and shape[a] != n
                                         for a, n in zip(axes, mask.shape)):
            raise InvalidRequestError(f"mask of tensor {name!r} has shape {mask.shape}; expected the original "
                                      f"sizes {[shape[a] for a in axes]} along axes {list(axes)}")
        masks[name] = ChannelMask(axes, mask, len(shape), types.get(name, TensorProto.FLOAT))
    return masks


def masked_original(model: onnx.ModelProto, masks: dict[str, ChannelMask]) -> tuple[onnx.ModelProto, dict[str, str]]:
    """Copy of `model` with every listed tensor multiplied by its mask; returns the masked names.

    A node output t is renamed t/premask and Mul(t/premask, mask) writes t, so consumers and
    graph outputs see the masked value; consumers of a graph input t read t/masked instead.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    graph_inputs = {v.name for v in g.input}
    producer = {o: i for i, n in enumerate(g.node) for o in n.output}
    names: dict[str, str] = {}
    inserts: dict[int, list[onnx.NodeProto]] = {}
    select = ir.opset_version(model, default=0) >= 9  # Where: zeros even where the value is inf or nan
    initializers = {t.name: t for t in g.initializer}
    for t, m in masks.items():
        const = _mask_tensor(f"{t}/mask", m, select)
        g.initializer.append(const)
        zero = None
        if select and m.elem_type != TensorProto.BOOL:
            zero = _zero_point(g, g.node[producer[t]], t, m, initializers) if t in producer else None
            if zero is None:
                zero = f"{t}/zero"
                g.initializer.append(onnx.numpy_helper.from_array(
                    np.zeros((), helper.tensor_dtype_to_np_dtype(m.elem_type)), zero))
        if t in graph_inputs:
            names[t] = f"{t}/masked"
            _rename_inputs(g, t, names[t])
            inserts.setdefault(-1, []).append(_mask_node(t, const.name, names[t], m.elem_type, zero))
        elif t in producer:
            names[t] = t
            node = g.node[producer[t]]
            node.output[list(node.output).index(t)] = f"{t}/premask"
            inserts.setdefault(producer[t], []).append(_mask_node(f"{t}/premask", const.name, t, m.elem_type, zero))
        else:
            raise InvalidRequestError(f"pruning record names {t!r}, which is not a graph input or node output")
    nodes = list(inserts.get(-1, []))
    for i, node in enumerate(g.node):
        nodes.append(node)
        nodes.extend(inserts.get(i, []))
    del g.node[:]
    g.node.extend(nodes)
    return out, names


# Where a quantizing op keeps the zero point of its output 0: ("input", slot) or ("output", index).
_ZERO_POINTS = {("", "QuantizeLinear"): ("input", 2), ("", "QLinearConv"): ("input", 7),
                ("", "QLinearMatMul"): ("input", 7), ("", "DynamicQuantizeLinear"): ("output", 2),
                ("com.microsoft", "QLinearAdd"): ("input", 7), ("com.microsoft", "QGemm"): ("input", 8),
                ("com.microsoft", "QLinearGlobalAveragePool"): ("input", 4)}


def _zero_point(g: onnx.GraphProto, node: onnx.NodeProto, t: str, m: ChannelMask,
                initializers: dict[str, TensorProto]) -> str | None:
    """The tensor a removed element of quantized tensor `t` holds (its zero point: the quantized 0), or None
    when `t` is not a quantized output. A per-channel zero point is reshaped to broadcast along its axis."""
    where = _ZERO_POINTS.get(("" if node.domain == "ai.onnx" else node.domain, node.op_type))
    if where is None or list(node.output).index(t) != 0:
        return None
    kind, k = where
    names = node.input if kind == "input" else node.output
    if len(names) <= k or not names[k]:
        return None
    zp = names[k]
    if zp in initializers and int(np.prod(initializers[zp].dims)) > 1:
        value = onnx.numpy_helper.to_array(initializers[zp])
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1) % m.rank
        shape = [1] * m.rank
        shape[axis] = value.size
        reshaped = f"{t}/zero_point"
        g.initializer.append(onnx.numpy_helper.from_array(value.reshape(shape), reshaped))
        return reshaped
    return zp


def _mask_tensor(name: str, m: ChannelMask, select: bool = False) -> TensorProto:
    shape = [1] * m.rank
    for axis, size in zip(m.axes, m.mask.shape):
        shape[axis] = size
    values = m.mask.transpose(np.argsort(m.axes)).reshape(shape)
    dtype = bool if select else helper.tensor_dtype_to_np_dtype(m.elem_type)
    return onnx.numpy_helper.from_array(values.astype(dtype), name)


def _mask_node(src: str, mask: str, dst: str, elem_type: int, zero: str | None = None) -> onnx.NodeProto:
    """dst = src where the mask keeps, else 0: Where(mask, src, 0) (Mul before opset 9: inf * 0 is nan)."""
    if elem_type == TensorProto.BOOL:
        return helper.make_node("And", [src, mask], [dst], name=f"{dst}/apply_mask")
    if zero is not None:
        return helper.make_node("Where", [mask, src, zero], [dst],
                                name=f"{dst}/apply_mask")
    return helper.make_node("Mul", [src, mask], [dst], name=f"{dst}/apply_mask")


def _rename_inputs(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Point every consumer of `old` (subgraphs included) at `new`."""
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                _rename_inputs(sub, old, new)
