"""Shared tensors that must not tie layers together (issue 18, per-layer freedom), and weights that are tied on
purpose. Fixtures: fixtures/make_sharing_fixtures.py; small graphs: tests/graphs.py."""
from __future__ import annotations

import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import onnxprune as op
from onnxprune.cli import main
from graphs import GraphBuilder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VIT = os.path.join(ROOT, "fixtures", "sharing_vit_legacy.onnx")
LLAMA = os.path.join(ROOT, "fixtures", "sharing_llama_legacy.onnx")


def group_of(analysis, layer: str) -> int:
    return analysis.layer(layer).group


def readers(model: onnx.ModelProto, tensor: str) -> list[str]:
    return [n.name for n in model.graph.node if tensor in n.input]


# --------------------------------------------------------------------------- ViT: de-duplicated biases

def test_vit_fixture_shares_biases_and_reshape_targets():
    model = onnx.load(VIT)
    identities = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "Identity"}
    bias_sources = [identities.get(t, t) for n in model.graph.node if n.op_type == "Add" and "fc1" in n.name
                    for t in n.input if "MatMul" not in t]
    assert len(bias_sources) == 2 and bias_sources[0] == bias_sources[1]  # one zero bias for both blocks
    targets = [n.input[1] for n in model.graph.node if n.op_type == "Reshape"]
    assert any(targets.count(t) == 2 for t in targets)  # one Reshape target read by both blocks


def test_vit_blocks_get_their_own_attention_and_mlp_groups():
    analysis = op.analyze(VIT)
    for kind in ("qkv", "fc1"):
        groups = [group_of(analysis, f"/blocks/blocks.{b}/{kind}/MatMul") for b in (0, 1)]
        assert groups[0] != groups[1], kind
        for b, g in enumerate(groups):
            assert analysis.groups[g].prunable and analysis.groups[g].exact
            assert all(f"blocks.{b}/" in layer for layer in analysis.groups[g].layers)
    assert not analysis.tied  # biases and norm parameters are no layer's weight: nothing is tied


def test_vit_block_pruned_alone_keeps_the_other_block_and_passes_the_oracle():
    original = op.load_model(VIT)
    result = op.prune_by_index(original, {"/blocks/blocks.0/fc1/MatMul": [0, 3, 17]}, verify=True)
    assert result.verification.ok, str(result.verification)
    after = op.analyze(result.model)
    assert after.layer("/blocks/blocks.0/fc1/MatMul").out_channels == 61
    assert after.layer("/blocks/blocks.1/fc1/MatMul").out_channels == 64


def test_vit_shared_reshape_target_is_rewritten_for_the_pruned_block_only():
    original = op.load_model(VIT)
    result = op.prune_by_index(original, {"/blocks/blocks.0/qkv/MatMul": [1, 6]}, verify=True)
    assert result.verification.ok, str(result.verification)
    before = {n.name: n.input[1] for n in original.graph.node if n.op_type == "Reshape"}
    after = {n.name: n.input[1] for n in result.model.graph.node if n.op_type == "Reshape"}
    shared = [name for name, target in before.items() if list(before.values()).count(target) == 2]
    block0 = [name for name in shared if "blocks.0/" in name]
    block1 = [name for name in shared if "blocks.1/" in name]
    assert block0 and block1
    assert all(after[name] == before[name] for name in block1)  # block 1 keeps the shared target
    assert any(after[name] != before[name] for name in block0)  # block 0's head split gets its own


# --------------------------------------------------------------------------- Llama: RoPE cos/sin, tied embeddings

def test_llama_gets_per_layer_qk_head_dim_groups():
    analysis = op.analyze(LLAMA)
    groups = []
    for layer in (0, 1):
        q = group_of(analysis, f"/layers.{layer}/q_proj/MatMul")
        assert q == group_of(analysis, f"/layers.{layer}/k_proj/MatMul")
        assert analysis.groups[q].prunable and analysis.groups[q].exact, analysis.groups[q].reason
        groups.append(q)
    assert groups[0] != groups[1]


def test_rope_tables_are_sliced_per_reader_and_pass_the_oracle():
    original = op.load_model(LLAMA)
    result = op.prune_by_index(original, {"/layers.0/q_proj/MatMul": [1]}, verify=True)
    assert result.verification.ok, str(result.verification)
    gathered = [n for n in result.model.graph.node if n.op_type == "Gather" and n.input[0] in ("/Cos_output_0",
                                                                                               "/Sin_output_0")]
    assert len(gathered) == 2  # one Gather per table, shared by layer 0's q and k (same kept positions)
    assert "/Cos_output_0" in {t for n in result.model.graph.node if "layers.1" in n.name for t in n.input}


def test_tied_embeddings_stay_tied():
    analysis = op.analyze(LLAMA)
    assert set(analysis.tied["embed.weight"]) == {"/embed/Gather", "/MatMul"}
    assert group_of(analysis, "/embed/Gather") == group_of(analysis, "/layers.0/o_proj/MatMul")
    original = op.load_model(LLAMA)
    result = op.prune_by_index(original, {"/embed/Gather": [2, 5]})
    model = result.model
    gather = next(n for n in model.graph.node if n.op_type == "Gather" and n.input[1] == "input_ids")
    transpose = next(n for n in model.graph.node if n.op_type == "Transpose" and n.input[0] == gather.input[0])
    head = next(n for n in model.graph.node if n.output[0] == "output")
    assert transpose.output[0] in head.input  # the lm_head still reads the (one, sliced) table transposed
    tables = [list(t.dims) for t in model.graph.initializer if 64 in t.dims]
    assert tables == [[64, 30]]


