"""`sparsify`: fine-grained, channel and N:M sparsity as masks applied to Conv / Gemm / MatMul weights."""
from __future__ import annotations

import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from onnxprune import calibration as calib
from onnxprune import ir
from onnxprune.executor import uses_executor
from onnxprune.graph import copy_fields_except
from onnxprune.errors import InvalidRequestError, VerificationError
from onnxprune.sparsity import storage as store
from onnxprune.sparsity.base import Context, Strategy, strategy_for
from onnxprune.sparsity.layers import FLOAT_TYPES, WeightLayer, find_layers, load_values, select
from onnxprune.sparsity.report import LayerReport, SparsityReport
from onnxprune.stats import node_macs

STORAGES = ("dense", "sparse", "bitmask")


@dataclass
class SparsifyResult:
    model: onnx.ModelProto  # the sparsified model
    report: SparsityReport
    masks: dict[str, np.ndarray]  # weight initializer name -> keep mask (True = kept), participating layers only
    reference: onnx.ModelProto  # the input model (for save_model(reference=...))


@uses_executor
def sparsify(model: ir.ModelLike, strategy: str | Strategy | type[Strategy] = "global_magnitude",
             sparsity: float | None = None, *, compression: float | None = None, n: int = 2, m: int = 4,
             pattern: str | None = None, storage: str = "dense", exclude: list[str] | str | None = None,
             exclude_first: bool = False, exclude_classifier: bool = False, calibration: Any = None,
             gradients: Mapping[str, np.ndarray] | None = None, seed: int = 0,
             verify: bool = False) -> SparsifyResult:
    """Zero weights of Conv / Gemm / MatMul layers by `strategy`; the input model is never changed.

    sparsity: fraction in [0, 1) of the participating weights to zero (global strategies: over all of them;
        layerwise: in every layer; channel strategies: of every layer's output channels), exact to one weight
        (channel). compression: instead, ShrinkBench's overall ratio size / nonzero size over every float
        parameter (> 1). nm takes neither: n and m (1 <= n <= m) fix it. pattern: "N:M" (e.g. "2:4"), the same
        as n=N, m=M; wanda and sparsegpt take it instead of sparsity to apply N:M.
    exclude: node or initializer names, or fnmatch patterns; exclude_first / exclude_classifier leave the first /
        last weight layer (graph order) dense, as ShrinkBench does.
    calibration: data for the activation strategies, wanda and sparsegpt (see onnxprune.calibration);
        gradients: {initializer name: dL/dw} for the magnitude-gradient strategies. storage: "dense" (zeros in
        place) or "sparse" (sparse Constants where smaller) or "bitmask" (packed mask + nonzero values, rebuilt
        by standard ops; smaller at any useful sparsity); see onnxprune.sparsity.storage. verify: with sparse /
        bitmask storage, check that onnxruntime gives exactly the outputs of the dense masked model
        (VerificationError otherwise).
    """
    model = ir.load_model(model)
    chosen = strategy_for(strategy)
    label = _label(strategy, chosen)
    if pattern is not None:
        n, m = _parse_pattern(pattern)
    n, m, seed = _check_int("n", n, 1), _check_int("m", m, 1), _check_int("seed", seed, 0)
    if n > m:
        raise InvalidRequestError(f"N:M pattern needs n <= m, got n={n}, m={m}")
    if storage not in STORAGES:
        raise InvalidRequestError(f"storage must be one of {list(STORAGES)}, not {storage!r}")
    if gradients is not None and not isinstance(gradients, Mapping):
        raise InvalidRequestError("gradients must be a dict {initializer name: gradient array}")
    if chosen.needs_gradients and not gradients:
        raise InvalidRequestError(f"strategy '{label}' needs gradients={{initializer name: gradient array}} "
                                  "(CLI: --gradients FILE.npz)")
    if chosen.needs_calibration and calibration is None:
        raise InvalidRequestError(f"strategy '{label}' needs calibration data: pass calibration=... (a dict of input "
                                  "arrays, an array for a single-input model, an iterable of either, or a .npz/.npy "
                                  "path; CLI: --calibration FILE.npz)")

    all_layers = find_layers(model)
    layers, excluded = select(all_layers, exclude, exclude_first, exclude_classifier)
    float_sizes = {t.name: int(np.prod(t.dims, dtype=np.int64)) for t in model.graph.initializer
                   if t.data_type in FLOAT_TYPES}
    _check_gradients(gradients, model, label)
    fraction = _fraction(chosen, label, sparsity, compression, pattern, sum(float_sizes.values()),
                         sum(layer.size for layer in layers))
    load_values(model, all_layers)
    ctx = Context(sparsity=fraction, n=n, m=m, seed=seed, gradients=gradients, strategy=label)
    skipped = {layer.weight: reason for layer in layers if (reason := chosen.skip_reason(layer, ctx))}
    layers = [layer for layer in layers if layer.weight not in skipped]
    if chosen.needs_calibration or calibration is not None:
        requests = chosen.statistics(layers)
        if requests:
            calib.require(calibration, label)
            ctx.stats = calib.collect(model, calibration, requests)
    masks, refits = chosen.weights(layers, ctx)
    masks = _checked_masks(masks, layers, label)
    by_weight = {layer.weight: layer for layer in layers}
    refits = _checked_values(refits, masks, by_weight, label)
    new_values = {name: np.where(mask, refits.get(name, by_weight[name].value), 0).astype(by_weight[name].value.dtype)
                  for name, mask in masks.items() if not mask.all() or name in refits}
    if chosen.zero_bias:
        new_values.update(_zeroed_biases(model, layers, masks))
    out = _with_values(model, new_values)
    dense = out
    decisions = {}
    if storage != "dense":
        out = onnx.ModelProto()
        out.CopyFrom(dense)
        rewrite = store.to_sparse if storage == "sparse" else store.to_bitmask
        decisions = rewrite(out, {layer.weight: new_values[layer.weight] for layer in layers
                                  if layer.weight in new_values})
    if verify and out is not dense:
        _verify(dense, out)
    report = _report(model, out, all_layers, layers, excluded, skipped, new_values, decisions, label, fraction,
                     n, m, storage, float_sizes)
    return SparsifyResult(model=out, report=report, masks=masks, reference=model)


