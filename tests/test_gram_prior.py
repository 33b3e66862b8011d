"""The ridge of the re-fit pulls towards the layer's present weights (onnxprune.reconstruction.gram.Gram.solve)."""
from __future__ import annotations

import numpy as np

from onnxprune.reconstruction.gram import Gram


def problem(rows: int, seed: int = 0):
    """x (rows, 6) whose column 5 is always zero, present weights w0 (6, 3) and bias b0, y = x w0 + b0."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, 6))
    x[:, 5] = 0.0
    w0, b0 = rng.standard_normal((6, 3)), rng.standard_normal(3)
    gram = Gram()
    gram.update(x[None], (x @ w0 + b0)[None])
    return gram, np.concatenate([w0, b0[None]])[None]


def test_a_fit_the_data_cannot_improve_keeps_the_present_weights():
    gram, prior = problem(40)
    np.testing.assert_allclose(gram.solve(1e-3, prior=prior), prior, atol=1e-9)


def test_weights_the_data_does_not_see_stay_at_their_present_value_not_zero():
    """Column 5 never varies and rows (4) < unknowns (7): the data fix only a subspace of the weights."""
    gram, prior = problem(4)
    theta = gram.solve(1e-3, prior=prior)
    np.testing.assert_allclose(theta[0, 5], prior[0, 5])
    assert np.allclose(gram.solve(1e-3)[0, 5], 0.0)  # without a prior the ridge pulls them to zero
    assert gram.relative_error(theta) < 1e-3
