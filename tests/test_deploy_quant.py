"""Quantized graphs from onnxruntime.quantization (fixtures/deploy, made by fixtures/make_deploy_fixtures.py): pruning
passes the mask oracle (a removed quantized element holds its zero point), weights stay quantized, bytes go down."""
from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto

import onnxprune as op

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEPLOY = os.path.join(ROOT, "fixtures", "deploy")
QUANTIZED = ["cnn_qdq_int8_per_channel", "cnn_qdq_uint8_per_tensor", "cnn_qdq_int4_per_channel",
             "cnn_qoperator_int8", "cnn_dynamic_int8", "mlp_qoperator_int8", "mlp_matmulnbits_4bit"]
FLOAT_TYPES = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE)
QUANT_TYPES = (TensorProto.INT8, TensorProto.UINT8, TensorProto.INT4, TensorProto.UINT4)


def fixture(name: str) -> str:
    return os.path.join(DEPLOY, f"{name}.onnx")


def weight_bytes(model: onnx.ModelProto, types=None) -> int:
    return sum(len(t.raw_data) or t.ByteSize() for t in model.graph.initializer
               if types is None or t.data_type in types)


@pytest.mark.parametrize("ratio", [0.3, 0.5])
@pytest.mark.parametrize("name", QUANTIZED)
def test_quantized_prune_verifies_stays_quantized_and_shrinks(name, ratio, tmp_path):
    original = op.load_model(fixture(name))
    result = op.prune(original, ratio=ratio, options=op.Options(step_size=1), verify=True)
    assert result.verification.ok and result.pruned_groups
    assert op.verify(original, result.model).max_rel_error > 1e-3  # the oracle compared a real change
    assert weight_bytes(result.model) < weight_bytes(original)
    assert weight_bytes(result.model, FLOAT_TYPES) <= weight_bytes(original, FLOAT_TYPES)  # nothing folded to float
    quantized = {t.data_type for t in original.graph.initializer if t.data_type in QUANT_TYPES}
    assert quantized <= {t.data_type for t in result.model.graph.initializer}
    op.save_model(result.model, tmp_path / "pruned.onnx", reference=original)


def test_qdq_weights_are_sliced_as_integers():
    original = op.load_model(fixture("cnn_qdq_int8_per_channel"))
    result = op.prune(original, ratio=0.5, verify=True)
    inits = {t.name: t for t in result.model.graph.initializer}
    producers = {o: n for n in result.model.graph.node for o in n.output}
    convs = [n for n in result.model.graph.node if n.op_type == "Conv"]
    for conv in convs:
        dq = producers[conv.input[1]]
        assert dq.op_type == "DequantizeLinear"
        weight, scale = inits[dq.input[0]], inits[dq.input[1]]
        assert weight.data_type == TensorProto.INT8
        assert list(scale.dims) == [weight.dims[0]]  # per-channel scale sliced with the output channels


def test_matmulnbits_prunes_k_in_whole_blocks():
    analysis = op.analyze(fixture("mlp_matmulnbits_4bit"))
    hidden = [g for g in analysis.groups if g.prunable]
    assert sorted(g.size for g in hidden) == [2, 4]  # 32 and 64 channels read by a 16-wide block quantisation
    result = op.prune(fixture("mlp_matmulnbits_4bit"), ratio=0.5, options=op.Options(step_size=1), verify=True)
    sizes = [(a.name, a.i) for n in result.model.graph.node if n.op_type == "MatMulNBits" for a in n.attribute
             if a.name in ("K", "N")]
    assert sizes == [("K", 32), ("N", 32), ("K", 32), ("N", 16), ("K", 16), ("N", 10)]


def test_mask_oracle_uses_zero_points():
    """A removed element of a uint8 activation holds its zero point: with 0 instead the oracle would fail."""
    from onnxprune.verify import channel_masks, masked_original

    original = op.load_model(fixture("cnn_qdq_uint8_per_tensor"))
    result = op.prune(original, ratio=0.5, verify=True)
    quantized = [t for t, m in channel_masks(original, result.channels).items() if m.elem_type == TensorProto.UINT8]
    assert quantized
    masked, _ = masked_original(original, channel_masks(original, result.channels))
    fills = {n.input[2] for n in masked.graph.node if n.op_type == "Where" and n.output[0] in quantized}
    assert fills and not any(f.endswith("/zero") for f in fills)
    assert np.isfinite(result.verification.max_rel_error)
