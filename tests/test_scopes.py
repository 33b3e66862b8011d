"""Scopes (uniform, global, SLAMP), the achieved ratio, plans and the prune command line."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
from onnx import numpy_helper

import onnxprune as op
from onnxprune.allocation import lamp_scores, normalize
from onnxprune.cli import main
from test_criteria_weight import chain_model
from test_options import set_filter_norms

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXACT = op.Options(step_size=1)


def scaled_chain():
    """conv1's filters are small (norms 1..1.7), conv2's large (norms 3..10): the layers are not alike."""
    model = chain_model()
    set_filter_norms(model, "conv1.weight", 1.0 + 0.1 * np.arange(8))
    set_filter_norms(model, "conv2.weight", [3.0, 10.0, 4.0, 9.0, 5.0, 8.0, 6.0, 7.0])
    return model


def norms(model, name: str) -> np.ndarray:
    w = next(numpy_helper.to_array(t) for t in model.graph.initializer if t.name == name)
    return np.linalg.norm(w.reshape(len(w), -1).astype(np.float64), axis=1)


def removed(result, tensor: str) -> list[int]:
    mask = result.channels.get(tensor, {"mask": []})["mask"]  # untouched tensors are not in the record
    return [k for k, kept in enumerate(mask) if not kept]


def pooled_choice(scores: dict[str, np.ndarray], n: int) -> dict[str, list[int]]:
    """The n lowest of the pooled scores, per layer (what a global allocation removes without rounding)."""
    pooled = sorted((float(s), name, k) for name, values in scores.items() for k, s in enumerate(values))[:n]
    return {name: sorted(k for _, owner, k in pooled if owner == name) for name in scores}


def test_uniform_scope_prunes_every_group_alike():
    result = op.prune(scaled_chain(), "l2", ratio=0.5, options=EXACT, verify=True)
    assert [g["kept"] for g in result.summary.groups] == [4, 4] and result.achieved_ratio == 0.5


@pytest.mark.parametrize("layer_norm", ["standard_score", "tss_norm", "linear_scaling", "softmax_norm", "none"])
def test_global_scope_compares_normalised_scores(layer_norm):
    model = scaled_chain()
    scores = {name: normalize(norms(model, f"{name}.weight"), layer_norm) for name in ("conv1", "conv2")}
    options = op.Options(step_size=1, layer_norm=layer_norm)
    result = op.prune(model, "l2", ratio=0.375, scope="global", options=options, verify=True)
    expected = pooled_choice(scores, 6)
    assert {name: removed(result, f"{name}_out") for name in scores} == expected
    assert result.achieved_ratio == 0.375
    if layer_norm == "none":  # raw norms: the small layer goes first, held to max_ratio of it
        assert expected == {"conv1": [0, 1, 2, 3, 4, 5], "conv2": []}


def test_global_scope_holds_each_group_to_max_ratio():
    options = op.Options(step_size=1, layer_norm="none", max_ratio=0.5)
    result = op.prune(scaled_chain(), "l2", ratio=0.5, scope="global", options=options, verify=True)
    assert removed(result, "conv1_out") == [0, 1, 2, 3] and removed(result, "conv2_out") == [0, 2, 4, 6]


def test_slamp_allocates_by_lamp_scores():
    model = scaled_chain()
    lamp = {name: lamp_scores(norms(model, f"{name}.weight")) for name in ("conv1", "conv2")}
    counts = {name: len(ks) for name, ks in pooled_choice(lamp, 8).items()}
    result = op.prune(model, "l2", ratio=0.5, recommendation="slamp", options=EXACT, verify=True)
    for name in lamp:  # SLAMP sets how many go per layer, the method picks which
        expected = sorted(np.argsort(norms(model, f"{name}.weight"), kind="stable")[: counts[name]].tolist())
        assert removed(result, f"{name}_out") == expected
    assert result.achieved_ratio == 0.5


@pytest.mark.parametrize("name", ["resnet_legacy.onnx", "mobilenetv2_dynamo.onnx", "vit_mha_legacy.onnx",
                                  "densenet_legacy.onnx"])
@pytest.mark.parametrize("how", [{"scope": "global"}, {"recommendation": "slamp"}])
@pytest.mark.parametrize("step_op", ["round", "round_up", "round_down"])
def test_achieved_ratio_within_one_step_per_group(name, how, step_op):
    model = op.load_model(os.path.join(ROOT, "fixtures", name))
    options = op.Options(step_size=4, step_op=step_op)
    groups = [g for g in op.analyze(model).groups if g.prunable]
    total = sum(g.size for g in groups)
    result = op.prune(model, "l2", ratio=0.4, options=options, verify=True, **how)
    target = math.floor(0.4 * total)
    assert abs(result.achieved_ratio * total - target) <= 4 * len(groups)
    for row in result.summary.groups:
        assert 1 <= row["kept"] and row["size"] - row["kept"] <= math.floor(0.9 * row["size"])


@pytest.mark.parametrize("kwargs, match", [
    ({"ratio": 0.5, "scope": "layerwise"}, "scope='layerwise'"),
    ({"ratio": 0.5, "recommendation": "vbmf"}, "recommendation='vbmf'"),
    ({"ratio": 0.5, "scope": "global", "recommendation": "slamp"}, "pick one"),
    ({"ratios": {"conv1": 0.5}, "scope": "global"}, "one ratio="),
    ({"ratios": {"conv1": 0.5}, "recommendation": "SLAMP"}, "one ratio="),
    ({"ratio": 1.0, "scope": "global"}, "ratio=1.0"),
])
def test_bad_scope_requests(kwargs, match):
    with pytest.raises(op.InvalidRequestError, match=match):
        op.prune(chain_model(), "l2", **kwargs)


# ---- plans ------------------------------------------------------------------------------------------------------
def test_plan_replays_and_can_be_edited(tmp_path):
    model = scaled_chain()
    result = op.prune(model, "gm", ratio=0.5, scope="global", options=EXACT)
    plan = json.loads(result.plan.to_json())
    assert plan["method"] == "gm" and len(plan["fingerprint"]) == 64 and plan["options"]["step_size"] == 1
    assert {tuple(g["layers"]) for g in plan["groups"]} == {("conv1",), ("conv2",)}
    path = tmp_path / "plan.json"
    result.plan.save(path)
    replay = op.prune_with_plan(model, str(path), verify=True)
    assert replay.channels == result.channels and replay.plan.kept() == result.plan.kept()
    conv1 = next(g for g in plan["groups"] if g["layers"] == ["conv1"])
    conv1["kept"] = [1, 4, 6]  # edited by hand
    edited = op.prune_with_plan(model, plan, verify=True)
    assert removed(edited, "conv1_out") == [0, 2, 3, 5, 7]


def test_plan_checks():
    model = scaled_chain()
    plan = op.prune(model, "l2", ratio=0.5).plan
    other = op.load_model(os.path.join(ROOT, "fixtures", "resnet_legacy.onnx"))
    with pytest.raises(op.InvalidRequestError, match="plan was made for another model"):
        op.prune_with_plan(other, plan)
    data = plan.as_dict()
    data["groups"][0]["kept"] = [0, 99]
    with pytest.raises(op.InvalidRequestError, match=r"\[99\] are not in \[0, 7\]"):
        op.prune_with_plan(model, data)
    data["groups"][0]["kept"] = []
    with pytest.raises(op.InvalidRequestError, match="keeps nothing"):
        op.prune_with_plan(model, data)
    with pytest.raises(op.InvalidRequestError, match="not an onnxprune plan"):
        op.prune_with_plan(model, {"groups": []})
    with pytest.raises(op.InvalidRequestError, match="not valid JSON"):
        op.prune_with_plan(model, "{not json")


def test_plan_fingerprint_ignores_weight_values():
    model = scaled_chain()
    plan = op.prune(model, "l2", ratio=0.5).plan
    assert op.prune_with_plan(chain_model(), plan).plan.kept() == plan.kept()


# ---- command line -----------------------------------------------------------------------------------------------
def test_cli_scopes_plans_and_gradients(tmp_path, capsys):
    import onnx

    model_path = tmp_path / "m.onnx"
    onnx.save(scaled_chain(), model_path)
    out, plan = tmp_path / "out.onnx", tmp_path / "plan.json"
    code = main(["prune", str(model_path), "-o", str(out), "--ratio", "0.5", "--method", "PR_GM", "--scope", "global",
                 "--layer-norm", "none", "--policy", "sum", "--step-size", "1", "--save-plan", str(plan), "--verify"])
    assert code == 0 and out.exists() and json.loads(plan.read_text())["options"]["layer_norm"] == "none"
    assert "50.0%" in capsys.readouterr().out
    assert main(["prune", str(model_path), "-o", str(tmp_path / "again.onnx"), "--plan", str(plan), "--verify"]) == 0
    grads = {t.name: np.ones(tuple(t.dims), np.float32) for t in scaled_chain().graph.initializer}
    np.savez(tmp_path / "g.npz", **grads)
    assert main(["prune", str(model_path), "-o", str(tmp_path / "t.onnx"), "--ratio", "0.5", "--method", "taylor",
                 "--gradients", str(tmp_path / "g.npz"), "--recommend", "slamp"]) == 0
    np.savez(tmp_path / "bad.npz", **{"conv1.weight": np.ones(3)})
    assert main(["prune", str(model_path), "-o", str(tmp_path / "b.onnx"), "--ratio", "0.5", "--method", "taylor",
                 "--gradients", str(tmp_path / "bad.npz")]) == 2
    assert main(["prune", str(model_path), "-o", str(tmp_path / "i.onnx"), "--ratio", "0.5", "--method", "PR_ID"]) == 2
    err = capsys.readouterr().err
    assert "conv1.weight" in err and "prune_by_index" in err and not (tmp_path / "b.onnx").exists()


def test_cli_help_lists_every_criterion(capsys):
    with pytest.raises(SystemExit):
        main(["prune", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name in ("l2", "l1", "gm", "lamp", "bn_scale", "random", "taylor", "PR_L2", "--scope", "--recommend",
                 "--group-policy", "--layer-norm", "--save-plan", "--gradients", "--seed"):
        assert name in text, name
