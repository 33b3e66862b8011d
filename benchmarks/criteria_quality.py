#!/usr/bin/env python
"""Accuracy right after pruning (no fine-tuning) at 30% and 50% fewer MACs, for every criterion and scope.

    python benchmarks/criteria_quality.py [--quick] [--seconds 60] [--epochs N] [--models residual,dwse,concat]
                                          [--criteria l2,gm,...] [--seeds 5] [--steps 7] [--size 12]
                                          [--consumers both|off|on] [--train-seed 0]
                                          [--pipeline-targets 0.3,0.5,0.8] [--pipeline-only] [--cache DIR]

Three small CNNs (benchmarks/_digits.py: residual, depthwise-separable + SE, inception-style concat) are
trained on scikit-learn's load_digits (8x8 digits upsampled to --size, fixed stratified split: 1347 train /
450 test; CPU, fixed seeds) for about --seconds each, exported with the legacy ONNX exporter, then pruned by
every criterion in onnxprune.criteria.CRITERIA with
    scope="uniform", recommendation="slamp" and scope="global"
at the ratio that removes 30% and 50% of the model's MACs (onnxprune.stats; found per model / criterion /
scope by bracketing search on `ratio`, --steps evaluations at most; the closest evaluated point is used).
Each pruned model's accuracy on the TEST split is computed with onnxruntime; `random` is the mean over
--seeds seeds (min..max in the note).

Inputs of the criteria:
  * the default export (eval mode, BatchNormalization folded into the Convs) for the weight- and data-based
    criteria; the weight criteria therefore see the folded filters (BN scale included);
  * an export with BN kept (do_constant_folding=False, TrainingMode.PRESERVE; rows marked "BN") for
    `bn_scale` (|gamma|) and `taylor`, whose gradients are keyed by initializer name: that export keeps the
    torch parameter names. taylor's |w * g| per channel is the same on the folded graph (w' = s w,
    g' = g / s per channel), so both exports give the same selection; the pruned models compute the same
    function as their folded counterparts, so accuracies are comparable;
  * calibration for nn / activation / snp: --calibration (256) TRAINING images, never test images;
  * gradients for taylor: dL/dw of the cross-entropy summed over 256 other training images, eval mode.
bn_scale is also tried on the folded export to show the library's message (printed under the table).
The weight criteria l1, l2, gm, lamp and snp (which falls back to l2 outside attention) run twice: with the
library default (producer slices only) and, in rows marked "+cons", with Options(score_consumers=True)
(the consumer slices too, as Torch-Pruning scores a group); --consumers off / on keeps one of the two.

Uniform and SLAMP removal counts do not depend on the criterion (uniform: the same ratio in every group;
SLAMP: per-group ratios from LAMP scores), so their ratio is searched once per model (with l2; SLAMP once per
score_consumers setting, which changes the LAMP scores) and reused;
the achieved MACs reduction is still measured for every row. The global scope allocates by the criterion's
own normalised scores, so its ratio is searched per criterion (and per random seed).

The search prunes the same model many times: each criterion's scores are computed once per model and
replayed through a wrapper registered with onnxprune.register_criterion (the wrapper calls the real
criterion the first time, so errors and warnings are the library's own).

A criterion that raises onnxprune.OnnxPruneError is reported as "n/a (message)". The last lines per model
name the informed criteria whose accuracy beats random's mean (same scope and target); the final table sums
that up over all models, scopes and targets per row: cells won against random and the mean and smallest
margin (accuracy minus random's mean), plain and with mean compensation.
Last, the recommended pipeline on each model (benchmarks/_pipeline.py: `op.prune(model, target_macs=1 - t,
calibration=...)` with nothing else given, and the default criterion with compensation only beside random with
the same allocation, mean of --seeds seeds); --pipeline-only runs that table alone, --cache DIR (with --epochs)
keeps the trained models for later runs.
Full run: ~3 x --seconds of training plus ~2 minutes of pruning (~5.5 min here); --quick: 20 s of training per
model, 2 random seeds, 5 search steps.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for _p in (ROOT, HERE):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import numpy as np  # noqa: E402
import torch  # noqa: E402

import onnxprune as op  # noqa: E402
from onnxprune.criteria import CRITERIA  # noqa: E402
from onnxprune.reconstruction import compensate_pruned  # noqa: E402

import _digits  # noqa: E402
import _pipeline  # noqa: E402

SCOPES = (("uniform", {"scope": "uniform"}), ("slamp", {"recommendation": "slamp"}), ("global", {"scope": "global"}))
BN_VARIANT = {"bn_scale", "taylor"}  # run on the export that keeps BatchNormalization and parameter names
# weight criteria whose scores change with Options.score_consumers: also run with it on ("+cons" rows)
CONSUMER_VARIANT = {"l1", "l2", "gm", "lamp", "snp"}
CONSUMER_SUFFIX = " +cons"
MEMO_PREFIX = "_bench_memo_"


# --------------------------------------------------------------------------- memoised criteria

class Memo:
    """Scores (or the error) of each criterion, computed once per (model, criterion, seed, groups, options)."""

    def __init__(self):
        self.model_key = None
        self.cache: dict = {}
        self.notes: dict = {}  # (model_key, name) -> warning texts from the first computation
        self.seconds: dict = {}  # (model_key, name) -> time of the first computation

    def register(self, name: str) -> str:
        original = CRITERIA[name]

        def memoised(ctx):
            key = (self.model_key, name, ctx.seed, tuple(ctx.groups), ctx.options)
            if key not in self.cache:
                start = time.perf_counter()
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    try:
                        self.cache[key] = ("ok", original(ctx))
                    except op.OnnxPruneError as e:
                        self.cache[key] = ("error", e)
                self.seconds.setdefault((self.model_key, name), time.perf_counter() - start)
                texts = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
                if texts:
                    self.notes.setdefault((self.model_key, name), texts)
            kind, value = self.cache[key]
            if kind == "error":
                raise value
            return value

        op.register_criterion(MEMO_PREFIX + name, memoised)
        return MEMO_PREFIX + name


# --------------------------------------------------------------------------- search

class Point:
    __slots__ = ("ratio", "reduction", "result")

    def __init__(self, ratio, reduction, result):
        self.ratio, self.reduction, self.result = ratio, reduction, result


def macs_reduction(result) -> float:
    return 1.0 - result.summary.after.macs / result.summary.before.macs


def search(prune_at, target: float, steps: int, tol: float = 0.005, hi_ratio: float = 0.95) -> Point:
    """The evaluated ratio whose MACs reduction is closest to `target` (ties: the one at or above it).

    MACs reduction grows with the ratio in steps (channel rounding); regula falsi inside a bracket that starts
    at (0, 0) and (hi_ratio, unknown), first guess 1 - sqrt(1 - target) (two pruned sides per layer).
    """
    points: list[Point] = []
    lo = Point(0.0, 0.0, None)
    hi = None
    ratio = min(hi_ratio, 1.0 - math.sqrt(1.0 - target))
    for _ in range(steps):
        result = prune_at(ratio)
        p = Point(ratio, macs_reduction(result), result)
        points.append(p)
        if abs(p.reduction - target) <= tol:
            break
        if p.reduction < target:
            lo = p
        else:
            hi = p
        if hi is None:
            if lo.ratio >= hi_ratio - 1e-9:
                break
            # extrapolate from the origin, at least a little further
            ratio = min(hi_ratio, max(lo.ratio * 1.15, lo.ratio * target / max(lo.reduction, 1e-6)))
        else:
            span = hi.reduction - lo.reduction
            guess = lo.ratio + (target - lo.reduction) * (hi.ratio - lo.ratio) / span if span > 0 else None
            mid = 0.5 * (lo.ratio + hi.ratio)
            # regula falsi, kept away from the bracket ends (the function is a staircase)
            if guess is None or not (lo.ratio + 0.1 * (hi.ratio - lo.ratio) <= guess <= hi.ratio - 0.1 * (hi.ratio - lo.ratio)):
                guess = mid
            if hi.ratio - lo.ratio < 1e-3:
                break
            ratio = guess
    return min(points, key=lambda p: (abs(p.reduction - target), p.reduction < target))


# --------------------------------------------------------------------------- one model

def spread(values: list[float]) -> str:
    return f"{min(values):.1%}..{max(values):.1%}" if len(values) > 1 else ""


def short(error: Exception, limit: int = 110) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:limit]}{'...' if len(text) > limit else ''}"


class Row:
    def __init__(self, criterion: str, scope: str, variant: str, consumers: bool = False):
        self.criterion, self.scope, self.variant = criterion, scope, variant
        self.label = criterion + (CONSUMER_SUFFIX if consumers else "")
        # target -> (reduction, accuracy, accuracy with mean compensation, extra, extra with compensation)
        self.cells: dict[float, tuple[float, float, float, str, str]] = {}
        self.error: str | None = None
        self.note = ""


def entries(criteria: list[str], consumers: str) -> list[tuple[str, bool]]:
    """(criterion, score_consumers) rows to run: --consumers off / on / both (weight criteria only)."""
    rows = []
    for c in criteria:
        if c not in CONSUMER_VARIANT or consumers == "off":
            rows.append((c, False))
        elif consumers == "on":
            rows.append((c, True))
        else:
            rows += [(c, False), (c, True)]
    return rows


def run_model(name: str, data: _digits.Digits, args, memo: Memo, criteria: list[str]) -> dict:
    t0 = time.perf_counter()
    net = _digits.build(name, seed=args.train_seed)
    log = _digits.train(net, data, args.seconds, epochs=args.epochs, seed=args.train_seed)
    t_train = time.perf_counter() - t0
    folded = _digits.export_onnx(net, data.size)
    with_bn = _digits.export_onnx(net, data.size, fold_bn=False)
    x_test, y_test = data.x_test, data.y_test
    base_acc = _digits.onnx_accuracy(folded, x_test, y_test)
    bn_acc = _digits.onnx_accuracy(with_bn, x_test, y_test)
    calibration = data.calibration(args.calibration, seed=0)
    rng = np.random.default_rng(1)
    grad_index = rng.choice(len(data.x_train), size=256, replace=False)
    gradients, unmapped = _digits.onnx_gradients(net, with_bn, data.x_train[grad_index], data.y_train[grad_index])
    models = {"folded": folded, "BN": with_bn}
    options = {flag: op.Options(step_size=args.step_size, score_consumers=flag) for flag in (False, True)}
    before = op.stats(folded)

    def prune(criterion: str, variant: str, ratio: float, scope_kwargs: dict, seed: int = 0,
              consumers: bool = False):
        memo.model_key = (name, variant)
        kwargs = {"calibration": calibration}
        if variant == "BN":
            kwargs["gradients"] = gradients
        return op.prune(models[variant], method=memo_names[criterion], ratio=ratio, seed=seed,
                        options=options[consumers], **scope_kwargs, **kwargs)

    memo_names = {c: memo.register(c) for c in criteria}
    seeds = list(range(args.seeds))
    t1 = time.perf_counter()
    # shared ratios for the criterion-independent allocations: one search per export; SLAMP's LAMP scores
    # read the weights, so SLAMP also searches once per score_consumers setting
    runs = entries(criteria, args.consumers)

    def shared_key(scope: str, variant: str, consumers: bool, target: float) -> tuple[str, str, bool, float]:
        return scope, variant, consumers and scope == "slamp", target

    shared: dict[tuple[str, str, bool, float], float] = {}
    for scope, kw in SCOPES:
        if scope == "global":
            continue
        for target in args.targets:
            for key in sorted({shared_key(scope, "BN" if c in BN_VARIANT else "folded", flag, target)
                               for c, flag in runs}):
                _, variant, flag, _ = key
                shared[key] = search(lambda r: prune("l2", variant, r, kw, consumers=flag), target, args.steps).ratio

    rows: list[Row] = []
    for scope, kw in SCOPES:
        for criterion, consumers in runs:
            variant = "BN" if criterion in BN_VARIANT else "folded"
            row = Row(criterion, scope, variant, consumers)
            rows.append(row)
            run_seeds = seeds if criterion == "random" else [0]
            try:
                for target in args.targets:
                    reductions, accuracies, compensated = [], [], []
                    for seed in run_seeds:
                        if scope == "global":
                            point = search(lambda r: prune(criterion, variant, r, kw, seed, consumers), target,
                                           args.steps)
                            result = point.result
                        else:
                            result = prune(criterion, variant, shared[shared_key(scope, variant, consumers, target)],
                                           kw, seed, consumers)
                        reductions.append(macs_reduction(result))
                        accuracies.append(_digits.onnx_accuracy(result.model, x_test, y_test))
                        compensate_pruned(models[variant], result, calibration)  # in place, after the plain score
                        compensated.append(_digits.onnx_accuracy(result.model, x_test, y_test))
                    row.cells[target] = (float(np.mean(reductions)), float(np.mean(accuracies)),
                                         float(np.mean(compensated)), spread(accuracies), spread(compensated))
            except op.OnnxPruneError as e:
                row.error = short(e)
            notes = memo.notes.get(((name, variant), criterion))
            if notes:
                row.note = "warning: " + " ".join(notes[0].split())[:90]
    t_prune = time.perf_counter() - t1

    # bn_scale on the folded export: the library's message
    folded_bn_message = None
    if "bn_scale" in criteria:
        try:
            memo.model_key = (name, "folded")
            op.prune(folded, method=memo_names["bn_scale"], ratio=0.3)
            folded_bn_message = "ran on the folded export (no error)"
        except op.OnnxPruneError as e:
            folded_bn_message = short(e, 400)

    return {"name": name, "model": folded, "log": log, "base_acc": base_acc, "bn_acc": bn_acc, "before": before, "rows": rows,
            "t_train": t_train, "t_prune": t_prune, "unmapped": unmapped, "n_grads": len(gradients),
            "folded_bn_message": folded_bn_message, "shared": shared,
            "criterion_seconds": {c: memo.seconds.get(((name, "BN" if c in BN_VARIANT else "folded"), c))
                                  for c in criteria}}


# --------------------------------------------------------------------------- report

def print_report(report: dict, args) -> None:
    log = report["log"]
    name = report["name"]
    before = report["before"]
    print()
    print(f"== {name}: test accuracy {report['base_acc']:.1%} (onnxruntime, folded; BN-kept export "
          f"{report['bn_acc']:.1%}), train {log.train_accuracy:.1%}; {before.params / 1e3:.1f}k params, "
          f"{before.macs / 1e6:.2f}M MACs; trained {log.epochs} epochs in {log.seconds:.0f} s")
    shared = report["shared"]
    print("   shared ratios: " + ", ".join(f"{scope}/{variant}{CONSUMER_SUFFIX if flag else ''} -{t:.0%}: {r:.3f}"
                                          for (scope, variant, flag, t), r in shared.items()))
    header = (f"   {'criterion':<13} {'scope':<7} {'export':<6} |"
              + "|".join(f" {'MACs -' + format(t, '.0%'):>9} {'acc':>6} {'+comp':>6} " for t in args.targets)
              + "| note")
    print(header)
    print("   " + "-" * (len(header) - 3))
    base = report["base_acc"]
    last_scope = None
    for row in report["rows"]:
        if last_scope is not None and row.scope != last_scope:
            print("   " + "-" * (len(header) - 3))
        last_scope = row.scope
        label = row.label + (" (mean)" if row.criterion == "random" and args.seeds > 1 else "")
        prefix = f"   {label:<13} {row.scope:<7} {row.variant:<6} |"
        if row.error:
            print(f"{prefix} n/a ({row.error})")
            continue
        cells = []
        extras = []
        for target in args.targets:
            reduction, accuracy, comp, extra, extra_comp = row.cells[target]
            cells.append(f" {-reduction:>+8.1%} {accuracy:>6.1%} {comp:>6.1%} ")
            if extra:
                extras.append(f"-{target:.0%}: {extra} (+comp {extra_comp})")
        note = "; ".join(extras + ([row.note] if row.note else []))
        print(prefix + "|".join(cells) + "| " + note)
    print(f"   original accuracy {base:.1%}; MACs columns: achieved change (negative = fewer MACs); acc: plain "
          f"pruning; +comp: the same pruned model with mean compensation (prune(..., compensate=True)); "
          f"export BN = rows run on the BN-kept export (same function)")
    if report["folded_bn_message"]:
        print(f"   bn_scale on the folded export: {report['folded_bn_message']}")
    if report["unmapped"]:
        print(f"   taylor: {len(report['unmapped'])} weight initializers had no torch parameter: "
              f"{report['unmapped'][:4]}")
    seconds = report["criterion_seconds"]
    print("   criterion time (first computation): " + ", ".join(
        f"{c} {s:.2f}s" for c, s in seconds.items() if s is not None))
    # summary
    for column, label in ((1, "plain"), (2, "+comp")):
        for target in args.targets:
            parts = []
            for scope, _ in SCOPES:
                rows = [r for r in report["rows"] if r.scope == scope]
                rnd = next((r for r in rows if r.criterion == "random" and not r.error), None)
                if rnd is None:
                    parts.append(f"{scope}: (no random baseline)")
                    continue
                ref = rnd.cells[target][column]
                informed = [r for r in rows if r.criterion != "random" and not r.error]
                beat = [r.label for r in informed if r.cells[target][column] > ref]
                parts.append(f"{scope} {len(beat)}/{len(informed)} [{', '.join(beat)}]")
            print(f"   beat random ({label}) at MACs -{target:.0%}: " + "; ".join(parts))
    print(f"   time: training {report['t_train']:.0f} s, pruning search + evaluation {report['t_prune']:.0f} s")


def margins(reports: list[dict], column: int) -> dict[str, list[float]]:
    """Per row label: accuracy minus random's mean accuracy (same model, scope, target), over every cell."""
    found: dict[str, list[float]] = {}
    for report in reports:
        for scope, _ in SCOPES:
            rows = [r for r in report["rows"] if r.scope == scope and not r.error]
            rnd = next((r for r in rows if r.criterion == "random"), None)
            if rnd is None:
                continue
            for row in rows:
                if row.criterion != "random":
                    found.setdefault(row.label, []).extend(
                        row.cells[t][column] - rnd.cells[t][column] for t in sorted(rnd.cells))
    return found


