"""Every graph the onnx package makes for its backend tests goes through analyze() and prune(ratio=0.3).

Each graph either succeeds with a valid model (onnx.checker full_check passes, the original's
inputs and outputs are kept, and it loads in onnxruntime when the original does) or raises
onnxprune's own error (OnnxPruneError). Anything else escaping is a failure; all failures of
a chunk are listed in one assertion message.

Corpus: the ~1,900 single-operator cases of `onnx.backend.test.case.node.collect_testcases`
plus the model files shipped under onnx/backend/test/data/{pytorch-converted, pytorch-operator,
simple}/*/model.onnx and light/*.onnx. The node cases are collected once per session (collecting
them takes ~30 s) and checked in a few chunks by worker processes (2 cores on CI).

As shipped, almost no case can prune anything (a single op between graph inputs and outputs), so
each case is also run with its op placed between two 1x1 Convs (`between_convs`): channels then
flow through every op's rule and the surgery, and the mask oracle checks the exact results.

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

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxprune as op
from onnxprune import ir

pytestmark = pytest.mark.slow
ort.set_default_logger_severity(3)  # the corpus makes onnxruntime log many (expected) kernel errors

DATA = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data")
FILE_CORPORA = ("pytorch-converted", "pytorch-operator", "simple", "light")
NODE_CHUNKS = 4
BETWEEN_CHUNKS = 2
RATIO = 0.3


# --------------------------------------------------------------------------- corpus

def model_files(corpus: str) -> list[str]:
    pattern = "*.onnx" if corpus == "light" else os.path.join("*", "model.onnx")
    return sorted(glob.glob(os.path.join(DATA, corpus, pattern)))


_COLLECTED: list | None = None


def _collected() -> list:
    """onnx's TestCase of every single-operator backend case, collected once per process (~30 s)."""
    global _COLLECTED
    if _COLLECTED is None:
        from onnx.backend.test.case.node import collect_testcases

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _COLLECTED = list(collect_testcases())
    return _COLLECTED


def node_cases() -> list[tuple[str, onnx.ModelProto]]:
    """(name, model) of every single-operator backend case."""
    return [(case.name, case.model) for case in _collected()]


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


def _graph_changed(original: onnx.ModelProto, pruned: onnx.ModelProto) -> bool:
    """True when nodes, initializers or graph inputs differ (value_info aside)."""
    a, b = original.graph, pruned.graph
    return (len(a.node) != len(b.node) or len(a.initializer) != len(b.initializer)
            or list(a.node) != list(b.node) or list(a.input) != list(b.input)
            or any(x.SerializeToString() != y.SerializeToString() for x, y in zip(a.initializer, b.initializer)))


def check_graph(name: str, model) -> tuple[str, str]:
    """(outcome, detail): outcome is 'pruned', 'unchanged', 'our-error' or 'FAIL'."""
    stage = "analyze"
    try:
        try:
            op.analyze(model)
            stage = "prune"
            result = op.prune(model, "l2", ratio=RATIO)
        except op.OnnxPruneError as exc:
            return "our-error", f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        stage = "check_model"
        onnx.checker.check_model(result.model, full_check=True)
        stage = "check_io"
        original = model if isinstance(model, onnx.ModelProto) else ir.load_model(model)
        ir.check_io(original, result.model)
        stage = "onnxruntime"
        if (result.channels or _graph_changed(original, result.model)) and _ort_loads(model) \
                and not _ort_loads(result.model):
            return "FAIL", f"{name}: the original loads in onnxruntime but the pruned model does not"
        return ("pruned" if result.channels else "unchanged"), ""
    except Exception as exc:  # noqa: BLE001 - the point of this test: report whatever escapes
        return "FAIL", _describe(name, stage, exc)


def _describe(name: str, stage: str, exc: Exception) -> str:
    tb = traceback.extract_tb(exc.__traceback__)
    where = next((f"{os.path.basename(f.filename)}:{f.lineno}" for f in reversed(tb) if "onnxprune" in f.filename), "?")
    message = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
    return f"{name}: [{stage}] {type(exc).__name__}: {message} (at {where})"


def _check_node_chunk(k: int) -> list[tuple[str, str, str]]:
    cases = node_cases()
    return [(name, *check_graph(name, model)) for name, model in cases[k::NODE_CHUNKS]]


def _check_file(path: str) -> tuple[str, str, str]:
    name = os.path.relpath(path, DATA)
    return (name, *check_graph(name, path))


def _assert_no_failures(rows: list[tuple[str, str, str]]) -> None:
    failures = [detail for _, outcome, detail in rows if outcome == "FAIL"]
    assert not failures, f"{len(failures)} of {len(rows)} graphs failed:\n" + "\n".join(failures)


# --------------------------------------------------------------------------- channels through every op

