"""Storage of sparsified weights: dense (zeros in place), sparse (ONNX sparse tensors) or bitmask.

Sparse form: each weight becomes a `Constant` node whose `sparse_value` attribute is a SparseTensorProto
(values + int64 linear indices, ONNX opset >= 11), writing the initializer's tensor name, so every consumer is
unchanged. onnxruntime expands it to a dense tensor when the session is created; outputs are bit-identical.

Why not `graph.sparse_initializer`: onnxruntime 1.31 loads it, but ONNX type inference gives such values the
type sparse_tensor(float), which Conv / Gemm / MatMul reject, so the model fails
`onnx.checker.check_model(full_check=True)`, which every model onnxprune writes must pass.

Cost: a nonzero takes its value plus an 8-byte int64 index (ONNX requires int64 indices), so the sparse form is
smaller only above a break-even sparsity (2/3 for float32, 4/5 for float16). A weight below it stays dense and
the report says so: at 50% (and 2:4) sparsity, the sparse form would make the file larger.

Bitmask form (for any sparsity): the weight is stored as a packed bit mask (uint8, 1 bit per element, LSB first)
and its nonzero values (after a leading 0), both initializers, and rebuilt by standard ONNX ops (opset >= 11):
    bits -> Cast(int64) -> Reshape [B, 1] -> Div [1, 2, ..., 128] -> Mod 2 -> Reshape [-1] (-> Slice) = mask
    index = CumSum(mask) * mask;  weight = Reshape(Gather(values, index), shape)
Every input is a constant, so onnxruntime folds the chain into the dense weight when the session is created
(bit-identical values: Gather copies them). Data: size / 8 bytes + (nonzero + 1) values, e.g. 53% of the dense
float32 bytes at 50% sparsity, 15% at 90%. The weight is then a node output, not an initializer: tools that
look for weights in initializers (onnxprune's own analysis included) see no weight there; keep the dense model
for further pruning or fine-tuning.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxprune import ir
from onnxprune.graph import NameSource
from onnxprune.rebuild import rebuild

INDEX_BYTES = 8
MIN_OPSET = 11


def sparse_bytes(nonzero: int, itemsize: int) -> int:
    """Bytes of the sparse form's data: values plus int64 indices."""
    return nonzero * (itemsize + INDEX_BYTES)


def break_even(itemsize: int) -> float:
    """Sparsity above which the sparse form is smaller than the dense one."""
    return INDEX_BYTES / (itemsize + INDEX_BYTES)


def sparse_tensor(name: str, value: np.ndarray) -> onnx.SparseTensorProto:
    """SparseTensorProto of `value`: nonzero values and their linear (C order) indices, ascending."""
    flat = np.ascontiguousarray(value).reshape(-1)
    indices = np.flatnonzero(flat).astype(np.int64)
    return helper.make_sparse_tensor(numpy_helper.from_array(flat[indices], name),
                                     numpy_helper.from_array(indices, name + "__indices"), list(value.shape))


def to_sparse(model: onnx.ModelProto, values: dict[str, np.ndarray]) -> dict[str, str]:
    """Rewrite in place the initializers named in `values` (their new dense arrays) as sparse Constants.

    Only where that is smaller than the dense bytes. Returns {name: "sparse" or "dense: why"}.
    """
    if ir.opset_version(model, default=0) < MIN_OPSET:
        return {name: f"dense: opset < {MIN_OPSET} has no sparse Constant" for name in values}

    def why_not(value: np.ndarray, nonzero: int) -> str | None:
        if sparse_bytes(nonzero, value.dtype.itemsize) < value.size * value.dtype.itemsize:
            return None
        return (f"dense: sparse form is not smaller at {1 - nonzero / max(value.size, 1):.0%} sparsity "
                f"(break-even {break_even(value.dtype.itemsize):.0%} with int64 indices)")

    decisions, chosen = _choose(model, values, "sparse", why_not)
    if not chosen:
        return decisions
    names = NameSource(model.graph)
    constants = [helper.make_node("Constant", [], [name], name=names.fresh(f"{name}__sparse"),
                                  sparse_value=sparse_tensor(name, values[name])) for name in chosen]
    rebuild(model, constants + list(model.graph.node), own=True, keep_value_info=True)  # the Constants replace them
    return decisions


