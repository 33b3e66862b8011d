"""Activation-aware re-fit: a layer read by a Relu / Clip alone is fitted where the activation passes its target
(onnxprune.reconstruction.activation.activation_bounds / activation_target, refit.RunningFit)."""
from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune.graph import GraphIndex
from onnxprune.reconstruction import activation
from onnxprune.reconstruction.refit import refit
from onnxprune.runtime import session


def _gemm_then(activation: list[onnx.NodeProto], inits: list[onnx.TensorProto], opset: int = 17,
               extra_output: bool = False) -> onnx.ModelProto:
    """x (N, 4) -> Gemm 'fc' -> y -> the given activation node(s) -> out."""
    w = numpy_helper.from_array(np.ones((3, 4), np.float32), "w")
    nodes = [helper.make_node("Gemm", ["x", "w"], ["y"], name="fc", transB=1)] + activation
    outputs = [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)]
    if extra_output:
        outputs.append(helper.make_tensor_value_info("y", TensorProto.FLOAT, None))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
                              outputs, [w] + inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _bounds(model: onnx.ModelProto):
    return activation.activation_bounds(GraphIndex.build(model.graph), "y")


def _scalar(name: str, value: float) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(value, np.float32), name)


def test_bounds_of_relu_and_clip_with_initializer_constant_node_or_attribute_bounds():
    assert _bounds(_gemm_then([helper.make_node("Relu", ["y"], ["out"])], [])) == (0.0, math.inf)
    clip = helper.make_node("Clip", ["y", "lo", "hi"], ["out"])
    assert _bounds(_gemm_then([clip], [_scalar("lo", 0.0), _scalar("hi", 6.0)])) == (0.0, 6.0)
    constants = [helper.make_node("Constant", [], ["lo"], value=_scalar("v0", -1.0)),
                 helper.make_node("Constant", [], ["hi"], value=_scalar("v1", 2.0)), clip]
    assert _bounds(_gemm_then(constants, [])) == (-1.0, 2.0)
    only_max = helper.make_node("Clip", ["y", "", "hi"], ["out"])
    assert _bounds(_gemm_then([only_max], [_scalar("hi", 6.0)])) == (-math.inf, 6.0)
    old = helper.make_node("Clip", ["y"], ["out"], min=0.0, max=6.0)
    assert _bounds(_gemm_then([old], [], opset=6)) == (0.0, 6.0)


def test_no_bounds_for_other_activations_shared_outputs_or_computed_bounds():
    assert _bounds(_gemm_then([helper.make_node("Sigmoid", ["y"], ["out"])], [])) is None
    assert _bounds(_gemm_then([helper.make_node("Relu", ["y"], ["out"])], [], extra_output=True)) is None
    twice = [helper.make_node("Relu", ["y"], ["r"]), helper.make_node("Add", ["y", "r"], ["out"])]
    assert _bounds(_gemm_then(twice, [])) is None
    computed = [helper.make_node("Neg", ["y"], ["lo"]), helper.make_node("Clip", ["y", "lo"], ["out"])]
    assert _bounds(_gemm_then(computed, [])) is None


@pytest.mark.parametrize("bounds", [(0.0, math.inf), (0.0, 6.0), (-1.0, 1.0)])
def test_activation_target_bounds_the_error_after_the_activation_and_is_tight_at_the_prediction(bounds):
    rng = np.random.default_rng(0)
    y, prediction, other = (4 * rng.standard_normal(5000) for _ in range(3))
    clip = lambda v: np.clip(v, *bounds)  # noqa: E731
    target = activation.activation_target(y, prediction, bounds)
    for q in (prediction, other, y):
        assert np.all((q - target) ** 2 >= (clip(q) - clip(y)) ** 2 - 1e-12)
    passed = (y > bounds[0]) & (y < bounds[1])
    np.testing.assert_array_equal(target[passed], y[passed])
    low, high = bounds  # exact where y is clipped and the prediction is not clipped on the other side
    exact = (y <= low) & (prediction < high) | (y >= high) & (prediction > low)
    np.testing.assert_allclose((prediction - target)[exact] ** 2, (clip(prediction) - clip(y))[exact] ** 2,
                               atol=1e-12)
    assert np.count_nonzero(exact) > 1000


