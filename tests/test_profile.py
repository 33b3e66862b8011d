"""op.profile: grid, interpolation on synthetic staircases (fake timings), signature dedup, cache, cost files,
bad requests, the CLI, and one real small profile (structure only; no timing is asserted)."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxprune as op
from onnxprune import cost as op_cost
from onnxprune.budget import allocate_budget, layer_kept
from onnxprune.cli import main
from onnxprune.criteria import CriterionContext, criterion_for
from onnxprune.coupling import analyze
from onnxprune.errors import InvalidRequestError
from onnxprune.profile.activations import source_node
from onnxprune.profile.costmodel import LatencyCostModel
from onnxprune.profile.curves import axis_curve, axis_grid, grid_points, isotonic, off_trend, stair_value
from onnxprune.profile.layers import WeightPool, layer_specs, micro_graph
from onnxprune.profile.products import ProductSpec, product_graph, shrinking_axes
from onnxprune.profile import timing
from onnxprune.profile.timing import kernel_ms_per_run, node_ms_per_run, paired_ratio, timed_in_blocks

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures")
RESNET = os.path.join(FIXTURES, "resnet_legacy.onnx")


def staircase(i: int, o: int) -> float:
    """A separable latency staircase with a fixed part: blocks of 8 channels on both axes."""
    return 0.05 + 0.002 * math.ceil(i / 8) * math.ceil(o / 8)


class FakeTimer:
    """Fake timings through the profiler's seam; counts what it was asked to measure."""

    def __init__(self, latency=staircase, total: float = 10.0) -> None:
        self.latency = latency
        self.total = total
        self.layers: list[str] = []
        self.models = 0

    def points(self, spec, counts):
        self.layers.append(spec.name)
        return [self.latency(i, o) for i, o in counts]

    def model(self, source, feed):
        self.models += 1
        return self.total


