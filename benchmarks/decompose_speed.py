#!/usr/bin/env python
"""onnxruntime latency of a layer vs the factor chain that replaces it, beside the MACs ratio.

    python benchmarks/decompose_speed.py [--repeats N] [--quick] [--no-stacks]

Each case is a one-layer model (random weights) decomposed by `onnxprune.decompose` at explicit ranks;
both models run in onnxruntime (CPU, graph optimisations on), with 1 intra-op thread (the primary columns)
and with the default thread count. Every timing is a median over rounds that run the original and the chain
back to back (interleaved, so bursts of load from other processes hit both), after a warm-up.

Two latencies per model:
- op:  the layer's compute: onnxruntime's profiler kernel times of every node of the (optimised) graph,
       except the NCHWc layout conversions ORT adds at the graph's input and output (ReorderInput /
       ReorderOutput). Inside a network those are paid once per NCHWc region, not per layer; a Reorder in
       the middle of a chain (e.g. at a rank that is not a multiple of 16) is counted.
- run: InferenceSession.run wall time of the one-layer model: op + the boundary reorders + the fixed cost
       of a run call (~25 us here), which a single small layer cannot amortise.

Columns: MACs ratio = MACs(layer) / MACs(chain); lat = latency(layer) / latency(chain);
eff = lat / MACs ratio (1.0: the chain is as fast as its MACs promise). The issue's bar is eff >= 0.8 for
Tucker and SVD cases whose MACs ratio is >= 4 ("qualifying"); `bar` says met / SHORT per latency (op, run),
"-" when the case does not qualify. The second table stacks 8 copies of a square layer (with Relu between)
and times whole runs: the end-to-end check that op latencies predict what a network gains.
"""
from __future__ import annotations

import argparse
import bisect
import json
import os
import shutil
import statistics
import tempfile
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # factorisations: no BLAS thread oversubscription on busy hosts

import numpy as np  # noqa: E402
import onnx  # noqa: E402
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
BAR = 0.8
DEPTH = 8
# square, stride-1 layers whose one-layer Tucker / SVD cases qualify: (label, builder, method, ranks)
STACKS = [
    ("conv3x3 128->128 @28", lambda: conv(128, 128, 3, 28), "tucker", (32, 32)),
    ("conv3x3 256->256 @14", lambda: conv(256, 256, 3, 14), "tucker", (32, 32)),
    ("conv3x3 256->256 @14", lambda: conv(256, 256, 3, 14), "tucker", (64, 64)),
    ("conv3x3 64->64 @56", lambda: conv(64, 64, 3, 56), "tucker", (16, 16)),
    ("Gemm 64x1024 . 1024x1024", lambda: gemm(64, 1024, 1024), "svd", (64,)),
]
TMP = tempfile.mkdtemp(prefix="decompose_speed_")


def session(model, threads: int, profile: bool = False, optimized: str | None = None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    if profile:
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(TMP, "profile")
    if optimized:
        options.optimized_model_filepath = optimized
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def boundary_nodes(model) -> set[str]:
    """Names of the layout conversions ORT puts at the graph's input / output, in the optimised model."""
    path = os.path.join(TMP, "optimized.onnx")
    session(model, 1, optimized=path)
    graph = onnx.load(path).graph
    inputs, outputs = {v.name for v in graph.input}, {v.name for v in graph.output}
    return {n.name for n in graph.node if n.op_type.startswith("Reorder")
            and (n.input[0] in inputs or n.output[0] in outputs)}


def op_times(sess: ort.InferenceSession, skip: set[str]) -> list[float]:
    """Per run: the sum of kernel times (s) of the profiled session's nodes, boundary reorders left out."""
    with open(sess.end_profiling()) as f:
        events = json.load(f)
    os.remove(f.name)
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "model_run")
    totals = [0.0] * len(runs)
    starts = [r[0] for r in runs]
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
            continue
        if e["name"][: -len("_kernel_time")] in skip:
            continue
        totals[max(0, bisect.bisect_right(starts, e["ts"]) - 1)] += e["dur"] * 1e-6
    return totals


def timings(models, feeds, threads: int, repeats: int, profile: bool) -> list[list[float]]:
    """Interleaved timings of `models` (per model, per round), after 3 warm-up runs each."""
    if profile:
        skips = [boundary_nodes(m) for m in models]
    sessions = [session(m, threads, profile) for m in models]
    for sess in sessions:
        for _ in range(3):
            sess.run(None, feeds)
    walls = [[] for _ in models]
    for _ in range(repeats):
        for sess, times in zip(sessions, walls):
            start = time.perf_counter()
            sess.run(None, feeds)
            times.append(time.perf_counter() - start)
    if not profile:
        return walls
    return [op_times(sess, skip)[3:] for sess, skip in zip(sessions, skips)]


def ratio(times: list[list[float]]) -> float:
    """Median over rounds of time(original) / time(chain)."""
    return statistics.median(a / b for a, b in zip(*times))


def qualifies(method: str, macs_ratio: float) -> bool:
    return method in ("tucker", "svd") and macs_ratio >= 4


def bar(method: str, macs_ratio: float, eff: float) -> str:
    return ("met" if eff >= BAR else "SHORT") if qualifies(method, macs_ratio) else "-"


