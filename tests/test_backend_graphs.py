"""Every graph the onnx package makes for its backend tests goes through analyze() and prune(ratio=0.3).

Each graph either succeeds with a valid model (onnx.checker full_check passes, the original's
inputs and outputs are kept, and it loads in onnxruntime when the original does) or raises
onnxprune's own error (OnnxPruneError). Anything else escaping is a failure; all failures of
a chunk are listed in one assertion message.

Corpus: the ~1,900 single-operator cases of `onnx.backend.test.case.node.collect_testcases`
plus the model files shipped under onnx/backend/test/data/{pytorch-converted, pytorch-operator,
simple}/*/model.onnx and light/*.onnx. The node cases are collected once per session (collecting
them takes ~30 s) and checked in a few chunks by worker processes (2 cores on CI).

Run directly (`python tests/test_backend_graphs.py`) for a per-outcome summary of the whole corpus.
"""
from __future__ import annotations

import collections
import glob
import multiprocessing
import os
import sys
import time
import traceback
import warnings
from concurrent.futures import ProcessPoolExecutor

import onnx
import onnxruntime as ort
import pytest

import onnxprune as op
from onnxprune import ir

pytestmark = pytest.mark.slow
ort.set_default_logger_severity(3)  # the corpus makes onnxruntime log many (expected) kernel errors

DATA = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data")
FILE_CORPORA = ("pytorch-converted", "pytorch-operator", "simple", "light")
NODE_CHUNKS = 4
RATIO = 0.3


# --------------------------------------------------------------------------- corpus

def model_files(corpus: str) -> list[str]:
    pattern = "*.onnx" if corpus == "light" else os.path.join("*", "model.onnx")
    return sorted(glob.glob(os.path.join(DATA, corpus, pattern)))


_NODE_CASES: list[tuple[str, onnx.ModelProto]] | None = None


def node_cases() -> list[tuple[str, onnx.ModelProto]]:
    """(name, model) of every single-operator backend case, collected once per process."""
    global _NODE_CASES
    if _NODE_CASES is None:
        from onnx.backend.test.case.node import collect_testcases

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cases = collect_testcases()
        _NODE_CASES = [(case.name, case.model) for case in cases]
    return _NODE_CASES


# --------------------------------------------------------------------------- one graph

def _ort_loads(model) -> bool:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 4
    try:
        if isinstance(model, onnx.ModelProto):
            ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        else:
            ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    except Exception:  # noqa: BLE001 - any ORT refusal means "the original does not load"
        return False
    return True


def check_graph(name: str, model) -> tuple[str, str]:
    """(outcome, detail): outcome is 'pruned', 'unchanged', 'our-error' or 'FAIL'."""
    stage = "analyze"
    try:
        try:
            op.analyze(model)
            stage = "prune"
            result = op.prune(model, ratio=RATIO)
        except op.OnnxPruneError as exc:
            return "our-error", f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        stage = "check_model"
        onnx.checker.check_model(result.model, full_check=True)
        stage = "check_io"
        original = model if isinstance(model, onnx.ModelProto) else ir.load_model(model)
        ir.check_io(original, result.model)
        stage = "onnxruntime"
        if _ort_loads(model) and not _ort_loads(result.model):
            return "FAIL", f"{name}: the original loads in onnxruntime but the pruned model does not"
        return ("pruned" if result.channels else "unchanged"), ""
    except Exception as exc:  # noqa: BLE001 - the point of this test: report whatever escapes
        tb = traceback.extract_tb(exc.__traceback__)
        where = next((f"{os.path.basename(f.filename)}:{f.lineno}" for f in reversed(tb)
                      if "onnxprune" in f.filename), "?")
        return "FAIL", f"{name}: [{stage}] {type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''} (at {where})"


def _check_node_chunk(k: int) -> list[tuple[str, str, str]]:
    cases = node_cases()
    return [(name, *check_graph(name, model)) for name, model in cases[k::NODE_CHUNKS]]


def _check_file(path: str) -> tuple[str, str, str]:
    name = os.path.relpath(path, DATA)
    return (name, *check_graph(name, path))


def _assert_no_failures(rows: list[tuple[str, str, str]]) -> None:
    failures = [detail for _, outcome, detail in rows if outcome == "FAIL"]
    assert not failures, f"{len(failures)} of {len(rows)} graphs failed:\n" + "\n".join(failures)


# --------------------------------------------------------------------------- tests

@pytest.fixture(scope="module")
def pool():
    """Worker processes (forked after the node cases are collected, so they share them)."""
    node_cases()
    if not sys.platform.startswith("linux"):
        yield None
        return
    # a pool that reports a dead worker (BrokenProcessPool) instead of hanging on it
    with ProcessPoolExecutor(min(2, os.cpu_count() or 1), mp_context=multiprocessing.get_context("fork")) as workers:
        yield workers


@pytest.mark.parametrize("corpus", FILE_CORPORA)
def test_shipped_model_files(corpus, pool):
    paths = model_files(corpus)
    assert paths, f"no model files under {os.path.join(DATA, corpus)}"
    rows = list(pool.map(_check_file, paths)) if pool else [_check_file(p) for p in paths]
    _assert_no_failures(rows)


def test_node_cases_collected():
    assert len(node_cases()) > 1000


@pytest.mark.parametrize("chunk", range(NODE_CHUNKS))
def test_node_cases(chunk, pool):
    if pool is None:
        rows = _check_node_chunk(chunk)
    else:
        rows = pool.submit(_check_node_chunk, chunk).result()
    _assert_no_failures(rows)


# --------------------------------------------------------------------------- summary

def main() -> None:
    start = time.perf_counter()
    node_cases()
    collected = time.perf_counter()
    with ProcessPoolExecutor(min(2, os.cpu_count() or 1), mp_context=multiprocessing.get_context("fork")) as workers:
        rows = [row for chunk in workers.map(_check_node_chunk, range(NODE_CHUNKS)) for row in chunk]
        for corpus in FILE_CORPORA:
            rows += workers.map(_check_file, model_files(corpus))
    total = time.perf_counter() - start
    counts = collections.Counter(outcome for _, outcome, _ in rows)
    print(f"{len(rows)} graphs in {total:.1f} s (collecting node cases {collected - start:.1f} s): {dict(counts)}")
    errors = collections.Counter(detail.split(":")[0] + ": " + _message_kind(detail) for _, o, detail in rows
                                 if o == "our-error")
    for kind, n in errors.most_common():
        print(f"  {n:5d}  {kind}")
    for name, outcome, detail in rows:
        if outcome == "FAIL":
            print("FAIL", detail)
    if "-v" in sys.argv:
        for name, outcome, detail in rows:
            if outcome != "FAIL":
                print(outcome, name, detail)


def _message_kind(detail: str) -> str:
    import re

    text = detail.split(":", 1)[1] if ":" in detail else detail
    text = re.sub(r"'[^']*'|\"[^\"]*\"|/\S+|\d+", "_", text)
    return text.strip()[:110]


if __name__ == "__main__":
    main()
