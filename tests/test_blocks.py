"""Depth pruning (onnxprune.blocks): residual blocks found, removed, and checked by the zero-branch oracle."""
from __future__ import annotations

import os

import numpy as np
import pytest

import onnxprune as op
from onnxprune.cli import main
from onnxprune.runtime import make_inputs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LLAMA = os.path.join(ROOT, "fixtures", "deploy", "llama_decoder.onnx")
RESNET = os.path.join(ROOT, "fixtures", "resnet_legacy.onnx")


def test_llama_blocks_are_attention_and_mlp_sub_blocks_and_layers():
    found = op.find_blocks(LLAMA)
    blocks = [b for b in found if b.kind != "layer"]
    assert [b.kind for b in blocks] == ["attention", "branch"] * 2  # 2 layers x (attention, MLP)
    assert [b.stream for b in blocks[1:]] == [b.output for b in blocks[:-1]]  # one residual stream
    layers = [b for b in found if b.kind == "layer"]
    assert [b.parts for b in layers] == [(blocks[0].name, blocks[1].name), (blocks[2].name, blocks[3].name)]
    assert layers[0].stream == blocks[0].stream and layers[0].output == blocks[1].output


def test_resnet_blocks_skip_the_downsampling_one():
    model = op.load_model(RESNET)
    adds = [n for n in model.graph.node if n.op_type == "Add"]
    blocks = op.find_blocks(model)
    assert 0 < len(blocks) < len(adds)
    assert all(b.kind == "branch" and b.shape[1:] in ((8, 16, 16), (16, 8, 8)) for b in blocks)


@pytest.mark.parametrize("path", [LLAMA, RESNET], ids=["llama", "resnet"])
def test_zero_branch_oracle_on_every_single_block_and_all(path, tmp_path):
    original = op.load_model(path)
    found = op.find_blocks(original)
    names = [b.name for b in found]
    for chosen in [[name] for name in names] + [[b.name for b in found if b.kind != "layer"]]:
        result = op.prune_blocks(original, blocks=chosen, verify=True)
        assert result.verification.ok and result.removed == chosen
        assert op.verify(original, result.model).max_rel_error > 1e-3  # the blocks did something
        assert op.stats(result.model).params < op.stats(original).params
    op.save_model(result.model, tmp_path / "shallow.onnx", reference=original)


def test_n_least_important_by_influence_with_calibration():
    model = op.load_model(LLAMA)
    data = [make_inputs(model, seed=s) for s in range(3)]
    result = op.prune_blocks(model, n=1, calibration=data, verify=True)
    assert result.score_kind == "influence"
    assert set(result.scores) == {b.name for b in result.blocks if b.kind == "layer"}  # n= removes whole layers
    assert result.removed == [min(result.scores, key=result.scores.get)]
    assert len(result.removed_parts) == 2
    assert all(0.0 <= s <= 2.0 for s in result.scores.values())


def test_without_data_warns_and_ranks_by_branch_norm():
    with pytest.warns(UserWarning, match="without calibration data"):
        result = op.prune_blocks(RESNET, n=2)
    assert result.score_kind == "relative branch norm" and len(result.removed) == 2


@pytest.mark.parametrize("kwargs", [{}, {"n": 1, "blocks": ["x"]}, {"n": 0}, {"n": 99}, {"blocks": ["nope"]}])
def test_bad_requests(kwargs):
    with pytest.raises(op.InvalidRequestError):
        op.prune_blocks(RESNET, **kwargs)


def test_a_layer_and_its_part_overlap():
    layer = next(b for b in op.find_blocks(LLAMA) if b.kind == "layer")
    with pytest.raises(op.InvalidRequestError, match="overlap"):
        op.prune_blocks(LLAMA, blocks=[layer.name, layer.parts[0]])


def test_cli_prune_blocks_and_inspect(tmp_path, capsys):
    out = tmp_path / "out.onnx"
    name = op.find_blocks(LLAMA)[0].name
    assert main(["prune-blocks", LLAMA, "-o", str(out), "--blocks", name, "--verify"]) == 0
    printed = capsys.readouterr().out
    assert "1 removed (1 residual block of 4)" in printed and "zero-branch oracle: ok" in printed
    assert os.path.exists(out)
    assert main(["inspect", LLAMA]) == 0
    assert "residual block" in capsys.readouterr().out
    inputs = make_inputs(op.load_model(LLAMA))
    assert np.isfinite(op.verify(LLAMA, str(out), inputs).max_rel_error)


@pytest.mark.parametrize("name", ["bert_fused", "gpt2_fused", "vit_fused", "llama_fused"])
def test_blocks_joined_by_fused_skip_layer_norm(name, tmp_path):
    """onnxruntime's optimizer folds the residual Add into Skip(Simplified)LayerNormalization: still 2 x 2 blocks
    and 2 layers; a removed branch's join reads zeros (the oracle's model), the branch itself is gone."""
    path = os.path.join(ROOT, "fixtures", "deploy", f"{name}.onnx")
    original = op.load_model(path)
    found = op.find_blocks(original)
    assert [b.kind for b in found] == ["attention", "branch"] * 2 + ["layer"] * 2
    assert all(b.fused_join for b in found if b.kind != "layer")
    for block in found[-2:]:
        result = op.prune_blocks(original, blocks=[block.name], verify=True)
        assert result.verification.ok
        assert len(result.model.graph.node) < len(original.graph.node)
    op.save_model(result.model, tmp_path / "shallow.onnx", reference=original)
