"""Budgets (target_macs= / target_params= / target_latency=): the analytic cost models, the knapsack allocator on
fake staircase cost models, prune() and the command line."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxprune as op
from onnxprune.allocation import emptied_axes, lowest_removal, removable
from onnxprune.budget import allocate_budget, layer_kept, unit_weights
from onnxprune.cli import main
from onnxprune.cost import CostModel, analytic_cost, predicted_cost
from onnxprune.criteria import CriterionContext, criterion_for
from onnxprune.fidelity import output_errors
from onnxprune.latency_target import (ATTEMPTS, TOLERANCE, Attempt, close_on_measurement, next_request,
                                      predicted_fraction, uniform_allocator, uniform_removal)
from onnxprune.runtime import run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FINE = op.Options(step_size=1)


def fixture(name: str) -> str:
    return os.path.join(ROOT, "fixtures", f"{name}.onnx")


def l2_scores(analysis, options):
    groups = [g.id for g in analysis.groups if g.prunable]
    scores = criterion_for("l2")(CriterionContext(analysis, options, groups, None, None, 0))
    return {g: np.asarray(scores[g], dtype=np.float64) for g in groups}


@dataclass
class StairCost:
    """A fake latency model: each layer's cost is a staircase in its kept channels (blocks of `block_in` input and
    `block_out` output channels), plus a part no pruning touches."""

    layers: dict
    base: dict
    total: float
    block_in: int = 2
    block_out: int = 4
    stepped: bool = True

    def layer_cost(self, node: str, kept_in: int, kept_out: int) -> float:
        cin, cout = self.layers[node]
        fin = math.ceil(kept_in / self.block_in) * self.block_in / cin
        fout = math.ceil(kept_out / self.block_out) * self.block_out / cout
        return self.base[node] * min(fin, 1.0) * min(fout, 1.0)


def stair_cost(analysis, stepped: bool = True) -> StairCost:
    macs = analytic_cost(analysis, "macs")
    base = {name: macs.layer_cost(name, *size) for name, size in macs.layers.items()}
    return StairCost(dict(macs.layers), base, 1.1 * sum(base.values()), stepped=stepped)


class MacsMeter:
    """A deterministic stand-in for measuring a pruned model against the original: 'latency' is the model's
    counted MACs (scaled by `ms_per_mac`)."""

    def __init__(self, model, ms_per_mac: float = 1e-6) -> None:
        self.original = op.stats(model).macs * ms_per_mac
        self.ms_per_mac = ms_per_mac
        self.measured = 0

    def measure(self, candidate):
        self.measured += 1
        return self.original, op.stats(candidate).macs * self.ms_per_mac


@pytest.fixture(autouse=True)
def macs_meter(monkeypatch):
    """Every latency budget in these tests is 'measured' in MACs (deterministic; no timing in tests)."""
    meters = []

    def make(model, environment):
        meters.append(MacsMeter(model))
        return meters[-1]

    monkeypatch.setattr("onnxprune.latency_target.model_meter", make)
    return meters


# --------------------------------------------------------------------------- the analytic cost models

def test_analytic_cost_is_a_cost_model_and_matches_stats():
    model = op.load_model(fixture("resnet_legacy"))
    for kind in ("macs", "params"):
        cost = analytic_cost(model, kind)
        assert isinstance(cost, CostModel)
        assert cost.total == getattr(op.stats(model), kind)
        assert predicted_cost(cost, dict(cost.layers)) == cost.total


def test_depthwise_cost_scales_once_and_dense_twice():
    analysis = op.analyze(fixture("mobilenetv2_legacy"))
    cost = analytic_cost(analysis, "macs")
    depthwise = [n for n in analysis.index.nodes if n.op_type == "Conv" and
                 next((a.i for a in n.attribute if a.name == "group"), 1) > 1]
    assert depthwise
    for node in depthwise:
        name = node.name
        cin, cout = cost.layers[name]
        assert math.isclose(cost.layer_cost(name, cin // 2, cout // 2), cost.layer_cost(name, cin, cout) / 2)
    dense = next(name for name, (cin, cout) in cost.layers.items() if name not in {n.name for n in depthwise}
                 and cin > 3)
    cin, cout = cost.layers[dense]
    assert math.isclose(cost.layer_cost(dense, cin // 2, cout // 2), cost.layer_cost(dense, cin, cout) / 4)


def test_analytic_prediction_equals_stats_after_pruning():
    model = op.load_model(fixture("densenet_legacy"))
    result = op.prune(model, ratio=0.4, options=FINE)
    analysis = op.analyze(model, FINE)
    cost = analytic_cost(analysis, "macs")
    removed = {g.id: sorted(set(range(g.size)) - set(g.kept)) for g in result.plan.groups}
    removed = {g: np.array(p, dtype=np.int64) for g, p in removed.items() if p}
    assert predicted_cost(cost, layer_kept(analysis, cost, removed)) == op.stats(result.model).macs


# --------------------------------------------------------------------------- the allocator on staircases

@pytest.mark.parametrize("name", ["resnet_legacy", "densenet_legacy", "mobilenetv2_legacy"])
@pytest.mark.parametrize("fraction", [0.45, 0.6, 0.85])
def test_allocator_reaches_a_stepped_target_exactly(name, fraction):
    options = op.Options()
    analysis = op.analyze(fixture(name), options)
    scores = l2_scores(analysis, options)
    cost = stair_cost(analysis)
    done = allocate_budget(analysis, scores, cost, fraction, options)
    goal = fraction * cost.total
    removed = lowest_removal(scores, done.counts)
    assert done.predicted <= goal * (1 + 1e-12)
    assert goal - done.predicted < done.last_saving  # within one step of the target
    assert math.isclose(predicted_cost(cost, layer_kept(analysis, cost, removed)), done.predicted)
    for g, k in done.counts.items():
        assert k <= removable(analysis.groups[g].size, options) < analysis.groups[g].size
    assert not emptied_axes(analysis.channels, removed)
    # snapped: giving any group one unit back would cost more (each kept count is the cheapest point of its step)
    for g, k in done.counts.items():
        if k:
            back = lowest_removal(scores, {**done.counts, g: k - 1})
            assert predicted_cost(cost, layer_kept(analysis, cost, back)) > done.predicted
    again = allocate_budget(analysis, scores, cost, fraction, options)
    assert again.counts == done.counts


def test_allocator_steps_by_step_size_without_a_staircase():
    options = op.Options(step_size=4)
    analysis = op.analyze(fixture("resnet_legacy"), options)
    scores = l2_scores(analysis, options)
    done = allocate_budget(analysis, scores, stair_cost(analysis, stepped=False), 0.5, options)
    assert any(done.counts.values())
    for g, k in done.counts.items():
        assert k == 0 or (analysis.groups[g].size - k) % 4 == 0


def test_allocator_respects_max_ratio_and_refuses_the_unreachable():
    options = op.Options(step_size=1, max_ratio=0.5)
    analysis = op.analyze(fixture("resnet_legacy"), options)
    scores = l2_scores(analysis, options)
    cost = analytic_cost(analysis, "macs")
    done = allocate_budget(analysis, scores, cost, 0.6, options)
    assert all(k <= analysis.groups[g].size // 2 for g, k in done.counts.items())
    with pytest.raises(op.InvalidRequestError, match="cannot be reached"):
        allocate_budget(analysis, scores, cost, 0.05, options)


def test_cheap_units_go_first():
    """With equal scores everywhere, the budget is met by the layers with the most MACs per channel."""
    options = op.Options(step_size=1)
    analysis = op.analyze(fixture("resnet_legacy"), options)
    flat = {g: np.ones(analysis.groups[g].size) for g in l2_scores(analysis, options)}
    cost = analytic_cost(analysis, "macs")
    done = allocate_budget(analysis, flat, cost, 0.9, options)
    assert 0 < sum(done.counts.values()) and done.predicted <= 0.9 * cost.total


@dataclass
class ChannelCost:
    """A fake cost model: every kept input or output channel of every layer costs 1."""

    layers: dict
    total: float

    def layer_cost(self, node: str, kept_in: int, kept_out: int) -> float:
        return float(kept_in + kept_out)


def chain_model() -> onnx.ModelProto:
    """x (3 ch) -> Conv a 3x3 (8) -> Relu -> Conv b 1x1 (8) -> Relu -> Conv c 1x1 (4): a's 8 channels carry
    27 + 8 weights each, b's 8 + 4."""
    rng = np.random.default_rng(0)
    shapes = {"a": (8, 3, 3, 3), "b": (8, 8, 1, 1), "c": (4, 8, 1, 1)}
    nodes, inits, last = [], [], "x"
    for name, shape in shapes.items():
        inits.append(numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), f"w{name}"))
        nodes.append(helper.make_node("Conv", [last, f"w{name}"], [f"{name}_out"], name=name,
                                      kernel_shape=list(shape[2:]), pads=[shape[2] // 2] * 4))
        last = f"{name}_out"
        if name != "c":
            nodes.append(helper.make_node("Relu", [last], [f"{name}_relu"], name=f"{name}_relu"))
            last = f"{name}_relu"
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info(last, TensorProto.FLOAT, [1, 4, 8, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_unit_weighs_as_many_weights_as_go_with_it():
    """Equal scores, equal cost saved per unit: the group whose units carry fewer weights loses more of them."""
    options = op.Options(step_size=1)
    analysis = op.analyze(chain_model(), options)
    group = {layer: g.id for g in analysis.groups if g.prunable for layer in g.layers}
    heavy, light = group["a"], group["b"]
    assert unit_weights(analysis, heavy) == 27 + 8 and unit_weights(analysis, light) == 8 + 4
    scores = {g: np.arange(8.0) for g in (heavy, light)}
    cost = ChannelCost({name: tuple(analytic_cost(analysis, "macs").layers[name]) for name in "abc"}, 0.0)
    cost.total = sum(cost.layer_cost(name, *size) for name, size in cost.layers.items())
    done = allocate_budget(analysis, scores, cost, (cost.total - 8) / cost.total, options)
    assert done.counts[light] > done.counts[heavy] and done.predicted <= cost.total - 8


def test_a_head_dim_unit_weighs_its_slice_of_every_head():
    # vit_mha_legacy: 4 heads of dim 8; one unit of the q/k/v head-dim group is one position in each head of q, k
    # and v: 12 of in_proj's 96 columns (32 rows each), 12 biases and 4 of out_proj's 32 input positions
    analysis = op.analyze(op.load_model(fixture("vit_mha_legacy")))
    group = analysis.groups[0]
    assert group.size == 8 and {m.size for m in group.members if m.kind == "weight"} == {96, 32}
    assert unit_weights(analysis, 0) == 32 * 12 + 12 + 32 * 4
    # every group's units together hold their share of each weight: a conv after a Concat (densenet) reads only
    # some of its input positions from the group, and only those count
    for name in ("vit_mha_legacy", "densenet_legacy"):
        analysis = op.analyze(op.load_model(fixture(name)))
        for g in analysis.groups:
            held = sum(math.prod(analysis.channels.shape(m.tensor)) * m.size / analysis.channels.shape(m.tensor)[m.axis]
                       for m in g.members if m.kind == "weight")
            assert unit_weights(analysis, g.id) * g.size == pytest.approx(max(held, g.size)), (name, g.id)


# --------------------------------------------------------------------------- prune(target_*=)

@pytest.mark.parametrize("name", ["resnet_legacy", "mobilenetv2_legacy", "densenet_legacy", "vit_mha_legacy",
                                  "shufflenetv2_legacy", "resnext_legacy", "yolo_c2f_dynamo"])
@pytest.mark.parametrize("kind", ["macs", "params"])
def test_prune_to_a_budget(name, kind):
    model = op.load_model(fixture(name))
    result = op.prune(model, "l2", **{f"target_{kind}": 0.5}, options=FINE, verify=True)  # l2: the knapsack
    achieved = getattr(op.stats(result.model), kind) / getattr(op.stats(model), kind)
    budget = result.summary.budget
    assert budget["kind"] == kind and budget["target"] == 0.5
    assert achieved <= budget["predicted_fraction"] + 1e-12 <= 0.5 + 1e-12
    assert achieved > 0.45
    assert result.plan.scope == f"target_{kind}=0.5"
    assert "budget" in result.summary.as_dict()


def test_budget_plan_replays_and_make_plan_agrees():
    model = op.load_model(fixture("resnet_legacy"))
    result = op.prune(model, "l2", target_macs=0.6)  # make_plan's method; a named method: the knapsack
    replay = op.apply_plan(model, result.plan)
    assert replay.model.SerializeToString() == result.model.SerializeToString()
    plan = op.make_plan(model, target_macs=0.6)
    assert [(layer.name, layer.ratio) for layer in plan.layers] == \
        [(layer.name, layer.ratio) for layer in result.plan.layers]
    assert any(layer.ratio for layer in plan.layers)


def test_target_latency_with_a_given_cost_model_is_closed_on_measurement(macs_meter):
    model = op.load_model(fixture("resnet_legacy"))
    cost = stair_cost(op.analyze(model))
    result = op.prune(model, target_latency=0.6, cost=cost, verify=True)
    budget = result.summary.budget
    assert budget["kind"] == "latency" and macs_meter[0].measured == len(budget["attempts"]) <= ATTEMPTS
    # the first attempt asks the cost model for the target itself; the kept one is the closest measured
    assert budget["attempts"][0]["asked"] == 0.6 and budget["attempts"][0]["predicted"] <= 0.6
    measured = [a["measured"] for a in budget["attempts"]]
    assert budget["measured_fraction"] == min(measured, key=lambda m: abs(m - 0.6))
    # what is reported measured is the written model's (here: its MACs)
    assert budget["measured_fraction"] == pytest.approx(op.stats(result.model).macs / op.stats(model).macs)
    assert abs(budget["measured_fraction"] / 0.6 - 1) <= TOLERANCE or len(budget["attempts"]) == ATTEMPTS
    assert "measured" in str(result.summary)
    assert op.prune(model, target_macs=1.0).achieved_ratio == 0.0


def test_recommended_latency_budget_out_of_reach_at_its_max_ratio_is_tried_once_more_wider():
    model = op.load_model(fixture("resnet_legacy"))
    cost = stair_cost(op.analyze(model))
    # measured in MACs: all that max_ratio 0.7 allows keeps about 0.22 of them, 0.9 allows far less
    result = op.prune(model, target_latency=0.15, cost=cost)
    assert result.summary.pipeline.options.max_ratio == result.plan.options.max_ratio == 0.9
    assert op.apply_plan(model, result.plan).model.SerializeToString() == result.model.SerializeToString()
    assert "max_ratio 0.9 (recommended)" in str(result.summary)
    assert result.summary.budget["measured_fraction"] <= 0.15 * (1 + TOLERANCE)
    with pytest.raises(op.BudgetOutOfReachError, match="max_ratio=0.7"):  # a user's max_ratio is theirs
        op.prune(model, target_latency=0.15, cost=cost, options=op.Options(max_ratio=0.7))
    with pytest.raises(op.BudgetOutOfReachError, match="max_ratio=0.9"):  # out of reach at 0.9 too
        op.prune(model, target_latency=0.01, cost=cost)


def test_uniform_allocator_takes_the_least_ratio_predicted_within_the_request():
    options = op.Options(max_ratio=0.7)
    analysis = op.analyze(fixture("resnet_legacy"), options)
    scores = l2_scores(analysis, options)
    cost = stair_cost(analysis)
    allocate = uniform_allocator(analysis, scores, cost, options)

    def removed_units(removed):
        return sum(len(p) for p in removed.values())

    for fraction in (0.5, 0.8):
        removed, exhausted = allocate(fraction)
        assert not exhausted and predicted_fraction(analysis, cost, removed) <= fraction
        assert all(len(p) < analysis.groups[g].size for g, p in removed.items())
        # no ratio on a fine grid that fits removes fewer units: the ratio is the least that fits
        fitting = [uniform_removal(analysis, scores, r, options) for r in np.arange(0.0, 0.7, 0.002)]
        fitting = [cut for cut in fitting if predicted_fraction(analysis, cost, cut) <= fraction]
        assert fitting and removed_units(removed) <= removed_units(fitting[0])
    removed, exhausted = allocate(0.01)  # out of reach: all that max_ratio allows
    widest = uniform_removal(analysis, scores, 0.7, options)
    assert exhausted and {g: list(p) for g, p in removed.items()} == {g: list(p) for g, p in widest.items()}


def test_recommended_latency_budget_keeps_the_allocation_that_re_fits_closer(macs_meter):
    model = op.load_model(fixture("resnet_legacy"))
    cost = stair_cost(op.analyze(model))
    data = np.random.default_rng(0).standard_normal((64, 3, 16, 16)).astype(np.float32)
    chosen = op.prune(model, target_latency=0.6, cost=cost, calibration=data)
    knapsack = op.prune(model, target_latency=0.6, cost=cost, calibration=data, scope="knapsack")
    assert knapsack.summary.pipeline.allocation is None  # a scope given is the user's: nothing compared
    recipe = chosen.summary.pipeline
    assert recipe.allocation.startswith(recipe.scope) and "uniform ratio" in recipe.allocation
    assert recipe.scope in ("knapsack", "uniform") and "allocation: " in str(chosen.summary)
    # the one kept is never further from the original on the calibration data than the knapsack's
    kept, knapsack_error = output_errors(model, [chosen.model, knapsack.model], data)
    assert kept <= knapsack_error
    assert chosen.summary.budget["measured_fraction"] <= 0.6 * (1 + TOLERANCE)


def test_a_uniform_cut_that_re_fits_closer_is_the_result(monkeypatch, macs_meter):
    model = op.load_model(fixture("resnet_legacy"))
    cost = stair_cost(op.analyze(model))
    data = np.random.default_rng(0).standard_normal((32, 3, 16, 16)).astype(np.float32)
    monkeypatch.setattr("onnxprune.latency_allocation.output_errors", lambda original, models, calibration: [0.2, 0.1])
    result = op.prune(model, target_latency=0.8, cost=cost, calibration=data, verify=True)
    assert result.verification.ok  # the mask oracle on the uniform cut's surgery
    assert result.summary.pipeline.scope == "uniform" and result.summary.pipeline.allocation.startswith("uniform")
    kept = {g.id: g.kept for g in result.plan.groups}
    sizes = {g.id: g.size for g in result.plan.groups}
    ratios = {round(1 - len(kept[g]) / sizes[g], 1) for g in kept if sizes[g] >= 8}
    assert len(ratios) == 1  # one ratio everywhere (up to the step's rounding)
    budget = result.summary.budget
    assert budget["measured_fraction"] == pytest.approx(op.stats(result.model).macs / op.stats(model).macs)
    assert budget["measured_fraction"] <= 0.8 * (1 + TOLERANCE) and result.plan.scope == "uniform target_latency=0.8"


def test_output_errors_are_relative_to_the_original_outputs():
    model = op.load_model(fixture("resnet_legacy"))
    data = np.random.default_rng(1).standard_normal((8, 3, 16, 16)).astype(np.float32)
    pruned = op.prune(model, "l2", 0.5).model
    same, error = output_errors(model, [model, pruned], [data[:4], data[4:]])
    reference, got = run(model, {"input": data}), run(pruned, {"input": data})
    expected = np.sqrt(sum(np.sum((got[k].astype(np.float64) - reference[k]) ** 2) for k in reference)
                       / sum(np.sum(reference[k].astype(np.float64) ** 2) for k in reference))
    assert same == 0.0 and error == pytest.approx(expected, rel=1e-5) and error > 0


def fake_attempts(curve):
    """An attempt function whose 'measurement' is curve(prediction) (the allocator predicts what it is asked)."""
    asked = []

    def attempt(fraction):
        asked.append(fraction)
        return Attempt(fraction, fraction, curve(fraction), 10.0, 10.0 * curve(fraction)), len(asked)
    return attempt, asked


def test_the_measurement_loop_converges_on_a_biased_prediction():
    attempt, asked = fake_attempts(lambda p: 1 - 0.7 * (1 - p) ** 1.2)  # measured savings smaller than predicted
    best, payload, attempts = close_on_measurement(0.5, attempt)
    assert abs(best.measured / 0.5 - 1) <= TOLERANCE and payload == len(asked) == len(attempts) <= ATTEMPTS
    assert attempts[0].asked == 0.5 and asked[1] < 0.5


def test_the_measurement_loop_stops_at_once_within_tolerance_and_keeps_the_closest():
    attempt, asked = fake_attempts(lambda p: p * 1.01)
    best, _, attempts = close_on_measurement(0.6, attempt)
    assert len(attempts) == 1 and best.measured == pytest.approx(0.606)
    attempt, asked = fake_attempts(lambda p: 0.3 + 0.1 * math.sin(40 * p))  # no usable direction: bounded
    best, _, attempts = close_on_measurement(0.6, attempt)
    assert len(attempts) <= ATTEMPTS and best.measured == min((a.measured for a in attempts),
                                                               key=lambda m: abs(m - 0.6))


def test_next_request_gives_up_without_a_measured_saving():
    assert next_request(0.5, [Attempt(0.5, 0.5, 1.02, 10.0, 10.2)]) is None
    # a measured saving of 0.4 for a predicted 0.5: ask the cost model for 0.5 x 0.5 / 0.4 saved
    assert next_request(0.5, [Attempt(0.5, 0.5, 0.6, 10.0, 6.0)]) == pytest.approx(1 - 0.5 * 0.5 / 0.4)


def test_the_secant_slope_is_bounded_against_noise():
    # two close attempts measured nearly alike: the raw secant (slope 0.09) would ask for 0.12
    attempts = [Attempt(0.7, 0.693, 0.752, 10.0, 7.52), Attempt(0.748, 0.748, 0.757, 10.0, 7.57)]
    assert next_request(0.7, attempts) == pytest.approx(0.748 + (0.7 - 0.757) / 0.5)


def test_an_unreachable_correction_ends_the_search():
    calls = []

    def attempt(fraction):
        calls.append(fraction)
        if len(calls) > 1:
            raise op.InvalidRequestError("cannot be reached")
        return Attempt(fraction, fraction, 0.8, 10.0, 8.0), None

    best, _, attempts = close_on_measurement(0.5, attempt)
    assert len(calls) == 2 and len(attempts) == 1 and best.measured == 0.8


@pytest.mark.parametrize("kwargs, match", [
    ({"target_macs": 0.0}, r"\(0, 1\]"), ({"target_params": 1.5}, r"\(0, 1\]"), ({"target_macs": True}, r"\(0, 1\]"),
    ({"target_macs": 0.5, "target_params": 0.5}, "one budget"),
    ({"target_macs": 0.5, "ratio": 0.3}, "exactly one"),
    ({"target_macs": 0.5, "recommendation": "slamp"}, "not apply"),
    ({"target_latency": 0.5, "scope": "global", "threads": 1}, "measured knapsack only"),
    ({"target_macs": 0.5, "cost": object()}, "go with target_latency"),
    ({"target_latency": 0.5, "cost": object()}, "cost model"),
    ({"target_latency": 0.5, "threads": 0}, "positive integer"),
    ({"ratio": 0.3, "threads": 2}, "go with target_latency"),
])
def test_bad_budgets_are_refused(kwargs, match):
    with pytest.raises(op.InvalidRequestError, match=match):
        op.prune(fixture("resnet_legacy"), **kwargs)


def test_foreign_cost_model_is_refused():
    cost = stair_cost(op.analyze(fixture("densenet_legacy")))
    with pytest.raises(op.InvalidRequestError, match="another model"):
        op.prune(fixture("resnet_legacy"), target_latency=0.5, cost=cost)


class ProportionalTimer:
    """Fake profiler timings (the seam of op.profile): a layer costs in * out * 5e-3 ms (resnet_legacy's layers:
    7.3 ms at full counts), the whole model 10 ms."""

    def points(self, spec, counts):
        return [5e-3 * i * o for i, o in counts]

    def model(self, source, feed):
        return 10.0


def test_target_latency_runs_through_a_profile():
    cost = op.profile(fixture("resnet_legacy"), cache=False, timer=ProportionalTimer())
    r = op.prune(fixture("resnet_legacy"), "l2", target_latency=0.6, cost=cost, verify=True)
    budget = r.summary.budget
    assert budget["kind"] == "latency" and budget["total"] == pytest.approx(10.0)
    assert budget["attempts"][0]["predicted"] <= 0.6 + 1e-9 and "measured_fraction" in budget
    assert r.pruned_groups


# --------------------------------------------------------------------------- command line

def test_cli_target_macs(tmp_path, capsys):
    out = tmp_path / "small.onnx"
    assert main(["prune", fixture("resnet_legacy"), "-o", str(out), "--target-macs", "0.5", "--step-size", "1",
                 "--verify"]) == 0
    assert "predicted" in capsys.readouterr().out
    assert op.stats(str(out)).macs <= 0.5 * op.stats(fixture("resnet_legacy")).macs


@pytest.mark.parametrize("flags", [["--target-macs", "0"], ["--target-params", "1.2"], ["--target-macs", "0.01"],
                                   ["--target-macs", "0.5", "--cost", "c.json"], ["--target-macs", "0.5", "--threads", "2"],
                                   ["--target-macs", "0.5", "--recommend", "slamp"],
                                   ["--target-latency", "0.5", "--scope", "uniform", "--threads", "1"]])
def test_cli_bad_budget_exits_2_and_writes_nothing(tmp_path, flags):
    out = tmp_path / "small.onnx"
    assert main(["prune", fixture("resnet_legacy"), "-o", str(out), *flags]) == 2
    assert not out.exists()


def test_cli_target_latency_prints_and_reports_prediction_beside_measurement(tmp_path, capsys):
    cost_file, out, report = tmp_path / "cost.json", tmp_path / "small.onnx", tmp_path / "report.md"
    op.profile(fixture("resnet_legacy"), cache=False, timer=ProportionalTimer()).save(cost_file)
    assert main(["prune", fixture("resnet_legacy"), "-o", str(out), "--target-latency", "0.6", "--cost",
                 str(cost_file), "--report", str(report)]) == 0
    printed = capsys.readouterr().out
    assert "predicted" in printed and "measured" in printed
    text = report.read_text()
    assert "## Budget: latency <= 0.6 x the original" in text and "measured after pruning" in text


def test_cli_cost_file_made_with_threads_is_used_with_the_same_threads(tmp_path, capsys):
    cost_file, out = tmp_path / "cost.json", tmp_path / "small.onnx"
    op.profile(fixture("resnet_legacy"), threads=1, cache=False, timer=ProportionalTimer()).save(cost_file)
    args = ["prune", fixture("resnet_legacy"), "-o", str(out), "--target-latency", "0.6", "--cost", str(cost_file)]
    assert main(args) == 2 and not out.exists()  # made for 1 thread, asked for onnxruntime's default
    assert "thread" in capsys.readouterr().err
    assert main(args + ["--threads", "1"]) == 0 and out.exists()
