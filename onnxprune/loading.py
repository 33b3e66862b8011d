"""Loading a model file: parse, validate (external references, tensor sizes, onnx.checker), record its origin."""
from __future__ import annotations

import collections
import os
import sys
from dataclasses import dataclass, field
from typing import Union

import numpy as np
import onnx
import onnx.inliner
from google.protobuf.message import DecodeError
from onnx import TensorProto

from . import external_data as ext
from .errors import InvalidModelError, InvalidRequestError
from .validation import check_model_structure
from .wire import initializer_data_types, initializer_raw_spans, without_raw_data

ModelLike = Union[onnx.ModelProto, str, os.PathLike]
Weights = dict[str, np.ndarray]  # initializer name -> its value
LAZY_MIN_BYTES = 64 * 2**10  # raw_data a lazy load leaves in the file's bytes (floating-point tensors only:
_WEIGHT_TYPES = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE}  # integer
# initializers are shapes, axes and indices, which shape inference reads from the model)
_CHECKED: collections.deque = collections.deque(maxlen=8)  # keys of ModelProtos checked already (_check_given)


def load_model(model: ModelLike, *, load_external_data: bool = False) -> onnx.ModelProto:
    """Load and check a model; a ModelProto is returned unchanged (callers never mutate it).

    External data is validated but left on disk unless `load_external_data` (models < 2 GB).
    The loaded model carries its origin (external data folder, files read): see external_data.base_dir.
    """
    return load_with_weights(model, load_external_data=load_external_data)[0]


@dataclass
class FileWeights:
    """The weights of a model as its file holds them, read where they lie in the file's bytes."""

    arrays: Weights = field(default_factory=dict)  # raw initializers of plain element types: read-only views
    path: str | None = None  # the model file
    data: bytes = b""  # its bytes
    lazy: tuple[str, ...] = ()  # initializers loaded as references into the file (load_with_weights(lazy=True))

    def inline(self, model: onnx.ModelProto) -> None:
        """Give every tensor of `model` (changed in place) that refers into the model file its bytes back as
        raw_data: a lazily loaded model is a self-contained ModelProto again."""
        if not self.lazy:
            return
        directory, real = os.path.dirname(self.path), os.path.realpath(self.path)
        for tensor in ext.iter_tensors(model):
            if ext.is_external(tensor) and ext.resolve_location(tensor, directory) == real:
                ref = ext.external_ref(tensor)
                tensor.raw_data = self.data[ref.offset:ref.offset + ext.tensor_nbytes(tensor)]
                del tensor.external_data[:]
                tensor.ClearField("data_location")


def load_with_weights(model: ModelLike, *, load_external_data: bool = False,
                      lazy: bool = False) -> tuple[onnx.ModelProto, FileWeights]:
    """load_model, and the initializers stored in the file as raw bytes, as read-only arrays that are views of the
    file's bytes (FileWeights.arrays, by name; empty for a ModelProto given): reading `raw_data` from the parsed
    model would copy every weight once more. The arrays hold the values as loaded: they are for the caller that
    owns the fresh model.

    lazy: floating-point initializers of LAZY_MIN_BYTES and more are not copied into the model; each becomes an
    external reference to its bytes inside the model file itself (valid ONNX, read where it lies) until
    FileWeights.inline(model) gives it its bytes back. For a caller that replaces most weights anyway (pruning in
    place), this saves parsing them. Such a model must not leave the caller before `inline`.
    """
    if isinstance(model, onnx.ModelProto):
        _check_given(model)
        return (inline_functions(model) if model.functions else model), FileWeights()
    path = os.path.abspath(os.fspath(model))
    data = _read(path)
    spans = _raw_spans(data)
    proto, lazy_names = _parse_lazily(data, path, spans) if lazy and not load_external_data else (None, ())
    if proto is None:
        proto = _parse(data, path)
    directory = os.path.dirname(path)
    check_model_structure(proto, path)
    ext.check_external_data(proto, directory)
    if spans is not None and len(spans) != len(proto.graph.initializer):
        spans = None
    check_tensor_sizes(proto, path, raw_sizes=None if spans is None else [None if s is None else s[1] - s[0]
                                                                         for s in spans])
    weights = FileWeights(_weight_views(data, proto, spans), path, data, lazy_names)
    _check_light(proto, path)
    files = [os.path.realpath(path)]
    files += [ext.resolve_location(t, directory) for t in ext.iter_tensors(proto) if ext.is_external(t)]
    if proto.functions:
        proto = inline_functions(proto)
    if load_external_data:
        _load_external(proto, directory)
    ext.record_origin(proto, directory, list(dict.fromkeys(files)))
    return proto, weights


