"""Re-fit layers on calibration data, stage by stage in topological order.

A stage holds layers none of which feeds another (a layer's stage = the number of re-fitted layers on its
longest path from the inputs), so a stage needs ONE pass over the calibration data: per batch, the model
being re-fitted (already re-fitted in earlier stages) gives each layer's input, the reference (unpruned)
model gives its target output, and both feed that layer's Gram statistics. Then every layer of the stage is
solved and written before the next stage runs. The ridge pulls each layer towards its present weights (what
surgery and compensation left), not towards zero: weights the calibration data do not determine (directions
their inputs never take, or every direction beyond the rows of a Gemm after pooling) keep their trained values.

Consecutive stages share a pass (`passes`, DEFAULT_PASSES: the cost stops growing with depth). In a
shared pass only the first stage reads the re-fitted model; a later stage reads its input from the reference
model at the kept channels (an InputView), i.e. what the layers before it are being fitted to reproduce, and
is kept only while those reproduce it to within SHARE_TOLERANCE (else the next pass starts there). Reading
it through the not-yet-re-fitted layers instead fits it to inputs it will not see (on EfficientNet-lite0 that
loses the model: README, "Recovering accuracy"). The later stages' sums depend on the reference alone, so one
reference-only pass computes them ahead for many passes (within LOOKAHEAD_BYTES of Gram sums); a shared pass
then runs both models only as far as its first stage. In this process, every model runs in segments, each
pass from where the previous one stopped (segments.Segments: boundary activations kept on disk; valid because a
pass only changes layers downstream of everything earlier passes ran). On another executor in scope
(onnxprune.executor: Ray), every pass is a calibration.collect running the models from their inputs.
"""
from __future__ import annotations

import contextlib
import itertools
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from onnxprune import calibration as calib
from onnxprune.errors import InvalidRequestError
from onnxprune.executor import current
from onnxprune.graph import GraphIndex
from onnxprune.progress import Bar
from onnxprune.reconstruction import layers
from onnxprune.reconstruction.activation import RunningFit
from onnxprune.reconstruction.gram import Gram
from onnxprune.reconstruction.segments import Segments
from onnxprune.reconstruction.upstream import upstream_model

DEFAULT_RIDGE = 1e-3
DEFAULT_PASSES = 5  # stages share passes so that there are this many when the fits are close (see SHARE_TOLERANCE)
SHARE_TOLERANCE = 0.25  # a later stage of a pass is kept only while the layers solved before it in the pass
#                         reproduce their unpruned outputs to this relative error (else the next pass re-fits it)
DESIGN_BYTES = 64 * 2**20  # design rows held at once per layer (the rest of a batch waits)
FLOAT32_WORK = 2**28  # batches whose Gram products take about this many multiply-adds form them in float32 (the
#                      sums stay float64): halves the time of the products and of im2col; small ones stay float64
ACTIVATION_AWARE = False  # True: a layer read by a Relu / Clip alone is fitted only where the activation passes it
LOOKAHEAD_BYTES = 2**30  # Gram sums a reference-only pass computes ahead for the later stages of shared passes


class FewSamplesWarning(RuntimeWarning):
    """A layer has fewer calibration rows than unknowns: its solve is determined by the ridge regulariser."""


@dataclass
class LayerReconstruction:
    """One re-fitted (or skipped) layer. Errors are relative: ||Y_layer - Y_reference|| / ||Y_reference|| of
    the layer's output on the calibration data, its input taken from the (already re-fitted) model:
    `error_before` with the weights surgery left, `error_after` with the fitted ones (an activation-aware layer:
    against its activation-aware targets, activation.RunningFit)."""

    name: str
    op_type: str
    stage: int | None = None
    unknowns: int | None = None  # per output channel, bias included
    rows: int | None = None  # calibration rows (samples x output positions) of the solve
    ridge: float | None = None  # the absolute lambda used (largest over groups)
    error_before: float | None = None
    error_after: float | None = None
    updated: bool = False
    skipped: str | None = None
    note: str | None = None


