"""Checks of a model's tensors and graph made before anything is allocated from them.

Every tensor (initializers, Constant values, attributes, subgraphs) must have a known element type,
non-negative dims, exactly one place holding its data, and that place must hold exactly the elements its dims
claim: a tensor whose float_data claims 10**12 elements is refused here, not when numpy is asked for them.
Only the fields' lengths are read (no data is copied).
"""
from __future__ import annotations

import math

import onnx
from onnx import TensorProto

from . import external_data as ext
from .errors import InvalidModelError

MAX_DIM = 2**31 - 1  # largest static graph input dim accepted
# operands read as a shape, repeats, pads or slice bounds (one entry per dim): none has more than MAX_SHAPE_ENTRIES
SHAPE_SLOTS = {"Reshape": (1,), "Expand": (1,), "ConstantOfShape": (0,), "Tile": (1,), "Resize": (3,),
               "Upsample": (1,), "OneHot": (1,), "Pad": (1,), "Slice": (1, 2, 3, 4)}
MAX_SHAPE_ENTRIES = 128
MAX_ELEMENTS = 2**48  # more elements than any real tensor: refused before a size is computed from them
_KNOWN_TYPES = frozenset(TensorProto.DataType.values()) - {TensorProto.UNDEFINED}
_TYPED_FIELDS = ("float_data", "int32_data", "string_data", "int64_data", "double_data", "uint64_data")
_PAIRS = {TensorProto.COMPLEX64, TensorProto.COMPLEX128}  # two values per element


def check_model_structure(model: onnx.ModelProto, where: str) -> None:
    """InvalidModelError for a graph no call can use (no outputs), a tensor or a graph input dim the checks below
    refuse."""
    if not model.HasField("graph") or not model.graph.output:
        raise InvalidModelError(f"{where}: the graph has no outputs, so there is nothing to compute or prune; "
                                "give the model at least one graph output")
    for tensor in ext.iter_tensors(model):
        check_tensor(tensor, where)
    initializers = {t.name for t in model.graph.initializer}
    for value in model.graph.input:
        if value.name not in initializers:
            check_input_dims(value, where)
    check_shape_operands(model, where)


def check_shape_operands(model: onnx.ModelProto, where: str) -> None:
    """InvalidModelError for a graph input or initializer with over MAX_SHAPE_ENTRIES entries read as a shape:
    ONNX shape inference (and onnxruntime) would build a tensor of that rank."""
    sizes = {t.name: math.prod(t.dims) for t in model.graph.initializer}
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim if value.type.HasField("tensor_type") else []
        if dims and all(d.HasField("dim_value") for d in dims):
            sizes.setdefault(value.name, math.prod(d.dim_value for d in dims))
    for node in model.graph.node:
        for slot in SHAPE_SLOTS.get(node.op_type, ()):
            name = node.input[slot] if slot < len(node.input) else ""
            if sizes.get(name, 0) > MAX_SHAPE_ENTRIES:
                raise InvalidModelError(f"{where}: node '{node.name}' ({node.op_type}) reads '{name}', of "
                                        f"{sizes[name]} entries, as a shape (at most {MAX_SHAPE_ENTRIES}, one per "
                                        "dim); the model is corrupt")


def check_input_dims(value: onnx.ValueInfoProto, where: str) -> None:
    """InvalidModelError for a graph input with a static dim of 0 (no data flows) or above MAX_DIM."""
    if not value.type.HasField("tensor_type") or not value.type.tensor_type.HasField("shape"):
        return
    dims = value.type.tensor_type.shape.dim
    for axis, dim in enumerate(dims):
        if dim.HasField("dim_value") and not 0 < dim.dim_value <= MAX_DIM:
            shown = [d.dim_value if d.HasField("dim_value") else d.dim_param or "?" for d in dims]
            raise InvalidModelError(f"{where}: graph input {value.name!r} has dim {dim.dim_value} on axis {axis} "
                                    f"(shape {shown}); a static input dim is between 1 and {MAX_DIM}: give the "
                                    "input its real size or a symbolic dim")


def check_tensor(tensor: TensorProto, where: str) -> None:
    """InvalidModelError unless the tensor's type, dims and data fields agree (see the module docstring)."""
    name = f"{where}: tensor {tensor.name!r}"
    if tensor.data_type not in _KNOWN_TYPES:
        raise InvalidModelError(f"{name} has element type {tensor.data_type}, which is not an ONNX type; the file is "
                                "corrupt or made for a newer onnx")
    dims = list(tensor.dims)
    if any(d < 0 for d in dims):
        raise InvalidModelError(f"{name} has a negative dim {dims}; the file is corrupt")
    numel = math.prod(dims)
    if numel > MAX_ELEMENTS:
        raise InvalidModelError(f"{name} claims {numel} elements (dims {dims}); the file is corrupt")
    places = [f for f in _TYPED_FIELDS if len(getattr(tensor, f))]
    if tensor.HasField("raw_data"):
        places.append("raw_data")
    if ext.is_external(tensor):
        places.append("external_data")
    if len(places) > 1:
        raise InvalidModelError(f"{name} holds its values in {' and '.join(places)}; a tensor keeps them in one "
                                "field only: re-export or rewrite it with one of them")
    if not places or places[0] in ("raw_data", "external_data"):
        if not places and numel:
            raise InvalidModelError(f"{name} claims {numel} elements (dims {dims}) but holds no data; the file is "
                                    "corrupt or truncated")
        return  # raw and external byte counts: loading.check_tensor_sizes
    held = len(getattr(tensor, places[0]))
    need = _field_count(tensor.data_type, numel)
    if held != need:
        raise InvalidModelError(f"{name} holds {held} values in {places[0]} but its dims {dims} need {need}; the file "
                                "is corrupt or truncated")


def _field_count(data_type: int, numel: int) -> int:
    """How many entries of its typed field a tensor of `numel` elements has."""
    if data_type in _PAIRS:
        return 2 * numel
    if not ext.is_plain_dtype(data_type) and data_type != TensorProto.STRING:
        per_word = 8 // max(ext.packed_bits(data_type), 1)  # packed types: whole bytes, one per int32 entry
        return -(-numel // per_word)
    return numel