def between_convs(model: onnx.ModelProto, inputs: list) -> onnx.ModelProto | None:
    """The single-op case with channels flowing through its op: x -> Conv 1x1 -> OP -> Conv 1x1 -> y.

    As shipped, a case's op reads graph inputs and writes graph outputs, so no channel can move.
    Here its first input (float, rank >= 3, static) comes from a 1x1 Conv, every float output of
    the same rank feeds a 1x1 Conv, and its other inputs become initializers holding the test data.
    """
    g = model.graph
    if len(g.node) != 1 or not g.input or not any(o.domain in ("", "ai.onnx") and o.version >= 11
                                                  for o in model.opset_import):
        return None
    x = g.input[0]
    dims = _static_float_dims(x)
    if dims is None or len(dims) < 3 or dims[1] < 2:
        return None
    rng = np.random.default_rng(0)
    ones = [1] * (len(dims) - 2)
    inits = [numpy_helper.from_array(rng.standard_normal([dims[1], dims[1], *ones]).astype(np.float32), "between_w_in")]
    graph_inputs = [helper.make_tensor_value_info("between_x", TensorProto.FLOAT, dims)]
    nodes = [helper.make_node("Conv", ["between_x", "between_w_in"], [x.name], name="between_conv_in"), g.node[0]]
    for k, value in enumerate(g.input[1:], start=1):
        array = inputs[k] if k < len(inputs) else None
        if isinstance(array, (np.ndarray, np.generic)) and np.asarray(array).dtype != object:
            inits.append(numpy_helper.from_array(np.asarray(array), value.name))
        else:
            graph_inputs.append(value)
    outputs = []
    for k, value in enumerate(g.output):
        out_dims = _static_float_dims(value)
        if out_dims is None or len(out_dims) != len(dims):
            outputs.append(value)
            continue
        w = rng.standard_normal([3, out_dims[1], *ones]).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"between_w_out{k}"))
        nodes.append(helper.make_node("Conv", [value.name, f"between_w_out{k}"], [f"between_y{k}"],
                                      name=f"between_conv_out{k}"))
        outputs.append(helper.make_tensor_value_info(f"between_y{k}", TensorProto.FLOAT, [out_dims[0], 3, *out_dims[2:]]))
    wrapped = helper.make_model(helper.make_graph(nodes, g.name, graph_inputs, outputs, inits),
                                opset_imports=list(model.opset_import), ir_version=max(model.ir_version, 8))
    wrapped.functions.extend(model.functions)
    try:  # some wrapped graphs are not valid (e.g. an output whose shape no longer matches): skip them
        onnx.checker.check_model(wrapped, full_check=True)
    except Exception:  # noqa: BLE001
        return None
    return wrapped if _ort_loads(wrapped) else None


def _static_float_dims(value: onnx.ValueInfoProto) -> list[int] | None:
    tt = value.type.tensor_type
    if not value.type.HasField("tensor_type") or tt.elem_type != TensorProto.FLOAT or not tt.HasField("shape"):
        return None
    dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
    return None if None in dims or 0 in dims else dims


def check_between(name: str, model: onnx.ModelProto) -> tuple[str, str]:
    """As check_graph, at ratio 0.5 with no rounding, plus the mask oracle on exact results."""
    try:
        try:
            result = op.prune(model, "l2", ratio=0.5, options=op.Options(step_size=1))
        except op.OnnxPruneError as exc:
            return "our-error", f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        onnx.checker.check_model(result.model, full_check=True)
        ir.check_io(model, result.model)
        if not result.channels:
            return "unchanged", ""
        if not _ort_loads(result.model):
            return "FAIL", f"{name}: the pruned model does not load in onnxruntime"
        if result.exact:
            report = op.verify_pruning(model, result)
            if not report.ok:
                return "FAIL", f"{name}: mask oracle failed (max relative error {report.max_rel_error:.3g})"
        return "pruned", ""
    except Exception as exc:  # noqa: BLE001
        return "FAIL", _describe(name, "prune", exc)


_BETWEEN: list[tuple[str, onnx.ModelProto]] | None = None


def between_cases() -> list[tuple[str, onnx.ModelProto]]:
    global _BETWEEN
    if _BETWEEN is None:
        _BETWEEN = []
        for case in _collected():
            wrapped = between_convs(case.model, list(case.data_sets[0][0])) if case.data_sets else None
            if wrapped is not None:
                _BETWEEN.append((case.name + "[between convs]", wrapped))
    return _BETWEEN


def _check_between_chunk(k: int) -> list[tuple[str, str, str]]:
    return [(name, *check_between(name, model)) for name, model in between_cases()[k::BETWEEN_CHUNKS]]


# --------------------------------------------------------------------------- tests

@pytest.fixture(scope="module")
def pool():
    """Worker processes (forked after the node cases are collected, so they share them)."""
    node_cases()
    between_cases()
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


def test_between_convs_cases_built():
    assert len(between_cases()) > 300


@pytest.mark.parametrize("chunk", range(BETWEEN_CHUNKS))
def test_node_cases_between_convs(chunk, pool):
    """Channels flow through each op: its rule and the surgery run, and the mask oracle checks them."""
    rows = pool.submit(_check_between_chunk, chunk).result() if pool else _check_between_chunk(chunk)
    _assert_no_failures(rows)


# --------------------------------------------------------------------------- summary

def main() -> None:
    start = time.perf_counter()
    node_cases()
    collected = time.perf_counter()
    with ProcessPoolExecutor(min(2, os.cpu_count() or 1), mp_context=multiprocessing.get_context("fork")) as workers:
        between_cases()
        rows = [row for chunk in workers.map(_check_node_chunk, range(NODE_CHUNKS)) for row in chunk]
        rows += [row for chunk in workers.map(_check_between_chunk, range(BETWEEN_CHUNKS)) for row in chunk]
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