@dataclass
class Reconstruction:
    layers: list[LayerReconstruction] = field(default_factory=list)
    ridge: float = DEFAULT_RIDGE
    stages: int = 0
    passes: int = 0  # passes that run the model being re-fitted (one per shared pass)
    reference_passes: int = 0  # passes that run only the reference (the later stages' sums, computed ahead)

    @property
    def fitted(self) -> list[LayerReconstruction]:
        return [r for r in self.layers if r.skipped is None]

    def as_dict(self) -> dict:
        return {"ridge": self.ridge, "stages": self.stages, "passes": self.passes,
                "reference_passes": self.reference_passes, "layers": [vars(r).copy() for r in self.layers]}

    def __str__(self) -> str:
        width = max([32] + [len(r.name) for r in self.layers])  # the layer column fits every name
        rows = [f"reconstruction: {len(self.fitted)} layers re-fitted in {self.stages} stages "
                f"(ridge {self.ridge:g} x mean diag(X^T X))",
                f"  {'layer':<{width}} {'op':<7} {'stage':>5} {'rows':>8} {'unknowns':>8} {'err before':>10} "
                f"{'err after':>10}"]
        for r in self.layers:
            if r.skipped is not None:
                rows.append(f"  {r.name:<{width}} {r.op_type:<7} skipped: {r.skipped}")
                continue
            rows.append(f"  {r.name:<{width}} {r.op_type:<7} {r.stage:>5} {r.rows:>8} {r.unknowns:>8} "
                        f"{r.error_before:>10.4f} {r.error_after:>10.4f}" + (f"  ({r.note})" if r.note else ""))
        return "\n".join(rows)


def refit(reference: onnx.ModelProto, model: onnx.ModelProto, targets: Mapping[str, np.ndarray | None],
          calibration: Any, *, ridge: float = DEFAULT_RIDGE,
          batch_size: int = calib.DEFAULT_BATCH_SIZE, passes: int | None = DEFAULT_PASSES,
          maps: Mapping[str, np.ndarray] | None = None,
          views: Mapping[str, InputView] | None = None, activation_aware: bool = ACTIVATION_AWARE) -> Reconstruction:
    """Re-fit the layers named in `targets` ({node name: kept positions of the reference output's channel
    axis, or None for all}) of `model`, IN PLACE, to reproduce `reference`'s outputs of the same tensors.

    passes: consecutive stages share a pass, ceil(stages / passes) at most (None: one pass per stage). The first
    stage of a pass reads its inputs from `model` (re-fitted up to there); a layer of a later stage reads its
    input from `reference` through its InputView in `views` (the unpruned tensor at its kept channels: what the
    layers before it in the pass are being fitted to produce). That holds only while those layers get close:
    once one of them keeps a relative error above SHARE_TOLERANCE, the rest of the pass is discarded and the
    next pass starts there, so badly fitting (heavily pruned) models fall back to one pass per stage. A stage
    with a layer whose input has no view starts a new pass. The calibration data must give the same batches on
    every pass (the later stages' sums and the kept boundary activations come from earlier passes).
    maps: {node name: T} for MatMul / Gemm layers whose target is the reference output @ T (full output
    columns x the layer's columns) rather than its kept columns (attention.query_maps).
    activation_aware: a layer whose output only a Relu or a constant Clip reads is fitted to the reference
    after that activation: where the reference is clipped, so may the fit be (activation.RunningFit); False fits
    every layer's output before its activation."""
    if calibration is None:
        raise InvalidRequestError("reconstruction needs calibration data: pass calibration=... (a dict of input "
                                  "arrays, an array for a single-input model, an iterable of either, or a path)")
    ridge = _check_ridge(ridge)
    report = Reconstruction(ridge=ridge)
    index = GraphIndex.build(model.graph)
    consumers = []
    for name, keep in targets.items():
        node = index.nodes[index.by_name[name]] if name in index.by_name else None
        try:
            c = layers.find(model, index, name, keep)
        except layers.Skip as exc:
            report.layers.append(LayerReconstruction(name, node.op_type if node is not None else "?",
                                                     skipped=str(exc)))
            continue
        if maps and name in maps and c.op_type != "Conv":
            c.target_map = maps[name]
        if not activation_aware or c.target_map is not None:
            c.bounds = None
        consumers.append(c)
        report.layers.append(LayerReconstruction(name, c.op_type))
    if not consumers:
        return report
    by_name = {r.name: r for r in report.layers}
    stages = _stages(index, consumers)
    report.stages = len(stages)
    views = views or {}
    passes = _check_passes(passes)
    size = 1 if passes is None else -(-len(stages) // passes)  # stages a pass serves at most
    numbered = list(enumerate(stages))
    source = _replayable(calibration, len(stages))
    ahead: dict[str, Gram] = {}  # the later stages' sums, from a reference-only pass
    start = 0
    with contextlib.ExitStack() as stack:
        bar = stack.enter_context(Bar("reconstruction", len(stages), unit="stage"))
        segments = None
        if current().name == "in-process":  # boundary files are local: not across Ray tasks
            folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="onnxprune-refit-"))
            segments = (Segments(model, [c.x for c in consumers], folder, "model"),
                        Segments(reference, [c.y for c in consumers], folder, "reference"))
        while start < len(numbered):
            window = _window(numbered[start:start + size], lambda c: c.x in views)
            if any(c.name not in ahead for _, stage in window[1:] for c in stage):
                ahead = _look_ahead(reference, model, numbered[start + 1:], source, batch_size, views, ridge,
                                    None if segments is None else (segments[1].folder, size))
                report.reference_passes += 1
            window = window[:1] + list(itertools.takewhile(lambda s: all(c.name in ahead for c in s[1]), window[1:]))
            for c in window[0][1]:
                ahead.pop(c.name, None)  # the first stage reads the re-fitted model
            first = _first_stage(reference, model, window[0][1], source, batch_size, segments, ridge)
            start += _fit_window(model, window, first, ahead, ridge, by_name)
            report.passes += 1
            bar.update_to(start)
    return report


