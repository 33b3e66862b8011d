"""Rule-level checks of the coupling analysis, each proven by the mask oracle."""
from __future__ import annotations

import numpy as np
import pytest

import onnxprune as op
from graphs import GraphBuilder


def oracle_ok(model, result) -> None:
    report = op.verify_pruning(model, result)
    assert report.ok, str(report)
    assert report.max_rel_error <= 1e-4


def residual_model():
    g = GraphBuilder()
    a = g.conv("x", 3, 8, "stem")
    r = g.node("Relu", [a])
    b = g.conv(r, 8, 8, "block1")
    s = g.node("Add", [b, r], name="add1")
    c = g.conv(s, 8, 8, "block2")
    s2 = g.node("Add", [c, s], name="add2")
    g.conv(s2, 8, 4, "head", k=1)
    g.nodes[-1].output[0] = "y"
    return g.model({"x": (1, 3, 8, 8)}, {"y": (1, 4, 8, 8)})


def test_residual_adds_join_one_group():
    model = residual_model()
    a = op.analyze(model)
    groups = {layer.name: layer.group for layer in a.layers}
    assert groups["stem"] == groups["block1"] == groups["block2"]
    assert groups["head"] != groups["stem"]
    assert not a.groups[groups["head"]].prunable and "graph output" in a.groups[groups["head"]].reason
    r = op.prune(model, "l2", ratio=0.5, verify=True)
    assert r.channels["add2_out"]["axes"] == [1] and sum(r.channels["add2_out"]["mask"]) == 4
    oracle_ok(model, r)


def test_concat_keeps_offsets_and_groups_apart():
    g = GraphBuilder()
    a = g.conv("x", 3, 6, "left")
    b = g.conv("x", 3, 10, "right")
    c = g.node("Concat", [a, b], axis=1, name="cat")
    g.conv(c, 16, 4, "out", k=1)
    g.nodes[-1].output[0] = "y"
    model = g.model({"x": (1, 3, 8, 8)}, {"y": (1, 4, 8, 8)})
    a_ = op.analyze(model)
    assert a_.layer("left").group != a_.layer("right").group
    r = op.prune_by_index(model, {"right": [0, 9]}, verify=True)
    mask = r.channels["cat_out"]["mask"]
    assert mask[6] is False and mask[15] is False and sum(mask) == 14
    oracle_ok(model, r)


def test_depthwise_conv_group_rewritten():
    g = GraphBuilder()
    a = g.conv("x", 3, 8, "pw1", k=1)
    d = g.conv(a, 8, 8, "dw", group=8)
    g.conv(d, 8, 4, "pw2", k=1)
    g.nodes[-1].output[0] = "y"
    model = g.model({"x": (1, 3, 8, 8)}, {"y": (1, 4, 8, 8)})
    r = op.prune_by_index(model, {"pw1": [1, 2, 3]}, verify=True)
    dw = next(n for n in r.model.graph.node if n.name == "dw")
    assert next(a.i for a in dw.attribute if a.name == "group") == 5
    oracle_ok(model, r)


def test_grouped_conv_prunes_same_positions_in_every_group():
    g = GraphBuilder()
    a = g.conv("x", 3, 8, "pw1", k=1)
    d = g.conv(a, 8, 8, "gconv", group=2)
    g.conv(d, 8, 4, "pw2", k=1)
    g.nodes[-1].output[0] = "y"
    model = g.model({"x": (1, 3, 8, 8)}, {"y": (1, 4, 8, 8)})
    r = op.prune(model, "l2", ratio=0.5, verify=True)
    mask = np.array(r.channels["pw1_out"]["mask"])
    assert (mask[:4] == mask[4:]).all()
    gconv = next(n for n in r.model.graph.node if n.name == "gconv")
    assert next(a.i for a in gconv.attribute if a.name == "group") == 2
    oracle_ok(model, r)


def test_unknown_op_blocks_with_node_and_op_in_reason():
    g = GraphBuilder()
    a = g.conv("x", 3, 8, "c1")
    g.node("TopK", [a, g.const("k", (1,), [2], dtype=np.int64)], name="topk", outputs=2, axis=1)
    g.nodes[-1].output[:] = ["y", "idx"]
    model = g.model({"x": (1, 3, 8, 8)}, {"y": (1, 2, 8, 8)})
    a_ = op.analyze(model)
    group = a_.groups[a_.layer("c1").group]
    assert not group.prunable and "topk" in group.reason and "TopK" in group.reason
    with pytest.raises(op.UnsupportedError, match="TopK"):
        op.prune(model, "l2", ratios={"c1": 0.5})


