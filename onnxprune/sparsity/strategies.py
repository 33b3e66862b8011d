"""Built-in strategies (ShrinkBench's set plus N:M), written against the public extension API of base.py.

Importance of a weight w:
  random                          uniform random (seeded), global
  global_magnitude / layer_*      |w|
  *_magnitude_gradient            |w * dL/dw|, gradients supplied by the user, keyed by initializer name
  *_activation_magnitude          |w| * a, a = mean over calibration samples and positions of |x_c|, the input
                                  channel c the weight multiplies (one onnxruntime pass)
Channel strategies (whole output channels zeroed, bias included; `sparsity` = fraction of channels per layer):
  weight_norm_channel             L2 norm of the channel's weights
  activation_norm_channel         mean over samples of the L2 norm of the channel's output activation
Pattern:
  nm                              N:M along the reduction axis (Conv: input channels, Gemm/MatMul: K): in every
                                  group of M consecutive weights keep the N of largest |w|; layers whose
                                  reduction size is not a multiple of M are skipped (see the report).
"""
from __future__ import annotations

import numpy as np

from onnxprune.calibration import SampleMean
from onnxprune.criteria.data import channel_norms
from onnxprune.sparsity.base import (
    Context,
    GlobalImportance,
    LayerImportance,
    LayerStrategy,
    ModelStrategy,
    channel_mask,
    global_masks,
    nm_mask,
    nm_skip_reason,
    register_strategy,
)
from onnxprune.sparsity.inputs import per_channel
from onnxprune.sparsity.layers import WeightLayer


def magnitude(layer: WeightLayer) -> np.ndarray:
    return np.abs(np.asarray(layer.value, dtype=np.float64))


class _ActivationMagnitude:
    needs_calibration = True

    def statistics(self, layers):
        return {("input", layer.weight): SampleMean((layer.input,), per_channel(layer.input_axis, np.abs, np.mean))
                for layer in layers}

    def importance(self, layer: WeightLayer, ctx: Context) -> np.ndarray:
        activation = np.asarray(ctx.stats[("input", layer.weight)], dtype=np.float64)
        return magnitude(layer) * activation[layer.input_channel_index()]


class _MagnitudeGradient:
    needs_gradients = True

    def importance(self, layer: WeightLayer, ctx: Context) -> np.ndarray:
        return np.abs(np.asarray(layer.value, dtype=np.float64) * ctx.gradient(layer))


@register_strategy("random")
class RandomStrategy(ModelStrategy):
    """Zero a random fraction of all participating weights (exact count, seeded)."""

    def model_masks(self, layers, ctx):
        rng = ctx.rng()
        return global_masks({layer.weight: rng.random(layer.shape) for layer in layers}, ctx.sparsity)


@register_strategy("global_magnitude")
class GlobalMagnitude(GlobalImportance):
    def importance(self, layer, ctx):
        return magnitude(layer)


@register_strategy("layer_magnitude")
class LayerMagnitude(LayerImportance):
    def importance(self, layer, ctx):
        return magnitude(layer)


@register_strategy("global_magnitude_gradient")
class GlobalMagnitudeGradient(_MagnitudeGradient, GlobalImportance):
    pass


@register_strategy("layer_magnitude_gradient")
class LayerMagnitudeGradient(_MagnitudeGradient, LayerImportance):
    pass


@register_strategy("global_activation_magnitude")
class GlobalActivationMagnitude(_ActivationMagnitude, GlobalImportance):
    pass


@register_strategy("layer_activation_magnitude")
class LayerActivationMagnitude(_ActivationMagnitude, LayerImportance):
    pass


@register_strategy("weight_norm_channel")
class WeightNormChannel(LayerStrategy):
    """Zero the fraction of output channels with the smallest weight L2 norm, in every layer."""

    zero_bias = True

    def layer_mask(self, layer, ctx):
        value = np.moveaxis(np.asarray(layer.value, dtype=np.float64), layer.out_axis, 0)
        scores = np.sqrt(np.square(value.reshape(value.shape[0], -1)).sum(axis=1))
        return channel_mask(scores, ctx.sparsity, layer.shape, layer.out_axis)


@register_strategy("activation_norm_channel")
class ActivationNormChannel(LayerStrategy):
    """Zero the fraction of output channels whose output activation has the smallest mean L2 norm."""

    zero_bias = True
    needs_calibration = True

    def statistics(self, layers):
        return {("output", layer.weight): SampleMean((layer.output,), channel_norms(layer.output_axis))
                for layer in layers}

    def layer_mask(self, layer, ctx):
        return channel_mask(ctx.stats[("output", layer.weight)], ctx.sparsity, layer.shape, layer.out_axis)


@register_strategy("nm")
class NM(LayerStrategy):
    """N:M: of every M consecutive weights along the reduction axis keep the N of largest |w|."""

    uses_sparsity = False

    def skip_reason(self, layer: WeightLayer, ctx: Context) -> str | None:
        return nm_skip_reason(layer, ctx.m)

    def layer_mask(self, layer, ctx):
        return nm_mask(magnitude(layer), ctx.n, ctx.m, layer.reduction_axis)
