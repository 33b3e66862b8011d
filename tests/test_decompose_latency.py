"""Decomposition against the measured cost model: chain curves (grid, interpolation, snapping on synthetic
staircases), chain profiling through the timer seam (fake timings, dedup, cache, cost files), decompose with
cost= / target_latency= on fake cost models, bad input, the CLI; plus real chain micro-graphs (structure only,
no timing asserted)."""
from __future__ import annotations

import math
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxprune as op
from onnxprune.cli import main
from onnxprune.coupling import analyze
from onnxprune.decomposition import decomposable_layers
from onnxprune.decomposition.latency import LatencyModel, Option, front, hull, rank_loss, target_ranks
from onnxprune.errors import InvalidRequestError
from onnxprune.profile.chains import (ChainCosts, ChainCurve, ChainSpec, chain_graph, chain_specs, rank_axis,
                                      rank_points, snap)
from onnxprune.profile.layers import WeightPool, layer_specs

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures")
RESNET = os.path.join(FIXTURES, "resnet_legacy.onnx")


def layer_ms(i: int, o: int) -> float:
    """Layer latency staircase: blocks of 16 channels on both axes."""
    return 0.05 + 0.004 * math.ceil(i / 16) * math.ceil(o / 16)


def chain_ratio(spec: ChainSpec, ranks: tuple[int, ...]) -> float:
    """A chain's latency / its layer's: a staircase of 16 in each rank, cheap at low rank, over 1 near full."""
    fractions = [math.ceil(r / 16) * 16 / f for r, f in zip(ranks, spec.full_ranks)]
    return 0.1 + 1.2 * math.prod(fractions)


class FakeTimer:
    """Fake timings through the profiler's seam; records what it was asked to measure."""

    def __init__(self, ratio=chain_ratio, total: float = 0.5) -> None:
        self.ratio = ratio
        self.total = total
        self.layers: list[str] = []
        self.chains: list[tuple[str, str]] = []

    def points(self, spec, counts):
        self.layers.append(spec.name)
        return [layer_ms(i, o) for i, o in counts]

    def chain_points(self, spec, ranks):
        self.chains.append((spec.layer.name, spec.method))
        return [self.ratio(spec, r) for r in ranks]

    def model(self, source, feed):
        return self.total