def _parse_lazily(data: bytes, path: str, spans: list[tuple[int, int] | None] | None
                  ) -> tuple[onnx.ModelProto | None, tuple[str, ...]]:
    """The model parsed without its large raw_data, each such initializer an external reference to its bytes in
    the file; (None, ()) when the file's layout does not allow it (then it is parsed whole)."""
    try:
        types = initializer_data_types(data)
        positions = {k for k, (s, t) in enumerate(zip(spans or [], types))
                     if s is not None and s[1] - s[0] >= LAZY_MIN_BYTES and t in _WEIGHT_TYPES}
        if not positions:
            return None, ()
        proto = _parse(without_raw_data(data, positions), path)
    except (ValueError, IndexError, InvalidModelError):  # parsed whole instead, which reports what is wrong
        return None, ()
    initializers = proto.graph.initializer
    if len(initializers) != len(spans) or any(initializers[k].HasField("raw_data") or initializers[k].external_data
                                             or ext.is_external(initializers[k]) for k in positions):
        return None, ()
    location = os.path.basename(path)
    for k in positions:
        tensor = initializers[k]
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (("location", location), ("offset", str(spans[k][0])),
                           ("length", str(spans[k][1] - spans[k][0]))):
            tensor.external_data.add(key=key, value=value)
    return proto, tuple(initializers[k].name for k in sorted(positions))


