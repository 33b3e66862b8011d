"""Plan files: `make_plan` / `onnxprune plan` write every prunable layer with a value slot, the user edits it,
`apply_plan` / `onnxprune apply` prune exactly as written, and a recorded plan replays byte for byte."""
from __future__ import annotations

import json
import os

import numpy as np
import onnx
import pytest

import onnxprune as op
from onnxprune.cli import main
from onnxprune.runtime import make_inputs, run
from graphs import GraphBuilder
from test_criteria_weight import chain_model, lowest, weight

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESNET = os.path.join(ROOT, "fixtures", "resnet_legacy.onnx")
STEP1 = op.Options(step_size=1)


def removed(result, tensor: str) -> list[int]:
    return [k for k, kept in enumerate(result.channels[tensor]["mask"]) if not kept]


def l2_norms(model, name: str) -> np.ndarray:
    w = weight(model, name)
    return np.sqrt((w.reshape(len(w), -1).astype(np.float64) ** 2).sum(axis=1))


def layer(plan: dict, name: str) -> dict:
    return next(entry for entry in plan["layers"] if entry["name"] == name)


def data_chain():
    """x (dynamic batch) -> c1 (3->8) -> Relu -> c2 (8->4) -> y."""
    g = GraphBuilder()
    relu = g.node("Relu", [g.conv("x", 3, 8, "c1")], name="act")
    g.conv(relu, 8, 4, "c2", k=1)
    g.nodes[-1].output[0] = "y"
    return g.model({"x": ("batch", 3, 8, 8)}, {"y": ("batch", 4, 8, 8)})


# --------------------------------------------------------------------------- making plans

def test_plan_lists_every_prunable_layer_with_its_group_and_ratio():
    model = op.load_model(RESNET)
    analysis = op.analyze(model)
    plan = op.make_plan(model, "PR_L2", 0.5, recommendation="slamp")
    prunable = [la for la in analysis.layers if la.group is not None and analysis.groups[la.group].prunable]
    assert [e.name for e in plan.layers] == [la.name for la in prunable]
    for entry, la in zip(plan.layers, prunable):
        assert (entry.op_type, entry.channels, entry.group) == (la.op_type, la.out_channels, la.group)
        assert entry.group_size == analysis.groups[la.group].size and entry.indices is None
    by_group = {}
    for entry in plan.layers:  # coupled layers share their group's ratio
        assert by_group.setdefault(entry.group, entry.ratio) == entry.ratio
    assert len(set(by_group.values())) > 1  # SLAMP allots different ratios
    data = json.loads(plan.to_json())
    assert data["method"] == "l2" and data["recommendation"] == "slamp" and data["ratio"] == 0.5
    assert "groups" not in data and data["options"]["step_size"] == 2
    # applying the untouched plan prunes exactly as op.prune with the same request
    direct = op.prune(model, "l2", 0.5, recommendation="slamp")
    applied = op.apply_plan(model, data, verify=True)
    assert applied.plan.kept() == direct.plan.kept()
    assert applied.model.SerializeToString() == direct.model.SerializeToString()


def test_plan_slots_for_uniform_template_and_index_plans():
    model = chain_model()
    assert [(e.name, e.ratio) for e in op.make_plan(model, "gm", 0.25).layers] == [("conv1", 0.25), ("conv2", 0.25)]
    assert [e.ratio for e in op.make_plan(model).layers] == [0.0, 0.0]
    index_plan = op.make_plan(model, "PR_ID")
    assert index_plan.method == "index" and [e.indices for e in index_plan.layers] == [[], []]
    assert '"indices": []' in index_plan.to_json() and '"ratio"' not in index_plan.to_json().split('"layers"')[1]
    with pytest.raises(op.InvalidRequestError, match="indices"):
        op.make_plan(model, "PR_ID", 0.5)
    with pytest.raises(op.InvalidRequestError, match="unknown pruning method"):
        op.make_plan(model, "l7", 0.5)
    with pytest.raises(op.InvalidRequestError, match="give ratio="):
        op.make_plan(model, "l2", recommendation="slamp")


# --------------------------------------------------------------------------- edit, apply, replay

