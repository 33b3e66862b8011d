"""The strategy extension API: base classes, the registry, the context a strategy gets, mask helpers.

A strategy turns participating weights (`WeightLayer`s) into keep-masks (bool arrays of the weight's shape,
True = keep). Two forms, as in ShrinkBench:
  * `LayerStrategy.layer_mask(layer, ctx)`: one layer at a time (layerwise sparsity);
  * `ModelStrategy.model_masks(layers, ctx)`: all layers at once (global sparsity).
For the common case of "zero the least important weights", subclass `LayerImportance` or `GlobalImportance`
and define `importance(layer, ctx)` only. Register a strategy by name with `register_strategy`; the built-in
strategies use the same classes and registry.

Exactness: `fraction_mask` and `global_masks` zero exactly round(fraction * size) weights (half rounds up), the
ones of smallest importance; ties go to the weight that comes first (layer order, then C order of elements).
"""
from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from onnxprune.calibration import Statistic
from onnxprune.errors import InvalidRequestError
from onnxprune.sparsity.layers import WeightLayer


@dataclass
class Context:
    """What a strategy may read besides the layers.

    sparsity: fraction of participating weights to zero (None for strategies that don't take one, e.g. nm);
    n, m: the N:M pattern; seed: for random choices (use `ctx.rng()`); gradients: {initializer name: dL/dw}
    as supplied; stats: results of the calibration statistics the strategy asked for in `statistics()`,
    by the keys it used.
    """

    sparsity: float | None
    n: int = 2
    m: int = 4
    seed: int = 0
    gradients: Mapping[str, Any] | None = None
    stats: dict[Hashable, Any] = field(default_factory=dict)
    strategy: str = ""

    def rng(self) -> np.random.Generator:
        """A fresh generator from the seed (same seed, same choices)."""
        return np.random.default_rng(self.seed)

    def gradient(self, layer: WeightLayer) -> np.ndarray:
        """The gradient supplied for the layer's weight, checked (present, same shape) as the taylor criterion does."""
        from onnxprune.criteria.gradient import checked_gradient

        if not self.gradients:
            raise InvalidRequestError(f"strategy '{self.strategy}' needs gradients={{initializer name: gradient "
                                      "array}} (CLI: --gradients FILE.npz)")
        return checked_gradient(self.gradients, layer.weight, layer.shape, f"strategy '{self.strategy}'")


class Strategy:
    """Base class of every strategy. Subclass LayerStrategy or ModelStrategy (or the *Importance helpers).

    Class attributes:
      uses_sparsity: the strategy reads ctx.sparsity (sparsify then requires sparsity= or compression=);
      takes_pattern: it also takes pattern="N:M" instead (then ctx.sparsity is None and ctx.n, ctx.m apply);
      needs_gradients / needs_calibration: sparsify checks that gradients= / calibration= were given;
      zero_bias: whole output channels are zeroed; sparsify also zeroes the bias of every emptied channel.
    """

    uses_sparsity = True
    takes_pattern = False
    needs_gradients = False
    needs_calibration = False
    zero_bias = False
    name = ""

    def statistics(self, layers: list[WeightLayer]) -> dict[Hashable, Statistic]:
        """Calibration statistics to stream (calibration.Statistic objects), all in ONE onnxruntime pass.

        Their results reach `ctx.stats` under the same keys. Default: none.
        """
        return {}

    def skip_reason(self, layer: WeightLayer, ctx: Context) -> str | None:
        """Why this layer can't take the strategy (it is then left dense and reported), or None. Default None."""
        return None

    def masks(self, layers: list[WeightLayer], ctx: Context) -> dict[str, np.ndarray]:
        """{weight initializer name: keep mask}; layers left out keep every weight."""
        raise NotImplementedError

    def weights(self, layers: list[WeightLayer], ctx: Context) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """(keep masks, new values): re-fitting strategies also change the weights they keep.

        New values are {weight name: array of the weight's shape}; sparsify zeroes them where the mask is False.
        Default: masks() and no new values (kept weights stay as they are).
        """
        return self.masks(layers, ctx), {}


class LayerStrategy(Strategy):
    """Layerwise: each layer gets its own mask from `layer_mask`."""

    def layer_mask(self, layer: WeightLayer, ctx: Context) -> np.ndarray:
        raise NotImplementedError

    def masks(self, layers: list[WeightLayer], ctx: Context) -> dict[str, np.ndarray]:
        return {layer.weight: self.layer_mask(layer, ctx) for layer in layers}


class ModelStrategy(Strategy):
    """Whole-model: `model_masks` sees every participating layer at once."""

    def model_masks(self, layers: list[WeightLayer], ctx: Context) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def masks(self, layers: list[WeightLayer], ctx: Context) -> dict[str, np.ndarray]:
        return self.model_masks(layers, ctx)


class LayerRefit(Strategy):
    """Layerwise, re-fitting: `layer_refit` returns the layer's keep mask and its new weight values."""

    def layer_refit(self, layer: WeightLayer, ctx: Context) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def weights(self, layers: list[WeightLayer], ctx: Context) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        masks, values = {}, {}
        for layer in layers:
            masks[layer.weight], values[layer.weight] = self.layer_refit(layer, ctx)
        return masks, values

    def masks(self, layers: list[WeightLayer], ctx: Context) -> dict[str, np.ndarray]:
        return self.weights(layers, ctx)[0]


