"""`onnxprune prune MODEL -o OUT (--ratio R | --ratios FILE | --indices FILE | --plan FILE | --target-macs T |
--target-params T | --target-latency T [--cost COST.json] [--threads N]) [options]`."""
from __future__ import annotations

import argparse
import json

from onnxprune.cli.common import (add_data_flags, add_option_flags, add_ray_flag, add_report_flags,
                                  changed_option_flags, check_paths, data_source, load_gradients, make_parent,
                                  options_from_args, prepare_report, read_json, report_from_args)
from onnxprune.files import write_text
from onnxprune.criteria import CRITERIA
from onnxprune.criteria.registry import ALIASES
from onnxprune.errors import InvalidRequestError

# defaults of the flags a plan file carries itself (prune --plan refuses other values)
PLAN_CARRIES = {"method": None, "scope": None, "recommend": None, "seed": 0}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prune", help="remove channels by a criterion, by index or by a plan, write a new model",
                       description="Prune output channels (and every channel coupled to them) and write a new model. "
                                   "The input file is never overwritten; nothing is written if the result fails "
                                   "onnx.checker, onnxruntime loading or (with --verify) the mask oracle.")
    p.add_argument("model", help="ONNX model file")
    p.add_argument("-o", "--output", required=True, help="where to write the pruned model")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--ratio", type=float, help="fraction of channels to remove, in [0, 1) (see --scope, --recommend)")
    how.add_argument("--ratios", metavar="FILE.json", help='per-layer fractions: {"conv1": 0.5, ...}')
    how.add_argument("--indices", metavar="FILE.json", help='channels to remove (PR_ID): {"conv1": [0, 5, 7], ...}')
    how.add_argument("--plan", metavar="FILE.json",
                     help="apply a plan written by --save-plan or `onnxprune plan` (same as `onnxprune apply`)")
    how.add_argument("--target-macs", type=float, metavar="T",
                     help="budget: keep at most T (in (0, 1]) of the model's MACs; every group's count is chosen "
                          "together, losing the least importance (--method scores, normalised by --layer-norm) per "
                          "MAC saved; at most --max-ratio of a group; kept counts are multiples of --step-size")
    how.add_argument("--target-params", type=float, metavar="T",
                     help="budget: keep at most T (in (0, 1]) of the model's parameters (as --target-macs)")
    how.add_argument("--target-latency", type=float, metavar="T",
                     help="budget: keep at most T (in (0, 1]) of the model's measured onnxruntime latency, "
                          "predicted from --cost (a file of `onnxprune profile`) or a fresh profile (cached); kept "
                          "counts follow the runtime's latency steps. The result is measured against the original "
                          "and, when more than 3%% off T, allocated again (at most 4 measured attempts); both the "
                          "prediction and the measurement are printed")
    aliases = ", ".join(f"{k.upper()}={v}" for k, v in sorted(ALIASES.items()) if v != "index")
    p.add_argument("--method", default=PLAN_CARRIES["method"],
                   help=f"criterion: {', '.join(sorted(CRITERIA))} (NetsPresso spellings {aliases}). Default: the "
                        "recommended pipeline, which fills every knob not given: with --calibration the obs "
                        "criterion, --scope global with --layer-norm tss_norm, then --compensate and --reconstruct "
                        "(with --no-reconstruct: fluctuation, --layer-norm linear_scaling); without it l2 with "
                        "--score-consumers and no recovery (a note says data would help); --target-latency keeps the "
                        "knapsack with --max-ratio 0.7 and, with the re-fit, also re-fits one uniform ratio measured "
                        "to the same budget and keeps whichever stays closer to the original on the calibration data "
                        "(--scope knapsack skips that). Naming --method runs the "
                        "explicit pipeline instead: --scope uniform (a budget: knapsack), the option flags as given, "
                        "no compensation or reconstruction unless asked. The chosen pipeline is printed")
    p.add_argument("--scope", default=PLAN_CARRIES["scope"], choices=["uniform", "global", "knapsack"],
                   help="uniform: --ratio from every group; global: normalised scores compared across groups; with "
                        "--target-macs/--target-params both search the ratio that meets the budget; knapsack (budgets "
                        "only): the greedy knapsack (the only one for --target-latency). Default: global without "
                        "--method, else uniform (a budget: knapsack)")
    p.add_argument("--recommend", choices=["slamp"], help="SLAMP: per-group ratios allotted from LAMP scores for --ratio")
    p.add_argument("--cost", metavar="COST.json",
                   help="--target-latency: the cost model written by `onnxprune profile MODEL -o COST.json` "
                        "(default: profile the model now)")
    p.add_argument("--threads", type=int, help="--target-latency: onnxruntime threads to profile with (default: "
                                                "onnxruntime's default, like a user's session); with --cost, the "
                                                "thread count the file was measured with (checked)")
    add_data_flags(p, corrections=True)
    p.add_argument("--seed", type=int, default=PLAN_CARRIES["seed"], help="seed of method random (default 0)")
    add_option_flags(p)
    p.add_argument("--save-plan", metavar="FILE.json",
                   help="also write the plan: layer values and the channels kept per group (replayable, editable)")
    p.add_argument("--verify", action="store_true", help="run the mask oracle; fail (and write nothing) if it fails")
    p.add_argument("--compensate", action=argparse.BooleanOptionalAction, default=None,
                   help="fold each removed channel's mean over --calibration into the bias of the layers that read it "
                        "(one pass, biases only): keeps a freshly pruned network from drifting; --verify also runs "
                        "the compensation oracle. Default: on without --method when --calibration is given")
    p.add_argument("--reconstruct", action=argparse.BooleanOptionalAction, default=None,
                   help="re-fit the layers that read pruned channels on --calibration (ridge least squares) so "
                        "their outputs match the unpruned model's; --verify checks the surgery before the re-fit. "
                        "Default: on without --method when --calibration is given")
    p.add_argument("--ridge", type=float, default=None,
                   help="--reconstruct: ridge regulariser relative to the mean diagonal of X^T X (default 1e-3)")
    p.add_argument("--external-data", action="store_true", help="write weights to OUT.data next to the model")
    p.add_argument("--record", metavar="FILE.json", help="also write the pruning record (tensor -> kept mask)")
    add_report_flags(p)
    add_ray_flag(p, "the calibration passes (data criteria, --compensate, --reconstruct)")
    p.set_defaults(func=run)


