"""Attention-aware re-fitting: the key regression is exact when it can be, and it beats per-layer re-fitting."""
import copy
import os

import numpy as np
import onnx
import pytest

import onnxprune as op
from onnxprune.reconstruction import reconstruct_pruned
from onnxprune.reconstruction.attention import HeadGram, drifted_layers, find_attention
from onnxprune.reconstruction.attention import _query_map as query_map  # the closed form under test
from onnxprune.runtime import run

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures")


def _load(name):
    return onnx.load(os.path.join(FIXTURES, f"{name}.onnx"))


@pytest.mark.parametrize("name", ["vit_attention_legacy", "vit_attention_dynamo"])
def test_find_attention_names_query_key_and_head_size(name):
    blocks = find_attention(_load(name))
    assert len(blocks) == 1
    b = blocks[0]
    assert b.query != b.key and b.head_size == 8


def test_query_map_keeps_logits_up_to_a_per_query_constant():
    # keys whose removed dims are an exact affine function of the kept ones: the map loses nothing of the
    # logits but a constant per query (which softmax ignores)
    rng = np.random.default_rng(0)
    heads, size, rows = 2, 4, 200
    keep = np.array([0, 2, 4, 5])  # head 0 keeps dims 0, 2; head 1 keeps 0, 1
    k = rng.standard_normal((rows, heads * size))
    mix = rng.standard_normal((2, 2))
    k[:, [1, 3]] = k[:, [0, 2]] @ mix + 0.7
    k[:, [6, 7]] = k[:, [4, 5]] @ mix.T - 0.3
    gram = HeadGram("k", size)
    gram.update(k[None])
    t = query_map(gram.result(), size, keep)
    q = rng.standard_normal((5, heads * size))
    for h in range(heads):
        cols = slice(h * size, (h + 1) * size)
        mine = [j for j in keep if h * size <= j < (h + 1) * size]
        full = q[:, cols] @ k[:, cols].T
        mapped = (q @ t)[:, [list(keep).index(j) for j in mine]] @ k[:, mine].T
        cut = q[:, mine] @ k[:, mine].T  # the kept dims alone
        diff, lost = full - mapped, full - cut
        assert np.abs(lost - lost[:, :1]).max() > 0.5
        np.testing.assert_allclose(diff - diff[:, :1], 0.0, atol=5e-3)  # the key ridge (1e-4) only


def test_drifted_layers_are_downstream_only():
    model = _load("vit_attention_legacy")
    b = find_attention(model)[0]
    key_out = b.key_output
    found = drifted_layers(model, {key_out})
    assert b.key not in found and b.query not in found and found  # the output projection and the MLP follow


@pytest.mark.parametrize("name", ["vit_attention_legacy", "vit_attention_dynamo"])
def test_attention_refit_beats_per_layer_refit_on_held_out_data(name):
    model = _load(name)
    rng = np.random.default_rng(0)
    calibration = rng.standard_normal((64, 8, 32)).astype(np.float32)
    held_out = {model.graph.input[0].name: rng.standard_normal((64, 8, 32)).astype(np.float32)}
    reference = next(iter(run(model, held_out).values()))
    pruned = op.prune(model, method="l2", ratio=0.5)
    errors = {}
    for attention in (False, True):
        result = copy.deepcopy(pruned)
        reconstruct_pruned(model, result, calibration, attention=attention)
        out = next(iter(run(result.model, held_out).values()))
        errors[attention] = np.linalg.norm(out - reference) / np.linalg.norm(reference)
    plain = next(iter(run(pruned.model, held_out).values()))
    assert errors[False] < np.linalg.norm(plain - reference) / np.linalg.norm(reference)
    assert errors[True] < 0.8 * errors[False]  # measured 0.081 vs 0.150
