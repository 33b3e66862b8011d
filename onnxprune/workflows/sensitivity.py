"""Sensitivity analysis: prune each channel group alone at several ratios and measure what the metric loses.

    result = op.sensitivity(model, (x, y), ratios=(0.25, 0.5, 0.75), method="l2")
    print(result.table())              # one row per group: the metric drop at every ratio, MACs saved
    result.save_json("sens.json")      # everything measured, plus the recommendation if one was made
    result.plot("sens.png")            # needs matplotlib: pip install "onnxprune[plot]"
    rec = result.recommend(0.5)        # per-layer ratios for 50% fewer MACs, cheapest drop first
    pruned = op.prune(model, "l2", ratios=rec.ratios)

Every prunable channel group is pruned ALONE (`op.prune(model, method, ratios={layer: r})` on one layer of
the group: the whole group loses the same channels) and evaluated with `op.evaluate` on the user's data.

The metric: `metric="accuracy"` (default; judged on `key="top1"`), or a callable `metric(outputs, labels)`
as in `op.evaluate` (judged on its value, or `key=` of its dict). With `labels=None` in the data (inputs
only), the metric is the top-1 agreement with the unpruned model (`key="agreement"`). The drop is
`baseline - value` (`higher_is_better=False` for losses: `value - baseline`).

The recommendation (`result.recommend(target)`) turns the curves into per-layer ratios for a target MACs
reduction (`target=0.5`: half the MACs go): every group starts at ratio 0; repeatedly the group whose next
measured ratio costs the least metric drop per MAC saved moves up, until the real pruned model (the ratios
applied together, MACs counted) reaches the target. Drops are assumed to add up (`expected_drop`); MACs
are counted on the actually pruned model, since pruning two neighbouring groups saves less than the sum.
"""
from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass, field
from typing import Any, TextIO

import onnx

from onnxprune import ir
from onnxprune.allocation import check_ratio, find_layer
from onnxprune.coupling import analyze
from onnxprune.text import human, table
from onnxprune.errors import InvalidRequestError, MissingExtraError
from onnxprune.files import write_text
from onnxprune.executor import resolve
from onnxprune.workflows.metric_key import QuietStream, default_key, pick_value
from onnxprune.options import Options
from onnxprune.progress import Bar

__all__ = ["sensitivity", "SensitivityResult", "SensitivityCurve", "Recommendation", "MissingExtraError",
           "DEFAULT_RATIOS"]

DEFAULT_RATIOS = (0.1, 0.25, 0.5, 0.75)


@dataclass
class SensitivityCurve:
    """One channel group pruned alone: per ratio, the metric and what it saved."""

    group: int
    layer: str  # the layer named in ratios={layer: r} (the group's first layer)
    layers: list[str]
    size: int  # channels (units) of the group
    points: list[dict] = field(default_factory=list)  # ratio, kept, value, drop, macs, macs_saved

    def drop_at(self, ratio: float) -> float:
        for p in self.points:
            if math.isclose(p["ratio"], ratio):
                return p["drop"]
        raise KeyError(ratio)

    def as_dict(self) -> dict:
        return {"group": self.group, "layer": self.layer, "layers": list(self.layers), "size": self.size,
                "points": [dict(p) for p in self.points]}


@dataclass
class Recommendation:
    """Per-layer ratios for a MACs target (feed `ratios` to `op.prune(model, method, ratios=...)`)."""

    target: float  # fraction of MACs to remove
    ratios: dict[str, float]  # {layer: ratio}, one layer per pruned group
    macs_before: int
    macs_after: int  # counted on the model pruned with `ratios`
    expected_drop: float  # sum of the measured single-group drops at the chosen ratios
    method: str = "l2"

    @property
    def reduction(self) -> float:
        return 1.0 - self.macs_after / self.macs_before if self.macs_before else 0.0

    def as_dict(self) -> dict:
        return {"target": self.target, "ratios": dict(self.ratios), "macs_before": self.macs_before,
                "macs_after": self.macs_after, "reduction": self.reduction, "expected_drop": self.expected_drop,
                "method": self.method}

    def __str__(self) -> str:
        lines = [f"recommendation for {self.target:.0%} fewer MACs: {self.reduction:.1%} fewer "
                 f"({human(self.macs_before)} -> {human(self.macs_after)}), expected drop "
                 f"{self.expected_drop:.4g} (single-group drops added)"]
        lines += [f"  {layer}: {ratio:g}" for layer, ratio in self.ratios.items()]
        if not self.ratios:
            lines.append("  (nothing to prune)")
        return "\n".join(lines)


