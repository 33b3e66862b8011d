"""Measuring latency: micro-graphs of one layer at several kept counts, and the whole model.

How a layer's points are timed (Timer.points): sessions for up to CHUNK points and the layer at full counts
(the reference) are created, each runs WARMUP uncounted times, then all are run round-robin (interleaved, so a
drift in machine load hits every point alike) `repeats` times, chosen from the warm-up time (at least
MIN_REPEATS, more for tiny layers, up to MAX_REPEATS, aiming at TARGET_MS per point). A point's latency is
the median over its runs of the time onnxruntime's profile gives its kernels, without the layout conversions
(ReorderInput / ReorderOutput) at the micro-graph's edges, which a layer between two blocked neighbours does
not pay in a model (and without the Python call overhead, which a layer inside a model does not add either),
scaled by the reference so that chunks timed under different load agree (see points); a chunk whose reference
session ran far off the layer's other references is timed again (see relative). The whole model is
timed by the wall clock, the same way, in one session with its own inputs; and once more with onnxruntime's
profile on (Timer.nodes), which gives each of its (optimised) nodes' kernel time in context: what the part
outside the layers really costs, node by node (profile.activations).
"""
from __future__ import annotations

import json
import math
import os
import platform
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
from onnx import helper

from onnxprune import runtime
from onnxprune.errors import InvalidRequestError
from onnxprune.profile.layers import LayerSpec, WeightPool, micro_graph
from onnxprune.profile.products import ProductSpec, product_graph

if TYPE_CHECKING:
    from onnxruntime import InferenceSession

    from onnxprune.profile.chains import ChainSpec

CHUNK = 8
WARMUP = 2
MIN_REPEATS = 10
MAX_REPEATS = 40
TARGET_MS = 15.0
OUTLIER = 1.2  # a chunk whose reference ran this far off the layer's other references is timed again (once)
MODEL_MIN_REPEATS = 10
MODEL_MAX_REPEATS = 200  # a whole model is timed for about MODEL_TARGET_MS: small models many rounds
MODEL_TARGET_MS = 1500.0


# --------------------------------------------------------------------------- the runtime

