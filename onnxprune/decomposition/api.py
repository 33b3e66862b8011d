"""`decompose`: replace layers by low-rank factor chains (Tucker-2, CP, SVD)."""
from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from dataclasses import replace

import numpy as np
import onnx
from onnx import helper

from onnxprune import ir
from onnxprune.decomposition import factorize
from onnxprune.decomposition.candidates import (DecomposableLayer, constant_tensors, decomposable_layers,
                                                normalise_method)
from onnxprune.decomposition.chains import Chain, build, encoded_kernel
from onnxprune.decomposition.cost import chain_cost, layer_cost
from onnxprune.decomposition.latency import LatencyModel, latency_request, target_ranks
from onnxprune.decomposition.oracle import verify_decomposition
from onnxprune.decomposition.ranks import RankPolicy
from onnxprune.decomposition.results import DecompositionResult, LayerDecomposition
from onnxprune.errors import InvalidRequestError, UnsupportedError, VerificationError
from onnxprune.executor import uses_executor
from onnxprune.graph import NameSource
from onnxprune.layout import weight_layout
from onnxprune.progress import track
from onnxprune.rebuild import rebuild

@uses_executor
def decompose(model, method: str = "tucker", *, ranks: Mapping[str, object] | None = None,
              rank_ratio: float | None = None, recommendation: str | None = None, calibration_ratio: float = 0.0,
              energy: float | None = None, layers: Iterable[str] | None = None, force: bool = False,
              verify: bool = False, seed: int = 0, rank_step: int | None = None, calibration=None,
              reconstruct: bool = False, ridge: float | None = None, cost=None, target_latency: float | None = None,
              threads: int | None = None) -> DecompositionResult:
    """Replace layers by factor chains; exactly one of ranks / rank_ratio / recommendation='vbmf' / energy /
    target_latency.

    With `ranks`, only the layers named there are decomposed; `layers` restricts the layers considered.
    `rank_step` rounds ranks UP to a multiple of it, clipped to full rank (ranks.py): by default 16
    (onnxruntime's NCHWc channel block on AVX-512) for computed ranks and no rounding for explicit `ranks`;
    1 turns it off. A chain costing more MACs than its layer is skipped unless `force` (fewer MACs do not
    guarantee lower latency: see benchmarks/README.md). `verify` runs the reconstruction oracle and raises
    VerificationError on failure. The input model is never changed (a model loaded here from a path, without
    verify or reconstruct, becomes the result in place: no second copy of the weights).
    reconstruct: re-fit the last factor of every chain (and its bias) on `calibration` so the chain's output
    matches the original layer's on that data (ridge least squares, chains in topological order; `ridge`
    relative to the mean diagonal of X^T X, default onnxprune.reconstruction.DEFAULT_RIDGE). `verify` checks
    the chains BEFORE the re-fit (the oracle is about the factorisation); `result.reconstruction` reports
    each chain's calibration error before and after.

    Against measured latency (decomposition/latency.py): `cost` is a cost model with measured chains of this
    method (op.profile(model, decomposition=method)); `target_latency` (in (0, 1]) picks the ranks per layer so
    that the predicted latency is at most that fraction of the measured original, losing the least
    reconstruction accuracy per ms saved (the model is profiled, with `threads`, when no cost is given). With a
    cost model, a chain that does not measure faster than its layer is skipped unless `force` (instead of the
    MACs rule), computed ranks are not rounded to rank_step (unless given) but snapped to the largest ranks of
    the same latency step, each record carries latency_before / latency_after and `result.latency` the
    whole-model prediction.
    """
    if reconstruct and calibration is None:
        raise InvalidRequestError("reconstruct=True needs calibration data: pass calibration=... (a dict of input "
                                  "arrays, an array for a single-input model, an iterable of either, or a path)")
    source = ir.load_model(model)
    own = not isinstance(model, onnx.ModelProto) and not (verify or reconstruct)  # ours to change
    method = normalise_method(method)
    if target_latency is not None:
        _check_target_alone(ranks, rank_ratio, recommendation, calibration_ratio, energy, rank_step)
    latency = latency_request(source, method, cost, target_latency, threads)
    if target_latency is None:
        step = rank_step if rank_step is not None or latency is None else 1  # a cost model snaps instead
        policy = RankPolicy(ranks, rank_ratio, recommendation, calibration_ratio, energy, step)
    candidates = decomposable_layers(source)
    targets = _targets(source, candidates, method, ranks, layers)
    base = ir.base_dir(source)
    constants = constant_tensors(source.graph)
    namer = NameSource(source.graph)
    opset = ir.opset_version(source, default=1)
    chains: dict[int, Chain] = {}
    records = []

    def kernel_of(layer: DecomposableLayer) -> np.ndarray:
        return np.asarray(ir.tensor_array(constants[layer.weight], base), dtype=np.float64)

    picks = None
    if target_latency is not None:
        picks = target_ranks(latency, [t for t in targets if method in t.full_ranks], kernel_of, float(target_latency))
    for layer in track(targets, "decompose", unit="layer"):
        if method not in layer.full_ranks:
            records.append(_skipped(layer, method, layer.reasons[method]))
            continue
        if picks is not None and isinstance(picks[layer.name], str):
            records.append(_skipped(layer, method, picks[layer.name]))
            continue
        node = source.graph.node[layer.node_index]
        kernel = kernel_of(layer)
        if picks is not None:
            chosen = picks[layer.name]
        else:
            chosen = policy.choose(layer.name, method, layer.full_ranks[method], kernel)
            if latency is not None and ranks is None:
                chosen = latency.snap(layer.name, chosen)
        record, chain = _decompose_layer(layer, node, method, chosen, kernel, constants[layer.weight].data_type,
                                         force, seed, namer, opset, 1 if picks is not None else policy.step, latency)
        records.append(record)
        if chain is not None:
            chains[layer.node_index] = chain
    summary = None if latency is None else latency.summary(records, target_latency)
    result = DecompositionResult(_assemble(source, chains, own), records, method, latency=summary)
    if verify:
        report = verify_decomposition(source, result)
        if not report.ok:
            raise VerificationError(f"decomposition failed the reconstruction oracle:\n{report}")
    if reconstruct:
        from onnxprune.reconstruction import DEFAULT_RIDGE, reconstruct_chains

        last = [record.nodes[-1] for record in records if record.decomposed and record.nodes]
        fitted = reconstruct_chains(source, result.model, last, calibration,
                                    ridge=DEFAULT_RIDGE if ridge is None else ridge)
        result = replace(result, reconstruction=fitted)
    return result


