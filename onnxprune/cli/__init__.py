"""Command line: `onnxprune COMMAND ...`. Each command lives in its own module with `register(subparsers)`."""
from __future__ import annotations

import argparse
import importlib
import sys
import traceback

from onnxprune.cli.common import executor_from_args
from onnxprune.errors import OnnxPruneError
from onnxprune.executor import scope

COMMAND_MODULES = ("inspect", "prune", "plan", "apply", "decompose", "verify", "sparsify", "bench", "sensitivity",
                   "profile", "prune_blocks")
DEBUG_HELP = "print the traceback of an error (by default only its message is printed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="onnxprune",
        description="Prune channels and factorise layers of ONNX models, offline, with every result checked by onnxruntime.",
    )
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"onnxprune.cli.{name}_cmd")
        module.register(sub)
    for command in sub.choices.values():  # `onnxprune prune ... --debug` works as well as `onnxprune --debug prune`
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with scope(executor_from_args(args)):  # --ray: every map of the command runs on Ray
            return int(args.func(args) or 0)
    except OnnxPruneError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"onnxprune {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except MemoryError:
        if args.debug:
            traceback.print_exc()
        print(f"onnxprune {args.command}: error: out of memory; try a smaller model, batch or input", file=sys.stderr)
        return 3
    except Exception as exc:  # a bug of onnxprune: a short report, the traceback only with --debug
        if args.debug:
            traceback.print_exc()
        print(f"onnxprune {args.command}: internal error ({type(exc).__name__}: {exc}); this is a bug in "
              "onnxprune: please report it with the model (rerun with --debug for the traceback)", file=sys.stderr)
        return 3


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