def check_request(provider: str, threads: int | None, batch: int) -> None:
    """InvalidRequestError for an unknown provider, a thread count or batch below 1."""
    available = runtime.available_providers()
    if provider not in available:
        raise InvalidRequestError(f"execution provider '{provider}' is not available in this onnxruntime "
                                  f"({runtime.VERSION}); available: {', '.join(available)}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise InvalidRequestError(f"threads must be a whole number >= 1 or None (onnxruntime's default), "
                                  f"not {threads!r}")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise InvalidRequestError(f"batch must be a whole number >= 1, not {batch!r}")


def make_session(model: onnx.ModelProto | str, provider: str, threads: int | None) -> InferenceSession:
    """A session as a user's (all graph optimisations, `threads` intra-op threads, None: onnxruntime's default)
    on `provider`, opened by the runtime layer, but with idle threads sleeping instead of spinning (sessions are
    timed interleaved: a spinning pool would take the cores from the one being timed). `model`: a ModelProto or
    a file path."""
    return runtime.optimized_session(model, threads, provider=provider, spinning=False)


def environment(provider: str, threads: int | None, batch: int) -> dict[str, Any]:
    """What a measurement depends on besides the layer: provider, threads, batch, onnxruntime version, CPU."""
    return {"provider": provider, "threads": threads, "batch": int(batch), "onnxruntime": runtime.VERSION,
            "cpu": cpu_model()}


def cpu_model() -> str:
    """The CPU's 'model name' from /proc/cpuinfo, else what platform says."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


# --------------------------------------------------------------------------- timing

class _Runner:
    """One session and its feed; collects run times in ms (wall clock, or with `profiled` the kernel times from
    onnxruntime's profile, see kernel_medians)."""

    def __init__(self, session: InferenceSession, feed: dict[str, np.ndarray]) -> None:
        self.session = session
        self.feed = feed
        self.outputs = [o.name for o in session.get_outputs()]
        self.times: list[float] = []
        self.runs = 0

    def run(self, record: bool = True) -> float:
        start = time.perf_counter()
        self.session.run(self.outputs, self.feed)
        elapsed = (time.perf_counter() - start) * 1e3
        self.runs += 1
        if record:
            self.times.append(elapsed)
        return elapsed

    def kernel_median(self) -> float:
        """Median ms per recorded run spent in the session's kernels other than layout conversions, from its
        onnxruntime profile (ends the profile)."""
        path = self.session.end_profiling()
        try:
            with open(path, encoding="utf-8") as handle:
                events = json.load(handle)
        finally:
            os.remove(path)
        per_run = kernel_ms_per_run(events)
        return float(np.median(per_run[-len(self.times):])) if self.times and per_run else 0.0


def kernel_ms_per_run(events: list[dict[str, Any]]) -> list[float]:
    """Per model run of an onnxruntime profile (its chrome-trace events): ms spent in node kernels, not counting
    the layout conversions a micro-graph pays at its edges and a layer between two blocked neighbours does not:
    a run's first ReorderInput and its last ReorderOutput. Conversions inside the graph count (a factor chain
    whose inner ranks are off the runtime's block converts between its convolutions, in a model too)."""
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events
                  if e.get("cat") == "Session" and e.get("name") == "model_run")
    starts = np.array([start for start, _ in runs])
    totals = [0.0] * len(runs)
    edges: dict[tuple[int, str], tuple[float, float]] = {}  # (run, op) -> (ts, ms) of the edge conversion
    for event in events:
        if event.get("cat") != "Node" or not str(event.get("name", "")).endswith("_kernel_time"):
            continue
        k = int(np.searchsorted(starts, event["ts"], side="right")) - 1
        if k < 0 or event["ts"] > runs[k][1]:
            continue
        ms = event["dur"] / 1e3
        totals[k] += ms
        op = str(event.get("args", {}).get("op_name", ""))
        if op in ("ReorderInput", "ReorderOutput"):
            seen = edges.get((k, op))
            first = op == "ReorderInput"
            if seen is None or (event["ts"] < seen[0] if first else event["ts"] > seen[0]):
                edges[(k, op)] = (event["ts"], ms)
    for (k, _), (_, ms) in edges.items():
        totals[k] -= ms
    return totals


def node_ms_per_run(events: list[dict[str, Any]]) -> tuple[float, dict[str, float]]:
    """(ms of a model run outside its kernels, {node name in the optimised graph: median kernel ms per run}) from
    an onnxruntime profile (its chrome-trace events); the first run is left out (warm-up). The time outside the
    kernels is the least any run spent there: on a loaded machine the gaps between kernels stretch with the
    load, the runtime's own work between them does not."""
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events
                  if e.get("cat") == "Session" and e.get("name") == "model_run")
    if len(runs) < 2:
        return 0.0, {}
    starts = np.array([start for start, _ in runs])
    times: dict[str, list[float]] = {}
    for event in events:
        name = str(event.get("name", ""))
        if event.get("cat") != "Node" or not name.endswith("_kernel_time"):
            continue
        k = int(np.searchsorted(starts, event["ts"], side="right")) - 1
        if k >= 1 and event["ts"] <= runs[k][1]:
            per_run = times.setdefault(name[:-len("_kernel_time")], [0.0] * len(runs))
            per_run[k] += event["dur"] / 1e3
    in_kernels = np.sum([per_run for per_run in times.values()], axis=0) if times else np.zeros(len(runs))
    outside = min((end - start) / 1e3 - in_kernels[k] for k, (start, end) in enumerate(runs) if k >= 1)
    return max(float(outside), 0.0), {name: float(np.median(per_run[1:])) for name, per_run in sorted(times.items())}


def _interleaved(runners: Sequence[_Runner], warmup: int, min_repeats: int, target_ms: float,
                 max_repeats: int = MAX_REPEATS) -> list[float]:
    """Median ms of each runner after warm-up and interleaved repeats (more repeats for faster runners)."""
    first = [min(r.run(record=False) for _ in range(max(warmup, 1))) for r in runners]
    fastest = max(min(first), 1e-3)
    repeats = int(min(max_repeats, max(min_repeats, math.ceil(target_ms / fastest))))
    for _ in range(repeats):
        for runner in runners:
            runner.run()
    return [float(np.median(r.times)) for r in runners]


