"""Data-based criteria (activation, nn, snp) and the calibration pass behind them."""
from __future__ import annotations

import io
import os

import numpy as np
import onnx
import onnx.numpy_helper
import pytest

import onnxprune as op
from onnxprune import calibration
from onnxprune.criteria import CriterionContext, criterion_for
from onnxprune.errors import InvalidRequestError
from onnxprune.runtime import make_inputs, run
from graphs import GraphBuilder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def fixture(name: str) -> str:
    return os.path.join(ROOT, "fixtures", f"{name}.onnx")


def batches_for(model, n: int = 3, batch: int = 3) -> list[dict[str, np.ndarray]]:
    return [make_inputs(model, seed=k, dims={"batch": batch}) for k in range(n)]


def scores(analysis, method: str, data, options: op.Options | None = None) -> dict[int, np.ndarray]:
    groups = [g.id for g in analysis.groups if g.prunable]
    return criterion_for(method)(CriterionContext(analysis, options or op.Options(), groups, data))


def conv_chain():
    g = GraphBuilder()
    relu = g.node("Relu", [g.conv("x", 3, 8, "c1")], name="act")
    g.conv(relu, 8, 4, "c2", k=1)
    g.nodes[-1].output[0] = "y"
    return g.model({"x": ("batch", 3, 8, 8)}, {"y": ("batch", 4, 8, 8)})


def stacked(data: list[dict], tensor: str, model) -> np.ndarray:
    return np.concatenate([run(model, batch, [tensor])[tensor] for batch in data])


# --------------------------------------------------------------------------- against numpy

def test_activation_and_nn_match_numpy_on_a_conv_chain():
    model = conv_chain()
    a = op.analyze(model)
    data = batches_for(model)
    feature = stacked(data, "act_out", model)  # c1's output after its Relu: (samples, 8, 8, 8)
    group = a.layer("c1").group
    expected_l2 = np.sqrt((feature ** 2).sum(axis=(2, 3))).mean(axis=0)
    expected_nn = np.linalg.svd(feature, compute_uv=False).sum(axis=-1).mean(axis=0)
    np.testing.assert_allclose(scores(a, "activation", data)[group], expected_l2, rtol=1e-5)
    np.testing.assert_allclose(scores(a, "nn", data)[group], expected_nn, rtol=1e-4)


def test_token_features_and_dims_shared_by_heads_combine_into_units():
    a = op.analyze(fixture("vit_attention_legacy"))
    data = batches_for(a.model)
    mlp = stacked(data, "/block/mlp/mlp.0/Add_output_0", a.model)  # (samples, tokens, 64), before GELU's fork
    per_token_l2 = np.sqrt((mlp ** 2).sum(axis=1)).mean(axis=0)
    value = stacked(data, "/block/attn/v/Add_output_0", a.model)  # (samples, tokens, 4 heads * 8 dims)
    per_dim = np.sqrt((value ** 2).sum(axis=1)).mean(axis=0).reshape(4, 8).mean(axis=0)  # group_policy average
    mlp_group, v_group = a.layer("/block/mlp/mlp.0/MatMul").group, a.layer("/block/attn/v/MatMul").group
    for method in ("activation", "nn"):
        result = scores(a, method, data)
        np.testing.assert_allclose(result[mlp_group], per_token_l2, rtol=1e-5)
        np.testing.assert_allclose(result[v_group], per_dim, rtol=1e-5)


def test_snp_query_key_scores_match_numpy():
    a = op.analyze(fixture("vit_attention_legacy"))
    data = batches_for(a.model)
    q = stacked(data, "/block/attn/Transpose_output_0", a.model)  # (samples, heads, tokens, dim)
    k = stacked(data, "/block/attn/Transpose_2_output_0", a.model)  # (samples, heads, dim, tokens)
    contribution = np.linalg.norm(q, axis=2) * np.linalg.norm(k, axis=3)
    expected = np.sqrt((contribution ** 2).sum(axis=1)).mean(axis=0)
    with pytest.warns(RuntimeWarning, match="scored by l2"):
        result = scores(a, "snp", data)
    np.testing.assert_allclose(result[a.layer("/block/attn/q/MatMul").group], expected, rtol=1e-5)


def test_snp_value_redundancy_zeroes_a_neuron_another_head_repeats():
    from onnxprune.criteria.data import InterHeadRedundancy

    rng = np.random.default_rng(0)
    o = rng.standard_normal((5, 2, 7, 3))  # (samples, heads, tokens, dims)
    o[:, 1, :, 0] = 2.0 * o[:, 0, :, 0]  # head 1's dim 0 repeats head 0's dim 0
    stat = InterHeadRedundancy("o")
    stat.update(o[:2])
    stat.update(o[2:])  # streamed in two batches
    score = stat.result().reshape(2, 3)  # per (head, dim)
    np.testing.assert_allclose(score[:, 0], 0.0, atol=1e-12)
    rms = np.sqrt((o[:, :, :, 1:] ** 2).mean(axis=(0, 2)))
    assert (score[:, 1:] > 0).all() and (score[:, 1:] < rms).all()


