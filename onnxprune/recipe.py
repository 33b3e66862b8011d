"""The recommended pipeline: what `op.prune` does when no `method=` is named.

With calibration data: the `obs` criterion (the error a channel's removal leaves after the least-squares re-fit
of the layers reading it, onnxprune.criteria.refit_error), the global scope with `layer_norm="tss_norm"` (each
unit's share of its group's total error; "linear_scaling" maps every group's cheapest unit to 0, whatever it costs)
(a budget such as target_macs= is met by the smallest pooled ratio that reaches it, onnxprune.budget_ratio),
then mean compensation and least-squares reconstruction; with reconstruct=False (compensation alone) the
`fluctuation` criterion (the error left under mean compensation, onnxprune.criteria.data) with
`layer_norm="linear_scaling"`.
Without data: `l2` scoring the consumer slices too (`score_consumers=True`), the same allocation, no recovery
(both need data), and a note that calibration data would help; that `l2` too when both recoveries are turned
off. A latency budget keeps its measured knapsack (onnxprune.latency_target) with `max_ratio=0.7`, raised to 0.9
(`relaxed`) when the target measures out of reach at 0.7; with the re-fit, the uniform cut closed on measurement
to the same budget is re-fitted too, and the one whose outputs stay closer to the original's on the calibration
data is the result (`checks_allocation`; `Recipe.allocation` says which and why).
Each choice is the one measured best on the digits CNNs (benchmarks/recovery.py, README "The recommended
pipeline").

Naming `method=` is the explicit pipeline (NetsPresso's meaning): the knobs not given keep their explicit
defaults (scope uniform, a budget by the knapsack, options as given or Options(), no compensation or
reconstruction). Without `method=`, any knob given (scope=, options=, compensate=, reconstruct=) wins over the
recipe's choice for it.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace

from onnxprune.errors import InvalidRequestError
from onnxprune.options import Options

DATA_METHOD = "obs"  # scores the error left after the re-fit that reconstruction performs
COMPENSATION_METHOD = "fluctuation"  # scores the error left under mean compensation alone
DATA_FREE_METHOD = "l2"
RECOMMENDED_LAYER_NORM = "linear_scaling"
DATA_LAYER_NORM = "tss_norm"  # obs scores: each group's share of the error its removal would leave in full
LATENCY_MAX_RATIO = 0.7
LATENCY_RELAXED_MAX_RATIO = 0.9  # when the target measures out of reach at LATENCY_MAX_RATIO
NO_DATA_NOTE = ("no calibration data, so data-free choices (l2 with consumer slices, no compensation or "
                "reconstruction); calibration data would help: with a few hundred training inputs (calibration=, "
                "CLI --calibration) the pipeline picks a data-aware criterion and re-fits the pruned layers, "
                "which keeps far more accuracy")


@dataclass(frozen=True)
class Recipe:
    """The pipeline a prune() call runs; `chosen` names the knobs the recipe set (the others were given)."""

    method: str
    scope: str
    options: Options
    compensate: bool
    reconstruct: bool
    chosen: tuple[str, ...] = ()
    note: str | None = None
    allocation: str | None = None  # a latency budget's knapsack-or-uniform choice, and why (checks_allocation)

    @property
    def recommended(self) -> bool:
        return bool(self.chosen)

    def as_dict(self) -> dict:
        return {"method": self.method, "scope": self.scope, "layer_norm": self.options.layer_norm,
                "score_consumers": self.options.score_consumers, "max_ratio": self.options.max_ratio,
                "compensate": self.compensate, "reconstruct": self.reconstruct, "chosen": list(self.chosen),
                **({"note": self.note} if self.note else {}),
                **({"allocation": self.allocation} if self.allocation else {})}

    def __str__(self) -> str:
        def mark(knob: str, text: str) -> str:
            return text + (" (recommended)" if knob in self.chosen else "")

        recovery = [step for step, on in (("compensate", self.compensate), ("reconstruct", self.reconstruct)) if on]
        parts = [mark("method", f"method {self.method}" + (" +consumers" if self.options.score_consumers else "")),
                 mark("scope", f"scope {self.scope}"),
                 mark("options", f"layer_norm {self.options.layer_norm}, max_ratio {self.options.max_ratio:g}"),
                 mark("recovery", "then " + " + ".join(recovery) if recovery else "no recovery")]
        text = "pipeline: " + "; ".join(parts)
        text += f"\nallocation: {self.allocation}" if self.allocation else ""
        return text + (f"\nnote: {self.note}" if self.note else "")


def recommend(method: str | None, scope: str | None, options: Options | None, compensate: bool | None,
              reconstruct: bool | None, calibration, budget_kind: str | None, allotted: bool = False) -> Recipe:
    """The pipeline to run: given knobs as they are, the unset ones filled (see the module doc). `allotted`: the
    request fixes each group's ratio itself (ratios= per layer, recommendation="slamp"), so the scope is uniform."""
    for flag, value in (("compensate", compensate), ("reconstruct", reconstruct)):
        if value is not None and not isinstance(value, bool):
            raise InvalidRequestError(f"{flag}={value!r} must be True, False or None (None: the recommended choice)")
    if options is not None and not isinstance(options, Options):
        raise InvalidRequestError(f"options= must be an op.Options, not {type(options).__name__}")
    if method is not None:
        return Recipe(method, scope or ("knapsack" if budget_kind else "uniform"), options or Options(),
                      bool(compensate), bool(reconstruct))
    data = calibration is not None
    chosen = ["method"]
    if scope is None and allotted:
        scope = "uniform"
    elif scope is None:
        chosen.append("scope")
        scope = "knapsack" if budget_kind == "latency" else "global"
    if compensate is None or reconstruct is None:
        chosen.append("recovery")
    compensate = data if compensate is None else compensate
    reconstruct = data if reconstruct is None else reconstruct
    # each data criterion scores the error its recovery leaves; without any recovery, consumer-aware l2
    method = (DATA_METHOD if reconstruct else COMPENSATION_METHOD if compensate else DATA_FREE_METHOD) if data \
        else DATA_FREE_METHOD
    if options is None:
        chosen.append("options")
        layer_norm = DATA_LAYER_NORM if (method, scope) == (DATA_METHOD, "global") else RECOMMENDED_LAYER_NORM
        options = Options(layer_norm=layer_norm, score_consumers=method == DATA_FREE_METHOD,
                          **({"max_ratio": LATENCY_MAX_RATIO} if scope == "knapsack" else {}))
    return Recipe(method, scope, options, compensate, reconstruct, tuple(chosen), None if data else NO_DATA_NOTE)


def relaxed(recipe: Recipe) -> Recipe | None:
    """The recipe with the latency knapsack's max_ratio raised to LATENCY_RELAXED_MAX_RATIO, when the recipe chose
    the options and a raise is possible; None otherwise (a user's max_ratio is theirs)."""
    if "options" not in recipe.chosen or recipe.scope != "knapsack" \
            or recipe.options.max_ratio >= LATENCY_RELAXED_MAX_RATIO:
        return None
    return replace(recipe, options=replace(recipe.options, max_ratio=LATENCY_RELAXED_MAX_RATIO))


def checks_allocation(recipe: Recipe, budget_kind: str | None, calibration) -> bool:
    """Whether the pipeline also cuts the uniform alternative to its latency knapsack and keeps the one whose
    re-fitted model stays closer to the original on the calibration data (onnxprune.pruning): when the recipe
    chose the scope and re-fits, the budget is latency, and the data can be read again (not a one-shot
    iterator)."""
    return ("scope" in recipe.chosen and recipe.scope == "knapsack" and budget_kind == "latency"
            and recipe.reconstruct and calibration is not None and not isinstance(calibration, Iterator))
