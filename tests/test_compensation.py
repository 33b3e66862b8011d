"""Mean compensation (onnxprune.reconstruction.compensate): prune(..., compensate=True, calibration=...).

Every Conv / Gemm / MatMul(+bias Add) that read a removed channel c gets, per output channel o,
bias[o] += sum_c mean_c * sum_kernel W[o, c] (Gemm: alpha * sum_c mean_c * B'[c, o], beta folded into C),
with mean_c the calibration mean of the layer's INPUT channel c on the ORIGINAL model. The expectations
below are computed independently with numpy from an onnxruntime run of the original model.
"""
from __future__ import annotations

import glob
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxprune as op
from onnxprune import ir
from onnxprune.runtime import make_inputs, run

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures")
FIXTURE_NAMES = sorted(os.path.basename(p)[: -len(".onnx")] for p in glob.glob(os.path.join(FIXTURES, "*.onnx")))

RTOL, ATOL = 1e-5, 1e-6


# --------------------------------------------------------------------------- helpers

def _fixture(name: str) -> onnx.ModelProto:
    # load_model keeps the base dir, so a fixture with external data stays loadable after pruning
    return op.load_model(os.path.join(FIXTURES, f"{name}.onnx"))


def _model(nodes, inits, inputs: dict, outputs: dict, opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "compensation",
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs.items()],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs.items()],
                              [numpy_helper.from_array(np.asarray(a), n) for n, a in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=9)
    onnx.checker.check_model(model, full_check=True)
    return model


