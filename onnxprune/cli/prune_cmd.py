"""`onnxprune prune MODEL -o OUT (--ratio R | --ratios FILE | --indices FILE | --plan FILE) [options]`.

`_option_flags`, `_options`, `_gradients` and `_data_flags` are shared with the `plan` and `apply` commands."""
from __future__ import annotations

import argparse
import json
import os

import numpy as np

from onnxprune.cli.common import make_parent, output_path, read_json
from onnxprune.criteria import CRITERIA
from onnxprune.criteria.registry import ALIASES
from onnxprune.errors import InvalidRequestError
from onnxprune.options import CHOICES, Options

_DEFAULTS = Options()


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
    aliases = ", ".join(f"{k.upper()}={v}" for k, v in sorted(ALIASES.items()) if v != "index")
    p.add_argument("--method", default="l2",
                   help=f"criterion for --ratio/--ratios: {', '.join(sorted(CRITERIA))} (default l2; "
                        f"NetsPresso spellings {aliases})")
    p.add_argument("--scope", default="uniform", choices=["uniform", "global"],
                   help="uniform: --ratio from every group (default); global: normalised scores compared across groups")
    p.add_argument("--recommend", choices=["slamp"], help="SLAMP: per-group ratios allotted from LAMP scores for --ratio")
    _data_flags(p)
    p.add_argument("--seed", type=int, default=0, help="seed of method random (default 0)")
    _option_flags(p)
    p.add_argument("--save-plan", metavar="FILE.json",
                   help="also write the plan: layer values and the channels kept per group (replayable, editable)")
    p.add_argument("--verify", action="store_true", help="run the mask oracle; fail (and write nothing) if it fails")
    p.add_argument("--compensate", action="store_true",
                   help="fold each removed channel's mean over --calibration into the bias of the layers that read it "
                        "(one pass, biases only): keeps a freshly pruned network from drifting; --verify also runs "
                        "the compensation oracle")
    p.add_argument("--reconstruct", action="store_true",
                   help="re-fit the layers that read pruned channels on --calibration (ridge least squares) so "
                        "their outputs match the unpruned model's; --verify checks the surgery before the re-fit")
    p.add_argument("--ridge", type=float, default=None,
                   help="--reconstruct: ridge regulariser relative to the mean diagonal of X^T X (default 1e-3)")
    p.add_argument("--external-data", action="store_true", help="write weights to OUT.data next to the model")
    p.add_argument("--record", metavar="FILE.json", help="also write the pruning record (tensor -> kept mask)")
    from onnxprune.report import add_report_flags

    add_report_flags(p)
    p.set_defaults(func=run)


def _option_flags(p: argparse.ArgumentParser) -> None:
    for name in ("policy", "layer_norm", "group_policy", "step_op"):
        choices = list(CHOICES[name])
        p.add_argument("--" + name.replace("_", "-"), default=getattr(_DEFAULTS, name), choices=choices,
                       help=f"Options.{name} (default {getattr(_DEFAULTS, name)})")
    p.add_argument("--step-size", type=int, default=_DEFAULTS.step_size,
                   help=f"round kept channels per group to this multiple (default {_DEFAULTS.step_size})")
    p.add_argument("--reshape-channel-axis", type=int, default=_DEFAULTS.reshape_channel_axis, choices=[0, 1, -1, -2],
                   help="at a Reshape into heads: -1/1 prune dims inside heads (default), 0/-2 whole heads")
    p.add_argument("--max-ratio", type=float, default=_DEFAULTS.max_ratio,
                   help=f"global scope and SLAMP: most of one group removed (default {_DEFAULTS.max_ratio})")
    p.add_argument("--score-consumers", action="store_true",
                   help="weight criteria (l1, l2, gm, lamp) also score the consumer slices (input channels of "
                        "the next layers), as Torch-Pruning does; better choices on exports with BN folded into "
                        "the convs (README: 'How good is each criterion')")