def test_edited_plan_applies_as_written_and_passes_the_oracle(tmp_path):
    model = chain_model()
    data = json.loads(op.make_plan(model, "l2", 0.5, options=STEP1).to_json())
    layer(data, "conv1")["ratio"] = 0.25  # edited: keep 6 of 8, the lowest-L2 channels go
    del layer(data, "conv2")["ratio"]
    layer(data, "conv2")["indices"] = [0, 3, 5]  # edited: exactly these go
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(data))
    result = op.apply_plan(model, str(path), verify=True)
    assert result.verification.ok
    assert removed(result, "conv1_out") == lowest(l2_norms(model, "conv1.weight"), 2)
    assert removed(result, "conv2_out") == [0, 3, 5]
    assert sum(result.channels["conv1_out"]["mask"]) == 6 and sum(result.channels["conv2_out"]["mask"]) == 5
    # the result records what was removed, with the layer values it was made from
    recorded = json.loads(result.plan.to_json())
    assert recorded["layers"] == data["layers"] and recorded["method"] == "l2"
    conv1_kept = [k for k in range(8) if k not in removed(result, "conv1_out")]
    assert {g["id"]: g["kept"] for g in recorded["groups"]} == {0: conv1_kept, 1: [1, 2, 4, 6, 7]}
    assert result.plan.removed()[1] == [0, 3, 5]


def test_recorded_plan_replays_byte_identically(tmp_path):
    model = op.load_model(RESNET)
    for first in (op.prune(model, "gm", 0.4, scope="global"),
                  op.prune(model, "l1", 0.5, recommendation="slamp", options=op.Options(step_size=4)),
                  op.prune_by_index(model, {"/layer1/layer1.0/conv1/Conv": [1, 2]}),
                  op.apply_plan(model, op.make_plan(model, "l2", 0.3))):
        path = tmp_path / "rec.json"
        first.plan.save(path)
        replay = op.apply_plan(model, str(path))
        assert replay.model.SerializeToString() == first.model.SerializeToString()
        assert replay.plan.to_json() == first.plan.to_json()
        assert replay.channels == first.channels
    # the old name still works
    assert op.prune_with_plan(model, str(path)).model.SerializeToString() == first.model.SerializeToString()


def test_recorded_plan_with_edited_layer_values_is_refused_not_ignored():
    model = chain_model()
    data = json.loads(op.prune(model, "l2", 0.5, options=STEP1).plan.to_json())
    layer(data, "conv1")["ratio"] = 0.25
    with pytest.raises(op.InvalidRequestError, match="edited after"):
        op.apply_plan(model, data)
    del data["groups"], data["layers_digest"]
    assert sum(op.apply_plan(model, data).channels["conv1_out"]["mask"]) == 6
    # editing the recorded kept positions by hand is fine: they are replayed
    data = json.loads(op.prune(model, "l2", 0.5, options=STEP1).plan.to_json())
    data["groups"][0]["kept"] = [1, 4, 6]
    assert removed(op.apply_plan(model, data, verify=True), "conv1_out") == [0, 2, 3, 5, 7]


def test_indices_first_then_ratios_on_other_groups():
    model = op.load_model(RESNET)
    data = json.loads(op.make_plan(model, "l2", 0.5, options=STEP1).to_json())
    first = "/layer1/layer1.0/conv1/Conv"
    del layer(data, first)["ratio"]
    layer(data, first)["indices"] = [7]
    result = op.apply_plan(model, data, verify=True)
    kept = result.plan.kept()
    assert kept[layer(data, first)["group"]] == list(range(7))
    assert all(len(k) == g.size // 2 for g in result.plan.groups if g.id != layer(data, first)["group"]
               for k in [kept[g.id]])
    # a group cannot take both: conv2 of layer1.0 shares group 0 with the stem
    clash = json.loads(op.make_plan(model, "l2", 0.5).to_json())
    del layer(clash, "/stem/stem.0/Conv")["ratio"]
    layer(clash, "/stem/stem.0/Conv")["indices"] = [0]
    with pytest.raises(op.InvalidRequestError, match="both indices and a ratio"):
        op.apply_plan(model, clash)
    # a zero ratio on a coupled layer is no clash
    for entry in clash["layers"]:
        if entry["group"] == 0 and "ratio" in entry:
            entry["ratio"] = 0.0
    assert op.apply_plan(model, clash, verify=True).plan.removed()[0] == [0]


# --------------------------------------------------------------------------- errors

