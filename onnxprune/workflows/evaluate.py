"""Evaluate a model on labelled data with onnxruntime: top-1/top-5 accuracy, a user metric, fidelity to a reference.

`data` is either
  * one dataset `(inputs, labels)`: `inputs` an array (single-input models) or a dict {input name: array},
    `labels` an array with one entry per sample (or None for a fidelity-only run); it is cut into batches
    of `batch_size` samples along the first axis (or of the model's fixed batch size when it has one);
  * an iterable (list, generator, DataLoader-like) of `(inputs, labels)` batches, used as given;
  * a data source (datasources.py): an image folder (its path or an ImageFolder; labels from the class
    folders) or a Hugging Face dataset, read lazily in batches of `batch_size`.
Inputs are checked like calibration data (names, rank, static dims, dtype; see calibration.py) and every
error names the batch and what the model expects.

Metrics
  * metric="accuracy" (default): the chosen output (default the first graph output) holds per-class scores,
    shape (batch, classes) (trailing singleton dims allowed); labels are class ids (batch,) or one-hot /
    probabilities (batch, classes). Returns `top1`, `top5` (only when there are >= 5 classes) and `n`.
  * metric=callable: called ONCE PER BATCH as `metric(outputs, labels)` with that batch's output array
    (the chosen output) and labels; it returns a float or a dict of floats. The result is the mean over
    batches weighted by the batch's sample count, so per-sample means (accuracy, MSE, ...) come out exact;
    a metric that is not a per-sample mean (F1, AUC, ...) should be given the data as one batch
    (batch_size >= number of samples). A float is reported under the callable's `__name__` ("metric" for
    a lambda), a dict under its own keys. `n` is always added.
  * reference=model: both models run on the same batches; adds `agreement` (fraction of samples whose
    top-1 class is the same), `cosine` (mean over samples of the cosine similarity of the flattened
    outputs) and `max_rel_error` (max |out - ref| / max |ref| over all samples).
One onnxruntime session is built per model (per process) and reused for every batch; a progress bar (progress.py)
is shown on stderr when it is a terminal.

The batches are cut into shards of calibration.SHARD_BATCHES; each shard is evaluated into fresh counters
and sums, which are added in shard order. The shards are the items of an executor map: in this process by
default, as Ray tasks with `executor="ray"` (onnxprune.executor); the answer is the same on both.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TextIO

import numpy as np

from onnxprune import datasources, ir
from onnxprune.calibration import DEFAULT_BATCH_SIZE, SHARD_BATCHES, InputSpec, input_specs, task_session, to_feed
from onnxprune.errors import InvalidRequestError
from onnxprune.executor import chunks, resolve
from onnxprune.progress import Bar

__all__ = ["evaluate", "DEFAULT_BATCH_SIZE"]

Metric = str | Callable[[np.ndarray, Any], Any]


class _Runner:
    """One model: its input specs, one session, and the output it is judged on."""

    def __init__(self, model: Any, output: str | None, what: str) -> None:
        self.model = ir.load_model(model)
        self.what = what
        self.specs = input_specs(self.model)
        names = [o.name for o in self.model.graph.output]
        if output is None:
            output = names[0]
        elif output not in names:
            raise InvalidRequestError(f"{what} has no graph output {output!r}; its outputs are {names}")
        self.output = output
        self._session = None

    def __call__(self, feed: dict[str, np.ndarray], where: str) -> np.ndarray:
        feed = to_feed(feed, self.specs, f"{where} ({self.what})" if self.what != "model" else where)
        if self._session is None:
            self._session = task_session(self.model)
        return np.asarray(self._session.run([self.output], feed)[0])


def evaluate(model: Any, data: Any, metric: Metric = "accuracy", *, reference: Any = None,
             batch_size: int = DEFAULT_BATCH_SIZE, output: str | None = None,
             stream: TextIO | None = None, executor: Any = None) -> dict[str, Any]:
    """Accuracy (or a user metric) of `model` on `data`, and its fidelity to `reference` when given.

    See the module docstring for the accepted data and the exact meaning of every key.
    `output` names the graph output judged (default: the first); the reference must have it too.
    executor: where the shards of batches run (None: this process; "ray": Ray tasks; see onnxprune.executor).
    """
    if isinstance(metric, str):
        if metric.lower() not in ("accuracy", "acc", "top1"):
            raise InvalidRequestError(f"unknown metric {metric!r}: use 'accuracy' or a callable "
                                      "metric(outputs, labels) -> float | dict")
        metric = "accuracy"
    elif not callable(metric):
        raise InvalidRequestError(f"metric must be 'accuracy' or a callable, not {type(metric).__name__}")
    if batch_size is None or int(batch_size) < 1:
        raise InvalidRequestError(f"batch_size must be a positive integer, not {batch_size!r}")
    runner = _Runner(model, output, "model")
    ref_runner = None if reference is None else _Runner(reference, runner.output, "reference")
    source = datasources.as_source(data)
    total_batches = _length(data) if source is None else source.batch_count(int(batch_size))
    with Bar("evaluate", total_batches, stream=stream) as progress:
        parts = resolve(executor).map(_evaluate_shard, (runner, ref_runner, metric),
                                      chunks(_batches(data if source is None else source, runner.specs,
                                                      int(batch_size)), SHARD_BATCHES),
                                      names=lambda k, shard: f"evaluate shard {k} ({shard[0][0]} to {shard[-1][0]})",
                                      on_done=lambda _, part: progress.update(part.batches))
    total = parts[0] if parts else _Part(metric, ref_runner is not None)
    for part in parts[1:]:
        total.merge(part)
    if total.n == 0:
        raise InvalidRequestError("evaluation data is empty: pass at least one sample")
    result: dict[str, Any] = {}
    if metric == "accuracy":
        if total.seen_labels:
            result.update(total.metric.result())
        elif total.fidelity is None:
            raise InvalidRequestError("no labels were given: pass (inputs, labels), or reference= for a "
                                      "fidelity-only evaluation")
    else:
        result.update(total.metric.result())
    result["n"] = total.n
    if total.fidelity is not None:
        result.update(total.fidelity.result())
    return result


class _Part:
    """The counters and sums of some batches: the metric's, the fidelity's, samples, and whether labels came."""

    def __init__(self, metric: Metric, with_reference: bool) -> None:
        self.metric = _Accuracy() if metric == "accuracy" else _UserMetric(metric)
        self.fidelity = _Fidelity() if with_reference else None
        self.n = 0
        self.batches = 0
        self.seen_labels = False

    def merge(self, other: "_Part") -> None:
        self.metric.merge(other.metric)
        if self.fidelity is not None:
            self.fidelity.merge(other.fidelity)
        self.n += other.n
        self.batches += other.batches
        self.seen_labels = self.seen_labels or other.seen_labels


def _evaluate_shard(context: tuple, shard: list[tuple[str, dict, Any]]) -> _Part:
    runner, ref_runner, metric = context
    part = _Part(metric, ref_runner is not None)
    for where, feed, labels in shard:
        outputs = runner(feed, where)
        count = _count(outputs, where)
        if labels is not None:
            labels = np.asarray(labels)
            if labels.ndim == 0 or len(labels) != count:
                raise InvalidRequestError(f"{where}: {labels.shape[0] if labels.ndim else 'scalar'} labels for "
                                          f"{count} samples; give one label per sample")
            part.seen_labels = True
        if labels is not None or metric != "accuracy":
            part.metric.update(outputs, labels, where)
        if part.fidelity is not None:
            part.fidelity.update(outputs, ref_runner(feed, where), where)
        part.n += count
        part.batches += 1
    return part


# --------------------------------------------------------------------------- data

def _is_pair(item: Any) -> bool:
    return isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], (np.ndarray, Mapping))


def _length(data: Any) -> int | None:
    if _is_pair(data) and isinstance(data, tuple):
        return None
    try:
        return len(data)
    except TypeError:
        return None


def _batches(data: Any, specs: list[InputSpec], batch_size: int) -> Iterator[tuple[str, dict, Any]]:
    """(where, raw feed dict, labels) per batch."""
    if isinstance(data, (datasources.ImageFolder, datasources.HFDataset)):
        for k, (feed, labels) in enumerate(data.pairs(specs, batch_size)):
            yield f"batch {k}", feed, labels
        return
    if isinstance(data, tuple) and _is_pair(data):
        inputs, labels = data
        yield from _split(_as_dict(inputs, specs, "data"), labels, specs, batch_size)
        return
    if isinstance(data, (np.ndarray, Mapping, str, bytes)) or not isinstance(data, Iterable):
        raise InvalidRequestError("data must be a pair (inputs, labels) or an iterable of (inputs, labels) "
                                  f"batches; inputs an array or a dict of arrays; got {type(data).__name__}")
    empty = True
    for k, item in enumerate(data):
        empty = False
        where = f"batch {k}"
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise InvalidRequestError(f"{where}: expected a pair (inputs, labels), got {type(item).__name__}"
                                      + (f" of length {len(item)}" if isinstance(item, (tuple, list)) else "")
                                      + " (one whole dataset is passed as a tuple (inputs, labels))")
        yield where, _as_dict(item[0], specs, where), item[1]
    if empty:
        raise InvalidRequestError("evaluation data is empty: pass at least one batch")


def _as_dict(inputs: Any, specs: list[InputSpec], where: str) -> dict[str, Any]:
    if isinstance(inputs, Mapping):
        return dict(inputs)
    if len(specs) != 1:
        raise InvalidRequestError(f"{where}: the model has inputs {[s.name for s in specs]}; pass a dict "
                                  "{name: array} (bare arrays only fit single-input models)")
    return {specs[0].name: inputs}


def _split(feed: dict[str, Any], labels: Any, specs: list[InputSpec],
           batch_size: int) -> Iterator[tuple[str, dict, Any]]:
    """One dataset cut into batches along the first axis (of the model's fixed batch size when it has one)."""
    arrays = {name: np.asarray(value) for name, value in feed.items()}
    lengths = {len(a) if a.ndim else None for a in arrays.values()}
    n = lengths.pop() if len(lengths) == 1 else None
    firsts = {s.dims[0] if s.dims else None for s in specs}
    if all(not isinstance(d, int) for d in firsts):
        size = batch_size
    elif len(firsts) == 1 and next(iter(firsts)) > 0:
        size = next(iter(firsts))  # a fixed batch size: cut the dataset into batches of exactly that
    else:
        size = None
    if n is None or size is None or (size != batch_size and n % size):
        yield "data", arrays, labels  # one batch: the input checks explain the mismatch
        return
    if labels is not None:
        labels = np.asarray(labels)
        if labels.ndim == 0 or len(labels) != n:
            raise InvalidRequestError(f"data: {len(labels) if labels.ndim else 'a scalar'} labels for {n} "
                                      "samples; give one label per sample")
    for start in range(0, n, size):
        where = "data" if n <= size else f"data[{start}:{min(start + size, n)}]"
        yield where, {k: a[start:start + size] for k, a in arrays.items()}, \
            None if labels is None else labels[start:start + size]


def _count(outputs: np.ndarray, where: str) -> int:
    if outputs.ndim == 0:
        raise InvalidRequestError(f"{where}: the model's output is a scalar; evaluate needs one output row "
                                  "per sample")
    return len(outputs)


# --------------------------------------------------------------------------- metrics

def _scores(outputs: np.ndarray, where: str) -> np.ndarray:
    """(batch, classes) scores: trailing singleton dims dropped."""
    if outputs.ndim > 2 and all(d == 1 for d in outputs.shape[2:]):
        outputs = outputs.reshape(outputs.shape[:2])
    if outputs.ndim != 2:
        raise InvalidRequestError(f"{where}: accuracy needs (batch, classes) scores, the output has shape "
                                  f"{outputs.shape}; pass output=NAME or metric=callable(outputs, labels)")
    return outputs


class _Accuracy:
    def __init__(self) -> None:
        self.top1 = 0
        self.top5 = 0
        self.n = 0
        self.classes = None

    def update(self, outputs: np.ndarray, labels: np.ndarray, where: str) -> None:
        scores = _scores(outputs, where)
        classes = scores.shape[1]
        labels = np.asarray(labels)
        if labels.ndim == 2 and labels.shape[1] == classes:
            labels = labels.argmax(axis=1)
        elif labels.ndim > 1 and all(d == 1 for d in labels.shape[1:]):
            labels = labels.reshape(len(labels))
        if labels.ndim != 1:
            raise InvalidRequestError(f"{where}: labels of shape {labels.shape}; accuracy needs class ids "
                                      f"(batch,) or one-hot (batch, {classes})")
        if not (np.issubdtype(labels.dtype, np.integer) or
                (np.issubdtype(labels.dtype, np.floating) and np.all(labels == np.round(labels)))):
            raise InvalidRequestError(f"{where}: labels of dtype {labels.dtype} are not class ids")
        labels = labels.astype(np.int64)
        if labels.size and (labels.min() < 0 or labels.max() >= classes):
            raise InvalidRequestError(f"{where}: labels range over [{labels.min()}, {labels.max()}] but the "
                                      f"model scores {classes} classes (ids 0..{classes - 1})")
        self.classes = classes
        order = np.argsort(-scores, axis=1, kind="stable")
        self.top1 += int((order[:, 0] == labels).sum())
        if classes >= 5:
            self.top5 += int((order[:, :5] == labels[:, None]).any(axis=1).sum())
        self.n += len(labels)

    def merge(self, other: "_Accuracy") -> None:
        self.top1 += other.top1
        self.top5 += other.top5
        self.n += other.n
        self.classes = self.classes if other.classes is None else other.classes

    def result(self) -> dict[str, float]:
        out = {"top1": self.top1 / max(self.n, 1)}
        if self.classes is not None and self.classes >= 5:
            out["top5"] = self.top5 / max(self.n, 1)
        return out


class _UserMetric:
    def __init__(self, fn: Callable) -> None:
        self.fn = fn
        name = getattr(fn, "__name__", "metric")
        self.name = "metric" if not name or name.startswith("<") else name
        self.sums: dict[str, float] = {}
        self.n = 0

    def update(self, outputs: np.ndarray, labels: Any, where: str) -> None:
        value = self.fn(outputs, labels)
        values = value if isinstance(value, Mapping) else {self.name: value}
        weight = len(outputs)
        for key, v in values.items():
            try:
                v = float(v)
            except (TypeError, ValueError):
                raise InvalidRequestError(f"{where}: metric returned {key}={v!r}; it must return a float or a "
                                          "dict of floats") from None
            self.sums[key] = self.sums.get(key, 0.0) + v * weight
        self.n += weight

    def merge(self, other: "_UserMetric") -> None:
        for key, v in other.sums.items():
            self.sums[key] = self.sums.get(key, 0.0) + v
        self.n += other.n

    def result(self) -> dict[str, float]:
        return {k: v / max(self.n, 1) for k, v in self.sums.items()}


class _Fidelity:
    def __init__(self) -> None:
        self.agree = 0
        self.cos = 0.0
        self.n = 0
        self.max_abs = 0.0
        self.ref_scale = 0.0

    def update(self, out: np.ndarray, ref: np.ndarray, where: str) -> None:
        if out.shape != ref.shape:
            raise InvalidRequestError(f"{where}: the output has shape {out.shape}, the reference's "
                                      f"{ref.shape}; fidelity needs the same shapes")
        a = out.astype(np.float64).reshape(len(out), -1)
        b = ref.astype(np.float64).reshape(len(ref), -1)
        if out.ndim >= 2:
            top = np.argmax(out.reshape(out.shape[0], out.shape[1], -1), axis=1)
            top_ref = np.argmax(ref.reshape(ref.shape[0], ref.shape[1], -1), axis=1)
            self.agree += int(np.all(top == top_ref, axis=1).sum())
        else:
            self.agree += int((a == b).all(axis=1).sum())
        na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
        both_zero = (na == 0) & (nb == 0)
        cos = np.where(both_zero, 1.0, (a * b).sum(axis=1) / np.maximum(na * nb, 1e-300))
        self.cos += float(cos.sum())
        if a.size:
            self.max_abs = max(self.max_abs, float(np.abs(a - b).max()))
            self.ref_scale = max(self.ref_scale, float(np.abs(b).max()))
        self.n += len(a)

    def merge(self, other: "_Fidelity") -> None:
        self.agree += other.agree
        self.cos += other.cos
        self.n += other.n
        self.max_abs = max(self.max_abs, other.max_abs)
        self.ref_scale = max(self.ref_scale, other.ref_scale)

    def result(self) -> dict[str, float]:
        n = max(self.n, 1)
        rel = self.max_abs / (self.ref_scale + 1e-12) if self.max_abs else 0.0
        return {"agreement": self.agree / n, "cosine": self.cos / n, "max_rel_error": rel}
