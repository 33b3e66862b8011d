"""Calibration-aware sparsity: wanda and sparsegpt (unstructured and N:M), their oracles and their errors.

The sparsegpt oracle: on every fixture it applies to, each re-fitted layer's output error on the calibration data
(measured by onnxruntime: the layer run on the unpruned model's own input, once with the original weight and once
with the new one) is no worse than magnitude's at the same sparsity (layer_magnitude, or nm for 2:4).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import onnxprune as op
from onnxprune.errors import InvalidRequestError
from onnxprune.runtime import make_inputs, run
from onnxprune.sparsity import obs
from onnxprune.sparsity.calibrated import row_mask
from onnxprune.sparsity.inputs import InputGram, weight_rows
from onnxprune.sparsity.layers import find_layers, load_values

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())
FILES = sorted(e["file"] for e in MANIFEST if not e.get("external_data"))


def _calibration(model: onnx.ModelProto, batches: int = 4) -> list[dict[str, np.ndarray]]:
    return [make_inputs(model, seed=s) for s in range(batches)]


def _layer_errors(model: onnx.ModelProto, calibration, candidates: dict[str, dict[str, np.ndarray]]):
    """{tag: {weight: sum over calibration of ||layer output with the candidate weight - original output||^2}}.

    Every candidate layer is cloned beside its node (same inputs, the candidate weight), so one onnxruntime pass
    gives each layer's output for the unpruned model's input, with the original and with every candidate weight.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    pairs = []
    by_weight = {}
    for node in model.graph.node:
        if len(node.input) > 1:
            by_weight.setdefault(node.input[1], node)
    for tag, weights in candidates.items():
        for name, value in weights.items():
            node = by_weight[name]
            clone = onnx.NodeProto()
            clone.CopyFrom(node)
            clone.name = f"{node.name}__{tag}"
            clone.input[1] = f"{name}__{tag}"
            clone.output[0] = f"{node.output[0]}__{tag}"
            out.graph.node.append(clone)
            out.graph.initializer.append(numpy_helper.from_array(value, clone.input[1]))
            pairs.append((tag, name, node.output[0], clone.output[0]))
    names = list(dict.fromkeys(n for _, _, a, b in pairs for n in (a, b)))
    errors = {tag: dict.fromkeys(w, 0.0) for tag, w in candidates.items()}
    for feed in calibration:
        got = run(out, feed, outputs=names)
        for tag, name, a, b in pairs:
            errors[tag][name] += float(np.sum(np.square(got[b].astype(np.float64) - got[a])))
    return errors


def _new_weights(result: op.SparsifyResult) -> dict[str, np.ndarray]:
    changed = {t.name: numpy_helper.to_array(t) for t in result.model.graph.initializer}
    return {name: changed[name] for name in result.masks}


@pytest.mark.parametrize("kind", ["50%", "2:4"])
def test_sparsegpt_refit_is_no_worse_than_magnitude_per_layer_on_every_fixture(kind):
    checked = 0
    for file in FILES:
        model = onnx.load(str(FIXTURES / file))
        calibration = _calibration(model)
        if kind == "50%":
            refit = op.sparsify(model, "sparsegpt", 0.5, calibration=calibration)
            plain = op.sparsify(model, "layer_magnitude", 0.5)
        else:
            refit = op.sparsify(model, "sparsegpt", pattern="2:4", calibration=calibration)
            plain = op.sparsify(model, "nm", pattern="2:4")
        new = _new_weights(refit)
        if not new:
            continue
        magnitude = {name: value for name, value in _new_weights(plain).items() if name in new}
        assert magnitude.keys() == new.keys(), file
        for name in new:  # the same number of zeros: a fair comparison
            assert np.count_nonzero(new[name] == 0) >= np.count_nonzero(~refit.masks[name]), (file, name)
            assert np.count_nonzero(~refit.masks[name]) == np.count_nonzero(~plain.masks[name]), (file, name)
        errors = _layer_errors(model, calibration, {"sparsegpt": new, "magnitude": magnitude})
        for name in new:
            e_refit, e_plain = errors["sparsegpt"][name], errors["magnitude"][name]
            assert e_refit <= e_plain * (1 + 1e-4) + 1e-6, (file, name, e_refit, e_plain)
        checked += len(new)
    assert checked > 100


def test_hessian_error_matches_onnxruntime():
    """obs.output_error from the streamed H equals the error onnxruntime measures (the statistic is right)."""
    model = onnx.load(str(FIXTURES / "resnext_legacy.onnx"))  # grouped Convs, strides, pads, a Gemm
    calibration = _calibration(model)
    layers = find_layers(model)
    load_values(model, layers)
    r = op.sparsify(model, "layer_magnitude", 0.5)
    new = _new_weights(r)
    measured = _layer_errors(model, calibration, {"m": new})["m"]
    for layer in layers:
        gram = InputGram(layer)
        for feed in calibration:
            gram.update(run(model, feed, outputs=[layer.input])[layer.input] if layer.input not in feed
                        else feed[layer.input])
        H, rows = gram.result()
        predicted = obs.output_error(weight_rows(layer, layer.value), weight_rows(layer, new[layer.weight]), H)
        assert predicted == pytest.approx(measured[layer.weight], rel=1e-3, abs=1e-6), layer.name


