"""Model I/O (incl. lazy external data), tensor access and shape inference.

Models returned by :func:`load_model` are treated as read-only by every caller.
External data is kept on disk: tensors stay external references and the folder they
are relative to is remembered in a side registry (:func:`base_dir`), never in the proto.
"""
from __future__ import annotations

import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Union

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto, helper, numpy_helper

from .errors import ExternalDataError, InvalidModelError, InvalidRequestError, VerificationError

ModelLike = Union[onnx.ModelProto, str, os.PathLike]
Shape = tuple  # entries: int (static), str (symbolic), None (unknown)

PROTO_LIMIT = 2**31 - 2**26  # serialized size above which external data is required (2 GB minus margin)
EXTERNAL_MIN_BYTES = 1024  # only tensors at least this large go to the external data file
_ALIGN = 64
_CHUNK = 64 * 2**20
_PACKED = {getattr(TensorProto, n) for n in
           ("UINT4", "INT4", "FLOAT4E2M1", "UINT2", "INT2", "FLOAT6E2M3", "FLOAT6E3M2") if hasattr(TensorProto, n)}

# Side registry: id(model) -> (fingerprint, base_dir). ModelProto can't be weak-referenced, so a
# fingerprint that surgery doesn't change (graph name, producer, IR version) guards against a recycled id.
_BASE_DIRS: dict[int, tuple[tuple, str]] = {}
_INPUT_FILES: set[str] = set()  # realpaths of every model / data file loaded; never overwritten


# --------------------------------------------------------------------------- registry

def _fingerprint(model: onnx.ModelProto) -> tuple:
    return (model.graph.name, model.producer_name, model.ir_version)


def set_base_dir(model: onnx.ModelProto, directory: str | os.PathLike | None) -> None:
    """Remember the folder the model's external data locations are relative to."""
    if directory is None:
        _BASE_DIRS.pop(id(model), None)
    else:
        _BASE_DIRS[id(model)] = (_fingerprint(model), os.path.abspath(os.fspath(directory)))


def base_dir(model: onnx.ModelProto) -> str | None:
    """Folder of the model's external data, if it was loaded from a file (or set)."""
    entry = _BASE_DIRS.get(id(model))
    if entry is None or entry[0] != _fingerprint(model):
        return None
    return entry[1]


def is_input_file(path: str | os.PathLike) -> bool:
    """True when `path` is a model or external data file loaded in this process."""
    return os.path.realpath(os.fspath(path)) in _INPUT_FILES


# --------------------------------------------------------------------------- tensors

def iter_tensors(model: onnx.ModelProto) -> Iterator[TensorProto]:
    """Every TensorProto in the model: initializers, attribute tensors, subgraphs."""
    yield from _graph_tensors(model.graph)


def _graph_tensors(graph: onnx.GraphProto) -> Iterator[TensorProto]:
    yield from graph.initializer
    yield from _non_initializer_tensors(graph)


def _non_initializer_tensors(graph: onnx.GraphProto) -> Iterator[TensorProto]:
    """Sparse initializers, attribute tensors and everything inside subgraphs."""
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _graph_tensors(attr.g)
            for sub in attr.graphs:
                yield from _graph_tensors(sub)


def is_external(tensor: TensorProto) -> bool:
    """True when the tensor's data lives in an external file."""
    return tensor.data_location == TensorProto.EXTERNAL


@dataclass(frozen=True)
class ExternalRef:
    """Where an external tensor's bytes are: file (relative), offset, length (None = to EOF)."""

    location: str
    offset: int
    length: int | None


def external_ref(tensor: TensorProto) -> ExternalRef:
    """Parse a tensor's external_data entries."""
    info = {e.key: e.value for e in tensor.external_data}
    length = info.get("length")
    return ExternalRef(info.get("location", ""), int(info.get("offset", 0) or 0),
                       int(length) if length else None)


