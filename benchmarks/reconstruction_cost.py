"""What reconstruction costs next to one onnxruntime pass over the same calibration data (EfficientNet-lite0).

The model, the calibration crops and the evaluation crops come from benchmarks/_pretrained.py (skimage.data
photos; calibration and evaluation disjoint). The pruning is the recommended pipeline's (`obs` criterion,
global scope with tss_norm, mean compensation) at each MACs level, with reconstruction left out; then
reconstruction (`reconstruct_pruned`, attention-aware, as `op.prune(..., reconstruct=True)` runs it) is timed
on a copy for each `passes` setting, between two timed onnxruntime passes of the unpruned model over the same
images (the same kind of session as reconstruction's passes: onnxruntime's defaults, batches of 32). Quality
is top-1 agreement with the unpruned model on the evaluation crops.

    python benchmarks/reconstruction_cost.py                              # 256 images, 20% fewer MACs
    python benchmarks/reconstruction_cost.py --levels 0.2,0.3 --passes default,none,4
    taskset -c 0 python benchmarks/reconstruction_cost.py --calibration 64  # quicker

passes: "default" (the library's default), "none" (one pass per stage) or an integer bound. `passes` counts
the passes that run the model being re-fitted, `ref passes` those that run only the unpruned model (the later
stages' sums of shared passes, computed ahead).
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
import warnings

import numpy as np
import onnx

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _pretrained as P  # noqa: E402

import onnxprune as op  # noqa: E402
from onnxprune import runtime  # noqa: E402
from onnxprune.reconstruction import reconstruct_pruned  # noqa: E402

BATCH = 32


def one_pass(model: onnx.ModelProto, images: np.ndarray) -> float:
    """Seconds of one onnxruntime pass of `model` over `images` (session built outside the timing)."""
    sess = runtime.session(model)
    name = model.graph.input[0].name
    start = time.perf_counter()
    for i in range(0, len(images), BATCH):
        sess.run(None, {name: images[i:i + BATCH]})
    return time.perf_counter() - start


def pruned(model: onnx.ModelProto, fewer: float, calib: np.ndarray):
    """The recommended pipeline's pruning and compensation at `fewer` fewer MACs, without reconstruction."""
    return op.prune(model, method="obs", scope="global", options=op.Options(layer_norm="tss_norm"),
                    target_macs=1.0 - fewer, calibration=calib, compensate=True, reconstruct=False)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calibration", type=int, default=256, help="calibration images")
    parser.add_argument("--evaluation", type=int, default=300, help="evaluation images")
    parser.add_argument("--levels", default="0.2", help="fractions of fewer MACs")
    parser.add_argument("--passes", default="default", help="comma-separated: default, none or an integer")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    model = onnx.load(P.efficientnet_lite0_onnx())
    calib, evaluation = P.calibration_images(args.calibration), P.evaluation_images(args.evaluation)
    reference = P.run_batched(model, evaluation)
    print(f"EfficientNet-lite0, {len(calib)} calibration images, {len(evaluation)} evaluation images; "
          "top-1 agreement with the unpruned model")
    print(f"{'fewer MACs':>10} {'passes':>7} {'ref passes':>10} {'stages':>6} {'ORT pass s':>10} {'recon s':>8} "
          f"{'ratio':>6} {'no recon':>8} {'recon':>6}")
    for fewer in (float(x) for x in args.levels.split(",")):
        base = pruned(model, fewer, calib)
        plain = P.top1_agreement(reference, P.run_batched(base.model, evaluation))
        for setting in args.passes.split(","):
            kwargs = {} if setting == "default" else {"passes": None if setting == "none" else int(setting)}
            result = copy.deepcopy(base)
            before = one_pass(model, calib)
            start = time.perf_counter()
            report = reconstruct_pruned(model, result, calib, **kwargs)
            seconds = time.perf_counter() - start
            single = statistics.median([before, one_pass(model, calib)])
            quality = P.top1_agreement(reference, P.run_batched(result.model, evaluation))
            print(f"{fewer:>10.0%} {report.passes:>7} {report.reference_passes:>10} {report.stages:>6} "
                  f"{single:>10.2f} {seconds:>8.1f} {seconds / single:>6.1f} {plain:>8.3f} {quality:>6.3f}", flush=True)


if __name__ == "__main__":
    main()