def test_input_gram_partial_sums_merge_to_the_whole():
    model = onnx.load(str(FIXTURES / "resnext_legacy.onnx"))
    layer = next(layer for layer in find_layers(model) if layer.group > 1)
    x = [run(model, feed, outputs=[layer.input])[layer.input] for feed in _calibration(model)]
    whole, first, second = InputGram(layer), InputGram(layer), InputGram(layer)
    for k, a in enumerate(x):
        whole.update(a)
        (first if k < 2 else second).update(a)
    first.merge(second)
    assert first.rows == whole.rows and np.allclose(first.H, whole.H, rtol=1e-12)


def test_obs_prune_exact_counts_and_patterns():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 3, 24))
    H = np.einsum("rgi,rgj->gij", x, x)
    W = rng.standard_normal((3, 5, 24))
    new, keep = obs.prune(W, H, sparsity=0.3, block=8)
    assert np.count_nonzero(~keep) == int(np.floor(0.3 * W.size + 0.5))
    assert np.all(new[~keep] == 0)
    new, keep = obs.prune(W, H, n=2, m=4, block=8)
    assert np.all(keep.reshape(3, 5, 6, 4).sum(axis=-1) == 2)
    assert obs.output_error(W, new, H) < obs.output_error(W, np.where(keep, W, 0), H)
    same, keep = obs.prune(W, H, sparsity=0.0)
    assert keep.all() and np.allclose(same, W)


def test_wanda_scores_weights_by_input_norm_within_each_row():
    model = onnx.load(str(FIXTURES / "vit_attention_legacy.onnx"))
    calibration = _calibration(model)
    r = op.sparsify(model, "wanda", 0.5, calibration=calibration)
    layers = [layer for layer in find_layers(model) if layer.weight in r.masks]
    load_values(model, layers)
    assert layers
    for layer in layers:
        x = [feed[layer.input] if layer.input in feed else run(model, feed, outputs=[layer.input])[layer.input]
             for feed in calibration]
        x = np.concatenate([np.moveaxis(a, layer.input_axis, -1).reshape(-1, a.shape[layer.input_axis]) for a in x])
        norms = np.sqrt(np.square(x.astype(np.float64)).sum(axis=0))
        score = np.abs(layer.value) * norms[layer.input_channel_index()]
        assert np.array_equal(r.masks[layer.weight], row_mask(score, 0.5, layer.out_axis)), layer.name
        zeroed = np.moveaxis(~r.masks[layer.weight], layer.out_axis, 0).reshape(layer.shape[layer.out_axis], -1)
        assert np.all(zeroed.sum(axis=1) == int(np.floor(0.5 * zeroed.shape[1] + 0.5)))
        rows = np.moveaxis(score, layer.out_axis, 0).reshape(zeroed.shape)
        assert all(rows[k][zeroed[k]].max() <= rows[k][~zeroed[k]].min() for k in range(len(rows)))


@pytest.mark.parametrize("strategy", ["wanda", "sparsegpt"])
def test_calibrated_strategies_nm_pattern_and_report(strategy):
    model = onnx.load(str(FIXTURES / "resnet_legacy.onnx"))
    r = op.sparsify(model, strategy, pattern="2:4", calibration=_calibration(model))
    assert r.masks
    for name, mask in r.masks.items():
        groups = np.moveaxis(mask, 1, -1)
        assert np.all(groups.reshape(groups.shape[:-1] + (-1, 4)).sum(axis=-1) == 2), name
    assert f"strategy {strategy} 2:4" in str(r.report)
    onnx.checker.check_model(r.model, full_check=True)


@pytest.mark.parametrize("strategy", ["wanda", "sparsegpt"])
def test_calibrated_strategies_refuse_without_data_and_bad_patterns(strategy):
    model = onnx.load(str(FIXTURES / "resnet_legacy.onnx"))
    with pytest.raises(InvalidRequestError, match="needs calibration data: pass calibration=.*--calibration"):
        op.sparsify(model, strategy, 0.5)
    data = _calibration(model, 1)
    with pytest.raises(InvalidRequestError, match="not both"):
        op.sparsify(model, strategy, 0.5, pattern="2:4", calibration=data)
    with pytest.raises(InvalidRequestError, match="pattern must be 'N:M'"):
        op.sparsify(model, strategy, pattern="2-4", calibration=data)
    with pytest.raises(InvalidRequestError, match="or pattern='N:M'"):
        op.sparsify(model, strategy, calibration=data)
    with pytest.raises(InvalidRequestError, match="takes no pattern"):
        op.sparsify(model, "layer_magnitude", pattern="2:4")


def test_sparsegpt_input_model_unchanged_and_deterministic():
    model = onnx.load(str(FIXTURES / "mobilenetv2_legacy.onnx"))
    before = model.SerializeToString()
    data = _calibration(model)
    a = op.sparsify(model, "sparsegpt", 0.5, calibration=data)
    b = op.sparsify(model, "sparsegpt", 0.5, calibration=data)
    assert model.SerializeToString() == before
    assert a.model.SerializeToString() == b.model.SerializeToString()
    assert a.report.achieved_sparsity == pytest.approx(0.5, abs=1e-3)
