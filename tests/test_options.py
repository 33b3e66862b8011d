"""Each Options value has its documented effect: policy, layer_norm, group_policy, reshape_channel_axis, steps."""
from __future__ import annotations

import math

import numpy as np
import pytest
from onnx import numpy_helper

import onnxprune as op
from graphs import GraphBuilder
from onnxprune.allocation import kept_count, normalize
from test_coupling import attention_model
from test_criteria_weight import chain_model


@pytest.mark.parametrize("field, value", [
    ("policy", "median"), ("layer_norm", "zscore"), ("group_policy", "max"), ("reshape_channel_axis", 2),
    ("step_op", "ceil"), ("step_size", 0), ("step_size", 2.5), ("max_ratio", 1.0), ("max_ratio", 0),
    ("score_consumers", "yes"),
])
def test_bad_option_values(field, value):
    with pytest.raises(op.InvalidRequestError, match=f"Options.{field}"):
        op.Options(**{field: value})


def test_netspresso_defaults_and_spellings():
    o = op.Options()
    assert (o.policy, o.layer_norm, o.group_policy, o.reshape_channel_axis, o.step_size, o.step_op) == \
        ("average", "standard_score", "average", -1, 2, "round")
    assert op.Options(policy="SUM", layer_norm="TSS_NORM").policy == "sum"


# ---- step rounding --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("step_op", ["round", "round_up", "round_down", "none"])
@pytest.mark.parametrize("step", [2, 4, 8])
def test_kept_counts_are_step_multiples_in_the_stated_direction(step_op, step):
    options = op.Options(step_size=step, step_op=step_op)
    for size in range(2, 70):
        for ratio in np.linspace(0.05, 0.95, 19):
            exact = size - math.floor(ratio * size + 1e-9)
            kept = kept_count(size, float(ratio), options)
            assert 1 <= kept <= size
            if step_op == "none":
                assert kept == exact
                continue
            if kept < size:
                assert kept % step == 0, (size, ratio, kept)
            smallest = min(step, size)  # rounding never keeps zero channels
            if step_op == "round_up":
                assert kept >= exact
            elif step_op == "round_down":
                assert kept <= exact or kept == smallest
            else:
                assert abs(kept - exact) <= step / 2 or kept in (size, smallest)


def test_step_rounding_end_to_end():
    model = chain_model()
    for step_op, kept in (("round", 4), ("round_up", 8), ("round_down", 4), ("none", 5)):
        options = op.Options(step_size=4, step_op=step_op)
        result = op.prune(model, "l2", ratio=0.4, options=options, verify=True)  # 8 channels, exact kept count 5
        assert {g["kept"] for g in result.summary.groups} <= {kept, 8}
        assert all(g["kept"] == kept for g in result.summary.groups if g["size"] == 8), step_op


# ---- layer norms ----------------------------------------------------------------------------------------------
def test_the_five_layer_norms():
    s = np.array([1.0, 2.0, 3.0, 6.0])
    np.testing.assert_allclose(normalize(s, "standard_score"), (s - 3.0) / np.sqrt(3.5))
    np.testing.assert_allclose(normalize(s, "tss_norm"), s / 12.0)
    np.testing.assert_allclose(normalize(s, "linear_scaling"), [0.0, 0.2, 0.4, 1.0])
    np.testing.assert_allclose(normalize(s, "softmax_norm"), np.exp(s) / np.exp(s).sum())
    np.testing.assert_allclose(normalize(s, "none"), s)
    flat = np.full(4, 2.0)
    assert not normalize(flat, "standard_score").any() and not normalize(flat, "linear_scaling").any()
    np.testing.assert_allclose(normalize(np.zeros(4), "tss_norm"), 0.25)
    with pytest.raises(op.InvalidRequestError):
        normalize(s, "zscore")


# ---- policy: how the layers of one group combine ----------------------------------------------------------------
def set_filter_norms(model, name: str, norms) -> None:
    """Rescale the output filters of initializer `name` to these L2 norms."""
    tensor = next(t for t in model.graph.initializer if t.name == name)
    w = numpy_helper.to_array(tensor).astype(np.float64)
    rows = w.reshape(len(w), -1)
    rows = rows / np.linalg.norm(rows, axis=1, keepdims=True) * np.asarray(norms)[:, None]
    tensor.CopyFrom(numpy_helper.from_array(rows.reshape(w.shape).astype(np.float32), name))