def _look_ahead(reference: onnx.ModelProto, model: onnx.ModelProto, numbered: list[tuple[int, list[layers.Consumer]]],
                source, batch_size: int, views: Mapping[str, InputView], ridge: float,
                segmented: tuple[str, int] | None) -> dict[str, Gram]:
    """{layer name: Gram} for the leading stages of `numbered` whose every layer reads its input through a view,
    as far as LOOKAHEAD_BYTES of Gram sums go (at least one stage), from one run of the reference alone. With
    `segmented` = (folder, stages per part), in this process: the reference runs in segments of that many stages
    (segments.Segments), so a batch holds one part's activations, not all of them."""
    chosen: list[list[layers.Consumer]] = []
    budget = LOOKAHEAD_BYTES
    dims = {t.name: list(t.dims) for t in model.graph.initializer}
    for _, stage in numbered:
        if not all(c.x in views for c in stage):
            break
        cost = sum(layers.gram_bytes(c, dims[c.weight]) for c in stage)
        if chosen and cost > budget:
            break
        chosen.append(stage)
        budget -= cost
    requests = {c.name: LayerGram(c, views[c.x], _running(model, c, ridge)) for stage in chosen for c in stage}
    if segmented is None:
        return _collect(reference, None, requests, source, batch_size)
    folder, size = segmented
    run = Segments(reference, [t for r in requests.values() for t in r.tensors], folder, f"ahead{numbered[0][0]}_")
    for k in range(0, len(chosen), size):
        part = [requests[c.name] for stage in chosen[k:k + size] for c in stage]
        run.plan(list(dict.fromkeys(t for r in part for t in r.tensors)))
        for _, feed in calib.batches(reference, source(), batch_size):
            values = run.run(feed)
            for r in part:
                r.update(*(values[t] for t in r.tensors))
        run.commit()
    return {name: r.result() for name, r in requests.items()}


def _collect(reference: onnx.ModelProto, model: onnx.ModelProto | None, requests: dict[str, "LayerGram"], source,
             batch_size: int) -> dict[str, Gram]:
    """One calibration pass for `requests`: `model` (None: not run) and `reference` each only as far as the
    requests need (upstream_model)."""
    inputs = {v.name for v in reference.graph.input}
    inside = [t for t in dict.fromkeys(t for g in requests.values() for t in g.tensors) if t not in inputs]
    wanted = [t for t in dict.fromkeys(t for g in requests.values() for t in g.reference_tensors) if t not in inputs]
    if model is None:
        return calib.collect(upstream_model(reference, wanted) if wanted else reference, source(), requests,
                             batch_size=batch_size)
    return calib.collect(upstream_model(model, inside) if inside else model, source(), requests,
                         reference=upstream_model(reference, wanted) if wanted else reference, batch_size=batch_size)


