"""The nine model-zoo graphs shipped inside the onnx package, pruned at 0.3 and proven by the mask oracle."""
from __future__ import annotations

import os

import onnx
import pytest

import onnxprune as op
from onnxprune.ir import check_io

LIGHT = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")
MODELS = ["resnet50", "squeezenet", "densenet121", "shufflenet", "inception_v1", "inception_v2", "vgg19",
          "bvlc_alexnet", "zfnet512"]


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_zoo_model_prunes_and_passes_oracle(name):
    path = os.path.join(LIGHT, f"light_{name}.onnx")
    original = op.load_model(path)
    analysis = op.analyze(original)
    assert any(g.prunable for g in analysis.groups)
    result = op.prune(original, "l2", ratio=0.3, verify=True)
    assert result.verification.ok and result.verification.max_rel_error <= 1e-4
    assert result.summary.after.params < result.summary.before.params
    assert result.summary.after.macs < result.summary.before.macs
    onnx.checker.check_model(result.model, full_check=True)
    check_io(original, result.model)
