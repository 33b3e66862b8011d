#!/usr/bin/env python
"""Decomposition against the measured cost model: whole-model speed-up measured vs predicted.

    python benchmarks/decompose_latency.py [--threads 1] [--repeats 60] [--blocks 10] [--models vgg resnet] [--quick]

For a VGG-16-like (64x64 input) and a ResNet-50-like model (benchmarks/_models.py, random weights: fine for
latency, meaningless for energy / VBMF ranks, so ranks here are rank_ratio or target_latency), the script
  1. profiles the model with its factor chains (op.profile(..., decomposition=[tucker, svd])) in a fresh cache
     folder, then again (cached): both times are printed;
  2. decomposes it several ways: computed ranks (rank_ratio) with the default settings (no cost model: the MACs
     rule and rank_step 16) and the same with the cost model (cost=: only chains measured faster than their layer,
     ranks snapped to their latency step), and target_latency= 0.7 / 0.5;
  3. times the original and each decomposed model interleaved in the same run, the rounds split over `--blocks`
     blocks of fresh sessions (onnxprune.profile.timing.timed_in_blocks, as op.prune's latency budget measures),
     and prints the measured speed-up (the original's median run over the decomposed one's: the median over
     blocks of the per-round ratios, robust to load changing between rounds and to one session running slow for
     its whole life) beside the cost model's
     prediction (for runs without cost= the prediction of the chains written, from the same cost model).

Columns: chains = layers decomposed; slower = chains written that the cost model measured slower than their
layer (the acceptance bar: 0 for every run with a cost model); MACs = MACs after / before; pred. = predicted
speed-up (original measured / predicted); meas. = measured speed-up (per-round original / decomposed, median);
meas./pred. (the bar: >= 0.9).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for path in (ROOT, os.path.join(ROOT, "benchmarks")):
    if path not in sys.path:
        sys.path.insert(0, path)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # factorisations: no BLAS thread oversubscription

import onnxprune as op  # noqa: E402
from onnxprune import runtime  # noqa: E402
from onnxprune.decomposition.latency import LatencyModel  # noqa: E402
from onnxprune.profile.timing import timed_in_blocks  # noqa: E402
from onnxprune.workflows.bench import bench_inputs  # noqa: E402
from onnxprune.text import table  # noqa: E402

import _models  # noqa: E402

MODELS = {"vgg": _models.vgg_like, "resnet": _models.resnet50_like}
CASES = [  # (label, method, decompose keywords, with the cost model)
    ("tucker rank_ratio=0.5", "tucker", {"rank_ratio": 0.5}, False),
    ("tucker rank_ratio=0.5 +cost", "tucker", {"rank_ratio": 0.5}, True),
    ("tucker rank_ratio=0.25", "tucker", {"rank_ratio": 0.25}, False),
    ("tucker rank_ratio=0.25 +cost", "tucker", {"rank_ratio": 0.25}, True),
    ("tucker target_latency=0.7", "tucker", {"target_latency": 0.7}, True),
    ("tucker target_latency=0.5", "tucker", {"target_latency": 0.5}, True),
    ("svd rank_ratio=0.25", "svd", {"rank_ratio": 0.25}, False),
    ("svd rank_ratio=0.25 +cost", "svd", {"rank_ratio": 0.25}, True),
]
QUICK = {"tucker rank_ratio=0.5", "tucker rank_ratio=0.5 +cost", "tucker target_latency=0.7"}


def prediction(cost, result) -> tuple[float, int]:
    """(predicted latency ms of the result, chains written that the cost model measured slower than their layer)."""
    predicted, slower = cost.total, 0
    latency = LatencyModel(cost, result.method)
    for record in result.decomposed:
        pair = latency.pair(record.name, record.ranks)
        if pair is None:
            continue
        before, after = pair
        predicted += after - before
        slower += after >= before
    return predicted, slower


def run_model(name: str, threads: int, repeats: int, blocks: int, quick: bool) -> tuple[list[list[str]], list[str]]:
    model, _ = MODELS[name]()
    folder = tempfile.mkdtemp(prefix="onnxprune-bench-cache-")
    try:
        start = time.perf_counter()
        cost = op.profile(model, threads=threads, cache=folder, decomposition=["tucker", "svd"])
        first = time.perf_counter() - start
        start = time.perf_counter()
        cost = op.profile(model, threads=threads, cache=folder, decomposition=["tucker", "svd"])
        cached = time.perf_counter() - start
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    notes = [f"{name}: profile with chains {first:.1f} s first, {cached:.2f} s cached; measured total "
             f"{cost.total:.2f} ms"]
    print(notes[0], file=sys.stderr, flush=True)
    base_macs = op.stats(model).macs
    rows = []
    for label, method, keywords, with_cost in CASES:
        if quick and label not in QUICK:
            continue
        try:
            result = op.decompose(model, method, cost=cost if with_cost else None, **keywords)
        except op.OnnxPruneError as exc:
            rows.append([name, label, "-", "-", "-", "-", "-", "-", f"refused: {exc}"])
            print(" | ".join(str(c) for c in rows[-1]), file=sys.stderr, flush=True)
            continue
        predicted, slower = prediction(cost, result)
        if with_cost:
            assert abs(predicted - result.latency["predicted"]) <= 1e-9 * cost.total
        if not result.decomposed:
            rows.append([name, label, 0, 0, "1.00", "1.00", "-", "-", "nothing decomposed"])
            continue
        base_ms, ms = timed_in_blocks([model, result.model], bench_inputs(model), "CPUExecutionProvider", threads,
                                      blocks, rounds=max(1, -(-repeats // blocks)))
        measured = base_ms / ms
        expected = cost.total / predicted
        rows.append([name, label, len(result.decomposed), slower, f"{op.stats(result.model).macs / base_macs:.2f}",
                     f"{expected:.3f}", f"{measured:.3f}", f"{measured / expected:.3f}", ""])
        print(" | ".join(str(c) for c in rows[-1]), file=sys.stderr, flush=True)
    return rows, notes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (default 1)")
    parser.add_argument("--repeats", type=int, default=60, help="timed runs of each model per comparison")
    parser.add_argument("--blocks", type=int, default=10, help="blocks of fresh sessions the runs are split over")
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["vgg", "resnet"])
    parser.add_argument("--quick", action="store_true", help="three cases per model")
    args = parser.parse_args()
    rows, notes = [], []
    for name in args.models:
        got, said = run_model(name, args.threads, args.repeats, args.blocks, args.quick)
        rows += got
        notes += said
    print(table(rows, ["model", "case", "chains", "slower", "MACs", "pred.", "meas.", "meas./pred.", "note"]))
    print()
    for note in notes:
        print(note)
    print(f"threads {args.threads}, {args.repeats} interleaved runs per comparison in {args.blocks} block(s) of fresh "
          f"sessions (medians), onnxruntime {runtime.VERSION}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