def inline_functions(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose model-local functions are inlined (onnx.inliner, function bodies converted to the model's
    opset) and dropped when no node calls them any more, so every node is in the graph where analysis and surgery
    see it; `model` is not changed."""
    try:
        out = onnx.inliner.inline_local_functions(model)
    except Exception as exc:  # the inliner raises C++ errors on malformed functions
        raise InvalidModelError(f"model-local functions cannot be inlined ({exc}); inline or remove them") from exc
    if _called_functions(out):  # left alone by the inliner: a function of another opset than the model's
        try:  # converting its body needs the value types: inferred on a copy
            typed = onnx.shape_inference.infer_shapes(model)
            converted = onnx.inliner.inline_local_functions(typed, convert_version=True)
            onnx.checker.check_model(ext.light_copy(converted, empty=True))  # the converter may reuse names
            out = converted
        except Exception:  # noqa: BLE001  kept as a function: analysis then blocks the nodes calling it
            pass
    called = _called_functions(out)
    kept = [f for f in out.functions if (f.domain, f.name) in called]
    del out.functions[:]
    out.functions.extend(kept)
    return out


def _called_functions(model: onnx.ModelProto) -> set[tuple[str, str]]:
    """(domain, name) of the model-local functions some node (in the graph or a function) calls."""
    local = {(f.domain, f.name) for f in model.functions}
    called = {(n.domain, n.op_type) for n in _all_nodes(model.graph)}
    called |= {(n.domain, n.op_type) for f in model.functions for n in f.node}
    return called & local


def _all_nodes(graph: onnx.GraphProto):
    """Nodes of a graph and of its subgraphs (If / Loop / Scan bodies)."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from _all_nodes(sub)


def as_model(model: ModelLike) -> onnx.ModelProto:
    """A ModelProto as it is (the library's own, made from a checked one), or the model file loaded and checked."""
    return model if isinstance(model, onnx.ModelProto) else load_model(model)


def _check_light(model: onnx.ModelProto, where: str) -> None:
    try:  # heavy tensors are replaced by empty ones: their sizes are checked separately
        onnx.checker.check_model(ext.light_copy(model, empty=True))
    except Exception as exc:  # checker raises ValidationError and assorted C++ errors
        raise InvalidModelError(f"{where}: fails onnx.checker: {exc}") from exc


def _check_given(model: onnx.ModelProto) -> None:
    """The tensor and structure checks a loaded file gets, made for a ModelProto handed over; skipped for one load_model read from a
    file (it carries its origin record) and for the last few checked (remembered by identity and a cheap summary
    of their tensors and nodes: every call of the API loads its argument again)."""
    if ext.source_files(model):
        return
    key = _summary(model)
    if key in _CHECKED:
        return
    where = f"model {model.graph.name!r}" if model.graph.name else "model"
    check_model_structure(model, where)
    directory = ext.base_dir(model)
    if directory is not None:
        ext.check_external_data(model, directory)
    check_tensor_sizes(model, where)  # onnx.checker is left to the caller: models built in memory often lack
    _CHECKED.append(key)                # what it asks of files (output shapes) and run all the same


def _summary(model: onnx.ModelProto) -> tuple:
    """Identity and shape of a model's content, without reading tensor data (a few ms for a ResNet-50)."""
    g = model.graph
    tensors = hash(tuple((t.name, t.data_type, tuple(t.dims), t.data_location, t.HasField("raw_data"),
                          len(t.float_data), len(t.int32_data), len(t.int64_data), len(t.external_data))
                         for t in g.initializer))
    nodes = hash(tuple((n.op_type, n.domain, tuple(n.input), len(n.output), len(n.attribute)) for n in g.node))
    inputs = hash(tuple((v.name, str(v.type)) for v in g.input))
    return id(model), g.name, len(g.output), len(model.functions), tensors, nodes, inputs


def _raw_spans(data: bytes) -> list[tuple[int, int] | None] | None:
    """Where the initializers' raw_data lie in the file's bytes (wire.py), or None when that can't be read."""
    try:
        return initializer_raw_spans(data)
    except (ValueError, IndexError):
        return None


def _weight_views(data: bytes, proto: onnx.ModelProto, spans: list[tuple[int, int] | None] | None) -> Weights:
    """The raw initializers of plain element types as arrays over `data` (sizes checked already)."""
    if spans is None or sys.byteorder != "little":
        return {}
    buffer = memoryview(data)
    weights = {}
    for tensor, span in zip(proto.graph.initializer, spans):
        if span is not None and ext.is_plain_dtype(tensor.data_type):
            dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
            weights[tensor.name] = np.frombuffer(buffer[span[0]:span[1]], dtype=dtype).reshape(tuple(tensor.dims))
    return weights


def _read(path: str) -> bytes:
    """The model file's bytes."""
    if not os.path.exists(path):
        raise InvalidModelError(f"model file not found: {path}")
    if not os.path.isfile(path):
        raise InvalidModelError(f"{path} is not a file")
    if os.path.getsize(path) == 0:
        raise InvalidModelError(f"{path} is empty, not an ONNX model")
    with open(path, "rb") as f:
        return f.read()


def _parse(data: bytes, path: str) -> onnx.ModelProto:
    """The model parsed from (a file's) bytes."""
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise InvalidModelError(f"{path} is not an ONNX model or is truncated (protobuf parse failed: {exc})") from exc
    if not proto.HasField("graph") or not proto.graph.node and not proto.graph.output:
        raise InvalidModelError(f"{path} is not an ONNX model or is truncated: it has no graph")
    if not proto.opset_import or not proto.ir_version:
        raise InvalidModelError(f"{path} is not an ONNX model or is truncated: no opset_import / ir_version")
    return proto


def check_tensor_sizes(model: onnx.ModelProto, path: str, *, raw_sizes: list[int | None] | None = None) -> None:
    """Raw and external tensors hold exactly the bytes their shape and type need.

    raw_sizes: the initializers' raw_data lengths, when known without reading the fields (wire.py); ignored unless
    it has one entry per initializer."""
    if raw_sizes is not None and len(raw_sizes) != len(model.graph.initializer):
        raw_sizes = None
    for k, tensor in enumerate(ext.iter_tensors(model)):  # initializers first
        if tensor.data_type in (TensorProto.STRING, TensorProto.UNDEFINED):
            continue
        if ext.is_external(tensor):
            held = ext.tensor_nbytes(tensor)
        elif tensor.HasField("raw_data"):
            known = raw_sizes[k] if raw_sizes is not None and k < len(raw_sizes) else None
            held = known if known is not None else len(tensor.raw_data)
        else:
            continue
        need = ext.tensor_nbytes(TensorProto(dims=tensor.dims, data_type=tensor.data_type))
        if held != need:
            raise InvalidModelError(f"{path}: tensor {tensor.name!r} holds {held} bytes but its shape "
                                    f"{list(tensor.dims)} needs {need}; the file is corrupt or truncated")


def _load_external(model: onnx.ModelProto, directory: str) -> None:
    total = sum(ext.tensor_nbytes(t) for t in ext.iter_tensors(model) if ext.is_external(t))
    if total + ext.serialized_size(model, include_external=False) > ext.PROTO_LIMIT:
        raise InvalidRequestError("external data over 2 GB cannot be loaded into memory; "
                                  "use load_external_data=False")
    for tensor in ext.iter_tensors(model):
        if ext.is_external(tensor):
            tensor.raw_data = ext.read_bytes(tensor, directory)
            del tensor.external_data[:]
            tensor.data_location = TensorProto.DEFAULT
