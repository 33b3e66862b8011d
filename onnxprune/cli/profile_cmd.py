"""`onnxprune profile MODEL [-o cost.json] [--threads N] [--provider P] [--batch B] [--decomposition M ...]
[--no-cache]`."""
from __future__ import annotations

import argparse
import json
import os

from onnxprune.cli.common import add_ray_flag, check_paths
from onnxprune.files import write_text
from onnxprune.errors import InvalidRequestError
from onnxprune.text import table


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("profile", help="measure each layer's onnxruntime latency against its kept channels",
                       description="Measure the onnxruntime latency of every Conv / ConvTranspose / Gemm / MatMul "
                                   "layer as a function of its kept input and output channels (micro-graphs of "
                                   "the layer on a grid of channel counts), and the whole model's latency. "
                                   "Prints each layer's latency at full channels and its share of the model; "
                                   "with -o, writes the cost file that `prune --cost` reads. Measurements are "
                                   "cached (in $XDG_CACHE_HOME/onnxprune, default ~/.cache/onnxprune): a second "
                                   "profile of the same model on the same settings measures nothing. A cost file "
                                   "is only valid for this model, provider, thread count, batch, onnxruntime "
                                   "version and CPU.")
    p.add_argument("model", help="ONNX model file")
    p.add_argument("-o", "--output", metavar="COST.json", help="write the cost file here")
    p.add_argument("--threads", type=int, default=None,
                   help="onnxruntime intra-op threads (default: onnxruntime's own, as a user's session)")
    p.add_argument("--provider", default="CPUExecutionProvider",
                   help="onnxruntime execution provider (default CPUExecutionProvider)")
    p.add_argument("--batch", type=int, default=1, help="size given to symbolic (batch) dims (default 1)")
    p.add_argument("--decomposition", nargs="+", metavar="METHOD", choices=["tucker", "cp", "svd", "all"],
                   help="also measure the factor chains of the decomposable layers against their ranks, for these "
                        "methods (tucker, cp, svd or all): the cost file `decompose --cost` reads")
    p.add_argument("--no-cache", action="store_true", help="measure everything; neither read nor write the cache")
    add_ray_flag(p, "the layer measurements")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from onnxprune.profile import profile
    from onnxprune.profile.timing import check_request

    if not os.path.isfile(args.model):
        raise InvalidRequestError(f"model file '{args.model}' does not exist")
    check_paths({"model": args.model}, {"-o": args.output})
    check_request(args.provider, args.threads, args.batch)
    methods = args.decomposition or None
    cost = profile(args.model, provider=args.provider, threads=args.threads, batch=args.batch,
                   cache=False if args.no_cache else None,
                   decomposition=True if methods and "all" in methods else methods)
    latencies = cost.layer_latencies()
    rows = [[name, cost.info[name].op_type, counts[0], counts[1], f"{latencies[name]:.4f}",
             f"{100 * latencies[name] / cost.total:.1f}" if cost.total else "-"]
            for name, counts in cost.layers.items()]
    print(table(rows, ["layer", "op", "in", "out", "latency ms", "share %"]))
    env = cost.environment
    print(f"\ntotal {cost.total:.4f} ms (whole model, measured); layers at full channels "
          f"{sum(latencies.values()):.4f} ms; {env['provider']}, threads "
          f"{env['threads'] if env['threads'] is not None else 'default'}, batch {env['batch']}, "
          f"onnxruntime {env['onnxruntime']}")
    for name, reason in cost.skipped.items():
        print(f"not modelled: {name}: {reason}")
    if cost.chains is not None:
        measured = sum(len(m) for m in cost.chains.layers.values())
        print(f"factor chains ({', '.join(cost.chains.methods)}): {measured} measured, "
              f"{len(cost.chains.curves)} signatures")
    if args.output:
        write_text(args.output, json.dumps(cost.as_dict(), indent=1, sort_keys=True))
        print(f"wrote {args.output}")
    return 0