def _check_target_alone(ranks, rank_ratio, recommendation, calibration_ratio, energy, rank_step) -> None:
    """target_latency= chooses the ranks: no other rank selection (or rank_step) with it."""
    given = [n for n, v in (("ranks", ranks), ("rank_ratio", rank_ratio), ("recommendation", recommendation),
                            ("energy", energy), ("rank_step", rank_step)) if v is not None]
    if calibration_ratio:
        given.append("calibration_ratio")
    if given:
        raise InvalidRequestError(f"target_latency= chooses the ranks from the measured cost model; do not also "
                                  f"give {', '.join(n + '=' for n in given)}")


def _targets(model, candidates, method, ranks, layers) -> list[DecomposableLayer]:
    by_name = {c.name: c for c in candidates}
    requested = list(ranks) if ranks is not None else None
    if layers is not None:
        allowed = list(layers)
        _check_names(model, by_name, allowed, method)
        requested = allowed if requested is None else [n for n in requested if n in set(allowed)]
    if requested is None:
        return candidates
    _check_names(model, by_name, requested, method)
    return [by_name[n] for n in dict.fromkeys(requested)]


def _check_names(model, by_name, names, method) -> None:
    node_names = {n.name for n in model.graph.node} | {n.output[0] for n in model.graph.node if n.output}
    for name in names:
        if name not in node_names:
            raise InvalidRequestError(f"unknown layer '{name}': no node of that name "
                                      "(onnxprune inspect lists the decomposable layers)")
        layer = by_name.get(name)
        if layer is None:
            raise UnsupportedError(f"layer '{name}' is not a Conv, Gemm or MatMul with a constant weight; "
                                   "it cannot be decomposed")
        if method not in layer.full_ranks:
            raise UnsupportedError(f"layer '{name}' ({layer.op_type}) cannot be decomposed by {method}: "
                                   f"{layer.reasons[method]}")


def _skipped(layer: DecomposableLayer, method: str, reason: str, ranks=None, costs=(None,) * 4,
             latencies=(None,) * 2):
    full = layer.full_ranks.get(method)
    return LayerDecomposition(layer.name, layer.op_type, method, ranks, full, None, *costs, skipped=reason,
                              latency_before=latencies[0], latency_after=latencies[1])


