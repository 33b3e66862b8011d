"""onnxruntime, driven from one place: sessions, runs, extra outputs, generated inputs, shape observation."""
from __future__ import annotations

import math
import os
import shutil
import tempfile
from collections.abc import Mapping

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from . import external_data as ext
from .errors import InvalidRequestError, UnsupportedError, VerificationError
from .loading import ModelLike, as_model
from .ort_errors import is_onnxruntime_error, translate
from .validation import MAX_SHAPE_ENTRIES, SHAPE_SLOTS

PROVIDERS = ["CPUExecutionProvider"]
INPUT_BUDGET = 2**29  # bytes of generated inputs (make_inputs) at most, counted at 8 bytes an element
VERSION = ort.__version__


def available_providers() -> list[str]:
    """The execution providers this onnxruntime build offers."""
    return ort.get_available_providers()


_INDEX_PASS_THROUGH = {"Cast", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity"}


# --------------------------------------------------------------------------- sessions

class Session:
    """An onnxruntime session whose failures are onnxprune's: `run` raises OnnxRuntimeError naming the node and op
    (see ort_errors), never onnxruntime's own exceptions. Other attributes are the InferenceSession's."""

    def __init__(self, inner: ort.InferenceSession, model: onnx.ModelProto, buffers: list | None = None):
        self.inner = inner
        self.model = model
        self.buffers = buffers or []  # memory-mapped external data, alive as long as the session

    def run(self, output_names, input_feed, run_options=None) -> list:
        try:
            return self.inner.run(output_names, input_feed, run_options)
        except Exception as exc:
            if is_onnxruntime_error(exc):
                raise translate(exc, self.model, "run") from exc
            raise

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


def session(model: ModelLike, options: ort.SessionOptions | None = None, *,
            provider: str = PROVIDERS[0]) -> Session:
    """onnxruntime session (CPU unless `provider` says otherwise); external data is served from memory-mapped
    files. onnxruntime's errors (here and in runs) are raised as OnnxRuntimeError."""
    model = as_model(model)
    options = options or ort.SessionOptions()
    external = [t for t in ext.iter_tensors(model) if ext.is_external(t)]
    directory = ext.base_dir(model)
    if ext.serialized_size(model, include_external=False) > ext.PROTO_LIMIT or (external and directory is None):
        return Session(_session_via_file(model, options, provider), model)
    files: dict[str, str] = {}
    for tensor in external:
        files.setdefault(ext.external_ref(tensor).location, ext.resolve_location(tensor, directory))
    buffers = [np.memmap(path, dtype=np.uint8, mode="r") for path in files.values()]
    if buffers:
        options.add_external_initializers_from_files_in_memory(list(files), buffers, [b.size for b in buffers])
    return Session(_inference_session(ext.serialize(model), options, provider, model), model, buffers)


def _inference_session(source: str | bytes, options: ort.SessionOptions, provider: str,
                       model: onnx.ModelProto) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(source, options, providers=[provider])
    except Exception as exc:
        if is_onnxruntime_error(exc):
            raise translate(exc, model, "load") from exc
        raise


def _session_via_file(model: onnx.ModelProto, options: ort.SessionOptions, provider: str) -> ort.InferenceSession:
    """Session on a temporary copy whose tensors are in a new external data file (models over 2 GB)."""
    tmp = tempfile.mkdtemp(prefix="onnxprune-session-")
    try:
        path = os.path.join(tmp, "model.onnx")
        data_name = "model.onnx.data"
        out = ext.build_output(model, os.path.join(tmp, data_name), data_name, ext.base_dir(model))
        ext.write_proto(out, path)
        del out
        return _inference_session(path, options, provider, model)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def optimized_session(model: ModelLike, threads: int | None = None, *, provider: str = PROVIDERS[0],
                      profile_prefix: str | None = None, spinning: bool = True) -> Session:
    """A session as a user's: all graph optimisations, `threads` intra-op threads (None: onnxruntime's default),
    on `provider` (CPU by default). profile_prefix: record onnxruntime's per-node profile into files starting
    with it (`session.end_profiling()` returns the file). spinning=False: idle intra-op threads sleep instead of
    spinning, for sessions timed interleaved with others (each session has its own thread pool; spinning pools
    take the cores from the session being timed)."""
    model = as_model(model)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    if threads is not None:
        if int(threads) < 1:
            raise InvalidRequestError(f"threads must be >= 1, not {threads}")
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    return session(model, options, provider=provider)


LOAD_CHECK_SKIPS = ["NchwcTransformer"]  # layout rewrites for speed only: they copy every Conv weight


def check_loads(path: str) -> None:
    """VerificationError unless onnxruntime loads the model file with the graph optimisations users run (all
    levels), less what only re-lays weights out for speed and copies every one of them: the NCHWc layout rewrite
    (LOAD_CHECK_SKIPS) and kernel weight prepacking. Those two cost more than writing the model (3x the load time of a
    ResNet-50) and need memory the size of the weights again."""
    options = ort.SessionOptions()
    options.add_session_config_entry("session.disable_prepacking", "1")
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    try:
        ort.InferenceSession(path, options, providers=PROVIDERS, disabled_optimizers=LOAD_CHECK_SKIPS)
    except Exception as exc:
        if not is_onnxruntime_error(exc):
            raise
        raise VerificationError(f"the written model does not load in onnxruntime with its default optimisations, so "
                                f"nothing was written: {translate(exc, None, 'load', 'the result')}") from exc


# --------------------------------------------------------------------------- runs

def run(model: ModelLike, inputs: Mapping[str, np.ndarray],
        outputs: list[str] | None = None) -> dict[str, np.ndarray]:
    """Run the model; `outputs` may name intermediate tensors, graph inputs or initializers."""
    model = as_model(model)
    if outputs is None:
        outputs = [o.name for o in model.graph.output]
    inits = {t.name: t for t in model.graph.initializer}
    fetch = [n for n in dict.fromkeys(outputs) if n not in inputs and n not in inits]
    feeds = {v.name: inputs[v.name] for v in model.graph.input if v.name in inputs}
    result = dict(zip(fetch, session(with_outputs(model, fetch)).run(fetch, feeds))) if fetch else {}
    for name in outputs:
        if name in inputs:
            result[name] = np.asarray(inputs[name])
        elif name in inits and name not in result:
            result[name] = ext.tensor_array(inits[name], ext.base_dir(model))
    return {name: result[name] for name in outputs}


def with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """The model itself, or a copy whose graph also outputs `names` (its origin travels with it)."""
    present = {o.name for o in model.graph.output}
    missing = [n for n in names if n not in present]
    if not missing:
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    out.graph.output.extend(onnx.ValueInfoProto(name=n) for n in missing)
    return out


def observe(model: onnx.ModelProto, names: list[str]) -> dict[str, tuple[tuple, int]]:
    """Shapes and element types of `names` seen in onnxruntime runs on generated inputs ({} if it can't run).

    The smallest inputs that run are used: every symbolic input dim 1, else the sizes make_inputs gives them. The
    model runs twice, the second time with every symbolic input dim one larger: a dim that differs between the
    runs depends on the inputs (batch, sequence) and is given as 'unk__dynamic_<axis>'; a dim equal in both runs
    is an int. Values that are not tensors are left out.
    """
    params = {d.dim_param: dim_size(d, {}) for v in model.graph.input if v.type.HasField("tensor_type")
              for d in v.type.tensor_type.shape.dim if d.HasField("dim_param")}
    first, sizes = None, params
    for sizes in ({p: 1 for p in params}, params) if params else ({},):
        try:
            first = run(model, make_inputs(model, dims=sizes), outputs=names)
            break
        except Exception:  # noqa: BLE001  robust: the caller keeps what it knows when the model can't run
            continue
    if first is None:
        return {}
    second = first
    if params:
        try:
            second = run(model, make_inputs(model, dims={p: n + 1 for p, n in sizes.items()}), outputs=names)
        except Exception:  # some graphs only run at their export sizes: then one run decides
            second = first
    seen = {}
    for name, array in first.items():
        if not isinstance(array, np.ndarray):  # sequence / map / optional values have no tensor shape
            continue
        other = second.get(name)
        other_shape = other.shape if isinstance(other, np.ndarray) and other.ndim == array.ndim else array.shape
        shape = tuple(int(a) if a == b else f"unk__dynamic_{k}"
                      for k, (a, b) in enumerate(zip(array.shape, other_shape)))
        elem = TensorProto.STRING if array.dtype == object else helper.np_dtype_to_tensor_dtype(array.dtype)
        seen[name] = (shape, elem)
    return seen


# --------------------------------------------------------------------------- inputs

def make_inputs(model: ModelLike, *, seed: int = 0, dims: dict[str, int] | None = None) -> dict[str, np.ndarray]:
    """Deterministic random inputs, one per real graph input.

    Dynamic dims: `dims[name]`, else batch-like 2, sequence-like 8, other names 4, unnamed 2.
    Integer inputs used as Gather indices into a constant get ids in range; other ints in [0, 4).
    """
    model = as_model(model)
    rng = np.random.default_rng(seed)
    inits = {t.name for t in model.graph.initializer}
    bounds = _index_bounds(model)
    specs = {}
    for value in model.graph.input:
        if value.name in inits:
            continue
        if not value.type.HasField("tensor_type"):
            raise UnsupportedError(f"graph input {value.name!r} is not a tensor; pass inputs explicitly")
        tt = value.type.tensor_type
        if not tt.HasField("shape"):
            raise InvalidRequestError(f"graph input {value.name!r} has unknown rank; pass inputs explicitly")
        shape = tuple(dim_size(d, dims or {}) for d in tt.shape.dim)
        if any(n < 0 for n in shape):
            raise InvalidRequestError(f"graph input {value.name!r} has a negative dim {list(shape)}; fix the model's "
                                      "input shape or pass inputs explicitly")
        specs[value.name] = (tt.elem_type, shape)
    _check_shape_operands(model, specs)
    _check_input_budget(specs)
    return {name: np.asarray(_random_array(rng, elem, shape, bounds.get(name, 4)))
            for name, (elem, shape) in specs.items()}


def _check_input_budget(specs: dict[str, tuple[int, tuple[int, ...]]]) -> None:
    """InvalidRequestError, before anything is allocated, when generated inputs would take over INPUT_BUDGET bytes
    (counted at 8 bytes an element at least: random values are drawn in float64)."""
    sizes = {name: math.prod(shape) * max(_itemsize(elem), 8) for name, (elem, shape) in specs.items()}
    if sum(sizes.values()) > INPUT_BUDGET:
        big = ", ".join(f"{name!r} {list(specs[name][1])}" for name in sorted(sizes, key=sizes.get, reverse=True)[:5])
        raise InvalidRequestError(f"generated inputs would need {sum(sizes.values()) / 2**30:.3g} GiB (more than "
                                  f"{INPUT_BUDGET / 2**30:g} GiB): {big}; pass inputs= with data of the sizes you run "
                                  "(Python API), or give these inputs smaller or symbolic dims")


def _check_shape_operands(model: onnx.ModelProto, specs: dict[str, tuple[int, tuple[int, ...]]]) -> None:
    """InvalidRequestError for a generated input read as a shape (Reshape, Expand, ConstantOfShape, Tile, ...)
    with more entries than a tensor has dims: onnxruntime would build a tensor of that rank."""
    for node in model.graph.node:
        for slot in SHAPE_SLOTS.get(node.op_type, ()):
            name = node.input[slot] if slot < len(node.input) else ""
            if name in specs and math.prod(specs[name][1]) > MAX_SHAPE_ENTRIES:
                raise InvalidRequestError(f"graph input {name!r} (shape {list(specs[name][1])}) is the shape "
                                          f"operand of node '{node.name}' ({node.op_type}): random values of that "
                                          f"size make no shape; pass inputs= with a real one")


def _itemsize(elem_type: int) -> int:
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)).itemsize
    except (KeyError, TypeError, ValueError):
        raise UnsupportedError(f"graph input element type {elem_type} is not one onnxprune can generate data for; "
                               "pass inputs explicitly") from None


