"""Calibration data: normalise what the user passes, then stream statistics over it in one onnxruntime pass.

`calibration=` accepts
  * a dict {input name: array}: one batch;
  * a numpy array (single-input models only): one batch;
  * an iterable (list, generator, ...) of such dicts or arrays: one batch each;
  * a path to a .npz file (a dict of arrays) or a .npy file (one array);
  * a data source (datasources.py): an image folder (its path or an ImageFolder) or a Hugging Face dataset,
    read lazily batch by batch (labels are ignored).
Each batch is checked against the model's graph inputs (names, rank, static dims, dtype), and batches
larger than `batch_size` along a dynamic first axis are split, so onnxruntime never holds more than
`batch_size` samples of activations at once.

`collect(model, calibration, requests)` builds ONE session whose outputs are every tensor the requested
statistics read, runs it once per batch and feeds each statistic its tensors; a statistic keeps running
sums only, never the activations themselves. The batches are cut into shards of SHARD_BATCHES feeds; each
shard is summed into fresh statistics, and the shards' partial sums are merged in shard order, in float64.
The shards are the items of an executor map (onnxprune.executor): in this process by default, or as Ray
tasks with `executor="ray"`; the grouping of the sums is the same on both, so the same data gives the same
result everywhere.
"""
from __future__ import annotations

import copy
import os
from collections.abc import Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Callable, Protocol, TextIO

import numpy as np
import onnx
from onnx import helper

from onnxprune import datasources, ir
from onnxprune.errors import InvalidRequestError
from onnxprune.executor import chunks, fold, resolve, task_threads
from onnxprune.progress import Bar
from onnxprune.runtime import optimized_session, session, with_outputs

DEFAULT_BATCH_SIZE = 32
SHARD_BATCHES = 8  # feeds summed per shard: the unit of work of a map, and of the order partial sums are added


class Statistic(Protocol):
    """A streamed statistic: reads `tensors` of every batch through update(), answers with result().

    merge(other) adds the partial sums of `other` (the same statistic, fresh, updated on later batches);
    a statistic without merge is summed over all batches in one shard, in this process only. A statistic
    may also read tensors of collect's `reference` model: named in `reference_tensors`, passed after
    `tensors`."""

    tensors: tuple[str, ...]

    def update(self, *arrays: np.ndarray) -> None: ...

    def merge(self, other: "Statistic") -> None: ...

    def result(self) -> Any: ...


class SampleMean:
    """Mean over samples of a per-sample vector: `per_sample(*arrays)` returns (samples, k) values."""

    def __init__(self, tensors: tuple[str, ...], per_sample: Callable[..., np.ndarray]) -> None:
        self.tensors = tensors
        self.per_sample = per_sample
        self.total: np.ndarray | float = 0.0
        self.count = 0

    def update(self, *arrays: np.ndarray) -> None:
        values = np.asarray(self.per_sample(*arrays), dtype=np.float64)
        self.total = self.total + values.sum(axis=0)
        self.count += len(values)

    def merge(self, other: "SampleMean") -> None:
        self.total = self.total + other.total
        self.count += other.count

    def result(self) -> np.ndarray:
        return np.asarray(self.total, dtype=np.float64) / max(self.count, 1)


# --------------------------------------------------------------------------- input checks

@dataclass(frozen=True)
class InputSpec:
    """One real graph input: name, dims (int, or a str / None when dynamic) and numpy dtype."""

    name: str
    dims: tuple[int | str | None, ...]
    dtype: np.dtype

    def describe(self) -> str:
        dims = ", ".join(str(d) if d is not None else "?" for d in self.dims)
        return f"'{self.name}' ({dims}) {self.dtype}"

    def check(self, value: Any, where: str) -> np.ndarray:
        """The value as an array, or an InvalidRequestError saying what was expected."""
        array = np.asarray(value)
        expected = f"; the model expects {self.describe()}"
        if array.ndim != len(self.dims):
            raise InvalidRequestError(f"{where}: input '{self.name}' has rank {array.ndim} (shape {array.shape})"
                                      + expected)
        bad = [k for k, d in enumerate(self.dims) if isinstance(d, int) and array.shape[k] != d]
        if bad:
            raise InvalidRequestError(f"{where}: input '{self.name}' has shape {array.shape}, axis {bad[0]} "
                                      f"differs{expected}")
        if array.dtype != self.dtype:
            raise InvalidRequestError(f"{where}: input '{self.name}' has dtype {array.dtype}{expected} "
                                      f"(convert it, e.g. x.astype(np.{self.dtype.name}))")
        return array


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    """The graph inputs a calibration batch must feed (initializers excluded)."""
    initializers = {t.name for t in model.graph.initializer}
    specs = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tt = value.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim)
        specs.append(InputSpec(value.name, dims, np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type))))
    return specs


