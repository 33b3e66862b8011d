"""The end-to-end example (examples/digits_end_to_end.py) runs start to finish in its quick mode.

Quick mode trains for 2 epochs only, so accuracy is not asserted here: only that every step runs and
the summary table is printed with one row per step.
"""
from __future__ import annotations

import importlib.util
import math
import os
import sys

import pytest

pytest.importorskip("torch")
pytest.importorskip("sklearn")

EXAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples",
                       "digits_end_to_end.py")


def _load_example():
    spec = importlib.util.spec_from_file_location("digits_end_to_end", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(spec.name, None)
    return module


@pytest.mark.slow
def test_example_runs_quick_and_prints_the_table(capsys, tmp_path):
    example = _load_example()
    rows = example.main(["--quick", "--out", str(tmp_path)])
    out = capsys.readouterr().out

    assert [r["step"].split(" ")[0] for r in rows] == ["original", "pruned", "pruned", "+"]
    for row in rows:
        assert 0.0 <= row["top1"] <= 1.0
        assert row["params"] > 0 and row["macs"] > 0
        assert math.isfinite(row["latency_ms"]) and row["latency_ms"] > 0
    # pruning removed MACs; the pruned and fine-tuned models have the same size; decomposition removed more
    assert rows[1]["macs"] < rows[0]["macs"]
    assert rows[2]["macs"] == rows[1]["macs"] and rows[2]["params"] == rows[1]["params"]
    assert rows[3]["macs"] < rows[2]["macs"]

    # the summary table: its header and one line per row
    assert "[7/7] summary" in out
    summary = out[out.index("[7/7] summary"):]
    assert "test top-1" in summary and "params" in summary and "MACs" in summary and "ms b=1" in summary and "ms b=32" in summary
    for row in rows:
        assert any(line.startswith(row["step"]) and f"{row['macs']:,}" in line for line in summary.splitlines())
    # the bridge check printed before fine-tuning: the sliced module matches the pruned ONNX model
    assert "top-1 agreement 100%" in out

    written = set(os.listdir(tmp_path))
    assert {"digits_original.onnx", "digits_pruned.onnx", "digits_finetuned.onnx", "digits_decomposed.onnx",
            "sensitivity.json"} <= written
