"""`onnxprune sensitivity MODEL --data DATA.npz [--ratios 0.25,0.5,0.75] [--method l2] [--json F] [--plot F.png]
[--target-macs 0.5 [--save-ratios F]]`."""
from __future__ import annotations

import argparse
import json
import os

import numpy as np

from onnxprune.cli.common import add_image_flags, add_ray_flag, check_paths, data_source
from onnxprune.files import write_text


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sensitivity", help="prune each channel group alone at several ratios; metric drop per group",
                       description="Prune every prunable channel group alone at each ratio and measure the accuracy "
                                   "drop on your data (or, without labels, the top-1 agreement with the unpruned "
                                   "model). Prints a table; writes JSON and a PNG plot (needs matplotlib: pip "
                                   "install \"onnxprune[plot]\"); --target-macs turns the curves into per-layer "
                                   "ratios for that fraction of MACs removed.")
    p.add_argument("model", help="ONNX model file")
    p.add_argument("--data", required=True, metavar="FILE.npz|.npy|DIR",
                   help="evaluation data: a .npz of input arrays keyed by input name (or one array under any "
                        "name for a single-input model) plus the labels under --labels-key; or a .npy of inputs "
                        "(no labels: agreement with the unpruned model is measured); or an image folder (labels "
                        "from its class folders; see 'image folders')")
    p.add_argument("--labels-key", default="labels", help="name of the labels array in the .npz (default 'labels'; "
                                                           "'y' is also accepted)")
    p.add_argument("--ratios", default="0.1,0.25,0.5,0.75", help="comma-separated ratios (default 0.1,0.25,0.5,0.75)")
    p.add_argument("--method", default="l2", help="criterion choosing which channels go (default l2)")
    p.add_argument("--batch-size", type=int, default=None, help="evaluation batch size")
    p.add_argument("--json", metavar="FILE", help="write every measurement (and the recommendation) as JSON")
    p.add_argument("--plot", metavar="FILE.png", help="write the drop-vs-ratio curves as a PNG (needs matplotlib)")
    p.add_argument("--target-macs", type=float, default=None, metavar="FRACTION",
                   help="recommend per-layer ratios removing this fraction of the MACs (e.g. 0.5)")
    p.add_argument("--save-ratios", metavar="FILE",
                   help="with --target-macs: write the recommended {layer: ratio} as JSON")
    add_image_flags(p)
    add_ray_flag(p, "the (group, ratio) candidates and the baseline evaluation")
    p.set_defaults(func=run)


def _data(path: str, labels_key: str):
    from onnxprune.errors import InvalidRequestError

    if not os.path.isfile(path) or not path.endswith((".npz", ".npy")):
        raise InvalidRequestError(f"data file '{path}' is not an existing .npz or .npy file")
    if path.endswith(".npy"):
        return np.load(path), None
    with np.load(path) as archive:
        arrays = {k: archive[k] for k in archive.files}
    labels = None
    for key in (labels_key, "y", "labels"):
        if key in arrays:
            labels = arrays.pop(key)
            break
    if not arrays:
        raise InvalidRequestError(f"data file '{path}' holds no input arrays (only {labels_key!r})")
    inputs = next(iter(arrays.values())) if len(arrays) == 1 else arrays
    return inputs, labels


def _ratios(text: str) -> list[float]:
    from onnxprune.errors import InvalidRequestError

    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise InvalidRequestError(f"--ratios must be comma-separated numbers, not {text!r}") from None


def run(args: argparse.Namespace) -> int:
    from onnxprune.errors import InvalidRequestError
    from onnxprune.workflows.sensitivity import load_pyplot, sensitivity

    if not os.path.isfile(args.model):
        raise InvalidRequestError(f"model file '{args.model}' does not exist")
    check_paths({"model": args.model, "data": args.data},
                {"--json": args.json, "--plot": args.plot, "--save-ratios": args.save_ratios})
    if args.save_ratios and args.target_macs is None:
        raise InvalidRequestError("--save-ratios needs --target-macs")
    if args.plot:
        load_pyplot()  # a missing matplotlib is reported before the (long) measurements
    data = data_source(args, args.data, "--data")
    data = _data(data, args.labels_key) if isinstance(data, str) else data
    result = sensitivity(args.model, data, ratios=_ratios(args.ratios), method=args.method,
                         batch_size=args.batch_size, target=args.target_macs, verbose=True)
    print(result)
    if args.json:
        result.save_json(args.json)
        print(f"wrote {args.json}")
    if args.plot:
        result.plot(args.plot)
        print(f"wrote {args.plot}")
    if args.save_ratios:
        write_text(args.save_ratios, json.dumps(result.recommendation.ratios, indent=1))
        print(f"wrote {args.save_ratios} (use: onnxprune prune MODEL -o OUT --ratios {args.save_ratios})")
    return 0
