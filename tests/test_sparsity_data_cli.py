"""`onnxprune sparsify --strategy wanda|sparsegpt` from the command line: calibration file, N:M, refusals."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from onnxprune.cli import main

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
MODEL = FIXTURES / "resnet_legacy.onnx"


@pytest.fixture
def data(tmp_path) -> Path:
    path = tmp_path / "data.npz"
    name = onnx.load(str(MODEL)).graph.input[0].name
    np.savez(path, **{name: np.random.default_rng(0).standard_normal((8, 3, 16, 16)).astype(np.float32)})
    return path


@pytest.mark.parametrize("strategy", ["wanda", "sparsegpt"])
@pytest.mark.parametrize("how", [["--sparsity", "0.5"], ["--pattern", "2:4"]])
def test_calibrated_strategies_write_a_checked_sparse_model(tmp_path, capsys, data, strategy, how):
    out = tmp_path / "out.onnx"
    assert main(["sparsify", str(MODEL), "-o", str(out), "--strategy", strategy, "--calibration", str(data)]
                + how) == 0
    onnx.checker.check_model(str(out), full_check=True)
    printed = capsys.readouterr().out
    assert f"strategy {strategy} {'2:4' if how[0] == '--pattern' else 'sparsity 0.5'}" in printed
    zeros = sum(int((numpy_helper.to_array(t) == 0).sum()) for t in onnx.load(str(out)).graph.initializer
                if len(t.dims) == 4)
    assert zeros > 0


@pytest.mark.parametrize("extra, message", [
    (["--strategy", "wanda", "--sparsity", "0.5"], "--calibration FILE.npz"),
    (["--strategy", "sparsegpt", "--pattern", "2:4"], "--calibration FILE.npz"),
    (["--strategy", "layer_magnitude", "--pattern", "2:4"], "takes no pattern"),
    (["--strategy", "sparsegpt", "--pattern", "four", "--calibration", "DATA"], "pattern must be 'N:M'"),
])
def test_refusals_write_nothing(tmp_path, capsys, data, extra, message):
    out = tmp_path / "out.onnx"
    extra = [str(data) if a == "DATA" else a for a in extra]
    assert main(["sparsify", str(MODEL), "-o", str(out)] + extra) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
