"""onnxruntime latency of a model, printed beside its params and MACs, and the ratios between two models.

`bench(model)` times `session.run` on one fixed input (random, from runtime.make_inputs, with the dynamic
batch dim set to `batch_size`; or the user's `inputs`) on the CPU provider with all graph optimisations:
`warmup` uncounted runs, then `repeats` timed runs (time.perf_counter around each run). It reports the
median and the 10th / 90th percentiles in milliseconds, and throughput = batch_size / median seconds.
Params, MACs and size come from stats.stats (MACs from shapes, with an unknown batch counted as 1, so
they are per sample).

`bench(a, b)` / `compare(a, b)` times both models interleaved (a, b, a, b, ...) so drifts in machine load
hit both alike, and `BenchComparison.ratios` gives b / a for latency, MACs, params and size. MACs and
params are counted, latency is measured: a MACs ratio of 0.5 rarely means a latency ratio of 0.5
(memory-bound layers, kernel blocking, fixed per-node overheads), which is why both are printed side by side.
Timings vary between machines and runs; compare ratios measured in one run, never absolute numbers.
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import onnx

from onnxprune import ir
from onnxprune.text import human, table
from onnxprune.calibration import input_specs, to_feed
from onnxprune.errors import InvalidRequestError
from onnxprune.runtime import make_inputs, optimized_session
from onnxprune.stats import stats

__all__ = ["BenchResult", "BenchComparison", "bench", "compare", "format_results"]


@dataclass
class BenchResult:
    """Latency in milliseconds (median, p10, p90, min over `repeats` timed runs) and model statistics."""

    name: str
    median_ms: float
    p10_ms: float
    p90_ms: float
    min_ms: float
    throughput: float  # samples per second: batch_size / median
    params: int
    macs: int
    size_bytes: int
    batch_size: int
    repeats: int
    warmup: int
    threads: int | None
    times_ms: list[float] = field(default_factory=list, repr=False)

    def as_dict(self, *, times: bool = False) -> dict[str, Any]:
        out = asdict(self)
        if not times:
            out.pop("times_ms")
        return out

    def __str__(self) -> str:
        return format_results([self])


@dataclass
class BenchComparison:
    """Two results and the ratios second / first (latency, throughput, MACs, params, size)."""

    a: BenchResult
    b: BenchResult

    @property
    def ratios(self) -> dict[str, float | None]:
        def ratio(x: float, y: float) -> float | None:
            return y / x if x else None

        return {"latency": ratio(self.a.median_ms, self.b.median_ms),
                "throughput": ratio(self.a.throughput, self.b.throughput),
                "macs": ratio(self.a.macs, self.b.macs),
                "params": ratio(self.a.params, self.b.params),
                "size": ratio(self.a.size_bytes, self.b.size_bytes)}

    def as_dict(self) -> dict[str, Any]:
        return {"a": self.a.as_dict(), "b": self.b.as_dict(), "ratios": self.ratios}

    def __str__(self) -> str:
        return format_results([self.a, self.b])


# --------------------------------------------------------------------------- inputs

def bench_inputs(model: onnx.ModelProto, batch_size: int = 1, inputs: Any = None,
                 seed: int = 0) -> dict[str, np.ndarray]:
    """The feed timed: the user's inputs (checked), or random ones with every dynamic first dim = batch_size."""
    specs = input_specs(model)
    if inputs is not None:
        if not isinstance(inputs, Mapping) and len(specs) == 1:
            inputs = {specs[0].name: inputs}
        return to_feed(inputs, specs, "bench inputs")
    dims = {s.dims[0]: batch_size for s in specs if s.dims and isinstance(s.dims[0], str)}
    feed = make_inputs(model, seed=seed, dims=dims)
    for spec in specs:  # unnamed dynamic first dims
        value = feed[spec.name]
        if spec.dims and spec.dims[0] is None and value.ndim:
            feed[spec.name] = np.resize(value, (batch_size,) + value.shape[1:]).astype(value.dtype)
    return feed


def _samples(feed: Mapping[str, np.ndarray], batch_size: int) -> int:
    firsts = {v.shape[0] for v in feed.values() if np.ndim(v)}
    return firsts.pop() if len(firsts) == 1 else batch_size


# --------------------------------------------------------------------------- timing

