"""Bad input: a typed error with a clear message, a non-zero CLI exit, and no output file."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import onnx
import pytest

import onnxprune as op
from onnxprune.cli import main
from graphs import GraphBuilder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESNET = os.path.join(ROOT, "fixtures", "resnet_legacy.onnx")


def small_model():
    g = GraphBuilder()
    a = g.conv("x", 3, 8, "c1")
    g.node("TopK", [a, g.const("k", (1,), [2], dtype=np.int64)], name="topk", outputs=2, axis=1)
    b = g.conv("x", 3, 8, "c2")
    g.conv(b, 8, 4, "c3", k=1)
    g.nodes[1].output[:] = ["y1", "idx"]
    g.nodes[-1].output[0] = "y2"
    return g.model({"x": (1, 3, 8, 8)}, {"y1": (1, 2, 8, 8), "y2": (1, 4, 8, 8)})


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "model.onnx"
    onnx.save(small_model(), path)
    return str(path)


def cli(tmp_path, *args) -> tuple[int, str]:
    out = str(tmp_path / "out.onnx")
    code = main([*args, "-o", out])
    return code, out


def test_not_onnx(tmp_path):
    path = tmp_path / "notes.onnx"
    path.write_text("this is not a model")
    with pytest.raises(op.InvalidModelError, match="notes.onnx"):
        op.analyze(str(path))
    code, out = cli(tmp_path, "prune", str(path), "--ratio", "0.3")
    assert code != 0 and not os.path.exists(out)


def test_truncated_file(tmp_path):
    data = open(RESNET, "rb").read()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(op.InvalidModelError):
        op.prune(str(path), "l2", ratio=0.3)
    code, out = cli(tmp_path, "prune", str(path), "--ratio", "0.3")
    assert code != 0 and not os.path.exists(out)


def test_op_without_rule_on_requested_layer(model_file, tmp_path):
    with pytest.raises(op.UnsupportedError, match=r"topk.*TopK"):
        op.prune(model_file, "l2", ratios={"c1": 0.5})
    with pytest.raises(op.UnsupportedError, match="TopK"):
        op.prune_by_index(model_file, {"c1": [0]})
    ratios = tmp_path / "r.json"
    ratios.write_text(json.dumps({"c1": 0.5}))
    code, out = cli(tmp_path, "prune", model_file, "--ratios", str(ratios))
    assert code != 0 and not os.path.exists(out)


def test_index_out_of_range(model_file, tmp_path):
    with pytest.raises(op.InvalidRequestError, match="out of range"):
        op.prune_by_index(model_file, {"c2": [8]})
    indices = tmp_path / "i.json"
    indices.write_text(json.dumps({"c2": [-1]}))
    code, out = cli(tmp_path, "prune", model_file, "--indices", str(indices))
    assert code != 0 and not os.path.exists(out)


@pytest.mark.parametrize("flags", [["--method", "l1"], ["--scope", "global"], ["--seed", "3"]])
def test_indices_refuse_flags_that_choose_channels(model_file, tmp_path, capsys, flags):
    indices = tmp_path / "i.json"
    indices.write_text(json.dumps({"c2": [0]}))
    code, out = cli(tmp_path, "prune", model_file, "--indices", str(indices), *flags)
    assert code != 0 and not os.path.exists(out)
    assert f"{flags[0]} cannot be used with --indices" in capsys.readouterr().err


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5, float("nan")])
def test_ratio_outside_range(model_file, tmp_path, ratio):
    with pytest.raises(op.InvalidRequestError, match=r"\[0, 1\)"):
        op.prune(model_file, "l2", ratio=ratio)
    code, out = cli(tmp_path, "prune", model_file, "--ratio", str(ratio))
    assert code != 0 and not os.path.exists(out)


def test_request_that_empties_a_group(model_file):
    with pytest.raises(op.InvalidRequestError, match="empty"):
        op.prune_by_index(model_file, {"c2": list(range(8))})


def test_unknown_layer(model_file, tmp_path):
    with pytest.raises(op.InvalidRequestError, match="no prunable layer named 'c9'"):
        op.prune(model_file, "l2", ratios={"c9": 0.5})
    indices = tmp_path / "i.json"
    indices.write_text(json.dumps({"conv_nope": [0]}))
    code, out = cli(tmp_path, "prune", model_file, "--indices", str(indices))
    assert code != 0 and not os.path.exists(out)


def test_unknown_method(model_file):
    with pytest.raises(op.InvalidRequestError, match="unknown pruning method"):
        op.prune(model_file, "not_a_method", ratio=0.3)


def test_external_data_outside_folder_is_refused(tmp_path):
    inner = tmp_path / "models"
    inner.mkdir()
    src = os.path.join(ROOT, "fixtures", "resnet_external_dynamo.onnx")
    model = onnx.load(src, load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../secret.bin"
    path = inner / "evil.onnx"
    onnx.save(model, path)
    (tmp_path / "secret.bin").write_bytes(b"\0" * 16)
    with pytest.raises(op.ExternalDataError, match="outside"):
        op.analyze(str(path))
    code, out = cli(tmp_path, "prune", str(path), "--ratio", "0.3")
    assert code != 0 and not os.path.exists(out)


def test_input_file_is_never_overwritten(tmp_path):
    path = tmp_path / "resnet.onnx"
    shutil.copy(RESNET, path)
    before = path.read_bytes()
    assert main(["prune", str(path), "--ratio", "0.3", "-o", str(path)]) != 0
    with pytest.raises(op.InvalidRequestError):
        op.save_model(op.prune(str(path), "l2", ratio=0.3).model, str(path))
    assert path.read_bytes() == before


def test_cli_prune_inspect_verify(tmp_path, capsys):
    out = tmp_path / "sub" / "pruned.onnx"
    assert main(["prune", RESNET, "-o", str(out), "--ratio", "0.3", "--verify"]) == 0
    assert out.exists()
    assert "mask oracle: ok" in capsys.readouterr().out
    assert main(["inspect", RESNET]) == 0
    text = capsys.readouterr().out
    assert "prunable" in text and "graph output" in text
    assert main(["verify", RESNET, RESNET]) == 0
    assert main(["verify", RESNET, str(out)]) != 0  # different shapes / values inside, same outputs? no: weights differ


def test_readme_test_command_is_what_ci_runs():
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    commands = [line for line in readme.splitlines() if line.startswith("pip install")]
    assert len(commands) >= 2
    ci = open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8").read()
    assert commands[1] in ci
