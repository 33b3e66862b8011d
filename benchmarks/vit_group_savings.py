#!/usr/bin/env python
"""Does the cost model price each group of a ViT right? Predicted vs measured latency saving per group kind.

    python benchmarks/vit_group_savings.py [--layers 12] [--blocks 4] [--repeats 32] [--threads 1]

On the ViT-B/16-like model of benchmarks/_models.py (random weights, 224x224, batch 1): `op.profile(model)`
(the default cache), then one cut per group kind, the same fraction of every block's group: the residual stream
(768 -> 576), the query / key head dim (64 -> 32 and 64 -> 8), the value / output head dim (64 -> 48) and the MLP
hidden width (3072 -> 2304). For each: the MACs saved (op.stats), the cost model's predicted saving (its layer
curves and its tensor terms: onnxprune.cost.predicted_cost on the kept counts), and the measured saving:
the cut model timed against the original (latency_targets.measure: interleaved rounds split over `--blocks`
blocks of fresh sessions, the median of the blocks' paired ratios). A kind the cost model prices right has
measured / predicted near 1; one run of two sessions of the unchanged model (A/A) shows the timing's noise.
"""
from __future__ import annotations

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for _p in (ROOT, HERE):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import numpy as np  # noqa: E402

import onnxprune as op  # noqa: E402
from onnxprune.budget import layer_kept  # noqa: E402
from onnxprune.coupling import analyze  # noqa: E402
from onnxprune.cost import predicted_cost, term_cost, term_sizes  # noqa: E402
from onnxprune.surgery.prune import apply  # noqa: E402
from onnxprune.text import table  # noqa: E402

import _models  # noqa: E402
from latency_targets import measure  # noqa: E402


def kinds(layers: int) -> dict[str, tuple[list[int], float]]:
    """{label: (group ids, fraction of each group's units to cut)} for vit_b16_like's groups: 0 the residual
    stream, then per block the q / k head dim, the v / out head dim and the MLP hidden width."""
    every = lambda k: list(range(k, 3 * layers + 1, 3))  # noqa: E731
    return {"A/A (nothing cut)": ([], 0.0), "residual 768 -> 576": ([0], 0.25),
            "q/k head dim 64 -> 32": (every(1), 0.5), "q/k head dim 64 -> 8": (every(1), 0.875),
            "v/out head dim 64 -> 48": (every(2), 0.25), "MLP hidden 3072 -> 2304": (every(3), 0.25)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--layers", type=int, default=12, help="encoder blocks (default 12: ViT-B/16)")
    parser.add_argument("--blocks", type=int, default=4, help="blocks of fresh sessions per comparison")
    parser.add_argument("--repeats", type=int, default=32, help="interleaved rounds per comparison, over all blocks")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    model, _ = _models.vit_b16_like(layers=args.layers)
    analysis = analyze(model)
    cost = op.profile(model, threads=args.threads)
    sizes = term_sizes(cost)
    macs = op.stats(model).macs
    rows = []
    for label, (groups, fraction) in kinds(args.layers).items():
        removed = {g: np.arange(int(round(len(analysis.channels.group_units[g]) * fraction))) for g in groups}
        kept = layer_kept(analysis, cost, removed)

        def saved(layer: bool) -> float:
            return sum(term_cost(cost, k, *sizes[k]) - term_cost(cost, k, *v) for k, v in kept.items()
                       if (k in cost.layers) == layer) / cost.total

        cut = apply(analysis, analysis.channels.keep_mask(removed)).model
        base, ms = measure([model, cut], args.threads, args.repeats, blocks=args.blocks)
        predicted = 1 - predicted_cost(cost, kept) / cost.total
        measured = 1 - ms / base
        rows.append([label, f"{1 - op.stats(cut).macs / macs:.3f}", f"{predicted:.3f}",
                     f"{saved(True):.3f} + {saved(False):.3f}", f"{measured:.3f}",
                     f"{measured / predicted:.2f}" if predicted else "-"])
        print(" | ".join(rows[-1]), flush=True)
    print(f"\nViT-B/16-like, {args.layers} blocks, {args.threads} thread(s); {args.repeats} rounds in {args.blocks} "
          f"blocks of fresh sessions per row; whole model {cost.total:.1f} ms as profiled")
    print(table(rows, ["group kind (every block)", "MACs saved", "predicted saved", "layers + tensors",
                       "measured saved", "measured / predicted"]))


if __name__ == "__main__":
    main()