def dim_size(dim: onnx.TensorShapeProto.Dimension, dims: dict[str, int]) -> int:
    """Size given to an input dim: its value, `dims[name]`, or a default by name (batch 2, sequence 8, else 4)."""
    if dim.HasField("dim_value"):
        return dim.dim_value
    if not dim.HasField("dim_param"):
        return 2
    name = dim.dim_param
    if name in dims:
        return int(dims[name])
    low = name.lower()
    if "batch" in low or low in ("n", "b", "bs"):
        return 2
    if any(k in low for k in ("seq", "len", "token", "time")):
        return 8
    return 4


def _random_array(rng: np.random.Generator, elem_type: int, shape: tuple, high: int) -> np.ndarray:
    if elem_type == TensorProto.STRING:
        letters = np.array(list("abcdefghijklmnopqrstuvwxyz"), dtype=object)
        return letters[rng.integers(0, len(letters), shape)]
    dtype = helper.tensor_dtype_to_np_dtype(elem_type)
    if elem_type == TensorProto.BOOL:
        return rng.random(shape) < 0.5
    if np.issubdtype(dtype, np.integer):
        return rng.integers(0, max(high, 1), shape).astype(dtype)
    if np.issubdtype(dtype, np.complexfloating):
        return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dtype)
    return rng.standard_normal(shape).astype(np.float32).astype(dtype)


def _index_bounds(model: onnx.ModelProto) -> dict[str, int]:
    """Graph inputs that reach Gather indices (through casts/reshapes) -> size of the constant data axis."""
    g = model.graph
    const_dims = {t.name: tuple(t.dims) for t in g.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in g.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            const_dims[node.output[0]] = tuple(node.attribute[0].t.dims)
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    bounds = {}
    for value in g.input:
        bound = _gather_bound(value.name, consumers, const_dims, set())
        if bound is not None:
            bounds[value.name] = bound
    return bounds


def _gather_bound(name: str, consumers: dict, const_dims: dict, seen: set) -> int | None:
    bound = None
    for node in consumers.get(name, []):
        if id(node) in seen:
            continue
        seen.add(id(node))
        found = None
        if node.op_type == "Gather" and len(node.input) > 1 and node.input[1] == name \
                and node.input[0] in const_dims:
            axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
            data = const_dims[node.input[0]]
            found = data[axis] if -len(data) <= axis < len(data) else None
        elif node.op_type in _INDEX_PASS_THROUGH and node.input[0] == name:
            found = _gather_bound(node.output[0], consumers, const_dims, seen)
        if found is not None:
            bound = found if bound is None else min(bound, found)
    return bound
