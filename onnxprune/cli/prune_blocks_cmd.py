"""`onnxprune prune-blocks MODEL -o OUT (--n N | --blocks NAME ...) [--calibration FILE] [--verify]`: depth pruning."""
from __future__ import annotations

import argparse

from onnxprune.cli.common import add_image_flags, add_ray_flag, check_paths, data_source, make_parent
from onnxprune.text import table


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prune-blocks", help="remove whole residual blocks (depth pruning)",
                       description="Find residual blocks (a branch that leaves the residual stream and rejoins it "
                                   "through an Add of the same shape) and remove the named ones, or the N least "
                                   "important by block influence on --calibration data (1 - cos(input, output)); "
                                   "`onnxprune inspect` lists the blocks. The input file is never overwritten.")
    p.add_argument("model", help="ONNX model file")
    p.add_argument("-o", "--output", required=True, help="where to write the model without the removed blocks")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--n", type=int, help="remove this many transformer layers / residual blocks outside layers, "
                                         "the least important first")
    how.add_argument("--blocks", nargs="+", metavar="NAME",
                     help="remove these blocks (names of their joining Add) or layers (\"<attention Add>+<next Add>\")")
    p.add_argument("--calibration", metavar="FILE.npz|.npy|DIR",
                   help="inputs for block influence (without: the branch norm relative to the stream's on generated "
                        "inputs, with a warning)")
    p.add_argument("--verify", action="store_true",
                   help="run the zero-branch oracle; fail (and write nothing) if it fails")
    add_image_flags(p)
    add_ray_flag(p, "the calibration pass (block influence)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import onnxprune as op

    check_paths({"model": args.model, "calibration data": args.calibration}, {"-o": args.output})
    args.calibration = data_source(args, args.calibration, "--calibration")
    original = op.load_model(args.model)
    result = op.prune_blocks(original, n=args.n, blocks=args.blocks, calibration=args.calibration,
                             verify=args.verify)
    make_parent(args.output)
    op.save_model(result.model, args.output, reference=original)
    removed, parts = set(result.removed), set(result.removed_parts)
    rows = [[b.name, b.kind, len(b.nodes), "x".join(str(d) for d in b.shape),
             f"{result.scores[b.name]:.4g}" if b.name in result.scores else "",
             "removed" if b.name in removed else "part of a removed layer" if b.name in parts else "kept"]
            for b in result.blocks]
    print(table(rows, ["block", "kind", "nodes", "shape", result.score_kind or "score", "result"]))
    count = len(result.removed_parts)
    oracle = f"; zero-branch oracle: ok (max rel error {result.verification.max_rel_error:.2g})" if args.verify else ""
    print(f"{len(removed)} removed ({count} residual block{'s' if count != 1 else ''} of "
          f"{sum(b.kind != 'layer' for b in result.blocks)}){oracle}")
    print(f"wrote {args.output}")
    return 0
