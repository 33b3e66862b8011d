"""`onnxprune bench A [B] [--repeats N] [--warmup N] [--threads N] [--batch-size N] [--json]`."""
from __future__ import annotations

import argparse
import json
import os


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="onnxruntime latency beside params and MACs; ratios for two models",
                       description="Time one model (or two, interleaved) with onnxruntime on the CPU and print "
                                   "median latency, p10/p90 spread and throughput beside params, MACs and size. "
                                   "With two models, the ratios B / A: latency is measured, MACs are counted, "
                                   "and the two rarely move together. Compare ratios from one run, not absolute "
                                   "times across machines.")
    p.add_argument("model", help="ONNX model file (A)")
    p.add_argument("other", nargs="?", help="second ONNX model file (B), e.g. the pruned one")
    p.add_argument("--repeats", type=int, default=50, help="timed runs per model (default 50)")
    p.add_argument("--warmup", type=int, default=5, help="uncounted runs first (default 5)")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: its own)")
    p.add_argument("--batch-size", type=int, default=1, help="size of a dynamic batch dim (default 1)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from onnxprune.workflows.bench import bench

    for path in (args.model, args.other):
        if path is not None and not os.path.isfile(path):
            from onnxprune.errors import InvalidRequestError

            raise InvalidRequestError(f"model file '{path}' does not exist")
    names = None
    if args.other is not None:
        names = (os.path.basename(args.model), os.path.basename(args.other))
        if names[0] == names[1]:
            names = (args.model, args.other)
    result = bench(args.model, args.other, repeats=args.repeats, warmup=args.warmup, threads=args.threads,
                   batch_size=args.batch_size, names=names)
    print(json.dumps(result.as_dict(), indent=2) if args.json else str(result))
    return 0
