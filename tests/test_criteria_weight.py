"""Weight- and gradient-based criteria against direct numpy computations, and the oracle on every fixture."""
from __future__ import annotations

import glob
import os

import numpy as np
import pytest
from onnx import numpy_helper

import onnxprune as op
from graphs import GraphBuilder
from onnxprune.allocation import lamp_scores

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXACT = op.Options(step_size=1)


def chain_model(bn: bool = False):
    """x -> conv1 (3->8) [-> BN] -> Relu -> conv2 (8->8) -> Relu -> conv3 (8->4) -> y."""
    g = GraphBuilder()
    a = g.conv("x", 3, 8, "conv1")
    if bn:
        scale = g.const("bn.scale", (8,), [0.5, -3.0, 0.1, 2.0, -0.2, 1.5, 0.05, -1.0])
        params = [g.const(f"bn.{k}", (8,), np.linspace(0.1, 0.8, 8) + (k == "var")) for k in ("bias", "mean", "var")]
        a = g.node("BatchNormalization", [a, scale] + params, name="bn")
    b = g.conv(g.node("Relu", [a]), 8, 8, "conv2")
    g.conv(g.node("Relu", [b]), 8, 4, "conv3", k=1)
    g.nodes[-1].output[0] = "y"
    return g.model({"x": (1, 3, 8, 8)}, {"y": (1, 4, 8, 8)})


def weight(model, name: str) -> np.ndarray:
    return next(numpy_helper.to_array(t) for t in model.graph.initializer if t.name == name)


def removed_of(result, tensor: str = "conv1_out") -> list[int]:
    return [k for k, kept in enumerate(result.channels[tensor]["mask"]) if not kept]


def lowest(scores: np.ndarray, n: int) -> list[int]:
    return sorted(np.argsort(scores, kind="stable")[:n].tolist())


def filter_rows(w: np.ndarray, axis: int = 0) -> np.ndarray:
    return np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1).astype(np.float64)


def fpgm(rows: np.ndarray) -> np.ndarray:
    return np.array([sum(np.linalg.norm(r - other) for other in rows) for r in rows])


def lamp_direct(norms: np.ndarray) -> np.ndarray:
    squared = norms ** 2
    return np.array([s / squared[squared >= s].sum() for s in squared])


@pytest.mark.parametrize("method, score", [
    ("l2", lambda rows: np.linalg.norm(rows, axis=1)),
    ("PR_L2", lambda rows: np.linalg.norm(rows, axis=1)),
    ("l1", lambda rows: np.abs(rows).sum(axis=1)),
    ("gm", fpgm),
    ("PR_GM", fpgm),
    ("lamp", lambda rows: lamp_direct(np.linalg.norm(rows, axis=1))),
])
def test_weight_criteria_remove_what_numpy_picks(method, score):
    model = chain_model()
    expected = lowest(score(filter_rows(weight(model, "conv1.weight"))), 3)
    result = op.prune(model, method, ratios={"conv1": 0.4}, options=EXACT, verify=True)
    assert removed_of(result) == expected


def test_lamp_scores_formula():
    np.testing.assert_allclose(lamp_scores(np.array([2.0, 1.0, 3.0])), [4 / 13, 1 / 14, 1.0])
    norms = np.random.default_rng(3).random(9)
    np.testing.assert_allclose(lamp_scores(norms), lamp_direct(norms))


def test_consumer_scoring_adds_the_consumer_slices():
    model = chain_model()
    producer = np.linalg.norm(filter_rows(weight(model, "conv1.weight")), axis=1)
    consumer = np.linalg.norm(filter_rows(weight(model, "conv2.weight"), axis=1), axis=1)
    options = op.Options(step_size=1, policy="sum", score_consumers=True)
    result = op.prune(model, "l2", ratios={"conv1": 0.5}, options=options, verify=True)
    assert removed_of(result) == lowest(producer + consumer, 4)
    assert op.Options().score_consumers is False


def test_random_is_seeded():
    model = chain_model()
    group = op.analyze(model).layer("conv1").group
    expected = lowest(np.random.default_rng([7, group]).random(8), 4)
    first = op.prune(model, "random", ratios={"conv1": 0.5}, options=EXACT, seed=7)
    again = op.prune(model, "random", ratios={"conv1": 0.5}, options=EXACT, seed=7)
    assert removed_of(first) == removed_of(again) == expected
    others = {tuple(removed_of(op.prune(model, "random", ratios={"conv1": 0.5}, options=EXACT, seed=s)))
              for s in range(6)}
    assert len(others) > 1


def test_bn_scale_removes_smallest_gamma():
    model = chain_model(bn=True)
    gamma = np.abs(weight(model, "bn.scale"))
    result = op.prune(model, "bn_scale", ratios={"conv1": 0.5}, options=EXACT, verify=True)
    assert removed_of(result) == lowest(gamma, 4) == [0, 2, 4, 6]


def test_bn_scale_refuses_folded_bn():
    with pytest.raises(op.UnsupportedError, match="folded") as info:
        op.prune(chain_model(), "bn_scale", ratio=0.5)
    assert "TrainingMode.PRESERVE" in str(info.value) and "do_constant_folding=False" in str(info.value)
    with pytest.warns(RuntimeWarning, match="conv2"):  # BN on conv1's group only: the others fall back to l2
        result = op.prune(chain_model(bn=True), "bn_scale", ratio=0.5, verify=True)
    assert result.verification.ok