def is_plain_dtype(data_type: int) -> bool:
    """True for element types stored one numpy item per element (not packed, not string)."""
    return data_type not in _PACKED and data_type not in (TensorProto.STRING, TensorProto.UNDEFINED)


def tensor_nbytes(tensor: TensorProto) -> int:
    """Size in bytes of the tensor's data, from its external length or shape (never reads the data)."""
    if is_external(tensor):
        ref = external_ref(tensor)
        if ref.length is not None:
            return ref.length
    if tensor.data_type == TensorProto.STRING:
        return sum(len(s) for s in tensor.string_data)
    numel = math.prod(tensor.dims)
    if not is_plain_dtype(tensor.data_type):
        return (numel * _packed_bits(tensor.data_type) + 7) // 8
    return numel * helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize


def _packed_bits(data_type: int) -> int:
    name = TensorProto.DataType.Name(data_type)
    return 2 if name.endswith("2") and "FLOAT" not in name else 6 if name.startswith("FLOAT6") else 4


def resolve_location(tensor: TensorProto, directory: str) -> str:
    """Checked absolute path of an external tensor's data file inside `directory`."""
    loc = external_ref(tensor).location
    root = os.path.realpath(directory)
    target = os.path.realpath(os.path.join(root, loc)) if loc else root
    if not loc or os.path.isabs(loc) or os.path.commonpath([root, target]) != root or target == root:
        raise ExternalDataError(
            f"tensor {tensor.name!r}: external data location {loc!r} points outside the model folder "
            f"{root}; refusing to read it")
    return target


def check_external_data(model: onnx.ModelProto, directory: str) -> None:
    """Validate every external reference (inside the folder, file present, long enough) without reading data."""
    for tensor in iter_tensors(model):
        if not is_external(tensor):
            continue
        path = resolve_location(tensor, directory)
        if not os.path.isfile(path):
            raise ExternalDataError(f"tensor {tensor.name!r}: external data file {path} is missing")
        ref = external_ref(tensor)
        if ref.offset + tensor_nbytes(tensor) > os.path.getsize(path):
            raise ExternalDataError(
                f"tensor {tensor.name!r}: external data file {path} is too short "
                f"(needs {ref.offset + tensor_nbytes(tensor)} bytes)")


def tensor_array(tensor: TensorProto, base_dir: str | None) -> np.ndarray:
    """The tensor as a numpy array, zero-copy where possible (read-only)."""
    dims = tuple(tensor.dims)
    if is_external(tensor):
        if base_dir is None:
            raise ExternalDataError(
                f"tensor {tensor.name!r} is stored externally but the model's folder is unknown; "
                "load the model from its file or call ir.set_base_dir")
        path = resolve_location(tensor, base_dir)
        ref = external_ref(tensor)
        if is_plain_dtype(tensor.data_type):
            dtype = helper.tensor_dtype_to_np_dtype(tensor.data_type)
            if math.prod(dims) == 0:
                return np.zeros(dims, dtype)
            return np.memmap(path, dtype=dtype, mode="r", offset=ref.offset, shape=dims)
        with open(path, "rb") as f:
            f.seek(ref.offset)
            raw = f.read(tensor_nbytes(tensor))
        return numpy_helper.to_array(TensorProto(name=tensor.name, dims=dims,
                                                 data_type=tensor.data_type, raw_data=raw))
    if tensor.HasField("raw_data") and is_plain_dtype(tensor.data_type):
        dtype = helper.tensor_dtype_to_np_dtype(tensor.data_type)
        return np.frombuffer(tensor.raw_data, dtype=dtype).reshape(dims)
    return numpy_helper.to_array(tensor)


def opset_version(model: onnx.ModelProto, domain: str = "", *, default: int | None = None) -> int:
    """Opset version imported for `domain` ("" and "ai.onnx" are the same domain).

    A model that imports no such opset gets `default`, or InvalidModelError when no default is given.
    """
    wanted = "" if domain == "ai.onnx" else domain
    for opset in model.opset_import:
        if (opset.domain if opset.domain != "ai.onnx" else "") == wanted:
            return opset.version
    if default is not None:
        return default
    raise InvalidModelError(f"model imports no opset for domain {domain!r}")


