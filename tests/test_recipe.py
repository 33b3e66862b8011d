"""The recommended pipeline (onnxprune.recipe): what prune() chooses when no method= is named, that every given
knob wins, and the uniform / global scopes under a MACs budget (onnxprune.budget_ratio)."""
from __future__ import annotations

import os
from dataclasses import replace

import numpy as np
import pytest

import onnxprune as op
from onnxprune.budget import analytic_cost
from onnxprune.cli import main
from onnxprune.recipe import COMPENSATION_METHOD, DATA_FREE_METHOD, DATA_METHOD, checks_allocation, recommend

HERE = os.path.dirname(os.path.abspath(__file__))
RESNET = os.path.join(os.path.dirname(HERE), "fixtures", "resnet_legacy.onnx")


@pytest.fixture(scope="module")
def calibration():
    return np.random.default_rng(0).standard_normal((32, 3, 16, 16)).astype(np.float32)


# --------------------------------------------------------------------------- the choice itself

def test_with_data_the_recipe_picks_obs_global_and_both_recoveries():
    r = recommend(None, None, None, None, None, calibration=np.zeros(1), budget_kind="macs")
    assert (r.method, r.scope, r.options.layer_norm) == (DATA_METHOD, "global", "tss_norm")
    assert r.compensate and r.reconstruct and r.note is None
    assert set(r.chosen) == {"method", "scope", "options", "recovery"}
    assert "(recommended)" in str(r)


def test_without_data_the_recipe_is_data_free_and_says_data_would_help():
    r = recommend(None, None, None, None, None, calibration=None, budget_kind=None)
    assert (r.method, r.scope, r.options.score_consumers) == (DATA_FREE_METHOD, "global", True)
    assert not r.compensate and not r.reconstruct
    assert "calibration" in r.note and "note:" in str(r)


def test_given_knobs_win_and_a_method_is_the_explicit_pipeline():
    options = op.Options(step_size=1)
    r = recommend(None, "uniform", options, None, False, calibration=np.zeros(1), budget_kind="macs")
    assert r.scope == "uniform" and r.options is options and r.compensate and not r.reconstruct
    assert r.method == COMPENSATION_METHOD  # compensation alone: the criterion that scores the error it leaves
    no_recovery = recommend(None, None, None, False, False, calibration=np.zeros(1), budget_kind="macs")
    assert no_recovery.method == DATA_FREE_METHOD and no_recovery.options.score_consumers
    assert set(r.chosen) == {"method", "recovery"}
    explicit = recommend("l2", None, None, None, None, calibration=np.zeros(1), budget_kind=None)
    assert (explicit.method, explicit.scope, explicit.options) == ("l2", "uniform", op.Options())
    assert not explicit.compensate and not explicit.reconstruct and not explicit.recommended
    assert recommend("l2", None, None, None, None, None, budget_kind="macs").scope == "knapsack"
    assert recommend(None, None, None, None, None, None, budget_kind="latency").options.max_ratio == 0.7
    # per-layer ratios and SLAMP allot each group themselves: the scope stays uniform
    assert recommend(None, None, None, None, None, None, budget_kind=None, allotted=True).scope == "uniform"


def test_only_the_recipes_own_latency_knapsack_with_a_re_fit_is_checked_against_uniform():
    data = np.zeros((2, 3, 16, 16), np.float32)
    latency = recommend(None, None, None, None, None, calibration=data, budget_kind="latency")
    assert latency.scope == "knapsack" and checks_allocation(latency, "latency", data)
    assert not checks_allocation(latency, "latency", iter([data]))  # read once already by the criterion
    assert not checks_allocation(recommend(None, None, None, None, False, data, "latency"), "latency", data)
    assert not checks_allocation(recommend(None, "knapsack", None, None, None, data, "latency"), "latency", data)
    assert not checks_allocation(recommend("obs", None, None, True, True, data, "latency"), "latency", data)
    macs = recommend(None, None, None, None, None, calibration=data, budget_kind="macs")
    assert not checks_allocation(macs, "macs", data)
    chosen = replace(latency, allocation="uniform (output error ...)")
    assert "allocation: uniform" in str(chosen) and chosen.as_dict()["allocation"].startswith("uniform")