class Timer:
    """Real onnxruntime timings on one provider / thread count (tests swap in a fake with the same methods)."""

    def __init__(self, provider: str, threads: int | None) -> None:
        self.provider = provider
        self.threads = threads
        self.pool = WeightPool()
        self.references: dict[str, list[float]] = {}  # layer signature -> its chunks' reference ms so far

    def points(self, spec: LayerSpec, counts: Sequence[tuple[int, int]]) -> list[float]:
        """Latency in ms of the layer's micro-graph at each (kept_in, kept_out): its kernels' time, without the
        layout conversions at the micro-graph's edges (kernel_ms_per_run).

        Every chunk of points is timed interleaved with the layer at full counts (the reference); a point's value
        is its ratio to the reference in its own chunk times the reference's median over all chunks, so a change
        of machine load between chunks cancels out."""
        ratios, full = self.relative(spec, [partial(micro_graph, spec, i, o, self.pool) for i, o in counts])
        return [r * full for r in ratios]

    def product_points(self, spec: ProductSpec, counts: Sequence[int]) -> list[float]:
        """Latency in ms of a product of two activations (profile.products) at each kept count, timed as points."""
        ratios, full = self.relative(spec, [partial(product_graph, spec, k) for k in counts])
        return [r * full for r in ratios]

    def chain_points(self, chain: ChainSpec, ranks: Sequence[tuple[int, ...]]) -> list[float]:
        """Latency of the layer's factor chain at each rank tuple, as a ratio to the layer at full channels timed
        in the same chunk (profile.chains): the larger of two timings, the second in reverse order (other
        chunks, other sessions). Decomposition chooses the chains that measure fastest, so a point that one
        session timed too fast would be chosen for exactly that error: on a VGG-like model such picks predicted
        1.44x where the model measured 1.19x."""
        from onnxprune.profile.chains import chain_graph

        graphs = [partial(chain_graph, chain, r, self.pool) for r in ranks]
        first = self.relative(chain.layer, graphs)[0]
        second = self.relative(chain.layer, graphs[::-1])[0][::-1]
        return [max(a, b) for a, b in zip(first, second)]

    def relative(self, spec: LayerSpec | ProductSpec, graphs: Sequence[Callable[[], tuple[onnx.ModelProto, Any]]]
                 ) -> tuple[list[float], float]:
        """(each graph's median kernel time / the layer's at full counts in its chunk, the layer's median ms over
        all chunks); `graphs` build (model, shape of input 'x', or {input: shape}), timed in chunks of CHUNK
        beside the layer (a product: at its full count) with a fresh reference session per chunk (a session's
        profile ends when it is read).

        A session can run slow (or fast) for its whole life; when it is a chunk's reference, every ratio of the
        chunk is off by as much. So a chunk whose reference ran more than OUTLIER off the median of the layer's
        other references (this call's other chunks and earlier calls for the same signature) is timed once more
        with fresh sessions, and the timing whose reference is nearer that median is kept."""
        seen = self.references.setdefault(spec.signature(), [])
        chunks = [graphs[start:start + CHUNK] for start in range(0, len(graphs), CHUNK)]
        timed = [self.time_chunk(spec, chunk) for chunk in chunks]
        overall = float(np.median(seen + [reference for reference, _ in timed]))
        for i in sorted(range(len(chunks)), key=lambda i: -abs(math.log(timed[i][0] / overall))):  # farthest first
            others = seen + [reference for j, (reference, _) in enumerate(timed) if j != i]
            if not others:
                continue
            usual = float(np.median(others))
            distance = lambda reference: abs(math.log(reference / usual))  # noqa: E731
            if distance(timed[i][0]) > math.log(OUTLIER):
                again = self.time_chunk(spec, chunks[i])
                if distance(again[0]) < distance(timed[i][0]):
                    timed[i] = again
        seen.extend(reference for reference, _ in timed)
        return [r for _, ratios in timed for r in ratios], float(np.median([reference for reference, _ in timed]))

    def time_chunk(self, spec: LayerSpec | ProductSpec, graphs: Sequence[Callable[[], tuple[onnx.ModelProto, Any]]]
                   ) -> tuple[float, list[float]]:
        """(the layer's median kernel ms at full counts, each graph's median kernel ms over it), all timed
        interleaved in fresh sessions."""
        rng = np.random.default_rng(0)
        with tempfile.TemporaryDirectory(prefix="onnxprune-profile-") as folder:
            made = iter(range(1 << 30))

            def runner(build: Callable[[], tuple[onnx.ModelProto, Any]]) -> _Runner:
                model, shapes = build()
                dtype = helper.tensor_dtype_to_np_dtype(spec.dtype)
                feed = {name: rng.standard_normal(shape, dtype=np.float32).astype(dtype)
                        for name, shape in (shapes.items() if isinstance(shapes, dict) else [("x", shapes)])}
                prefix = os.path.join(folder, f"session{next(made)}")  # one profile file per session
                return _Runner(runtime.optimized_session(model, self.threads, provider=self.provider,
                                                         profile_prefix=prefix, spinning=False), feed)

            reference = partial(product_graph, spec, spec.size) if isinstance(spec, ProductSpec) else \
                partial(micro_graph, spec, spec.in_channels, spec.out_channels, self.pool)
            runners = [runner(reference)] + [runner(g) for g in graphs]
            _interleaved(runners, WARMUP, MIN_REPEATS, TARGET_MS)
            medians = [max(r.kernel_median(), 1e-6) for r in runners]
        return medians[0], [m / medians[0] for m in medians[1:]]

    def model(self, model: onnx.ModelProto | str, feed: dict[str, np.ndarray]) -> float:
        """Median ms of the whole model on `feed` (wall clock)."""
        runner = _Runner(make_session(model, self.provider, self.threads), feed)
        return _interleaved([runner], 3, MODEL_MIN_REPEATS, MODEL_TARGET_MS, MODEL_MAX_REPEATS)[0]

    def nodes(self, model: onnx.ModelProto | str, feed: dict[str, np.ndarray]) -> tuple[float, dict[str, float]]:
        """(ms of a run outside its kernels, {node name in onnxruntime's optimised graph: median kernel ms per
        run}) of the whole model on `feed` (node_ms_per_run), from MODEL_MIN_REPEATS profiled runs after a
        warm-up."""
        with tempfile.TemporaryDirectory(prefix="onnxprune-profile-") as folder:
            session = runtime.optimized_session(model, self.threads, provider=self.provider,
                                                profile_prefix=os.path.join(folder, "model"), spinning=False)
            runner = _Runner(session, feed)
            for _ in range(1 + MODEL_MIN_REPEATS):
                runner.run()
            path = session.end_profiling()
            with open(path, encoding="utf-8") as handle:
                return node_ms_per_run(json.load(handle))