def attention_model():
    tokens, dim, heads = 5, 8, 2
    g = GraphBuilder()
    q = g.node("MatMul", ["x", g.const("wq", (dim, dim))], name="q_proj")
    k = g.node("MatMul", ["x", g.const("wk", (dim, dim))], name="k_proj")
    v = g.node("MatMul", ["x", g.const("wv", (dim, dim))], name="v_proj")
    shape = g.const("heads_shape", (4,), [1, tokens, heads, dim // heads], dtype=np.int64)
    qh = g.node("Transpose", [g.node("Reshape", [q, shape])], perm=[0, 2, 1, 3])
    kh = g.node("Transpose", [g.node("Reshape", [k, shape])], perm=[0, 2, 3, 1])
    vh = g.node("Transpose", [g.node("Reshape", [v, shape])], perm=[0, 2, 1, 3])
    att = g.node("Softmax", [g.node("MatMul", [qh, kh])], axis=-1)
    o = g.node("Transpose", [g.node("MatMul", [att, vh])], perm=[0, 2, 1, 3])
    merged = g.node("Reshape", [o, g.const("merge_shape", (3,), [1, tokens, dim], dtype=np.int64)])
    out = g.node("MatMul", [merged, g.const("wo", (dim, dim))], name="o_proj")
    g.node("Add", [out, "x"], name="residual")
    g.nodes[-1].output[0] = "y"
    return g.model({"x": (1, tokens, dim)}, {"y": (1, tokens, dim)})


@pytest.mark.parametrize("axis", [-1, 0])
def test_attention_heads_dims_and_whole_heads(axis):
    model = attention_model()
    options = op.Options(reshape_channel_axis=axis, step_size=1)
    a = op.analyze(model, options)
    q, k, v = (a.groups[a.layer(n).group] for n in ("q_proj", "k_proj", "v_proj"))
    assert q.id == k.id and q.prunable and v.prunable
    assert q.size == (4 if axis == -1 else 2)
    r = op.prune(model, "l2", ratio=0.5, options=options, verify=True)
    oracle_ok(model, r)
    mask = np.array(r.channels["q_proj_out"]["mask"])
    if axis == 0:  # a whole head (4 consecutive channels) goes
        assert mask.sum() == 4 and (mask[:4] != mask[4:]).all()
    else:  # the same dims go in both heads
        assert (mask[:4] == mask[4:]).all() and mask.sum() == 4


def test_layernorm_group_is_inexact():
    g = GraphBuilder()
    h = g.node("MatMul", ["x", g.const("w1", (8, 8))], name="fc1")
    n = g.node("LayerNormalization", [h, g.const("gamma", (8,)), g.const("beta", (8,))], axis=-1)
    g.node("MatMul", [n, g.const("w2", (8, 4))], name="fc2")
    g.nodes[-1].output[0] = "y"
    model = g.model({"x": (2, 8)}, {"y": (2, 4)})
    a = op.analyze(model)
    group = a.groups[a.layer("fc1").group]
    assert group.prunable and not group.exact and "LayerNormalization" in group.reason
    r = op.prune(model, "l2", ratio=0.5, verify=True)  # the oracle runs on the exact groups only
    assert not r.exact
    assert r.summary.after.params < r.summary.before.params


def test_flatten_into_gemm_from_conv1d():
    g = GraphBuilder()
    c = g.node("Conv", ["x", g.const("c.weight", (6, 2, 3)), g.const("c.bias", (6,))], name="conv1d", pads=[1, 1])
    f = g.node("Flatten", [g.node("Relu", [c])], axis=1)
    g.node("Gemm", [f, g.const("fc.weight", (3, 6 * 7)), g.const("fc.bias", (3,))], name="fc", transB=1)
    g.nodes[-1].output[0] = "y"
    model = g.model({"x": (2, 2, 7)}, {"y": (2, 3)})
    r = op.prune_by_index(model, {"conv1d": [0, 4]}, verify=True)
    fc_weight = next(t for t in r.model.graph.initializer if t.name == "fc.weight")
    assert list(fc_weight.dims) == [3, 4 * 7]
    oracle_ok(model, r)


def test_split_sizes_rewritten_and_channel_shuffle():
    g = GraphBuilder()
    a = g.conv("x", 3, 8, "c1", k=1)
    left, right = g.node("Split", [a], outputs=2, axis=1, num_outputs=2, name="split")
    b = g.conv(right, 4, 4, "branch", k=1)
    cat = g.node("Concat", [left, b], axis=1)
    shuffled = g.node("Reshape", [cat, g.const("s1", (5,), [1, 2, 4, 8, 8], dtype=np.int64)])
    shuffled = g.node("Transpose", [shuffled], perm=[0, 2, 1, 3, 4])
    shuffled = g.node("Reshape", [shuffled, g.const("s2", (4,), [1, 8, 8, 8], dtype=np.int64)])
    g.conv(shuffled, 8, 4, "out", k=1)
    g.nodes[-1].output[0] = "y"
    model = g.model({"x": (1, 3, 8, 8)}, {"y": (1, 4, 8, 8)})
    for ratio in (0.25, 0.5):
        r = op.prune(model, "l2", ratio=ratio, options=op.Options(step_size=1), verify=True)
        oracle_ok(model, r)
    r = op.prune_by_index(model, {"branch": [1]}, verify=True)
    oracle_ok(model, r)


def test_input_model_is_not_changed():
    model = residual_model()
    before = model.SerializeToString()
    op.prune(model, "l2", ratio=0.5)
    op.prune_by_index(model, {"stem": [0]})
    assert model.SerializeToString() == before


def test_pruning_is_deterministic():
    model = residual_model()
    first = op.prune(model, "l2", ratio=0.3).model.SerializeToString()
    assert op.prune(model, "l2", ratio=0.3).model.SerializeToString() == first
