"""`onnxprune prune MODEL -o OUT (--ratio R | --ratios FILE | --indices FILE) [--verify]`."""
from __future__ import annotations

import argparse
import json

from onnxprune.cli.common import make_parent, output_path, read_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prune", help="remove channels by a criterion or by index, write a new model",
                       description="Prune output channels (and every channel coupled to them) and write a new model. "
                                   "The input file is never overwritten; nothing is written if the result fails "
                                   "onnx.checker, onnxruntime loading or (with --verify) the mask oracle.")
    p.add_argument("model", help="ONNX model file")
    p.add_argument("-o", "--output", required=True, help="where to write the pruned model")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--ratio", type=float, help="fraction of channels to remove from every prunable group, in [0, 1)")
    how.add_argument("--ratios", metavar="FILE.json", help='per-layer fractions: {"conv1": 0.5, ...}')
    how.add_argument("--indices", metavar="FILE.json", help='channels to remove: {"conv1": [0, 5, 7], ...}')
    p.add_argument("--method", default="l2", help="criterion for --ratio/--ratios: l2 (PR_L2, default), l1")
    p.add_argument("--step-size", type=int, default=2, help="round kept channels per group to this multiple (default 2)")
    p.add_argument("--step-op", default="round", choices=["round", "round_up", "round_down", "none"])
    p.add_argument("--reshape-channel-axis", type=int, default=-1, choices=[0, 1, -1, -2],
                   help="at a Reshape into heads: -1/1 prune dims inside heads (default), 0/-2 whole heads")
    p.add_argument("--verify", action="store_true", help="run the mask oracle; fail (and write nothing) if it fails")
    p.add_argument("--external-data", action="store_true", help="write weights to OUT.data next to the model")
    p.add_argument("--record", metavar="FILE.json", help="also write the pruning record (tensor -> kept mask)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import onnxprune as op

    out = output_path(args.model, args.output)
    options = op.Options(step_size=args.step_size, step_op=args.step_op,
                         reshape_channel_axis=args.reshape_channel_axis)
    if args.indices:
        indices = read_json(args.indices, "indices")
        result = op.prune_by_index(args.model, indices, options=options, verify=args.verify)
    elif args.ratios:
        result = op.prune(args.model, args.method, ratios=read_json(args.ratios, "ratios"), options=options,
                          verify=args.verify)
    else:
        result = op.prune(args.model, args.method, args.ratio, options=options, verify=args.verify)
    make_parent(out)
    op.save_model(result.model, out, reference=result.reference, external_data=True if args.external_data else None)
    print(result.summary)
    print(f"pruned {len(result.pruned_groups)} channel groups; {len(result.channels)} tensors shrank")
    if result.verification is not None:
        print(f"mask oracle: ok (max relative error {result.verification.max_rel_error:.2e})")
    if args.record:
        with open(output_path(args.model, args.record), "w", encoding="utf-8") as handle:
            json.dump({"channels": result.channels, "plan": {str(k): v for k, v in result.plan.items()}}, handle)
    print(f"wrote {out}")
    return 0