MODEL_BLOCKS = 5  # a ModelMeter measurement: blocks of fresh sessions (see timed_in_blocks)


class ModelMeter:
    """Measures models against one reference model (the original), on one provider / thread count:
    `measure(candidate)` times both in MODEL_BLOCKS blocks of fresh sessions (timed_in_blocks)."""

    def __init__(self, reference: onnx.ModelProto | str, feed: dict[str, np.ndarray], provider: str,
                 threads: int | None, blocks: int = MODEL_BLOCKS) -> None:
        self.reference, self.feed = reference, feed
        self.provider, self.threads, self.blocks = provider, threads, blocks

    def measure(self, candidate: onnx.ModelProto | str) -> tuple[float, float]:
        """(reference ms, candidate ms): the reference's median, and the candidate's as that times the median
        over blocks of its paired ratio to the reference."""
        reference, measured = timed_in_blocks([self.reference, candidate], self.feed, self.provider, self.threads,
                                              self.blocks)
        return reference, measured


def timed_in_blocks(models: Sequence[onnx.ModelProto | str], feed: dict[str, np.ndarray], provider: str,
                    threads: int | None, blocks: int, rounds: int | None = None, warmup: int = 3) -> list[float]:
    """Ms of each model on `feed`: models[0]'s median run, every other model's as that times the median over
    `blocks` blocks of its paired_ratio to models[0] in the block. Each block opens fresh sessions (creation order
    rotated from block to block) and runs them round-robin, `warmup` uncounted rounds then `rounds` counted ones
    (None: enough for about MODEL_TARGET_MS over all blocks, MODEL_MIN_REPEATS..MODEL_MAX_REPEATS in all).

    Why blocks: one onnxruntime session of a model can run several percent faster or slower than another session
    of the same model for its whole life (two sessions of one ViT-B/16-like model measured 0.92-1.09x each other,
    block by block), which no number of rounds with the same two sessions averages out."""
    blocks = max(1, int(blocks))
    base: list[float] = []
    ratios: list[list[float]] = [[] for _ in models[1:]]
    for block in range(blocks):
        order = list(range(len(models)))
        order = order[block % len(models):] + order[:block % len(models)]
        opened = {i: _Runner(make_session(models[i], provider, threads), feed) for i in order}
        runners = [opened[i] for i in range(len(models))]
        if rounds is None:
            _interleaved(runners, warmup, -(-MODEL_MIN_REPEATS // blocks), MODEL_TARGET_MS / blocks,
                         -(-MODEL_MAX_REPEATS // blocks))
        else:
            for k in range(warmup + rounds):
                for runner in runners:
                    runner.run(record=k >= warmup)
        base += runners[0].times
        for i, runner in enumerate(runners[1:]):
            ratios[i].append(paired_ratio(runner.times, runners[0].times))
    reference = float(np.median(base))
    return [reference] + [reference * float(np.median(r)) for r in ratios]


def paired_ratio(times: Sequence[float], reference: Sequence[float]) -> float:
    """The median over interleaved rounds of a run's time over the reference's run in the same round: on a
    loaded machine the load changes from round to round, and a pair of runs side by side shares it, where the
    ratio of the two medians mixes rounds of different load."""
    return float(np.median(np.asarray(times, float) / np.asarray(reference, float)))


def model_source(model: Any, proto: onnx.ModelProto) -> onnx.ModelProto | str:
    """What to open a session on: the user's file when given a path (external data resolves beside it)."""
    return os.fspath(model) if isinstance(model, (str, os.PathLike)) else proto