def require(calibration: Any, method: str) -> None:
    """Raise when a data-based criterion is asked for without data."""
    if calibration is None:
        raise InvalidRequestError(f"method '{method}' needs calibration data: pass calibration=... (a dict of "
                                  "input arrays, an array for a single-input model, or an iterable of either)")


# --------------------------------------------------------------------------- batches

def batches(model: onnx.ModelProto, calibration: Any,
            batch_size: int = DEFAULT_BATCH_SIZE) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """(batch number, checked feed) pairs; a feed holds at most `batch_size` samples along a dynamic
    first axis (a larger batch comes as several feeds with the same number)."""
    specs = input_specs(model)
    empty = True
    source = datasources.as_source(calibration)
    raws = _raw_batches(calibration) if source is None else (feed for feed, _ in source.pairs(specs, batch_size))
    for k, raw in enumerate(raws):
        empty = False
        for feed in _split(to_feed(raw, specs, f"calibration batch {k}"), specs, batch_size):
            yield k, feed
    if empty:
        raise InvalidRequestError("calibration data is empty: pass at least one batch")


def _raw_batches(calibration: Any) -> Iterable[Any]:
    if isinstance(calibration, (str, os.PathLike)):
        return [_load_file(os.fspath(calibration))]
    if isinstance(calibration, (Mapping, np.ndarray)):
        return [calibration]
    if isinstance(calibration, Iterable):
        return calibration
    raise InvalidRequestError(f"calibration must be a dict of arrays, an array, an iterable of those, a "
                              f".npz/.npy path or an image folder, not {type(calibration).__name__}")


def _load_file(path: str) -> Any:
    if not os.path.isfile(path) or not path.endswith((".npz", ".npy")):
        raise InvalidRequestError(f"calibration file '{path}' is not an existing .npz or .npy file (or an image "
                                  "folder)")
    data = np.load(path, allow_pickle=False)
    return dict(data) if path.endswith(".npz") else data


def to_feed(raw: Any, specs: list[InputSpec], where: str) -> dict[str, np.ndarray]:
    """One batch as {input name: checked array}; a bare array fits a single-input model. `where` names it in errors."""
    names = [s.name for s in specs]
    if not isinstance(raw, Mapping):
        if len(specs) != 1:
            raise InvalidRequestError(f"{where}: the model has inputs {names}; pass a dict {{name: array}} "
                                      "per batch (bare arrays only fit single-input models)")
        raw = {specs[0].name: raw}
    unknown = sorted(set(raw) - set(names))
    missing = [n for n in names if n not in raw]
    if unknown or missing:
        raise InvalidRequestError(f"{where}: input names {sorted(raw)} do not match the model's inputs "
                                  f"{[s.describe() for s in specs]}"
                                  + (f" (unknown: {unknown})" if unknown else "")
                                  + (f" (missing: {missing})" if missing else ""))
    return {s.name: s.check(raw[s.name], where) for s in specs}


def _split(feed: dict[str, np.ndarray], specs: list[InputSpec], size: int) -> Iterator[dict[str, np.ndarray]]:
    """Slices of the feed along the first axis when every input's first axis is dynamic and equal."""
    lengths = {len(feed[s.name]) if feed[s.name].ndim and not isinstance(s.dims[0], int) else None
               for s in specs}
    n = lengths.pop() if len(lengths) == 1 else None
    if n is None or n <= size:
        yield feed
        return
    for start in range(0, n, size):
        yield {name: value[start : start + size] for name, value in feed.items()}


# --------------------------------------------------------------------------- the pass

