"""The recommended pipeline (op.prune with no method=) on a trained digits model: shared by recovery.py and
criteria_quality.py.

    rows = pipeline_rows(name, model, data, calibration, targets=(0.3, 0.5, 0.8), seeds=5)
    print_pipeline(rows)

Per MACs reduction t: `op.prune(model, target_macs=1 - t, calibration=calibration)` (everything else chosen by
onnxprune.recipe) and its test accuracy; at every t, the default criterion and allocation with compensation only
(`reconstruct=False`) beside `random` with the same allocation and compensation (mean of `seeds` seeds), which is
the acceptance "the default criterion with compensation beats random".
"""
from __future__ import annotations

import time

import numpy as np

import onnxprune as op

import _digits

RECOMMENDED_OPTIONS = op.Options(layer_norm="linear_scaling")


def macs_reduction(result) -> float:
    return 1.0 - result.summary.after.macs / result.summary.before.macs


def pipeline_rows(name: str, model, data: _digits.Digits, calibration: np.ndarray, targets=(0.3, 0.5, 0.8),
                  seeds: int = 5) -> list[dict]:
    """One row per target: the default pipeline's accuracy, and compensation-only default vs random."""
    def accuracy(m) -> float:
        return _digits.onnx_accuracy(m, data.x_test, data.y_test)

    rows = []
    for target in targets:
        t = time.perf_counter()
        full = op.prune(model, target_macs=1.0 - target, calibration=calibration)
        seconds = time.perf_counter() - t
        comp = op.prune(model, target_macs=1.0 - target, calibration=calibration, reconstruct=False)
        randoms = [op.prune(model, "random", target_macs=1.0 - target, scope=full.summary.pipeline.scope,
                            options=RECOMMENDED_OPTIONS, calibration=calibration, compensate=True, seed=s)
                   for s in range(seeds)]
        random_acc = [accuracy(r.model) for r in randoms]
        rows.append({"model": name, "base": accuracy(model), "target": target, "reduction": macs_reduction(full),
                     "pipeline": accuracy(full.model), "seconds": seconds, "comp": accuracy(comp.model),
                     "random": float(np.mean(random_acc)), "random_min": min(random_acc),
                     "random_max": max(random_acc), "chosen": str(full.summary.pipeline).splitlines()[0],
                     "comp_chosen": str(comp.summary.pipeline).splitlines()[0]})
        r = rows[-1]
        print(f"  default pipeline {target:.0%}: MACs -{r['reduction']:.1%}, acc {r['pipeline']:.3f} "
              f"({seconds:.1f}s); compensation only {r['comp']:.3f} vs random {r['random']:.3f}", flush=True)
    return rows


def print_pipeline(rows: list[dict], calibration: int) -> None:
    if not rows:
        return
    print()
    print(f"The recommended pipeline: op.prune(model, target_macs=1 - t, calibration=<{calibration} training images>), "
          "nothing else given; test accuracy right after pruning (no training)")
    print(f"default: {rows[0]['chosen']}")
    print(f"compensation only (reconstruct=False): {rows[0]['comp_chosen']}")
    head = (f"{'model':<9} {'unpruned':>8} {'t':>4} {'MACs -':>7} {'default':>7} {'s':>5} | "
            f"{'default, compensation only':>26} {'random (same allocation + comp.)':>32}")
    print(head)
    print("-" * len(head))
    for r in rows:
        spread = f"{r['random']:.3f} ({r['random_min']:.3f}..{r['random_max']:.3f})"
        print(f"{r['model']:<9} {r['base']:>8.3f} {r['target']:>4.0%} {r['reduction']:>7.1%} {r['pipeline']:>7.3f} "
              f"{r['seconds']:>5.1f} | {r['comp']:>26.3f} {spread:>32}")
    at80 = [r for r in rows if abs(r["target"] - 0.8) < 1e-9]
    if at80:
        worst = min(at80, key=lambda r: r["pipeline"])
        print(f"bar (every CNN >= 0.95 at 80% fewer MACs): {'met' if worst['pipeline'] >= 0.95 else 'NOT met'}; "
              f"lowest {worst['pipeline']:.3f} ({worst['model']})")
    at30 = [r for r in rows if abs(r["target"] - 0.3) < 1e-9]
    if at30:
        losing = [r["model"] for r in at30 if r["comp"] <= r["random"]]
        print("bar (default criterion + compensation beats random at 30% fewer MACs): "
              + ("met on every model" if not losing else f"NOT met on {', '.join(losing)}"))


def trained_model(name: str, data: _digits.Digits, epochs: int | None, seconds: float, cache: str | None,
                  train_seed: int = 0):
    """The trained, exported (BN folded) digits CNN `name`; with `cache` (a folder) and a fixed epoch count it
    is saved there as NAME-SIZE-eEPOCHS-sSEED.onnx and reused by later runs (training dominates a run)."""
    import os

    import onnx

    path = None
    if cache and epochs:
        os.makedirs(cache, exist_ok=True)
        path = os.path.join(cache, f"{name}-{data.size}-e{epochs}-s{train_seed}.onnx")
        if os.path.exists(path):
            return onnx.load(path)
    net = _digits.build(name, seed=train_seed)
    _digits.train(net, data, seconds, epochs=epochs, seed=train_seed)
    model = _digits.export_onnx(net, data.size)
    if path:
        onnx.save(model, path)
    return model