# --------------------------------------------------------------------------- load

def load_model(model: ModelLike, *, load_external_data: bool = False) -> onnx.ModelProto:
    """Load and check a model; a ModelProto is returned unchanged (callers never mutate it).

    External data is validated but left on disk unless `load_external_data` (models < 2 GB).
    """
    if isinstance(model, onnx.ModelProto):
        return model
    path = os.path.abspath(os.fspath(model))
    proto = _parse(path)
    directory = os.path.dirname(path)
    check_external_data(proto, directory)
    _check_tensor_sizes(proto, path)
    try:  # heavy tensors are replaced by empty ones: their sizes were checked above
        onnx.checker.check_model(_light_copy(proto, empty=True))
    except Exception as exc:  # checker raises ValidationError and assorted C++ errors
        raise InvalidModelError(f"{path}: fails onnx.checker: {exc}") from exc
    _INPUT_FILES.add(os.path.realpath(path))
    _INPUT_FILES.update(resolve_location(t, directory) for t in iter_tensors(proto) if is_external(t))
    if load_external_data:
        _load_external(proto, directory)
    set_base_dir(proto, directory)
    return proto


def _parse(path: str) -> onnx.ModelProto:
    if not os.path.exists(path):
        raise InvalidModelError(f"model file not found: {path}")
    if not os.path.isfile(path):
        raise InvalidModelError(f"{path} is not a file")
    if os.path.getsize(path) == 0:
        raise InvalidModelError(f"{path} is empty, not an ONNX model")
    proto = onnx.ModelProto()
    try:
        with open(path, "rb") as f:
            proto.ParseFromString(f.read())
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise InvalidModelError(f"{path} is not an ONNX model or is truncated (protobuf parse failed: {exc})") from exc
    if not proto.HasField("graph") or not proto.graph.node and not proto.graph.output:
        raise InvalidModelError(f"{path} is not an ONNX model or is truncated: it has no graph")
    if not proto.opset_import or not proto.ir_version:
        raise InvalidModelError(f"{path} is not an ONNX model or is truncated: no opset_import / ir_version")
    return proto


def _check_tensor_sizes(model: onnx.ModelProto, path: str) -> None:
    """Raw and external tensors hold exactly the bytes their shape and type need."""
    for tensor in iter_tensors(model):
        if not is_plain_dtype(tensor.data_type):
            continue
        if is_external(tensor):
            held = tensor_nbytes(tensor)
        elif tensor.HasField("raw_data"):
            held = len(tensor.raw_data)
        else:
            continue
        need = math.prod(tensor.dims) * helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
        if held != need:
            raise InvalidModelError(f"{path}: tensor {tensor.name!r} holds {held} bytes but its shape "
                                    f"{list(tensor.dims)} needs {need}; the file is corrupt or truncated")


def _load_external(model: onnx.ModelProto, directory: str) -> None:
    total = sum(tensor_nbytes(t) for t in iter_tensors(model) if is_external(t))
    if total + serialized_size(model, include_external=False) > PROTO_LIMIT:
        raise InvalidRequestError("external data over 2 GB cannot be loaded into memory; "
                                  "use load_external_data=False")
    for tensor in iter_tensors(model):
        if is_external(tensor):
            tensor.raw_data = _read_bytes(tensor, directory)
            del tensor.external_data[:]
            tensor.data_location = TensorProto.DEFAULT


def _read_bytes(tensor: TensorProto, directory: str) -> bytes:
    ref = external_ref(tensor)
    with open(resolve_location(tensor, directory), "rb") as f:
        f.seek(ref.offset)
        return f.read(tensor_nbytes(tensor))