def _models(seed: int):
    """The reference: x (N, 6) -> Gemm 6 -> 5 -> Relu; the pruned model reads only x's first 3 columns (a Slice)
    through a Gemm 3 -> 5 that still holds the reference's weights of those columns."""
    rng = np.random.default_rng(seed)
    w, b = rng.standard_normal((5, 6)).astype(np.float32), rng.standard_normal(5).astype(np.float32) - 1.0

    def make(nodes, inits):
        graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 6])],
                                  [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], inits)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

    relu = helper.make_node("Relu", ["y"], ["out"])
    reference = make([helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="fc", transB=1), relu],
                     [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    ints = lambda name, v: numpy_helper.from_array(np.array(v, np.int64), name)  # noqa: E731
    pruned = make([helper.make_node("Slice", ["x", "s0", "s1", "ax"], ["xs"]),
                   helper.make_node("Gemm", ["xs", "w", "b"], ["y"], name="fc", transB=1), relu],
                  [numpy_helper.from_array(w[:, :3].copy(), "w"), numpy_helper.from_array(b, "b"),
                   ints("s0", [0]), ints("s1", [3]), ints("ax", [1])])
    return reference, pruned


def _after_relu_error(reference: onnx.ModelProto, model: onnx.ModelProto, x: np.ndarray) -> float:
    want = session(reference).run(["out"], {"x": x})[0]
    got = session(model).run(["out"], {"x": x})[0]
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_activation_aware_fit_reproduces_the_output_after_the_relu_better_than_the_plain_fit(seed):
    """The oracle: on the calibration data, the re-fitted layer's error after its Relu is below the plain
    least-squares fit's (which spends effort on the negative values the Relu discards)."""
    reference, pruned = _models(seed)
    x = np.random.default_rng(100 + seed).standard_normal((512, 6)).astype(np.float32)
    batches = [x[k:k + 64] for k in range(0, len(x), 64)]
    errors = {}
    for aware in (False, True):
        model = onnx.ModelProto()
        model.CopyFrom(pruned)
        report = refit(reference, model, {"fc": None}, batches, activation_aware=aware)
        assert report.layers[0].updated
        errors[aware] = _after_relu_error(reference, model, x)
    assert errors[True] < 0.99 * errors[False], errors


def test_activation_aware_reconstruction_of_a_pruned_mobilenet_with_shared_passes():
    """MobileNetV2 (ReLU6 as Clip, depthwise convs, linear bottlenecks): the option changes the Clip-read layers'
    fits, through shared passes too (sums computed ahead from the reference), and no fit ends worse than it began."""
    import copy
    import os
    import warnings

    import onnxprune as op
    from onnxprune.reconstruction import FewSamplesWarning, reconstruct_pruned
    from onnxprune.runtime import make_inputs

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures",
                        "mobilenetv2_legacy.onnx")
    model = onnx.load(path)
    calibration = [make_inputs(model, seed=s, dims={"batch": 4}) for s in range(3)]
    pruned = op.prune(model, "l2", 0.3)
    fitted = {}
    for aware in (False, True):
        result = copy.deepcopy(pruned)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FewSamplesWarning)
            report = reconstruct_pruned(model, result, calibration, activation_aware=aware)
        assert report.reference_passes >= 1
        assert all(r.error_after <= r.error_before for r in report.fitted)
        session(result.model).run(None, calibration[0])
        fitted[aware] = {t.name: numpy_helper.to_array(t) for t in result.model.graph.initializer}
    index = GraphIndex.build(pruned.model.graph)
    clipped = {n.input[1] for n in index.nodes if n.op_type == "Conv"
               and activation.activation_bounds(index, n.output[0]) is not None}
    changed = {name for name, value in fitted[True].items()
               if name in fitted[False] and not np.array_equal(value, fitted[False][name])}
    assert changed & clipped  # the Clip-read layers' fits differ (layers after them may follow)
