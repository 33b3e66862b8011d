"""Small single-layer models for the decomposition tests (no tests here; onnx.helper, IR 10 for onnxruntime)."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def _model(nodes, inputs, outputs, inits) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "decompose_test", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=10)
    onnx.checker.check_model(model, full_check=True)
    return model


def _value(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def conv_model(cin=6, cout=10, kernel=(3, 3), strides=(1, 1), pads=None, dilations=(1, 1), bias=True, hw=(11, 9),
               auto_pad=None, relu=True, seed=0, weight=None, group=1, op="Conv") -> onnx.ModelProto:
    """x -> Conv 'conv' (-> Relu): the conv writes 'y', the graph output is 'z' (or 'y' without relu)."""
    rng = np.random.default_rng(seed)
    n = len(kernel)
    shape = (cout, cin // group, *kernel) if op == "Conv" else (cin, cout // group, *kernel)
    w = rng.standard_normal(shape).astype(np.float32) if weight is None else weight
    inits = [numpy_helper.from_array(w, "W")]
    inputs = ["x", "W"]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(cout).astype(np.float32), "B"))
        inputs.append("B")
    attrs = {"kernel_shape": list(kernel), "strides": list(strides), "dilations": list(dilations), "group": group}
    if auto_pad:
        attrs["auto_pad"] = auto_pad
    else:
        attrs["pads"] = list(pads) if pads is not None else [0] * (2 * n)
    nodes = [helper.make_node(op, inputs, ["y"], name="conv", **attrs)]
    if relu:
        nodes.append(helper.make_node("Relu", ["y"], ["z"], name="relu"))
    out = ["n", "c", *(f"s{j}" for j in range(n))]
    return _model(nodes, [_value("x", [2, cin, *hw[:n]])], [_value("z" if relu else "y", out)], inits)


def gemm_model(m=5, k=12, n=9, trans_a=0, trans_b=0, alpha=1.0, beta=1.0, bias=True, seed=0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(np.float32)
    inits = [numpy_helper.from_array(b, "B")]
    inputs = ["a", "B"]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(n).astype(np.float32), "C"))
        inputs.append("C")
    node = helper.make_node("Gemm", inputs, ["y"], name="fc", transA=trans_a, transB=trans_b, alpha=alpha, beta=beta)
    a_shape = [k, m] if trans_a else [m, k]
    return _model([node], [_value("a", a_shape)], [_value("y", [m, n])], inits)


def matmul_model(batch=(2, 3, 4), k=12, n=10, seed=0, weight=None, constant_node=False) -> onnx.ModelProto:
    """x (*batch, k) @ W (k, n) -> Tanh; the weight an initializer or a Constant node."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((k, n)).astype(np.float32) if weight is None else weight
    tensor = numpy_helper.from_array(w, "W")
    nodes, inits = [], [tensor]
    if constant_node:
        nodes.append(helper.make_node("Constant", [], ["W"], name="weight", value=tensor))
        inits = []
    nodes += [helper.make_node("MatMul", ["x", "W"], ["y"], name="mm"), helper.make_node("Tanh", ["y"], ["z"])]
    return _model(nodes, [_value("x", [*batch, k])], [_value("z", [*batch, n])], inits)