def test_plan_errors_are_typed_like_prune(tmp_path):
    model = chain_model()
    plan = op.make_plan(model, "l2", 0.5)
    with pytest.raises(op.InvalidRequestError, match="plan was made for another model"):
        op.apply_plan(op.load_model(RESNET), plan)

    def edited(name: str, **slot) -> dict:
        data = json.loads(plan.to_json())
        entry = layer(data, "conv1")
        entry.pop("ratio")
        entry.update(slot, name=name)
        return data

    with pytest.raises(op.InvalidRequestError, match="no prunable layer named 'conv9'") as unknown:
        op.apply_plan(model, edited("conv9", ratio=0.5))
    with pytest.raises(type(unknown.value), match="no prunable layer named 'conv9'"):
        op.prune(model, "l2", ratios={"conv9": 0.5})
    with pytest.raises(op.UnsupportedError, match="graph output"):
        op.apply_plan(model, edited("conv3", ratio=0.5))
    with pytest.raises(op.UnsupportedError, match="graph output"):
        op.prune_by_index(model, {"conv3": [0]})
    with pytest.raises(op.InvalidRequestError, match=r"must be a number in \[0, 1\)"):
        op.apply_plan(model, edited("conv1", ratio=1.5))
    with pytest.raises(op.InvalidRequestError, match=r"must be a number in \[0, 1\)"):
        op.apply_plan(model, edited("conv1", ratio="half"))
    with pytest.raises(op.InvalidRequestError, match=r"indices \[8\] are out of range \[0, 7\]"):
        op.apply_plan(model, edited("conv1", indices=[1, 8]))
    with pytest.raises(op.InvalidRequestError, match="would empty channel group"):
        op.apply_plan(model, edited("conv1", indices=list(range(8))))
    with pytest.raises(op.InvalidRequestError, match="exactly one of 'ratio'"):
        op.apply_plan(model, edited("conv1", ratio=0.5, indices=[1]))
    with pytest.raises(op.InvalidRequestError, match="must be a list"):
        op.apply_plan(model, edited("conv1", indices=3))
    bad = tmp_path / "broken.json"
    bad.write_text('{"format": "onnxprune-plan/1", "layers": [')
    with pytest.raises(op.InvalidRequestError, match="plan file '.*broken.json' is not valid JSON"):
        op.apply_plan(model, str(bad))
    with pytest.raises(op.InvalidRequestError, match="plan file '.*resnet_legacy.onnx' is not valid JSON"):
        op.apply_plan(model, RESNET)
    with pytest.raises(op.InvalidRequestError, match="plan file '.*missing.json' does not exist"):
        op.apply_plan(model, str(tmp_path / "missing.json"))
    nothing = tmp_path / "nothing.json"
    nothing.write_text('{"format": "onnxprune-plan/1", "fingerprint": "x"}')
    with pytest.raises(op.InvalidRequestError, match="nothing.json.*neither 'layers' nor 'groups'"):
        op.apply_plan(model, str(nothing))


# --------------------------------------------------------------------------- command line

def test_cli_plan_edit_apply_replay(tmp_path, capsys):
    model_path, plan_path = tmp_path / "m.onnx", tmp_path / "plan.json"
    onnx.save(chain_model(), model_path)
    assert main(["plan", str(model_path), "-o", str(plan_path), "--ratio", "0.5", "--recommend", "slamp",
                 "--method", "PR_GM", "--step-size", "1"]) == 0
    out = capsys.readouterr().out
    assert "conv1" in out and "onnxprune apply" in out
    data = json.loads(plan_path.read_text())
    assert data["method"] == "gm" and data["options"]["step_size"] == 1 and len(data["layers"]) == 2
    layer(data, "conv2")["ratio"] = 0.75
    plan_path.write_text(json.dumps(data))
    out1, rec = tmp_path / "out.onnx", tmp_path / "rec.json"
    assert main(["apply", str(plan_path), str(model_path), "-o", str(out1), "--verify", "--save-plan", str(rec)]) == 0
    assert "mask oracle: ok" in capsys.readouterr().out
    pruned = onnx.load(out1)
    shapes = {t.name: list(t.dims) for t in pruned.graph.initializer}
    assert shapes["conv2.weight"][0] == 2
    out2 = tmp_path / "again.onnx"
    assert main(["apply", str(rec), str(model_path), "-o", str(out2), "--verify"]) == 0
    assert "replayed the recorded channels" in capsys.readouterr().out
    assert out1.read_bytes() == out2.read_bytes()
    # prune --plan takes the same files
    assert main(["prune", str(model_path), "-o", str(tmp_path / "p.onnx"), "--plan", str(rec), "--verify"]) == 0
    assert (tmp_path / "p.onnx").read_bytes() == out1.read_bytes()
    capsys.readouterr()
    # never overwrite the inputs; swapped arguments get a clear message
    before = model_path.read_bytes(), plan_path.read_text()
    assert main(["apply", str(plan_path), str(model_path), "-o", str(model_path)]) == 2
    assert main(["apply", str(plan_path), str(model_path), "-o", str(plan_path)]) == 2
    assert main(["plan", str(model_path), "-o", str(model_path)]) == 2
    assert main(["apply", str(model_path), str(plan_path), "-o", str(tmp_path / "x.onnx")]) == 2
    err = capsys.readouterr().err
    assert "never overwrites its input" in err and "PLAN first" in err
    assert (model_path.read_bytes(), plan_path.read_text()) == before and not (tmp_path / "x.onnx").exists()