def test_recovery_flags_are_checked():
    with pytest.raises(op.InvalidRequestError, match="compensate"):
        recommend(None, None, None, "yes", None, None, budget_kind=None)


# --------------------------------------------------------------------------- prune() with the recipe

def test_default_prune_with_calibration_runs_the_recommended_pipeline(calibration):
    result = op.prune(RESNET, target_macs=0.5, calibration=calibration)
    pipeline = result.summary.pipeline
    assert pipeline.method == "obs" and pipeline.recommended
    assert result.compensation is not None and result.reconstruction is not None
    assert result.summary.budget["predicted_fraction"] <= 0.5
    assert op.stats(result.model).macs <= 0.5 * op.stats(RESNET).macs
    assert result.plan.scope == "global target_macs=0.5" and result.plan.method == "obs"
    assert "pipeline: method obs (recommended)" in str(result.summary)
    assert result.summary.as_dict()["pipeline"]["reconstruct"] is True


def test_default_prune_without_data_notes_that_data_would_help():
    result = op.prune(RESNET, ratio=0.3)
    assert result.compensation is None and result.reconstruction is None
    assert "calibration" in str(result.summary) and result.summary.pipeline.options.score_consumers


def test_explicit_knobs_override_the_recipe(calibration):
    result = op.prune(RESNET, target_macs=0.5, calibration=calibration, scope="knapsack", reconstruct=False)
    assert result.reconstruction is None and result.compensation is not None
    assert result.plan.scope == "target_macs=0.5"
    plain = op.prune(RESNET, "l2", 0.3, calibration=calibration)  # NetsPresso's l2: uniform, nothing more
    assert plain.compensation is None and plain.reconstruction is None
    assert not plain.summary.pipeline.recommended and "pipeline" not in str(plain.summary)
    kept = {row["id"]: row["kept"] / row["size"] for row in plain.summary.groups}
    assert max(kept.values()) - min(kept.values()) < 0.26  # one ratio everywhere (step rounding aside)


@pytest.mark.parametrize("scope", ["uniform", "global"])
def test_a_scope_meets_a_macs_budget_with_one_ratio(scope):
    options = op.Options(step_size=1)
    result = op.prune(RESNET, "l2", target_macs=0.6, scope=scope, options=options)
    fraction = op.stats(result.model).macs / op.stats(RESNET).macs
    assert fraction <= result.summary.budget["predicted_fraction"] + 1e-12 <= 0.6 + 1e-12
    assert fraction > 0.45  # the smallest ratio that fits, not far below the target
    assert result.plan.scope == f"{scope} target_macs=0.6"


def test_budget_scopes_are_checked():
    with pytest.raises(op.InvalidRequestError, match="knapsack"):
        op.prune(RESNET, "l2", 0.3, scope="knapsack")
    with pytest.raises(op.InvalidRequestError, match="target_latency"):
        op.prune(RESNET, "l2", target_latency=0.5, scope="global", threads=1)
    with pytest.raises(op.InvalidRequestError, match="cannot be reached"):
        op.prune(RESNET, "l2", target_macs=0.01, scope="uniform", options=op.Options(max_ratio=0.5))
    assert analytic_cost(op.analyze(RESNET)).total == op.stats(RESNET).macs


# --------------------------------------------------------------------------- the command line

def test_cli_uses_the_same_defaults_and_prints_them(tmp_path, calibration, capsys):
    data = tmp_path / "calib.npy"
    np.save(data, calibration)
    out = tmp_path / "out.onnx"
    assert main(["prune", RESNET, "-o", str(out), "--target-macs", "0.5", "--calibration", str(data)]) == 0
    text = capsys.readouterr().out
    assert "pipeline: method obs (recommended)" in text and "reconstruction:" in text
    assert main(["prune", RESNET, "-o", str(out), "--target-macs", "0.5", "--calibration", str(data),
                 "--no-reconstruct"]) == 0
    text = capsys.readouterr().out
    assert "reconstruction:" not in text and "mean compensation:" in text
    assert main(["prune", RESNET, "-o", str(out), "--ratio", "0.3"]) == 0
    assert "would help" in capsys.readouterr().out.replace("\n", " ")
    with pytest.raises(SystemExit):
        main(["prune", "--help"])
    assert "recommended pipeline" in capsys.readouterr().out
