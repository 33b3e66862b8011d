"""Least-squares reconstruction (onnxprune.reconstruction): prune(..., reconstruct=True), decompose(...)."""
from __future__ import annotations

import os
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxprune as op
from onnxprune import ir
from onnxprune.reconstruction import FewSamplesWarning, reconstruct_pruned, refit
from onnxprune.reconstruction.refit import DEFAULT_PASSES, SHARE_TOLERANCE
from onnxprune.runtime import make_inputs, run

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures")


def _fixture(name: str) -> onnx.ModelProto:
    return onnx.load(os.path.join(FIXTURES, f"{name}.onnx"))


def _calibration(model: onnx.ModelProto, batches: int = 4, batch: int = 4) -> list[dict]:
    return [make_inputs(model, seed=s, dims={"batch": batch}) for s in range(batches)]


def _output_error(reference: onnx.ModelProto, model: onnx.ModelProto, calibration: list[dict]) -> float:
    """||y - y_ref|| / ||y_ref|| over the graph outputs and the calibration batches."""
    outputs = [o.name for o in reference.graph.output]
    num = den = 0.0
    for feed in calibration:
        ref, got = run(reference, feed, outputs), run(model, feed, outputs)
        for name in outputs:
            num += float(np.sum((ref[name].astype(np.float64) - got[name]) ** 2))
            den += float(np.sum(ref[name].astype(np.float64) ** 2))
    return float(np.sqrt(num / den))


def _valid(reference: onnx.ModelProto, model: onnx.ModelProto) -> None:
    onnx.checker.check_model(model, full_check=True)
    ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    ir.check_io(reference, model)


# --------------------------------------------------------------------------- the linear fixture

