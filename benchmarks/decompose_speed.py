#!/usr/bin/env python
"""onnxruntime latency of a layer vs the factor chain that replaces it, beside the MACs ratio.

    python benchmarks/decompose_speed.py [--repeats N] [--quick]

Each case is a one-layer model (random weights) decomposed by `onnxprune.decompose` at explicit ranks;
both models run in onnxruntime (CPU, graph optimisations on) with 1 intra-op thread and with the default
thread count. After a warm-up, each round times the original then the chain; the reported latency ratio
is the median over rounds of latency(layer) / latency(chain). Columns:
MACs ratio = MACs(layer) / MACs(chain); lat = latency ratio;
eff = lat ratio / MACs ratio (1.0: the chain is as fast as its MACs promise; the issue's bar is 0.8
for Tucker and SVD cases whose MACs ratio is >= 4).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # factorisations: no BLAS thread oversubscription on busy hosts

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from onnxprune.decomposition import decompose  # noqa: E402

RNG = np.random.default_rng(0)


def conv(cin: int, cout: int, k: int, hw: int, stride: int = 1):
    w = numpy_helper.from_array((RNG.standard_normal((cout, cin, k, k)) * 0.05).astype(np.float32), "W")
    b = numpy_helper.from_array(np.zeros(cout, np.float32), "B")
    node = helper.make_node("Conv", ["x", "W", "B"], ["y"], name="layer", kernel_shape=[k, k],
                            pads=[k // 2] * 4, strides=[stride, stride])
    return _model(node, [1, cin, hw, hw], [w, b]), {"x": RNG.standard_normal((1, cin, hw, hw)).astype(np.float32)}


def gemm(rows: int, k: int, n: int):
    w = numpy_helper.from_array((RNG.standard_normal((n, k)) * 0.05).astype(np.float32), "W")
    c = numpy_helper.from_array(np.zeros(n, np.float32), "C")
    node = helper.make_node("Gemm", ["x", "W", "C"], ["y"], name="layer", transB=1)
    return _model(node, [rows, k], [w, c]), {"x": RNG.standard_normal((rows, k)).astype(np.float32)}


def matmul(batch: tuple[int, ...], k: int, n: int):
    w = numpy_helper.from_array((RNG.standard_normal((k, n)) * 0.05).astype(np.float32), "W")
    node = helper.make_node("MatMul", ["x", "W"], ["y"], name="layer")
    return _model(node, [*batch, k], [w]), {"x": RNG.standard_normal((*batch, k)).astype(np.float32)}


def _model(node, x_shape, inits):
    graph = helper.make_graph([node], "bench", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


# (family, label, builder, method, rank sets)
CASES = [
    ("VGG", "conv3x3 128->128 @28", lambda: conv(128, 128, 3, 28), "tucker", [(32, 32), (64, 64)]),
    ("VGG", "conv3x3 128->128 @28", lambda: conv(128, 128, 3, 28), "cp", [(16,), (32,)]),
    ("VGG", "conv3x3 256->256 @28", lambda: conv(256, 256, 3, 28), "tucker", [(64, 64)]),
    ("VGG", "conv3x3 256->256 @14", lambda: conv(256, 256, 3, 14), "tucker", [(32, 32), (64, 64)]),
    ("ResNet", "conv1x1 256->64 @56", lambda: conv(256, 64, 1, 56), "svd", [(8,), (16,)]),
    ("ResNet", "conv1x1 64->256 @56", lambda: conv(64, 256, 1, 56), "svd", [(8,), (16,)]),
    ("ResNet", "conv3x3 64->64 @56", lambda: conv(64, 64, 3, 56), "tucker", [(16, 16), (32, 32)]),
    ("ResNet", "conv3x3 128->128 s2 @56", lambda: conv(128, 128, 3, 56, stride=2), "tucker", [(32, 32)]),
    ("ResNet", "conv1x1 1024->256 @14", lambda: conv(1024, 256, 1, 14), "svd", [(32,), (64,)]),
    ("FC", "Gemm 64x1024 . 1024x1024", lambda: gemm(64, 1024, 1024), "svd", [(64,), (128,)]),
    ("FC", "Gemm 64x4096 . 4096x1024", lambda: gemm(64, 4096, 1024), "svd", [(128,), (256,)]),
    ("FC", "MatMul 2x128x1024 . 1024x4096", lambda: matmul((2, 128), 1024, 4096), "svd", [(128,), (256,)]),
]
QUICK = {"conv3x3 256->256 @28", "conv1x1 1024->256 @14", "MatMul 2x128x1024 . 1024x4096"}


def session(model, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def latency_ratio(original, chain, feeds, threads: int, repeats: int) -> float:
    """Median over rounds of latency(original) / latency(chain), each round timing both back to back
    after a warm-up (pairing keeps bursts of load from other processes out of the ratio)."""
    sessions = (session(original, threads), session(chain, threads))
    for sess in sessions:
        for _ in range(3):
            sess.run(None, feeds)
    ratios = []
    for _ in range(repeats):
        times = []
        for sess in sessions:
            start = time.perf_counter()
            sess.run(None, feeds)
            times.append(time.perf_counter() - start)
        ratios.append(times[0] / times[1])
    return statistics.median(ratios)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=25, help="timed runs per model and thread setting")
    parser.add_argument("--quick", action="store_true", help="skip the largest cases")
    args = parser.parse_args()
    header = (f"{'family':<7} {'layer':<30} {'method':<7} {'ranks':<8} {'MACs':>9} {'MACs ratio':>10} "
              f"{'lat 1T':>7} {'eff 1T':>7} {'lat nT':>7} {'eff nT':>7} {'fit s':>6}")
    print(header)
    print("-" * len(header))
    start = time.perf_counter()
    for family, label, builder, method, rank_sets in CASES:
        if args.quick and label in QUICK:
            continue
        model, feeds = builder()
        for ranks in rank_sets:
            fit = time.perf_counter()
            result = decompose(model, method, ranks={"layer": ranks}, force=True)
            fit = time.perf_counter() - fit
            layer = result.layers[0]
            macs_ratio = layer.macs_before / layer.macs_after
            row = [f"{family:<7} {label:<30} {method:<7} {'x'.join(map(str, ranks)):<8} "
                   f"{layer.macs_before / 1e6:>8.1f}M {macs_ratio:>10.2f}"]
            for threads in (1, 0):
                ratio = latency_ratio(model, result.model, feeds, threads, args.repeats)
                row.append(f"{ratio:>7.2f} {ratio / macs_ratio:>7.2f}")
            print(" ".join(row) + f" {fit:>6.1f}", flush=True)
    print(f"\n1T: one intra-op thread; nT: onnxruntime's default ({os.cpu_count()} logical CPUs here). "
          f"Total {time.perf_counter() - start:.0f} s.")


if __name__ == "__main__":
    main()
