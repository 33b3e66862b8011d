#!/usr/bin/env python
"""Accuracy right after pruning, with and without least-squares reconstruction (no training).

    python benchmarks/recovery.py [--quick] [--seconds 40] [--epochs N] [--models residual,dwse,concat,vit]
                                  [--criteria l2,activation] [--targets 0.3,0.5] [--calibration 256] [--ridge 1e-3]
                                  [--pipeline-targets 0.3,0.5,0.8] [--seeds 5] [--pipeline-only] [--cache DIR]

Four small models trained on scikit-learn's load_digits (benchmarks/_digits.py; 8x8 digits upsampled to
--size, fixed stratified split 1347 train / 450 test, CPU, fixed seeds): residual, depthwise-separable + SE,
inception-style concat, and a small ViT defined here (4x4 patches, 2 pre-norm encoder blocks, 4 heads,
class token). Each is exported with the legacy exporter (BN folded), then pruned (scope uniform) by l2 and by
the data-based `activation` criterion at the ratio that removes 30% and 50% of the model's MACs (bracketing
search on `ratio`, benchmarks/criteria_quality.search, --steps evaluations). At that ratio the model is pruned
three times: plain, with `compensate=True` (comp: the removed channels' calibration means folded into the
biases of the layers that read them) and with `reconstruct=True` (recon: every layer that reads pruned channels
re-fitted by ridge least squares to the unpruned model's outputs); `gain` is recon - plain, `comp s` / `fit s`
the time of the pruning call with each (pruning included). Calibration (for `activation` and for the
reconstruction): --calibration TRAINING images, never test images. Accuracy is on the TEST split with
onnxruntime. Baseline in the same run: the unpruned model's test accuracy.

The ViT's attention Q/K dims and MLP hidden units are pruned too; its groups through LayerNormalization are
inexact (onnxprune marks them) and the residual stream is one group.
Then, on the CNNs, the recommended pipeline (benchmarks/_pipeline.py): `op.prune(model, target_macs=1 - t,
calibration=...)` with nothing else given, at every --pipeline-targets t, and at each t the default criterion
and allocation with compensation only beside `random` (same allocation, compensated; mean of --seeds seeds).
--pipeline-only skips the criterion tables; --cache DIR (with --epochs) keeps the trained CNNs for later runs.
Full run: ~4 x --seconds of training plus ~1-2 minutes of pruning and fitting.
"""
from __future__ import annotations

import argparse
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
from torch import nn  # noqa: E402

import onnxprune as op  # noqa: E402
from onnxprune.reconstruction import FewSamplesWarning  # noqa: E402

import _digits  # noqa: E402
import _pipeline  # noqa: E402
from criteria_quality import macs_reduction, search  # noqa: E402

CNNS = ("residual", "dwse", "concat")


# --------------------------------------------------------------------------- a small ViT