@dataclass
class SensitivityResult:
    key: str  # the metric judged
    baseline: float
    higher_is_better: bool
    method: str
    ratios: list[float]
    macs: int  # MACs of the unpruned model
    curves: list[SensitivityCurve]
    n: int = 0  # samples evaluated
    recommendation: Recommendation | None = None
    _model: onnx.ModelProto | None = field(default=None, repr=False)
    _options: Options | None = field(default=None, repr=False)
    _calibration: Any = field(default=None, repr=False)

    # ---- views -----------------------------------------------------------------------
    def as_dict(self) -> dict:
        data = {"format": "onnxprune-sensitivity/1", "metric": self.key, "baseline": self.baseline,
                "higher_is_better": self.higher_is_better, "method": self.method, "ratios": list(self.ratios),
                "macs": self.macs, "n": self.n, "curves": [c.as_dict() for c in self.curves]}
        if self.recommendation is not None:
            data["recommendation"] = self.recommendation.as_dict()
        return data

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=1)

    def save_json(self, path: str | os.PathLike) -> None:
        write_text(path, self.to_json() + "\n")

    def table(self) -> str:
        header = ["group", "layer", "size"] + [f"drop@{r:g}" for r in self.ratios] + \
                 [f"MACs saved@{self.ratios[-1]:g}"]
        rows = []
        for c in self.curves:
            drops = {round(p["ratio"], 9): p["drop"] for p in c.points}
            last = c.points[-1]["macs_saved"] if c.points else 0
            rows.append([c.group, c.layer, c.size] + [f"{drops[round(r, 9)]:+.4f}" if round(r, 9) in drops else "-"
                                                      for r in self.ratios]
                        + [f"{last / self.macs:.1%}" if self.macs else "-"])
        title = (f"sensitivity of {self.key} (baseline {self.baseline:.4f}, n={self.n}) to pruning each group alone "
                 f"with '{self.method}'; drop = {'baseline - value' if self.higher_is_better else 'value - baseline'}")
        return title + "\n" + table(rows, header)

    def __str__(self) -> str:
        text = self.table()
        if self.recommendation is not None:
            text += "\n\n" + str(self.recommendation)
        return text

    def plot(self, path: str | os.PathLike, *, title: str | None = None) -> str:
        """Write a PNG of the drop-vs-ratio curves (one line per group). Needs matplotlib."""
        plt = load_pyplot()
        fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
        try:
            for c in self.curves:
                xs = [0.0] + [p["ratio"] for p in c.points]
                ys = [0.0] + [p["drop"] for p in c.points]
                ax.plot(xs, ys, marker="o", linewidth=1.2, markersize=3, label=f"{c.layer} ({c.size})")
            ax.axhline(0.0, color="grey", linewidth=0.6)
            ax.set_xlabel("ratio of the group's channels removed")
            ax.set_ylabel(f"{self.key} drop")
            ax.set_title(title or f"Sensitivity ({self.method}; baseline {self.key} {self.baseline:.4f})")
            ax.grid(alpha=0.3)
            if len(self.curves) <= 20:
                ax.legend(fontsize=6, loc="upper left", ncol=1 if len(self.curves) <= 10 else 2)
            fig.tight_layout()
            _make_parent(path)
            fig.savefig(path, format="png")
        finally:
            plt.close(fig)
        return str(path)

    # ---- the recommendation ------------------------------------------------------------
    def recommend(self, target: float, *, max_drop: float | None = None) -> Recommendation:
        """Per-layer ratios (among the measured ones) for `target` fewer MACs (0.5: half).

        Greedy: repeatedly move the group whose next measured ratio costs the least drop per MAC saved.

        max_drop: never pick a ratio whose single-group drop exceeds it.
        """
        if not isinstance(target, (int, float)) or not 0 < float(target) < 1:
            raise InvalidRequestError(f"target must be the fraction of MACs to remove, in (0, 1); got {target!r}")
        if self._model is None:
            raise InvalidRequestError("this sensitivity result has no model attached (loaded from JSON?); "
                                      "run op.sensitivity again to recommend")
        from onnxprune.pruning import prune

        target = float(target)
        level = {c.group: -1 for c in self.curves}  # index into c.points; -1: not pruned
        curves = {c.group: c for c in self.curves}

        def saved(c, k):
            return 0 if k < 0 else c.points[k]["macs_saved"]

        def drop(c, k):
            return 0.0 if k < 0 else max(0.0, c.points[k]["drop"])

        def ratios_now():
            return {curves[g].layer: curves[g].points[k]["ratio"] for g, k in level.items() if k >= 0}

        def measured(ratios):
            if not ratios:
                return self.macs
            result = prune(self._model, self.method, ratios=ratios, options=self._options,
                           calibration=self._calibration)
            return result.summary.after.macs

        goal = target * self.macs
        macs_after = self.macs
        while True:
            best = None
            for g, k in level.items():
                c = curves[g]
                for j in range(k + 1, len(c.points)):
                    if max_drop is not None and c.points[j]["drop"] > max_drop:
                        break
                    gain = saved(c, j) - saved(c, k)
                    if gain <= 0:
                        continue
                    cost = (drop(c, j) - drop(c, k)) / gain
                    if best is None or cost < best[0] - 1e-15:
                        best = (cost, g, j)
                    break  # one measured step at a time: a long jump into a flat (chance-level) region
                    # of a curve looks cheap per MAC and would overshoot the target
            if best is None:
                raise InvalidRequestError(
                    f"cannot reach {target:.0%} fewer MACs with the measured ratios (up to {max(self.ratios):g}"
                    + (f", drop <= {max_drop:g}" if max_drop is not None else "")
                    + f"): the best found removes {1 - macs_after / self.macs:.1%}; measure higher ratios")
            _, g, j = best
            level[g] = j
            estimate = sum(saved(curves[h], k) for h, k in level.items())
            if estimate >= goal:
                macs_after = measured(ratios_now())
                if self.macs - macs_after >= goal - 0.5:
                    break
        ratios = ratios_now()
        rec = Recommendation(target=target, ratios=ratios, macs_before=self.macs, macs_after=macs_after,
                             expected_drop=sum(drop(curves[g], k) for g, k in level.items()), method=self.method)
        self.recommendation = rec
        return rec


