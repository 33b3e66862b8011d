"""Shape and element type of every main-graph value: ONNX shape inference, then onnxruntime for the rest."""
from __future__ import annotations

import onnx

from . import external_data as ext
from .errors import InvalidModelError
from .runtime import observe

Shape = tuple  # entries: int (static), str (symbolic), None (unknown)


def infer_shapes(model: onnx.ModelProto) -> dict[str, Shape]:
    """Shape of every value of the main graph (inputs, initializers, node outputs)."""
    return infer_shapes_and_types(model)[0]


def infer_shapes_and_types(model: onnx.ModelProto) -> tuple[dict[str, Shape], dict[str, int]]:
    """Shapes (entries int / symbolic str / None) and element types of every main-graph value.

    ONNX shape inference (with data propagation) first; values it leaves unknown are
    observed by running onnxruntime on generated inputs (skipped if ORT can't run).
    """
    light = ext.light_copy(model)
    try:  # strict, as onnx.checker's full_check: a model that fails it can't give a valid pruned model
        inferred = onnx.shape_inference.infer_shapes(light, check_type=True, strict_mode=True, data_prop=True)
    except onnx.shape_inference.InferenceError:
        _check_full(light)  # data propagation may fail where the checker passes: keep the declared shapes
        inferred = light
    shapes, types = _collect(inferred)
    unknown = [o for n in model.graph.node for o in n.output if o and _is_unknown(shapes.get(o))]
    if unknown:
        declared = [o.name for o in model.graph.output if o.name not in unknown]
        _fill_observed(model, unknown + declared, shapes, types)
    return shapes, types


def _check_full(light: onnx.ModelProto) -> None:
    """InvalidModelError when the model fails the type and shape checks of onnx.checker's full_check."""
    try:
        onnx.shape_inference.infer_shapes(light, check_type=True, strict_mode=True)
    except onnx.shape_inference.InferenceError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InvalidModelError(f"model fails ONNX type and shape inference (onnx.checker full_check): {first}; "
                                "fix or re-export the model") from exc


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


def _check_declared(name: str, known: Shape, seen: Shape) -> None:
    """InvalidModelError when a static dim the model states differs from the one onnxruntime computes (a symbolic
    dim in `seen` depends on the inputs and is not compared)."""
    for axis, (k, s) in enumerate(zip(known, seen)):
        if isinstance(k, int) and isinstance(s, int) and k != s:
            raise InvalidModelError(f"tensor '{name}' is declared with dim {k} on axis {axis} but onnxruntime "
                                    f"computes {s} (shape {list(seen)}); the model's shapes contradict each other: "
                                    "fix the declared shapes or re-export the model")


def _fill_observed(model: onnx.ModelProto, names: list[str], shapes: dict[str, Shape], types: dict[str, int]) -> None:
    """Fill unknown dims from onnxruntime runs (runtime.observe); dims known already are kept.

    A dim that differs between the two runs depends on the inputs and stays symbolic, so it is
    never folded into a constant.
    """
    for name, (seen, elem_type) in observe(model, names).items():
        known = shapes.get(name)
        if known is not None and len(known) == len(seen):
            _check_declared(name, known, seen)
            seen = tuple(s if _unknown_dim(k) else k for k, s in zip(known, seen))
        shapes[name] = seen
        types.setdefault(name, elem_type)