def conv_model(channels=(16, 64, 64, 96)) -> onnx.ModelProto:
    """x -> (Conv 3x3 + Relu) per channel step; the two middle convs of the default are identical."""
    rng = np.random.default_rng(0)
    nodes, inits, last = [], [], "x"
    for k, (cin, cout) in enumerate(zip(channels[:-1], channels[1:])):
        inits.append(numpy_helper.from_array(rng.standard_normal((cout, cin, 3, 3)).astype(np.float32), f"w{k}"))
        nodes.append(helper.make_node("Conv", [last, f"w{k}"], [f"c{k}"], name=f"conv{k}", kernel_shape=[3, 3],
                                      pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [f"c{k}"], [f"r{k}"], name=f"relu{k}"))
        last = f"r{k}"
    graph = helper.make_graph(nodes, "convs", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                             [1, channels[0], 8, 8])],
                              [helper.make_tensor_value_info(last, TensorProto.FLOAT, [1, channels[-1], 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def fake_cost(model=None, timer=None, methods="tucker"):
    return op.profile(model or conv_model(), cache=False, timer=timer or FakeTimer(), decomposition=methods)


# --------------------------------------------------------------------------- grid, interpolation, snapping

def test_rank_axis_sees_the_steps_below_the_limit_and_keeps_full():
    assert rank_axis(64, 64) == [8, 16, 24, 32, 40, 48, 56, 64]
    assert rank_axis(64, 30) == [8, 16, 24, 32, 64]  # the next step above the limit, then full
    assert rank_axis(20, 20) == [4, 8, 12, 16, 20]
    wide = rank_axis(512, 512)
    assert wide[-1] == 512 and len(wide) <= 14 and all(r % 16 == 0 for r in wide)
    assert rank_axis(3, 3) == [3]


def test_chain_curve_is_exact_at_points_linear_between_and_bilinear_in_2d():
    curve = ChainCurve((64,), {(8,): 1.0, (16,): 1.0, (24,): 2.0, (64,): 4.0})
    assert curve.cost((16,)) == 1.0 and curve.cost((20,)) == pytest.approx(1.5)
    assert curve.cost((44,)) == pytest.approx(3.0) and curve.cost((4,)) == 1.0  # held flat below the first point

    def tucker(i, o):  # first 1x1, core, last 1x1: c0 + a i + c o + b i o (with steps on the axes)
        return 0.2 + 0.01 * math.ceil(i / 16) * 16 + 0.02 * o + 0.0005 * math.ceil(i / 16) * 16 * o

    spec = ChainSpec(None, "tucker", (64, 96), (64, 96))
    points = {r: tucker(*r) for r in rank_points(spec)}
    curve = ChainCurve((64, 96), points)
    for i in (16, 32, 48):
        for o in (8, 40, 96):
            assert curve.cost((i, o)) == pytest.approx(tucker(i, o), rel=1e-9)
    assert all(abs(e) < 1e-9 for e in curve.check_errors())


def test_snap_moves_computed_ranks_to_the_top_of_their_latency_step():
    def stairs(r):
        return 1.0 + math.ceil(r / 16)

    curve = ChainCurve((96,), {(r,): stairs(r) for r in rank_axis(96, 96)})
    assert snap(curve, (19,)) == (32,)  # up to the measured 24, then 32 costs the same
    assert snap(curve, (16,)) == (16,)  # 24 costs more
    assert snap(curve, (33,)) == (48,)
    assert snap(curve, (96,)) == (96,)
    two = ChainCurve((32, 32), {(i, o): 1.0 + math.ceil(i / 16) + 2 * math.ceil(o / 16)
                                 for i, o in rank_points(ChainSpec(None, "tucker", (32, 32), (32, 32)))})
    assert snap(two, (5, 9)) == (16, 16)


# --------------------------------------------------------------------------- profiling chains

def test_profile_measures_each_chain_signature_once_and_scales_to_the_layer():
    timer = FakeTimer()
    cost = fake_cost(timer=timer, methods=["tucker", "cp"])
    assert sorted(timer.chains) == sorted([("conv0", "tucker"), ("conv0", "cp"), ("conv1", "tucker"),
                                           ("conv1", "cp"), ("conv2", "tucker"), ("conv2", "cp")])
    model = conv_model((16, 64, 64, 64, 96))
    timer = FakeTimer()
    cost = fake_cost(model, timer)
    assert cost.chains.layers["conv1"]["tucker"] == cost.chains.layers["conv2"]["tucker"]
    assert [c for c in timer.chains if c[0] in ("conv1", "conv2")] == [("conv1", "tucker")]
    spec = chain_specs(decomposable_layers(model), layer_specs(analyze(model), 1)[0], ["tucker"])[0]["conv3"]
    full = cost.layer_cost("conv3", 64, 96)
    for ranks in rank_points(spec["tucker"]):
        assert cost.chains.cost("conv3", "tucker", ranks) == pytest.approx(chain_ratio(spec["tucker"], ranks) * full)
    assert op.profile(model, cache=False, timer=FakeTimer()).chains is None  # chains only when asked


class ContextTimer(FakeTimer):
    """FakeTimer with the whole model's profile: per node of the optimised graph its kernel ms."""

    def __init__(self, node_ms, **kwargs) -> None:
        super().__init__(total=sum(node_ms.values()), **kwargs)
        self.node_ms = node_ms

    def nodes(self, source, feed):
        return 0.0, dict(self.node_ms)


def test_a_layer_and_its_chain_are_taken_at_the_layer_s_time_in_the_model(tmp_path):
    # conv1 and conv2 are the same signature (one micro-graph, one chain curve) but in the model conv1 with its
    # fused Relu takes 3 ms and conv2 1 ms: each layer and its chain are predicted at its own time, not at one
    # scale for all layers (which put the saving of the layers whose micro-graphs over-state them too high)
    model = conv_model((16, 64, 64, 64, 96))
    node_ms = {"conv0": 0.5, "conv1": 2.0, "relu1": 1.0, "r2_nchwc": 1.0, "conv3": 1.5, "ReorderOutput": 0.1}
    cost = op.profile(model, cache=False, timer=ContextTimer(node_ms), decomposition="tucker")
    latency = LatencyModel(cost, "tucker")
    assert latency.before("conv1") == pytest.approx(3.0) and latency.before("conv2") == pytest.approx(1.0)
    assert latency.before("conv3") == pytest.approx(1.5) and latency.before("conv0") == pytest.approx(0.5)
    curve = cost.chains.curve("conv1", "tucker")
    assert curve is cost.chains.curve("conv2", "tucker")
    spec = chain_specs(decomposable_layers(model), layer_specs(analyze(model), 1)[0], ["tucker"])[0]["conv1"]
    for ranks in rank_points(spec["tucker"]):
        for name, ms in (("conv1", 3.0), ("conv2", 1.0)):
            assert latency.chain_ms(name, ranks) == pytest.approx(chain_ratio(spec["tucker"], ranks) * ms)
    d = op.decompose(model, "tucker", rank_ratio=0.5, cost=cost)
    saved = {r.name: r.latency_before - r.latency_after for r in d.decomposed}
    assert saved["conv1"] == pytest.approx(3 * saved["conv2"])
    assert d.latency["predicted"] == pytest.approx(cost.total - sum(saved.values()))
    path = tmp_path / "cost.json"
    cost.save(path)
    assert LatencyModel(op.load_cost(path, model), "tucker").before("conv1") == pytest.approx(3.0)
    # a layer the profile does not name keeps the one scale
    partial = op.profile(model, cache=False, timer=ContextTimer({"conv1": 2.0, "x_made_up": 1.0}),
                         decomposition="tucker")
    assert "conv2" not in partial.chains.context
    assert LatencyModel(partial, "tucker").before("conv2") == pytest.approx(partial.layer_cost("conv2", 64, 64))


def test_chain_cache_hit_and_cost_file_round_trip(tmp_path):
    model = conv_model()
    first = fake_cost(model, FakeTimer())
    a = op.profile(model, cache=str(tmp_path), timer=FakeTimer(), decomposition="svd")
    assert a.chains.layers == {}  # 3x3 convs: no svd chain
    op.profile(model, cache=str(tmp_path), timer=FakeTimer(), decomposition="tucker")
    again = FakeTimer(ratio=lambda spec, r: 99.0)
    b = op.profile(model, cache=str(tmp_path), timer=again, decomposition="tucker")
    assert again.chains == [] and again.layers == []  # a hit: nothing measured
    assert b.chains.cost("conv1", "tucker", (16, 24)) == pytest.approx(first.chains.cost("conv1", "tucker", (16, 24)))
    path = tmp_path / "cost.json"
    b.save(path)
    loaded = op.load_cost(path, model)
    assert loaded.chains.methods == ("tucker",)
    assert loaded.chains.cost("conv2", "tucker", (20, 40)) == pytest.approx(b.chains.cost("conv2", "tucker", (20, 40)))
    with pytest.raises(InvalidRequestError, match="outside 1..64"):
        loaded.chains.cost("conv1", "tucker", (65, 8))


@pytest.mark.parametrize("fixture, method", [("resnet_legacy.onnx", "tucker"), ("resnet_legacy.onnx", "cp"),
                                             ("resnet_legacy.onnx", "svd"), ("vit_mha_legacy.onnx", "svd")])
def test_real_chain_micro_graphs_are_valid_and_run(fixture, method):
    path = os.path.join(FIXTURES, fixture)
    model = op.load_model(path)
    specs, _ = layer_specs(analyze(model), 1)
    per_layer, _ = chain_specs(decomposable_layers(model), specs, [method])
    assert per_layer
    pool = WeightPool()
    for entry in list(per_layer.values())[:4]:
        spec = entry[method]
        graph, x_shape = chain_graph(spec, rank_points(spec)[0], pool)
        onnx.checker.check_model(graph, full_check=True)
        assert len([n for n in graph.graph.node if n.op_type == spec.layer.op_type]) >= 2  # the layer is a chain
        session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
        (y,) = session.run(None, {"x": np.zeros(x_shape, np.float32)})
        assert np.all(np.isfinite(y))


# --------------------------------------------------------------------------- decompose against the cost model

def test_a_chain_measured_slower_than_its_layer_is_not_written_unless_forced():
    slow_conv1 = FakeTimer(ratio=lambda spec, r: 1.3 if spec.layer.name == "conv1" else chain_ratio(spec, r))
    cost = fake_cost(conv_model((16, 64, 80, 96)), slow_conv1)
    model = conv_model((16, 64, 80, 96))
    d = op.decompose(model, "tucker", rank_ratio=0.25, cost=cost)
    by_name = {r.name: r for r in d.layers}
    assert not by_name["conv1"].decomposed and "not faster" in by_name["conv1"].skipped
    assert by_name["conv2"].decomposed
    assert by_name["conv2"].latency_after < by_name["conv2"].latency_before
    forced = op.decompose(model, "tucker", rank_ratio=0.25, cost=cost, force=True)
    assert {r.name: r for r in forced.layers}["conv1"].decomposed
    saved = sum(r.latency_before - r.latency_after for r in d.decomposed)
    assert d.latency["predicted"] == pytest.approx(cost.total - saved)
    assert d.latency["target"] is None


def test_computed_ranks_snap_and_explicit_ranks_are_kept():
    cost = fake_cost()
    d = op.decompose(conv_model(), "tucker", rank_ratio=0.3, cost=cost)  # 0.3 x 64 = 19 -> the step of 32
    assert {r.name: r.ranks for r in d.decomposed}["conv1"] == (32, 32)
    e = op.decompose(conv_model(), "tucker", ranks={"conv1": (19, 21)}, cost=cost)
    assert e.layers[0].ranks == (19, 21)


def test_target_latency_is_reached_on_a_fake_cost_model():
    model = conv_model((16, 64, 80, 96))
    cost = fake_cost(model)
    for target in (0.9, 0.7, 0.5):
        d = op.decompose(model, "tucker", target_latency=target, cost=cost)
        assert d.latency["predicted"] <= target * cost.total + 1e-12
        assert d.latency["predicted_fraction"] == pytest.approx(d.latency["predicted"] / cost.total)
        for r in d.decomposed:
            curve = cost.chains.curve(r.name, "tucker")
            assert r.ranks in curve.grid() and r.latency_after < r.latency_before
    assert op.decompose(model, "tucker", target_latency=0.7, cost=cost, verify=True).decomposed  # oracle passes
    loose = op.decompose(model, "tucker", target_latency=1.0, cost=cost)
    assert not loose.decomposed  # nothing needed


def test_target_ranks_prefer_the_least_energy_lost_per_ms():
    curve = ChainCurve((8,), {(r,): 2.4 * r / 8 for r in range(1, 9)})

    class Cost:
        total = 10.0
        layers = {"a": (8, 8), "b": (8, 8)}
        chains = ChainCosts(("svd",), {"a": {"svd": "a"}, "b": {"svd": "b"}}, {"a": curve, "b": curve})

        def layer_cost(self, name, i, o):
            return 2.0

    class Layer:
        def __init__(self, name):
            self.name = name

    spectra = {"a": np.diag([8.0, 4, 2, 1, 0.5, 0.25, 0.1, 0.05]), "b": np.diag([1.0] * 8)}  # a: low rank
    picks = target_ranks(LatencyModel(Cost(), "svd"), [Layer("a"), Layer("b")], lambda l: spectra[l.name], 0.88)
    assert picks["a"] == (2,) and "not needed" in picks["b"]  # only the compressible layer is cut, as little as needed
    picks = target_ranks(LatencyModel(Cost(), "svd"), [Layer("a"), Layer("b")], lambda l: spectra[l.name], 0.82)
    assert picks == {"a": (2,), "b": (5,)}  # 10 - 4 + 0.6 + 1.5 = 8.1 <= 8.2; a (1,) with b (6,) loses more
    assert rank_loss("svd", spectra["b"])((4,)) == pytest.approx(0.5)


def test_front_and_hull():
    options = [Option((r,), ms, loss) for r, ms, loss in [(1, 1.0, 0.9), (2, 2.0, 0.5), (3, 3.0, 0.45),
                                                          (4, 3.5, 0.6), (5, 5.0, 0.0)]]
    states = front(4.0, options)
    assert [s.ranks for s in states] == [None, (3,), (2,), (1,)]  # (4,) is dominated, (5,) slower than the layer
    assert [s.ranks for s in hull(states)] == [None, (2,), (1,)]  # (3,): 0.45 per ms, (2,) 0.25 per ms
    assert [s.ranks for s in hull([Option(None, 4.0, 0.0), Option((3,), 3.0, 0.9), Option((1,), 1.0, 1.0)])] == \
        [None, (1,)]


# --------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("kwargs, message", [
    ({"target_latency": 0}, r"\(0, 1\]"),
    ({"target_latency": 1.5}, r"\(0, 1\]"),
    ({"target_latency": True}, r"\(0, 1\]"),
    ({"target_latency": 0.5, "rank_ratio": 0.5}, "do not also give rank_ratio"),
    ({"rank_ratio": 0.5, "threads": 1}, "threads"),
    ({"target_latency": 0.01}, "cannot be reached"),
])
def test_bad_requests_are_typed_errors(kwargs, message):
    model = conv_model()
    cost = None if "threads" in kwargs else fake_cost(model)
    with pytest.raises(InvalidRequestError, match=message):
        op.decompose(model, "tucker", cost=cost, **kwargs)


def test_a_cost_model_without_chains_or_for_another_model_is_refused():
    model = conv_model()
    with pytest.raises(InvalidRequestError, match="no measured cp chains"):
        op.decompose(model, "cp", rank_ratio=0.5, cost=fake_cost(model))
    with pytest.raises(InvalidRequestError, match="decomposition='tucker'"):
        op.decompose(model, "tucker", rank_ratio=0.5, cost=op.profile(model, cache=False, timer=FakeTimer()))
    with pytest.raises(InvalidRequestError, match="another model"):
        op.decompose(conv_model((16, 32, 64, 96)), "tucker", rank_ratio=0.5, cost=fake_cost(model))


# --------------------------------------------------------------------------- the CLI

def test_cli_decompose_with_a_cost_file_and_bad_input(tmp_path, capsys):
    model_path = tmp_path / "m.onnx"
    onnx.save(conv_model((16, 64, 80, 96)), model_path)
    cost_path = tmp_path / "cost.json"
    fake_cost(op.load_model(model_path)).save(cost_path)
    out = tmp_path / "out.onnx"
    assert main(["decompose", str(model_path), "-o", str(out), "--method", "tucker", "--target-latency", "0.7",
                 "--cost", str(cost_path)]) == 0
    printed = capsys.readouterr().out
    assert out.exists() and "predicted" in printed and "ms before" in printed
    onnx.checker.check_model(str(out), full_check=True)
    cost = ["--cost", str(cost_path)]
    bad = [["--target-latency", "0", *cost], ["--target-latency", "1.5", *cost], ["--target-latency", "0.001", *cost],
           ["--rank-ratio", "0.5", "--threads", "1"],
           ["--rank-ratio", "0.5", *cost, "--threads", "1"],  # the file was measured with the default threads
           ["--rank-ratio", "0.5", "--cost", str(tmp_path / "missing.json")]]
    for args in bad:
        target = tmp_path / "bad.onnx"
        assert main(["decompose", str(model_path), "-o", str(target), "--method", "tucker", *args]) == 2, args
        assert not target.exists()
    other = tmp_path / "other.onnx"
    onnx.save(conv_model(), other)
    assert main(["decompose", str(other), "-o", str(tmp_path / "o.onnx"), "--method", "tucker", "--rank-ratio",
                 "0.5", "--cost", str(cost_path)]) == 2
    assert not (tmp_path / "o.onnx").exists()
    assert "another model" in capsys.readouterr().err


def test_cli_inspect_shows_latency_shares(tmp_path, capsys):
    model_path = tmp_path / "m.onnx"
    onnx.save(conv_model(), model_path)
    cost_path = tmp_path / "cost.json"
    fake_cost(op.load_model(model_path)).save(cost_path)
    assert main(["inspect", str(model_path), "--cost", str(cost_path)]) == 0
    printed = capsys.readouterr().out
    assert "share %" in printed and "whole model: 0.5000 ms" in printed
    share = 100 * layer_ms(64, 64) / 0.5
    assert f"{share:.1f}" in printed
    assert main(["inspect", str(model_path), "--threads", "2"]) == 2
    assert main(["inspect", RESNET, "--cost", str(cost_path)]) == 2


def test_cli_profile_refuses_an_unknown_method():
    with pytest.raises(SystemExit) as exit_info:
        main(["profile", RESNET, "--decomposition", "bogus"])
    assert exit_info.value.code == 2


def test_cli_real_profile_with_chains_feeds_decompose(tmp_path, capsys):
    cost_path = tmp_path / "cost.json"
    assert main(["profile", RESNET, "-o", str(cost_path), "--no-cache", "--threads", "1",
                 "--decomposition", "tucker"]) == 0
    assert "factor chains (tucker)" in capsys.readouterr().out
    cost = op.load_cost(cost_path, RESNET, threads=1)
    assert cost.chains.methods == ("tucker",) and cost.chains.layers
    for name, methods in cost.chains.layers.items():
        curve = cost.chains.curves[methods["tucker"]]
        assert all(math.isfinite(v) and v > 0 for v in curve.points.values())
    out = tmp_path / "out.onnx"
    assert main(["decompose", RESNET, "-o", str(out), "--method", "tucker", "--rank-ratio", "0.5", "--cost",
                 str(cost_path), "--threads", "1"]) == 0
    assert out.exists() and "predicted" in capsys.readouterr().out
