"""Calibration-aware strategies: Wanda and SparseGPT, unstructured (sparsity=) or N:M (pattern="N:M").

  wanda      |w| x ||x_j||_2, the L2 norm over calibration samples and positions of the input channel j the
             weight multiplies (Sun et al., 2024); compared within each output row: every row loses
             round(sparsity x row size) weights (N:M: the N best of every M along the reduction axis).
  sparsegpt  the layer-wise OBS re-fit of obs.py on H = X^T X of the layer's calibration inputs (Conv: the
             im2col patches), streamed in the one calibration pass: kept weights change to absorb the error of
             the pruned ones. Exactly round(sparsity x size) weights per layer (N:M: as wanda's pattern). A
             layer whose re-fit would lose to magnitude pruning on the calibration data (the greedy sweep can, on
             small layers) gets the magnitude mask with its exact least-squares re-fit instead.
Both read the inputs of the unpruned model. Not supported (left dense, reported): a weight read by several nodes,
batched MatMul weights (rank > 2), and for N:M a reduction size that is not a multiple of M.
"""
from __future__ import annotations

import numpy as np

from onnxprune.calibration import SampleMean
from onnxprune.sparsity import obs
from onnxprune.sparsity.base import (
    Context,
    LayerRefit,
    LayerStrategy,
    count_for,
    fraction_mask,
    nm_mask,
    nm_skip_reason,
    register_strategy,
)
from onnxprune.sparsity.inputs import InputGram, from_rows, per_channel, weight_rows
from onnxprune.sparsity.layers import WeightLayer


def unsupported(layer: WeightLayer, ctx: Context) -> str | None:
    """Why a calibration-aware strategy leaves this layer dense, or None."""
    if len(layer.nodes) > 1:
        return (f"weight read by {len(layer.nodes)} nodes ({', '.join(layer.nodes[:3])}) with different inputs; "
                "exclude it or use a weight-only strategy")
    if layer.op_type == "MatMul" and len(layer.shape) != 2:
        return f"batched MatMul weight of rank {len(layer.shape)} (only a (K, N) matrix is supported)"
    return nm_skip_reason(layer, ctx.m) if ctx.sparsity is None else None


def row_mask(importance: np.ndarray, fraction: float, axis: int) -> np.ndarray:
    """Keep mask zeroing round(fraction x row size) least important elements of every row along `axis`
    (ties: the first element)."""
    moved = np.moveaxis(np.asarray(importance, dtype=np.float64), axis, 0)
    rows = moved.reshape(moved.shape[0], -1)
    keep = np.ones(rows.shape, dtype=bool)
    order = np.argsort(rows, axis=1, kind="stable")[:, : count_for(fraction, rows.shape[1])]
    np.put_along_axis(keep, order, False, axis=1)
    return np.moveaxis(keep.reshape(moved.shape), 0, axis)


@register_strategy("wanda")
class Wanda(LayerStrategy):
    """|w| x the L2 norm of its input channel over the calibration data, compared within each output row."""

    takes_pattern = True
    needs_calibration = True

    def skip_reason(self, layer, ctx):
        return unsupported(layer, ctx)

    def statistics(self, layers):
        return {("wanda", layer.weight): SampleMean((layer.input,), per_channel(layer.input_axis, np.square))
                for layer in layers}

    def layer_mask(self, layer, ctx):
        norms = np.sqrt(np.asarray(ctx.stats[("wanda", layer.weight)], dtype=np.float64))
        score = np.abs(np.asarray(layer.value, dtype=np.float64)) * norms[layer.input_channel_index()]
        if ctx.sparsity is None:
            return nm_mask(score, ctx.n, ctx.m, layer.reduction_axis)
        return row_mask(score, ctx.sparsity, layer.out_axis)


def column_order(layer: WeightLayer) -> np.ndarray:
    """Order of X's columns for the OBS sweep: Conv (kernel offset, input channel), so that M consecutive input
    channels at one offset (an N:M group along the reduction axis) are adjacent; others as they are."""
    if layer.op_type != "Conv":
        return np.arange(layer.shape[layer.reduction_axis])
    channels, offsets = layer.shape[1], int(np.prod(layer.shape[2:]))
    return np.arange(channels * offsets).reshape(channels, offsets).T.reshape(-1)


def magnitude_mask(layer: WeightLayer, ctx: Context) -> np.ndarray:
    """What layer_magnitude (or nm, for N:M) keeps: the baseline sparsegpt must not lose to."""
    size = np.abs(np.asarray(layer.value, dtype=np.float64))
    if ctx.sparsity is None:
        return nm_mask(size, ctx.n, ctx.m, layer.reduction_axis)
    return fraction_mask(size, ctx.sparsity)


@register_strategy("sparsegpt")
class SparseGPT(LayerRefit):
    """SparseGPT: prune and re-fit each layer against its calibration inputs' Hessian (OBS, lazy blocks)."""

    takes_pattern = True
    needs_calibration = True

    def skip_reason(self, layer, ctx):
        return unsupported(layer, ctx)

    def statistics(self, layers):
        return {("hessian", layer.weight): InputGram(layer) for layer in layers}

    def layer_refit(self, layer, ctx):
        H, _ = ctx.stats[("hessian", layer.weight)]
        order = column_order(layer)
        W = weight_rows(layer, np.asarray(layer.value, dtype=np.float64))[..., order]
        H = H[:, order][:, :, order]
        new, keep = obs.prune(W, H, sparsity=ctx.sparsity, n=ctx.n, m=ctx.m)
        magnitude = weight_rows(layer, magnitude_mask(layer, ctx))[..., order]
        if obs.output_error(W, new, H) > obs.output_error(W, np.where(magnitude, W, 0), H):
            new, keep = obs.refit(W, H, magnitude), magnitude  # never worse than magnitude on the calibration data
        back = np.argsort(order)
        return from_rows(layer, keep[..., back]), from_rows(layer, new[..., back]).astype(layer.value.dtype)