def _linear_model(seed: int = 0) -> onnx.ModelProto:
    """conv1 (3 -> 8, 3x3) -> conv2 (8 -> 5, 3x3, stride 2, dilation 1, pads 1), no nonlinearity; conv1's
    channels 4..7 are linear combinations of channels 0..3 (weights and biases)."""
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    b1 = rng.standard_normal(8).astype(np.float32)
    mix = rng.standard_normal((4, 4)).astype(np.float32)
    w1[4:] = np.einsum("jk,kcxy->jcxy", mix, w1[:4])
    b1[4:] = mix @ b1[:4]
    w2 = rng.standard_normal((5, 8, 3, 3)).astype(np.float32)
    b2 = rng.standard_normal(5).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["h"], name="conv1", pads=[1] * 4),
             helper.make_node("Conv", ["h", "w2", "b2"], ["y"], name="conv2", pads=[1] * 4, strides=[2, 2])]
    inits = [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))]
    graph = helper.make_graph(nodes, "linear", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 5, 4, 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def test_linear_dependent_channels_are_reconstructed_exactly():
    model = _linear_model()
    data = np.random.default_rng(1).standard_normal((16, 3, 8, 8)).astype(np.float32)
    plain = op.prune_by_index(model, {"conv1": [4, 5, 6, 7]})
    result = op.prune_by_index(model, {"conv1": [4, 5, 6, 7]}, calibration=data, reconstruct=True, ridge=1e-10)
    assert _output_error(model, plain.model, [{"x": data}]) > 0.1
    assert _output_error(model, result.model, [{"x": data}]) < 1e-5
    test = np.random.default_rng(2).standard_normal((4, 3, 8, 8)).astype(np.float32)
    assert _output_error(model, result.model, [{"x": test}]) < 1e-5  # the exact solution generalises
    (row,) = result.reconstruction.layers
    assert row.name == "conv2" and row.updated and row.error_after < 1e-5 < row.error_before
    assert row.unknowns == 4 * 9 + 1 and row.rows == 16 * 4 * 4
    # the default ridge is close too, and verify= still checks the surgery (the unreconstructed model)
    default = op.prune_by_index(model, {"conv1": [4, 5, 6, 7]}, calibration=data, reconstruct=True, verify=True)
    assert default.verification.ok
    assert _output_error(model, default.model, [{"x": data}]) < 1e-2


def _chain_model(seed: int = 0) -> onnx.ModelProto:
    """_linear_model's conv1 -> conv2, then Relu -> conv3 (5 -> 3, 1x1, no bias)."""
    model = _linear_model(seed)
    w3 = np.random.default_rng(seed + 10).standard_normal((3, 5, 1, 1)).astype(np.float32)
    graph = model.graph
    graph.node[1].output[0] = "z"
    graph.node.extend([helper.make_node("Relu", ["z"], ["r"], name="relu"),
                       helper.make_node("Conv", ["r", "w3"], ["y"], name="conv3")])
    graph.initializer.append(numpy_helper.from_array(w3, "w3"))
    graph.output[0].type.tensor_type.shape.dim[1].dim_value = 3
    return model


def test_one_pass_serves_several_stages():
    """conv2 (stage 0) and conv3 (stage 1) fitted from one pass: conv3 reads the unpruned Relu output at its kept
    channels, what conv2 is being fitted to produce. conv2's fit is exact here (conv1's removed channels are
    combinations of the kept ones), so the one-pass fit equals the stage-by-stage one."""
    model = _chain_model()
    data = np.random.default_rng(1).standard_normal((16, 3, 8, 8)).astype(np.float32)
    runs = {}
    for passes in (None, 1):
        runs[passes] = op.prune_by_index(model, {"conv1": [4, 5, 6, 7], "conv2": [0]})
        reconstruct_pruned(model, runs[passes], data, ridge=1e-10, passes=passes)
    assert runs[None].reconstruction.passes == 2 and runs[1].reconstruction.passes == 1
    rows = {p: {r.name: r for r in run.reconstruction.fitted} for p, run in runs.items()}
    assert rows[1]["conv3"].stage == 1 and rows[1]["conv3"].updated and rows[1]["conv2"].error_after < 1e-5
    assert rows[1]["conv3"].error_after == pytest.approx(rows[None]["conv3"].error_after, rel=1e-3, abs=1e-6)

    def weights(run) -> np.ndarray:
        node = next(n for n in run.model.graph.node if n.name == "conv3")
        return numpy_helper.to_array(next(t for t in run.model.graph.initializer if t.name == node.input[1]))

    np.testing.assert_allclose(weights(runs[1]), weights(runs[None]), rtol=1e-3, atol=1e-4)
    assert _output_error(runs[None].model, runs[1].model, [{"x": data}]) < 1e-4


def test_a_shared_pass_stops_where_a_fit_stays_far():
    """conv1 keeps one channel of eight: conv2 cannot reproduce its unpruned output, so conv3 is not fitted on the
    unpruned input in the same pass but in a second one, on conv2's re-fitted output, as stage by stage."""
    model = _chain_model()
    data = np.random.default_rng(1).standard_normal((16, 3, 8, 8)).astype(np.float32)
    runs = {}
    for passes in (None, 1):
        runs[passes] = op.prune_by_index(model, {"conv1": [1, 2, 3, 4, 5, 6, 7], "conv2": [0]})
        reconstruct_pruned(model, runs[passes], data, passes=passes)
    conv2 = next(r for r in runs[1].reconstruction.fitted if r.name == "conv2")
    assert conv2.error_after > SHARE_TOLERANCE and runs[1].reconstruction.passes == 2
    for a, b in zip(runs[None].model.graph.initializer, runs[1].model.graph.initializer):
        np.testing.assert_array_equal(numpy_helper.to_array(a), numpy_helper.to_array(b))


def test_grouped_conv_is_fitted_per_group():
    model = _linear_model()
    conv2 = model.graph.node[1]
    conv2.attribute.append(helper.make_attribute("group", 2))
    w2 = numpy_helper.to_array(model.graph.initializer[2])[:, :4]
    model.graph.initializer[2].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(np.concatenate([w2, w2[:1]])[:4]), "w2"))
    # 4 outputs, 2 groups of 4 inputs each
    model.graph.initializer[3].CopyFrom(numpy_helper.from_array(np.zeros(4, np.float32), "b2"))
    model.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 4
    onnx.checker.check_model(model, full_check=True)
    data = np.random.default_rng(1).standard_normal((8, 3, 8, 8)).astype(np.float32)
    result = op.prune(model, "l2", 0.5, calibration=data, reconstruct=True)
    fitted = [r for r in result.reconstruction.layers if r.skipped is None]
    _valid(model, result.model)
    assert fitted and all(r.error_after <= r.error_before for r in fitted)


# --------------------------------------------------------------------------- coupling fixtures

@pytest.mark.parametrize("name", ["resnet_legacy", "mobilenetv2_legacy", "densenet_legacy",
                                  "squeezenet_fire_legacy", "vit_attention_legacy", "flatten_conv1d_legacy"])
