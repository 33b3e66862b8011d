"""`--report out.md|out.json` on `onnxprune prune` and `onnxprune decompose`."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from onnxprune.cli import main

FIXTURE = os.path.join(os.path.dirname(__file__), "..", "fixtures", "resnet_legacy.onnx")
TOTALS = {"params", "macs", "file_size_bytes", "latency_ms"}


def _check_totals(report):
    assert set(report["totals"]) == TOTALS
    for key in TOTALS:
        entry = report["totals"][key]
        assert entry["before"] > 0 and entry["after"] > 0 and entry["ratio"] > 0
    assert report["layers"] and {"name", "op_type", "params_before", "params_after", "macs_before",
                                 "macs_after"} <= set(report["layers"][0])


def test_prune_report_json(tmp_path):
    out, rep = tmp_path / "p.onnx", tmp_path / "reports" / "r.json"
    assert main(["prune", FIXTURE, "-o", str(out), "--ratio", "0.5", "--report", str(rep)]) == 0
    report = json.loads(rep.read_text())
    assert report["command"] == "prune"
    _check_totals(report)
    assert report["totals"]["macs"]["ratio"] < 1 and report["totals"]["params"]["after"] < \
        report["totals"]["params"]["before"]
    assert report["totals"]["file_size_bytes"]["before"] == os.path.getsize(FIXTURE)
    assert report["groups"] and {"id", "layers", "size", "kept"} <= set(report["groups"][0])
    assert all(g["kept"] < g["size"] for g in report["groups"])
    assert "metric" not in report and "decomposition" not in report
    # no --method and no data: the recommended data-free pipeline, and its note
    assert report["pipeline"]["method"] == "l2" and report["pipeline"]["score_consumers"]
    assert "calibration data would help" in report["pipeline"]["note"]


def test_prune_report_markdown_with_eval_data(tmp_path, capsys):
    rng = np.random.default_rng(0)
    data = tmp_path / "eval.npz"
    np.savez(data, x=rng.standard_normal((12, 3, 16, 16)).astype(np.float32), y=np.arange(12) % 10)
    out, rep = tmp_path / "p.onnx", tmp_path / "r.md"
    assert main(["prune", FIXTURE, "-o", str(out), "--ratio", "0.25", "--report", str(rep),
                 "--eval-data", str(data)]) == 0
    assert "wrote report" in capsys.readouterr().out
    text = rep.read_text()
    for section in ("# onnxprune prune report", "## Totals", "## Metric", "## Pruned groups", "## Layers",
                    "latency median ms", "file size", "| top1 |", "| agreement |", "## Pipeline (recommended",
                    "| method * | l2 |", "Note: no calibration data"):
        assert section in text


def test_decompose_report_json_and_markdown(tmp_path):
    for name in ("r.json", "r.md"):
        out, rep = tmp_path / f"d_{name}.onnx", tmp_path / name
        assert main(["decompose", FIXTURE, "-o", str(out), "--rank-ratio", "0.5", "--force",
                     "--report", str(rep)]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["command"] == "decompose" and report["method"] == "tucker"
    _check_totals(report)
    rows = report["decomposition"]
    done = [r for r in rows if r["result"] == "decomposed"]
    assert done and all(r["ranks"] and r["rel_error"] is not None for r in done)
    layer = next(r for r in report["layers"] if r["name"] == done[0]["name"])
    assert layer["params_after"] > 0  # the chain's nodes are summed into their layer's row
    text = (tmp_path / "r.md").read_text()
    assert "## Decomposed layers (tucker)" in text and "## Totals" in text and "## Metric" not in text


@pytest.mark.parametrize("args, message", [(["--report", "r.txt"], "must end in .md or .json"),
                                           (["--eval-data", "e.npz"], "--eval-data is used by --report only")])
def test_bad_report_flags_fail_before_writing(tmp_path, capsys, args, message):
    out = tmp_path / "p.onnx"
    assert main(["prune", FIXTURE, "-o", str(out), "--ratio", "0.5", *args]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
