"""What makes reconstruction's passes cheap leaves its result unchanged: float32 Gram products, the later stages'
sums computed ahead by a reference-only pass, and each pass run from the boundary activations kept by the last."""
from __future__ import annotations

import importlib
import os
import warnings

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import onnxprune as op
from onnxprune.reconstruction import FewSamplesWarning
from onnxprune.reconstruction.gram import Gram
from onnxprune.reconstruction.segments import Segments
from onnxprune.runtime import make_inputs, run

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures")
REFIT = importlib.import_module("onnxprune.reconstruction.refit")  # the package's `refit` is the function


def _fixture(name: str) -> onnx.ModelProto:
    return onnx.load(os.path.join(FIXTURES, f"{name}.onnx"))


def _calibration(model: onnx.ModelProto, batches: int = 3, batch: int = 4) -> list[dict]:
    return [make_inputs(model, seed=s, dims={"batch": batch}) for s in range(batches)]


def _weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _reconstructed(model: onnx.ModelProto, calibration, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FewSamplesWarning)
        return op.prune(model, "l2", 0.5, calibration=calibration, reconstruct=True, **kwargs)


def test_float32_products_match_float64_sums():
    """The same rows in float32 and float64 give the same sums and the same solve (to float32 precision)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4000, 40)).astype(np.float32) + 0.5
    y = (x @ rng.standard_normal((3, 40, 6)).astype(np.float32) + 0.1 * rng.standard_normal((3, 4000, 6))).astype(
        np.float32)
    sums = {}
    for dtype in (np.float64, np.float32):
        g = Gram()
        for part in range(0, 4000, 1000):  # several batches
            g.update(x[:, part:part + 1000].astype(dtype), y[:, part:part + 1000].astype(dtype))
        sums[dtype] = g
    a, b = sums[np.float64], sums[np.float32]
    assert b.G.dtype == b.B.dtype == b.yy.dtype == np.float64
    np.testing.assert_allclose(b.G, a.G, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(b.B, a.B, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(b.yy, a.yy, rtol=1e-9)
    theta = a.solve(1e-3)
    np.testing.assert_allclose(b.solve(1e-3), theta, rtol=1e-4, atol=1e-5)
    assert b.relative_error(theta) == pytest.approx(a.relative_error(theta), rel=1e-3)


def test_float32_refit_matches_float64(monkeypatch):
    model = _fixture("mobilenetv2_legacy")
    calibration = _calibration(model)
    monkeypatch.setattr(REFIT, "FLOAT32_WORK", 2**62)
    wide = _reconstructed(model, calibration)
    monkeypatch.setattr(REFIT, "FLOAT32_WORK", 0)  # every layer in float32
    single = _reconstructed(model, calibration)
    rows = {r.name: r for r in wide.reconstruction.fitted}
    for r in single.reconstruction.fitted:
        assert r.error_after == pytest.approx(rows[r.name].error_after, rel=1e-2, abs=1e-4), r.name
    expected = _weights(wide.model)
    for name, value in _weights(single.model).items():
        np.testing.assert_allclose(value, expected[name], rtol=1e-2, atol=1e-3 * max(1.0, np.abs(expected[name]).max()))


@pytest.mark.parametrize("name", ["mobilenetv2_legacy", "resnet_legacy"])
def test_segmented_passes_equal_full_passes(monkeypatch, name):
    """Passes run from the kept boundary activations (in-process) give the weights that passes running both
    models from their inputs (calibration.collect, as on Ray) give."""
    model = _fixture(name)
    calibration = _calibration(model)
    segmented = _reconstructed(model, calibration)

    class Elsewhere:
        name = "elsewhere"

    monkeypatch.setattr(REFIT, "current", lambda: Elsewhere())  # the collect path: models run from their inputs
    full = _reconstructed(model, calibration)
    a, b = segmented.reconstruction, full.reconstruction
    assert a.passes == b.passes > 1 and a.reference_passes == b.reference_passes >= 1
    assert [r.error_after for r in a.layers] == pytest.approx([r.error_after for r in b.layers], rel=1e-4, abs=1e-6)
    expected = _weights(full.model)
    for key, value in _weights(segmented.model).items():
        np.testing.assert_allclose(value, expected[key], rtol=1e-4, atol=1e-6)


def test_segments_run_a_model_in_parts(tmp_path):
    """Two segments (to a middle tensor, then to the output) give the full model's values, the second one runs
    only the nodes after the first's boundary, and the boundary files go when no later pass reads them."""
    model = _fixture("resnet_legacy")
    feeds = _calibration(model, batches=2)
    output = model.graph.output[0].name
    middle = model.graph.node[len(model.graph.node) // 2].output[0]
    expected = [run(model, feed, [middle, output]) for feed in feeds]
    segments = Segments(model, [middle, output], str(tmp_path), "m")
    for outputs in ([middle], [output]):
        segments.plan(outputs)
        for feed, want in zip(feeds, expected):
            got = segments.run(feed)
            for t in outputs:
                np.testing.assert_allclose(got[t], want[t], rtol=1e-5, atol=1e-5)
        segments.commit()
        assert segments.kept or outputs == [output]
    assert 0 < len(segments.done) <= len(model.graph.node)
    assert not os.listdir(tmp_path)  # nothing downstream of the output: no boundary left
    segments.plan([middle])  # behind the boundary: starts again from the inputs
    np.testing.assert_allclose(segments.run(feeds[0])[middle], expected[0][middle], rtol=1e-5, atol=1e-5)


def test_lookahead_budget_bounds_the_shared_stages(monkeypatch):
    """With room for one stage's sums, a reference-only pass computes one stage ahead: a shared pass serves two
    stages at most, so there are more passes, each fit still no worse than the surgery's weights."""
    model = _fixture("mobilenetv2_legacy")
    calibration = _calibration(model)
    free = _reconstructed(model, calibration).reconstruction
    monkeypatch.setattr(REFIT, "LOOKAHEAD_BYTES", 1)
    tight = _reconstructed(model, calibration).reconstruction
    assert tight.reference_passes > free.reference_passes and tight.passes >= free.passes
    assert tight.passes >= -(-tight.stages // 2)
    assert all(r.error_after <= r.error_before for r in tight.fitted)