def collect(model: ir.ModelLike, calibration: Any, requests: Mapping[Hashable, Statistic], *,
            batch_size: int = DEFAULT_BATCH_SIZE, stream: TextIO | None = None, reference: ir.ModelLike | None = None,
            executor: Any = None) -> dict[Hashable, Any]:
    """Feed every statistic over all calibration batches in one onnxruntime pass; {key: result}.

    reference: a second model run on the same batches, for statistics with `reference_tensors`.
    executor: where the shards are summed (None: the executor in scope, else this process; "ray": Ray tasks).
    """
    model = ir.load_model(model)
    reference = None if reference is None else ir.load_model(reference)
    graph_inputs = {s.name for s in input_specs(model)}
    fetch = list(dict.fromkeys(t for stat in requests.values() for t in stat.tensors if t not in graph_inputs))
    fetch_ref = list(dict.fromkeys(t for stat in requests.values() for t in getattr(stat, "reference_tensors", ())
                                   if t not in graph_inputs))
    executor = resolve(executor)
    mergeable = all(callable(getattr(stat, "merge", None)) for stat in requests.values())
    if not mergeable and executor.name != "in-process":
        names = sorted({type(s).__name__ for s in requests.values() if not callable(getattr(s, "merge", None))})
        raise InvalidRequestError(f"statistics {names} have no merge(other) method, so their partial sums cannot "
                                  f"be added across {executor.name} tasks; add one, or run in-process")
    shared = (with_outputs(model, fetch), fetch, None if reference is None else with_outputs(reference, fetch_ref),
              fetch_ref, dict(requests))
    feeds = batches(model, calibration, batch_size)
    shards = chunks(feeds, SHARD_BATCHES) if mergeable else [feeds]  # without merge: one streamed shard
    with Bar("calibration", length(calibration, batch_size), stream=stream) as progress:
        summed = fold(executor, _sum_shard, shared, shards, _merged, setup=_open_pass, names=_shard_name,
                      on_done=lambda _, partial: progress.update(len(partial[0])))
    if summed is None:
        raise InvalidRequestError("calibration data is empty: pass at least one batch")
    return {key: stat.result() for key, stat in summed[1].items()}


def _merged(total: tuple[set[int], dict], partial: tuple[set[int], dict]) -> tuple[set[int], dict]:
    """The running sums with a later shard's partial sums added."""
    for key, stat in total[1].items():
        stat.merge(partial[1][key])
    return total

def _shard_name(k: int, shard: list[tuple[int, dict]]) -> str:
    return f"calibration shard {k} (batches {shard[0][0]}-{shard[-1][0]})"


def _open_pass(shared: tuple) -> tuple:
    """The sessions of a pass (built once per process) and what each statistic reads."""
    model, fetch, reference, fetch_ref, requests = shared
    sess = task_session(model) if fetch else None
    ref = task_session(reference) if fetch_ref else None
    return sess, fetch, ref, fetch_ref, requests


def task_session(model: onnx.ModelProto):
    """A session for the work of one process: onnxruntime's defaults here; in a Ray task, as many threads as
    the CPUs Ray gave it, sleeping when idle (the machine is shared)."""
    threads = task_threads()
    return session(model) if threads is None else optimized_session(model, threads, spinning=False)


def _sum_shard(context: tuple, shard: Iterable[tuple[int, dict[str, np.ndarray]]]) -> tuple[set[int], dict]:
    """(batch numbers, fresh statistics updated on the shard's feeds, in order)."""
    sess, fetch, ref, fetch_ref, requests = context
    stats = copy.deepcopy(requests)
    numbers = set()
    for k, feed in shard:
        numbers.add(k)
        values = dict(zip(fetch, sess.run(fetch, feed))) if fetch else {}
        values.update(feed)
        ref_values = dict(zip(fetch_ref, ref.run(fetch_ref, feed))) if fetch_ref else {}
        ref_values.update(feed)
        for stat in stats.values():
            stat.update(*(values[t] for t in stat.tensors),
                        *(ref_values[t] for t in getattr(stat, "reference_tensors", ())))
    return numbers, stats


def length(calibration: Any, batch_size: int = DEFAULT_BATCH_SIZE) -> int | None:
    """Batches the calibration data gives (None when unknown), for progress bars."""
    source = datasources.as_source(calibration)
    if source is not None:
        return source.batch_count(batch_size)
    if isinstance(calibration, (Mapping, np.ndarray, str, os.PathLike)):
        return 1
    try:
        return len(calibration)
    except TypeError:
        return None

