"""The fuzz harness (tools/fuzz) in CI: a few hundred seeded cases through every public entry point, each in a
worker process with a time and memory limit; none may end in anything but a valid result or onnxprune's own
error. The long run (thousands of cases) is `ONNXPRUNE_FUZZ_CASES=3000 python -m pytest -m slow
tests/test_fuzz.py` or `python tools/fuzz/run.py --cases 3000`."""
from __future__ import annotations

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools", "fuzz"))

from run import fuzz, table  # noqa: E402

CI_CASES = 300


def check(report: dict) -> None:
    assert not report["breaches"], table(report) + "\n" + "\n".join(map(str, report["breaches"][:20]))
    assert sum(report["outcomes"].values()) > 0


def test_fuzz_ci_cases_end_in_a_result_or_onnxprune_error():
    check(fuzz(CI_CASES, seed=0, timeout=120, memory_gb=3))


@pytest.mark.slow
@pytest.mark.skipif("ONNXPRUNE_FUZZ_CASES" not in os.environ, reason="long run: set ONNXPRUNE_FUZZ_CASES")
def test_fuzz_long_run():
    check(fuzz(int(os.environ["ONNXPRUNE_FUZZ_CASES"]), seed=int(os.environ.get("ONNXPRUNE_FUZZ_SEED", "1")),
               timeout=120, memory_gb=3))


def test_case_2371_of_seed_2030_an_unknown_length_shape_input_is_onnxprune_error(tmp_path):
    """Fuzz finding: a Reshape whose shape is a Concat of unknown length (wiring mutated, a weight routed through
    If) reached surgery, which raised ValueError; it is now onnxprune's UnsupportedError (or a valid result)."""
    import onnxprune as op
    from run import make_case, seed_models

    path, operation, _, _ = make_case(2371, 2030, seed_models(), str(tmp_path))
    assert operation == "prune"
    try:
        result = op.prune(path, ratio=0.3)
    except op.OnnxPruneError:
        return
    op.save_model(result.model, tmp_path / "out.onnx")