class Block(nn.Module):
    """Pre-norm encoder block. Reshapes use Python ints (batch -1): the export then holds constant shapes."""

    def __init__(self, dim: int, heads: int, hidden: int, tokens: int):
        super().__init__()
        self.heads, self.dim, self.tokens = heads, dim, tokens
        self.norm1 = nn.LayerNorm(dim)
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x):
        t, d, hd = self.tokens, self.dim, self.dim // self.heads
        h = self.norm1(x)
        split = lambda y: y.reshape(-1, t, self.heads, hd).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.q(h)), split(self.k(h)), split(self.v(h))
        att = torch.softmax(q @ k.transpose(-2, -1) * (1.0 / hd ** 0.5), dim=-1)
        x = x + self.proj((att @ v).transpose(1, 2).reshape(-1, t, d))
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    def __init__(self, size: int = 16, patch: int = 4, dim: int = 64, depth: int = 2, heads: int = 4,
                 hidden: int = 128):
        super().__init__()
        self.patch, self.size = patch, size
        tokens = (size // patch) ** 2
        self.embed = nn.Linear(patch * patch, dim)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, tokens + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*(Block(dim, heads, hidden, tokens + 1) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, _digits.NUM_CLASSES)

    def forward(self, x):
        s, p = self.size, self.patch
        x = x.reshape(-1, s // p, p, s // p, p).permute(0, 1, 3, 2, 4).reshape(-1, (s // p) ** 2, p * p)
        x = self.embed(x)
        x = torch.cat([self.cls.expand(x.shape[0], 1, -1), x], dim=1) + self.pos
        x = self.norm(self.blocks(x))
        return self.fc(x[:, 0])


# --------------------------------------------------------------------------- one model

def accuracy(model, data) -> float:
    return _digits.onnx_accuracy(model, data.x_test, data.y_test)


def run_model(name: str, data: _digits.Digits, args) -> list[dict]:
    t0 = time.perf_counter()
    calibration = data.calibration(args.calibration)
    if args.pipeline_only:
        model = _pipeline.trained_model(name, data, args.epochs, args.seconds, args.cache)
        print(f"{name}: test accuracy {accuracy(model, data):.3f}", flush=True)
        return [], _pipeline.pipeline_rows(name, model, data, calibration, args.pipeline_targets, args.seeds)
    if name == "vit":
        torch.manual_seed(0)
        net = TinyViT(size=data.size)
        log = _digits.train(net, data, args.seconds, epochs=args.epochs, lr=1e-3, weight_decay=0.05)
    else:
        net = _digits.build(name)
        log = _digits.train(net, data, args.seconds, epochs=args.epochs)
    model = _digits.export_onnx(net, data.size)
    base = accuracy(model, data)
    print(f"{name}: {log.epochs} epochs in {log.seconds:.0f}s, test accuracy {base:.3f} "
          f"(torch {log.test_accuracy:.3f})", flush=True)
    rows = []
    for criterion in args.criteria:
        for target in args.targets:
            def prune_at(ratio, **kw):
                return op.prune(model, criterion, ratio, calibration=calibration, **kw)

            point = search(prune_at, target, args.steps)
            plain = point.result
            t = time.perf_counter()
            compensated = prune_at(point.ratio, compensate=True)
            comp_seconds = time.perf_counter() - t
            t = time.perf_counter()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", FewSamplesWarning)
                fitted = prune_at(point.ratio, reconstruct=True, ridge=args.ridge)
            seconds = time.perf_counter() - t
            op.verify(fitted.model, fitted.model)  # loads and runs
            rep = fitted.reconstruction
            rows.append({"model": name, "base": base, "criterion": criterion, "target": target,
                         "ratio": point.ratio, "reduction": macs_reduction(plain), "plain": accuracy(plain.model, data),
                         "comp": accuracy(compensated.model, data), "comp_seconds": comp_seconds,
                         "recon": accuracy(fitted.model, data), "seconds": seconds, "layers": len(rep.fitted),
                         "stages": rep.stages, "few": len(caught)})
            r = rows[-1]
            print(f"  {criterion:<10} {target:.0%}: ratio {r['ratio']:.3f} -> MACs -{r['reduction']:.1%}, "
                  f"acc {r['plain']:.3f} -> comp {r['comp']:.3f} / recon {r['recon']:.3f} ({r['layers']} layers, {r['stages']} stages, "
                  f"{seconds:.1f}s)", flush=True)
    pipeline = (_pipeline.pipeline_rows(name, model, data, calibration, args.pipeline_targets, args.seeds)
                if name in CNNS else [])
    print(f"  ({time.perf_counter() - t0:.0f}s)", flush=True)
    return rows, pipeline


def print_table(rows: list[dict], args) -> None:
    if not rows:
        return
    print()
    print(f"Test accuracy right after pruning (no training), scope uniform; calibration: {args.calibration} training "
          f"images; ridge {args.ridge:g}")
    head = (f"{'model':<9} {'unpruned':>8} {'criterion':<10} {'target':>6} {'ratio':>6} {'MACs -':>7} "
            f"{'plain':>6} {'comp':>6} {'recon':>6} {'gain':>6} {'comp s':>6} {'fit s':>6} {'layers':>6}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['model']:<9} {r['base']:>8.3f} {r['criterion']:<10} {r['target']:>6.0%} {r['ratio']:>6.3f} "
              f"{r['reduction']:>7.1%} {r['plain']:>6.3f} {r['comp']:>6.3f} {r['recon']:>6.3f} "
              f"{r['recon'] - r['plain']:>+6.3f} {r['comp_seconds']:>6.1f} {r['seconds']:>6.1f} {r['layers']:>6}")
    at50 = [r for r in rows if r["model"] in CNNS and abs(r["target"] - 0.5) < 1e-9]
    if at50:
        worst = min(at50, key=lambda r: r["recon"])
        ok = worst["recon"] > 0.6
        print(f"\nbar (every CNN > 0.6 at 50% fewer MACs with reconstruction): {'met' if ok else 'NOT met'}; "
              f"lowest {worst['recon']:.3f} ({worst['model']}, {worst['criterion']})")
    few = sum(r["few"] for r in rows)
    if few:
        print(f"{few} layer fits had fewer calibration rows than unknowns (FewSamplesWarning): solved through the ridge")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="15 s training per model, 5 search steps")
    parser.add_argument("--seconds", type=float, default=None, help="training time per model (default 40, quick 15)")
    parser.add_argument("--epochs", type=int, default=None, help="fixed epoch count (fully deterministic training)")
    parser.add_argument("--models", default="residual,dwse,concat,vit")
    parser.add_argument("--criteria", default="l2,activation")
    parser.add_argument("--targets", default="0.3,0.5", help="MACs reductions (default 0.3,0.5)")
    parser.add_argument("--steps", type=int, default=None, help="ratio evaluations per search (default 7, quick 5)")
    parser.add_argument("--size", type=int, default=16, help="input size (digits are 8x8, upsampled bilinearly)")
    parser.add_argument("--calibration", type=int, default=256, help="training images for calibration")
    parser.add_argument("--ridge", type=float, default=op_ridge(), help="reconstruction ridge (relative)")
    parser.add_argument("--threads", type=int, default=4, help="torch threads for training")
    parser.add_argument("--pipeline-targets", default="0.3,0.5,0.8",
                        help="MACs reductions for the recommended pipeline (default 0.3,0.5,0.8)")
    parser.add_argument("--seeds", type=int, default=5, help="random seeds averaged beside the pipeline (default 5)")
    parser.add_argument("--pipeline-only", action="store_true", help="only the recommended pipeline's table (CNNs)")
    parser.add_argument("--cache", metavar="DIR", help="with --epochs: keep / reuse the trained CNNs in DIR")
    args = parser.parse_args(argv)
    args.seconds = args.seconds if args.seconds is not None else (15.0 if args.quick else 40.0)
    args.steps = args.steps if args.steps is not None else (5 if args.quick else 7)
    args.criteria = [c for c in args.criteria.split(",") if c]
    args.targets = [float(t) for t in args.targets.split(",") if t]
    args.pipeline_targets = [float(t) for t in args.pipeline_targets.split(",") if t]
    torch.set_num_threads(args.threads)
    data = _digits.load_data(size=args.size)
    rows, pipeline = [], []
    for name in [m for m in args.models.split(",") if m]:
        if args.pipeline_only and name not in CNNS:
            continue
        more, more_pipeline = run_model(name, data, args)
        rows, pipeline = rows + more, pipeline + more_pipeline
    print_table(rows, args)
    _pipeline.print_pipeline(pipeline, args.calibration)
    return 0


def op_ridge() -> float:
    from onnxprune.reconstruction import DEFAULT_RIDGE

    return DEFAULT_RIDGE


if __name__ == "__main__":
    sys.exit(main())