def test_fixture_reconstruction_is_valid_and_closer(name):
    model = _fixture(name)
    calibration = _calibration(model)
    plain = op.prune(model, "l2", 0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FewSamplesWarning)
        result = op.prune(model, "l2", 0.5, calibration=calibration, reconstruct=True)
    _valid(model, result.model)
    report = result.reconstruction
    assert report.fitted and min(report.stages, DEFAULT_PASSES) <= report.passes <= report.stages  # shared passes
    assert any(r.updated for r in report.layers)
    for r in report.fitted:
        assert r.error_after <= r.error_before
    # same shapes as the plain pruned model: only values changed
    plain_shapes = {t.name: list(t.dims) for t in plain.model.graph.initializer}
    for t in result.model.graph.initializer:
        if t.name in plain_shapes:
            assert list(t.dims) == plain_shapes[t.name] or len(t.dims) == 1, t.name
    assert _output_error(model, result.model, calibration) < _output_error(model, plain.model, calibration)


def test_decompose_refits_last_factor():
    model = _fixture("resnet_legacy")
    calibration = _calibration(model)
    plain = op.decompose(model, "tucker", rank_ratio=0.25, rank_step=1)
    result = op.decompose(model, "tucker", rank_ratio=0.25, rank_step=1, calibration=calibration, reconstruct=True)
    _valid(model, result.model)
    names = {r.name for r in result.reconstruction.fitted}
    assert names == {layer.nodes[-1] for layer in result.decomposed}
    # a chain's last factor reads a tensor the source model lacks: no stage reads the source, one pass each
    assert result.reconstruction.passes == result.reconstruction.stages
    assert all(r.error_after <= r.error_before for r in result.reconstruction.fitted)
    assert _output_error(model, result.model, calibration) < _output_error(model, plain.model, calibration)
    assert plain.reconstruction is None


# --------------------------------------------------------------------------- data checks

def test_too_few_samples_still_fits_and_warns():
    model = _fixture("flatten_conv1d_legacy")
    calibration = [make_inputs(model, seed=0, dims={"batch": 2})]
    with pytest.warns(FewSamplesWarning, match="ridge regulariser"):
        result = op.prune(model, "l2", 0.5, calibration=calibration, reconstruct=True)
    row = next(r for r in result.reconstruction.fitted if r.op_type == "Gemm")
    assert row.rows < row.unknowns and "regulariser" in row.note
    assert np.isfinite(row.error_after) and row.error_after < row.error_before
    _valid(model, result.model)


@pytest.mark.filterwarnings("ignore::onnxprune.reconstruction.FewSamplesWarning")
def test_bad_calibration_data_errors():
    model = _fixture("resnet_legacy")
    good = make_inputs(model, dims={"batch": 2})["input"]
    with pytest.raises(op.InvalidRequestError, match="calibration"):
        op.prune(model, "l2", 0.5, reconstruct=True)
    with pytest.raises(op.InvalidRequestError, match="shape"):
        op.prune(model, "l2", 0.5, calibration=good[:, :, :8], reconstruct=True)
    with pytest.raises(op.InvalidRequestError, match="dtype"):
        op.prune(model, "l2", 0.5, calibration=good.astype(np.float64), reconstruct=True)
    with pytest.raises(op.InvalidRequestError, match="one-shot"):
        op.prune(model, "l2", 0.5, calibration=(b for b in [good]), reconstruct=True)
    with pytest.raises(op.InvalidRequestError, match="ridge"):
        op.prune(model, "l2", 0.5, calibration=good, reconstruct=True, ridge=-1)
    with pytest.raises(op.InvalidRequestError, match="calibration"):
        op.decompose(model, "svd", rank_ratio=0.5, reconstruct=True)
    # a function returning a fresh iterable serves a generator once per stage
    result = op.prune(model, "l2", 0.5, calibration=lambda: (b for b in [good]), reconstruct=True)
    assert result.reconstruction.stages > 1


def test_refit_stages_share_passes():
    model = _fixture("squeezenet_fire_legacy")
    result = op.prune(model, "l2", 0.5, calibration=_calibration(model, 2), reconstruct=True)
    stages = {r.stage for r in result.reconstruction.fitted}
    assert result.reconstruction.passes == len(stages) < len(result.reconstruction.fitted)


def test_cli_prune_reconstruct(tmp_path):
    from onnxprune.cli import main

    source = tmp_path / "m.onnx"
    onnx.save(_fixture("resnet_legacy"), source)
    data = tmp_path / "cal.npy"
    np.save(data, make_inputs(_fixture("resnet_legacy"), dims={"batch": 16})["input"])
    out = tmp_path / "out.onnx"
    assert main(["prune", str(source), "-o", str(out), "--ratio", "0.5", "--reconstruct", "--calibration", str(data),
                 "--ridge", "1e-2", "--verify"]) == 0
    _valid(onnx.load(source), onnx.load(out))
    assert main(["prune", str(source), "-o", str(tmp_path / "x.onnx"), "--ratio", "0.5", "--reconstruct"]) != 0