def conv_chain(channels=(3, 64, 64, 96), *, twin: bool = True) -> onnx.ModelProto:
    """x -> Conv 3x3 (+Relu) ... ; with `twin` the two middle convs are identical (one signature)."""
    rng = np.random.default_rng(0)
    nodes, inits, last = [], [], "x"
    for k, (cin, cout) in enumerate(zip(channels[:-1], channels[1:])):
        w = f"w{k}"
        inits.append(numpy_helper.from_array(rng.standard_normal((cout, cin, 3, 3)).astype(np.float32), w))
        nodes.append(helper.make_node("Conv", [last, w], [f"c{k}"], name=f"conv{k}", kernel_shape=[3, 3],
                                      pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [f"c{k}"], [f"r{k}"], name=f"relu{k}"))
        last = f"r{k}"
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                             ["N", channels[0], 16, 16])],
                              [helper.make_tensor_value_info(last, TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


# --------------------------------------------------------------------------- grid and interpolation

def test_axis_grid_small_wide_and_grouped():
    assert axis_grid(10) == [1, 4, 8, 10]
    assert axis_grid(64) == [1] + list(range(8, 65, 8))
    wide = axis_grid(2048)
    assert wide[0] == 1 and wide[-1] == 2048 and len(wide) <= 34 and all(c % 8 == 0 for c in wide[1:])
    assert axis_grid(32, unit=4) == [4, 16, 32]  # 8 units per group-position: 1, 4, 8 units


def test_interpolation_on_a_staircase_is_exact_at_grid_points_and_steps_between(tmp_path):
    timer = FakeTimer()
    cost = op.profile(conv_chain(), cache=False, timer=timer)
    assert cost.layers["conv2"] == (64, 96)
    for i in axis_grid(64):
        for o in (96, 48, 8):
            assert cost.layer_cost("conv2", i, o) == pytest.approx(staircase(i, o), rel=1e-9)
    # between grid points 8 and 16 along the input axis: the next point's stair (a count is padded up to it)
    assert cost.layer_cost("conv2", 12, 96) == pytest.approx(staircase(16, 96))
    assert cost.layer_cost("conv2", 9, 96) == pytest.approx(staircase(16, 96))
    assert cost.stepped
    # the separable model with a fixed part is exact for a separable staircase, also off the axes
    assert cost.layer_cost("conv2", 32, 48) == pytest.approx(staircase(32, 48))
    assert all(abs(e) < 1e-9 for errors in cost.check_errors().values() for e in errors)
    assert cost.layer_cost("conv2", 64, 96) == pytest.approx(staircase(64, 96))
    assert cost.total == 10.0
    kept = {"conv2": (32, 48)}
    assert cost.predict(kept) == pytest.approx(10.0 - staircase(64, 96) + staircase(32, 48))


def test_axis_curve_pools_dips_and_flattens_noise_within_a_stair():
    # 8 measured slower than 16 (off the runtime's block): pooled; 40 vs 48 differ by noise: one stair
    points = [(1, 0.20), (8, 0.35), (16, 0.26), (24, 0.34), (32, 0.341), (40, 0.412), (48, 0.410), (56, 0.48),
              (64, 0.50)]
    counts, values = axis_curve(points)
    assert list(counts) == [c for c, _ in points]
    assert all(b >= a for a, b in zip(values, values[1:]))
    assert values[1] == values[2] == pytest.approx((0.35 + 0.26) / 2)
    assert values[3] == values[4] and values[5] == values[6]
    assert values[5] > values[4] and values[7] < values[8]
    # a count between grid points costs its stair's (the next point's): the stair's top is the cheapest point
    assert stair_value((counts, values), 41) == stair_value((counts, values), 48) == values[6]
    assert stair_value((counts, values), 33) == values[5]
    # also on wide gaps (wide axes measured every 64): a count between points costs its stair's top
    wide = (np.array([1.0, 64.0, 128.0]), np.array([1.0, 2.0, 4.0]))
    assert stair_value(wide, 65) == stair_value(wide, 128) == 4.0


def test_points_off_their_neighbours_trend_are_timed_again_and_the_nearer_timing_kept():
    """A session that ran fast makes one point a dip (the allocator would pick it); a second timing in other
    sessions replaces it. A step the runtime really has measures the same twice and stays."""
    true = lambda i, o: 1e-3 * i * o  # noqa: E731
    step = lambda i, o: true(i, o) * (1.5 if i == 40 else 1.0)  # noqa: E731  a real step at 40 input channels

    class FastSessionOnce(FakeTimer):
        """conv2's first timing has (24, 96) in a session that ran 30 % fast."""

        def __init__(self) -> None:
            super().__init__(latency=step)
            self.asked: list[list[tuple[int, int]]] = []

        def points(self, spec, counts):
            values = super().points(spec, counts)
            if spec.name == "conv2":
                if not self.asked:
                    values[counts.index((24, 96))] *= 0.7
                self.asked.append(list(counts))
            return values

    timer = FastSessionOnce()
    cost = op.profile(conv_chain(), cache=False, timer=timer)
    assert cost.curves[cost.info["conv2"].signature].points[(24, 96)] == pytest.approx(true(24, 96))
    assert cost.curves[cost.info["conv2"].signature].points[(40, 96)] == pytest.approx(step(40, 96))
    first, again = timer.asked
    assert (24, 96) in again and (40, 96) in again and len(again) < len(first) / 4


def test_off_trend_flags_points_by_their_neighbours_line_not_the_one_unit_point():
    spec = layer_specs(analyze(conv_chain()), 1)[0][2]  # conv2: 64 -> 96
    counts = grid_points(spec)
    values = [1e-3 * i * o + (0.5 if (i, o) == (1, 96) else 0.0) for i, o in counts]
    assert off_trend(spec, counts, values) == {}
    values[counts.index((64, 48))] *= 1.3
    assert list(off_trend(spec, counts, values)) == [counts.index((64, 48))]


def test_isotonic_is_the_least_squares_non_decreasing_fit():
    assert list(isotonic([1, 3, 2, 4])) == [1, 2.5, 2.5, 4]
    assert list(isotonic([3, 2, 1])) == [2, 2, 2]


def test_layer_cost_refuses_counts_outside_the_layer():
    cost = op.profile(conv_chain(), cache=False, timer=FakeTimer())
    with pytest.raises(InvalidRequestError, match="outside 1..96"):
        cost.layer_cost("conv2", 64, 97)
    with pytest.raises(InvalidRequestError, match="outside"):
        cost.layer_cost("conv2", 0, 96)
    with pytest.raises(InvalidRequestError, match="not in the cost model"):
        cost.layer_cost("relu1", 1, 1)


def test_identical_layer_signatures_are_measured_once():
    timer = FakeTimer()
    cost = op.profile(conv_chain((3, 64, 64, 64, 96)), cache=False, timer=timer)
    assert set(cost.layers) == {"conv0", "conv1", "conv2", "conv3"}
    assert cost.info["conv1"].signature == cost.info["conv2"].signature
    assert sorted(timer.layers) == ["conv0", "conv1", "conv3"]
    assert cost.layer_cost("conv2", 8, 16) == cost.layer_cost("conv1", 8, 16)


def test_depthwise_is_one_axis_with_group_rewritten():
    analysis = analyze(os.path.join(FIXTURES, "mobilenetv2_dynamo.onnx"))
    specs, skipped = layer_specs(analysis, 1)
    assert not skipped
    depthwise = [s for s in specs if s.tied]
    assert depthwise and all(not s.tied for s in specs if s.groups == 1)
    spec = depthwise[0]
    assert all(i == o for i, o in grid_points(spec))
    model, _ = micro_graph(spec, 24, 24, WeightPool())
    conv = model.graph.node[0]
    assert {a.name: helper.get_attribute_value(a) for a in conv.attribute}["group"] == 24
    onnx.checker.check_model(model)


@pytest.mark.parametrize("fixture", ["resnext_legacy.onnx", "mobilenetv2_dynamo.onnx", "vit_mha_legacy.onnx",
                                     "resnet_bn_legacy.onnx"])
def test_micro_graphs_are_valid_and_run_at_reduced_counts(fixture):
    specs, _ = layer_specs(analyze(os.path.join(FIXTURES, fixture)), 2)
    assert specs
    pool = WeightPool()
    for spec in specs:
        kept_in, kept_out = grid_points(spec)[0]
        model, x_shape = micro_graph(spec, kept_in, kept_out, pool)
        onnx.checker.check_model(model)
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        (y,) = session.run(None, {"x": np.zeros(x_shape, np.float32)})
        assert np.all(np.isfinite(y))


# --------------------------------------------------------------------------- cache and cost files

def test_cache_hit_miss_and_environment_key(tmp_path):
    model = conv_chain()
    first = FakeTimer()
    a = op.profile(model, cache=str(tmp_path), timer=first)
    assert first.layers and first.models == 1
    assert os.path.isfile(tmp_path / "latency-cache.json")
    again = FakeTimer(latency=lambda i, o: 99.0, total=99.0)
    b = op.profile(model, cache=str(tmp_path), timer=again)
    assert again.layers == [] and again.models == 0  # hit: nothing measured
    assert b.total == a.total and b.layer_cost("conv2", 8, 8) == a.layer_cost("conv2", 8, 8)
    other = FakeTimer()
    op.profile(model, cache=str(tmp_path), threads=1, timer=other)  # another environment: miss
    assert other.layers and other.models == 1
    off = FakeTimer()
    op.profile(model, cache=False, timer=off)
    assert off.layers and off.models == 1


def test_default_cache_folder_follows_xdg(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    op.profile(conv_chain(), timer=FakeTimer())
    assert os.path.isfile(tmp_path / "onnxprune" / "latency-cache.json")


def test_cost_file_round_trip_and_refusals(tmp_path):
    model = conv_chain()
    cost = op.profile(model, cache=False, timer=FakeTimer())
    path = str(tmp_path / "cost.json")
    cost.save(path)
    loaded = op.load_cost(path, model)
    assert loaded.layers == cost.layers and loaded.total == cost.total
    assert loaded.layer_cost("conv2", 20, 30) == pytest.approx(cost.layer_cost("conv2", 20, 30))
    with pytest.raises(InvalidRequestError, match="another model"):
        op.load_cost(path, conv_chain((3, 32, 32, 96)))
    with pytest.raises(InvalidRequestError, match="threads"):
        op.load_cost(path, model, threads=1)
    with pytest.raises(InvalidRequestError, match="batch"):
        op.load_cost(path, model, batch=4)
    data = json.loads(open(path).read())
    data["environment"]["onnxruntime"] = "0.0.1"
    (tmp_path / "old.json").write_text(json.dumps(data))
    with pytest.raises(InvalidRequestError, match="onnxruntime '0.0.1'"):
        op.load_cost(str(tmp_path / "old.json"), model)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(InvalidRequestError, match="not an onnxprune cost file"):
        op.load_cost(str(tmp_path / "bad.json"), model)


# --------------------------------------------------------------------------- bad requests and the CLI

@pytest.mark.parametrize("kwargs, message", [
    ({"provider": "NoSuchExecutionProvider"}, "available: .*CPUExecutionProvider"),
    ({"threads": 0}, "threads"),
    ({"threads": 1.5}, "threads"),
    ({"batch": 0}, "batch"),
    ({"cache": 3}, "cache"),
])
def test_bad_requests_are_typed_errors(kwargs, message):
    with pytest.raises(InvalidRequestError, match=message):
        op.profile(conv_chain(), timer=FakeTimer(), **kwargs)


@pytest.mark.parametrize("args", [["--provider", "NoSuchExecutionProvider"], ["--threads", "0"], ["--batch", "0"]])
def test_cli_bad_input_exits_2_and_writes_nothing(tmp_path, args, capsys):
    out = tmp_path / "cost.json"
    assert main(["profile", RESNET, "-o", str(out), *args]) == 2
    assert not out.exists()
    assert "error" in capsys.readouterr().err


def test_cli_missing_model_and_output_onto_input(tmp_path):
    assert main(["profile", str(tmp_path / "missing.onnx"), "-o", str(tmp_path / "c.json")]) == 2
    assert not (tmp_path / "c.json").exists()
    assert main(["profile", RESNET, "-o", RESNET]) == 2


# --------------------------------------------------------------------------- a real (small) profile

def test_real_profile_of_a_fixture(tmp_path, capsys):
    cost = op.profile(RESNET, cache=str(tmp_path))
    model = onnx.load(RESNET)
    expected = {n.name for n in model.graph.node if n.op_type in ("Conv", "Gemm")}
    assert set(cost.layers) == expected and not cost.skipped
    assert math.isfinite(cost.total) and cost.total > 0
    latencies = cost.layer_latencies()
    for name, (cin, cout) in cost.layers.items():
        curve = cost.curves[cost.info[name].signature]
        # full counts give the measured full point, scaled to the layers' time in the model
        assert latencies[name] == pytest.approx(cost.scale * curve.points[(cin, cout)], rel=1e-12)
        assert all(math.isfinite(ms) and ms > 0 for ms in curve.points.values())
        value = cost.layer_cost(name, max(1, cin - 1.5), max(1, cout // 2))
        assert math.isfinite(value) and value > 0
    out = tmp_path / "cost.json"
    assert main(["profile", RESNET, "-o", str(out), "--no-cache"]) == 0
    printed = capsys.readouterr().out
    assert "share %" in printed and "total" in printed
    assert set(op.load_cost(str(out), RESNET).layers) == expected


# --------------------------------------------------------------------------- the part outside the layers

SE = os.path.join(FIXTURES, "se_sigmoid_legacy.onnx")


def test_latency_outside_the_layers_is_spread_over_prunable_activation_tensors():
    timer = FakeTimer(latency=lambda i, o: 1e-3 * i * o, total=100.0)
    cost = op.profile(SE, cache=False, timer=timer)
    layers = sum(cost.layer_latencies().values())
    assert cost.tensors and sum(ms for _, _, ms in cost.tensors.values()) <= cost.total - layers + 1e-9
    analysis = analyze(SE)
    producers = {out: node for node in analysis.model.graph.node for out in node.output}
    for tensor, (size_in, size_out, ms) in cost.tensors.items():
        node = producers[tensor]
        assert node.name not in cost.layers and ms > 0 and analysis.channels.tracked(tensor)
        # what onnxruntime fuses into a layer (its BatchNormalization, its activation) carries no term
        source = producers.get(node.input[0])
        assert not (node.op_type in ("BatchNormalization", "Relu") and source is not None and
                    source.name in cost.layers)
    # the tensor terms scale with kept elements and take part in the prediction
    name, (size_in, size_out, ms) = next(iter(cost.tensors.items()))
    half = {op_cost.TENSOR_TERM + name: (size_in, max(1, size_out // 2))}
    assert cost.predict(half) == pytest.approx(cost.total - ms * (1 - max(1, size_out // 2) / size_out))
    # and survive a cost file
    assert LatencyCostModel.from_dict(json.loads(json.dumps(cost.as_dict()))).tensors == cost.tensors


class NodeTimer(FakeTimer):
    """A fake timer that also gives the whole model's per-node kernel times (optimised-graph names)."""

    def __init__(self, node_ms, outside_ms: float, **kwargs) -> None:
        super().__init__(**kwargs)
        self.node_ms = node_ms
        self.outside_ms = outside_ms
        self.node_calls = 0

    def nodes(self, source, feed):
        self.node_calls += 1
        return self.outside_ms, dict(self.node_ms)


def test_source_node_follows_onnxruntime_names_back_to_the_model():
    nodes = {"mul_45": "swish", "/se/Mul": "se", "add_1": "add"}
    producers = {"clip_37_out": "conv", "bn_82_out": "bn", "/se/Mul_output_0": "se"}
    assert source_node("add_1", nodes, producers) == "add"
    assert source_node("mul_45/QuickGeluFusion/", nodes, producers) == "swish"
    assert source_node("/se/Mul/QuickGeluFusion/", nodes, producers) == "se"
    assert source_node("clip_37_out_nchwc", nodes, producers) == "conv"
    assert source_node("bn_82_out_bn_nchwc", nodes, producers) == "bn"
    assert source_node("/se/Mul_output_0_nchwc", nodes, producers) == "se"
    assert source_node("fused add_1", nodes, producers) == "add"  # a Gemm fused with its activation
    for made_up in ("Gelu_token_4", "ReorderOutput", "ReorderInput_token_7", "SkipLayerNormalization"):
        assert source_node(made_up, nodes, producers) is None


def test_node_ms_per_run_takes_medians_without_the_first_run():
    events = [{"cat": "Session", "name": "model_run", "ts": t, "dur": d} for t, d in ((0, 90), (100, 90),
                                                                                         (200, 90), (300, 60))]
    for run, dur in enumerate((500, 10, 30, 20)):  # the first run (warm-up) is slow and left out
        events.append({"cat": "Node", "name": "a_kernel_time", "ts": 100 * run + 5, "dur": dur})
        events.append({"cat": "Node", "name": "b_fence_before", "ts": 100 * run + 6, "dur": 99})
    events.append({"cat": "Node", "name": "b_kernel_time", "ts": 205, "dur": 40})
    outside_ms, node_ms = node_ms_per_run(events)
    assert node_ms == pytest.approx({"a": 0.02, "b": 0.0})
    assert outside_ms == pytest.approx(0.02)  # the least time outside the kernels: the last run's 60 - 20 us


def test_kernel_time_leaves_out_only_the_edge_layout_conversions():
    def node(ts, dur, op):
        return {"cat": "Node", "name": f"n{ts}_kernel_time", "ts": ts, "dur": dur, "args": {"op_name": op}}

    events = [{"cat": "Session", "name": "model_run", "ts": 0, "dur": 100}]
    events += [node(1, 5, "ReorderInput"), node(10, 20, "Conv"), node(31, 7, "ReorderOutput"),
               node(40, 3, "ReorderInput"), node(50, 30, "Conv"), node(90, 6, "ReorderOutput")]
    # a chain of two convolutions with a conversion out of and back into the blocked layout between them: those
    # two count, the first ReorderInput and the last ReorderOutput (the micro-graph's edges) do not
    assert kernel_ms_per_run(events) == pytest.approx([(20 + 7 + 3 + 30) / 1e3])


def test_paired_ratio_compares_runs_of_the_same_round():
    # the load changed after the first round; the candidate is half the reference in every round but one
    reference, candidate = [1.0, 10.0, 10.0], [0.5, 0.5, 5.0]
    assert paired_ratio(candidate, reference) == pytest.approx(0.5)
    assert np.median(candidate) / np.median(reference) == pytest.approx(0.05)  # what the ratio of medians says


def test_a_chunk_whose_reference_session_ran_slow_is_timed_again():
    """Fake chunk timings: points cost half the layer; the first timing of the second of three chunks has a
    reference session 1.7x slow for life (its ratios come out 1.7x too small). It alone is timed again, and the
    new timing kept."""
    spec = layer_specs(analyze(RESNET), 1)[0][0]

    class ChunkTimer(timing.Timer):
        def __init__(self) -> None:
            super().__init__("CPUExecutionProvider", 1)
            self.calls = 0

        def time_chunk(self, spec, graphs):
            self.calls += 1
            slow = 1.7 if self.calls == 2 else 1.0
            return 2.0 * slow, [0.5 / slow] * len(graphs)

    timer = ChunkTimer()
    ratios, full = timer.relative(spec, [None] * (2 * timing.CHUNK + 3))
    assert timer.calls == 4 and ratios == [0.5] * (2 * timing.CHUNK + 3) and full == 2.0
    # later calls for the same layer compare with the references seen so far: one chunk, an outlier, timed again
    timer.calls = 1
    assert timer.relative(spec, [None] * 2)[0] == [0.5, 0.5] and timer.calls == 3
    timer.calls = 5  # nothing slow: timed once
    assert timer.relative(spec, [None] * 2)[0] == [0.5, 0.5] and timer.calls == 6


def test_chain_points_are_timed_twice_and_the_slower_timing_kept():
    """A chain point one session timed too fast would be picked by decomposition for that error: each point is
    timed twice (the second pass in reverse order) and the larger ratio kept, in the order asked."""
    from onnxprune.profile.chains import ChainSpec

    layer = layer_specs(analyze(RESNET), 1)[0][0]
    ranks = [(r,) for r in range(1, 12)]
    seen: list[list[int]] = []

    class ChunkTimer(timing.Timer):
        def time_chunk(self, spec, graphs):
            asked = [g.args[1][0] for g in graphs]  # partial(chain_graph, chain, ranks, pool)
            seen.append(asked)
            lucky = len(seen) == 1  # the first chunk's sessions time rank 3 too fast
            return 2.0, [r / 20 * (0.5 if lucky and r == 3 else 1.0) for r in asked]

    timer = ChunkTimer("CPUExecutionProvider", 1)
    ratios = timer.chain_points(ChainSpec(layer, "svd", (12,), (12,)), ranks)
    assert ratios == pytest.approx([r / 20 for r in range(1, 12)])
    assert seen[0][:3] == [1, 2, 3] and seen[-1][-1] == 1  # the second pass in reverse order


def test_models_are_timed_in_blocks_of_fresh_sessions_opened_in_rotated_order(monkeypatch):
    """Each block opens its own sessions, creation order rotated; the result is models[0]'s median and the others'
    median-over-blocks ratio to it (fake sessions: 'a' runs 2 ms, 'b' 1 ms, 'c' 4 ms, in every block but one)."""
    opened: list[str] = []
    speed = {"a": 2.0, "b": 1.0, "c": 4.0}

    class FakeSession:
        def __init__(self, name: str) -> None:
            self.name, self.block = name, len(opened) // 3
            opened.append(name)

        def get_outputs(self):
            return []

        def run(self, outputs, feed):
            slow = 3.0 if (self.block, self.name) == (1, "b") else 1.0  # one session of b runs slow for life
            clock[0] += speed[self.name] * slow

    clock = [0.0]
    monkeypatch.setattr(timing.time, "perf_counter", lambda: clock[0] / 1e3)
    monkeypatch.setattr(timing, "make_session", lambda model, provider, threads: FakeSession(model))
    a, b, c = timed_in_blocks(["a", "b", "c"], {}, "CPUExecutionProvider", 1, blocks=3, rounds=4, warmup=1)
    assert opened == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert (a, b, c) == pytest.approx((2.0, 1.0, 4.0))  # the slow session of b is outvoted by the other blocks


def test_the_whole_model_profile_splits_the_total_into_tensors_layers_and_a_fixed_part(tmp_path):
    # the SE fixture: the Relus and the Sigmoid after convs are fused into them; the pool and Mul are not. Its
    # profile (in a run of 40 ms, half the total's 80 ms): 3 ms of kernels the tensors' nodes took, 27 ms the
    # layers (with what the runtime fused into them and made up), 10 ms outside the kernels
    node_ms = {"/se/Mul": 2.0, "/se/pool/GlobalAveragePool": 1.0, "/se/Sigmoid": 5.0, "/body/body.2/Relu": 4.0,
               "/body/body.0/Conv_output_0_nchwc": 7.0, "/stem/stem.0/Conv": 6.0, "ReorderOutput": 5.0}
    layer_ms = lambda i, o: 1e-3 * i * o  # noqa: E731
    timer = NodeTimer(node_ms, 10.0, latency=layer_ms, total=80.0)
    cost = op.profile(SE, cache=str(tmp_path), timer=timer)
    assert {t: ms for t, (_, _, ms) in cost.tensors.items()} == pytest.approx(
        {"/se/Mul_output_0": 4.0, "/se/pool/GlobalAveragePool_output_0": 2.0})
    layers = sum(cost.layer_latencies().values())
    assert layers == pytest.approx(2 * 27.0)  # the micro-graphs scaled to the layers' time in the model
    assert cost.scale == pytest.approx(54.0 / sum(layer_ms(*size) for size in cost.layers.values()))
    assert cost.total - layers - sum(ms for _, _, ms in cost.tensors.values()) == pytest.approx(2 * 10.0)
    again = op.profile(SE, cache=str(tmp_path), timer=timer)
    assert timer.node_calls == 1 and again.tensors == cost.tensors and again.scale == cost.scale  # cached
    assert LatencyCostModel.from_dict(json.loads(json.dumps(cost.as_dict()))).layer_latencies() == \
        pytest.approx(cost.layer_latencies())


def attention_scores() -> onnx.ModelProto:
    """x -> q, k projections (one 32-wide group: q @ k^T sums over it) -> scores [N, 8, 8] -> Softmax -> p @ x."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
             for name, shape in (("wq", (16, 32)), ("wk", (16, 32)), ("wo", (16, 8)))]
    nodes = [helper.make_node("MatMul", ["x", "wq"], ["q"], name="q_proj"),
             helper.make_node("MatMul", ["x", "wk"], ["k"], name="k_proj"),
             helper.make_node("Transpose", ["k"], ["kt"], name="k_t", perm=[0, 2, 1]),
             helper.make_node("MatMul", ["q", "kt"], ["s"], name="scores"),
             helper.make_node("Softmax", ["s"], ["p"], name="softmax", axis=-1),
             helper.make_node("MatMul", ["p", "x"], ["a"], name="mix"),
             helper.make_node("MatMul", ["a", "wo"], ["y"], name="out")]
    graph = helper.make_graph(nodes, "attention", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_a_product_over_a_pruned_axis_is_charged_to_the_tensor_it_sums_over(tmp_path):
    # q @ k^T writes scores without a pruned axis, but its work follows the head dim it sums over: its time goes
    # on q's term (and shrinks with the q / k group); Softmax reads and writes no pruned axis: fixed
    model = attention_scores()
    node_ms = {"scores": 3.0, "softmax": 1.0, "k_t": 0.5, "q_proj": 2.0, "k_proj": 2.0, "out": 1.0}
    timer = NodeTimer(node_ms, 0.5, latency=lambda i, o: 1e-3 * i * o, total=10.0)
    cost = op.profile(model, cache=str(tmp_path), timer=timer)
    assert {t: ms for t, (_, _, ms) in cost.tensors.items()} == pytest.approx({"q": 3.0, "kt": 0.5})
    assert cost.tensors["q"][:2] == (1, 32)
    analysis = analyze(model)
    (group,) = [g.id for g in analysis.groups if g.prunable and g.size == 32]
    kept = layer_kept(analysis, cost, {group: np.arange(16)})
    assert kept[op_cost.TENSOR_TERM + "q"] == (1, 16)
    assert cost.predict(kept) < cost.predict({name: kept[name] for name in cost.layers}) - 1.5 + 1e-9


def test_tensor_terms_do_not_stop_a_group_off_its_layers_stairs():
    # layers cost in blocks of 8 channels; the outside part is smooth: kept counts still land on stair tops
    timer = FakeTimer(latency=lambda i, o: 1e-3 * math.ceil(i / 8) * math.ceil(o / 8) * 64, total=200.0)
    cost = op.profile(SE, cache=False, timer=timer)
    assert cost.tensors
    analysis = analyze(SE)
    groups = [g.id for g in analysis.groups if g.prunable]
    scores = criterion_for("l2")(CriterionContext(analysis, op.Options(), groups, None, None, 0))
    scores = {g: np.asarray(scores[g], float) for g in groups}
    allocation = allocate_budget(analysis, scores, cost, 0.8, op.Options())
    assert any(allocation.counts.values())
    for name in cost.layers:
        for kept, full in zip(allocation.kept[name], cost.layers[name]):
            assert kept == full or kept % 8 == 0, (name, kept, full)


class ProductTimer(NodeTimer):
    """NodeTimer that also times products of two activations: a fixed part and a part linear in the count."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.products: list[tuple[str, list[int]]] = []

    def product_points(self, spec, counts):
        self.products.append((spec.name, list(counts)))
        return [1.0 + k / spec.size for k in counts]


def test_a_product_of_activations_is_charged_along_its_measured_curve(tmp_path):
    # q @ k^T keeps half its time with half the head dim only when it has no fixed part; measured: 1 + k / 32
    model = attention_scores()
    node_ms = {"scores": 3.0, "softmax": 1.0, "k_t": 0.5, "q_proj": 2.0, "k_proj": 2.0, "out": 1.0}
    timer = ProductTimer(node_ms, 0.5, latency=lambda i, o: 1e-3 * i * o, total=10.0)
    cost = op.profile(model, cache=str(tmp_path), timer=timer)
    assert [name for name, _ in timer.products] == ["scores"]
    assert timer.products[0][1] == axis_grid(32)
    assert set(cost.products) == {"q"} and cost.products["q"][0] == pytest.approx(3.0)
    assert cost.tensors["q"] == (1, 32, 0.0)  # the term stays, its time is the product's
    assert cost.tensor_cost("q", 1, 16) == pytest.approx(3.0 * 1.5 / 2.0)
    assert cost.tensor_cost("q", 1, 32) == pytest.approx(3.0)
    analysis = analyze(model)
    (group,) = [g.id for g in analysis.groups if g.prunable and g.size == 32]
    kept = layer_kept(analysis, cost, {group: np.arange(16)})
    layers_only = cost.predict({name: kept[name] for name in cost.layers})
    assert cost.predict(kept) == pytest.approx(layers_only - 3.0 * 0.25 - 0.5 / 2)  # the product, k's transpose
    again = LatencyCostModel.from_dict(json.loads(json.dumps(cost.as_dict())))
    assert again.products == cost.products and again.tensor_cost("q", 1, 16) == cost.tensor_cost("q", 1, 16)
    op.profile(model, cache=str(tmp_path), timer=timer)
    assert len(timer.products) == 1  # cached


@pytest.mark.parametrize("tensor, axis, shrink", [("q", 3, ((0, 3), (1, 2))), ("y", 3, ((1, 3),)),
                                                  ("y", 2, ((0, 2),)), ("v", 2, ((1, 2), (0, 3))),
                                                  ("q", 1, ((0, 1), (1, 1)))])
def test_product_axes_follow_matmul_shape_rules(tensor, axis, shrink):
    node = helper.make_node("MatMul", ["q", "v"], ["y"])
    assert shrinking_axes(node, tensor, axis, (4, 4)) == shrink
    assert shrinking_axes(node, "q", 1, (4, 3)) is None  # a batch axis of operands of different ranks


def test_product_micro_graph_runs_at_a_reduced_count():
    spec = ProductSpec("qk", (1, 2, 5, 8), (1, 2, 8, 5), ((0, 3), (1, 2)), 8, TensorProto.FLOAT)
    model, shapes = product_graph(spec, 3)
    onnx.checker.check_model(model)
    assert shapes == {"a": (1, 2, 5, 3), "b": (1, 2, 3, 5)}
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = {name: np.ones(shape, np.float32) for name, shape in shapes.items()}
    assert session.run(None, feed)[0].shape == (1, 2, 5, 5)
