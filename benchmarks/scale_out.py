#!/usr/bin/env python
"""Scale-out on Ray against in-process, same run: sensitivity and reconstruction statistics of a ResNet-like model.

    python benchmarks/scale_out.py [--samples 2000] [--workers 2] [--repeats 3] [--ratios 0.25,0.5] [--image 16]

The model: a small ResNet (stem Conv-BN-Relu 16, three stages of two basic blocks 16/32/64 wide with projection
shortcuts, GlobalAveragePool, Gemm 10; random weights, logits standardised per class so predictions spread), on
--image x --image inputs. Data: --samples random images, labels the model's own prediction 70% of the time
(so pruning costs accuracy).

1. Sensitivity: `op.sensitivity(model, (x, y), ratios)`: every prunable group pruned alone at each ratio and
   evaluated on all samples; in-process (onnxruntime's default threads) vs `executor="ray"` on a local cluster of
   --workers CPUs (one task per candidate, one onnxruntime thread each). Results compared point by point.
2. Reconstruction: `op.prune(model, "l2", ratio=0.5, calibration=x, reconstruct=True)`: one calibration pass per
   stage (shards of 8 batches summed into X^T X Gram matrices, partials added in shard order), in-process vs Ray.
   The two pruned models are compared byte for byte and by their outputs.

Runs are interleaved (in-process, Ray, in-process, ...) after the cluster has started (its start is reported,
not counted); medians over --repeats. The ratio is Ray's time / in-process time (below 1: Ray faster).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import onnx  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import onnxprune as op  # noqa: E402
from onnxprune.runtime import run  # noqa: E402


class ResNetBuilder:
    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def const(self, name: str, value: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(value.astype(np.float32), name))
        return name

    def conv_bn(self, x: str, cin: int, cout: int, k: int, stride: int, name: str, relu: bool = True) -> str:
        w = self.rng.standard_normal((cout, cin, k, k)) * np.sqrt(2.0 / (cin * k * k))
        self.nodes.append(helper.make_node("Conv", [x, self.const(f"{name}_w", w)], [f"{name}_c"], name=name,
                                           pads=[k // 2] * 4, strides=[stride] * 2))
        bn = [self.const(f"{name}_{p}", v) for p, v in (("scale", 1 + 0.1 * self.rng.standard_normal(cout)),
                                                         ("bias", 0.1 * self.rng.standard_normal(cout)),
                                                         ("mean", 0.1 * self.rng.standard_normal(cout)),
                                                         ("var", 1 + 0.1 * self.rng.random(cout)))]
        self.nodes.append(helper.make_node("BatchNormalization", [f"{name}_c", *bn], [f"{name}_bn"],
                                           name=f"{name}_bn"))
        if not relu:
            return f"{name}_bn"
        self.nodes.append(helper.make_node("Relu", [f"{name}_bn"], [f"{name}_r"], name=f"{name}_relu"))
        return f"{name}_r"

    def block(self, x: str, cin: int, cout: int, stride: int, name: str) -> str:
        y = self.conv_bn(x, cin, cout, 3, stride, f"{name}_a")
        y = self.conv_bn(y, cout, cout, 3, 1, f"{name}_b", relu=False)
        short = x if stride == 1 and cin == cout else self.conv_bn(x, cin, cout, 1, stride, f"{name}_p", relu=False)
        self.nodes.append(helper.make_node("Add", [y, short], [f"{name}_sum"], name=f"{name}_add"))
        self.nodes.append(helper.make_node("Relu", [f"{name}_sum"], [f"{name}_out"], name=f"{name}_relu"))
        return f"{name}_out"


def resnet_like(image: int, seed: int = 0) -> onnx.ModelProto:
    b = ResNetBuilder(seed)
    x = b.conv_bn("x", 3, 16, 3, 1, "stem")
    cin = 16
    for stage, width in enumerate((16, 32, 64)):
        for k in range(2):
            x = b.block(x, cin, width, 2 if stage and not k else 1, f"s{stage}b{k}")
            cin = width
    fc_w = b.const("fc_w", b.rng.standard_normal((10, 64)) / 8)
    fc_b = b.const("fc_b", np.zeros(10))
    b.nodes += [helper.make_node("GlobalAveragePool", [x], ["gap"], name="gap"),
                helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
                helper.make_node("Gemm", ["flat", fc_w, fc_b], ["logits"], name="fc", transB=1)]
    graph = helper.make_graph(b.nodes, "resnet_like",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, image, image])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 10])], b.inits)
    model = helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 17)])
    probe = np.random.default_rng(seed + 1).standard_normal((128, 3, image, image)).astype(np.float32)
    logits = run(model, {"x": probe})["logits"]
    mean, std = logits.mean(axis=0), logits.std(axis=0) + 1e-6
    inits = {t.name: k for k, t in enumerate(model.graph.initializer)}
    w = numpy_helper.to_array(model.graph.initializer[inits["fc_w"]]) / std[:, None]
    model.graph.initializer[inits["fc_w"]].CopyFrom(numpy_helper.from_array(w.astype(np.float32), "fc_w"))
    model.graph.initializer[inits["fc_b"]].CopyFrom(numpy_helper.from_array((-mean / std).astype(np.float32), "fc_b"))
    onnx.checker.check_model(model, full_check=True)
    return model


def data(model: onnx.ModelProto, samples: int, image: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    x = rng.standard_normal((samples, 3, image, image)).astype(np.float32)
    predicted = run(model, {"x": x})["logits"].argmax(axis=1)
    return x, np.where(rng.random(samples) < 0.7, predicted, rng.integers(0, 10, samples))


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ratios", default="0.25,0.5")
    parser.add_argument("--image", type=int, default=16)
    args = parser.parse_args()
    import ray

    model = resnet_like(args.image)
    x, y = data(model, args.samples, args.image)
    ratios = [float(r) for r in args.ratios.split(",")]
    stats = op.stats(model)
    print(f"model: ResNet-like, {stats.params / 1e3:.0f}k params, {stats.macs / 1e6:.1f} MMACs per sample at "
          f"{args.image}x{args.image}; {args.samples} samples; ratios {ratios}; machine: {os.cpu_count()} CPUs")
    start, _ = timed(lambda: ray.init(num_cpus=args.workers, include_dashboard=False, logging_level="error",
                                      log_to_driver=False))
    print(f"ray {ray.__version__}: local cluster of {args.workers} CPUs started in {start:.1f} s (not counted)")

    jobs = {
        "sensitivity": lambda executor: op.sensitivity(model, (x, y), ratios=ratios, executor=executor),
        "reconstruction": lambda executor: op.prune(model, "l2", ratio=0.5, calibration=x, reconstruct=True,
                                                    executor=executor),
    }
    rows = []
    for name, job in jobs.items():
        times: dict[str, list[float]] = {"in-process": [], "ray": []}
        results = {}
        for _ in range(args.repeats):
            for executor in ("in-process", "ray"):
                seconds, results[executor] = timed(lambda: job(executor))
                times[executor].append(seconds)
        here, there = results["in-process"], results["ray"]
        if name == "sensitivity":
            pairs = [(p, q) for a, b in zip(here.curves, there.curves) for p, q in zip(a.points, b.points)]
            diff = max(abs(p["value"] - q["value"]) for p, q in pairs)
            same = f"{len(pairs)} points ({len(here.curves)} groups), max |value diff| {diff:.1e}, baseline " \
                   f"{here.baseline:.4f} / {there.baseline:.4f}"
        else:
            out_here = run(here.model, {"x": x[:256]})["logits"]
            out_there = run(there.model, {"x": x[:256]})["logits"]
            identical = here.model.SerializeToString() == there.model.SerializeToString()
            same = f"{len(here.reconstruction.fitted)} layers in {here.reconstruction.stages} stages, models " \
                   f"{'byte-identical' if identical else 'differ'}, max |output diff| " \
                   f"{np.abs(out_here - out_there).max():.1e}"
        a, b = statistics.median(times["in-process"]), statistics.median(times["ray"])
        rows.append((name, a, b, b / a, same))
        print(f"{name}: in-process {[round(t, 1) for t in times['in-process']]} s, ray "
              f"{[round(t, 1) for t in times['ray']]} s", flush=True)
    print()
    print(f"{'job':<15} {'in-process s':>12} {'ray s':>8} {'ray/in-process':>14}  same results")
    for name, a, b, ratio, same in rows:
        print(f"{name:<15} {a:>12.1f} {b:>8.1f} {ratio:>14.2f}  {same}")
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