ATTENTION = {"vit_attention_legacy": ("/block/attn/q/MatMul", "/block/attn/v/MatMul"),
             "gqa_dynamo": ("node_MatMul_2", "node_MatMul_32")}


@pytest.mark.parametrize("name", sorted(ATTENTION))
@pytest.mark.parametrize("axis", [-1, 0])
def test_snp_scores_query_key_and_value_groups(name, axis):
    options = op.Options(reshape_channel_axis=axis)
    a = op.analyze(fixture(name), options)
    with pytest.warns(RuntimeWarning, match="not attention groups"):
        result = scores(a, "snp", batches_for(a.model), options)
    for layer in ATTENTION[name]:  # dims mode: Q/K and V groups; heads mode: one group per head
        g = a.layer(layer).group
        assert result[g].shape == (a.groups[g].size,)
        assert np.isfinite(result[g]).all() and (result[g] > 0).all()


@pytest.mark.parametrize("name", sorted(ATTENTION))
def test_snp_prune_passes_the_mask_oracle(name):
    with pytest.warns(RuntimeWarning, match="scored by l2"):
        r = op.prune(fixture(name), method="snp", ratio=0.3, calibration=batches_for(fixture(name)), verify=True)
    assert r.verification.ok and r.pruned_groups


@pytest.mark.parametrize("name", ["resnet_legacy", "mobilenetv2_legacy", "densenet_legacy"])
@pytest.mark.parametrize("method", ["nn", "activation", "PR_NN"])
def test_cnn_prune_passes_the_mask_oracle(name, method):
    r = op.prune(fixture(name), method=method, ratio=0.3, calibration=batches_for(fixture(name)), verify=True)
    assert r.verification.ok and r.pruned_groups


# --------------------------------------------------------------------------- the pass

def test_one_session_for_every_statistic(monkeypatch):
    a = op.analyze(fixture("resnet_legacy"))
    built = []

    def counting(model):
        built.append(len(model.graph.output))
        return real(model)

    real = calibration.session
    monkeypatch.setattr(calibration, "session", counting)
    scores(a, "nn", batches_for(a.model, n=5))
    assert len(built) == 1 and built[0] > len(a.model.graph.output)


def test_streaming_equals_one_concatenated_batch():
    a = op.analyze(fixture("resnet_legacy"))
    data = batches_for(a.model, n=12, batch=2)
    whole = {"input": np.concatenate([d["input"] for d in data])}
    for method in ("activation", "nn"):
        streamed, at_once = scores(a, method, (d for d in data)), scores(a, method, whole)
        assert streamed.keys() == at_once.keys()
        for g in at_once:
            np.testing.assert_allclose(streamed[g], at_once[g], rtol=1e-6)


def test_large_batches_are_split_and_bare_arrays_accepted():
    model = conv_chain()
    x = make_inputs(model, dims={"batch": 70})["x"]
    sizes = [len(feed["x"]) for _, feed in calibration.batches(model, x, batch_size=32)]
    assert sizes == [32, 32, 6]
    stat = {"s": calibration.SampleMean(("act_out",), lambda t: t.reshape(len(t), -1))}
    split = calibration.collect(model, x, stat)["s"]
    stat = {"s": calibration.SampleMean(("act_out",), lambda t: t.reshape(len(t), -1))}
    whole = calibration.collect(model, [{"x": x}], stat, batch_size=100)["s"]
    np.testing.assert_allclose(split, whole, rtol=1e-6)


def test_npz_file_is_one_batch(tmp_path):
    model = conv_chain()
    path = tmp_path / "calib.npz"
    np.savez(path, **make_inputs(model))
    (k, feed), = calibration.batches(model, str(path))
    assert k == 0 and feed["x"].shape == (2, 3, 8, 8)


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_only_on_a_tty():
    model = conv_chain()
    stat = lambda: {"s": calibration.SampleMean(("x",), lambda t: t.reshape(len(t), -1))}  # noqa: E731
    shown, quiet = FakeTTY(), io.StringIO()
    calibration.collect(model, batches_for(model, n=6), stat(), stream=shown)
    calibration.collect(model, batches_for(model, n=6), stat(), stream=quiet)
    assert "calibration" in shown.getvalue() and "6/6" in shown.getvalue() and shown.getvalue().endswith("\n")
    assert quiet.getvalue() == ""


