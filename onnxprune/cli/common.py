"""Helpers shared by the CLI commands: the input / output path check every command makes before any work, atomic
text outputs, JSON and gradient files, the pruning option and data flags (prune, plan, apply), and the --report /
--eval-data flags (prune, decompose)."""
from __future__ import annotations

import argparse
import json
import os
from dataclasses import fields
from typing import Any

import numpy as np

from onnxprune.errors import InvalidRequestError
from onnxprune.options import CHOICES, Options

_DEFAULTS = Options()


# --------------------------------------------------------------------------- files

def check_paths(inputs: dict[str, str | None], outputs: dict[str, str | None]) -> None:
    """Refuse, before any work, an output that is one of the inputs or another output of the same command, or that
    cannot be written (a folder, or under a file). `inputs` names each input ("model", "plan", ...), `outputs` each
    output by its flag ("-o", "--record", ...); None entries are flags not given. Missing output folders are fine:
    onnxprune.files.write_text and make_parent create them once the result is ready."""
    given_inputs = {what: path for what, path in inputs.items() if path}
    seen: dict[str, str] = {}
    for flag, path in outputs.items():
        if not path:
            continue
        for what, source in given_inputs.items():
            if _same_file(source, path):
                raise InvalidRequestError(f"output {flag} '{path}' is the input {what}; onnxprune never overwrites "
                                          "its input (choose another file)")
        for other, taken in seen.items():
            if _same_file(taken, path):
                raise InvalidRequestError(f"output {flag} '{path}' is also the output {other}; give each output "
                                          "its own file")
        _check_writable(flag, path)
        seen[flag] = path


def _same_file(a: str, b: str) -> bool:
    """True when the two paths name one file (existing or not; links resolved)."""
    if os.path.exists(a) and os.path.exists(b):
        return os.path.samefile(a, b)
    return os.path.normcase(os.path.realpath(a)) == os.path.normcase(os.path.realpath(b))


