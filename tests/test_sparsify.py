"""op.sparsify: exact sparsity, N:M, magnitude order, numpy oracle, storage forms, extension API, bad input."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxprune as op
from onnxprune.sparsity import STRATEGIES, base
from onnxprune.runtime import run

RNG = np.random.default_rng(7)
X_SHAPE = (2, 4, 6, 6)
WEIGHTS = ("conv1.weight", "conv2.weight", "fc.weight", "proj")


def _net(ties: bool = False) -> onnx.ModelProto:
    """x -> Conv(4->8, 3x3) -> Relu -> Conv(8->8, 3x3, group 2) -> Flatten -> Gemm(288->16, transB) -> Relu
    -> MatMul(16->12). With `ties`, weights are rounded so that many |w| are equal."""
    def arr(shape):
        a = RNG.standard_normal(shape).astype(np.float32)
        return np.round(a * 2) / 2 if ties else a

    inits = {"conv1.weight": arr((8, 4, 3, 3)), "conv1.bias": arr((8,)), "conv2.weight": arr((8, 4, 3, 3)),
             "conv2.bias": arr((8,)), "fc.weight": arr((16, 288)), "fc.bias": arr((16,)), "proj": arr((16, 12))}
    nodes = [helper.make_node("Conv", ["x", "conv1.weight", "conv1.bias"], ["c1"], name="conv1", pads=[1] * 4),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "conv2.weight", "conv2.bias"], ["c2"], name="conv2", pads=[1] * 4,
                              group=2),
             helper.make_node("Flatten", ["c2"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "fc.weight", "fc.bias"], ["g"], name="fc", transB=1),
             helper.make_node("Relu", ["g"], ["r2"], name="relu2"),
             helper.make_node("MatMul", ["r2", "proj"], ["y"], name="head")]
    graph = helper.make_graph(nodes, "net", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 12])],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.fixture(scope="module")
def net():
    return _net()


def _weights(model) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def _conv(x, w, b, group=1):
    n, c, h, wd = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (3, 3), axis=(2, 3))  # n, c, h, w, 3, 3
    o = w.shape[0]
    outs = []
    for g in range(group):
        ci = slice(g * c // group, (g + 1) * c // group)
        co = slice(g * o // group, (g + 1) * o // group)
        outs.append(np.einsum("nchwij,ocij->nohw", win[:, ci], w[co], dtype=np.float64))
    return np.concatenate(outs, axis=1) + b[None, :, None, None]


def _numpy_forward(w: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    h = np.maximum(_conv(x, w["conv1.weight"], w["conv1.bias"]), 0)
    h = _conv(h, w["conv2.weight"], w["conv2.bias"], group=2).reshape(len(x), -1)
    h = np.maximum(h @ w["fc.weight"].T.astype(np.float64) + w["fc.bias"], 0)
    return h @ w["proj"]


# --------------------------------------------------------------------------- exact sparsity

@pytest.mark.parametrize("strategy", ["random", "global_magnitude"])
@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.9])
def test_global_sparsity_is_exact(net, strategy, sparsity):
    r = op.sparsify(net, strategy, sparsity)
    weights = _weights(r.model)
    total = sum(weights[n].size for n in WEIGHTS)
    zeros = sum(int((weights[n] == 0).sum()) for n in WEIGHTS)
    assert zeros == int(np.floor(sparsity * total + 0.5))
    assert r.report.achieved_sparsity == pytest.approx(zeros / total)


@pytest.mark.parametrize("sparsity", [0.25, 0.5, 0.77])
def test_layerwise_sparsity_is_exact_in_every_layer(net, sparsity):
    weights = _weights(op.sparsify(net, "layer_magnitude", sparsity).model)
    for name in WEIGHTS:
        assert int((weights[name] == 0).sum()) == int(np.floor(sparsity * weights[name].size + 0.5)), name


def test_magnitude_removes_exactly_the_smallest_with_deterministic_ties():
    model = _net(ties=True)
    original = _weights(model)
    r = op.sparsify(model, "global_magnitude", 0.4)
    flat = np.concatenate([np.abs(original[n]).reshape(-1) for n in WEIGHTS])
    k = int(np.floor(0.4 * flat.size + 0.5))
    expected = np.ones(flat.size, bool)
    expected[np.argsort(flat, kind="stable")[:k]] = False  # ties: earlier layer, then earlier element
    got = np.concatenate([r.masks[n].reshape(-1) for n in WEIGHTS])
    assert np.array_equal(got, expected)
    assert flat[~got].max() <= flat[got].min()
    assert _same(r.masks, op.sparsify(model, "global_magnitude", 0.4).masks)  # deterministic


def test_layer_magnitude_threshold_per_layer(net):
    original = _weights(net)
    r = op.sparsify(net, "layer_magnitude", 0.6)
    for name in WEIGHTS:
        a = np.abs(original[name])
        assert a[~r.masks[name]].max() <= a[r.masks[name]].min()


def test_magnitude_gradient_uses_w_times_g(net):
    grads = {n: RNG.standard_normal(v.shape).astype(np.float32) for n, v in _weights(net).items()}
    original = _weights(net)
    r = op.sparsify(net, "layer_magnitude_gradient", 0.5, gradients=grads)
    for name in WEIGHTS:
        expected = base.fraction_mask(np.abs(original[name].astype(np.float64) * grads[name]), 0.5)
        assert np.array_equal(r.masks[name], expected)
    g = op.sparsify(net, "global_magnitude_gradient", 0.5, gradients=grads)
    assert g.report.achieved_sparsity == pytest.approx(0.5, abs=1e-3)


def test_activation_magnitude_scales_by_input_channel_magnitude(net):
    x = RNG.standard_normal((5,) + X_SHAPE[1:]).astype(np.float32)
    original = _weights(net)
    r = op.sparsify(net, "layer_activation_magnitude", 0.5, calibration=x)
    # fc: input channel k of the flattened conv2 output; importance |w[o, k]| * mean_n |f[n, k]|
    f = run(net, {"x": x}, outputs=["f"])["f"]
    importance = np.abs(original["fc.weight"].astype(np.float64)) * np.abs(f).mean(axis=0)[None, :]
    assert np.array_equal(r.masks["fc.weight"], base.fraction_mask(importance, 0.5))
    # conv2 (group 2): weight [o, i] multiplies input channel (o // 4) * 4 + i
    r1 = run(net, {"x": x}, outputs=["r1"])["r1"]
    a = np.abs(r1).mean(axis=(0, 2, 3))
    channel = (np.arange(8)[:, None] // 4) * 4 + np.arange(4)[None, :]
    importance = np.abs(original["conv2.weight"].astype(np.float64)) * a[channel][:, :, None, None]
    assert np.array_equal(r.masks["conv2.weight"], base.fraction_mask(importance, 0.5))
    assert op.sparsify(net, "global_activation_magnitude", 0.5, calibration=x).report.achieved_sparsity == \
        pytest.approx(0.5, abs=1e-3)


@pytest.mark.parametrize("strategy", ["weight_norm_channel", "activation_norm_channel"])
def test_channel_strategies_zero_whole_output_channels(net, strategy):
    x = RNG.standard_normal((3,) + X_SHAPE[1:]).astype(np.float32)
    r = op.sparsify(net, strategy, 0.5, calibration=x)
    weights = _weights(r.model)
    for name, out_axis in (("conv1.weight", 0), ("conv2.weight", 0), ("fc.weight", 0), ("proj", 1)):
        w = np.moveaxis(weights[name], out_axis, 0).reshape(weights[name].shape[out_axis], -1)
        empty = ~w.any(axis=1)
        assert empty.sum() == weights[name].shape[out_axis] // 2, name
        assert np.array_equal(w[~empty] != 0, np.ones_like(w[~empty], bool)), name
    for layer in ("conv1", "conv2", "fc"):
        w = weights[f"{layer}.weight"].reshape(weights[f"{layer}.weight"].shape[0], -1)
        assert not weights[f"{layer}.bias"][~w.any(axis=1)].any()
    if strategy == "weight_norm_channel":
        norms = np.linalg.norm(_weights(net)["conv1.weight"].reshape(8, -1), axis=1)
        assert set(np.argsort(norms, kind="stable")[:4]) == set(np.flatnonzero(~r.masks["conv1.weight"][:, 0, 0, 0]))


# --------------------------------------------------------------------------- N:M

@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (3, 8)])
def test_nm_groups_keep_the_n_largest(net, n, m):
    original = _weights(net)
    r = op.sparsify(net, "nm", n=n, m=m)
    skipped = {layer.weight for layer in r.report.layers if layer.status.startswith("skipped")}
    axes = {"conv1.weight": 1, "conv2.weight": 1, "fc.weight": 1, "proj": 0}
    for name, axis in axes.items():
        w = np.moveaxis(_weights(r.model)[name], axis, -1)
        o = np.moveaxis(original[name], axis, -1)
        if w.shape[-1] % m:
            assert name in skipped and np.array_equal(w, o)
            continue
        groups, orig = w.reshape(-1, m), np.abs(o.reshape(-1, m))
        assert ((groups != 0).sum(axis=1) <= n).all()
        kept = groups != 0
        assert (np.sort(orig, axis=1)[:, -n:].min(axis=1) <= np.where(kept, orig, np.inf).min(axis=1)).all()
        assert (np.where(kept, -np.inf, orig).max(axis=1) <= np.where(kept, orig, np.inf).min(axis=1)).all()
    if m == 8:  # conv reduction axes hold 4 weights: skipped and reported
        assert skipped == {"conv1.weight", "conv2.weight"}
        assert all("not a multiple of M=8" in layer.status for layer in r.report.layers if layer.weight in skipped)


# --------------------------------------------------------------------------- oracle, storage

@pytest.mark.parametrize("strategy,kw", [("global_magnitude", {"sparsity": 0.7}), ("nm", {}),
                                         ("weight_norm_channel", {"sparsity": 0.5}), ("random", {"sparsity": 0.5})])
def test_masked_model_equals_numpy_with_the_same_weights_zeroed(net, strategy, kw):
    r = op.sparsify(net, strategy, **kw)
    zeroed = _weights(net)
    for name, mask in r.masks.items():
        zeroed[name] = np.where(mask, zeroed[name], 0)
    if strategy == "weight_norm_channel":
        for layer in ("conv1", "conv2", "fc"):
            empty = ~r.masks[f"{layer}.weight"].reshape(zeroed[f"{layer}.weight"].shape[0], -1).any(axis=1)
            zeroed[f"{layer}.bias"] = np.where(empty, 0, zeroed[f"{layer}.bias"])
    assert _same(_weights(r.model), zeroed)
    x = RNG.standard_normal(X_SHAPE).astype(np.float32)
    np.testing.assert_allclose(run(r.model, {"x": x})["y"], _numpy_forward(zeroed, x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("storage,sparsity", [("sparse", 0.9), ("bitmask", 0.5), ("bitmask", 0.9)])
def test_sparse_storage_is_smaller_and_identical_in_onnxruntime(net, tmp_path, storage, sparsity):
    dense = op.sparsify(net, "global_magnitude", sparsity)
    packed = op.sparsify(net, "global_magnitude", sparsity, storage=storage, verify=True)
    op.save_model(dense.model, tmp_path / "dense.onnx", reference=net)
    op.save_model(packed.model, tmp_path / "packed.onnx", reference=net)  # checker full_check + ORT load
    assert (tmp_path / "packed.onnx").stat().st_size < 0.75 * (tmp_path / "dense.onnx").stat().st_size
    assert {layer.storage for layer in packed.report.layers} == {storage}
    x = RNG.standard_normal(X_SHAPE).astype(np.float32)
    a = run(str(tmp_path / "dense.onnx"), {"x": x})["y"]
    b = run(str(tmp_path / "packed.onnx"), {"x": x})["y"]
    assert np.array_equal(a, b)


def test_sparse_storage_keeps_dense_below_break_even(net):
    r = op.sparsify(net, "global_magnitude", 0.5, storage="sparse")
    assert all(layer.storage.startswith("dense: sparse form is not smaller") for layer in r.report.layers)


def test_input_model_unchanged_and_output_deterministic(net):
    before = net.SerializeToString()
    a = op.sparsify(net, "random", 0.5, seed=3, storage="bitmask")
    b = op.sparsify(net, "random", 0.5, seed=3, storage="bitmask")
    c = op.sparsify(net, "random", 0.5, seed=4)
    assert net.SerializeToString() == before
    assert a.model.SerializeToString() == b.model.SerializeToString()
    assert any(not np.array_equal(a.masks[n], c.masks[n]) for n in WEIGHTS)


# --------------------------------------------------------------------------- participation, report

def test_exclusion_first_classifier_and_patterns(net):
    r = op.sparsify(net, "layer_magnitude", 0.5, exclude_first=True, exclude_classifier=True)
    assert set(r.masks) == {"conv2.weight", "fc.weight"}
    status = {layer.name: layer.status for layer in r.report.layers}
    assert status["conv1"].startswith("excluded: first") and status["head"].startswith("excluded: classifier")
    assert np.array_equal(_weights(r.model)["proj"], _weights(net)["proj"])
    r = op.sparsify(net, "layer_magnitude", 0.5, exclude=["conv*", "proj"])
    assert set(r.masks) == {"fc.weight"}
    with pytest.raises(op.InvalidRequestError, match="matches no"):
        op.sparsify(net, "layer_magnitude", 0.5, exclude=["nope*"])


def test_report_metrics(net):
    r = op.sparsify(net, "layer_magnitude", 0.5).report
    stats = op.stats(net)
    assert r.size == stats.params and r.macs == stats.macs
    assert r.nonzero_size == r.size - sum(int(np.floor(0.5 * s + 0.5)) for s in (288, 288, 4608, 192))
    assert r.compression == pytest.approx(r.size / r.nonzero_size)
    fc = next(layer for layer in r.layers if layer.name == "fc")
    assert fc.macs == 16 * 288 and fc.nonzero_macs == 16 * 144
    assert r.speedup == pytest.approx(r.macs / r.nonzero_macs) and 1.9 < r.speedup <= 2.0
    assert "onnxruntime on CPU runs zeros at dense speed" in str(r) and "compression" in str(r)
    assert r.as_dict()["layers"][0]["sparsity"] == pytest.approx(0.5)


def test_compression_matches_shrinkbench_definition(net):
    r = op.sparsify(net, "global_magnitude", compression=4.0)
    assert r.report.compression == pytest.approx(4.0, rel=1e-3)
    with pytest.raises(op.InvalidRequestError, match="out of reach"):
        op.sparsify(net, "global_magnitude", compression=1000.0, exclude=["fc"])


# --------------------------------------------------------------------------- extension API

def test_custom_strategies_registered_by_name(net):
    @op.register_strategy("test_keep_positive")
    class KeepPositive(op.LayerStrategy):
        uses_sparsity = False

        def layer_mask(self, layer, ctx):
            return np.asarray(layer.value) > 0

    @op.register_strategy("test_global_square")
    class GlobalSquare(op.GlobalImportance):
        def importance(self, layer, ctx):
            return np.square(layer.value)

    try:
        r = op.sparsify(net, "test_keep_positive")
        assert all(((_weights(r.model)[n] > 0) | (_weights(r.model)[n] == 0)).all() for n in WEIGHTS)
        assert r.report.strategy == "test_keep_positive"
        g = op.sparsify(net, "TEST_GLOBAL_SQUARE", 0.5)
        assert _same(g.masks, op.sparsify(net, "global_magnitude", 0.5).masks)
    finally:
        STRATEGIES.pop("test_keep_positive")
        STRATEGIES.pop("test_global_square")


def test_custom_strategy_bad_masks_are_rejected(net):
    class Bad(op.ModelStrategy):
        def model_masks(self, layers, ctx):
            return {layers[0].weight: np.ones(3, bool)}

    with pytest.raises(op.InvalidRequestError, match="has shape"):
        op.sparsify(net, Bad, 0.5)


# --------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("kw,match", [
    ({"sparsity": 1.0}, r"\[0, 1\)"), ({"sparsity": -0.1}, r"\[0, 1\)"), ({"sparsity": "0.5"}, r"\[0, 1\)"),
    ({"sparsity": True}, r"\[0, 1\)"), ({}, "needs sparsity"), ({"sparsity": 0.5, "compression": 2.0}, "not both"),
    ({"strategy": "nm", "n": 5, "m": 4}, "n <= m"), ({"strategy": "nm", "n": 0}, "n must be"),
    ({"strategy": "nm", "sparsity": 0.5}, "takes no sparsity"), ({"strategy": "magnitude", "sparsity": 0.5}, "unknown"),
    ({"strategy": "layer_magnitude_gradient", "sparsity": 0.5}, "needs gradients"),
    ({"strategy": "layer_magnitude_gradient", "sparsity": 0.5, "gradients": {"proj": np.zeros((16, 12))}},
     "no gradient for initializer 'conv1.weight'"),
    ({"strategy": "global_magnitude_gradient", "sparsity": 0.5,
      "gradients": {n: np.zeros((2, 2)) for n in WEIGHTS}}, "has shape"),
    ({"strategy": "layer_magnitude_gradient", "sparsity": 0.5, "gradients": {"nope": np.zeros(1)}}, "no initializer"),
    ({"strategy": "activation_norm_channel", "sparsity": 0.5}, "calibration"),
    ({"sparsity": 0.5, "storage": "csr"}, "storage"),
])
def test_bad_input_raises_typed_errors(net, kw, match):
    kw = dict(kw)
    strategy = kw.pop("strategy", "global_magnitude")
    with pytest.raises(op.InvalidRequestError, match=match):
        op.sparsify(net, strategy, **kw)