def _data_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--calibration", metavar="FILE.npz|.npy",
                   help="calibration data for data-based methods (nn, activation, snp): a .npz of arrays keyed by "
                        "input name, or a .npy array for a single-input model (one batch; split into batches of 32)")
    p.add_argument("--gradients", metavar="FILE.npz", help="gradients keyed by initializer name (method taylor)")


def _options(args: argparse.Namespace) -> Options:
    return Options(policy=args.policy, layer_norm=args.layer_norm, group_policy=args.group_policy,
                   reshape_channel_axis=args.reshape_channel_axis, step_size=args.step_size, step_op=args.step_op,
                   max_ratio=args.max_ratio, score_consumers=args.score_consumers)


def _gradients(path: str | None) -> dict[str, np.ndarray] | None:
    if path is None:
        return None
    if not os.path.exists(path):
        raise InvalidRequestError(f"gradients file '{path}' does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    except (ValueError, OSError) as exc:
        raise InvalidRequestError(f"gradients file '{path}' is not a .npz archive: {exc}") from None


def _correction_args(args: argparse.Namespace) -> dict:
    """prune() keywords for --compensate / --reconstruct / --ridge ({} without either)."""
    from onnxprune.reconstruction import DEFAULT_RIDGE

    if args.ridge is not None and not args.reconstruct:
        raise InvalidRequestError("--ridge applies to --reconstruct only")
    if not (args.reconstruct or args.compensate):
        return {}
    if not args.calibration:
        flag = "--reconstruct" if args.reconstruct else "--compensate"
        raise InvalidRequestError(f"{flag} needs --calibration FILE.npz|.npy (samples of the model's inputs, "
                                  "e.g. a few hundred training images)")
    return {"compensate": args.compensate, "reconstruct": args.reconstruct, "calibration": args.calibration,
            "ridge": DEFAULT_RIDGE if args.ridge is None else args.ridge}


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


def run(args: argparse.Namespace) -> int:
    import onnxprune as op

    from onnxprune.report import check_report_path, report_from_args

    out = output_path(args.model, args.output)
    check_report_path(args)
    options = _options(args)
    fixes = _correction_args(args)
    if args.plan:
        result = op.apply_plan(args.model, args.plan, verify=args.verify, calibration=args.calibration,
                               gradients=_gradients(args.gradients))
        _correct_plan_result(args, result, fixes)
    elif args.indices:
        result = op.prune_by_index(args.model, read_json(args.indices, "indices"), options=options, verify=args.verify,
                                   **fixes)
    else:
        ratio, ratios = (None, read_json(args.ratios, "ratios")) if args.ratios else (args.ratio, None)
        result = op.prune(args.model, args.method, ratio, ratios=ratios, scope=args.scope,
                          recommendation=args.recommend, options=options, calibration=args.calibration,
                          gradients=_gradients(args.gradients), verify=args.verify, seed=args.seed,
                          **{k: v for k, v in fixes.items() if k != "calibration"})
    make_parent(out)
    op.save_model(result.model, out, reference=result.reference, external_data=True if args.external_data else None)
    print(result.summary)
    print(f"pruned {len(result.pruned_groups)} channel groups ({result.achieved_ratio:.1%} of their channels); "
          f"{len(result.channels)} tensors shrank")
    if result.verification is not None:
        print(f"mask oracle: ok (max relative error {result.verification.max_rel_error:.2e})"
              + (" (checked before compensation / reconstruction)" if fixes else ""))
    if result.compensation is not None:
        print(result.compensation)
        if result.compensation.verification is not None:
            print(f"compensation oracle: ok (max relative error {result.compensation.verification.max_rel_error:.2e})")
    if getattr(result, "reconstruction", None) is not None:
        print(result.reconstruction)
    if args.record:
        with open(output_path(args.model, args.record), "w", encoding="utf-8") as handle:
            json.dump({"channels": result.channels, "plan": result.plan.as_dict()}, handle)
    if args.save_plan:
        result.plan.save(output_path(args.model, args.save_plan))
        print(f"wrote plan {args.save_plan}")
    print(f"wrote {out}")
    report_from_args(args, "prune", out, prune_result=result)
    return 0