def gradients_for(model, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {t.name: rng.standard_normal(tuple(t.dims)).astype(np.float32) for t in model.graph.initializer}


def test_taylor_sums_producer_and_consumer_slices():
    model = chain_model()
    grads = gradients_for(model)
    w1, w2 = weight(model, "conv1.weight"), weight(model, "conv2.weight")
    producer = np.abs(filter_rows(w1 * grads["conv1.weight"])).sum(axis=1)
    consumer = np.abs(filter_rows(w2 * grads["conv2.weight"], axis=1)).sum(axis=1)
    options = op.Options(step_size=1, policy="sum")
    result = op.prune(model, "taylor", ratios={"conv1": 0.5}, options=options, gradients=grads, verify=True)
    assert removed_of(result) == lowest(producer + consumer, 4)


def test_taylor_bad_gradients():
    model = chain_model()
    grads = gradients_for(model)
    with pytest.raises(op.InvalidRequestError, match="needs gradients"):
        op.prune(model, "taylor", ratio=0.5)
    wrong = dict(grads, **{"conv2.weight": np.zeros((8, 8, 1, 1))})
    with pytest.raises(op.InvalidRequestError, match=r"'conv2.weight' has shape \[8, 8, 1, 1\].*\[8, 8, 3, 3\]"):
        op.prune(model, "taylor", ratio=0.5, gradients=wrong)
    missing = {k: v for k, v in grads.items() if k != "conv1.weight"}
    with pytest.raises(op.InvalidRequestError, match="no gradient for initializer 'conv1.weight'"):
        op.prune(model, "taylor", ratio=0.5, gradients=missing)


def test_unknown_method_and_pr_id():
    with pytest.raises(op.InvalidRequestError, match="unknown pruning method 'l3'.*gm"):
        op.prune(chain_model(), "l3", ratio=0.5)
    with pytest.raises(op.InvalidRequestError, match="prune_by_index"):
        op.prune(chain_model(), "PR_ID", ratio=0.5)


def test_custom_criterion_is_used_and_checked():
    from onnxprune.criteria import CRITERIA

    @op.register_criterion("test_reverse")
    def reverse(ctx):  # the first channels score highest
        return {g: -np.arange(ctx.analysis.groups[g].size, dtype=float) for g in ctx.groups}

    op.register_criterion("test_short", lambda ctx: {g: np.zeros(1) for g in ctx.groups})
    try:
        assert removed_of(op.prune(chain_model(), "test_reverse", ratios={"conv1": 0.5}, options=EXACT)) == [4, 5, 6, 7]
        with pytest.raises(op.InvalidRequestError, match="test_short"):
            op.prune(chain_model(), "test_short", ratio=0.5)
    finally:
        CRITERIA.pop("test_reverse")
        CRITERIA.pop("test_short")


# ---- the mask oracle for criterion x option combinations on every coupling fixture -----------------------------
FIXTURES = sorted(glob.glob(os.path.join(ROOT, "fixtures", "*.onnx")))
COMBINATIONS = [  # (method, prune kwargs, options); each fixture runs two of them, in turn
    ("l2", {"scope": "global"}, {"layer_norm": "standard_score", "policy": "sum"}),
    ("gm", {}, {"group_policy": "count", "step_op": "round_up"}),
    ("lamp", {"scope": "global"}, {"layer_norm": "tss_norm", "group_policy": "none"}),
    ("l1", {"recommendation": "slamp"}, {"policy": "max", "step_size": 4}),
    ("random", {"scope": "global"}, {"layer_norm": "softmax_norm", "step_op": "round_down"}),
    ("taylor", {}, {"policy": "sum", "group_policy": "sum", "score_consumers": True}),
    ("gm", {"scope": "global"}, {"layer_norm": "linear_scaling", "reshape_channel_axis": 0}),
    ("l2", {"recommendation": "slamp"}, {"layer_norm": "none", "step_op": "none", "score_consumers": True}),
]


@pytest.mark.parametrize("index", range(len(FIXTURES)), ids=[os.path.basename(f) for f in FIXTURES])
def test_mask_oracle_for_criteria_and_options(index):
    model = op.load_model(FIXTURES[index])
    for method, kwargs, option_values in (COMBINATIONS[(2 * index + k) % len(COMBINATIONS)] for k in range(2)):
        extra = {"gradients": gradients_for(model)} if method == "taylor" else {}
        result = op.prune(model, method, 0.4, options=op.Options(**option_values), verify=True, **kwargs, **extra)
        assert result.verification.max_rel_error <= result.verification.tol, (method, kwargs, option_values)


@pytest.mark.parametrize("name", ["resnet_bn_legacy.onnx", "resnet_bn_dynamo.onnx"])
def test_mask_oracle_bn_scale(name):
    model = op.load_model(os.path.join(ROOT, "fixtures", name))
    for scope in ("uniform", "global"):
        result = op.prune(model, "bn_scale", 0.5, scope=scope, verify=True)
        assert result.pruned_groups and result.verification.max_rel_error <= 1e-4