def _decompose_layer(layer, node, method, ranks, kernel, data_type, force, seed, namer, opset, step=1,
                     latency: LatencyModel | None = None):
    """(record, chain or None) for one layer at the chosen ranks. With a latency model the chain must measure
    faster than the layer (else the MACs must not grow), unless `force`."""
    g = layer.geometry
    params_before, macs_before = layer_cost(g)
    params_after, macs_after = chain_cost(g, method, ranks)
    costs = (params_before, params_after, macs_before, macs_after)
    latencies = (latency.pair(layer.name, ranks) if latency is not None else None) or (None, None)
    rounded = f" (rounded up to a multiple of rank_step={step})" if step > 1 else ""
    reason = None
    if latency is not None and latencies[0] is None:
        reason = f"{latency.reason(layer.name)}; pass force=True to decompose it unmeasured"
    elif latency is not None and latencies[1] >= latencies[0]:
        reason = (f"chain at ranks {ranks}{rounded} measures {latencies[1]:.4g} ms, not faster than the layer's "
                  f"{latencies[0]:.4g} ms (cost model); lower the ranks or pass force=True")
    elif latency is None and macs_after > macs_before:
        reason = (f"chain at ranks {ranks}{rounded} costs {macs_after} MACs, more than the layer's {macs_before}; "
                  "lower the ranks or pass force=True")
    if reason is not None and not force:
        return _skipped(layer, method, reason, ranks, costs, latencies), None
    try:
        factors = _factors(method, node, kernel, ranks, seed)
    except factorize.DegenerateFit as exc:
        warnings.warn(f"layer '{layer.name}': {exc}; left as it was", RuntimeWarning, stacklevel=3)
        return _skipped(layer, method, f"CP fit degenerated: {exc}", ranks, costs), None
    dtype = helper.tensor_dtype_to_np_dtype(data_type)
    chain = build(method, node, layer.name, factors, dtype, namer, opset)
    stored = [np.asarray(f, dtype=dtype) for f in factors]
    error = float(np.linalg.norm(kernel - encoded_kernel(method, node, stored)) / (np.linalg.norm(kernel) or 1.0))
    record = LayerDecomposition(layer.name, layer.op_type, method, tuple(ranks), layer.full_ranks[method], error,
                                *costs, nodes=chain.node_names, factors=chain.factor_names,
                                latency_before=latencies[0], latency_after=latencies[1])
    return record, chain


def _factors(method: str, node: onnx.NodeProto, kernel: np.ndarray, ranks, seed: int) -> list[np.ndarray]:
    """Chain weights in ONNX layouts (see chains.py), float64."""
    if method == "tucker":
        t = factorize.tucker2(kernel, ranks[0], ranks[1], seed)
        ones = (1,) * (kernel.ndim - 2)
        return [t.first.reshape(*t.first.shape, *ones), t.core, t.last.reshape(*t.last.shape, *ones)]
    if method == "cp":
        c = factorize.cp(kernel, ranks[0], seed)
        n = kernel.ndim - 2
        ones = (1,) * n
        spatial = [f.reshape(f.shape[0], 1, *(f.shape[1] if j == axis else 1 for j in range(n)))
                   for axis, f in enumerate(c.spatial)]
        return [c.first.reshape(*c.first.shape, *ones), *spatial, c.last.reshape(*c.last.shape, *ones)]
    if node.op_type == "Conv":  # y = W x with W (C_out, C_in): x^T W^T, so factor W^T (C_in, C_out)
        a, b = factorize.svd(kernel.reshape(kernel.shape[:2]).T, ranks[0])
        ones = (1,) * (kernel.ndim - 2)
        return [a.T.reshape(*a.T.shape, *ones), b.T.reshape(*b.T.shape, *ones)]
    if weight_layout(node, 2).in_axis == 1:  # Gemm with transB: B is (out, in)
        kernel = kernel.T
    return list(factorize.svd(kernel, ranks[0]))


def _assemble(source: onnx.ModelProto, chains: dict[int, Chain], own: bool) -> onnx.ModelProto:
    """The result model: each replaced node swapped for its chain, weights no longer read dropped."""
    nodes = []
    for index, node in enumerate(source.graph.node):
        nodes.extend(chains[index].nodes if index in chains else [node])
    added = {t.name: t for index in sorted(chains) for t in chains[index].initializers}
    return rebuild(source, nodes, added=added, own=own, keep_value_info=True)
