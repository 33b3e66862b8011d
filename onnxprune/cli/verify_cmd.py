"""`onnxprune verify A B`: compare two models' outputs with onnxruntime."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("verify", help="run two models on the same inputs and compare every output",
                       description="Run both models in onnxruntime on the same generated inputs and report, per "
                                   "output, the max absolute and relative error. Exit code 1 when they differ.")
    p.add_argument("reference", help="the original model")
    p.add_argument("candidate", help="the model to check")
    p.add_argument("--tol", type=float, default=1e-4, help="relative error tolerance (default 1e-4)")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated inputs")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import onnxprune as op
    from onnxprune.runtime import make_inputs

    reference = op.load_model(args.reference)
    report = op.verify(reference, op.load_model(args.candidate), make_inputs(reference, seed=args.seed), tol=args.tol)
    print(report)
    print("equal within tolerance" if report.ok else "DIFFERENT")
    return 0 if report.ok else 1
