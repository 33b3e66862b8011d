"""The cost model: measured onnxruntime latency of every prunable layer as a function of its kept channels.

`op.profile(model)` analyses the model, describes each Conv / ConvTranspose / Gemm / MatMul-with-constant-weight
layer by what sets its cost (layers.LayerSpec: identical signatures are measured once), measures each new
signature's micro-graph on a grid of kept counts (curves.grid_points, timed by timing.Timer) unless the on-disk
cache has it (cache.LatencyCache), measures the whole model once (cached by graph fingerprint), spreads the
latency outside the layers over the activation tensors (activations), with `decomposition=` measures the factor
chains of the decomposable layers against their ranks (chains), and returns a LatencyCostModel (costmodel).
"""
from __future__ import annotations

from typing import Any, TextIO

from onnxprune.coupling import analyze
from onnxprune.executor import resolve
from onnxprune.ir import load_model
from onnxprune.plan import fingerprint
from onnxprune.progress import Bar
from onnxprune.profile.activations import activation_terms, in_context
from onnxprune.profile.cache import LatencyCache
from onnxprune.profile.chains import measure_chains, methods_asked
from onnxprune.cost import CostModel
from onnxprune.profile.costmodel import LatencyCostModel, LayerInfo, load_cost
from onnxprune.profile.curves import LayerCurve, axis_grid, grid_points, off_trend
from onnxprune.profile.layers import LayerSpec, layer_specs
from onnxprune.profile.products import ProductSpec
from onnxprune.profile.timing import Timer, check_request, environment, model_source

__all__ = ["CostModel", "LatencyCostModel", "LayerSpec", "load_cost", "profile"]


def profile(model: Any, *, provider: str = "CPUExecutionProvider", threads: int | None = None, batch: int = 1,
            cache: Any = None, decomposition: Any = None, timer: Any = None,
            stream: TextIO | None = None, executor: Any = None) -> LatencyCostModel:
    """Measured latency cost model of `model` (a ModelProto or a path) on `provider` with `threads` intra-op
    threads (None: onnxruntime's default, like a user's session) at batch size `batch` (symbolic dims).

    cache: None (default folder, $XDG_CACHE_HOME/onnxprune), False (measure everything) or a folder.
    decomposition: also measure the factor chains of the decomposable layers (profile.chains) by these methods:
    a method name ("tucker", "cp", "svd"), a list of them, or True (every method); None: no chains.
    timer: what measures (default timing.Timer; tests pass a fake with `points(spec, counts)`,
    `chain_points(chain_spec, ranks)` and `model(source, feed)`). stream: where the progress bar goes (default
    stderr, shown on a terminal only). executor: where the layer signatures are timed: None (this process), "ray"
    (one Ray task per signature; on a shared machine, concurrent tasks slow each other: a cluster of separate
    machines, or one worker per machine, gives timings like a user's); see onnxprune.executor.
    """
    check_request(provider, threads, batch)
    methods = methods_asked(decomposition)
    proto = load_model(model)
    env = environment(provider, threads, batch)
    store = LatencyCache.open(cache, env)
    timer = timer or Timer(provider, threads)
    analysis = analyze(proto)
    specs, skipped = layer_specs(analysis, batch)
    unique: dict[str, LayerSpec] = {}
    for spec in specs:
        unique.setdefault(spec.signature(), spec)
    todo = [s for s in unique if s not in store.layers]
    try:
        with Bar("profiling layers", len(todo), unit="layer", stream=stream) as bar:
            timed = resolve(executor).map(time_layer, timer, [unique[s] for s in todo],
                                          names=lambda k, spec: f"profile of layer {spec.name} ({spec.op_type})",
                                          on_done=lambda k, _: bar.update())
        for signature, (counts, times) in zip(todo, timed):
            store.put_layer(signature, [[i, o, ms] for (i, o), ms in zip(counts, times)])
        key = fingerprint(proto)
        from onnxprune.workflows.bench import bench_inputs

        if key not in store.totals:
            store.put_total(key, timer.model(model_source(model, proto), bench_inputs(proto, batch)))
        if key not in store.nodes and hasattr(timer, "nodes"):
            store.put_nodes(key, *timer.nodes(model_source(model, proto), bench_inputs(proto, batch)))
    finally:
        store.save()
    curves = {s: LayerCurve(spec.in_channels, spec.out_channels, spec.tied,
                            {(int(i), int(o)): ms for i, o, ms in store.layers[s]}) for s, spec in unique.items()}
    modelled = [*(s.name for s in specs), *skipped]
    layer_sum = sum(curves[s.signature()].full_ms for s in specs)
    outside_ms, node_ms = store.nodes.get(key) or (0.0, {})
    split = in_context(analysis, modelled, outside_ms, node_ms, store.totals[key], layer_sum, batch)
    scale = split.scale if split is not None else 1.0
    products = {}
    if split is not None and split.products and hasattr(timer, "product_points"):
        try:
            products = measure_products(split.products, store, timer, stream)
        finally:
            store.save()
    chains = None
    if methods:
        try:
            layer_ms = {spec.name: scale * curves[spec.signature()].full_ms for spec in specs}
            chains = measure_chains(proto, specs, methods, store, timer, layer_ms,
                                    split.layers if split is not None else None, stream)
        finally:
            store.save()
    cost = LatencyCostModel(
        total=store.totals[key], layers={s.name: (s.in_channels, s.out_channels) for s in specs},
        info={s.name: LayerInfo(s.op_type, s.tied, s.signature()) for s in specs}, curves=curves,
        fingerprint=key, environment=env, skipped=skipped, chains=chains, scale=scale, products=products)
    if split is not None:
        cost.tensors = split.products_as_linear(t for t in split.products if t not in products)
    else:
        cost.tensors = activation_terms(analysis, modelled, cost.total - sum(cost.layer_latencies().values()), batch)
    return cost


def measure_products(found: dict[str, tuple[ProductSpec, float]], store: LatencyCache, timer: Any,
                     stream: TextIO | None) -> dict[str, tuple[float, list[tuple[int, float]]]]:
    """{tensor: (the product's ms in the model, its measured (kept count, ms) points)} for the products of two
    activations found by in_context; each signature is measured once, on its axis's grid, and cached."""
    unique = {spec.signature(): spec for spec, _ in found.values()}
    todo = [s for s in unique if s not in store.layers]
    with Bar("profiling attention products", len(todo), unit="product", stream=stream) as bar:
        for signature in todo:
            counts = axis_grid(unique[signature].size)
            store.put_layer(signature, [[1, c, ms] for c, ms in zip(counts, timer.product_points(unique[signature],
                                                                                                counts))])
            bar.update()
    return {tensor: (ms, [(int(c), float(t)) for _, c, t in store.layers[spec.signature()]])
            for tensor, (spec, ms) in sorted(found.items())}


def time_layer(timer: Any, spec: LayerSpec) -> tuple[list[tuple[int, int]], list[float]]:
    """The layer's grid of kept counts and the latency measured at each: the points off their neighbours' trend
    (curves.off_trend) are timed a second time in other sessions, and the timing nearer the trend is kept (a
    real step of the runtime's staircase measures the same again; a session that ran fast or slow does not)."""
    counts = grid_points(spec)
    times = timer.points(spec, counts)
    suspects = off_trend(spec, counts, times)
    if suspects:
        again = timer.points(spec, [counts[k] for k in suspects])
        for (k, expected), ms in zip(suspects.items(), again):
            times[k] = min(times[k], ms, key=lambda value: abs(value - expected))
    return counts, times
