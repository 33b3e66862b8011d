"""Iterative pruning: prune in steps toward a target, fine-tuning (the user's callback) between steps.

    def finetune(model):              # an onnx.ModelProto in, a model (ModelProto or path) out
        ...                           # e.g. onnxprune.torch.apply_pruning + a few epochs + re-export
        return model

    run = op.iterative_prune("model.onnx", target=0.5, steps=4, finetune=finetune, data=(x, y))
    run.model       # the last step's (fine-tuned) model
    run.history     # one dict per step: goal, reduction reached, MACs, params, metric after pruning and tuning

`target` is the fraction of the ORIGINAL model's MACs to remove (`measure="params"`: of its parameters;
`measure="channels"`: of the channels of its prunable groups). Step k of `steps` aims at
`target * k / steps`: a uniform ratio (op.prune(ratio=r), the chosen criterion) is searched on the current
model so that the reduction just reaches that goal; channel counts are whole numbers, so a step lands
at or slightly past its goal (the final reduction is within one step size of the target).

The callback runs after every step (`steps` calls). When it declares a parameter named `result`, it also
gets that step's PruneResult (for `onnxprune.torch.apply_pruning(module, result)`); `step` likewise gets
the step number (1-based). With `data`, the metric (`op.evaluate`) is logged at every step: after
pruning and after fine-tuning, one line per step on `stream` (default stderr; verbose=False: silent).
"""
from __future__ import annotations

import inspect
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, TextIO

import onnx

from onnxprune import ir
from onnxprune.errors import InvalidRequestError
from onnxprune.options import Options

__all__ = ["iterative_prune", "IterativeResult", "MEASURES"]

MEASURES = ("macs", "params", "channels")
_SEARCH_ITERATIONS = 20


@dataclass
class IterativeResult:
    model: onnx.ModelProto
    target: float
    measure: str
    before: int  # the measure on the original model
    history: list[dict] = field(default_factory=list)
    results: list[Any] = field(default_factory=list)  # each step's PruneResult (before fine-tuning)

    @property
    def reduction(self) -> float:
        return self.history[-1]["reduction"] if self.history else 0.0

    def as_dict(self) -> dict:
        return {"target": self.target, "measure": self.measure, "before": self.before, "reduction": self.reduction,
                "history": [dict(h) for h in self.history]}

    def __str__(self) -> str:
        return "\n".join([f"iterative pruning to {self.target:.0%} fewer {self.measure}: reached "
                          f"{self.reduction:.1%} in {len(self.history)} steps"] + [_line(h) for h in self.history])


def iterative_prune(model, target: float, steps: int = 4, finetune: Callable | None = None, *,
                    method: str = "l2", measure: str = "macs", data=None, metric="accuracy",
                    key: str | None = None, options: Options | None = None, calibration=None,
                    batch_size: int | None = None, stream: TextIO | None = None,
                    verbose: bool = True) -> IterativeResult:
    """Prune `model` in `steps` steps to `target` fewer MACs (or params / channels), calling `finetune` after each.

    See the module docstring. method / options / calibration: as in op.prune. data / metric / key /
    batch_size: as in op.evaluate (key: which value to log; default top1 or the metric's only value).
    """
    from onnxprune.pruning import prune
    from onnxprune.stats import stats

    if not isinstance(target, (int, float)) or isinstance(target, bool) or not 0 < float(target) < 1:
        raise InvalidRequestError(f"target must be the fraction to remove, in (0, 1); got {target!r}")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise InvalidRequestError(f"steps must be a positive integer, not {steps!r}")
    if measure not in MEASURES:
        raise InvalidRequestError(f"measure={measure!r} is not one of {list(MEASURES)}")
    if finetune is not None and not callable(finetune):
        raise InvalidRequestError("finetune must be a callable: model in, model out")
    options = options or Options()
    stream = sys.stderr if stream is None else stream
    current = ir.load_model(model)
    count = _counter(measure, options)
    before = count(current)
    if before <= 0:
        raise InvalidRequestError(f"the model has no {measure} to reduce")
    run = IterativeResult(model=current, target=float(target), measure=measure, before=before)
    evaluate_metric = _metric(data, metric, key, batch_size)
    baseline = evaluate_metric(current)
    if verbose and baseline is not None:
        print(f"iterative: step 0: {measure} {before}, {baseline[0]} {baseline[1]:.4f}", file=stream, flush=True)
    for step in range(1, steps + 1):
        goal = float(target) * step / steps
        now = count(current)
        if 1 - now / before >= goal - 1e-12:
            ratio, result = 0.0, None  # already there (an earlier step overshot)
        else:
            ratio, result = _search(prune, current, method, options, calibration, count, before, goal)
        pruned = result.model if result is not None else current
        reached = 1 - count(pruned) / before
        entry = {"step": step, "goal": goal, "ratio": ratio, "reduction": reached, measure: count(pruned)}
        sizes = stats(pruned)
        entry.update(macs=sizes.macs, params=sizes.params)
        after_prune = evaluate_metric(pruned)
        if after_prune is not None:
            entry["metric"] = after_prune[0]
            entry["value_pruned"] = after_prune[1]
        if finetune is not None:
            tuned = _call(finetune, pruned, result, step)
            if tuned is None:
                raise InvalidRequestError(f"the finetune callback returned None at step {step}; it must return the "
                                          "(fine-tuned) model")
            pruned = ir.load_model(tuned)
            after_tune = evaluate_metric(pruned)
            if after_tune is not None:
                entry["value_finetuned"] = after_tune[1]
        run.history.append(entry)
        run.results.append(result)
        current = pruned
        if verbose:
            print("iterative: " + _line(entry), file=stream, flush=True)
    run.model = current
    return run


