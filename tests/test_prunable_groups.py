"""Analysis and surgery agree: every group analysis calls prunable is pruned by surgery, on every fixture and
every onnx backend-test model file, and the result is a valid model (or onnxprune's own error when onnxruntime
cannot run the original: the written-model guarantee needs it to).

Each prunable group of two or more channels loses half of them (step 1), all groups at once; the mask oracle
checks the exact ones.
"""
from __future__ import annotations

import glob
import os

import onnx
import onnxruntime as ort
import pytest

import onnxprune as op

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data")
ort.set_default_logger_severity(3)


def corpus() -> list[str]:
    files = sorted(glob.glob(os.path.join(ROOT, "fixtures", "*.onnx")))
    for folder in ("pytorch-converted", "pytorch-operator", "simple"):
        files += sorted(glob.glob(os.path.join(DATA, folder, "*", "model.onnx")))
    return files


def label(path: str) -> str:
    return os.path.relpath(path, ROOT) if path.startswith(ROOT) else os.path.relpath(path, DATA)


def prune_all_groups(path: str, tmp: str) -> str | None:
    """None when every prunable group was pruned and the result saved; else what went wrong."""
    try:
        analysis = op.analyze(path)
    except op.OnnxPruneError:
        return None  # refused as a whole: nothing is called prunable
    wanted = {g.id for g in analysis.groups if g.prunable and g.size >= 2}
    if not wanted:
        return None
    try:
        result = op.prune(path, "l2", ratio=0.5, options=op.Options(step_size=1), verify=True)
    except op.OnnxRuntimeError:
        result = op.prune(path, "l2", ratio=0.5, options=op.Options(step_size=1))  # ORT cannot run it: no oracle
    missing = wanted - set(result.pruned_groups)
    if missing:
        return f"prunable groups {sorted(missing)} were not pruned"
    try:
        op.save_model(result.model, os.path.join(tmp, "out.onnx"), reference=onnx.load(path, load_external_data=False))
    except op.VerificationError as exc:
        if "does not load in onnxruntime" in str(exc) and not _ort_loads(path):
            return None  # the original does not load either: refused with onnxprune's error
        raise
    return None


def _ort_loads(path: str) -> bool:
    try:
        ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        return True
    except Exception:  # noqa: BLE001  onnxruntime refuses the original
        return False


@pytest.mark.parametrize("path", corpus(), ids=label)
def test_every_prunable_group_is_pruned(path, tmp_path):
    assert prune_all_groups(path, str(tmp_path)) is None