# --------------------------------------------------------------------------- bad input

def two_inputs():
    g = GraphBuilder()
    g.conv(g.node("Add", ["a", "b"], name="sum"), 3, 4, "c1")
    g.nodes[-1].output[0] = "y"
    return g.model({"a": ("batch", 3, 8, 8), "b": ("batch", 3, 8, 8)}, {"y": ("batch", 4, 8, 8)})


@pytest.mark.parametrize("method", ["nn", "activation", "snp", "PR_SNP"])
def test_data_criteria_need_calibration(method):
    with pytest.raises(InvalidRequestError, match=f"'{method.lower().replace('pr_', '')}' needs calibration data"):
        op.prune(fixture("resnet_legacy"), method=method, ratio=0.3)


X = np.zeros((2, 3, 8, 8), np.float32)


@pytest.mark.parametrize("data, message", [
    ({"input": X}, r"input names \['input'\] do not match .*'x' \(batch, 3, 8, 8\) float32.*unknown: \['input'\]"),
    ({"x": X[:, :, :4]}, r"shape \(2, 3, 4, 8\), axis 2 differs; the model expects 'x' \(batch, 3, 8, 8\)"),
    ({"x": X[0]}, r"rank 3"),
    ({"x": X.astype(np.float64)}, r"dtype float64.*astype\(np.float32\)"),
    ([{"x": X}, {"x": X[:, :2]}], r"calibration batch 1"),
    ([], r"calibration data is empty"),
    (42, r"calibration must be"),
    ("missing.npz", r"not an existing .npz"),
])
def test_bad_calibration_is_a_clear_error(data, message):
    a = op.analyze(conv_chain())
    with pytest.raises(InvalidRequestError, match=message):
        scores(a, "nn", data)


def test_bare_arrays_need_a_single_input_model():
    a = op.analyze(two_inputs())
    with pytest.raises(InvalidRequestError, match=r"inputs \['a', 'b'\]; pass a dict"):
        scores(a, "activation", np.zeros((2, 3, 8, 8), np.float32))
    with pytest.raises(InvalidRequestError, match=r"missing: \['b'\]"):
        scores(a, "activation", {"a": np.zeros((2, 3, 8, 8), np.float32)})


def test_fluctuation_is_the_error_left_under_mean_compensation():
    """score^2 of a channel = ||W_consumer[:, c]||^2 x Var(x_c) (FLAP), x_c the consumer's input channel."""
    model = conv_chain()
    a = op.analyze(model)
    data = batches_for(model)
    feature = stacked(data, "act_out", model)  # what c2 reads: (samples, 8, 8, 8)
    weight = next(t for t in model.graph.initializer if t.name == model.graph.node[-1].input[1])
    w = onnx.numpy_helper.to_array(weight).astype(np.float64)  # (4, 8, 1, 1)
    expected = np.sqrt(np.square(w).sum(axis=(0, 2, 3)) * feature.astype(np.float64).var(axis=(0, 2, 3)))
    np.testing.assert_allclose(scores(a, "fluctuation", data)[a.layer("c1").group], expected, rtol=1e-5)


def test_fluctuation_zero_means_compensation_removes_the_channel_exactly():
    """A channel the consumer sees as a constant scores 0, and pruning it with compensation changes nothing."""
    model = conv_chain()
    weight, bias = model.graph.node[0].input[1:3]
    for t in model.graph.initializer:  # c1's channel 5: zero filter, positive bias -> a constant after the Relu
        if t.name in (weight, bias):
            value = onnx.numpy_helper.to_array(t).copy()
            value[5] = 0.0 if t.name == weight else 0.7
            t.CopyFrom(onnx.numpy_helper.from_array(value, t.name))
    a = op.analyze(model)
    data = batches_for(model)
    score = scores(a, "fluctuation", data)[a.layer("c1").group]
    assert score[5] == pytest.approx(0.0, abs=1e-6) and score.argmin() == 5
    result = op.prune(model, "fluctuation", ratios={"c1": 1 / 8}, options=op.Options(step_size=1),
                      calibration=data, compensate=True)
    for batch in data:
        np.testing.assert_allclose(run(result.model, batch, ["y"])["y"], run(model, batch, ["y"])["y"], atol=1e-4)


def test_fluctuation_scores_groups_without_a_consumer_weight_by_activation():
    a = op.analyze(fixture("vit_attention_legacy"))
    data = batches_for(a.model)
    q_group = a.layer("/block/attn/q/MatMul").group  # Q dims meet K in an activation MatMul: no weight reads them
    np.testing.assert_allclose(scores(a, "fluctuation", data)[q_group], scores(a, "activation", data)[q_group])