class _Timer:
    def __init__(self, model: Any, name: str, threads: int | None, batch_size: int, inputs: Any) -> None:
        self.model = ir.load_model(model)
        self.name = name
        self.feed = bench_inputs(self.model, batch_size, inputs)
        self.session = optimized_session(self.model, threads, spinning=False)  # timed interleaved with another
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.times: list[float] = []

    def run(self, record: bool) -> None:
        start = time.perf_counter()
        self.session.run(self.outputs, self.feed)
        elapsed = (time.perf_counter() - start) * 1e3
        if record:
            self.times.append(elapsed)

    def result(self, batch_size: int, repeats: int, warmup: int, threads: int | None) -> BenchResult:
        times = np.asarray(self.times, dtype=np.float64)
        median = float(np.median(times))
        s = stats(self.model)
        samples = _samples(self.feed, batch_size)
        return BenchResult(name=self.name, median_ms=median, p10_ms=float(np.percentile(times, 10)),
                           p90_ms=float(np.percentile(times, 90)), min_ms=float(times.min()),
                           throughput=samples / (median / 1e3) if median > 0 else float("inf"),
                           params=s.params, macs=s.macs, size_bytes=s.size_bytes, batch_size=samples,
                           repeats=repeats, warmup=warmup, threads=threads, times_ms=self.times)


def _name(model: Any, default: str) -> str:
    if isinstance(model, (str, os.PathLike)):
        return os.path.basename(os.fspath(model))
    return default


def _check(repeats: int, warmup: int, batch_size: int) -> None:
    if int(repeats) < 1:
        raise InvalidRequestError(f"repeats must be >= 1, not {repeats}")
    if int(warmup) < 0:
        raise InvalidRequestError(f"warmup must be >= 0, not {warmup}")
    if int(batch_size) < 1:
        raise InvalidRequestError(f"batch_size must be >= 1, not {batch_size}")


def bench(model: Any, other: Any = None, *, repeats: int = 50, warmup: int = 5, threads: int | None = None,
          batch_size: int = 1, inputs: Any = None, names: tuple[str, str] | None = None
          ) -> BenchResult | BenchComparison:
    """Time `model` (a BenchResult); with `other`, time both interleaved (a BenchComparison, ratios other/model).

    inputs: a dict {name: array} (or one array) used instead of random inputs; it fixes the batch size.
    """
    _check(repeats, warmup, batch_size)
    models = [model] if other is None else [model, other]
    labels = names or tuple(_name(m, d) for m, d in zip(models, ("model", "other")))
    timers = [_Timer(m, str(n), threads, int(batch_size), inputs) for m, n in zip(models, labels)]
    for k in range(int(warmup) + int(repeats)):
        for timer in timers:
            timer.run(record=k >= int(warmup))
    results = [t.result(int(batch_size), int(repeats), int(warmup), threads) for t in timers]
    return results[0] if other is None else BenchComparison(*results)


def compare(a: Any, b: Any, **kwargs: Any) -> BenchComparison:
    """bench(a, b, ...): both models timed interleaved, with the ratios b / a."""
    return bench(a, b, **kwargs)


# --------------------------------------------------------------------------- printing

def _rows(results: list[BenchResult]) -> tuple[list[list[str]], list[str]]:
    header = ["model", "median ms", "p10 ms", "p90 ms", "samples/s", "params", "MACs", "size"]
    rows = [[r.name, f"{r.median_ms:.3f}", f"{r.p10_ms:.3f}", f"{r.p90_ms:.3f}", f"{r.throughput:.1f}",
             human(r.params), human(r.macs), human(r.size_bytes) + "B"] for r in results]
    return rows, header


def format_results(results: list[BenchResult]) -> str:
    """A table of the results; with two, the ratios second / first (measured latency beside counted MACs)."""
    rows, header = _rows(results)
    text = table(rows, header)
    first = results[0]
    text += (f"\nbatch size {first.batch_size}, {first.repeats} timed runs after {first.warmup} warm-up, "
             f"threads {first.threads if first.threads is not None else 'default'}; p10/p90: spread of runs; "
             "MACs per sample")
    if len(results) == 2:
        ratios = BenchComparison(results[0], results[1]).ratios

        def fmt(v: float | None) -> str:
            return "-" if v is None else f"{v:.3f}"

        text += "\n\n" + table([["latency (measured)", fmt(ratios["latency"])],
                                ["MACs (counted)", fmt(ratios["macs"])],
                                ["params (counted)", fmt(ratios["params"])],
                                ["size", fmt(ratios["size"])],
                                ["throughput", fmt(ratios["throughput"])]],
                               [f"ratio {results[1].name} / {results[0].name}", "value"])
        text += ("\nMACs and params are counted from shapes; latency is measured. Fewer MACs do not imply a "
                 "proportional speed-up.")
    return text


def to_json(result: BenchResult | BenchComparison) -> str:
    return json.dumps(result.as_dict(), indent=2)
