"""The `obs` criterion (onnxprune.criteria.refit_error): units scored by the error left after the re-fit."""
from __future__ import annotations

import numpy as np
import onnx.numpy_helper
import pytest

import onnxprune as op
from onnxprune.criteria import CriterionContext, criterion_for
from onnxprune.reconstruction.refit import DEFAULT_RIDGE
from onnxprune.runtime import make_inputs, run
from graphs import GraphBuilder


def gemm_chain(duplicate: bool = False):
    """x (batch, 6) -> Gemm g1 (8 units) -> Relu -> Gemm g2 (5 outputs); with `duplicate`, unit 6 of g1 copies
    unit 2 (same filter and bias), so the re-fit of g2 can take over its role exactly."""
    rng = np.random.default_rng(7)
    w1, b1 = rng.standard_normal((8, 6)), rng.standard_normal(8)
    if duplicate:
        w1[6], b1[6] = w1[2], b1[2]
    g = GraphBuilder()
    h = g.node("Relu", [g.node("Gemm", ["x", g.const("w1", (8, 6), w1), g.const("b1", (8,), b1)], name="g1",
                               transB=1)], name="act")
    g.node("Gemm", [h, g.const("w2", (5, 8), rng.standard_normal((5, 8))), g.const("b2", (5,), rng.standard_normal(5))],
           name="g2", transB=1)
    g.nodes[-1].output[0] = "y"
    return g.model({"x": ("batch", 6)}, {"y": ("batch", 5)})


def obs_scores(model, data):
    a = op.analyze(model)
    group = a.layer("g1").group
    return criterion_for("obs")(CriterionContext(a, op.Options(), [group], data))[group]


def data_for(model, n=4):
    return [make_inputs(model, seed=k, dims={"batch": 64}) for k in range(n)]


def test_obs_scores_are_the_refit_error_of_the_units_removed_so_far():
    """The k-th unit to go scores the error of g2 re-fitted (bias included: centred inputs) without the first k
    units: min over the kept weights f of (f - w)^T (H + ridge) (f - w), w the original weights, f = 0 on the
    removed ones; the Schur complement w_R^T (H_RR - H_RK H_KK^-1 H_KR) w_R of the regularised Gram H."""
    model = gemm_chain()
    data = data_for(model)
    score = obs_scores(model, data)
    h = np.concatenate([run(model, b, ["act_out"])["act_out"] for b in data]).astype(np.float64)
    w2 = onnx.numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "w2")).astype(np.float64)
    centred = h - h.mean(axis=0)
    gram = centred.T @ centred / len(h)
    gram += DEFAULT_RIDGE * np.mean(np.diag(gram)) * np.eye(8)
    w = w2.T  # (8 inputs, 5 outputs)
    order = np.argsort(score)
    for k in range(1, 8):
        gone, keep = order[:k], np.sort(order[k:])
        schur = gram[np.ix_(gone, gone)] - gram[np.ix_(gone, keep)] @ np.linalg.solve(gram[np.ix_(keep, keep)],
                                                                                        gram[np.ix_(keep, gone)])
        expected = np.trace(w[gone].T @ schur @ w[gone])
        assert score[order[k - 1]] == pytest.approx(expected, rel=1e-6)


def test_obs_removes_a_duplicated_unit_for_free_where_weight_norms_do_not_see_it():
    model = gemm_chain(duplicate=True)
    score = obs_scores(model, data_for(model))
    first = int(np.argmin(score))
    assert first in (2, 6) and score[first] < 0.1 * np.sort(score)[1]  # only the ridge keeps it above 0


def test_obs_falls_back_to_fluctuation_for_groups_no_weight_reads():
    g = GraphBuilder()
    g.node("Relu", [g.conv("x", 3, 4, "c1")], name="act")
    g.nodes[-1].output[0] = "y"
    model = g.model({"x": ("batch", 3, 6, 6)}, {"y": ("batch", 4, 6, 6)})
    a = op.analyze(model)
    data = [make_inputs(model, seed=k, dims={"batch": 2}) for k in range(2)]
    groups = [grp.id for grp in a.groups if grp.prunable]
    context = CriterionContext(a, op.Options(), groups, data)
    for g_id in groups:
        np.testing.assert_allclose(criterion_for("obs")(context)[g_id], criterion_for("fluctuation")(context)[g_id])


def test_obs_falls_back_to_fluctuation_when_a_reader_has_fewer_rows_than_columns():
    """8 calibration rows for g2's 8 columns: its Gram is singular (rank <= 7 once centred), so the re-fit error
    is not determined there and the group is scored by `fluctuation`, as if no layer read it."""
    model = gemm_chain()
    data = [make_inputs(model, seed=k, dims={"batch": 4}) for k in range(2)]
    a = op.analyze(model)
    group = a.layer("g1").group
    context = CriterionContext(a, op.Options(), [group], data)
    np.testing.assert_allclose(criterion_for("obs")(context)[group], criterion_for("fluctuation")(context)[group])
    more = CriterionContext(a, op.Options(), [group], data_for(model))
    assert not np.allclose(criterion_for("obs")(more)[group], criterion_for("fluctuation")(more)[group])