# --------------------------------------------------------------------------- save

def save_model(model: onnx.ModelProto, path: str | os.PathLike, *, reference: onnx.ModelProto | None = None,
               external_data: bool | None = None, source_base_dir: str | None = None,
               check: bool = True) -> None:
    """Write `model` atomically to `path`, validated (checker full, onnxruntime load, I/O vs `reference`).

    External data (`<basename>.data`, tensors >= 1 KiB) is used when asked or when the model
    would exceed 2 GB. Tensors still referencing the input's external data are streamed.
    On any failure nothing is written at `path`.
    """
    path = os.path.abspath(os.fspath(path))
    data_name = os.path.basename(path) + ".data"
    source = source_base_dir or base_dir(model)
    _refuse_overwrite(path, os.path.join(os.path.dirname(path), data_name))
    if not os.path.isdir(os.path.dirname(path)):
        raise InvalidRequestError(f"output folder {os.path.dirname(path)} does not exist")
    size = serialized_size(model)
    if external_data is None:
        external_data = size > PROTO_LIMIT
    elif not external_data and size > PROTO_LIMIT:
        raise InvalidRequestError("model exceeds 2 GB: it can only be saved with external_data=True")
    tmp = tempfile.mkdtemp(prefix=".onnxprune-", dir=os.path.dirname(path))
    try:
        tmp_model = os.path.join(tmp, os.path.basename(path))
        tmp_data = os.path.join(tmp, data_name)
        out = _build_output(model, tmp_data if external_data else None, data_name, source)
        if check and reference is not None:
            check_io(reference, out)
        if check:
            _check_tensor_sizes(out, path)
            structure = _structure_copy(out, os.path.join(tmp, "structure"))
        _write_proto(out, tmp_model)
        del out
        if check:
            validate_file(tmp_model, structure=structure)
        if os.path.exists(tmp_data) and os.path.getsize(tmp_data):
            os.replace(tmp_data, os.path.join(os.path.dirname(path), data_name))
        os.replace(tmp_model, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _refuse_overwrite(path: str, data_path: str) -> None:
    for target in (path, data_path):
        if is_input_file(target):
            raise InvalidRequestError(f"refusing to overwrite input file {target}; choose another output path")


def serialized_size(model: onnx.ModelProto, *, include_external: bool = True) -> int:
    """Serialized size in bytes, computed without serializing tensor data (external bytes if asked)."""
    heavy = [t for t in iter_tensors(model) if _is_heavy(t) and (include_external or not is_external(t))]
    return _light_copy(model).ByteSize() + sum(tensor_nbytes(t) for t in heavy)


def _write_proto(model: onnx.ModelProto, path: str) -> None:
    try:
        data = model.SerializeToString()
    except ValueError as exc:
        raise VerificationError(f"cannot serialize the model ({exc}); save it with external_data=True") from exc
    with open(path, "wb") as f:
        f.write(data)


def _build_output(model: onnx.ModelProto, data_path: str | None, data_name: str,
                  source: str | None) -> onnx.ModelProto:
    """Copy of `model` whose tensors are inline or in the new data file (never the source's).

    A model with every tensor inline, saved inline, is written as it is (no copy).
    """
    if data_path is None and not any(is_external(t) for t in iter_tensors(model)):
        return model
    out = onnx.ModelProto()
    _copy_fields(model, out, skip="graph")
    _copy_fields(model.graph, out.graph, skip="initializer")
    with _DataWriter(data_path, data_name) as writer:
        for tensor in model.graph.initializer:
            out.graph.initializer.append(_emit_tensor(tensor, writer, source))
        for tensor in list(_non_initializer_tensors(out.graph)):
            emitted = _emit_tensor(tensor, writer, source)
            if emitted is not tensor:
                tensor.CopyFrom(emitted)
    return out


def _copy_fields(src, dst, skip: str) -> None:
    for field, value in src.ListFields():
        if field.name == skip:
            continue
        target = getattr(dst, field.name)
        if field.is_repeated:
            target.extend(value)
        elif field.message_type is not None:
            target.CopyFrom(value)
        else:
            setattr(dst, field.name, value)


def _emit_tensor(tensor: TensorProto, writer: "_DataWriter", source: str | None) -> TensorProto:
    """A tensor for the output: external in the new file when large enough, else inline."""
    size = tensor_nbytes(tensor)
    externalize = writer.active and size >= EXTERNAL_MIN_BYTES and is_plain_dtype(tensor.data_type)
    if not externalize and not is_external(tensor):
        return tensor
    out = TensorProto(name=tensor.name, dims=tensor.dims, data_type=tensor.data_type,
                      doc_string=tensor.doc_string, metadata_props=tensor.metadata_props)
    if not externalize:
        out.raw_data = _read_bytes(tensor, _need_source(tensor, source))
        return out
    if is_external(tensor):
        offset = writer.copy_from(resolve_location(tensor, _need_source(tensor, source)),
                                  external_ref(tensor).offset, size)
    else:
        offset = writer.write(_raw_bytes(tensor))
    out.data_location = TensorProto.EXTERNAL
    for key, value in (("location", writer.name), ("offset", str(offset)), ("length", str(size))):
        entry = out.external_data.add()
        entry.key, entry.value = key, value
    return out


def _need_source(tensor: TensorProto, source: str | None) -> str:
    if source is None:
        raise ExternalDataError(f"tensor {tensor.name!r} references external data but the source folder is "
                                "unknown; pass source_base_dir or load the model from its file")
    return source


def _raw_bytes(tensor: TensorProto) -> bytes | memoryview:
    if tensor.HasField("raw_data"):
        return tensor.raw_data
    return np.ascontiguousarray(numpy_helper.to_array(tensor)).tobytes()


class _DataWriter:
    """Appends tensor bytes to one external data file (64-byte aligned)."""

    def __init__(self, path: str | None, name: str) -> None:
        self.name = name
        self.active = path is not None
        self._file = open(path, "wb") if path else None
        self._pos = 0

    def __enter__(self) -> "_DataWriter":
        return self

    def __exit__(self, *exc) -> None:
        if self._file:
            self._file.close()

    def _align(self) -> int:
        pad = -self._pos % _ALIGN
        self._file.write(b"\0" * pad)
        self._pos += pad
        return self._pos

    def write(self, data: bytes | memoryview) -> int:
        offset = self._align()
        self._file.write(data)
        self._pos += len(data)
        return offset

    def copy_from(self, path: str, offset: int, length: int) -> int:
        """Stream `length` bytes at `offset` of `path` into the file, chunk by chunk."""
        start = self._align()
        with open(path, "rb") as src:
            src.seek(offset)
            remaining = length
            while remaining:
                chunk = src.read(min(_CHUNK, remaining))
                if not chunk:
                    raise ExternalDataError(f"external data file {path} is shorter than expected")
                self._file.write(chunk)
                remaining -= len(chunk)
        self._pos += length
        return start


def _structure_copy(model: onnx.ModelProto, folder: str) -> str:
    """Write `model` with every heavy tensor as an external reference to an empty stub file.

    onnx.checker (full_check: graph, types, shape inference) then runs without reading or parsing
    the weights a second time; their byte sizes are checked by _check_tensor_sizes.
    """
    os.makedirs(folder, exist_ok=True)
    open(os.path.join(folder, "stub.bin"), "wb").close()
    light = onnx.ModelProto()
    _copy_fields(model, light, skip="graph")
    _copy_fields(model.graph, light.graph, skip="initializer")
    for tensor in model.graph.initializer:
        if _is_heavy(tensor):
            stub = light.graph.initializer.add(name=tensor.name, dims=tensor.dims, data_type=tensor.data_type,
                                               data_location=TensorProto.EXTERNAL)
            stub.external_data.add(key="location", value="stub.bin")
        else:
            light.graph.initializer.append(tensor)
    path = os.path.join(folder, "structure.onnx")
    _write_proto(light, path)
    return path


def validate_file(path: str, *, structure: str | None = None) -> None:
    """Oracle 3 on a written file: onnx.checker with full_check, and onnxruntime loads it.

    `structure`: the same model with weights stubbed (see _structure_copy) for the checker.
    """
    import onnxruntime as ort

    try:
        onnx.checker.check_model(structure or path, full_check=True)
    except Exception as exc:
        raise VerificationError(f"written model fails onnx.checker (full_check): {exc}") from exc
    try:
        options = ort.SessionOptions()  # loading is what is checked: skip graph optimizations
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise VerificationError(f"written model does not load in onnxruntime: {exc}") from exc


def check_io(reference: onnx.ModelProto, model: onnx.ModelProto) -> None:
    """Graph inputs and outputs have the reference's names, element types and ranks."""
    _compare_io("input", _real_inputs(reference), _real_inputs(model))
    _compare_io("output", list(reference.graph.output), list(model.graph.output))


def _real_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    inits = {t.name for t in model.graph.initializer}
    return [v for v in model.graph.input if v.name not in inits]


def _io_signature(value: onnx.ValueInfoProto) -> tuple:
    tt = value.type.tensor_type
    rank = len(tt.shape.dim) if tt.HasField("shape") else None
    return value.name, tt.elem_type, rank


def _compare_io(kind: str, ref: list[onnx.ValueInfoProto], new: list[onnx.ValueInfoProto]) -> None:
    want, got = [_io_signature(v) for v in ref], [_io_signature(v) for v in new]
    if want != got:
        raise VerificationError(f"graph {kind}s differ from the original (name, elem type, rank): "
                                f"expected {want}, got {got}")


# --------------------------------------------------------------------------- shapes

def infer_shapes(model: onnx.ModelProto) -> dict[str, Shape]:
    """Shape of every value of the main graph (inputs, initializers, node outputs)."""
    return infer_shapes_and_types(model)[0]


def infer_shapes_and_types(model: onnx.ModelProto) -> tuple[dict[str, Shape], dict[str, int]]:
    """Shapes (entries int / symbolic str / None) and element types of every main-graph value.

    ONNX shape inference (with data propagation) first; values it leaves unknown are
    observed by running onnxruntime once on generated inputs (skipped if ORT can't run).
    """
    light = _light_copy(model)
    try:  # strict, as onnx.checker's full_check: a model that fails it can't give a valid pruned model
        inferred = onnx.shape_inference.infer_shapes(light, check_type=True, strict_mode=True, data_prop=True)
    except onnx.shape_inference.InferenceError:
        _check_full(light)  # data propagation may fail where the checker passes: keep the declared shapes
        inferred = light
    shapes, types = _collect(inferred)
    unknown = [o for n in model.graph.node for o in n.output if o and _is_unknown(shapes.get(o))]
    if unknown:
        _observe(model, unknown, shapes, types)
    return shapes, types


def _check_full(light: onnx.ModelProto) -> None:
    """InvalidModelError when the model fails the type and shape checks of onnx.checker's full_check."""
    try:
        onnx.shape_inference.infer_shapes(light, check_type=True, strict_mode=True)
    except onnx.shape_inference.InferenceError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InvalidModelError(f"model fails ONNX type and shape inference (onnx.checker full_check): {first}; "
                                "fix or re-export the model") from exc


def _light_copy(model: onnx.ModelProto, *, empty: bool = False) -> onnx.ModelProto:
    """Copy without the data of external or large tensors (their dims too when `empty`)."""
    out = onnx.ModelProto()
    _copy_fields(model, out, skip="graph")
    _copy_fields(model.graph, out.graph, skip="initializer")
    for tensor in model.graph.initializer:
        out.graph.initializer.append(_stripped(tensor, empty) if _is_heavy(tensor) else tensor)
    for tensor in list(_non_initializer_tensors(out.graph)):
        if _is_heavy(tensor):
            tensor.CopyFrom(_stripped(tensor, empty))
    return out


def _is_heavy(tensor: TensorProto) -> bool:
    return is_external(tensor) or tensor_nbytes(tensor) >= EXTERNAL_MIN_BYTES


def _stripped(tensor: TensorProto, empty: bool) -> TensorProto:
    return TensorProto(name=tensor.name, data_type=tensor.data_type, dims=[0] if empty else tensor.dims)


def _dims(shape_proto: onnx.TensorShapeProto) -> Shape:
    return tuple(d.dim_value if d.HasField("dim_value") else d.dim_param if d.HasField("dim_param") else None
                 for d in shape_proto.dim)


def _collect(model: onnx.ModelProto) -> tuple[dict[str, Shape], dict[str, int]]:
    shapes: dict[str, Shape] = {}
    types: dict[str, int] = {}
    g = model.graph
    for value in list(g.input) + list(g.value_info) + list(g.output):
        tt = value.type.tensor_type
        if not value.type.HasField("tensor_type"):
            continue
        if tt.elem_type:
            types[value.name] = tt.elem_type
        if tt.HasField("shape"):
            shapes[value.name] = _dims(tt.shape)
    for tensor in g.initializer:
        shapes[tensor.name] = tuple(tensor.dims)
        types[tensor.name] = tensor.data_type
    for node in g.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            for attr in node.attribute:
                if attr.name == "value":
                    shapes[node.output[0]] = tuple(attr.t.dims)
                    types[node.output[0]] = attr.t.data_type
    return shapes, types


def _is_unknown(shape: Shape | None) -> bool:
    return shape is None or any(_unknown_dim(d) for d in shape)


def _unknown_dim(dim) -> bool:
    """None, or a name shape inference made up for a dim it could not work out ('unk__3')."""
    return dim is None or (isinstance(dim, str) and dim.startswith("unk__"))


def _observe(model: onnx.ModelProto, names: list[str], shapes: dict[str, Shape], types: dict[str, int]) -> None:
    """Fill unknown dims from onnxruntime runs on generated inputs.

    The model runs twice, the second time with every named input dim one larger: a dim that
    differs between the runs depends on the inputs (batch, sequence) and stays symbolic, so it is
    never folded into a constant; a dim equal in both runs is static.
    """
    from .verify import _dim_size, make_inputs, run  # verify imports ir

    try:
        first = run(model, make_inputs(model), outputs=names)
    except Exception:  # robust: keep the inferred shapes when the model can't run
        return
    bumped = {d.dim_param: _dim_size(d, {}) + 1 for v in model.graph.input if v.type.HasField("tensor_type")
              for d in v.type.tensor_type.shape.dim if d.HasField("dim_param")}
    second = first
    if bumped:
        try:
            second = run(model, make_inputs(model, dims=bumped), outputs=names)
        except Exception:  # some graphs only run at their export sizes: then one run decides
            second = first
    for name, array in first.items():
        if not isinstance(array, np.ndarray):  # sequence / map / optional values have no tensor shape
            continue
        other = second.get(name)
        other_shape = other.shape if isinstance(other, np.ndarray) and other.ndim == array.ndim else array.shape
        seen = tuple(int(a) if a == b else f"unk__dynamic_{k}"
                     for k, (a, b) in enumerate(zip(array.shape, other_shape)))
        known = shapes.get(name)
        if known is not None and len(known) == len(seen):
            seen = tuple(s if _unknown_dim(k) else k for k, s in zip(known, seen))
        shapes[name] = seen
        if name not in types and array.dtype != object:
            types[name] = helper.np_dtype_to_tensor_dtype(array.dtype)
        elif name not in types:
            types[name] = TensorProto.STRING
