"""onnxruntime-fused transformer graphs (fixtures/deploy, made by fixtures/make_deploy_fixtures.py): every layer keeps
an exact prunable group, the mask oracle holds at 0.3 and 0.5, head counts in attributes follow."""
from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import onnxprune as op
from onnxprune.graph import attribute

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEPLOY = os.path.join(ROOT, "fixtures", "deploy")
FUSED = ["bert_fused", "gpt2_fused", "vit_fused", "llama_fused"]
HELPER = ["ms_mlp_mha", "ms_gqa_rotary", "ms_fused_conv"]
LAYERS, FFN, HEADS = 2, 64, 4
WHOLE_HEADS, HEAD_DIMS = op.Options(reshape_channel_axis=0), op.Options(reshape_channel_axis=-1)


def fixture(name: str) -> str:
    return os.path.join(DEPLOY, f"{name}.onnx")


@pytest.mark.parametrize("name", FUSED)
def test_every_layer_has_exact_mlp_and_head_groups(name):
    by_heads = op.analyze(fixture(name), WHOLE_HEADS)
    mlp = [g for g in by_heads.groups if g.size == FFN and g.exact and g.prunable]
    heads = [g for g in by_heads.groups if g.size == HEADS and g.exact and g.prunable]
    assert len(mlp) == LAYERS, [(g.size, g.reason) for g in by_heads.groups]
    assert len(heads) == LAYERS, [(g.size, g.reason) for g in by_heads.groups]


@pytest.mark.parametrize("options", [WHOLE_HEADS, HEAD_DIMS], ids=["heads", "dims"])
@pytest.mark.parametrize("ratio", [0.3, 0.5])
@pytest.mark.parametrize("name", FUSED + HELPER)
def test_mask_oracle(name, ratio, options, tmp_path):
    original = op.load_model(fixture(name))
    result = op.prune(original, "l2", ratio=ratio, options=options, verify=True)
    assert result.verification.ok, str(result.verification)
    assert result.summary.after.params < result.summary.before.params
    assert op.verify(original, result.model).max_rel_error > 1e-3  # the oracle compared a real change
    op.save_model(result.model, tmp_path / "pruned.onnx", reference=original)  # checker + onnxruntime + I/O


def test_fused_attention_head_counts_rewritten():
    result = op.prune(fixture("bert_fused"), "l2", ratio=0.5, options=WHOLE_HEADS, verify=True)
    attentions = [n for n in result.model.graph.node if n.op_type == "Attention"]
    assert [attribute(n, "num_heads") for n in attentions] == [2, 2]
    assert [list(attribute(n, "qkv_hidden_sizes")) for n in attentions] == [[16, 16, 16]] * 2


def test_fused_attention_head_dims_keep_the_scale():
    result = op.prune(fixture("vit_fused"), "l2", ratio=0.5, options=HEAD_DIMS, verify=True)
    attention = next(n for n in result.model.graph.node if n.op_type == "Attention")
    assert attribute(attention, "num_heads") == HEADS
    assert attribute(attention, "scale") == pytest.approx(1 / np.sqrt(8))  # the original head size's
    analysis = op.analyze(fixture("vit_fused"), HEAD_DIMS)
    inexact = [g for g in analysis.groups if not g.exact and "Attention" in (g.reason or "")]
    assert inexact and "Q/K head dims" in inexact[0].reason


def test_group_query_attention_prunes_whole_kv_groups():
    result = op.prune(fixture("ms_gqa_rotary"), "l2", ratio=0.5, options=op.Options(step_size=1), verify=True)
    attrs = {(n.op_type, a.name): a.i for n in result.model.graph.node if n.domain for a in n.attribute}
    assert attrs[("GroupQueryAttention", "num_heads")] == 2
    assert attrs[("GroupQueryAttention", "kv_num_heads")] == 1


def test_unknown_contrib_op_blocks_with_node_op_and_domain():
    w = onnx.numpy_helper.from_array(np.ones((4, 6), np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="proj"),
             helper.make_node("MysteryMix", ["h"], ["y"], name="mystery", domain="com.microsoft")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 6])], [w])
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    group = op.analyze(model).groups[0]
    assert not group.prunable
    assert "'mystery'" in group.reason and "MysteryMix" in group.reason and "com.microsoft" in group.reason
