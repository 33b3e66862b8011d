"""Shape and element type of every main-graph value, without running the model where it can be helped.

ONNX shape inference with data propagation on a weightless copy first; where it stops, the shape subgraphs are
propagated here (onnxprune.symbolic: constant folding plus arithmetic over symbolic dims). Only tensors still
unknown after that are observed in onnxruntime runs (runtime.observe), and only for a model of at most
OBSERVE_MAX_WEIGHT_BYTES of weights; a bigger one gets UnknownShapesError naming them.
"""
from __future__ import annotations

import onnx

from . import external_data as ext
from . import runtime
from .errors import InvalidModelError, UnknownShapesError
from .folding import ConstantResolver
from .graph import GraphIndex
from .symbolic import propagate
from .symbolic_dims import example_dim, is_unknown_dim

OBSERVE_MAX_WEIGHT_BYTES = 1 << 30  # larger models are never run to learn shapes

Shape = tuple  # entries: int (static), str (symbolic), None (unknown)


def infer_shapes(model: onnx.ModelProto) -> dict[str, Shape]:
    """Shape of every value of the main graph (inputs, initializers, node outputs)."""
    return infer_shapes_and_types(model)[0]


def infer_shapes_and_types(model: onnx.ModelProto) -> tuple[dict[str, Shape], dict[str, int]]:
    """Shapes (entries int / symbolic str / None) and element types of every main-graph value.

    ONNX shape inference (with data propagation) first, then symbolic propagation (onnxprune.symbolic); values
    still unknown are observed by running onnxruntime on generated inputs (skipped if ORT can't run), or, for a
    model of over OBSERVE_MAX_WEIGHT_BYTES of weights, UnknownShapesError.
    """
    light = ext.light_copy(model)
    try:  # strict, as onnx.checker's full_check: a model that fails it can't give a valid pruned model
        inferred = onnx.shape_inference.infer_shapes(light, check_type=True, strict_mode=True, data_prop=True)
    except onnx.shape_inference.InferenceError:
        _check_full(light)  # data propagation may fail where the checker passes: keep the declared shapes
        inferred = light
    shapes, types = _collect(inferred)
    unknown = _unknown_outputs(model, shapes)
    if unknown:
        opsets = _opsets(model)
        index = GraphIndex.build(model.graph)
        resolver = ConstantResolver(index, shapes, ext.base_dir(model), opsets.get("", 1), types)
        propagate(index, resolver, shapes, types, opsets)
        unknown = _unknown_outputs(model, shapes)
    if unknown:
        _check_observable(model, unknown)
        declared = [o.name for o in model.graph.output if o.name not in unknown]
        _fill_observed(model, unknown + declared, shapes, types)
    return shapes, types


def example_shape(model: onnx.ModelProto, shape: Shape | None) -> tuple[int, ...] | None:
    """`shape` with every symbolic dim at the size generated inputs give it (runtime.make_inputs: batch 2,
    sequence 8, other names 4): the shape a tensor has in such a run, worked out without running the model."""
    if shape is None:
        return None
    sizes = {d.dim_param: runtime.dim_size(d, {}) for v in model.graph.input if v.type.HasField("tensor_type")
             for d in v.type.tensor_type.shape.dim if d.HasField("dim_param")}
    dims = tuple(example_dim(d, sizes) for d in shape)
    return None if any(d is None for d in dims) else dims


def _unknown_outputs(model: onnx.ModelProto, shapes: dict[str, Shape]) -> list[str]:
    return [o for n in model.graph.node for o in n.output if o and _is_unknown(shapes.get(o))]


def _opsets(model: onnx.ModelProto) -> dict[str, int]:
    """{domain: version} imported by the model ("ai.onnx" spelled "")."""
    opsets = {("" if o.domain == "ai.onnx" else o.domain): o.version for o in model.opset_import}
    opsets.setdefault("", onnx.defs.onnx_opset_version())
    return opsets


def _check_observable(model: onnx.ModelProto, unknown: list[str]) -> None:
    """UnknownShapesError when the model's weights are too big to run it for the shapes left unknown."""
    weights = sum(ext.tensor_nbytes(t) for t in model.graph.initializer)
    if weights <= OBSERVE_MAX_WEIGHT_BYTES:
        return
    producers = {o: n for n in model.graph.node for o in n.output}
    shown = ", ".join(f"'{t}' ({producers[t].op_type} node '{producers[t].name}')" for t in unknown[:8])
    more = f" and {len(unknown) - 8} more" if len(unknown) > 8 else ""
    initializers = {t.name for t in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in initializers]
    undeclared = [v.name for v in inputs if not v.type.tensor_type.HasField("shape")
                  or any(not d.HasField("dim_value") for d in v.type.tensor_type.shape.dim)]
    raise UnknownShapesError(
        f"the shapes of {len(unknown)} tensors cannot be worked out without running the model: {shown}{more}; "
        f"a model of {weights / 2**30:.1f} GiB of weights is not run to observe them (limit "
        f"{OBSERVE_MAX_WEIGHT_BYTES / 2**30:g} GiB): declare static shapes for the graph inputs "
        f"{undeclared or [v.name for v in inputs]} (e.g. onnx.tools.update_model_dims) or give these tensors "
        "value_info shapes in the model", tensors=unknown, inputs=undeclared)


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
    return shape is None or any(is_unknown_dim(d) for d in shape)


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
    for name, (seen, elem_type) in runtime.observe(model, names).items():
        known = shapes.get(name)
        if known is not None and len(known) == len(seen):
            _check_declared(name, known, seen)
            seen = tuple(s if is_unknown_dim(k) else k for k, s in zip(known, seen))
        shapes[name] = seen
        types.setdefault(name, elem_type)
