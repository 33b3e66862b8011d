"""`onnxprune decompose` end to end: a checked file is written; bad input gives a non-zero exit and no file."""
from __future__ import annotations

import json

import onnx
import onnxruntime as ort
import pytest

from onnxprune.cli import main
from test_decompose_helpers import conv_model, gemm_model


@pytest.fixture
def model_path(tmp_path):
    path = tmp_path / "model.onnx"
    onnx.save(conv_model(cin=16, cout=24, pads=(1, 1, 1, 1)), path)
    return path


def _written_ok(path):
    onnx.checker.check_model(str(path), full_check=True)
    ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return onnx.load(str(path))


@pytest.mark.parametrize("args", [["--rank-ratio", "0.25", "--verify"],
                                  ["--method", "FD_CP", "--rank-ratio", "0.5"],
                                  ["--recommend", "vbmf", "--calibration-ratio", "0.3", "--force", "--seed", "1"],
                                  ["--layers", "conv", "--rank-ratio", "0.5"]])
def test_decompose_writes_a_checked_model(model_path, tmp_path, capsys, args):
    out = tmp_path / "out" / "small.onnx"
    assert main(["decompose", str(model_path), "-o", str(out), *args]) == 0
    model = _written_ok(out)
    assert any("/" in n.name for n in model.graph.node)
    assert "wrote" in capsys.readouterr().out


def test_ranks_file(tmp_path):
    source = tmp_path / "fc.onnx"
    onnx.save(gemm_model(k=32, n=24), source)
    ranks = tmp_path / "ranks.json"
    ranks.write_text(json.dumps({"fc": 4}))
    out = tmp_path / "fc_svd.onnx"
    assert main(["decompose", str(source), "-o", str(out), "--method", "svd", "--ranks", str(ranks), "--verify"]) == 0
    assert [n.op_type for n in _written_ok(out).graph.node] == ["Gemm", "Gemm"]


@pytest.mark.parametrize("case", ["missing model", "overwrite input", "rank zero", "bad json", "unknown layer",
                                  "not onnx", "grouped layer"])
def test_bad_input_fails_and_writes_nothing(model_path, tmp_path, capsys, case):
    out = tmp_path / "out.onnx"
    ranks = tmp_path / "ranks.json"
    args = ["decompose", str(model_path), "-o", str(out), "--rank-ratio", "0.5"]
    if case == "missing model":
        args[1] = str(tmp_path / "nope.onnx")
    elif case == "overwrite input":
        args[3] = str(model_path)
    elif case in ("rank zero", "bad json", "unknown layer"):
        ranks.write_text({"rank zero": '{"conv": [0, 4]}', "bad json": "{conv: 4",
                          "unknown layer": '{"conv9": [2, 2]}'}[case])
        args[4:] = ["--ranks", str(ranks)]
    elif case == "not onnx":
        model_path.write_bytes(b"definitely not a protobuf model")
    else:
        onnx.save(conv_model(cin=8, cout=8, group=2, pads=(1, 1, 1, 1)), model_path)
        args += ["--layers", "conv"]
    before = model_path.read_bytes() if model_path.exists() else None
    assert main(args) != 0
    assert not out.exists()
    assert "error" in capsys.readouterr().err
    if before is not None:
        assert model_path.read_bytes() == before