def stacked(builder, depth: int):
    """`depth` copies of a one-layer model's layer (input size == output size), Relu between."""
    model, feeds = builder()
    (layer,) = model.graph.node
    nodes, inits = [], []
    current = "x"
    for i in range(depth):
        node = onnx.NodeProto()
        node.CopyFrom(layer)
        node.name = f"layer{i}"
        del node.input[:]
        node.input.extend([current] + [f"{t}{i}" for t in layer.input[1:]])
        del node.output[:]
        node.output.append(f"h{i}")
        nodes.append(node)
        for t in model.graph.initializer:
            copy = onnx.TensorProto()
            copy.CopyFrom(t)
            copy.name = f"{t.name}{i}"
            inits.append(copy)
        out = "y" if i == depth - 1 else f"r{i}"
        nodes.append(helper.make_node("Relu", [f"h{i}"], [out], name=f"relu{i}"))
        current = out
    graph = helper.make_graph(nodes, "stack", list(model.graph.input), list(model.graph.output), inits)
    return helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version), feeds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--repeats", type=int, default=25, help="timed rounds per model pair and setting")
    parser.add_argument("--quick", action="store_true", help="skip the largest cases")
    parser.add_argument("--no-stacks", action="store_true", help="skip the table of 8-layer stacks")
    args = parser.parse_args()
    start = time.perf_counter()
    header = (f"{'family':<7} {'layer':<29} {'method':<6} {'ranks':<6} {'MACs':>7} {'MACs':>6} | "
              f"{'op 1T':>6} {'eff':>5} {'bar':>5} {'run 1T':>6} {'eff':>5} {'bar':>5} | "
              f"{'layer':>6} {'chain':>5} {'chain':>6} | {'eff nT':>6} | {'fit':>4}")
    under = (f"{'':<7} {'':<29} {'':<6} {'':<6} {'':>7} {'ratio':>6} | "
             f"{'lat':>6} {'op':>5} {'op':>5} {'lat':>6} {'run':>5} {'run':>5} | "
             f"{'op us':>6} {'op us':>5} {'run us':>6} | {'run':>6} | {'s':>4}")
    print(header)
    print(under)
    print("-" * len(header))
    verdicts = {"op": [], "run": []}
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
            pair = (model, result.model)
            op1 = timings(pair, feeds, 1, args.repeats, profile=True)
            run1 = timings(pair, feeds, 1, args.repeats, profile=False)
            runn = timings(pair, feeds, 0, args.repeats, profile=False)
            lat_op, lat_run = ratio(op1), ratio(run1)
            eff_op, eff_run = lat_op / macs_ratio, lat_run / macs_ratio
            if qualifies(method, macs_ratio):
                verdicts["op"].append(eff_op >= BAR)
                verdicts["run"].append(eff_run >= BAR)
            us = [statistics.median(t) * 1e6 for t in (op1[0], op1[1], run1[1])]
            print(f"{family:<7} {label:<29} {method:<6} {'x'.join(map(str, ranks)):<6} "
                  f"{layer.macs_before / 1e6:>6.1f}M {macs_ratio:>6.2f} | "
                  f"{lat_op:>6.2f} {eff_op:>5.2f} {bar(method, macs_ratio, eff_op):>5} "
                  f"{lat_run:>6.2f} {eff_run:>5.2f} {bar(method, macs_ratio, eff_run):>5} | "
                  f"{us[0]:>6.0f} {us[1]:>5.0f} {us[2]:>6.0f} | {ratio(runn) / macs_ratio:>6.2f} | {fit:>4.1f}",
                  flush=True)
    qualifying = len(verdicts["op"])
    print(f"\n{sum(verdicts['op'])} of {qualifying} qualifying cases meet 0.8x (op latency, 1 thread)")
    print(f"{sum(verdicts['run'])} of {qualifying} qualifying cases meet 0.8x (whole one-layer run, 1 thread)")
    print("qualifying: Tucker or SVD with MACs ratio >= 4; bar: eff >= 0.8 met, else SHORT")
    if not args.no_stacks:
        print(f"\nStacks of {DEPTH} identical layers (Relu between), every layer decomposed; whole-run latency, "
              "1 thread")
        head = (f"{'layer':<29} {'method':<6} {'ranks':<6} {'MACs ratio':>10} {'run lat':>7} {'eff':>5} "
                f"{'bar':>5} {'stack us':>8} {'chain us':>8}")
        print(head)
        print("-" * len(head))
        met = []
        for label, builder, method, ranks in STACKS:
            if args.quick and label in QUICK:
                continue
            model, feeds = stacked(builder, DEPTH)
            names = [n.name for n in model.graph.node if n.op_type != "Relu"]
            result = decompose(model, method, ranks={n: ranks for n in names}, force=True)
            macs_ratio = (sum(r.macs_before for r in result.layers) / sum(r.macs_after for r in result.layers))
            run1 = timings((model, result.model), feeds, 1, max(args.repeats // 2, 5), profile=False)
            eff = ratio(run1) / macs_ratio
            met.append(eff >= BAR)
            print(f"{label:<29} {method:<6} {'x'.join(map(str, ranks)):<6} {macs_ratio:>10.2f} {ratio(run1):>7.2f} "
                  f"{eff:>5.2f} {bar(method, macs_ratio, eff):>5} {statistics.median(run1[0]) * 1e6:>8.0f} "
                  f"{statistics.median(run1[1]) * 1e6:>8.0f}", flush=True)
        print(f"\n{sum(met)} of {len(met)} qualifying stacks meet 0.8x (whole run, 1 thread)")
    print(f"\n1T: one intra-op thread; nT: onnxruntime's default ({os.cpu_count()} logical CPUs here; on a shared "
          f"machine the nT columns are the noisiest). Total {time.perf_counter() - start:.0f} s.")


if __name__ == "__main__":
    try:
        main()
    finally:
        shutil.rmtree(TMP, ignore_errors=True)
