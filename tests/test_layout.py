"""layout.py: the weight layout of each layer op, read by coupling, stats, decomposition, sparsity, reconstruction."""
from onnx import helper

from onnxprune.layout import weight_layout


def _node(op, inputs=("x", "w"), **attrs):
    return helper.make_node(op, list(inputs), ["y"], **attrs)


def test_conv_weight_is_out_by_in_per_group():
    lay = weight_layout(_node("Conv", ("x", "w", "b"), group=4), 4)
    shape = (32, 2, 3, 3)
    assert (lay.out_axis, lay.in_axis, lay.group, lay.bias, lay.x_axis, lay.y_axis) == (0, 1, 4, 2, 1, 1)
    assert (lay.in_channels(shape), lay.out_channels(shape), lay.in_per_group(shape)) == (8, 32, 2)


def test_conv_transpose_weight_is_in_by_out_per_group():
    lay = weight_layout(_node("ConvTranspose", group=2), 4)
    shape = (8, 3, 2, 2)
    assert (lay.out_axis, lay.in_axis, lay.bias) == (1, 0, None)
    assert (lay.in_channels(shape), lay.out_channels(shape), lay.in_per_group(shape)) == (8, 6, 4)


def test_gemm_follows_trans_a_and_trans_b():
    plain = weight_layout(_node("Gemm"), 2)
    assert (plain.in_axis, plain.out_axis, plain.x_axis, plain.alpha, plain.beta) == (0, 1, 1, 1.0, 1.0)
    lay = weight_layout(_node("Gemm", ("a", "b", "c"), transA=1, transB=1, alpha=0.5, beta=2.0), 2)
    assert (lay.in_axis, lay.out_axis, lay.x_axis, lay.bias, lay.alpha, lay.beta) == (1, 0, 0, 2, 0.5, 2.0)
    assert (lay.in_channels((5, 7)), lay.out_channels((5, 7))) == (7, 5)


def test_matmul_right_and_left_constant_and_embedding():
    right = weight_layout(_node("MatMul"), 3, 1)
    assert (right.slot, right.in_axis, right.out_axis, right.x_axis, right.y_axis) == (1, 1, 2, -1, -1)
    left = weight_layout(_node("MatMul"), 2, 0)
    assert (left.slot, left.in_axis, left.out_axis, left.x_axis) == (0, 1, 0, -2)
    table = weight_layout(_node("Gather", ("table", "ids")), 2, 0)
    assert (table.in_axis, table.out_axis, table.x_axis) == (0, 1, None)
    assert weight_layout(_node("Gather", ("table", "ids"), axis=1), 2, 0) is None
    assert weight_layout(_node("Relu", ("x",)), 4) is None