def _check_writable(flag: str, path: str) -> None:
    if os.path.isdir(path):
        raise InvalidRequestError(f"output {flag} '{path}' is a folder; give a file name")
    folder = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(folder):
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder):
        raise InvalidRequestError(f"output {flag} '{path}' cannot be written: '{folder}' is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InvalidRequestError(f"output {flag} '{path}' cannot be written: no permission to write in '{folder}'")


def make_parent(path: str) -> None:
    """Create the output's folder (called once the result is ready to be written)."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)


def read_json(path: str, what: str):
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise InvalidRequestError(f"{what} file '{path}' does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequestError(f"{what} file '{path}' is not valid JSON: {exc}") from None


def load_gradients(path: str | None) -> dict[str, np.ndarray] | None:
    """The arrays of a --gradients .npz keyed by initializer name (None without the flag)."""
    if path is None:
        return None
    if not os.path.exists(path):
        raise InvalidRequestError(f"gradients file '{path}' does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    except (ValueError, OSError) as exc:
        raise InvalidRequestError(f"gradients file '{path}' is not a .npz archive: {exc}") from None


# --------------------------------------------------------------------------- pruning flags

def add_option_flags(p: argparse.ArgumentParser) -> None:
    """One flag per pruning Options field (read back by options_from_args)."""
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


def options_from_args(args: argparse.Namespace) -> Options:
    """The Options given by the flags of add_option_flags."""
    return Options(policy=args.policy, layer_norm=args.layer_norm, group_policy=args.group_policy,
                   reshape_channel_axis=args.reshape_channel_axis, step_size=args.step_size, step_op=args.step_op,
                   max_ratio=args.max_ratio, score_consumers=args.score_consumers)


def changed_option_flags(args: argparse.Namespace) -> list[str]:
    """The flags of add_option_flags given a value other than their default."""
    options = options_from_args(args)
    return ["--" + f.name.replace("_", "-") for f in fields(Options)
            if getattr(options, f.name) != getattr(_DEFAULTS, f.name)]


def add_data_flags(p: argparse.ArgumentParser, *, corrections: bool = False) -> None:
    """--calibration and --gradients of the data-based criteria (`corrections`: the command also has
    --compensate and --reconstruct, which need --calibration too)."""
    users = "data-based methods (nn, activation, snp, fluctuation, obs)" + (", --compensate and --reconstruct" if corrections else "")
    p.add_argument("--calibration", metavar="FILE.npz|.npy|DIR",
                   help=f"calibration data for {users}: a .npz of arrays keyed by input name, or a .npy array for "
                        "a single-input model (one batch; split into batches of 32), or an image folder (see "
                        "'image folders')")
    p.add_argument("--gradients", metavar="FILE.npz", help="gradients keyed by initializer name (method taylor)")
    add_image_flags(p)


# --------------------------------------------------------------------------- --report / --eval-data

def add_report_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--report", metavar="OUT.md|OUT.json",
                   help="also write a before/after report (per-layer params and MACs, totals, file sizes, "
                        "latency; markdown or JSON by extension)")
    p.add_argument("--eval-data", metavar="FILE.npz|DIR",
                   help="with --report: labelled data for metric before/after: a .npz holding the class labels "
                        "under 'y' (or 'labels' when there is no 'y') and the input arrays keyed by input name "
                        "(a single-input model may use 'x'), or an image folder (see 'image folders')")


def prepare_report(args: argparse.Namespace) -> Any:
    """Check --report and --eval-data before any work (extension, --eval-data without --report, the data file
    itself); the evaluation data for report_from_args (None without --eval-data)."""
    from onnxprune.workflows.report import check_report_path, load_eval_data

    if args.report:
        check_report_path(args.report)
    if args.eval_data and not args.report:
        raise InvalidRequestError("--eval-data is used by --report only; add --report OUT.md|OUT.json")
    if args.eval_data and os.path.isdir(args.eval_data):
        return data_source(args, args.eval_data, "--eval-data")
    return load_eval_data(args.model, args.eval_data) if args.eval_data else None


def report_from_args(args: argparse.Namespace, command: str, output: str, data: Any, **details: Any) -> str | None:
    """Write the report asked for by --report (None when not asked); `data`: from prepare_report; `details`:
    prune_result= or decomposition=."""
    if not args.report:
        return None
    from onnxprune.workflows.report import build_report, write_report

    report = build_report(args.model, output, command=command, data=data, **details)
    make_parent(args.report)
    write_report(report, args.report)
    print(f"wrote report {args.report}")
    return args.report


# --------------------------------------------------------------------------- image folders (--calibration / --data DIR)

IMAGE_FLAGS = ("preprocess", "resize", "crop", "mean", "std", "layout", "dtype", "classes")


def add_image_flags(p: argparse.ArgumentParser) -> None:
    """Preprocessing of an image folder given as --calibration / --data / --eval-data (read by data_source)."""
    g = p.add_argument_group("image folders", "a folder in the ImageFolder layout (DIR/<class>/<image>; classes in "
                                              "sorted order are the labels) may replace a .npz/.npy data file; "
                                              "unset values come from the model's input (size, layout, dtype); "
                                              'needs Pillow: pip install "onnxprune[images]"')
    g.add_argument("--preprocess", choices=["imagenet", "none"], default=None,
                   help="preset: imagenet = --resize 256 --crop 224, ImageNet mean/std on [0, 1] pixels; the flags "
                        "below override it (default none: pixels / 255, resized to the input's size)")
    g.add_argument("--resize", type=_size, metavar="N|HxW", help="N: shorter side to N (aspect kept); HxW: exactly")
    g.add_argument("--crop", type=_size, metavar="N|HxW", help="center crop to NxN or HxW after resizing")
    g.add_argument("--mean", type=_floats, metavar="M[,M,M]", help="per-channel mean subtracted (after / 255)")
    g.add_argument("--std", type=_floats, metavar="S[,S,S]", help="per-channel std divided by")
    g.add_argument("--layout", choices=["NCHW", "NHWC"], help="default: where the model's input has 1 or 3 channels")
    g.add_argument("--dtype", metavar="NAME", help="input element type, e.g. float32, float16, uint8 (default: the "
                                                   "model's)")
    g.add_argument("--classes", metavar="FILE|A,B,...",
                   help="class names in label order (a text file, one per line, or a comma-separated list) when the "
                        "folder's sorted class folders are not the model's classes; each needs its folder")


def data_source(args: argparse.Namespace, path: str | None, flag: str) -> Any:
    """`path` as the library takes it: an ImageFolder when it is a folder (preprocessing from add_image_flags),
    else unchanged (a .npz/.npy path, or None)."""
    from onnxprune.datasources import ImageFolder, preprocess_spec

    given = [f"--{name}" for name in IMAGE_FLAGS if getattr(args, name, None) is not None]
    if path is None or not os.path.isdir(path):
        if given and path is not None:
            raise InvalidRequestError(f"{', '.join(given)} apply to image folders; {flag} '{path}' is not a folder")
        return path
    preprocess = preprocess_spec(args.preprocess, resize=args.resize, crop=args.crop, mean=args.mean, std=args.std,
                                 layout=args.layout, dtype=args.dtype)
    return ImageFolder(path, preprocess, classes=_classes(args.classes))


def _size(text: str) -> int | tuple[int, int]:
    try:
        parts = [int(v) for v in text.lower().split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or HxW, got {text!r}") from None
    if len(parts) not in (1, 2) or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"expected N or HxW (positive), got {text!r}")
    return parts[0] if len(parts) == 1 else (parts[0], parts[1])


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _classes(text: str | None) -> list[str] | None:
    if text is None:
        return None
    if os.path.isfile(text):
        with open(text, encoding="utf-8") as handle:
            return [line.strip() for line in handle if line.strip()]
    return [name.strip() for name in text.split(",") if name.strip()]


# --------------------------------------------------------------------------- --ray

def add_ray_flag(p: argparse.ArgumentParser, what: str) -> None:
    """--ray [ADDRESS]: run `what` as Ray tasks (read back by executor_from_args)."""
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help=f"run {what} as tasks on Ray (pip install \"onnxprune[ray]\"): on the cluster at ADDRESS "
                        "(e.g. ray://head:10001 or head:6379), or without one on $RAY_ADDRESS or a cluster started "
                        "by `ray start` on this machine, else on a new local cluster with this machine's cores; "
                        "same results as without --ray. Put it after the model (or write --ray=ADDRESS)")


def executor_from_args(args: argparse.Namespace) -> Any:
    """The executor asked for by --ray, connected (None without the flag)."""
    address = getattr(args, "ray", None)
    if address is None:
        return None
    if address and os.path.exists(address):
        raise InvalidRequestError(f"--ray took '{address}' as the Ray cluster's address; put --ray after the model "
                                  "(or write --ray=ADDRESS)")
    from onnxprune.executor import RayExecutor

    executor = RayExecutor(address or None)
    executor.connect()
    return executor