def test_cli_index_plan(tmp_path, capsys):
    model_path, plan_path, out = tmp_path / "m.onnx", tmp_path / "ids.json", tmp_path / "o.onnx"
    onnx.save(chain_model(), model_path)
    assert main(["plan", str(model_path), "-o", str(plan_path), "--method", "PR_ID", "--quiet"]) == 0
    data = json.loads(plan_path.read_text())
    layer(data, "conv1")["indices"] = [2, 6]
    plan_path.write_text(json.dumps(data))
    assert main(["apply", str(plan_path), str(model_path), "-o", str(out), "--verify"]) == 0
    shapes = {t.name: list(t.dims) for t in onnx.load(out).graph.initializer}
    assert shapes["conv1.weight"][0] == 6 and shapes["conv2.weight"] == [8, 6, 3, 3]


def test_cli_help_of_plan_and_apply(capsys):
    for command, words in (("plan", ["--method", "--ratio", "--recommend", "--scope", "--calibration", "indices",
                                     "--step-size", "onnxprune apply"]),
                           ("apply", ["PLAN", "MODEL", "--verify", "--save-plan", "replayed", "byte-identical"])):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        for word in words:
            assert word in text, (command, word)


# --------------------------------------------------------------------------- calibration files

def test_cli_prune_with_calibration_file(tmp_path, capsys):
    model = data_chain()
    model_path = tmp_path / "m.onnx"
    onnx.save(model, model_path)
    x = np.concatenate([make_inputs(model, seed=k, dims={"batch": 3})["x"] for k in range(2)])
    np.savez(tmp_path / "calib.npz", x=x)
    np.save(tmp_path / "calib.npy", x)
    # the expected choice: c1's channels with the smallest mean nuclear norm of their feature maps
    feature = run(model, {"x": x}, ["act_out"])["act_out"].astype(np.float64)
    expected = lowest(np.linalg.svd(feature, compute_uv=False).sum(axis=-1).mean(axis=0), 4)
    for name in ("calib.npz", "calib.npy"):
        out = tmp_path / f"{name}.onnx"
        assert main(["prune", str(model_path), "-o", str(out), "--ratio", "0.5", "--method", "PR_NN",
                     "--calibration", str(tmp_path / name), "--step-size", "1", "--verify",
                     "--save-plan", str(tmp_path / "nn.json")]) == 0, capsys.readouterr().err
        pruned_w = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(out).graph.initializer}
        kept = [k for k in range(8) if k not in expected]
        np.testing.assert_array_equal(pruned_w["c1.weight"], weight(model, "c1.weight")[kept])
    # without the data: a clear error; a plan of a data method applies with --calibration
    assert main(["prune", str(model_path), "-o", str(tmp_path / "n.onnx"), "--ratio", "0.5", "--method", "nn"]) == 2
    assert "needs calibration data" in capsys.readouterr().err
    assert main(["plan", str(model_path), "-o", str(tmp_path / "p.json"), "--ratio", "0.5", "--method", "nn",
                 "--step-size", "1", "--quiet"]) == 0
    assert main(["apply", str(tmp_path / "p.json"), str(model_path), "-o", str(tmp_path / "a.onnx"),
                 "--calibration", str(tmp_path / "calib.npz"), "--verify"]) == 0
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "calib.npz.onnx").read_bytes()
    assert main(["prune", str(model_path), "-o", str(tmp_path / "m2.onnx"), "--ratio", "0.5", "--method", "nn",
                 "--calibration", str(tmp_path / "nope.npz")]) == 2
    assert "nope.npz" in capsys.readouterr().err
