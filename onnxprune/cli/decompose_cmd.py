"""`onnxprune decompose MODEL -o OUT --method tucker|cp|svd (--ranks FILE | --rank-ratio F | --recommend vbmf
[--calibration-ratio R] | --energy E | --target-latency T) [--cost COST.json] [--threads N] [--layers ...] [--force]
[--verify] [--seed N]`."""
from __future__ import annotations

import argparse

from onnxprune.cli.common import (add_image_flags, add_ray_flag, add_report_flags, check_paths, data_source,
                                  make_parent, prepare_report, read_json, report_from_args)
from onnxprune.text import table


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("decompose", help="replace layers by low-rank factor chains (Tucker-2, CP, SVD)",
                       description="Factorise Conv / Gemm / MatMul layers into chains of smaller layers and write a "
                                   "new model. The input file is never overwritten; nothing is written if the result "
                                   "fails onnx.checker, onnxruntime loading or (with --verify) the reconstruction "
                                   "oracle.")
    p.add_argument("model", help="ONNX model file")
    p.add_argument("-o", "--output", required=True, help="where to write the decomposed model")
    p.add_argument("--method", default="tucker",
                   help="tucker (FD_TK, kxk Conv), cp (FD_CP, kxk Conv) or svd (FD_SVD: 1x1 Conv, Gemm, MatMul)")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--ranks", metavar="FILE.json",
                     help='explicit ranks, only these layers: {"conv3": [16, 32], "fc1": 64} '
                          "(Tucker: [input rank, output rank]; CP and SVD: one rank)")
    how.add_argument("--rank-ratio", type=float, help="keep this fraction of every full rank, in (0, 1]")
    how.add_argument("--recommend", choices=["vbmf"], help="ranks recommended by VBMF")
    how.add_argument("--energy", type=float, help="keep this fraction of the squared singular values (svd, tucker)")
    how.add_argument("--target-latency", type=float, metavar="T",
                     help="pick ranks per layer so that the predicted latency is at most T (in (0, 1]) of the "
                          "model's measured onnxruntime latency, losing the least accuracy per ms saved; from "
                          "--cost or a fresh profile")
    p.add_argument("--calibration-ratio", type=float, default=0.0,
                   help="with --recommend vbmf: in [-1, 1], rank = vbmf + (full - vbmf) * R (default 0)")
    p.add_argument("--layers", nargs="+", metavar="NAME", help="only consider these layers (node names)")
    p.add_argument("--rank-step", type=int, default=None, metavar="N",
                   help="round ranks up to a multiple of N, clipped to full rank (default: 16 for computed ranks, "
                        "explicit ranks kept; 1 = off). onnxruntime runs convs in blocks of 16 channels")
    p.add_argument("--cost", metavar="COST.json",
                   help="cost file with measured chains (`onnxprune profile MODEL --decomposition METHOD -o "
                        "COST.json`): keep only chains measured faster than their layer, snap computed ranks to "
                        "their latency step")
    p.add_argument("--threads", type=int,
                   help="onnxruntime threads: to profile with (--target-latency without --cost), or that the --cost "
                        "file was measured with (default: onnxruntime's own)")
    p.add_argument("--force", action="store_true",
                   help="keep chains that cost more MACs than their layer (with a cost model: that measure slower)")
    p.add_argument("--reconstruct", action="store_true",
                   help="re-fit the last factor of every chain on --calibration data (least squares)")
    p.add_argument("--calibration", metavar="FILE.npz|.npy|DIR", help="calibration inputs for --reconstruct")
    p.add_argument("--ridge", type=float, default=None, help="ridge regulariser of --reconstruct")
    p.add_argument("--verify", action="store_true",
                   help="run the reconstruction oracle; fail (and write nothing) if it fails")
    p.add_argument("--seed", type=int, default=0, help="random state of the factorisations (default 0)")
    add_report_flags(p)
    add_image_flags(p)
    add_ray_flag(p, "the calibration passes of --reconstruct")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import onnxprune as op
    from onnxprune.decomposition import decompose

    check_paths({"model": args.model, "ranks file": args.ranks, "calibration data": args.calibration,
                 "evaluation data": args.eval_data, "cost file": args.cost},
                {"-o": args.output, "--report": args.report})
    args.calibration = data_source(args, args.calibration, "--calibration")
    out = args.output
    eval_data = prepare_report(args)
    if args.reconstruct and not args.calibration:
        raise op.InvalidRequestError("--reconstruct needs --calibration FILE.npz (inputs from the training data)")
    if args.threads is not None and args.target_latency is None and not args.cost:
        raise op.InvalidRequestError("--threads goes with --target-latency (the threads to profile with) or --cost "
                                     "(the threads the cost file was measured with)")
    original = op.load_model(args.model)
    cost = op.load_cost(args.cost, args.model, threads=args.threads) if args.cost else None
    ranks = read_json(args.ranks, "ranks") if args.ranks else None
    if ranks is not None and not isinstance(ranks, dict):
        raise op.InvalidRequestError(f"ranks file '{args.ranks}' must hold an object: {{\"layer\": rank, ...}}")
    result = decompose(original, args.method, ranks=ranks, rank_ratio=args.rank_ratio,
                       recommendation=args.recommend, calibration_ratio=args.calibration_ratio, energy=args.energy,
                       layers=args.layers, force=args.force, verify=args.verify, seed=args.seed,
                       rank_step=args.rank_step, calibration=args.calibration, reconstruct=args.reconstruct,
                       ridge=args.ridge, cost=cost, target_latency=args.target_latency,
                       threads=None if cost is not None else args.threads)
    make_parent(out)
    op.save_model(result.model, out, reference=original)
    timed = result.latency is not None
    rows = [[r.name, r.op_type, _ranks(r.ranks), _ranks(r.full_ranks),
             "" if r.rel_error is None else f"{r.rel_error:.3g}",
             "" if r.macs_after is None else f"{r.macs_before / max(r.macs_after, 1):.2f}x",
             *([_ms(r.latency_before), _ms(r.latency_after)] if timed else []),
             r.skipped or "decomposed"] for r in result.layers]
    print(table(rows, ["layer", "op", "ranks", "full ranks", "kernel rel err", "MACs ratio",
                       *(["ms before", "ms after (pred.)"] if timed else []), "result"]))
    print(f"{len(result.decomposed)} of {len(result.layers)} layers decomposed by {result.method}"
          + ("; reconstruction oracle: ok" if args.verify else ""))
    if timed:
        lat = result.latency
        print(f"latency: measured {lat['total']:.4f} ms, predicted {lat['predicted']:.4f} ms "
              f"({lat['predicted_fraction']:.3f}x" + (f", target {lat['target']:g}x)" if lat["target"] else ")"))
    print(f"wrote {out}")
    report_from_args(args, "decompose", out, eval_data, decomposition=result)
    return 0


def _ms(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def _ranks(ranks: tuple[int, ...] | None) -> str:
    return "" if ranks is None else "x".join(str(r) for r in ranks)