class LayerImportance(LayerStrategy):
    """Zero the `ctx.sparsity` fraction of least important weights in every layer."""

    def importance(self, layer: WeightLayer, ctx: Context) -> np.ndarray:
        raise NotImplementedError

    def layer_mask(self, layer: WeightLayer, ctx: Context) -> np.ndarray:
        return fraction_mask(self.importance(layer, ctx), ctx.sparsity)


class GlobalImportance(ModelStrategy):
    """Zero the `ctx.sparsity` fraction of least important weights over all participating layers."""

    def importance(self, layer: WeightLayer, ctx: Context) -> np.ndarray:
        raise NotImplementedError

    def model_masks(self, layers: list[WeightLayer], ctx: Context) -> dict[str, np.ndarray]:
        return global_masks({layer.weight: self.importance(layer, ctx) for layer in layers}, ctx.sparsity)


# --------------------------------------------------------------------------- registry

STRATEGIES: dict[str, type[Strategy] | Strategy] = {}


def register_strategy(name: str, strategy: type[Strategy] | Strategy | None = None):
    """Register a Strategy subclass (or instance) under `name`; usable as a class decorator."""

    def add(s):
        if not (isinstance(s, Strategy) or (isinstance(s, type) and issubclass(s, Strategy))):
            raise TypeError(f"register_strategy('{name}'): expected a Strategy subclass or instance, got {s!r}")
        STRATEGIES[name.lower()] = s
        if isinstance(s, type) and not s.__dict__.get("name"):
            s.name = name.lower()
        return s

    if not isinstance(name, str) or not name:
        raise TypeError("register_strategy: name must be a non-empty string")
    return add(strategy) if strategy is not None else add


def strategy_for(strategy: str | Strategy | type[Strategy]) -> Strategy:
    """A Strategy instance for a registered name (case-insensitive), a Strategy subclass or an instance."""
    if isinstance(strategy, Strategy):
        return strategy
    if isinstance(strategy, type) and issubclass(strategy, Strategy):
        return strategy()
    if not isinstance(strategy, str) or strategy.lower() not in STRATEGIES:
        raise InvalidRequestError(f"unknown sparsity strategy {strategy!r}; available: {sorted(STRATEGIES)} "
                                  "(add your own with onnxprune.register_strategy)")
    found = STRATEGIES[strategy.lower()]
    return found() if isinstance(found, type) else found


# --------------------------------------------------------------------------- mask helpers

def count_for(fraction: float, size: int) -> int:
    """round(fraction * size), halves rounded up."""
    return min(size, int(math.floor(fraction * size + 0.5)))


def fraction_mask(importance: np.ndarray, fraction: float) -> np.ndarray:
    """Keep mask zeroing exactly round(fraction * size) elements of least importance (ties: first element)."""
    importance = np.asarray(importance)
    flat = np.ones(importance.size, dtype=bool)
    order = np.argsort(importance.reshape(-1), kind="stable")
    flat[order[: count_for(fraction, importance.size)]] = False
    return flat.reshape(importance.shape)


def global_masks(importances: Mapping[str, np.ndarray], fraction: float) -> dict[str, np.ndarray]:
    """Keep masks zeroing exactly round(fraction * total) elements of least importance over all arrays.

    Ties go to the array listed first, then the first element: the order is deterministic.
    """
    names = list(importances)
    arrays = [np.asarray(importances[n], dtype=np.float64) for n in names]
    flat = np.concatenate([a.reshape(-1) for a in arrays]) if arrays else np.zeros(0)
    keep = np.ones(flat.size, dtype=bool)
    keep[np.argsort(flat, kind="stable")[: count_for(fraction, flat.size)]] = False
    out, start = {}, 0
    for name, array in zip(names, arrays):
        out[name] = keep[start : start + array.size].reshape(array.shape)
        start += array.size
    return out


def nm_skip_reason(layer: WeightLayer, m: int) -> str | None:
    """Why a layer can't take an N:M pattern (its reduction size is not a multiple of M), or None."""
    size = layer.shape[layer.reduction_axis]
    if size % m:
        return f"reduction axis {layer.reduction_axis} has {size} weights, not a multiple of M={m}"
    return None


def nm_mask(importance: np.ndarray, n: int, m: int, axis: int) -> np.ndarray:
    """Keep the n most important of every m consecutive elements along `axis` (its size a multiple of m).

    Ties: the earlier element of the group is kept.
    """
    importance = np.asarray(importance)
    moved = np.moveaxis(importance, axis, -1)
    groups = moved.reshape(moved.shape[:-1] + (moved.shape[-1] // m, m))
    order = np.argsort(-groups.astype(np.float64), axis=-1, kind="stable")
    keep = np.zeros(groups.shape, dtype=bool)
    np.put_along_axis(keep, order[..., :n], True, axis=-1)
    return np.moveaxis(keep.reshape(moved.shape), -1, axis)


def channel_mask(scores: np.ndarray, fraction: float, shape: tuple[int, ...], axis: int) -> np.ndarray:
    """Keep mask of `shape` zeroing the round(fraction * channels) channels (along `axis`) of lowest score."""
    keep = fraction_mask(np.asarray(scores).reshape(-1), fraction)
    view = [1] * len(shape)
    view[axis] = -1
    return np.broadcast_to(keep.reshape(view), shape).copy()
