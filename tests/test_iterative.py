"""op.iterative_prune: reaches the target within one step size, calls the callback `steps` times, logs the metric."""
from __future__ import annotations

import io

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import onnxprune as op
from onnxprune.errors import InvalidRequestError
from test_sensitivity import centred, cnn


@pytest.fixture(scope="module")
def data():
    x = np.random.default_rng(2).standard_normal((64, 3, 8, 8)).astype(np.float32)
    model = centred(cnn(), x)
    y = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0].argmax(1)
    return model, x, y


@pytest.mark.parametrize("target,steps", [(0.5, 3), (0.3, 2)])
def test_reaches_target_within_one_step_and_calls_back(data, target, steps):
    model, x, y = data
    calls = []

    def finetune(m, result, step):
        assert isinstance(m, onnx.ModelProto)
        assert result is None or result.model is m
        calls.append(step)
        return m

    log = io.StringIO()
    run = op.iterative_prune(model, target=target, steps=steps, finetune=finetune, data=(x, y), stream=log)
    assert calls == list(range(1, steps + 1))
    assert len(run.history) == steps
    assert target <= run.reduction <= target + target / steps + 1e-9
    macs_before = op.stats(model).macs
    assert run.reduction == pytest.approx(1 - op.stats(run.model).macs / macs_before)
    reached = [h["reduction"] for h in run.history]
    assert reached == sorted(reached)
    for h in run.history:
        assert h["reduction"] >= h["goal"] - 1e-9
        assert 0 <= h["value_pruned"] <= 1 and "value_finetuned" in h and h["metric"] == "top1"
    lines = log.getvalue().splitlines()
    assert len(lines) == steps + 1 and "step 0" in lines[0] and "top1" in lines[-1]


def test_callback_model_is_used_and_plain_signature(data):
    model, _, _ = data
    seen = []

    def finetune(m):  # model in, model out (a changed copy)
        seen.append(m)
        copy = onnx.ModelProto()
        copy.CopyFrom(m)
        copy.doc_string = f"tuned {len(seen)}"
        return copy

    run = op.iterative_prune(model, target=0.4, steps=2, finetune=finetune, measure="params", verbose=False)
    assert len(seen) == 2 and run.model.doc_string == "tuned 2"
    assert run.reduction >= 0.4 and run.history[-1]["params"] == op.stats(run.model).params


def test_bad_requests(data):
    model, _, _ = data
    with pytest.raises(InvalidRequestError, match="target"):
        op.iterative_prune(model, target=1.2)
    with pytest.raises(InvalidRequestError, match="steps"):
        op.iterative_prune(model, target=0.5, steps=0)
    with pytest.raises(InvalidRequestError, match="returned None"):
        op.iterative_prune(model, target=0.5, steps=1, finetune=lambda m: None, verbose=False)