def test_inspect_says_which_weights_are_tied(capsys):
    assert main(["inspect", LLAMA]) == 0
    assert "tied weight embed.weight: read by /MatMul, /embed/Gather" in capsys.readouterr().out


# --------------------------------------------------------------------------- small graphs

def two_convs_sharing(bias: bool) -> onnx.ModelProto:
    """x -> conv a -> relu -> conv b; a second branch conv c reads x. Either a and c share one zero bias
    initializer (bias=True) or a is applied twice with one weight (bias=False)."""
    g = GraphBuilder()
    if bias:
        g.const("zero", (8,), np.zeros(8))
        a = g.node("Conv", ["x", g.const("a.weight", (8, 4, 3, 3)), "zero"], name="a", pads=[1] * 4)
        c = g.node("Conv", ["x", g.const("c.weight", (8, 4, 3, 3)), "zero"], name="c", pads=[1] * 4)
    else:
        w = g.const("shared.weight", (8, 4, 3, 3))
        a = g.node("Conv", ["x", w], name="a", pads=[1] * 4)
        c = g.node("Conv", ["x", w], name="c", pads=[1] * 4)
    ya = g.conv(g.node("Relu", [a]), 8, 4, "b")
    yc = g.conv(g.node("Relu", [c]), 8, 4, "d")
    g.node("Add", [ya, yc], name="out")
    g.nodes[-1].output[0] = "y"
    return g.model({"x": (1, 4, 6, 6)}, {"y": (1, 4, 6, 6)})


def test_a_shared_zero_bias_ties_nothing_and_is_copied_on_write():
    model = two_convs_sharing(bias=True)
    analysis = op.analyze(model)
    assert group_of(analysis, "a") != group_of(analysis, "c")
    result = op.prune_by_index(model, {"a": [0, 1]}, verify=True)
    assert result.verification.ok
    conv_c = next(n for n in result.model.graph.node if n.name == "c")
    assert conv_c.input[2] == "zero"  # c keeps the whole shared bias; a reads a sliced copy
    conv_a = next(n for n in result.model.graph.node if n.name == "a")
    assert conv_a.input[2] != "zero"


def test_a_layer_applied_twice_stays_tied():
    model = two_convs_sharing(bias=False)
    analysis = op.analyze(model)
    assert group_of(analysis, "a") == group_of(analysis, "c")
    assert analysis.tied == {"shared.weight": ("a", "c")}


def computed_weight_model(kind: str) -> onnx.ModelProto:
    """conv a's weight is computed: ConstantOfShape ('fill'), ConstantOfShape -> Reshape ('reshaped'), or
    Range -> Cast -> Reshape (values differ: 'range')."""
    g = GraphBuilder()
    g.const("wshape", None, [8, 4, 3, 3], dtype=np.int64)
    if kind == "fill":
        g.nodes.append(helper.make_node("ConstantOfShape", ["wshape"], ["w"], name="fill",
                                        value=numpy_helper.from_array(np.array([0.05], np.float32))))
    elif kind == "reshaped":
        g.const("flat", None, [288], dtype=np.int64)
        g.nodes.append(helper.make_node("ConstantOfShape", ["flat"], ["w_flat"], name="fill",
                                        value=numpy_helper.from_array(np.array([0.05], np.float32))))
        g.nodes.append(helper.make_node("Reshape", ["w_flat", "wshape"], ["w"], name="shape_w"))
    else:
        for name, value in (("start", 0), ("limit", 288), ("delta", 1)):
            g.const(name, None, value, dtype=np.int64)
        g.nodes.append(helper.make_node("Range", ["start", "limit", "delta"], ["w_int"], name="range"))
        g.nodes.append(helper.make_node("Cast", ["w_int"], ["w_float"], name="cast", to=TensorProto.FLOAT))
        g.const("scale", None, 1e-3)
        g.nodes.append(helper.make_node("Mul", ["w_float", "scale"], ["w_flat"], name="scale_w"))
        g.nodes.append(helper.make_node("Reshape", ["w_flat", "wshape"], ["w"], name="shape_w"))
    a = g.node("Conv", ["x", "w"], name="a", pads=[1] * 4)
    g.conv(g.node("Relu", [a]), 8, 4, "b")
    g.nodes[-1].output[0] = "y"
    return g.model({"x": (1, 4, 6, 6)}, {"y": (1, 4, 6, 6)})


def test_computed_weights_stay_computed(tmp_path):
    for kind, op_type in (("fill", None), ("reshaped", "ConstantOfShape"), ("range", "Gather")):
        model = computed_weight_model(kind)
        source = tmp_path / f"{kind}.onnx"
        onnx.save(model, source)
        result = op.prune_by_index(model, {"a": [0, 2, 5]}, verify=True)
        assert result.verification.ok, kind
        weight = next(n for n in result.model.graph.node if n.name == "a").input[1]
        producer = next(n for n in result.model.graph.node if weight in n.output)
        if kind == "fill":  # the ConstantOfShape keeps its name; its shape initializer shrinks in place
            assert weight == "w" and producer.name == "fill"
            shape = next(t for t in result.model.graph.initializer if t.name == "wshape")
            assert numpy_helper.to_array(shape).tolist() == [5, 4, 3, 3]
        else:
            assert producer.op_type == op_type, kind
        assert all(np.prod(t.dims) < 100 for t in result.model.graph.initializer if t.name != "b.weight"), kind
        out = tmp_path / f"{kind}_pruned.onnx"
        op.save_model(result.model, out, reference=model)
        assert os.path.getsize(out) <= os.path.getsize(source), kind
