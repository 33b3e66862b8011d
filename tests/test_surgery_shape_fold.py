"""A Shape that reads a sliced weight (the dynamo exporter sizes a Conv's bias from its weight's shape) becomes a
Constant of the shape it read, so the unsliced weight is not kept beside its slice for it alone."""
from __future__ import annotations

import os

import onnx

import onnxprune as op

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures")


def test_shape_of_a_sliced_weight_is_folded_and_the_weight_not_kept_twice():
    path = os.path.join(FIXTURES, "resnet_bn_dynamo.onnx")
    original = onnx.load(path)
    weights = {t.name for t in original.graph.initializer}
    shape_reads = {n.input[0] for n in original.graph.node if n.op_type == "Shape" and n.input[0] in weights}
    assert shape_reads, "the fixture should read a weight's shape"
    result = op.prune(path, "l2", 0.3, scope="global", verify=True,
                      options=op.Options(layer_norm="linear_scaling", score_consumers=True))
    assert result.verification.ok
    assert result.summary.after.params < result.summary.before.params  # was 11575 > 11363 before the fold
    names = {t.name for t in result.model.graph.initializer}
    assert not any(f"{w}_pruned" in names and w in names for w in shape_reads)
    onnx.checker.check_model(result.model, full_check=True)
