"""`onnxprune sparsify MODEL -o OUT --strategy S (--sparsity X | --compression C | --pattern N:M) [--n 2 --m 4]
[--storage dense|sparse|bitmask] [--exclude NAME ...] [--exclude-first] [--exclude-classifier]`."""
from __future__ import annotations

import argparse
import json

from onnxprune.cli.common import add_image_flags, add_ray_flag, check_paths, data_source, load_gradients, make_parent
from onnxprune.files import write_text


def register(sub: argparse._SubParsersAction) -> None:
    from onnxprune.sparsity import STRATEGIES

    p = sub.add_parser("sparsify", help="zero weights (fine-grained, channel or N:M sparsity), write a new model",
                       description="Zero Conv / Gemm / MatMul weights by a strategy and write a new model with a "
                                   "ShrinkBench-style report. onnxruntime on CPU runs zeros at dense speed: only the "
                                   "file size (--storage sparse|bitmask) and the theoretical figures change. The "
                                   "input file is never overwritten; nothing is written on error.")
    p.add_argument("model", help="ONNX model file")
    p.add_argument("-o", "--output", required=True, help="where to write the sparsified model")
    p.add_argument("--strategy", default="global_magnitude",
                   help=f"one of {', '.join(sorted(STRATEGIES))} (default global_magnitude)")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--sparsity", type=float, help="fraction of the participating weights to zero, in [0, 1)")
    how.add_argument("--compression", type=float, help="overall size / nonzero size to reach (ShrinkBench), > 1")
    how.add_argument("--pattern", metavar="N:M", help="N:M sparsity, e.g. 2:4 (strategies nm, wanda, sparsegpt)")
    p.add_argument("--n", type=int, default=2, help="strategy nm: weights kept per group (default 2)")
    p.add_argument("--m", type=int, default=4, help="strategy nm: group size along the reduction axis (default 4)")
    p.add_argument("--storage", default="dense", choices=["dense", "sparse", "bitmask"],
                   help="dense: zeros in place; sparse: ONNX sparse Constants where smaller (above ~67%% "
                        "sparsity for float32); bitmask: packed mask + nonzero values, rebuilt by standard ops")
    p.add_argument("--exclude", nargs="+", metavar="NAME", default=[],
                   help="leave these layers dense: node or initializer names, or fnmatch patterns")
    p.add_argument("--exclude-first", action="store_true", help="leave the first weight layer dense")
    p.add_argument("--exclude-classifier", action="store_true", help="leave the last weight layer (classifier) dense")
    p.add_argument("--calibration", metavar="FILE.npz|.npy|DIR",
                   help="calibration data for the activation strategies, wanda and sparsegpt (.npz keyed by "
                        "input name, .npy, or an image folder)")
    p.add_argument("--gradients", metavar="FILE.npz", help="gradients keyed by initializer name (*_magnitude_gradient)")
    p.add_argument("--seed", type=int, default=0, help="seed of strategy random (default 0)")
    p.add_argument("--verify", action="store_true",
                   help="check that onnxruntime gives exactly the dense masked model's outputs (sparse storage)")
    p.add_argument("--external-data", action="store_true", help="write weights to OUT.data next to the model")
    p.add_argument("--report", metavar="OUT.md|OUT.json",
                   help="also write the report (per layer and total: size, nonzeros, MACs, nonzero MACs, "
                        "theoretical speed-up, file bytes): markdown or JSON by extension")
    add_image_flags(p)
    add_ray_flag(p, "the calibration pass of the activation strategies")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import onnxprune as op
    from onnxprune.workflows.report import check_report_path
    from onnxprune.sparsity import sparsify

    check_paths({"model": args.model, "calibration data": args.calibration, "gradients": args.gradients},
                {"-o": args.output, "--report": args.report})
    args.calibration = data_source(args, args.calibration, "--calibration")
    if args.report:
        check_report_path(args.report)
    out = args.output
    result = sparsify(args.model, args.strategy, args.sparsity, compression=args.compression, n=args.n, m=args.m,
                      pattern=args.pattern, storage=args.storage, exclude=args.exclude,
                      exclude_first=args.exclude_first,
                      exclude_classifier=args.exclude_classifier, calibration=args.calibration,
                      gradients=load_gradients(args.gradients), seed=args.seed, verify=args.verify)
    make_parent(out)
    op.save_model(result.model, out, reference=result.reference, external_data=True if args.external_data else None)
    print(result.report)
    if args.report:
        if args.report.lower().endswith(".md"):
            write_text(args.report, f"# onnxprune sparsify: {args.model}\n\n```\n{result.report}\n```\n")
        else:
            write_text(args.report, json.dumps(result.report.as_dict(), indent=1))
    print(f"wrote {out}")
    return 0
