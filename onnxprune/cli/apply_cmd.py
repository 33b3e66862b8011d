"""`onnxprune apply PLAN.json MODEL -o OUT [--verify] [--save-plan FILE]`."""
from __future__ import annotations

import argparse

from onnxprune.cli.common import add_data_flags, check_paths, data_source, load_gradients, make_parent
from onnxprune.files import write_text


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "apply", help="prune a model exactly as a plan file says (from `onnxprune plan` or --save-plan)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Prune MODEL as PLAN says and write a new model. The plan must have been made for this model "
                    "(checked by a fingerprint of its structure).\n\n"
                    "  * a plan with a 'groups' section (written by a run: prune/apply --save-plan) is replayed:\n"
                    "    exactly the recorded channels go, giving a byte-identical model (if a layer value was\n"
                    "    edited after the recording it refuses: delete 'groups' and 'layers_digest' to apply it);\n"
                    "  * otherwise the layer values are applied: 'indices' entries first, then 'ratio' entries\n"
                    "    on the other groups, chosen by the plan's method and options.\n\n"
                    "Neither the model nor the plan is overwritten; nothing is written if the result fails "
                    "onnx.checker, onnxruntime loading or (with --verify) the mask oracle.")
    p.add_argument("plan", metavar="PLAN", help="plan JSON file")
    p.add_argument("model", metavar="MODEL", help="ONNX model file")
    p.add_argument("-o", "--output", required=True, help="where to write the pruned model")
    p.add_argument("--verify", action="store_true", help="run the mask oracle; fail (and write nothing) if it fails")
    add_data_flags(p)
    p.add_argument("--save-plan", metavar="FILE.json",
                   help="write the plan with the channels actually removed recorded (replays this run exactly)")
    p.add_argument("--external-data", action="store_true", help="write weights to OUT.data next to the model")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import onnxprune as op

    check_paths({"model": args.model, "plan": args.plan, "calibration data": args.calibration,
                 "gradients": args.gradients},
                {"-o": args.output, "--save-plan": args.save_plan})
    args.calibration = data_source(args, args.calibration, "--calibration")
    plan = op.Plan.load(args.plan)
    result = op.apply_plan(args.model, plan, verify=args.verify, calibration=args.calibration,
                           gradients=load_gradients(args.gradients))
    make_parent(args.output)
    op.save_model(result.model, args.output, reference=result.reference,
                  external_data=True if args.external_data else None)
    print(result.summary)
    how = "replayed the recorded channels" if plan.recorded else "applied the layer values"
    print(f"{how}: pruned {len(result.pruned_groups)} channel groups ({result.achieved_ratio:.1%} of their "
          f"channels); {len(result.channels)} tensors shrank")
    if result.verification is not None:
        print(f"mask oracle: ok (max relative error {result.verification.max_rel_error:.2e})")
    if args.save_plan:
        write_text(args.save_plan, result.plan.to_json())
        print(f"wrote plan {args.save_plan}")
    print(f"wrote {args.output}")
    return 0