def _correction_args(args: argparse.Namespace) -> dict:
    """prune() keywords for --compensate / --reconstruct / --ridge (None: the recommended pipeline decides)."""
    from onnxprune.reconstruction import DEFAULT_RIDGE

    recommended = args.method is None and not args.plan and not args.indices
    may_reconstruct = args.reconstruct or (args.reconstruct is None and recommended and args.calibration)
    if args.ridge is not None and not may_reconstruct:
        raise InvalidRequestError("--ridge applies to --reconstruct only")
    ridge = {"ridge": DEFAULT_RIDGE if args.ridge is None else args.ridge}
    if not (args.reconstruct or args.compensate):
        return {"compensate": args.compensate, "reconstruct": args.reconstruct, **ridge}
    if not args.calibration:
        flag = "--reconstruct" if args.reconstruct else "--compensate"
        raise InvalidRequestError(f"{flag} needs --calibration FILE.npz|.npy (samples of the model's inputs, "
                                  "e.g. a few hundred training images)")
    return {"compensate": args.compensate, "reconstruct": args.reconstruct, "calibration": args.calibration, **ridge}


def _correct_plan_result(args: argparse.Namespace, result, fixes: dict) -> None:
    """--compensate / --reconstruct after `apply_plan` (which only prunes), in the same order as prune()."""
    from onnxprune.errors import VerificationError
    from onnxprune.reconstruction import compensate_pruned, reconstruct_pruned, verify_compensation

    if fixes.get("compensate"):
        compensate_pruned(args.model, result, args.calibration)
        if args.verify and not result.exact:
            print("compensation oracle: not run (the plan prunes inexact groups; `onnxprune prune --ratio/--ratios "
                  "--verify` checks their exact part)")
        elif args.verify:
            report = verify_compensation(args.model, result)
            result.compensation.verification = report
            if not report.ok:
                raise VerificationError(f"compensation oracle failed (max relative error "
                                        f"{report.max_rel_error:.3g}):\n{report}")
    if fixes.get("reconstruct"):
        reconstruct_pruned(args.model, result, args.calibration, ridge=fixes["ridge"])


def _budget_args(args: argparse.Namespace) -> dict:
    """prune() keywords for --target-macs / --target-params / --target-latency (+ --cost, --threads)."""
    if (args.cost or args.threads is not None) and args.target_latency is None:
        raise InvalidRequestError("--cost and --threads go with --target-latency")
    if args.target_macs is not None:
        return {"target_macs": args.target_macs}
    if args.target_params is not None:
        return {"target_params": args.target_params}
    if args.target_latency is None:
        return {}
    from onnxprune.profile import load_cost

    if args.cost:  # --threads: the thread count the cost file was measured with (it is checked)
        return {"target_latency": args.target_latency, "cost": load_cost(args.cost, args.model, threads=args.threads)}
    return {"target_latency": args.target_latency, "threads": args.threads}


