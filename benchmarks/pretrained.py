"""Structured pruning of two pretrained models at 10/20/30/50% fewer MACs: how close does each recipe stay?

Models and inputs come from benchmarks/_pretrained.py (EfficientNet-lite0 ImageNet, MiniLM-L6 sentence
encoder; skimage.data crops and written sentences; calibration and evaluation disjoint; text calibration: the
105 calibration sentences plus --text-pairs random pairs of them, `calibration_pairs`). Quality is measured
against the unpruned model: top-1 agreement (images) and mean cosine of the embeddings (text).

Recipes (each at the same MAC reduction, counted by onnxprune.stats):
  default        op.prune(model, target_macs=1 - f, calibration=calib): no other knob, whatever the
                 library's default pipeline picks (criterion, allocation, compensation, reconstruction).
  l2 plain       method="l2", one uniform ratio for every group (searched so MACs drop by f), no recovery.
  l2 + recon     the same pruning, then reconstruct=True (least-squares re-fit on the calibration data).
  tp magnitude   Torch-Pruning's default MagnitudeImportance (GroupNormImportance p=2, mean over the
                 group's layers, producer AND consumer weight slices, uniform ratio per layer), in onnxprune
                 terms: method="l2", Options(score_consumers=True, policy="average"), the same uniform ratio,
                 no recovery. (TP sums squared weights before averaging over layers; onnxprune averages the
                 layers' L2 norms: the rankings can differ slightly.)

    python benchmarks/pretrained.py                       # both models, 256 calibration images, 300 evaluation
    python benchmarks/pretrained.py --models minilm --levels 0.2
    python benchmarks/pretrained.py --recipes default,l2_recon --calibration 128
    python benchmarks/pretrained.py --models minilm --attention 0.3   # per-layer vs attention-aware re-fit
    python benchmarks/pretrained.py --models minilm --text-pairs 0    # only the 105 calibration sentences
    python benchmarks/pretrained.py --models efficientnet --fragility   # how fragile is the metric itself?

--fragility: instead of the table, the original's top-1 margin on the evaluation crops and its agreement with
itself under tiny perturbations (float16 weights, weight noise of 0.1-1% of each tensor's std, input noise):
the floor below which a pruned model's agreement says little.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

import numpy as np
import onnx

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _pretrained as P  # noqa: E402

import onnxprune as op  # noqa: E402

LEVELS = (0.1, 0.2, 0.3, 0.5)
RECIPES = ("default", "l2_plain", "l2_recon", "tp_magnitude")
LABELS = {"default": "default", "l2_plain": "l2 plain", "l2_recon": "l2 + recon", "tp_magnitude": "tp magnitude"}


def macs(model: onnx.ModelProto) -> int:
    return int(op.stats(model).macs)


def uniform_ratio(model: onnx.ModelProto, fewer: float, tol: float = 0.004) -> tuple[float, float]:
    """The uniform l2 ratio whose pruned model has `fewer` (fraction) fewer MACs, by bisection; (ratio, achieved)."""
    base = macs(model)
    lo, hi, best = 0.0, 0.9, (0.0, 0.0)
    for _ in range(14):
        mid = (lo + hi) / 2
        got = 1.0 - macs(op.prune(model, method="l2", ratio=mid).model) / base
        if abs(got - fewer) < abs(best[1] - fewer):
            best = (mid, got)
        if abs(got - fewer) <= tol:
            break
        lo, hi = (mid, hi) if got < fewer else (lo, mid)
    return best


def prune_recipe(model: onnx.ModelProto, recipe: str, fewer: float, ratio: float, calib) -> onnx.ModelProto:
    if recipe == "default":
        return op.prune(model, target_macs=1.0 - fewer, calibration=calib).model
    if recipe == "l2_plain":
        return op.prune(model, method="l2", ratio=ratio).model
    if recipe == "l2_recon":
        return op.prune(model, method="l2", ratio=ratio, reconstruct=True, calibration=calib).model
    if recipe == "tp_magnitude":
        return op.prune(model, method="l2", ratio=ratio, options=op.Options(score_consumers=True)).model
    raise ValueError(recipe)


def model_setup(name: str, n_calib: int, n_eval: int, text_pairs: int = 0):
    """(model, calibration data, evaluation data, quality function(pruned model) -> float, metric name)."""
    if name == "efficientnet":
        model = onnx.load(P.efficientnet_lite0_onnx())
        calib, evaluation = P.calibration_images(n_calib), P.evaluation_images(n_eval)
        ref = P.run_batched(model, evaluation)
        return model, calib, lambda pruned: P.top1_agreement(ref, P.run_batched(pruned, evaluation)), "top-1 agreement"
    model = onnx.load(P.minilm_onnx())
    calib, evaluation = P.calibration_pairs(text_pairs), P.evaluation_text()
    ref = P.run_batched(model, evaluation)
    return model, calib, lambda pruned: P.mean_cosine(ref, P.run_batched(pruned, evaluation)), "mean cosine"


def attention_comparison(name: str, ratio: float, n_calib: int, n_eval: int) -> None:
    """Plain pruning, per-layer re-fit and attention-aware re-fit of one l2 uniform pruning."""
    import copy
    from onnxprune.reconstruction import reconstruct_pruned
    model, calib, quality, metric = model_setup(name, n_calib, n_eval)
    pruned = op.prune(model, method="l2", ratio=ratio)
    print(f"{name}: l2 uniform ratio {ratio} ({1 - macs(pruned.model) / macs(model):.0%} fewer MACs), {metric}")
    print(f"  plain {quality(pruned.model):.3f}", flush=True)
    for attention in (False, True):
        result = copy.deepcopy(pruned)
        t = time.perf_counter()
        reconstruct_pruned(model, result, calib, attention=attention)
        label = "attention-aware re-fit" if attention else "per-layer re-fit"
        print(f"  {label} {quality(result.model):.3f} ({time.perf_counter() - t:.0f} s)", flush=True)


def fragility(n_eval: int, seed: int = 0) -> None:
    """The image metric's own fragility (see the module doc)."""
    from onnx import numpy_helper
    model = onnx.load(P.efficientnet_lite0_onnx())
    images = P.evaluation_images(n_eval)
    ref = P.run_batched(model, images)
    top = np.sort(ref, axis=1)
    prob = np.exp(ref - ref.max(axis=1, keepdims=True))
    prob = prob.max(axis=1) / prob.sum(axis=1)
    print(f"efficientnet: {n_eval} evaluation crops, {len(set(np.argmax(ref, axis=1)))} distinct top-1 classes")
    print(f"  top-1 logit margin quartiles {np.round(np.percentile(top[:, -1] - top[:, -2], [25, 50, 75]), 2)}, "
          f"top-1 probability quartiles {np.round(np.percentile(prob, [25, 50, 75]), 2)}")
    rng = np.random.default_rng(seed)

    def perturbed(change) -> onnx.ModelProto:
        out = onnx.ModelProto()
        out.CopyFrom(model)
        for init in out.graph.initializer:
            a = numpy_helper.to_array(init)
            if a.dtype == np.float32 and a.size > 1:
                init.CopyFrom(numpy_helper.from_array(change(a).astype(np.float32), init.name))
        return out

    def report(label: str, logits: np.ndarray) -> None:
        error = np.linalg.norm(logits - ref) / np.linalg.norm(ref)
        print(f"  {label:<32} top-1 agreement {P.top1_agreement(ref, logits):.3f}, relative logit error {error:.3f}")

    report("float16 weights", P.run_batched(perturbed(lambda a: a.astype(np.float16)), images))
    for level in (0.001, 0.005, 0.01):
        noisy = perturbed(lambda a: a + level * a.std() * rng.standard_normal(a.shape))
        report(f"weight noise {level:.1%} of std", P.run_batched(noisy, images))
    for level in (0.01, 0.05):
        report(f"input noise {level:g} (normalised)",
               P.run_batched(model, images + level * rng.standard_normal(images.shape).astype(np.float32)))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="efficientnet,minilm")
    parser.add_argument("--levels", default=",".join(str(x) for x in LEVELS), help="fractions of fewer MACs")
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--calibration", type=int, default=256, help="calibration images (text: all 105)")
    parser.add_argument("--evaluation", type=int, default=300, help="evaluation images (text: all 104)")
    parser.add_argument("--text-pairs", type=int, default=400,
                        help="text: calibration adds this many random pairs of calibration sentences")
    parser.add_argument("--attention", type=float, default=None, metavar="RATIO",
                        help="instead of the table: plain / per-layer / attention-aware re-fit at this l2 ratio")
    parser.add_argument("--fragility", action="store_true",
                        help="instead of the table: the image metric's own fragility (EfficientNet-lite0)")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    if args.fragility:
        fragility(args.evaluation)
        return
    if args.attention is not None:
        for name in args.models.split(","):
            attention_comparison(name, args.attention, args.calibration, args.evaluation)
        return
    levels = [float(x) for x in args.levels.split(",")]
    recipes = args.recipes.split(",")
    for name in args.models.split(","):
        model, calib, quality, metric = model_setup(name, args.calibration, args.evaluation, args.text_pairs)
        n_calib = len(calib) if not isinstance(calib, dict) else len(calib["input_ids"])
        print(f"\n{name}: {metric} with the original ({n_calib} calibration samples; {macs(model) / 1e6:.1f} M MACs)")
        header = f"{'fewer MACs':>10} {'uniform ratio':>13} " + " ".join(f"{LABELS[r]:>13}" for r in recipes)
        print(header + "   seconds per recipe")
        for fewer in levels:
            ratio, got = uniform_ratio(model, fewer)
            cells, times = [], []
            for recipe in recipes:
                t = time.perf_counter()
                pruned = prune_recipe(model, recipe, fewer, ratio, calib)
                times.append(time.perf_counter() - t)
                reduction = 1.0 - macs(pruned) / macs(model)
                cells.append(f"{quality(pruned):.3f} ({reduction:.0%})")
            print(f"{fewer:>10.0%} {ratio:>13.3f} " + " ".join(f"{c:>13}" for c in cells) + "   "
                  + " ".join(f"{t:.0f}" for t in times), flush=True)


if __name__ == "__main__":
    main()
