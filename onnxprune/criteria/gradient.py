"""Gradient-based criterion: first-order Taylor importance from gradients the user supplies."""
from __future__ import annotations

import numpy as np

from onnxprune.criteria.registry import CriterionContext, register_criterion
from onnxprune.criteria.weight import combined, layer_scores
from onnxprune.errors import InvalidRequestError


@register_criterion("taylor")
def taylor(ctx: CriterionContext) -> dict[int, np.ndarray]:
    """sum |w * g| over each channel's producer and consumer slices (bias excluded).

    `gradients` maps initializer names to dL/dw arrays of the initializer's shape (e.g. accumulated over
    a few training batches). Layers combine by `policy` ("sum" gives the plain sum over all slices).
    """
    gradients = ctx.gradients
    if not gradients:
        raise InvalidRequestError("method 'taylor' needs gradients={initializer name: gradient array} "
                                  "(CLI: --gradients FILE.npz)")

    def scorer(value: np.ndarray, axis: int, name: str) -> np.ndarray:
        grad = checked_gradient(gradients, name, np.shape(value))
        product = np.abs(np.asarray(value, dtype=np.float64) * grad)
        if product.ndim == 0:
            return product.reshape(1)
        return np.moveaxis(product, axis, 0).reshape(product.shape[axis], -1).sum(axis=1)

    return combined(ctx, layer_scores(ctx, scorer, lambda op_type, slot, role: role in ("out", "in")))


def checked_gradient(gradients: dict, name: str, shape: tuple, user: str = "method 'taylor'") -> np.ndarray:
    """The user's gradient for initializer `name`, present and of its shape; `user` names who needs it."""
    if name not in gradients:
        raise InvalidRequestError(f"{user}: no gradient for initializer '{name}'; supply one for every "
                                  f"weight of the pruned layers (keys are initializer names)")
    grad = np.asarray(gradients[name], dtype=np.float64)
    if grad.shape != tuple(shape):
        raise InvalidRequestError(f"{user}: gradient for initializer '{name}' has shape {list(grad.shape)}, "
                                  f"but the initializer has shape {list(shape)}")
    return grad
