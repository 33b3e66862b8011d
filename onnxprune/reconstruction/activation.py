"""Activation-aware re-fit targets: a layer whose output only a Relu or a constant Clip reads need not match the
reference where the activation clips it (both clipped give the same output after the activation).

`activation_bounds` finds the clipping ends from the graph; `activation_target` turns a reference target into one
whose squared error bounds the error after the activation from above; `RunningFit` makes those targets from the
fit so far while the calibration rows stream in (refit.LayerGram).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from onnx import numpy_helper

from onnxprune.graph import GraphIndex, attribute
from onnxprune.reconstruction.gram import Gram


def activation_bounds(index: GraphIndex, y: str) -> tuple[float, float] | None:
    """(low, high) when `y`'s only reader is a Relu (0, inf) or a Clip with constant bounds: the activation
    maps every value <= low to low and >= high to high, so the layer need not match its target beyond them."""
    uses = index.consumers.get(y, [])
    if len(uses) != 1 or y in index.graph_outputs:
        return None
    node = index.nodes[uses[0][0]]
    if node.op_type == "Relu":
        return 0.0, math.inf
    if node.op_type != "Clip":
        return None
    low, high = attribute(node, "min", -math.inf), attribute(node, "max", math.inf)
    for slot in (1, 2):
        name = node.input[slot] if len(node.input) > slot else ""
        if not name:
            continue
        value = _scalar(index, name)
        if value is None:
            return None
        low, high = (value, high) if slot == 1 else (low, value)
    return (float(low), float(high)) if low > -math.inf or high < math.inf else None


def _scalar(index: GraphIndex, name: str) -> float | None:
    """The value of a one-element initializer or Constant node output; None for anything else."""
    tensor = index.initializers.get(name)
    producer = index.producer_node(name)
    if tensor is None and producer is not None and producer.op_type == "Constant":
        tensor = next((a.t for a in producer.attribute if a.name == "value"), None)
    if tensor is None:
        return None
    value = numpy_helper.to_array(tensor).reshape(-1)
    return float(value[0]) if value.size == 1 else None


def activation_target(y: np.ndarray, prediction: np.ndarray, bounds: tuple[float, float]) -> np.ndarray:
    """The target `y` where the activation passes it; where it clips y (y <= low or >= high), the prediction
    held within the clipped side (min(prediction, low), max(prediction, high)). Any output's squared error to it
    bounds its error after the activation from above (the activation is 1-Lipschitz and fixes `y` where it passes
    it), and where `y` is clipped the bound is exact at `prediction` (unless that is clipped on the other side): no
    effort on values the activation discards."""
    low, high = bounds
    out = np.where(y <= low, np.minimum(prediction, low), y)
    return np.where(y >= high, np.maximum(prediction, high), out).astype(y.dtype, copy=False)


@dataclass
class RunningFit:
    """Activation-aware targets of a layer whose output a Relu / Clip alone reads (`bounds`): for every
    slice of design rows after the first, the fit so far (the ridge solve of the sums so far, towards the layer's
    present weights `prior`) predicts the slice, and where the reference is clipped the target becomes that
    prediction held on the clipped side (activation_target). Every row's squared error to its target
    then bounds the error after the activation from above, and equals it where the fit so far would have it:
    the solve spends no effort on values the activation discards. One pass, no rows stored; the first slice
    keeps its plain targets."""

    bounds: tuple[float, float]
    fit_bias: bool
    prior: np.ndarray
    ridge: float

    def target(self, gram: Gram, design: np.ndarray, target: np.ndarray) -> np.ndarray:
        """The slice's targets (groups, rows, outputs), given its design rows and the sums of earlier slices."""
        theta = gram.solve(self.ridge, self.fit_bias, prior=self.prior).astype(design.dtype)
        d = design.shape[2]
        prediction = design @ theta[:, :d] + theta[:, d:]
        return activation_target(target, prediction, self.bounds)