def residual_then_plain():
    """Group A: stem + block1 + block2 (residual adds, 3 producers); group B: mid (1 producer)."""
    g = GraphBuilder()
    r = g.node("Relu", [g.conv("x", 3, 8, "stem")])
    s = g.node("Add", [g.conv(r, 8, 8, "block1"), r])
    s2 = g.node("Add", [g.conv(s, 8, 8, "block2"), s])
    g.conv(g.node("Relu", [g.conv(s2, 8, 8, "mid")]), 8, 4, "out", k=1)
    g.nodes[-1].output[0] = "y"
    model = g.model({"x": (1, 3, 8, 8)}, {"y": (1, 4, 8, 8)})
    ramp = 0.01 * np.arange(8)
    for name in ("stem", "block1", "block2"):
        set_filter_norms(model, f"{name}.weight", 1.0 + ramp)
    set_filter_norms(model, "mid.weight", 2.0 + ramp)
    return model


def test_sum_and_average_policies_differ_on_a_residual_group():
    model = residual_then_plain()
    a = op.analyze(model)
    residual, plain = a.layer("stem").group, a.layer("mid").group
    assert sorted(a.groups[residual].layers) == ["block1", "block2", "stem"]

    def removed_per_group(policy):
        options = op.Options(policy=policy, layer_norm="none", step_size=1)
        result = op.prune(model, "l2", ratio=0.25, scope="global", options=options, verify=True)
        return {g["id"]: g["size"] - g["kept"] for g in result.summary.groups}

    assert removed_per_group("average") == {residual: 4}  # residual scores ~1 < plain ~2
    assert removed_per_group("sum") == {plain: 4}  # residual scores ~3 > plain ~2
    from onnxprune.criteria import CRITERIA, CriterionContext

    scores = {p: CRITERIA["l2"](CriterionContext(a, op.Options(policy=p), [residual]))[residual]
              for p in ("sum", "average", "max")}
    np.testing.assert_allclose(scores["sum"], 3 * scores["average"], rtol=1e-6)
    np.testing.assert_allclose(scores["max"], 1.0 + 0.01 * np.arange(8), rtol=1e-5)


# ---- group policy: grouped conv ---------------------------------------------------------------------------------
def grouped_model():
    g = GraphBuilder()
    a = g.conv("x", 3, 8, "pw1", k=1)
    d = g.conv(a, 8, 8, "gconv", group=2)
    g.conv(d, 8, 4, "pw2", k=1)
    g.nodes[-1].output[0] = "y"
    model = g.model({"x": (1, 3, 8, 8)}, {"y": (1, 4, 8, 8)})
    # filters 0-3 are group 0's slices of units 0-3, filters 4-7 group 1's
    set_filter_norms(model, "gconv.weight", [1.0, 2.0, 3.0, 4.0, 9.5, 8.0, 1.0, 2.0])
    return model


@pytest.mark.parametrize("group_policy, removed_units", [
    ("sum", [2, 3]),  # 1+9.5, 2+8, 3+1, 4+2
    ("average", [2, 3]),  # the same, halved
    ("none", [0, 1]),  # the first group's slices: 1, 2, 3, 4
    ("count", [0, 2]),  # slices beaten per group: (0+3, 1+2, 2+0, 3+1)
])
def test_group_policies_on_a_grouped_conv(group_policy, removed_units):
    model = grouped_model()
    options = op.Options(group_policy=group_policy, step_size=1)
    result = op.prune(model, "l2", ratios={"gconv": 0.5}, options=options, verify=True)
    mask = np.array(result.channels["gconv_out"]["mask"])
    assert (mask[:4] == mask[4:]).all()  # equal counts, same positions in both groups
    assert np.flatnonzero(~mask[:4]).tolist() == removed_units


# ---- reshape_channel_axis: whole heads or dims inside every head ------------------------------------------------
@pytest.mark.parametrize("axis", [0, -2, 1, -1])
def test_reshape_channel_axis_scores_heads_or_dims(axis):
    model = attention_model()
    w = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    heads = axis in (0, -2)  # whole heads tie q, k and v; dims tie q with k only
    producers = ("wq", "wk", "wv") if heads else ("wq", "wk")
    per_head = sum(np.linalg.norm(w[name], axis=0) for name in producers).reshape(2, 4)  # (heads, dims)
    options = op.Options(reshape_channel_axis=axis, step_size=1, policy="sum", group_policy="sum")
    result = op.prune(model, "l2", ratios={"q_proj": 0.5}, options=options, verify=True)
    mask = np.array(result.channels["q_proj_out"]["mask"]).reshape(2, 4)
    if heads:
        gone = int(np.argmin(per_head.sum(axis=1)))
        assert not mask[gone].any() and mask[1 - gone].all()
    else:
        gone = sorted(np.argsort(per_head.sum(axis=0), kind="stable")[:2].tolist())
        assert (mask[0] == mask[1]).all() and np.flatnonzero(~mask[0]).tolist() == gone