def print_overall(reports: list[dict], args) -> None:
    """Every informed row against random over all models, scopes and targets: cells won and mean margin."""
    if not reports:
        return
    cells = f"{len(reports)} model(s) x {len(SCOPES)} scopes x {len(args.targets)} targets"
    print(f"\n== informed criteria vs random, over {cells} (margin = accuracy - random's mean, points)")
    plain, comp = margins(reports, 1), margins(reports, 2)
    print(f"   {'criterion':<13} | {'plain: won':>10} {'mean':>6} {'min':>6} | {'+comp: won':>10} {'mean':>6} {'min':>6}")
    for label in sorted(comp, key=lambda k: (k.replace(CONSUMER_SUFFIX, ""), k)):
        a, b = np.array(plain[label]) * 100, np.array(comp[label]) * 100
        print(f"   {label:<13} | {f'{np.sum(a > 0)}/{len(a)}':>10} {a.mean():>+6.1f} {a.min():>+6.1f} | "
              f"{f'{np.sum(b > 0)}/{len(b)}':>10} {b.mean():>+6.1f} {b.min():>+6.1f}")
    losing = sorted(label for label, v in comp.items() if np.mean(v) <= 0)
    print("   with compensation, every informed row beats random on average" if not losing else
          f"   with compensation, at or below random on average: {', '.join(losing)}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="20 s training, 2 random seeds, 5 search steps")
    parser.add_argument("--seconds", type=float, default=None, help="training time per model (default 60, quick 20)")
    parser.add_argument("--epochs", type=int, default=None, help="fixed epoch count (fully deterministic training)")
    parser.add_argument("--models", default=",".join(_digits.MODELS))
    parser.add_argument("--criteria", default=None, help="comma-separated (default: every registered criterion)")
    parser.add_argument("--seeds", type=int, default=None, help="random seeds averaged (default 5, quick 2)")
    parser.add_argument("--steps", type=int, default=None, help="ratio evaluations per search (default 7, quick 5)")
    parser.add_argument("--size", type=int, default=12, help="input size (digits are 8x8, upsampled bilinearly)")
    parser.add_argument("--calibration", type=int, default=256, help="training images for data-based criteria")
    parser.add_argument("--targets", default="0.3,0.5", help="MACs reductions, comma-separated (default 0.3,0.5)")
    parser.add_argument("--step-size", type=int, default=1,
                        help="Options.step_size (default 1 here, so MACs targets are met closely; library default 2)")
    parser.add_argument("--consumers", choices=("both", "off", "on"), default="both",
                        help="weight criteria (l1, l2, gm, lamp, snp) with Options.score_consumers off (library "
                             "default), on (rows '+cons'), or both (default)")
    parser.add_argument("--train-seed", type=int, default=0, help="seed of the models' initialisation and training")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for training")
    parser.add_argument("--pipeline-targets", default="0.3,0.5,0.8",
                        help="MACs reductions for the recommended pipeline's table (default 0.3,0.5,0.8)")
    parser.add_argument("--pipeline-only", action="store_true", help="only the recommended pipeline's table")
    parser.add_argument("--cache", metavar="DIR", help="with --epochs: keep / reuse the trained models in DIR")
    args = parser.parse_args(argv)
    args.seconds = args.seconds if args.seconds is not None else (20.0 if args.quick else 60.0)
    args.seeds = args.seeds if args.seeds is not None else (2 if args.quick else 5)
    args.steps = args.steps if args.steps is not None else (5 if args.quick else 7)
    args.targets = [float(t) for t in args.targets.split(",") if t.strip()]
    if not args.targets or not all(0.0 < t < 1.0 for t in args.targets):
        parser.error("--targets: MACs reductions in (0, 1)")
    torch.set_num_threads(args.threads)

    available = sorted(c for c in CRITERIA if not c.startswith(MEMO_PREFIX))
    criteria = available if args.criteria is None else [c.strip().lower() for c in args.criteria.split(",") if c.strip()]
    unknown = [c for c in criteria if c not in CRITERIA]
    if unknown:
        parser.error(f"unknown criteria {unknown}; registered: {available}")
    criteria = (["random"] if "random" in criteria else []) + [c for c in criteria if c != "random"]
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    for m in models:
        if m not in _digits.MODELS:
            parser.error(f"unknown model {m!r}; choose from {list(_digits.MODELS)}")

    start = time.perf_counter()
    data = _digits.load_data(size=args.size)
    print(f"load_digits {args.size}x{args.size}: {len(data.x_train)} train / {len(data.x_test)} test images; "
          f"criteria {criteria}; scopes {[s for s, _ in SCOPES]}; targets "
          f"{[f'-{t:.0%} MACs' for t in args.targets]}; random over {args.seeds} seed(s); search <= {args.steps} steps; "
          f"training ~{args.seconds:.0f} s per model" + (f" ({args.epochs} epochs)" if args.epochs else ""),
          flush=True)
    memo = Memo()
    reports = []
    pipeline = []
    targets = [float(t) for t in args.pipeline_targets.split(",") if t.strip()]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", message=".*TracerWarning.*")
        for name in models:
            if not args.pipeline_only:
                report = run_model(name, data, args, memo, criteria)
                print_report(report, args)
                reports.append(report)
                model = report["model"]
            else:
                model = _pipeline.trained_model(name, data, args.epochs, args.seconds, args.cache, args.train_seed)
            print(f"== {name}: the recommended pipeline", flush=True)
            pipeline += _pipeline.pipeline_rows(name, model, data, data.calibration(args.calibration, seed=0),
                                                targets, args.seeds)
            sys.stdout.flush()
    print_overall(reports, args)
    _pipeline.print_pipeline(pipeline, args.calibration)
    print(f"\ntotal {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
