"""Command line: `onnxprune COMMAND ...`. Each command lives in its own module with `register(subparsers)`."""
from __future__ import annotations

import argparse
import importlib
import sys

from onnxprune.errors import OnnxPruneError

COMMAND_MODULES = ("inspect", "prune", "plan", "apply", "decompose", "verify", "sparsify", "bench", "sensitivity",
                   "profile", "prune_blocks")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="onnxprune",
        description="Prune channels and factorise layers of ONNX models, offline, with every result checked by onnxruntime.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"onnxprune.cli.{name}_cmd")
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except OnnxPruneError as exc:
        print(f"onnxprune {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
