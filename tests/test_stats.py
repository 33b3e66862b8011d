"""Tests of onnxprune.stats: params and MACs against hand computation."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxprune import ir
from onnxprune.stats import NodeStats, compare, stats


def make(nodes, inputs, outputs, initializers=()) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    return helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 17)])


def weight(name: str, *shape: int) -> onnx.TensorProto:
    return numpy_helper.from_array(np.ones(shape, np.float32), name)


def value(name: str, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def test_conv_macs_and_params():
    model = make([helper.make_node("Conv", ["x", "W", "B"], ["y"], name="conv", pads=[1, 1, 1, 1])],
                 [value("x", ["batch", 3, 8, 8])], [value("y", None)], [weight("W", 8, 3, 3, 3), weight("B", 8)])
    s = stats(model)
    # N(dynamic -> 1) * Cout * H * W * Cin * kh * kw
    assert s.macs == 1 * 8 * 8 * 8 * 3 * 3 * 3
    assert s.params == 8 * 3 * 3 * 3 + 8
    assert s.nodes["conv"] == NodeStats("Conv", 8 * 27 + 8, 13824)


def test_group_conv_and_conv_transpose_macs():
    model = make([helper.make_node("Conv", ["x", "W"], ["c"], name="gconv", group=4, pads=[1, 1, 1, 1]),
                  helper.make_node("ConvTranspose", ["c", "T"], ["y"], name="deconv", strides=[2, 2])],
                 [value("x", [1, 8, 6, 6])], [value("y", None)], [weight("W", 8, 2, 3, 3), weight("T", 8, 2, 3, 3)])
    s = stats(model)
    assert s.nodes["gconv"].macs == 8 * 6 * 6 * (8 // 4) * 3 * 3
    assert s.nodes["deconv"].macs == 6 * 6 * 8 * 2 * 3 * 3  # every input pixel x Cin x Cout/group x k
    assert s.macs == s.nodes["gconv"].macs + s.nodes["deconv"].macs


def test_gemm_macs():
    model = make([helper.make_node("Gemm", ["a", "B", "C"], ["y"], name="fc", transB=1)],
                 [value("a", [4, 16])], [value("y", None)], [weight("B", 32, 16), weight("C", 32)])
    s = stats(model)
    assert s.macs == 4 * 16 * 32
    assert s.params == 32 * 16 + 32


def test_matmul_broadcast_macs():
    model = make([helper.make_node("MatMul", ["a", "b"], ["y"], name="bmm"),
                  helper.make_node("MatMul", ["y", "W"], ["z"])],
                 [value("a", [3, 4, 5]), value("b", [2, 1, 5, 6])], [value("z", None)], [weight("W", 6, 7)])
    s = stats(model)
    assert s.nodes["bmm"].macs == 2 * 3 * 4 * 6 * 5
    assert s.nodes["MatMul_1"] == NodeStats("MatMul", 6 * 7, 2 * 3 * 4 * 7 * 6)
    assert s.params == 42


def test_constant_params_counted_without_materializing():
    shape = numpy_helper.from_array(np.array([64, 32], np.int64), "shape")
    model = make([helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(np.ones((3, 5), np.float32))),
                  helper.make_node("ConstantOfShape", ["shape"], ["big"],
                                   value=numpy_helper.from_array(np.zeros(1, np.float32))),
                  helper.make_node("Add", ["big", "x"], ["y"], name="add")],
                 [value("x", [64, 32])], [value("y", None)], [shape])
    s = stats(model)
    assert s.params == 3 * 5 + 64 * 32
    assert s.nodes["add"].params == 64 * 32
    assert s.macs == 0


def test_size_and_summaries(tmp_path):
    model = make([helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")],
                 [value("x", [2, 64])], [value("y", [2, 64])], [weight("W", 64, 64)])
    before = stats(model)
    assert before.size_bytes >= 64 * 64 * 4
    ir.save_model(model, tmp_path / "m.onnx", external_data=True)
    lazy = stats(ir.load_model(tmp_path / "m.onnx"))
    assert abs(lazy.size_bytes - before.size_bytes) < 512
    small = make([helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")],
                 [value("x", [2, 64])], [value("y", None)], [weight("W", 64, 32)])
    after = stats(small)
    assert "MatMul" in str(before) and "params" in str(before)
    table = compare(before, after)
    assert "MACs" in table and "0.500" in table