def _first_stage(reference: onnx.ModelProto, model: onnx.ModelProto, stage: list[layers.Consumer], source,
                 batch_size: int, segments: tuple[Segments, Segments] | None, ridge: float) -> dict[str, Gram]:
    """{layer name: Gram} of a window's first stage from one pass over the calibration data: `model` to the
    layers' inputs, `reference` to their targets. With `segments` (in this process), each model runs only the
    part no earlier pass ran, from the boundary activations kept; else a calibration.collect on the executor in
    scope, each model from its inputs."""
    requests = {c.name: LayerGram(c, running=_running(model, c, ridge)) for c in stage}
    if segments is None:
        return _collect(reference, model, requests, source, batch_size)
    mine, theirs = segments
    inputs = {v.name for v in model.graph.input}
    mine.plan([c.x for c in stage if c.x not in inputs])
    theirs.plan([c.y for c in stage])
    for _, feed in calib.batches(model, source(), batch_size):
        values, targets = mine.run(feed), theirs.run(feed)
        for c in stage:
            requests[c.name].update(values[c.x], targets[c.y])
    mine.commit()
    theirs.commit()
    return {name: r.result() for name, r in requests.items()}


def _fit_window(model: onnx.ModelProto, window: list[tuple[int, list[layers.Consumer]]], grams: dict[str, Gram],
                ahead: dict[str, Gram], ridge: float, rows: dict[str, LayerReconstruction]) -> int:
    """The solves of `window`, stage by stage (the first stage's sums in `grams`, the later stages' in `ahead`),
    while every layer solved so far in the window reproduces its unpruned output to within SHARE_TOLERANCE; the
    number of stages solved (at least one)."""
    worst = 0.0
    for k, (number, stage) in enumerate(window):
        if k and worst > SHARE_TOLERANCE:
            return k  # the layers before it miss the unpruned input it was fitted on: the next pass re-fits it
        for c in stage:
            _solve(model, c, grams[c.name] if k == 0 else ahead.pop(c.name), ridge, number, rows[c.name])
            worst = max(worst, rows[c.name].error_after)
    return len(window)


@dataclass(frozen=True)
class InputView:
    """A layer's input as the reference model's tensor `name` restricted to `keep` along `axis` (None: whole)."""

    name: str
    axis: int
    keep: np.ndarray | None = None

    def read(self, value: np.ndarray) -> np.ndarray:
        return value if self.keep is None else np.take(value, self.keep, axis=self.axis)


class LayerGram:
    """The calibration statistic of one layer, summed into a Gram (a batch in slices of at most DESIGN_BYTES of
    design rows): its design rows from the model being re-fitted (`tensors`) and its targets from the reference
    (`reference_tensors`); or, with a `view`, both from the model it is collected on (the reference)."""

    def __init__(self, consumer: layers.Consumer, view: InputView | None = None,
                 running: RunningFit | None = None) -> None:
        self.consumer = consumer
        self.view = view
        self.running = running
        self.tensors = (consumer.x,) if view is None else (view.name, consumer.y)
        self.reference_tensors = (consumer.y,) if view is None else ()
        self.gram = Gram()

    def update(self, *arrays: np.ndarray) -> None:
        x, y = arrays if self.view is None else (self.view.read(arrays[0]), arrays[1])
        c = self.consumer
        dtype = np.float32 if _design_size(c, x) * c.columns(x.shape) >= FLOAT32_WORK else np.float64
        for xs, ys in _slices(c, x, y):
            design, target = c.design(xs, dtype), c.target(ys, dtype)
            if self.running is not None and self.gram.rows:
                target = self.running.target(self.gram, design, target)
            self.gram.update(design, target)

    def merge(self, other: "LayerGram") -> None:
        self.gram.merge(other.gram)

    def result(self) -> Gram:
        return self.gram


def _running(model: onnx.ModelProto, c: layers.Consumer, ridge: float) -> RunningFit | None:
    return None if c.bounds is None else RunningFit(c.bounds, c.fit_bias, layers.current(model, c), ridge)


def _design_size(c: layers.Consumer, x: np.ndarray) -> int:
    """About how many elements the design rows of `x` have (im2col multiplies a Conv's input by its kernel size
    over its strides; position thinning not counted)."""
    if c.op_type != "Conv":
        return x.size
    return x.size * int(np.prod(c.attrs["kernel"])) // max(1, int(np.prod(c.attrs["strides"])))


