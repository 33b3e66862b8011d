"""`onnxprune plan MODEL -o PLAN.json [--method M] [--ratio R [--scope S | --recommend slamp]] [options]`."""
from __future__ import annotations

import argparse

from onnxprune.cli.common import (add_data_flags, add_option_flags, check_paths, data_source, load_gradients,
                                  options_from_args)
from onnxprune.files import write_text
from onnxprune.criteria import CRITERIA
from onnxprune.errors import InvalidRequestError
from onnxprune.text import table


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plan", help="write an editable plan: every prunable layer with a ratio (or indices) to fill in",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Write a JSON plan listing every prunable layer (name, op type, output channels, channel group, "
                    "group size) with one value slot, plus the method and options. Edit it, then run\n"
                    "  onnxprune apply PLAN.json MODEL -o OUT.onnx\n\n"
                    "Value slots:\n"
                    "  ratio    fraction of the layer's group to remove, in [0, 1): --ratio R with the default\n"
                    "           uniform scope puts R everywhere; --scope global or --recommend slamp put each\n"
                    "           group's computed ratio; without --ratio every slot is 0.0. --method picks which\n"
                    "           channels go when the plan is applied. Layers of one group are coupled; when\n"
                    "           they disagree the larger ratio wins.\n"
                    "  indices  with --method PR_ID (index): output channels of the layer to remove; [] = none.\n"
                    "Indices are applied first, then ratios on the other groups; one group cannot get both.\n"
                    "The model file is never changed.")
    p.add_argument("model", help="ONNX model file")
    p.add_argument("-o", "--output", required=True, metavar="PLAN.json", help="where to write the plan (JSON)")
    p.add_argument("--method", default="l2",
                   help=f"criterion: {', '.join(sorted(CRITERIA))}, or PR_ID/index for an indices plan (default l2; "
                        "NetsPresso spellings PR_L2, PR_GM, PR_NN, PR_SNP accepted)")
    p.add_argument("--ratio", type=float, help="fraction of channels to remove, in [0, 1) (see --scope, --recommend)")
    p.add_argument("--scope", default="uniform", choices=["uniform", "global"],
                   help="uniform: --ratio for every layer (default); global: per-group ratios from normalised scores")
    p.add_argument("--recommend", choices=["slamp"], help="SLAMP: per-group ratios allotted from LAMP scores for --ratio")
    add_data_flags(p)
    p.add_argument("--seed", type=int, default=0, help="seed of method random, stored in the plan (default 0)")
    add_option_flags(p)
    p.add_argument("--quiet", action="store_true", help="do not print the layer table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import onnxprune as op

    check_paths({"model": args.model, "calibration data": args.calibration, "gradients": args.gradients},
                {"-o": args.output})
    args.calibration = data_source(args, args.calibration, "--calibration")
    out = args.output
    if out.lower().endswith(".onnx"):
        raise InvalidRequestError(f"'{out}' looks like a model file; a plan is JSON (e.g. -o plan.json)")
    plan = op.make_plan(args.model, args.method, args.ratio, scope=args.scope, recommendation=args.recommend,
                        options=options_from_args(args), calibration=args.calibration,
                        gradients=load_gradients(args.gradients), seed=args.seed)
    if not args.quiet:
        rows = [[layer.name, layer.op_type, layer.channels, layer.group, layer.group_size,
                 layer.indices if layer.indices is not None else f"{layer.ratio:.4g}"] for layer in plan.layers]
        print(table(rows, ["layer", "op", "channels", "group", "group size",
                           "indices" if plan.method == "index" else "ratio"]))
    write_text(out, plan.to_json())
    print(f"wrote plan {out} ({len(plan.layers)} prunable layers, method {plan.method}); edit it, then run: "
          f"onnxprune apply {out} {args.model} -o OUT.onnx")
    return 0
