"""Structure-aware mutations of ONNX models, seeded: each takes a model (changed in place) and a numpy Generator
and returns a one-line description, or None when it does not apply to this model.

They aim where onnxprune reads the model: layer attributes, wiring, element types, dims, tensor fields,
opsets, model-local functions, control flow around weights, external data, graph outputs, Constant nodes,
QDQ weights.
"""
from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

Mutation = Callable[[onnx.ModelProto, np.random.Generator], "str | None"]
LAYERS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def _pick(rng: np.random.Generator, items: list):
    return items[int(rng.integers(len(items)))] if items else None


def _weights(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    return [t for t in model.graph.initializer if t.data_type == TensorProto.FLOAT and len(t.dims) >= 2]


def _set_attr(node: onnx.NodeProto, name: str, value) -> None:
    for attr in list(node.attribute):
        if attr.name == name:
            node.attribute.remove(attr)
    node.attribute.append(helper.make_attribute(name, value))


def attribute(model, rng) -> str | None:
    """A layer or pooling attribute set to an unusual value."""
    nodes = [n for n in model.graph.node if n.op_type in LAYERS + ("MaxPool", "AveragePool", "Concat", "Softmax",
                                                                    "Flatten", "Transpose", "Split")]
    node = _pick(rng, nodes)
    if node is None:
        return None
    choices = {
        "Conv": [("group", [-1, 0, 2, 3, 10**6]), ("strides", [[0, 1], [1], [-1, -1]]), ("pads", [[-1, 0, 0, 0], [1]]),
                 ("kernel_shape", [[5, 5], [1], [0, 0]]), ("dilations", [[0, 0], [2, 2]])],
        "ConvTranspose": [("group", [-1, 0, 2]), ("output_padding", [[5, 5], [-1]]), ("strides", [[0, 0]])],
        "Gemm": [("transB", [0, 1, 2]), ("transA", [1, -1]), ("alpha", [0.0, float("nan")])],
        "MatMul": [("axis", [1])],
        "MaxPool": [("kernel_shape", [[0, 0], [100, 100]]), ("strides", [[0, 0]])],
        "AveragePool": [("kernel_shape", [[0, 0], [100, 100]]), ("pads", [[-1, -1, -1, -1]])],
        "Concat": [("axis", [-5, 7, 0, 2])],
        "Softmax": [("axis", [-9, 1, 5])],
        "Flatten": [("axis", [-9, 0, 9])],
        "Transpose": [("perm", [[0, 0, 1, 2], [3, 2, 1, 0], [0]])],
        "Split": [("axis", [9, -9])],
    }[node.op_type]
    name, values = _pick(rng, choices)
    value = _pick(rng, values)
    _set_attr(node, name, value)
    return f"attr {node.op_type} '{node.name}'.{name} = {value}"


def rewire(model, rng) -> str | None:
    """A node input read from another tensor."""
    node = _pick(rng, [n for n in model.graph.node if n.input])
    tensors = [o for n in model.graph.node for o in n.output] + [v.name for v in model.graph.input]
    if node is None or not tensors:
        return None
    slot = int(rng.integers(len(node.input)))
    old, new = node.input[slot], _pick(rng, tensors)
    node.input[slot] = new
    return f"rewire {node.op_type} '{node.name}' input[{slot}] {old} -> {new}"


def dtype(model, rng) -> str | None:
    """An initializer's element type changed (a real type, an unknown enum, or UNDEFINED)."""
    tensor = _pick(rng, list(model.graph.initializer))
    if tensor is None:
        return None
    new = int(_pick(rng, [0, 2, 7, 10, 11, 16, 25, 99, 1000]))
    old, tensor.data_type = tensor.data_type, new
    return f"dtype init '{tensor.name}' {old} -> {new}"


def input_dims(model, rng) -> str | None:
    """A graph input dim made zero, huge, negative, symbolic or 1."""
    inputs = [v for v in model.graph.input if v.type.tensor_type.shape.dim]
    value = _pick(rng, inputs)
    if value is None:
        return None
    dims = value.type.tensor_type.shape.dim
    axis = int(rng.integers(len(dims)))
    kind = _pick(rng, ["zero", "huge", "negative", "symbolic", "one", "batch_huge"])
    dim = dims[0 if kind == "batch_huge" else axis]
    if kind == "symbolic":
        dim.dim_param = "fz_dim"
    else:
        dim.dim_value = {"zero": 0, "huge": 2**40, "negative": -3, "one": 1, "batch_huge": 10**7}[kind]
    return f"dims input '{value.name}' axis {axis} {kind}"


def weight_dims(model, rng) -> str | None:
    """A weight's dims changed without its data (unit dim added, dim dropped, dims swapped), or data and dims."""
    tensor = _pick(rng, _weights(model))
    if tensor is None:
        return None
    kind = _pick(rng, ["add_unit", "drop", "swap", "reshape_data"])
    dims = list(tensor.dims)
    if kind == "add_unit":
        dims.insert(int(rng.integers(len(dims) + 1)), 1)
    elif kind == "drop" and len(dims) > 1:
        dims = dims[:-1]
    elif kind == "swap":
        dims[0], dims[1] = dims[1], dims[0]
    else:
        array = numpy_helper.to_array(tensor)
        array = array.reshape(array.shape[:1] + (1,) + array.shape[1:])
        tensor.CopyFrom(numpy_helper.from_array(array, tensor.name))
        return f"weight_dims '{tensor.name}' add_unit with data"
    del tensor.dims[:]
    tensor.dims.extend(dims)
    return f"weight_dims '{tensor.name}' {kind} -> {dims}"


def tensor_fields(model, rng) -> str | None:
    """Tensor data fields made inconsistent: both raw and float data, truncated raw data, huge claimed dims."""
    tensor = _pick(rng, _weights(model))
    if tensor is None:
        return None
    kind = _pick(rng, ["raw_and_float", "truncate", "claim_huge", "float_data_short", "empty"])
    if kind == "raw_and_float":
        tensor.float_data.extend([1.0, 2.0])
    elif kind == "truncate" and tensor.HasField("raw_data"):
        tensor.raw_data = tensor.raw_data[: len(tensor.raw_data) // 2]
    elif kind == "claim_huge":
        array = numpy_helper.to_array(tensor).ravel()[:3]
        tensor.ClearField("raw_data")
        tensor.float_data.extend(array.tolist())
        tensor.dims[0] = 10**12
    elif kind == "float_data_short":
        array = numpy_helper.to_array(tensor).ravel()
        tensor.ClearField("raw_data")
        tensor.float_data.extend(array[:-1].tolist())
    else:
        tensor.ClearField("raw_data")
        del tensor.float_data[:]
    return f"tensor_fields '{tensor.name}' {kind}"


def opset(model, rng) -> str | None:
    """The default-domain opset changed."""
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            old, entry.version = entry.version, int(_pick(rng, [1, 7, 9, 11, 13, 17, 21, 23, 30]))
            return f"opset {old} -> {entry.version}"
    return None


def function(model, rng) -> str | None:
    """A node moved into a model-local function (or one unused function added)."""
    opsets = [helper.make_opsetid(o.domain, o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")]
    node = _pick(rng, [n for n in model.graph.node if n.domain in ("", "ai.onnx") and n.op_type != "Constant"])
    if node is None or rng.random() < 0.3:
        body = [helper.make_node("Relu", ["a"], ["b"])]
        model.functions.append(helper.make_function("fz.local", "Unused", ["a"], ["b"], body, opsets))
        model.opset_import.append(helper.make_opsetid("fz.local", 1))
        return "function unused"
    inputs = [f"x{k}" for k in range(len(node.input))]
    outputs = [f"y{k}" for k in range(len(node.output))]
    inner = helper.make_node(node.op_type, inputs, outputs)
    inner.attribute.extend(node.attribute)
    model.functions.append(helper.make_function("fz.local", "F", inputs, outputs, [inner], opsets))
    model.opset_import.append(helper.make_opsetid("fz.local", 1))
    node.op_type, node.domain = "F", "fz.local"
    del node.attribute[:]
    return f"function wraps '{node.name}'"


def control_flow(model, rng) -> str | None:
    """A layer's weight routed through an If (a constant condition; a branch negates it)."""
    layer = _pick(rng, [n for n in model.graph.node if n.op_type in LAYERS and len(n.input) > 1])
    inits = {t.name for t in model.graph.initializer}
    if layer is None or layer.input[1] not in inits:
        return None
    w = layer.input[1]
    then = helper.make_graph([helper.make_node("Identity", [w], ["fz_then"])], "fz_then_g", [],
                             [helper.make_tensor_value_info("fz_then", TensorProto.FLOAT, None)])
    other = helper.make_graph([helper.make_node("Neg", [w], ["fz_else"])], "fz_else_g", [],
                              [helper.make_tensor_value_info("fz_else", TensorProto.FLOAT, None)])
    model.graph.initializer.append(numpy_helper.from_array(np.array(bool(rng.random() < 0.5)), "fz_cond"))
    model.graph.node.insert(0, helper.make_node("If", ["fz_cond"], ["fz_w"], name="fz_if", then_branch=then,
                                                else_branch=other))
    layer.input[1] = "fz_w"
    return f"control_flow If around '{w}' of '{layer.name}'"


def outputs(model, rng) -> str | None:
    """Graph outputs removed, duplicated, or a weight made a graph output."""
    kind = _pick(rng, ["remove_all", "duplicate", "weight_output", "intermediate"])
    if kind == "remove_all":
        del model.graph.output[:]
    elif kind == "duplicate" and model.graph.output:
        model.graph.output.append(model.graph.output[0])
    elif kind == "weight_output" and _weights(model):
        tensor = _pick(rng, _weights(model))
        model.graph.output.append(helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
    elif kind == "intermediate" and model.graph.node:
        name = _pick(rng, [o for n in model.graph.node for o in n.output if o])
        model.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    return f"outputs {kind}"


def constant(model, rng) -> str | None:
    """A Constant node without a value, or with two values, feeding an Add."""
    node = _pick(rng, [n for n in model.graph.node if n.output and n.op_type in ("Relu", "Add", "Conv", "Mul")])
    if node is None:
        return None
    kind = _pick(rng, ["no_value", "two_values"])
    const = helper.make_node("Constant", [], ["fz_const"], name="fz_const")
    if kind == "two_values":
        const.attribute.extend([helper.make_attribute("value_float", 1.0), helper.make_attribute("value_int", 1)])
    out = node.output[0]
    node.output[0] = "fz_pre"
    add = helper.make_node("Add", ["fz_pre", "fz_const"], [out], name="fz_add")
    index = list(model.graph.node).index(node)
    model.graph.node.insert(index + 1, add)
    model.graph.node.insert(index, const)
    return f"constant {kind} after '{node.name}'"


def qdq(model, rng) -> str | None:
    """A layer's float weight stored as int8 with a DequantizeLinear (per tensor, or per channel on axis 0)."""
    layer = _pick(rng, [n for n in model.graph.node if n.op_type in ("Conv", "Gemm", "MatMul") and len(n.input) > 1])
    inits = {t.name: t for t in model.graph.initializer}
    if layer is None or layer.input[1] not in inits or inits[layer.input[1]].data_type != TensorProto.FLOAT:
        return None
    tensor = inits[layer.input[1]]
    w = numpy_helper.to_array(tensor)
    per_channel = w.ndim >= 2 and rng.random() < 0.5
    scale = (np.abs(w).reshape(w.shape[0], -1).max(1) if per_channel else np.abs(w).max()) / 127 + 1e-8
    shaped = scale.reshape((-1,) + (1,) * (w.ndim - 1)) if per_channel else scale
    q = np.clip(np.round(w / shaped), -127, 127).astype(np.int8)
    name = tensor.name
    model.graph.initializer.remove(tensor)
    model.graph.initializer.extend([numpy_helper.from_array(q, f"{name}_q"),
                                    numpy_helper.from_array(np.asarray(scale, np.float32), f"{name}_scale")])
    attrs = {"axis": 0} if per_channel else {}
    model.graph.node.insert(0, helper.make_node("DequantizeLinear", [f"{name}_q", f"{name}_scale"], [name],
                                                name=f"{name}_dq", **attrs))
    return f"qdq {'per_channel' if per_channel else 'per_tensor'} '{name}'"


def external(model, rng) -> str | None:
    """Marks one weight for external data; the writer (write_case) makes its fields odd or fine."""
    tensor = _pick(rng, _weights(model))
    if tensor is None:
        return None
    kind = _pick(rng, ["fine", "offset_text", "offset_negative", "length_float", "nul", "outside", "missing",
                       "absolute", "short"])
    tensor.doc_string = f"fz_external:{kind}"
    return f"external '{tensor.name}' {kind}"


MUTATIONS: dict[str, Mutation] = {f.__name__: f for f in (attribute, rewire, dtype, input_dims, weight_dims,
                                                            tensor_fields, opset, function, control_flow, outputs,
                                                            constant, qdq, external)}


def write_case(model: onnx.ModelProto, folder: str) -> str:
    """Write `model` as folder/model.onnx (external data for tensors marked by `external`); returns the path."""
    os.makedirs(folder, exist_ok=True)
    for tensor in model.graph.initializer:
        if tensor.doc_string.startswith("fz_external:") and tensor.HasField("raw_data"):
            kind = tensor.doc_string.split(":", 1)[1]
            tensor.doc_string = ""
            data = tensor.raw_data
            with open(os.path.join(folder, "w.bin"), "wb") as f:
                f.write(b"\0" * 16 + data)
            fields = {"location": "w.bin", "offset": "16", "length": str(len(data))}
            fields.update({"offset_text": {"offset": "16abc"}, "offset_negative": {"offset": "-16"},
                           "length_float": {"length": f"{len(data)}.0"}, "nul": {"location": "w.bin\0x"},
                           "outside": {"location": "../outside.bin"}, "missing": {"location": "nope.bin"},
                           "absolute": {"location": "/etc/hostname"}, "short": {"length": str(len(data) * 4)},
                           "fine": {}}[kind])
            tensor.ClearField("raw_data")
            tensor.data_location = TensorProto.EXTERNAL
            for key, value in fields.items():
                tensor.external_data.add(key=key, value=value)
    path = os.path.join(folder, "model.onnx")
    with open(path, "wb") as f:
        f.write(model.SerializeToString())
    return path


def mutate(model: onnx.ModelProto, rng: np.random.Generator, count: int) -> list[str]:
    """Apply `count` random mutations (those that do not apply are skipped); their descriptions."""
    done = []
    names = sorted(MUTATIONS)
    for _ in range(count):
        name = _pick(rng, names)
        try:
            described = MUTATIONS[name](model, rng)
        except (ValueError, IndexError, KeyError, TypeError):  # a mutation that cannot fit this model
            described = None
        if described:
            done.append(described)
    return done
