"""`onnxprune evaluate MODEL --data DATA.npz|DIR [--reference REF.onnx] [--batch-size N] [--json]`."""
from __future__ import annotations

import argparse
import json
import os

from onnxprune.cli.common import add_image_flags, add_ray_flag, check_paths, data_source


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="top-1/top-5 accuracy on labelled data (and agreement with a reference)",
                       description="Run the model with onnxruntime over labelled data and print top-1 (and top-5) "
                                   "accuracy; with --reference, also the agreement, cosine and relative error of "
                                   "its outputs against the reference model's (e.g. the unpruned one).")
    p.add_argument("model", help="ONNX model file")
    p.add_argument("--data", required=True, metavar="FILE.npz|DIR",
                   help="a .npz holding the labels under 'y' (or 'labels') and the inputs keyed by input name (a "
                        "single-input model may use 'x'), or an image folder (see 'image folders')")
    p.add_argument("--reference", metavar="REF.onnx", help="also compare the outputs with this model's")
    p.add_argument("--batch-size", type=int, default=32, help="samples per onnxruntime run (default 32)")
    p.add_argument("--output", metavar="NAME", help="graph output judged (default: the first)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    add_image_flags(p)
    add_ray_flag(p, "the evaluation (one task per shard of batches)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from onnxprune.errors import InvalidRequestError
    from onnxprune.workflows.evaluate import evaluate
    from onnxprune.workflows.report import load_eval_data

    for path in (args.model, args.reference):
        if path is not None and not os.path.isfile(path):
            raise InvalidRequestError(f"model file '{path}' does not exist")
    check_paths({"model": args.model, "data": args.data, "reference": args.reference}, {})
    data = data_source(args, args.data, "--data")
    if isinstance(data, str):
        data = load_eval_data(args.model, data)
    values = evaluate(args.model, data, reference=args.reference, batch_size=args.batch_size, output=args.output)
    if args.json:
        print(json.dumps(values, indent=1))
    else:
        print("  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items()))
    return 0
