"""Loading a model file: parse, validate (external references, tensor sizes, onnx.checker), record its origin."""
from __future__ import annotations

import math
import os
from typing import Union

import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto, helper

from . import external_data as ext
from .errors import InvalidModelError, InvalidRequestError

ModelLike = Union[onnx.ModelProto, str, os.PathLike]


def load_model(model: ModelLike, *, load_external_data: bool = False) -> onnx.ModelProto:
    """Load and check a model; a ModelProto is returned unchanged (callers never mutate it).

    External data is validated but left on disk unless `load_external_data` (models < 2 GB).
    The loaded model carries its origin (external data folder, files read): see external_data.base_dir.
    """
    if isinstance(model, onnx.ModelProto):
        return model
    path = os.path.abspath(os.fspath(model))
    proto = _parse(path)
    directory = os.path.dirname(path)
    ext.check_external_data(proto, directory)
    check_tensor_sizes(proto, path)
    try:  # heavy tensors are replaced by empty ones: their sizes were checked above
        onnx.checker.check_model(ext.light_copy(proto, empty=True))
    except Exception as exc:  # checker raises ValidationError and assorted C++ errors
        raise InvalidModelError(f"{path}: fails onnx.checker: {exc}") from exc
    files = [os.path.realpath(path)]
    files += [ext.resolve_location(t, directory) for t in ext.iter_tensors(proto) if ext.is_external(t)]
    if load_external_data:
        _load_external(proto, directory)
    ext.record_origin(proto, directory, list(dict.fromkeys(files)))
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


def check_tensor_sizes(model: onnx.ModelProto, path: str) -> None:
    """Raw and external tensors hold exactly the bytes their shape and type need."""
    for tensor in ext.iter_tensors(model):
        if not ext.is_plain_dtype(tensor.data_type):
            continue
        if ext.is_external(tensor):
            held = ext.tensor_nbytes(tensor)
        elif tensor.HasField("raw_data"):
            held = len(tensor.raw_data)
        else:
            continue
        need = math.prod(tensor.dims) * helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
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
