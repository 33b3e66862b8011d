"""onnxprune.workflows.bench and `onnxprune bench`: sane positive numbers, ratios beside MACs; timings never asserted."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

import onnxprune as op
from onnxprune.workflows.bench import BenchComparison, BenchResult, bench, compare
from onnxprune.cli import main
from onnxprune.errors import InvalidRequestError

FIXTURE = os.path.join(os.path.dirname(__file__), "..", "fixtures", "resnet_legacy.onnx")


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "resnet_pruned.onnx"
    result = op.prune(FIXTURE, "l2", ratio=0.5)
    op.save_model(result.model, str(path), reference=result.reference)
    return str(path)


def _sane(r: BenchResult, repeats: int) -> None:
    assert r.median_ms > 0 and r.p10_ms > 0 and r.p90_ms > 0 and r.min_ms > 0
    assert r.min_ms <= r.p10_ms <= r.median_ms <= r.p90_ms
    assert r.throughput > 0 and math.isfinite(r.throughput)
    assert len(r.times_ms) == repeats and r.repeats == repeats
    assert r.params > 0 and r.macs > 0 and r.size_bytes > 0


def test_bench_one_model():
    r = bench(FIXTURE, repeats=5, warmup=1, threads=1, batch_size=3)
    _sane(r, 5)
    assert r.batch_size == 3 and r.threads == 1 and r.name == "resnet_legacy.onnx"
    assert r.throughput == pytest.approx(3 / (r.median_ms / 1e3))
    text = str(r)
    assert "median ms" in text and "MACs" in text and "resnet_legacy.onnx" in text
    assert "times_ms" not in r.as_dict() and json.dumps(r.as_dict())


def test_bench_user_inputs_fix_the_batch():
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
    r = bench(op.load_model(FIXTURE), repeats=3, warmup=0, inputs=x)
    assert r.batch_size == 2 and r.name == "model"
    with pytest.raises(InvalidRequestError, match="dtype float64"):
        bench(FIXTURE, repeats=2, inputs=x.astype(np.float64))


def test_compare_gives_ratios_beside_macs(pruned):
    c = compare(FIXTURE, pruned, repeats=4, warmup=1)
    assert isinstance(c, BenchComparison)
    _sane(c.a, 4)
    _sane(c.b, 4)
    ratios = c.ratios
    assert ratios["macs"] == pytest.approx(c.b.macs / c.a.macs) and ratios["macs"] < 1
    assert ratios["params"] < 1 and ratios["size"] < 1
    assert ratios["latency"] > 0 and ratios["throughput"] > 0
    text = str(c)
    for label in ("latency (measured)", "MACs (counted)", "params (counted)", "resnet_pruned.onnx"):
        assert label in text
    assert set(c.as_dict()) == {"a", "b", "ratios"}


@pytest.mark.parametrize("kwargs, message", [({"repeats": 0}, "repeats"), ({"warmup": -1}, "warmup"),
                                             ({"batch_size": 0}, "batch_size"), ({"threads": 0}, "threads")])
def test_bad_arguments(kwargs, message):
    with pytest.raises(InvalidRequestError, match=message):
        bench(FIXTURE, **kwargs)


def test_cli_bench_two_models(pruned, capsys):
    assert main(["bench", FIXTURE, pruned, "--repeats", "3", "--warmup", "1", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "resnet_legacy.onnx" in out and "resnet_pruned.onnx" in out
    assert "latency (measured)" in out and "MACs (counted)" in out


def test_cli_bench_json(capsys):
    assert main(["bench", FIXTURE, "--repeats", "3", "--batch-size", "2", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["median_ms"] > 0 and data["batch_size"] == 2 and data["macs"] > 0


def test_cli_bench_missing_file(tmp_path, capsys):
    assert main(["bench", str(tmp_path / "nope.onnx")]) == 2
    assert "does not exist" in capsys.readouterr().err