def _slices(c: layers.Consumer, x: np.ndarray, y: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The batch in slices of samples whose design rows take at most DESIGN_BYTES (float64)."""
    n = len(x) if x.ndim > 1 and len(x) == len(y) else 1
    step = max(1, DESIGN_BYTES // max(8 * _design_size(c, x[:1]), 1))
    if n <= step:
        yield x, y
        return
    for start in range(0, n, step):
        yield x[start:start + step], y[start:start + step]


def _window(numbered: list[tuple[int, list[layers.Consumer]]],
            viewed: Callable[[layers.Consumer], bool]) -> list[tuple[int, list[layers.Consumer]]]:
    """The leading stages of `numbered` up to (not including) the next stage with a layer that is not `viewed`
    (its input cannot be read from the reference)."""
    for k in range(1, len(numbered)):
        if not all(viewed(c) for c in numbered[k][1]):
            return numbered[:k]
    return numbered


def _check_passes(passes) -> int | None:
    if passes is None:
        return None
    if isinstance(passes, bool) or not isinstance(passes, (int, np.integer)) or passes < 1:
        raise InvalidRequestError(f"passes must be an integer >= 1 or None (one pass per stage), not {passes!r}")
    return int(passes)


def _solve(model, c: layers.Consumer, gram: Gram, ridge: float, stage: int, row: LayerReconstruction) -> None:
    row.stage, row.unknowns, row.rows = stage, gram.unknowns if c.fit_bias else gram.unknowns - 1, gram.rows
    lam = gram.penalty(ridge)
    row.ridge = float(lam.max())
    if gram.rows < row.unknowns:
        row.note = f"{gram.rows} rows < {row.unknowns} unknowns: the ridge regulariser keeps what the data leave open"
        warnings.warn(f"reconstruction of layer '{c.name}' ({c.op_type}): only {gram.rows} calibration rows "
                      f"(samples x output positions) for {row.unknowns} unknowns per output; the solution is "
                      f"determined by the ridge regulariser (ridge={ridge:g}); pass more calibration samples "
                      "for a better fit", FewSamplesWarning, stacklevel=4)
    before = layers.current(model, c)
    row.error_before = gram.relative_error(before)
    theta = gram.solve(ridge, c.fit_bias, prior=before)
    after = gram.relative_error(theta)
    if not np.all(np.isfinite(theta)) or after >= row.error_before:
        row.error_after = row.error_before
        row.note = ((row.note + "; ") if row.note else "") + "fit not better: weights kept"
        return
    row.error_after = after
    layers.write(model, c, theta)
    row.updated = True


def _stages(index: GraphIndex, consumers: list[layers.Consumer]) -> list[list[layers.Consumer]]:
    """Consumers grouped by the number of consumers upstream on their longest path (linear in the graph)."""
    at = {c.node_index: c for c in consumers}
    ends = {}  # a MatMul's bias Add ends its layer: the Add's output is the layer's
    for c in consumers:
        if c.bias_node is not None:
            ends[c.bias_node] = c
    level: dict[str, int] = {}
    stage_of: dict[str, int] = {}
    for i, node in enumerate(index.nodes):
        depth = max((level.get(t, 0) for t in node.input if t), default=0)
        for attr in node.attribute:  # subgraphs read outer names too: count them
            if attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
                depth = max([depth] + [level.get(t, 0) for t in _outer(attr)])
        if i in at:
            stage_of[at[i].name] = depth
        if i in at or i in ends:
            depth += 1 if i in at and at[i].bias_node is None or i in ends else 0
        for t in node.output:
            level[t] = depth
    count = max(stage_of.values()) + 1
    stages = [[] for _ in range(count)]
    for c in consumers:
        stages[stage_of[c.name]].append(c)
    return [s for s in stages if s]


def _outer(attr: onnx.AttributeProto) -> Iterator[str]:
    graphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
    for g in graphs:
        for node in g.node:
            yield from node.input


def _check_ridge(ridge) -> float:
    try:
        value = float(ridge)
    except (TypeError, ValueError):
        raise InvalidRequestError(f"ridge must be a number >= 0, not {ridge!r}") from None
    if not np.isfinite(value) or value < 0:
        raise InvalidRequestError(f"ridge must be a finite number >= 0, not {ridge!r}")
    return value


def _replayable(calibration: Any, passes: int):
    """A function returning the calibration batches afresh for every pass."""
    if callable(calibration):
        return calibration
    if passes > 1 and isinstance(calibration, Iterator):
        raise InvalidRequestError("reconstruction reads the calibration data once per pass "
                                  f"({passes} passes here), but it was given a one-shot iterator/generator: pass "
                                  "a list, an array, a dict, a .npz/.npy path, or a function returning a fresh "
                                  "iterable")
    return lambda: calibration