def bitmask_bytes(size: int, nonzero: int, itemsize: int) -> int:
    return (size + 7) // 8 + (nonzero + 1) * itemsize


def to_bitmask(model: onnx.ModelProto, values: dict[str, np.ndarray]) -> dict[str, str]:
    """Rewrite in place the initializers named in `values` as bitmask + values, decoded by standard ops."""
    if ir.opset_version(model, default=0) < MIN_OPSET:
        return {name: f"dense: opset < {MIN_OPSET} lacks CumSum" for name in values}

    def why_not(value: np.ndarray, nonzero: int) -> str | None:
        smaller = bitmask_bytes(value.size, nonzero, value.dtype.itemsize) + 64 < value.size * value.dtype.itemsize
        return None if smaller else "dense: bitmask form is not smaller"

    decisions, chosen = _choose(model, values, "bitmask", why_not)
    if not chosen:
        return decisions
    names = NameSource(model.graph)
    shared = {key: names.fresh(f"sparsity__{key}") for key in ("powers", "two", "axis0", "flat")}
    new_inits = [numpy_helper.from_array(np.array([1 << j for j in range(8)], np.int64), shared["powers"]),
                 numpy_helper.from_array(np.array(2, np.int64), shared["two"]),
                 numpy_helper.from_array(np.array(0, np.int64), shared["axis0"]),
                 numpy_helper.from_array(np.array([-1], np.int64), shared["flat"])]
    nodes = []
    for name in chosen:
        value = np.ascontiguousarray(values[name])
        flat = value.reshape(-1)
        mask = flat != 0
        t = {key: names.fresh(f"{name}__{key}") for key in
             ("bits", "values", "shape", "rows", "ends", "starts", "i64", "col", "div", "mod", "mask", "cut",
              "cum", "index", "dense")}
        new_inits += [numpy_helper.from_array(np.packbits(mask, bitorder="little"), t["bits"]),
                      numpy_helper.from_array(np.concatenate([np.zeros(1, value.dtype), flat[mask]]), t["values"]),
                      numpy_helper.from_array(np.array(value.shape, np.int64), t["shape"]),
                      numpy_helper.from_array(np.array([-1, 1], np.int64), t["rows"])]
        padded = (value.size + 7) // 8 * 8 != value.size

        def node(op_type: str, inputs: list[str], output: str, **attrs) -> onnx.NodeProto:
            return helper.make_node(op_type, inputs, [output], name=names.fresh(f"{output}_{op_type}"), **attrs)

        nodes += [node("Cast", [t["bits"]], t["i64"], to=onnx.TensorProto.INT64),
                  node("Reshape", [t["i64"], t["rows"]], t["col"]),
                  node("Div", [t["col"], shared["powers"]], t["div"]),
                  node("Mod", [t["div"], shared["two"]], t["mod"]),
                  node("Reshape", [t["mod"], shared["flat"]], t["mask"] if not padded else t["cut"])]
        if padded:
            new_inits += [numpy_helper.from_array(np.array([value.size], np.int64), t["ends"]),
                          numpy_helper.from_array(np.array([0], np.int64), t["starts"])]
            nodes.append(node("Slice", [t["cut"], t["starts"], t["ends"]], t["mask"]))
        nodes += [node("CumSum", [t["mask"], shared["axis0"]], t["cum"]),
                  node("Mul", [t["cum"], t["mask"]], t["index"]),
                  node("Gather", [t["values"], t["index"]], t["dense"]),
                  node("Reshape", [t["dense"], t["shape"]], name)]
    rebuild(model, nodes + list(model.graph.node), added={t.name: t for t in new_inits}, own=True,
            keep_value_info=True)  # each decoding chain's last node replaces its weight
    return decisions


def _choose(model: onnx.ModelProto, values: dict[str, np.ndarray], form: str,
            why_not) -> tuple[dict[str, str], list[str]]:
    """Which weights take the compact `form`: not graph inputs, and only where `why_not` finds it smaller."""
    graph_inputs = {v.name for v in model.graph.input}
    decisions: dict[str, str] = {}
    chosen = []
    for name, value in values.items():
        reason = ("dense: the initializer is also a graph input (overridable)" if name in graph_inputs
                  else why_not(value, int(np.count_nonzero(value))))
        decisions[name] = reason or form
        if reason is None:
            chosen.append(name)
    return decisions, chosen
