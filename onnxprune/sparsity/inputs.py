"""What a weight sees of its input: design rows, their Gram matrix (the layer Hessian) and channel norms.

A layer computes y = X W^T per group, where a row of X is one sample position of the input:
  * Gemm / MatMul: the input with its channel axis last, flattened to (rows, K); one group;
  * Conv: the im2col view of the input, (samples x output positions, groups, C / group x prod(kernel)), columns
    ordered (input channel, kernel offset), the order of the weight's reshape (O, C / group x prod(kernel)).
`InputGram` streams H = X^T X per group (float64, in the one calibration pass; memory d x d per group, whatever
the number of samples), `per_channel` per-sample reductions of every input channel (Wanda's sums of x^2).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from onnxprune.layout import WeightLayout
from onnxprune.reconstruction.layers import Consumer
from onnxprune.sparsity.layers import WeightLayer

CHUNK_BYTES = 64 << 20  # im2col is built for this many bytes of rows at a time


def design(layer: WeightLayer) -> Callable[[np.ndarray], np.ndarray]:
    """x -> X (groups, rows, columns) for this layer's input (reconstruction's design rows, every output position:
    the Hessian is the layer's own, so the re-fit is exact on the calibration data)."""
    if layer.op_type == "Conv":
        layout = WeightLayout("Conv", 1, out_axis=0, in_axis=1, group=layer.group, per_group_axis=1)
        view = Consumer(layer.name, "Conv", -1, layer.input, layer.output, None, layer.weight, None, layout,
                        attrs=dict(layer.conv), thin=False)
        return view.design
    axis = layer.input_axis

    def flat(x: np.ndarray) -> np.ndarray:
        x = np.moveaxis(x, axis, -1)
        return x.reshape(1, -1, x.shape[-1])

    return flat


def weight_rows(layer: WeightLayer, value: np.ndarray) -> np.ndarray:
    """The weight as (groups, outputs per group, columns), columns in X's order."""
    value = np.moveaxis(np.asarray(value), layer.out_axis, 0)
    return value.reshape(layer.group, value.shape[0] // layer.group, -1)


def from_rows(layer: WeightLayer, rows: np.ndarray) -> np.ndarray:
    """Inverse of weight_rows: back to the weight's own shape and axis order."""
    moved = list(layer.shape)
    moved.insert(0, moved.pop(layer.out_axis))
    return np.moveaxis(rows.reshape(moved), 0, layer.out_axis)


class InputGram:
    """Streams H = X^T X (groups, d, d) of one layer's design rows, and the number of rows."""

    def __init__(self, layer: WeightLayer) -> None:
        self.tensors = (layer.input,)
        self.design = design(layer)
        self.expansion = int(np.prod(layer.conv["kernel"])) if layer.op_type == "Conv" else 0  # 0: not a Conv
        self.H: np.ndarray | None = None
        self.rows = 0

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x)
        if not self.expansion:
            self.add(self.design(x))
            return
        step = max(1, CHUNK_BYTES // (8 * self.expansion * max(x[:1].size, 1)))  # samples per im2col chunk
        for start in range(0, len(x), step):
            self.add(self.design(x[start : start + step]))

    def add(self, rows: np.ndarray) -> None:
        x = np.asarray(rows, dtype=np.float64)  # (groups, rows, d)
        h = x.transpose(0, 2, 1) @ x
        self.H = h if self.H is None else self.H + h
        self.rows += x.shape[1]

    def merge(self, other: "InputGram") -> None:
        """Add the partial sums of `other` (the same statistic, updated on other batches)."""
        if other.H is not None:
            self.H = other.H.copy() if self.H is None else self.H + other.H
        self.rows += other.rows

    def result(self) -> tuple[np.ndarray, int]:
        return self.H, self.rows


def per_channel(axis: int, transform: Callable[[np.ndarray], np.ndarray],
                reduce: Callable[..., np.ndarray] = np.sum) -> Callable[[np.ndarray], np.ndarray]:
    """Per sample: `reduce` of transform(x) over every position of each channel (channel axis `axis`), as
    (samples, channels); e.g. (np.square, np.sum) gives Wanda's squared input norms."""

    def per_sample(x: np.ndarray) -> np.ndarray:
        x = transform(np.asarray(x, dtype=np.float64))
        if x.ndim == 1:
            return x[None]
        y = np.moveaxis(x, axis, -1)
        return reduce(y.reshape(y.shape[0], -1, y.shape[-1]), axis=1)

    return per_sample