def _node(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    (node,) = [n for n in model.graph.node if n.name == name]
    return node


def _init(model: onnx.ModelProto, name: str) -> np.ndarray:
    (tensor,) = [t for t in model.graph.initializer if t.name == name]
    return numpy_helper.to_array(tensor)


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _removed(result, tensor: str) -> np.ndarray:
    """Removed positions (bool) of `tensor`'s pruned axis, from the pruning record."""
    entry = result.channels[tensor]
    assert len(entry["axes"]) == 1
    return ~np.asarray(entry["mask"], dtype=bool)


def _channel_means(model: onnx.ModelProto, tensor: str, calibration: list, axis: int) -> np.ndarray:
    """Mean of `tensor` (a run of `model`) over every sample of every batch and every axis but `axis`."""
    name = model.graph.input[0].name
    values = np.concatenate([run(model, {name: x}, [tensor])[tensor] for x in calibration]).astype(np.float64)
    values = np.moveaxis(values, axis, -1)
    return values.reshape(-1, values.shape[-1]).mean(axis=0)


def _output(model: onnx.ModelProto, calibration: list) -> np.ndarray:
    name = model.graph.input[0].name
    return np.concatenate([run(model, {name: x})[model.graph.output[0].name] for x in calibration]).astype(np.float64)


def _same_initializers(a: onnx.ModelProto, b: onnx.ModelProto) -> None:
    ta = {t.name: numpy_helper.to_array(t) for t in a.graph.initializer}
    tb = {t.name: numpy_helper.to_array(t) for t in b.graph.initializer}
    assert ta.keys() == tb.keys()
    for name in ta:
        np.testing.assert_array_equal(ta[name], tb[name], err_msg=name)


# --------------------------------------------------------------------------- 1. every fixture

@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_fixture_compensation_passes_both_oracles_and_saves(name, tmp_path):
    model = _fixture(name)
    before = model.SerializeToString()
    calibration = [make_inputs(model, seed=s) for s in range(3)]
    result = op.prune(model, "l2", 0.3, calibration=calibration, compensate=True, verify=True)
    assert model.SerializeToString() == before  # the input ModelProto is untouched
    assert result.verification is not None and result.verification.ok  # mask oracle (the surgery)
    report = result.compensation
    assert isinstance(report, op.Compensation)
    assert report.verification is not None and report.verification.ok, str(report.verification)
    assert report.verification.max_rel_error <= (1e-2 if name == "helper_fp16" else 1e-4)  # fp16: its precision
    # every compensated layer has its means recorded, sized like its input channel axis
    assert {r.name for r in report.compensated} == set(report.means)
    for row in report.compensated:
        removed, mean = report.means[row.name]
        assert removed.shape == mean.shape and row.channels == int(removed.sum()) > 0
        assert np.all(np.isfinite(mean))
    for row in report.layers:
        assert (row.skipped is None) == (row.name in report.means)
    op.save_model(result.model, tmp_path / "x.onnx", reference=result.reference)
    assert (tmp_path / "x.onnx").exists()


# --------------------------------------------------------------------------- 2. Conv consumers

def _conv_pair(group: int = 1, bias2: bool = True, seed: int = 0) -> onnx.ModelProto:
    """conv1 (3 -> 8, 3x3, pads 1) -> relu -> conv2 (8 -> 4, 3x3, pads 1, `group`, optional bias)."""
    rng = np.random.default_rng(seed)
    inits = {"w1": rng.standard_normal((8, 3, 3, 3)).astype(np.float32),
             "b1": rng.standard_normal(8).astype(np.float32),
             "w2": rng.standard_normal((4, 8 // group, 3, 3)).astype(np.float32)}
    if bias2:
        inits["b2"] = rng.standard_normal(4).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["h"], name="conv1", pads=[1] * 4),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w2"] + (["b2"] if bias2 else []), ["y"], name="conv2", pads=[1] * 4,
                              group=group)]
    return _model(nodes, inits, {"x": ["n", 3, 6, 6]}, {"y": ["n", 4, 6, 6]})


def _uneven_calibration(shape, seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((n, *shape)).astype(np.float32) for n in (2, 3, 4)]  # batches of unequal size


@pytest.mark.parametrize("group,bias2", [(1, True), (1, False), (2, True), (2, False)])
def test_conv_bias_takes_removed_channel_means(group, bias2):
    model = _conv_pair(group, bias2)
    before = model.SerializeToString()
    calibration = _uneven_calibration((3, 6, 6))
    result = op.prune_by_index(model, {"conv1": [1, 5]}, calibration=calibration, compensate=True, verify=True)
    assert model.SerializeToString() == before
    removed = _removed(result, "r")
    assert np.array_equal(removed, _removed(result, "h"))
    assert np.flatnonzero(removed).tolist() == [1, 5]  # one per group of 4 for group=2: nothing else tied
    mean = _channel_means(model, "r", calibration, axis=1)  # the original model's Relu output, all 9 samples

    w2 = _init(model, "w2").astype(np.float64)
    b2 = _init(model, "b2").astype(np.float64) if bias2 else np.zeros(4)
    per_group_in = 8 // group
    expected = b2.copy()
    for o in range(4):
        g = o // (4 // group)
        for c in np.flatnonzero(removed):
            if c // per_group_in == g:  # output o only reads input channels of its own group
                expected[o] += mean[c] * w2[o, c % per_group_in].sum()

    conv2 = _node(result.model, "conv2")
    assert len(conv2.input) == 3 and conv2.input[2]  # a bias exists (created when conv2 had none)
    np.testing.assert_allclose(_init(result.model, conv2.input[2]), expected, rtol=RTOL, atol=ATOL)
    # the weights are only sliced: the removed input channels are gone, the rest untouched
    kept_local = np.concatenate([np.flatnonzero(~removed[g * per_group_in:(g + 1) * per_group_in])
                                 for g in range(group)]).reshape(group, -1)
    w_expected = np.concatenate([w2[g * (4 // group):(g + 1) * (4 // group)][:, kept_local[g]] for g in range(group)])
    np.testing.assert_array_equal(_init(result.model, conv2.input[1]), w_expected.astype(np.float32))
    assert _attr(conv2, "group", 1) == group

    report = result.compensation
    (row,) = report.layers
    assert (row.name, row.op_type, row.skipped, row.channels) == ("conv2", "Conv", None, 2)
    np.testing.assert_allclose(row.max_shift, np.abs(expected - b2).max(), rtol=RTOL)
    np.testing.assert_allclose(report.tensor_means["r"], mean, rtol=RTOL, atol=ATOL)
    recorded_removed, recorded_mean = report.means["conv2"]
    assert np.array_equal(recorded_removed, removed)
    np.testing.assert_allclose(recorded_mean, mean, rtol=RTOL, atol=ATOL)
    assert report.verification.ok

    # without compensation the bias is the original one (or absent)
    plain = op.prune_by_index(model, {"conv1": [1, 5]})
    plain_conv2 = _node(plain.model, "conv2")
    if bias2:
        np.testing.assert_array_equal(_init(plain.model, plain_conv2.input[2]), b2.astype(np.float32))
    else:
        assert len(plain_conv2.input) == 2 or not plain_conv2.input[2]
    assert plain.compensation is None


def test_grouped_consumer_ties_channels_and_sums_per_group():
    """Removing channel 1 alone ties channel 5 (the same slot of the other group of conv2): both compensated."""
    model = _conv_pair(group=2)
    calibration = _uneven_calibration((3, 6, 6), seed=3)
    result = op.prune_by_index(model, {"conv1": [1]}, calibration=calibration, compensate=True, verify=True)
    removed = _removed(result, "r")
    assert np.flatnonzero(removed).tolist() == [1, 5]
    mean = _channel_means(model, "r", calibration, axis=1)
    w2 = _init(model, "w2").astype(np.float64)
    b2 = _init(model, "b2").astype(np.float64)
    # outputs 0, 1 read channels 0..3 (removed: 1 -> local 1); outputs 2, 3 read 4..7 (removed: 5 -> local 1)
    expected = b2 + np.array([mean[1] * w2[0, 1].sum(), mean[1] * w2[1, 1].sum(),
                              mean[5] * w2[2, 1].sum(), mean[5] * w2[3, 1].sum()])
    conv2 = _node(result.model, "conv2")
    np.testing.assert_allclose(_init(result.model, conv2.input[2]), expected, rtol=RTOL, atol=ATOL)
    assert result.compensation.layers[0].channels == 2


def _conv_chain(seed: int = 0) -> onnx.ModelProto:
    """conv1 (3 -> 8) -> relu1 -> conv2 (8 -> 6) -> relu2 -> conv3 (6 -> 2, 1x1, no bias)."""
    rng = np.random.default_rng(seed)
    inits = {"w1": rng.standard_normal((8, 3, 3, 3)).astype(np.float32),
             "b1": rng.standard_normal(8).astype(np.float32),
             "w2": rng.standard_normal((6, 8, 3, 3)).astype(np.float32),
             "b2": rng.standard_normal(6).astype(np.float32),
             "w3": rng.standard_normal((2, 6, 1, 1)).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["h1"], name="conv1", pads=[1] * 4),
             helper.make_node("Relu", ["h1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["h2"], name="conv2", pads=[1] * 4),
             helper.make_node("Relu", ["h2"], ["r2"], name="relu2"),
             helper.make_node("Conv", ["r2", "w3"], ["y"], name="conv3")]
    return _model(nodes, inits, {"x": ["n", 3, 6, 6]}, {"y": ["n", 2, 6, 6]})


def test_means_come_from_the_original_model_and_pruned_outputs_are_sliced():
    """conv2 loses inputs AND outputs: its bias is (b2 + shift)[kept]; conv3's shift uses the ORIGINAL relu2
    means (in the pruned model relu2 differs: conv2 lost inputs)."""
    model = _conv_chain()
    calibration = _uneven_calibration((3, 6, 6), seed=4)
    result = op.prune_by_index(model, {"conv1": [0, 3, 6], "conv2": [2, 4]}, calibration=calibration,
                               compensate=True, verify=True)
    removed1, removed2 = _removed(result, "r1"), _removed(result, "r2")
    assert np.flatnonzero(removed1).tolist() == [0, 3, 6] and np.flatnonzero(removed2).tolist() == [2, 4]
    mean1 = _channel_means(model, "r1", calibration, axis=1)
    mean2 = _channel_means(model, "r2", calibration, axis=1)
    w2, b2 = _init(model, "w2").astype(np.float64), _init(model, "b2").astype(np.float64)
    w3 = _init(model, "w3").astype(np.float64)
    expected2 = (b2 + np.einsum("c,oc->o", np.where(removed1, mean1, 0.0), w2.sum((2, 3))))[~removed2]
    expected3 = np.einsum("c,oc->o", np.where(removed2, mean2, 0.0), w3.sum((2, 3)))
    conv2, conv3 = _node(result.model, "conv2"), _node(result.model, "conv3")
    np.testing.assert_allclose(_init(result.model, conv2.input[2]), expected2, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(_init(result.model, conv3.input[2]), expected3, rtol=RTOL, atol=ATOL)
    # the pruned model's relu2 means differ from the original's: using them would give another bias
    pruned_mean2 = _channel_means(result.model, "r2", calibration, axis=1)
    assert not np.allclose(pruned_mean2, mean2[~removed2], rtol=1e-3)
    assert {r.name: r.channels for r in result.compensation.compensated} == {"conv2": 3, "conv3": 2}


def test_padding_makes_the_shift_inexact_but_the_oracle_exact():
    """With pads the compensated model is NOT the masked model with means held (borders see zeros), but it is
    the compensation reference (padding made explicit, means in the padding too)."""
    model = _conv_pair()
    calibration = _uneven_calibration((3, 6, 6), seed=5)
    result = op.prune_by_index(model, {"conv1": [1, 5]}, calibration=calibration, compensate=True)
    assert result.compensation.verification is None  # verify=False: no oracle run
    report = op.verify_compensation(model, result)
    assert report.ok and report.max_rel_error < 1e-5
    reference = op.reconstruction.compensate.compensation_reference(model, result)
    assert any(n.op_type == "Pad" for n in reference.graph.node)
    x = calibration[0]
    np.testing.assert_allclose(run(result.model, {"x": x})["y"], run(reference, {"x": x})["y"], rtol=1e-4, atol=1e-4)
    # and the oracle catches a wrong bias
    conv2 = _node(result.model, "conv2")
    broken = onnx.ModelProto()
    broken.CopyFrom(result.model)
    bias = _init(broken, conv2.input[2])
    for t in broken.graph.initializer:
        if t.name == conv2.input[2]:
            t.CopyFrom(numpy_helper.from_array((bias + 0.5).astype(np.float32), t.name))
    result.model = broken
    assert not op.verify_compensation(model, result).ok


# --------------------------------------------------------------------------- 3. Gemm consumers

def _gemm_head(trans_b: int, c_shape, seed: int = 0, alpha: float = 0.5, beta: float = 2.0) -> onnx.ModelProto:
    """conv (3 -> 8) -> relu -> GlobalAveragePool -> Flatten -> Gemm(8 -> 5, transB, alpha, beta, C)."""
    rng = np.random.default_rng(seed)
    b = rng.standard_normal((5, 8) if trans_b else (8, 5)).astype(np.float32)
    inits = {"w1": rng.standard_normal((8, 3, 3, 3)).astype(np.float32),
             "b1": rng.standard_normal(8).astype(np.float32), "B": b}
    gemm_inputs = ["f", "B"]
    if c_shape is not None:
        inits["C"] = rng.standard_normal(c_shape).astype(np.float32)
        gemm_inputs.append("C")
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["h"], name="conv1", pads=[1] * 4),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("GlobalAveragePool", ["r"], ["p"], name="gap"),
             helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
             helper.make_node("Gemm", gemm_inputs, ["y"], name="fc", transB=trans_b, alpha=alpha, beta=beta)]
    return _model(nodes, inits, {"x": ["n", 3, 6, 6]}, {"y": ["n", 5]})


@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("c_shape", [None, (5,), (1, 5), (1,)], ids=["noC", "C5", "C1x5", "Cscalar"])
def test_gemm_compensation_keeps_the_output_mean(trans_b, c_shape):
    model = _gemm_head(trans_b, c_shape)
    calibration = _uneven_calibration((3, 6, 6), seed=6)
    result = op.prune_by_index(model, {"conv1": [1, 4, 5]}, calibration=calibration, compensate=True, verify=True)
    plain = op.prune_by_index(model, {"conv1": [1, 4, 5]})
    removed = _removed(result, "f")
    assert np.flatnonzero(removed).tolist() == [1, 4, 5]

    # exact property: the Gemm is linear and the only layer after the pruned channels
    original = _output(model, calibration).mean(axis=0)
    compensated = _output(result.model, calibration).mean(axis=0)
    uncompensated = _output(plain.model, calibration).mean(axis=0)
    np.testing.assert_allclose(compensated, original, rtol=RTOL, atol=ATOL)
    assert not np.allclose(uncompensated, original, rtol=1e-3, atol=1e-3)

    # the written C: old C * beta + alpha * mean_R @ B'_R, with beta = 1
    mean = _channel_means(model, "f", calibration, axis=1)
    b = _init(model, "B").astype(np.float64)
    b_prime = b.T if trans_b else b
    c_old = np.zeros(5) if c_shape is None else np.broadcast_to(_init(model, "C").astype(np.float64).reshape(-1), 5)
    expected = 2.0 * c_old + 0.5 * np.where(removed, mean, 0.0) @ b_prime
    fc = _node(result.model, "fc")
    assert len(fc.input) == 3 and fc.input[2]
    c_new = _init(result.model, fc.input[2]).astype(np.float64)
    np.testing.assert_allclose(np.broadcast_to(c_new.reshape(-1), 5), expected, rtol=RTOL, atol=ATOL)
    if c_shape is not None:
        assert _attr(fc, "beta", 1.0) == pytest.approx(1.0)
    assert _attr(fc, "alpha", 1.0) == pytest.approx(0.5) and _attr(fc, "transB", 0) == trans_b
    # B is only sliced
    kept_b = b[~removed] if not trans_b else b[:, ~removed]
    np.testing.assert_array_equal(_init(result.model, fc.input[1]), kept_b.astype(np.float32))
    assert [(r.name, r.op_type, r.channels) for r in result.compensation.compensated] == [("fc", "Gemm", 3)]
    assert result.compensation.verification.ok


def _mlp(seed: int = 0) -> onnx.ModelProto:
    """Gemm1 (6 -> 8) -> relu1 -> Gemm2 (8 -> 7, transB=1, alpha 0.5, beta 2, C) -> relu2 -> Gemm3 (7 -> 3)."""
    rng = np.random.default_rng(seed)
    inits = {"B1": rng.standard_normal((6, 8)).astype(np.float32), "C1": rng.standard_normal(8).astype(np.float32),
             "B2": rng.standard_normal((7, 8)).astype(np.float32), "C2": rng.standard_normal(7).astype(np.float32),
             "B3": rng.standard_normal((7, 3)).astype(np.float32), "C3": rng.standard_normal(3).astype(np.float32)}
    nodes = [helper.make_node("Gemm", ["x", "B1", "C1"], ["h1"], name="fc1"),
             helper.make_node("Relu", ["h1"], ["r1"], name="relu1"),
             helper.make_node("Gemm", ["r1", "B2", "C2"], ["h2"], name="fc2", transB=1, alpha=0.5, beta=2.0),
             helper.make_node("Relu", ["h2"], ["r2"], name="relu2"),
             helper.make_node("Gemm", ["r2", "B3", "C3"], ["y"], name="fc3", alpha=1.5, beta=0.25)]
    return _model(nodes, inits, {"x": ["n", 6]}, {"y": ["n", 3]})


def test_gemm_with_pruned_outputs_gets_the_kept_part_of_its_shift():
    model = _mlp()
    rng = np.random.default_rng(7)
    calibration = [rng.standard_normal((n, 6)).astype(np.float32) for n in (5, 11)]
    result = op.prune_by_index(model, {"fc1": [0, 2, 7], "fc2": [1, 6]}, calibration=calibration,
                               compensate=True, verify=True)
    removed1, removed2 = _removed(result, "r1"), _removed(result, "r2")
    mean1 = _channel_means(model, "r1", calibration, axis=1)
    mean2 = _channel_means(model, "r2", calibration, axis=1)
    b2, c2 = _init(model, "B2").astype(np.float64), _init(model, "C2").astype(np.float64)
    b3, c3 = _init(model, "B3").astype(np.float64), _init(model, "C3").astype(np.float64)
    expected2 = (2.0 * c2 + 0.5 * np.where(removed1, mean1, 0.0) @ b2.T)[~removed2]
    expected3 = 0.25 * c3 + 1.5 * np.where(removed2, mean2, 0.0) @ b3
    fc2, fc3 = _node(result.model, "fc2"), _node(result.model, "fc3")
    np.testing.assert_allclose(_init(result.model, fc2.input[2]), expected2, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(_init(result.model, fc3.input[2]), expected3, rtol=RTOL, atol=ATOL)
    assert _attr(fc2, "beta") == pytest.approx(1.0) and _attr(fc3, "beta") == pytest.approx(1.0)
    assert _attr(fc3, "alpha") == pytest.approx(1.5)
    assert result.compensation.verification.ok


# --------------------------------------------------------------------------- 4. MatMul consumers

def _matmul_mlp(bias2: str | None, seed: int = 0) -> onnx.ModelProto:
    """x[B, T, 6] @ W1 + b1 -> relu -> @ W2 (+ b2: 'right' Add(mm, b2), 'left' Add(b2, mm), 'row' b2 of (1, 5))."""
    rng = np.random.default_rng(seed)
    inits = {"W1": rng.standard_normal((6, 8)).astype(np.float32), "b1": rng.standard_normal(8).astype(np.float32),
             "W2": rng.standard_normal((8, 5)).astype(np.float32)}
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["m1"], name="mm1"),
             helper.make_node("Add", ["m1", "b1"], ["a1"], name="add1"),
             helper.make_node("Relu", ["a1"], ["r"], name="relu")]
    if bias2 is None:
        nodes.append(helper.make_node("MatMul", ["r", "W2"], ["y"], name="mm2"))
    else:
        inits["b2"] = rng.standard_normal((1, 5) if bias2 == "row" else 5).astype(np.float32)
        nodes.append(helper.make_node("MatMul", ["r", "W2"], ["m2"], name="mm2"))
        nodes.append(helper.make_node("Add", ["b2", "m2"] if bias2 == "left" else ["m2", "b2"], ["y"], name="add2"))
    return _model(nodes, inits, {"x": ["b", 4, 6]}, {"y": ["b", 4, 5]})


@pytest.mark.parametrize("bias2", ["right", "left", "row"])
def test_matmul_bias_add_takes_the_shift(bias2):
    model = _matmul_mlp(bias2)
    calibration = _uneven_calibration((4, 6), seed=8)
    result = op.prune_by_index(model, {"mm1": [2, 3, 7]}, calibration=calibration, compensate=True, verify=True)
    removed = _removed(result, "r")
    assert np.flatnonzero(removed).tolist() == [2, 3, 7]
    mean = _channel_means(model, "r", calibration, axis=-1)  # over batch and T
    w2, b2 = _init(model, "W2").astype(np.float64), _init(model, "b2").astype(np.float64)
    expected = b2 + (np.where(removed, mean, 0.0) @ w2).reshape(b2.shape)
    add2 = _node(result.model, "add2")
    slot = 0 if bias2 == "left" else 1
    new = _init(result.model, add2.input[slot])
    assert new.shape == b2.shape
    np.testing.assert_allclose(new, expected, rtol=RTOL, atol=ATOL)
    np.testing.assert_array_equal(_init(result.model, _node(result.model, "mm2").input[1]),
                                  w2[~removed].astype(np.float32))
    # the MatMul is linear and last: the output mean over batch and T is kept
    original = _output(model, calibration).reshape(-1, 5).mean(axis=0)
    np.testing.assert_allclose(_output(result.model, calibration).reshape(-1, 5).mean(axis=0), original,
                               rtol=RTOL, atol=ATOL)
    assert [(r.name, r.op_type, r.channels) for r in result.compensation.compensated] == [("mm2", "MatMul", 3)]
    assert result.compensation.verification.ok


def test_matmul_without_bias_add_is_listed_as_skipped():
    model = _matmul_mlp(None)
    calibration = _uneven_calibration((4, 6), seed=9)
    result = op.prune_by_index(model, {"mm1": [2, 3, 7]}, calibration=calibration, compensate=True, verify=True)
    plain = op.prune_by_index(model, {"mm1": [2, 3, 7]})
    (row,) = result.compensation.layers
    assert (row.name, row.op_type) == ("mm2", "MatMul")
    assert row.skipped == "a MatMul without a bias Add has no bias to absorb the shift"
    assert row.channels == 0 and row.max_shift == 0.0
    assert result.compensation.compensated == [] and result.compensation.means == {}
    _same_initializers(result.model, plain.model)  # nothing changed for it
    assert [n.op_type for n in result.model.graph.node] == [n.op_type for n in plain.model.graph.node]
    assert result.compensation.verification.ok
    assert "skipped: a MatMul without a bias Add" in str(result.compensation)


# --------------------------------------------------------------------------- 5. errors and the CLI

def test_compensate_without_calibration_errors():
    model = _conv_pair()
    with pytest.raises(op.InvalidRequestError, match="calibration"):
        op.prune(model, "l2", 0.5, compensate=True)
    with pytest.raises(op.InvalidRequestError, match="calibration"):
        op.prune_by_index(model, {"conv1": [1]}, compensate=True)


def test_verify_compensation_needs_a_compensated_result():
    model = _conv_pair()
    plain = op.prune_by_index(model, {"conv1": [1, 5]})
    with pytest.raises(op.InvalidRequestError, match="not compensated"):
        op.verify_compensation(model, plain)


def test_cli_prune_compensate(tmp_path, capsys):
    from onnxprune.cli import main

    model = _conv_pair(bias2=False)
    source = tmp_path / "m.onnx"
    onnx.save(model, source)
    data = tmp_path / "cal.npy"
    calibration = np.random.default_rng(10).standard_normal((12, 3, 6, 6)).astype(np.float32)
    np.save(data, calibration)
    out = tmp_path / "out.onnx"
    assert main(["prune", str(source), "-o", str(out), "--method", "l2", "--ratio", "0.25", "--compensate",
                 "--calibration", str(data), "--verify"]) == 0
    printed = capsys.readouterr().out
    assert "compensation oracle: ok" in printed and "mask oracle: ok" in printed
    written = onnx.load(out)
    onnx.checker.check_model(written, full_check=True)
    ort.InferenceSession(written.SerializeToString(), providers=["CPUExecutionProvider"])
    ir.check_io(model, written)
    # the same as the API on the same data: a bias appeared on conv2, holding the removed channels' shift
    api = op.prune(model, "l2", 0.25, calibration=calibration, compensate=True)
    conv2 = _node(written, "conv2")
    np.testing.assert_allclose(_init(written, conv2.input[2]),
                               _init(api.model, _node(api.model, "conv2").input[2]), rtol=RTOL, atol=ATOL)

    missing = tmp_path / "missing.onnx"
    assert main(["prune", str(source), "-o", str(missing), "--ratio", "0.25", "--compensate"]) == 2
    assert "--calibration" in capsys.readouterr().err
    assert not missing.exists() and not os.path.exists(str(missing) + ".data")
    assert sorted(os.listdir(tmp_path)) == ["cal.npy", "m.onnx", "out.onnx"]


# --------------------------------------------------------------------------- unnamed nodes

def _unnamed(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for node in out.graph.node:
        node.name = ""
    ir.set_base_dir(out, ir.base_dir(model))
    return out


def test_unnamed_nodes_compensation_oracle():
    model = _unnamed(_conv_pair())
    calibration = _uneven_calibration((3, 6, 6), seed=11)
    result = op.prune(model, "l2", 0.5, calibration=calibration, compensate=True, verify=True)
    assert result.compensation.verification.ok


def test_unnamed_nodes_get_the_same_compensation_as_named_ones():
    model = _fixture("yolo_c2f_legacy")  # the surgery folds its Shape/Gather chain: node indices move
    calibration = [make_inputs(model, seed=s) for s in range(2)]
    named = op.prune(model, "l2", 0.3, calibration=calibration, compensate=True)
    unnamed = op.prune(_unnamed(model), "l2", 0.3, calibration=calibration, compensate=True)
    assert len(unnamed.compensation.compensated) == len(named.compensation.compensated)
    for a, b in zip(named.model.graph.node, unnamed.model.graph.node):
        if a.op_type == "Conv" and len(a.input) > 2:
            np.testing.assert_allclose(_init(unnamed.model, b.input[2]), _init(named.model, a.input[2]),
                                       rtol=RTOL, atol=ATOL)


# --------------------------------------------------------------------------- dtypes and calibration forms

def _as_float16(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for t in out.graph.initializer:
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16), t.name))
    for v in list(out.graph.input) + list(out.graph.output):
        v.type.tensor_type.elem_type = onnx.TensorProto.FLOAT16
    return out


def test_float16_model_passes_the_compensation_oracle():
    model = _as_float16(_conv_pair())
    calibration = [a.astype(np.float16) for a in _uneven_calibration((3, 6, 6))]
    result = op.prune_by_index(model, {"conv1": [1, 5]}, calibration=calibration, compensate=True, verify=True)
    assert result.compensation.verification.ok
    assert _init(result.model, result.model.graph.node[-1].input[2]).dtype == np.float16


def test_one_shot_generator_serves_the_criterion_compensation_and_reconstruction():
    model = _conv_pair()
    batches = _uneven_calibration((3, 6, 6))
    listed = op.prune(model, "activation", 0.5, calibration=batches, compensate=True, reconstruct=True)
    streamed = op.prune(model, "activation", 0.5, calibration=(b for b in batches), compensate=True,
                        reconstruct=True)
    assert len(streamed.compensation.compensated) == 1 and len(streamed.reconstruction.fitted) == 1
    for a, b in zip(listed.model.graph.initializer, streamed.model.graph.initializer):
        np.testing.assert_array_equal(numpy_helper.to_array(a), numpy_helper.to_array(b))
