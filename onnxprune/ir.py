"""Model I/O: load (loading.py), save atomically with validation, graph I/O and opset checks.

Models returned by :func:`load_model` are treated as read-only by every caller. External data is kept
on disk; the folder it is relative to travels with the model (external_data.base_dir). This module is
the package's entry point for model files: it re-exports the tensor access of external_data.py and the
shape inference of shapes.py under their usual `ir.` names.
"""
from __future__ import annotations

import os
import shutil
import tempfile

import onnx

from . import external_data as ext
from .errors import InvalidModelError, InvalidRequestError, VerificationError
from .graph import copy_fields_except
from .external_data import (PROTO_LIMIT, base_dir, is_external, iter_tensors, resolve_location,  # noqa: F401
                            serialized_size, set_base_dir, tensor_array)
from .loading import ModelLike, check_tensor_sizes, load_model, load_with_weights  # noqa: F401
from .runtime import check_loads
from .shapes import infer_shapes, infer_shapes_and_types  # noqa: F401
from .validation import check_model_structure


# --------------------------------------------------------------------------- save

def save_model(model: onnx.ModelProto, path: str | os.PathLike, *, reference: onnx.ModelProto | None = None,
               external_data: bool | None = None, source_base_dir: str | None = None,
               check: bool = True) -> None:
    """Write `model` atomically to `path`, validated (checker full, onnxruntime load, I/O vs `reference`).

    External data (`<basename>.data`, tensors >= 1 KiB) is used when asked or when the model
    would exceed 2 GB. Tensors still referencing the input's external data are streamed.
    On any failure nothing is written at `path`. The files the model was loaded from are never overwritten.
    """
    path = os.path.abspath(os.fspath(path))
    data_name = os.path.basename(path) + ".data"
    source = source_base_dir or base_dir(model)
    _refuse_overwrite(model, source, path, os.path.join(os.path.dirname(path), data_name))
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
        out = ext.build_output(model, tmp_data if external_data else None, data_name, source)
        if check and reference is not None:
            check_io(reference, out)
        raw = ext.write_proto(out, tmp_model)
        if check:
            check_model_structure(out, path)  # the real tensors' fields (the checks below see references)
            check_tensor_sizes(out, path, raw_sizes=raw.sizes)
            structure = _structure_copy(out, tmp_model, raw.offsets)
        del out
        if check:
            validate_file(tmp_model, structure=structure)
        if os.path.exists(tmp_data) and os.path.getsize(tmp_data):
            os.replace(tmp_data, os.path.join(os.path.dirname(path), data_name))
        os.replace(tmp_model, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _refuse_overwrite(model: onnx.ModelProto, source: str | None, *targets: str) -> None:
    """InvalidRequestError when a target is a file the model was loaded from or reads its external data from."""
    inputs = ext.source_files(model)
    if source is not None:
        inputs += [resolve_location(t, source) for t in iter_tensors(model) if is_external(t)]
    for target in targets:
        real = os.path.realpath(target)
        if any(real == f or os.path.exists(f) and os.path.exists(real) and os.path.samefile(real, f)
               for f in inputs):
            raise InvalidRequestError(f"refusing to overwrite input file {target}; choose another output path")


def _structure_copy(model: onnx.ModelProto, written: str, raw_offsets: list[int | None]) -> str:
    """Write beside `written` (the file `model` was just written to) the same model whose large inline
    initializers are external references to their raw_data's bytes inside `written` (`raw_offsets`).

    onnx.checker (full_check: graph, types, shape inference) and onnxruntime then check the graph of the written
    file and read its weights where they are, without parsing them a second time (onnxruntime maps the file).
    The written file's bytes are protobuf's own (external_data.encode); their byte sizes are checked by
    check_tensor_sizes.
    """
    light = onnx.ModelProto()
    copy_fields_except(model, light, {"graph"})
    copy_fields_except(model.graph, light.graph, {"initializer"})
    location = os.path.basename(written)
    for tensor, offset in zip(model.graph.initializer, raw_offsets):
        if offset is None:
            light.graph.initializer.append(tensor)
            continue
        reference = light.graph.initializer.add(name=tensor.name, dims=tensor.dims, data_type=tensor.data_type,
                                                data_location=onnx.TensorProto.EXTERNAL)
        for key, value in (("location", location), ("offset", offset), ("length", ext.tensor_nbytes(tensor))):
            reference.external_data.add(key=key, value=str(value))
    path = written + ".structure.onnx"
    ext.write_proto(light, path)
    return path


def validate_file(path: str, *, structure: str | None = None) -> None:
    """Oracle 3 on a written file: onnx.checker with full_check, and onnxruntime loads it.

    `structure`: the same model reading its weights out of `path` (see _structure_copy), checked instead.
    """
    try:
        onnx.checker.check_model(structure or path, full_check=True)
    except Exception as exc:
        raise VerificationError(f"written model fails onnx.checker (full_check): {exc}") from exc
    check_loads(structure or path)


# --------------------------------------------------------------------------- graph I/O and opsets

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