def _search(prune, model, method, options, calibration, count, before, goal):
    """The smallest uniform ratio whose pruned model reaches `goal` (reduction vs the original)."""
    def attempt(r):
        result = prune(model, method, ratio=r, options=options, calibration=calibration)
        return 1 - count(result.model) / before, result

    hi = 0.95
    reached, best = attempt(hi)
    if reached < goal:
        raise InvalidRequestError(f"the target cannot be reached: pruning every group at ratio {hi} only gives "
                                  f"{reached:.1%} (goal {goal:.1%}); lower target")
    lo, best_ratio = 0.0, hi
    for _ in range(_SEARCH_ITERATIONS):
        mid = (lo + hi) / 2
        reached, result = attempt(mid)
        if reached >= goal:
            hi, best, best_ratio = mid, result, mid
        else:
            lo = mid
        if hi - lo < 1e-3:
            break
    return best_ratio, best


def _counter(measure: str, options: Options) -> Callable[[onnx.ModelProto], int]:
    from onnxprune.stats import stats

    if measure == "macs":
        return lambda m: stats(m).macs
    if measure == "params":
        return lambda m: stats(m).params

    def channels(m):
        from onnxprune.coupling import analyze

        return sum(g.size for g in analyze(m, options).groups if g.prunable)

    return channels


def _metric(data, metric, key, batch_size):
    if data is None:
        return lambda m: None
    from onnxprune.workflows.evaluate import DEFAULT_BATCH_SIZE, evaluate
    from onnxprune.workflows.metric_key import QuietStream, default_key, pick_value

    chosen = [key]

    def run(m):
        values = evaluate(m, data, metric, batch_size=batch_size or DEFAULT_BATCH_SIZE, stream=QuietStream())
        if chosen[0] is None:
            chosen[0] = default_key(values, metric)
        return chosen[0], pick_value(values, chosen[0])

    return run


def _call(finetune, model, result, step):
    try:
        params = inspect.signature(finetune).parameters
    except (TypeError, ValueError):
        params = {}
    kwargs = {}
    if "result" in params:
        kwargs["result"] = result
    if "step" in params:
        kwargs["step"] = step
    return finetune(model, **kwargs)


def _line(h: dict) -> str:
    text = f"step {h['step']}: goal {h['goal']:.1%}, reached {h['reduction']:.1%} (ratio {h['ratio']:.3f})"
    if "macs" in h:
        text += f", MACs {h['macs']}, params {h['params']}"
    if "value_pruned" in h:
        text += f", {h['metric']} {h['value_pruned']:.4f} pruned"
    if "value_finetuned" in h:
        text += f", {h['value_finetuned']:.4f} fine-tuned"
    return text
