"""Measuring latency: micro-graphs of one layer at several kept counts, and the whole model.

How a layer's points are timed (Timer.points): sessions for up to CHUNK points and the layer at full counts
(the reference) are created, each runs WARMUP uncounted times, then all are run round-robin (interleaved, so a
drift in machine load hits every point alike) `repeats` times, chosen from the warm-up time (at least
MIN_REPEATS, more for tiny layers, up to MAX_REPEATS, aiming at TARGET_MS per point). A point's latency is
the median of its runs minus the median cost of running a trivial graph (the fixed Python + onnxruntime call
overhead, which the layer does not add inside a model), scaled by the reference so that chunks timed under
different load agree (see points). The whole model is timed the same way in one session with its own inputs.
"""
from __future__ import annotations

import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from onnxprune import runtime
from onnxprune.errors import InvalidRequestError
from onnxprune.profile.layers import LayerSpec, WeightPool, micro_graph

if TYPE_CHECKING:
    from onnxruntime import InferenceSession

    from onnxprune.profile.chains import ChainSpec

CHUNK = 8
WARMUP = 2
MIN_REPEATS = 10
MAX_REPEATS = 40
TARGET_MS = 15.0
MODEL_MIN_REPEATS = 10
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
    on `provider`, opened by the runtime layer. `model`: a ModelProto or a file path."""
    return runtime.optimized_session(model, threads, provider=provider)


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
    """One session and its feed; collects run times in ms."""

    def __init__(self, session: InferenceSession, feed: dict[str, np.ndarray]) -> None:
        self.session = session
        self.feed = feed
        self.outputs = [o.name for o in session.get_outputs()]
        self.times: list[float] = []

    def run(self, record: bool = True) -> float:
        start = time.perf_counter()
        self.session.run(self.outputs, self.feed)
        elapsed = (time.perf_counter() - start) * 1e3
        if record:
            self.times.append(elapsed)
        return elapsed


def _interleaved(runners: Sequence[_Runner], warmup: int, min_repeats: int, target_ms: float) -> list[float]:
    """Median ms of each runner after warm-up and interleaved repeats (more repeats for faster runners)."""
    first = [min(r.run(record=False) for _ in range(max(warmup, 1))) for r in runners]
    fastest = max(min(first), 1e-3)
    repeats = int(min(MAX_REPEATS, max(min_repeats, math.ceil(target_ms / fastest))))
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
        self._overhead: float | None = None

    def overhead(self) -> float:
        """Median ms of running a trivial graph: the call overhead subtracted from every micro-graph time."""
        if self._overhead is None:
            node = helper.make_node("Identity", ["x"], ["y"])
            graph = helper.make_graph([node], "overhead", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
            model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
            model.ir_version = 8
            runner = _Runner(make_session(model, self.provider, self.threads), {"x": np.zeros(1, np.float32)})
            self._overhead = _interleaved([runner], 20, 100, 0.0)[0]
        return self._overhead

    def points(self, spec: LayerSpec, counts: Sequence[tuple[int, int]]) -> list[float]:
        """Latency in ms of the layer's micro-graph at each (kept_in, kept_out).

        Every chunk of points is timed interleaved with the layer at full counts (the reference, one session
        kept for all chunks); a point's value is its ratio to the reference in its own chunk times the
        reference's median over all chunks, so a change of machine load between chunks cancels out."""
        ratios, full = self.relative(spec, [partial(micro_graph, spec, i, o, self.pool) for i, o in counts])
        return [r * full for r in ratios]

    def chain_points(self, chain: ChainSpec, ranks: Sequence[tuple[int, ...]]) -> list[float]:
        """Latency of the layer's factor chain at each rank tuple, as a ratio to the layer at full channels timed
        in the same chunk (profile.chains)."""
        from onnxprune.profile.chains import chain_graph

        return self.relative(chain.layer, [partial(chain_graph, chain, r, self.pool) for r in ranks])[0]

    def relative(self, spec: LayerSpec, graphs: Sequence[Callable[[], tuple[onnx.ModelProto, tuple[int, ...]]]]
                 ) -> tuple[list[float], float]:
        """(each graph's median latency / the layer's at full counts in its chunk, the layer's median ms over all
        chunks); `graphs` build (model, shape of input 'x'), timed in chunks of CHUNK beside the layer."""
        overhead = self.overhead()
        rng = np.random.default_rng(0)

        def runner(build: Callable[[], tuple[onnx.ModelProto, tuple[int, ...]]]) -> _Runner:
            model, x_shape = build()
            x = rng.standard_normal(x_shape, dtype=np.float32).astype(helper.tensor_dtype_to_np_dtype(spec.dtype))
            return _Runner(make_session(model, self.provider, self.threads), {"x": x})

        reference = runner(partial(micro_graph, spec, spec.in_channels, spec.out_channels, self.pool))
        ratios: list[float] = []
        references: list[float] = []
        for start in range(0, len(graphs), CHUNK):
            runners = [reference] + [runner(g) for g in graphs[start:start + CHUNK]]
            medians = [max(m - overhead, 1e-6) for m in _interleaved(runners, WARMUP, MIN_REPEATS, TARGET_MS)]
            references.append(medians[0])
            ratios.extend(m / medians[0] for m in medians[1:])
            reference.times.clear()
        return ratios, float(np.median(references))

    def model(self, model: onnx.ModelProto | str, feed: dict[str, np.ndarray]) -> float:
        """Median ms of the whole model on `feed`."""
        runner = _Runner(make_session(model, self.provider, self.threads), feed)
        return _interleaved([runner], 3, MODEL_MIN_REPEATS, MODEL_TARGET_MS)[0]


def model_source(model: Any, proto: onnx.ModelProto) -> onnx.ModelProto | str:
    """What to open a session on: the user's file when given a path (external data resolves beside it)."""
    return os.fspath(model) if isinstance(model, (str, os.PathLike)) else proto
