"""op.sensitivity / onnxprune sensitivity: monotone-sane curves, table, JSON, PNG, recommendation, CLI."""
from __future__ import annotations

import builtins
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxprune as op
from onnxprune.cli import main
from onnxprune.errors import InvalidRequestError, OnnxPruneError
from onnxprune.workflows.sensitivity import MissingExtraError


def cnn(seed: int = 0) -> onnx.ModelProto:
    """x (batch, 3, 8, 8) -> Conv 16 -> Relu -> Conv 24 -> Relu -> Conv 16 -> Relu -> GAP -> Gemm 10."""
    rng = np.random.default_rng(seed)
    inits, nodes = [], []
    channels = [3, 16, 24, 16]
    x = "x"
    for k in range(3):
        w = (rng.standard_normal((channels[k + 1], channels[k], 3, 3)) / np.sqrt(9 * channels[k])).astype(np.float32)
        # channel magnitudes spread out so that the L2 criterion has an order to follow
        w *= np.linspace(0.2, 2.0, channels[k + 1], dtype=np.float32)[:, None, None, None]
        b = (0.05 * rng.standard_normal(channels[k + 1])).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{k}"), numpy_helper.from_array(b, f"b{k}")]
        nodes += [helper.make_node("Conv", [x, f"w{k}", f"b{k}"], [f"c{k}"], name=f"conv{k}", pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"c{k}"], [f"r{k}"], name=f"relu{k}")]
        x = f"r{k}"
    fc = rng.standard_normal((10, 16)).astype(np.float32)
    inits += [numpy_helper.from_array(fc, "fc_w"), numpy_helper.from_array(np.zeros(10, np.float32), "fc_b")]
    nodes += [helper.make_node("GlobalAveragePool", [x], ["gap"], name="gap"),
              helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
              helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 10])], inits)
    model = helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def centred(model: onnx.ModelProto, x: np.ndarray) -> onnx.ModelProto:
    """The classifier's logits standardised per class on x, so that its predictions spread over the classes."""
    logits = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    mean, std = logits.mean(axis=0), logits.std(axis=0) + 1e-6
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    fc_w = (weights["fc_w"] / std[:, None]).astype(np.float32)
    fc_b = (-mean / std).astype(np.float32)
    for k, t in enumerate(model.graph.initializer):
        if t.name in ("fc_w", "fc_b"):
            model.graph.initializer[k].CopyFrom(numpy_helper.from_array(fc_w if t.name == "fc_w" else fc_b, t.name))
    return model


@pytest.fixture(scope="module")
def setup():
    x = np.random.default_rng(1).standard_normal((256, 3, 8, 8)).astype(np.float32)
    model = centred(cnn(), x)
    y = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0].argmax(1)  # the model's own labels
    assert len(np.unique(y)) > 3
    result = op.sensitivity(model, (x, y), ratios=(0.25, 0.5, 0.75))
    return model, x, y, result


def test_curves_are_monotone_sane(setup):
    _, _, _, result = setup
    assert result.key == "top1" and result.baseline == 1.0 and result.n == 256
    assert [c.layer for c in result.curves] == ["conv0", "conv1", "conv2"]
    for curve in result.curves:
        drops = [p["drop"] for p in curve.points]
        saved = [p["macs_saved"] for p in curve.points]
        assert [p["ratio"] for p in curve.points] == [0.25, 0.5, 0.75]
        assert all(d >= -1e-9 for d in drops)  # labels are the original's predictions: nothing can beat them
        assert drops[-1] >= drops[0] and drops[-1] > 0.05, (curve.layer, drops)
        assert saved == sorted(saved) and saved[0] > 0
        assert [p["kept"] for p in curve.points] == [round(curve.size * (1 - r)) for r in (0.25, 0.5, 0.75)]
    table = result.table()
    assert "drop@0.5" in table and "conv1" in table


def test_json_and_png(setup, tmp_path):
    _, _, _, result = setup
    result.save_json(tmp_path / "s.json")
    data = json.loads((tmp_path / "s.json").read_text())
    assert data["format"] == "onnxprune-sensitivity/1" and len(data["curves"]) == 3
    assert data["curves"][0]["points"][0]["ratio"] == 0.25
    pytest.importorskip("matplotlib")
    path = result.plot(tmp_path / "out" / "s.png")
    with open(path, "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"


def test_missing_matplotlib_is_a_clear_error(setup, tmp_path, monkeypatch):
    _, _, _, result = setup
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with pytest.raises(MissingExtraError, match=r'pip install "onnxprune\[plot\]"') as info:
        result.plot(tmp_path / "s.png")
    assert isinstance(info.value, OnnxPruneError)
    assert not (tmp_path / "s.png").exists()


def test_recommendation_reaches_the_macs_target(setup):
    model, x, y, result = setup
    rec = result.recommend(0.4)
    assert rec.reduction >= 0.4 and rec.ratios
    pruned = op.prune(model, "l2", ratios=rec.ratios)
    assert pruned.summary.after.macs == rec.macs_after
    assert 1 - pruned.summary.after.macs / pruned.summary.before.macs >= 0.4
    assert "recommendation" in result.as_dict()
    # the cheapest curve is used first: the recommended drop never exceeds the uniform choice's summed drop
    uniform = sum(c.drop_at(0.5) for c in result.curves)
    assert rec.expected_drop <= uniform + 1e-9
    with pytest.raises(InvalidRequestError, match="cannot reach"):
        result.recommend(0.99)
    with pytest.raises(InvalidRequestError, match="target"):
        result.recommend(1.5)


def test_agreement_without_labels_and_layer_subset(setup):
    model, x, _, _ = setup
    result = op.sensitivity(model, (x, None), ratios=[0.5], layers=["conv1"])
    assert result.key == "agreement" and [c.layer for c in result.curves] == ["conv1"]
    assert 0 <= result.curves[0].points[0]["drop"] <= 1
    with pytest.raises(InvalidRequestError, match="no prunable layer"):
        op.sensitivity(model, (x, None), layers=["nope"])
    with pytest.raises(InvalidRequestError):
        op.sensitivity(model, (x, None), ratios=[])


def test_cli(setup, tmp_path, capsys):
    model, x, y, _ = setup
    onnx.save(model, tmp_path / "m.onnx")
    np.savez(tmp_path / "d.npz", x=x[:64], labels=y[:64])
    args = ["sensitivity", str(tmp_path / "m.onnx"), "--data", str(tmp_path / "d.npz"), "--ratios", "0.5,0.75",
            "--json", str(tmp_path / "s.json"), "--target-macs", "0.3", "--save-ratios", str(tmp_path / "r.json")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "drop@0.75" in out and "recommendation for 30% fewer MACs" in out
    assert json.loads((tmp_path / "s.json").read_text())["recommendation"]["target"] == 0.3
    ratios = json.loads((tmp_path / "r.json").read_text())
    assert main(["prune", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "p.onnx"), "--ratios",
                 str(tmp_path / "r.json")]) == 0
    assert ratios
    assert main(["sensitivity", str(tmp_path / "missing.onnx"), "--data", str(tmp_path / "d.npz")]) == 2
    assert "does not exist" in capsys.readouterr().err
