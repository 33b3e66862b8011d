"""Command line: `onnxprune COMMAND ...`. Each command lives in its own module with `register(subparsers)`."""
from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
import traceback
import warnings

from onnxprune.cli.common import executor_from_args
from onnxprune.errors import OnnxPruneError
from onnxprune.executor import scope
from onnxprune.progress import message, silenced

COMMAND_MODULES = ("inspect", "prune", "plan", "apply", "decompose", "verify", "sparsify", "bench", "evaluate",
                   "sensitivity", "profile", "prune_blocks")
DEBUG_HELP = "print the traceback of an error (by default only its message is printed)"
QUIET_HELP = "no progress bars (they are shown only when stderr is a terminal anyway)"
PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="onnxprune",
        description="Prune channels and factorise layers of ONNX models, offline, with every result checked by onnxruntime.",
    )
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    parser.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"onnxprune.cli.{name}_cmd")
        module.register(sub)
    for command in sub.choices.values():  # `onnxprune prune ... --debug` works as well as `onnxprune --debug prune`
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
        with contextlib.suppress(argparse.ArgumentError):  # plan has its own --quiet (which also means no bars)
            command.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS, help=QUIET_HELP)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    with warnings.catch_warnings(), contextlib.ExitStack() as stack:
        warnings.showwarning = _warning_printer(args.command, args.debug)
        if getattr(args, "quiet", False):
            stack.enter_context(silenced())
        return _run(args)


def _warning_printer(command: str, debug: bool):
    """onnxprune's own warnings as one line each ("onnxprune prune: warning: ..."); warnings raised inside other
    packages (tensorly, onnx, numpy, ...) are their internals, not the user's business: shown only with --debug."""
    def show(text, category, filename, lineno, file=None, line=None) -> None:
        ours = os.path.abspath(filename).startswith(PACKAGE + os.sep)
        if ours or debug:
            where = "" if ours else f" ({category.__name__} from {filename}:{lineno})"
            message(f"onnxprune {command}: warning: {text}{where}")
    return show


def _run(args: argparse.Namespace) -> int:
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