def sensitivity(model, data, *, ratios=DEFAULT_RATIOS, method: str = "l2", metric="accuracy",
                key: str | None = None, higher_is_better: bool = True, layers: list[str] | None = None,
                options: Options | None = None, calibration=None, batch_size: int | None = None,
                output: str | None = None, target: float | None = None, stream: TextIO | None = None,
                verbose: bool = False, executor: Any = None) -> SensitivityResult:
    """Prune every prunable channel group alone at each ratio and measure the metric drop on `data`.

    data: as in `op.evaluate` ((inputs, labels) or an iterable of batches); labels None: agreement with the
        unpruned model is the metric.
    ratios: fractions of each group's channels to remove (sorted; each in (0, 1)).
    method: the criterion choosing which channels go (as in `op.prune`); calibration: for data criteria.
    layers: only the groups of these layers (default: every prunable group).
    target: also make a recommendation for this fraction of MACs removed (`result.recommendation`).
    verbose: one line per group on `stream` (default stderr), as its last ratio finishes, beside the progress bar
        (shown on a terminal).
    executor: where the (group, ratio) candidates are pruned and evaluated: None (this process), "ray" (one
        Ray task per candidate; the model and data go to the object store once); see onnxprune.executor.
    """
    from onnxprune.workflows.evaluate import DEFAULT_BATCH_SIZE, evaluate
    from onnxprune.stats import stats

    ratios = _check_ratios(ratios)
    model = ir.load_model(model)
    options = options or Options()
    analysis = analyze(model, options)
    groups = _groups(analysis, layers)
    batch_size = DEFAULT_BATCH_SIZE if batch_size is None else batch_size
    stream = sys.stderr if stream is None else stream
    executor = resolve(executor)
    labelled = _has_labels(data)
    if not labelled:
        key = key or "agreement"
        metric = "accuracy"
    if labelled:
        first = evaluate(model, data, metric, batch_size=batch_size, output=output, stream=QuietStream(),
                         executor=executor)
        key = key or default_key(first, metric)
        baseline, n = pick_value(first, key), int(first.get("n", 0))
    else:
        baseline, n = 1.0, _count(data)
    sweep = Sweep(model, data, method, options, calibration, metric, key, labelled, batch_size, output)
    candidates = [(number, group.layers[0], ratio) for number, group in enumerate(groups) for ratio in ratios]
    left = {number: len(ratios) for number in range(len(groups))}
    macs = stats(model, shapes=analysis.channels.shapes).macs
    curves = [SensitivityCurve(group=g.id, layer=g.layers[0], layers=list(g.layers), size=g.size) for g in groups]

    points: dict[int, dict] = {}

    def finished(k: int, found: tuple[float, int, float] | None) -> None:
        number, _, ratio = candidates[k]
        group = groups[number]
        if found is None:  # the ratio rounds to no channel removed
            value, after, kept = baseline, macs, group.size
        else:
            value, after, achieved = found
            kept = group.size - round(achieved * group.size)
        drop = baseline - value if higher_is_better else value - baseline
        points[k] = {"ratio": ratio, "kept": int(kept), "value": float(value), "drop": float(drop),
                     "macs": int(after), "macs_saved": int(macs - after)}
        left[number] -= 1
        bar.update()
        if verbose and not left[number]:
            drops = [points[j]["drop"] for j, c in enumerate(candidates) if c[0] == number]
            bar.write(f"sensitivity: group {number + 1}/{len(groups)} ({group.layers[0]}, {group.size} channels): "
                      "drops " + ", ".join(f"{d:+.4f}" for d in drops))

    with Bar("sensitivity", len(candidates), unit="model", stream=stream) as bar:
        executor.map(measure_candidate, sweep, candidates, on_done=finished,
                     names=lambda k, c: f"sensitivity of group {groups[c[0]].id} ({c[1]}) at ratio {c[2]:g}")
    for k, (number, _, _) in enumerate(candidates):
        curves[number].points.append(points[k])
    result = SensitivityResult(key=key, baseline=float(baseline), higher_is_better=higher_is_better,
                               method=str(method), ratios=list(ratios), macs=int(macs), curves=curves, n=n,
                               _model=model, _options=options, _calibration=calibration)
    if target is not None:
        result.recommend(target)
    return result


