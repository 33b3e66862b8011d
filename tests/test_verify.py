"""Tests of onnxprune.verify: input generation, runs, output comparison and the mask oracle."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune.runtime import make_inputs, run
from onnxprune.verify import ChannelMask, verify, verify_pruning
from onnxprune.errors import InvalidRequestError

RNG = np.random.default_rng(1)
W1 = RNG.standard_normal((8, 3, 3, 3)).astype(np.float32)
B1 = RNG.standard_normal(8).astype(np.float32)
W2 = RNG.standard_normal((4, 8, 3, 3)).astype(np.float32)


def make(nodes, inputs, outputs, initializers=(), opset=17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    return helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", opset)])


def conv_relu_conv(w1=W1, b1=B1, w2=W2) -> onnx.ModelProto:
    return make(
        [helper.make_node("Conv", ["x", "W1", "B1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c1"], ["r1"], name="relu"),
         helper.make_node("Conv", ["r1", "W2"], ["y"], name="conv2", pads=[1, 1, 1, 1])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4, 8, 8])],
        [numpy_helper.from_array(w1, "W1"), numpy_helper.from_array(b1, "B1"), numpy_helper.from_array(w2, "W2")])


# --------------------------------------------------------------------------- make_inputs

def test_make_inputs_dtypes_and_dynamic_dims():
    value = helper.make_tensor_value_info
    unnamed = value("u", TensorProto.FLOAT, [None, 3])
    model = make([], [value("f", TensorProto.FLOAT, ["batch_size", 3]),
                      value("h", TensorProto.FLOAT16, ["seq_len"]),
                      value("d", TensorProto.DOUBLE, ["width"]),
                      value("i8", TensorProto.INT8, [5]),
                      value("u8", TensorProto.UINT8, [5]),
                      value("i32", TensorProto.INT32, ["custom"]),
                      value("b", TensorProto.BOOL, [2, 2]),
                      value("s", TensorProto.STRING, [3]),
                      unnamed], [])
    inputs = make_inputs(model, dims={"custom": 7})
    expected = {"f": (np.float32, (2, 3)), "h": (np.float16, (8,)), "d": (np.float64, (4,)),
                "i8": (np.int8, (5,)), "u8": (np.uint8, (5,)), "i32": (np.int32, (7,)),
                "b": (np.bool_, (2, 2)), "s": (np.object_, (3,)), "u": (np.float32, (2, 3))}
    for name, (dtype, shape) in expected.items():
        assert inputs[name].dtype == dtype, name
        assert inputs[name].shape == shape, name
    assert inputs["i32"].min() >= 0 and inputs["i32"].max() < 4


def test_make_inputs_deterministic_and_skips_initializers():
    model = conv_relu_conv()
    model.graph.input.append(helper.make_tensor_value_info("W2", TensorProto.FLOAT, [4, 8, 3, 3]))
    a, b = make_inputs(model, seed=3), make_inputs(model, seed=3)
    assert list(a) == ["x"]
    np.testing.assert_array_equal(a["x"], b["x"])
    assert not np.array_equal(a["x"], make_inputs(model, seed=4)["x"])


def test_make_inputs_token_ids_in_range():
    table = numpy_helper.from_array(np.zeros((100, 4), np.float32), "table")
    model = make(
        [helper.make_node("Cast", ["ids"], ["ids64"], to=TensorProto.INT64),
         helper.make_node("Gather", ["table", "ids64"], ["emb"])],
        [helper.make_tensor_value_info("ids", TensorProto.INT32, ["batch", "sequence"])],
        [helper.make_tensor_value_info("emb", TensorProto.FLOAT, ["batch", "sequence", 4])], [table])
    ids = make_inputs(model, dims={"sequence": 500})["ids"]
    assert ids.shape == (2, 500)
    assert ids.min() >= 0 and ids.max() < 100 and ids.max() >= 4


# --------------------------------------------------------------------------- run / verify

def test_run_returns_intermediates():
    model = conv_relu_conv()
    inputs = make_inputs(model)
    out = run(model, inputs, ["r1", "y", "x"])
    assert list(out) == ["r1", "y", "x"]
    assert out["r1"].shape == (2, 8, 8, 8) and (out["r1"] >= 0).all()
    assert len(model.graph.output) == 1  # the argument is untouched


def test_verify_identical_models_ok():
    report = verify(conv_relu_conv(), conv_relu_conv())
    assert report.ok and report.max_rel_error == 0.0
    assert "y" in str(report) and "OK" in str(report)


def test_verify_detects_changed_weights():
    report = verify(conv_relu_conv(), conv_relu_conv(w2=W2 * 1.01))
    assert not report.ok
    assert report.outputs["y"]["rel"] > 1e-3
    assert "FAILED" in str(report)


def test_verify_detects_shape_change():
    report = verify(conv_relu_conv(), conv_relu_conv(w2=W2[:3]))
    assert not report.ok
    assert report.outputs["y"]["shape_ref"] == (2, 4, 8, 8)
    assert report.outputs["y"]["shape_cand"] == (2, 3, 8, 8)


# --------------------------------------------------------------------------- mask oracle

KEEP = [0, 2, 3, 7]


def pruned_result(mask_keep=KEEP, slice_keep=KEEP):
    mask = [i in mask_keep for i in range(8)]
    pruned = conv_relu_conv(W1[slice_keep], B1[slice_keep], W2[:, slice_keep])
    channels = {"c1": {"axes": [1], "mask": mask}, "r1": {"axes": [1], "mask": mask}}
    return SimpleNamespace(model=pruned, channels=channels)


def test_verify_pruning_correct_pruning_ok():
    report = verify_pruning(conv_relu_conv(), pruned_result())
    assert report.ok, str(report)
    assert set(report.tensors) == {"c1", "r1"}
    assert report.tensors["c1"]["shape_cand"] == (2, 4, 8, 8)


def test_verify_pruning_wrong_pruning_fails():
    report = verify_pruning(conv_relu_conv(), pruned_result(slice_keep=[0, 1, 3, 7]))
    assert not report.ok
    assert report.tensors["c1"]["rel"] > 1e-2


def test_verify_pruning_rejects_bad_mask_size():
    result = pruned_result()
    result.channels["c1"]["mask"] = [True] * 5
    with pytest.raises(InvalidRequestError, match="c1"):
        verify_pruning(conv_relu_conv(), result)


def test_channel_mask_two_axes_kept_elements():
    mask = np.array([[True, False, True], [False, False, False], [False, True, True]])
    cm = ChannelMask(axes=(2, 1), mask=mask, rank=3, elem_type=TensorProto.FLOAT)
    array = np.arange(2 * 3 * 3).reshape(2, 3, 3)  # axis 2 = "heads", axis 1 = "dims"
    kept = cm.kept(array)
    assert kept.shape == (2, 2, 2)
    # head 0 keeps dims 0 and 2 (values 0, 6); head 2 keeps dims 1 and 2 (values 5, 8)
    np.testing.assert_array_equal(kept[0], [[0, 5], [6, 8]])


def test_verify_pruning_of_a_graph_input():
    w = RNG.standard_normal((4, 8, 1, 1)).astype(np.float32)

    def model(weight, channels):
        return make([helper.make_node("Conv", ["x", "W"], ["y"], name="conv")],
                    [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, 4, 4])],
                    [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 4, 4])],
                    [numpy_helper.from_array(weight, "W")])

    keep = [1, 4, 5]
    result = SimpleNamespace(model=model(w[:, keep], 3),
                             channels={"x": {"axes": [1], "mask": [i in keep for i in range(8)]}})
    report = verify_pruning(model(w, 8), result)
    assert report.ok, str(report)
    assert report.tensors["x"]["shape_cand"] == (1, 3, 4, 4)