def _refuse_flags_a_plan_carries(args: argparse.Namespace) -> None:
    """--plan brings its own method, scope, recommendation, seed and options: refuse those flags beside it."""
    method = args.method and ALIASES.get(args.method.lower(), args.method.lower())  # PR_L2 is l2
    values = {**vars(args), "method": method}
    given = ["--" + name for name, default in PLAN_CARRIES.items() if values[name] != default]
    given += changed_option_flags(args)
    if given:
        raise InvalidRequestError(f"{', '.join(given)} cannot be used with --plan: the plan carries the method, "
                                  "scope, recommendation, seed and options; edit the plan, or drop --plan")


def _refuse_flags_indices_ignore(args: argparse.Namespace) -> None:
    """--indices names the channels to remove: a method, scope, recommendation or seed would choose none of them."""
    given = ["--" + name for name, default in PLAN_CARRIES.items() if getattr(args, name) != default]
    if given:
        raise InvalidRequestError(f"{', '.join(given)} cannot be used with --indices: the indices file names the "
                                  "channels to remove; drop those flags, or use --ratio/--ratios to let a method choose")


def run(args: argparse.Namespace) -> int:
    import onnxprune as op

    if args.plan:
        _refuse_flags_a_plan_carries(args)
    elif args.indices:
        _refuse_flags_indices_ignore(args)
    check_paths({"model": args.model, "plan": args.plan, "ratios file": args.ratios, "indices file": args.indices,
                 "calibration data": args.calibration, "gradients": args.gradients, "evaluation data": args.eval_data,
                 "cost file": args.cost},
                {"-o": args.output, "--record": args.record, "--save-plan": args.save_plan, "--report": args.report})
    args.calibration = data_source(args, args.calibration, "--calibration")
    eval_data = prepare_report(args)
    # no option flag given: None, so that the recommended pipeline (no --method) picks the options
    options = options_from_args(args) if changed_option_flags(args) or args.method else None
    fixes = _correction_args(args)
    budget = _budget_args(args)
    if args.plan:
        result = op.apply_plan(args.model, args.plan, verify=args.verify, calibration=args.calibration,
                               gradients=load_gradients(args.gradients))
        _correct_plan_result(args, result, fixes)
    elif args.indices:
        result = op.prune_by_index(args.model, read_json(args.indices, "indices"), options=options, verify=args.verify,
                                   **{**fixes, "compensate": bool(fixes["compensate"]),
                                      "reconstruct": bool(fixes["reconstruct"])})
    else:
        ratio, ratios = (None, read_json(args.ratios, "ratios")) if args.ratios else (args.ratio, None)
        result = op.prune(args.model, args.method, ratio, ratios=ratios, scope=args.scope,
                          recommendation=args.recommend, options=options, calibration=args.calibration,
                          gradients=load_gradients(args.gradients), verify=args.verify, seed=args.seed,
                          **{k: v for k, v in fixes.items() if k != "calibration"}, **budget)
    make_parent(args.output)
    op.save_model(result.model, args.output, reference=result.reference,
                  external_data=True if args.external_data else None)
    print(result.summary)
    print(f"pruned {len(result.pruned_groups)} channel groups ({result.achieved_ratio:.1%} of their channels); "
          f"{len(result.channels)} tensors shrank")
    if result.verification is not None:
        print(f"mask oracle: ok (max relative error {result.verification.max_rel_error:.2e})"
              + (" (checked before compensation / reconstruction)"
                 if result.compensation is not None or result.reconstruction is not None else ""))
    if result.compensation is not None:
        print(result.compensation)
        if result.compensation.verification is not None:
            print(f"compensation oracle: ok (max relative error {result.compensation.verification.max_rel_error:.2e})")
    if getattr(result, "reconstruction", None) is not None:
        print(result.reconstruction)
    if args.record:
        write_text(args.record, json.dumps({"channels": result.channels, "plan": result.plan.as_dict()}))
    if args.save_plan:
        write_text(args.save_plan, result.plan.to_json())
        print(f"wrote plan {args.save_plan}")
    print(f"wrote {args.output}")
    report_from_args(args, "prune", args.output, eval_data, prune_result=result)
    return 0