# --------------------------------------------------------------------------- checks

def _label(strategy, chosen: Strategy) -> str:
    return strategy.lower() if isinstance(strategy, str) else (chosen.name or type(chosen).__name__)


def _check_int(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise InvalidRequestError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def _check_fraction(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < 1:
        raise InvalidRequestError(f"{name} must be a number in [0, 1), got {value!r}")
    return float(value)


def _parse_pattern(pattern) -> tuple[int, int]:
    parts = pattern.split(":") if isinstance(pattern, str) else []
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise InvalidRequestError(f"pattern must be 'N:M' with integers N <= M (e.g. '2:4'), not {pattern!r}")
    return int(parts[0]), int(parts[1])


def _fraction(chosen: Strategy, label: str, sparsity, compression, pattern, total: int,
              participating: int) -> float | None:
    if sparsity is not None and compression is not None:
        raise InvalidRequestError("pass sparsity= or compression=, not both")
    if pattern is not None and chosen.uses_sparsity:
        if not chosen.takes_pattern:
            raise InvalidRequestError(f"strategy '{label}' takes no pattern; N:M patterns are for nm, wanda and "
                                      "sparsegpt (or strategies with takes_pattern)")
        if sparsity is not None or compression is not None:
            raise InvalidRequestError(f"strategy '{label}': pass sparsity= (unstructured) or pattern= (N:M), "
                                      "not both")
        return None
    if not chosen.uses_sparsity:
        if sparsity is not None or compression is not None:
            raise InvalidRequestError(f"strategy '{label}' takes no sparsity or compression: "
                                      "its pattern fixes it (nm: 1 - n/m)")
        return None
    if sparsity is None and compression is None:
        also = " or pattern='N:M'" if chosen.takes_pattern else ""
        raise InvalidRequestError(f"strategy '{label}' needs sparsity= (fraction in [0, 1)) or compression= (> 1)"
                                  + also)
    if sparsity is not None:
        return _check_fraction("sparsity", sparsity)
    if isinstance(compression, bool) or not isinstance(compression, numbers.Real) or not compression >= 1:
        raise InvalidRequestError(f"compression must be a number >= 1 (size / nonzero size), got {compression!r}")
    if participating == 0:
        raise InvalidRequestError("compression: no weight takes part (every layer excluded)")
    # ShrinkBench: the fraction of prunable weights to keep so that total / nonzero total == compression
    fixed = total - participating
    keep = (total / compression - fixed) / participating
    if keep <= 0:
        raise InvalidRequestError(f"compression {compression} is out of reach: the {fixed} parameters outside the "
                                  f"participating layers alone allow at most {total / max(fixed, 1):.3g}x")
    return _check_fraction("sparsity (from compression)", 1 - keep)


def _check_gradients(gradients, model: onnx.ModelProto, label: str) -> None:
    if not gradients:
        return
    names = {t.name for t in model.graph.initializer}
    unknown = sorted(set(gradients) - names)
    if unknown:
        raise InvalidRequestError(f"strategy '{label}': gradients for {unknown[:5]} name no initializer of the model "
                                  "(keys are initializer names)")


def _checked_masks(masks, layers: list[WeightLayer], label: str) -> dict[str, np.ndarray]:
    if not isinstance(masks, Mapping):
        raise InvalidRequestError(f"strategy '{label}' returned {type(masks).__name__}, not a dict "
                                  "{weight name: keep mask}")
    shapes = {layer.weight: layer.shape for layer in layers}
    out = {}
    for name, mask in masks.items():
        if name not in shapes:
            raise InvalidRequestError(f"strategy '{label}' returned a mask for '{name}', which is not a "
                                      f"participating weight")
        mask = np.asarray(mask)
        if mask.shape != shapes[name]:
            raise InvalidRequestError(f"strategy '{label}': mask for '{name}' has shape {list(mask.shape)}, the "
                                      f"weight {list(shapes[name])}")
        if mask.dtype != bool:
            raise InvalidRequestError(f"strategy '{label}': mask for '{name}' must be bool (True = keep), "
                                      f"not {mask.dtype}")
        out[name] = mask
    return out


def _checked_values(values, masks: dict[str, np.ndarray], by_weight: dict[str, WeightLayer],
                    label: str) -> dict[str, np.ndarray]:
    """A re-fitting strategy's new weights: known names, the weight's shape, finite; a mask comes with each."""
    if not isinstance(values, Mapping):
        raise InvalidRequestError(f"strategy '{label}' returned new values of type {type(values).__name__}, not a "
                                  "dict {weight name: array}")
    out = {}
    for name, value in values.items():
        if name not in masks:
            raise InvalidRequestError(f"strategy '{label}' returned new values for '{name}' without a mask for it")
        value = np.asarray(value)
        if value.shape != by_weight[name].shape or not np.all(np.isfinite(value)):
            raise InvalidRequestError(f"strategy '{label}': new values for '{name}' must be finite, of shape "
                                      f"{list(by_weight[name].shape)} (got {list(value.shape)})")
        out[name] = value
    return out


# --------------------------------------------------------------------------- building the model

def _zeroed_biases(model: onnx.ModelProto, layers: list[WeightLayer], masks: dict[str, np.ndarray]):
    """Channel strategies: zero the bias entry of every output channel whose weights are all zeroed."""
    inits = {t.name: t for t in model.graph.initializer}
    readers: dict[str, int] = {}
    for node in model.graph.node:
        for name in set(node.input):
            readers[name] = readers.get(name, 0) + 1
    by_name = {(node.name or f"{node.op_type}_{k}"): node for k, node in enumerate(model.graph.node)}
    out = {}
    for layer in layers:
        mask = masks.get(layer.weight)
        node = by_name[layer.name]
        if mask is None or layer.op_type not in ("Conv", "Gemm") or len(node.input) < 3 or len(layer.nodes) > 1:
            continue
        bias = inits.get(node.input[2])
        channels = layer.shape[layer.out_axis]
        if bias is None or tuple(bias.dims) != (channels,) or readers.get(bias.name) != 1:
            continue
        emptied = ~np.moveaxis(mask, layer.out_axis, 0).reshape(channels, -1).any(axis=1)
        if emptied.any():
            value = ir.tensor_array(bias, ir.base_dir(model))
            out[bias.name] = np.where(emptied, 0, value).astype(value.dtype)
    return out


def _with_values(model: onnx.ModelProto, values: dict[str, np.ndarray]) -> onnx.ModelProto:
    """Copy of the model whose initializers named in `values` hold the new arrays (others shared as they are)."""
    out = onnx.ModelProto()
    copy_fields_except(model, out, {"graph"})
    copy_fields_except(model.graph, out.graph, {"initializer"})
    for tensor in model.graph.initializer:
        if tensor.name in values:
            new = numpy_helper.from_array(values[tensor.name], tensor.name)
            new.doc_string = tensor.doc_string
            out.graph.initializer.append(new)
        else:
            out.graph.initializer.append(tensor)
    return out


def _verify(dense: onnx.ModelProto, out: onnx.ModelProto) -> None:
    from onnxprune.runtime import make_inputs, run

    inputs = make_inputs(dense)
    want, got = run(dense, inputs), run(out, inputs)
    for name in want:
        if not np.array_equal(want[name], got[name], equal_nan=True):
            raise VerificationError(f"sparse storage changed output '{name}' in onnxruntime "
                                    f"(max abs diff {np.max(np.abs(want[name] - got[name])):.3g})")


# --------------------------------------------------------------------------- report

def _report(model, out, all_layers, layers, excluded, skipped, new_values, decisions, label, fraction, n, m,
            storage, float_sizes) -> SparsityReport:
    shapes = ir.infer_shapes(model)
    macs = {}
    for k, node in enumerate(model.graph.node):
        macs[node.name or f"{node.op_type}_{k}"] = node_macs(node, shapes)
    total_macs = sum(macs.values())
    participating = {layer.weight for layer in layers}
    rows, saved_macs = [], 0
    for layer in all_layers:
        value = new_values.get(layer.weight, layer.value)
        nonzero = int(np.count_nonzero(value))
        layer_macs = sum(macs.get(name, 0) for name in layer.nodes)
        nz_macs = int(round(layer_macs * nonzero / layer.size)) if layer.size else 0
        saved_macs += layer_macs - nz_macs
        if layer.weight in participating:
            status = "sparsified"
        elif layer.weight in excluded:
            status = "excluded: " + excluded[layer.weight]
        else:
            status = "skipped: " + skipped[layer.weight]
        where = decisions.get(layer.weight, "dense")
        rows.append(LayerReport(layer.name, layer.op_type, layer.weight, status, layer.size, nonzero, layer_macs,
                                nz_macs, where))
    directory = ir.base_dir(model)
    nonzero_before = nonzero_after = 0
    for tensor in model.graph.initializer:
        if tensor.name not in float_sizes:
            continue
        before = int(np.count_nonzero(ir.tensor_array(tensor, directory)))
        nonzero_before += before
        nonzero_after += int(np.count_nonzero(new_values[tensor.name])) if tensor.name in new_values else before
    return SparsityReport(strategy=label, sparsity=fraction, n=n, m=m, storage=storage, layers=rows,
                          size=sum(float_sizes.values()), nonzero_size=nonzero_after, macs=total_macs,
                          nonzero_macs=total_macs - saved_macs, size_before=nonzero_before,
                          file_bytes_before=ir.serialized_size(model), file_bytes=ir.serialized_size(out))
