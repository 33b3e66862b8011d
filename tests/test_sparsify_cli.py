"""`onnxprune sparsify` end to end on fixtures: checked files, report, external data; bad input writes nothing."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

import onnxprune as op
from onnxprune.cli import main
from onnxprune.runtime import make_inputs, run

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


@pytest.mark.parametrize("args", [
    ["--strategy", "nm", "--storage", "bitmask", "--verify", "--exclude-first"],
    ["--strategy", "layer_magnitude", "--sparsity", "0.9", "--storage", "sparse", "--exclude-classifier"],
    ["--strategy", "random", "--compression", "3", "--seed", "2", "--exclude", "/fc/*"],
])
def test_sparsify_writes_a_checked_model(tmp_path, capsys, args):
    out, report = tmp_path / "out.onnx", tmp_path / "report.json"
    assert main(["sparsify", str(FIXTURES / "resnet_legacy.onnx"), "-o", str(out), "--report", str(report)] + args) == 0
    onnx.checker.check_model(str(out), full_check=True)
    data = json.loads(report.read_text())
    assert {"size", "nonzero_size", "compression", "macs", "nonzero_macs", "speedup", "layers", "note"} <= set(data)
    assert "dense speed" in capsys.readouterr().out


def test_activation_strategy_with_calibration_file_and_external_data(tmp_path):
    source = FIXTURES / "resnet_external_dynamo.onnx"
    calibration = tmp_path / "calib.npy"
    np.save(calibration, np.random.default_rng(0).standard_normal((4, 3, 16, 16)).astype(np.float32))
    out = tmp_path / "out.onnx"
    assert main(["sparsify", str(source), "-o", str(out), "--strategy", "global_activation_magnitude",
                 "--sparsity", "0.5", "--calibration", str(calibration), "--external-data"]) == 0
    assert (tmp_path / "out.onnx.data").exists()
    x = make_inputs(op.load_model(str(source)))
    a, b = run(str(source), x), run(str(out), x)
    assert not np.array_equal(a["output"], b["output"])  # weights really changed


@pytest.mark.parametrize("extra", [["--sparsity", "1.5"], ["--strategy", "nope", "--sparsity", "0.5"],
                                   ["--strategy", "nm", "--n", "6"],
                                   ["--strategy", "layer_magnitude_gradient", "--sparsity", "0.5"],
                                   ["--strategy", "layer_magnitude_gradient", "--sparsity", "0.5",
                                    "--gradients", "GRADS"],
                                   ["--sparsity", "0.5", "--exclude", "nothing_like_this"]])
def test_bad_input_fails_and_writes_nothing(tmp_path, capsys, extra):
    grads = tmp_path / "g.npz"
    np.savez(grads, **{"stem.0.weight": np.zeros((1, 2))})
    extra = [str(grads) if a == "GRADS" else a for a in extra]
    out = tmp_path / "out.onnx"
    assert main(["sparsify", str(FIXTURES / "resnet_legacy.onnx"), "-o", str(out)] + extra) == 2
    assert "onnxprune sparsify: error:" in capsys.readouterr().err
    assert not out.exists()