@dataclass
class Sweep:
    """What every candidate of a sensitivity sweep needs (shared by all tasks)."""

    model: onnx.ModelProto
    data: Any
    method: str
    options: Options
    calibration: Any
    metric: Any
    key: str
    labelled: bool  # False: the metric is the agreement with `model`
    batch_size: int
    output: str | None


def measure_candidate(sweep: Sweep, candidate: tuple[int, str, float]) -> tuple[float, int, float] | None:
    """Prune one layer's group at one ratio and evaluate it: (value, MACs after, achieved ratio), or None when
    the ratio rounds to no channel removed."""
    from onnxprune.pruning import prune
    from onnxprune.workflows.evaluate import evaluate

    _, layer, ratio = candidate
    result = prune(sweep.model, sweep.method, ratios={layer: ratio}, options=sweep.options,
                   calibration=sweep.calibration)
    if not result.pruned_groups:
        return None
    values = evaluate(result.model, sweep.data, sweep.metric, reference=None if sweep.labelled else sweep.model,
                      batch_size=sweep.batch_size, output=sweep.output, stream=QuietStream())
    return pick_value(values, sweep.key), result.summary.after.macs, result.achieved_ratio


# ---- helpers ---------------------------------------------------------------------------

def _check_ratios(ratios) -> list[float]:
    if isinstance(ratios, (int, float)):
        ratios = [ratios]
    try:
        values = sorted({float(r) for r in ratios})
    except (TypeError, ValueError):
        raise InvalidRequestError(f"ratios must be a list of fractions in (0, 1), not {ratios!r}") from None
    if not values:
        raise InvalidRequestError("ratios is empty: give at least one fraction in (0, 1)")
    for r in values:
        check_ratio(r, "a sensitivity ratio")
        if r <= 0:
            raise InvalidRequestError("sensitivity ratios must be > 0 (ratio 0 is the baseline)")
    return values


def _groups(analysis, layers):
    prunable = [g for g in analysis.groups if g.prunable]
    if layers is None:
        if not prunable:
            raise InvalidRequestError("the model has no prunable channel group (`onnxprune inspect MODEL` explains)")
        return prunable
    chosen: dict[int, Any] = {}
    for name in layers:
        layer = find_layer(analysis, name)
        group = analysis.groups[layer.group]
        if not group.prunable:
            raise InvalidRequestError(f"layer '{name}' ({layer.op_type}) cannot be pruned: {group.reason}")
        chosen.setdefault(group.id, group)
    return [chosen[g] for g in sorted(chosen)]


def _has_labels(data) -> bool:
    if isinstance(data, tuple) and len(data) == 2:
        return data[1] is not None
    return True  # an iterable of batches: evaluate checks the labels


def _count(data) -> int:
    if isinstance(data, tuple) and len(data) == 2:
        inputs = data[0]
        first = next(iter(inputs.values())) if isinstance(inputs, dict) else inputs
        return int(len(first))
    return 0


def load_pyplot():
    """matplotlib.pyplot on the Agg backend, or MissingExtraError when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError:
        raise MissingExtraError('plotting needs matplotlib, which is not installed: pip install "onnxprune[plot]" '
                                "(or pip install matplotlib); the table and JSON need nothing extra") from None
    return plt


def _make_parent(path) -> None:
    parent = os.path.dirname(os.path.abspath(os.fspath(path)))
    os.makedirs(parent, exist_ok=True)
