"""The onnx package's nine light zoo graphs (weights made by ConstantOfShape) pruned at 0.3: the written file is
no larger than the original, MACs and params drop, and the mask oracle passes (issue 18: computed weights stay
computed). save_model validates the file (checker full_check, onnxruntime load, the original's inputs/outputs)."""
from __future__ import annotations

import os

import onnx
import pytest

import onnxprune as op

LIGHT = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")
MODELS = ["resnet50", "squeezenet", "densenet121", "shufflenet", "inception_v1", "inception_v2", "vgg19",
          "bvlc_alexnet", "zfnet512"]


def test_all_nine_light_graphs_are_listed():
    found = sorted(f[len("light_"):-len(".onnx")] for f in os.listdir(LIGHT) if f.endswith(".onnx"))
    assert found == sorted(MODELS)


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_pruned_light_graph_is_no_larger_on_disk(name, tmp_path):
    path = os.path.join(LIGHT, f"light_{name}.onnx")
    original = op.load_model(path)
    result = op.prune(original, ratio=0.3, verify=True)
    assert result.verification.ok and result.verification.max_rel_error <= 1e-4, str(result.verification)
    assert result.summary.after.macs < result.summary.before.macs
    assert result.summary.after.params < result.summary.before.params
    out = tmp_path / "pruned.onnx"
    op.save_model(result.model, out, reference=original)
    assert os.path.getsize(out) <= os.path.getsize(path)
    fills = [n for n in result.model.graph.node if n.op_type == "ConstantOfShape"]
    assert fills, "the weights stay computed by ConstantOfShape"
