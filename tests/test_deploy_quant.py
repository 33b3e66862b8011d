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
    result = op.prune(original, "l2", ratio=ratio, options=op.Options(step_size=1), verify=True)
    assert result.verification.ok and result.pruned_groups
    assert op.verify(original, result.model).max_rel_error > 1e-3  # the oracle compared a real change
    assert weight_bytes(result.model) < weight_bytes(original)
    assert weight_bytes(result.model, FLOAT_TYPES) <= weight_bytes(original, FLOAT_TYPES)  # nothing folded to float
    quantized = {t.data_type for t in original.graph.initializer if t.data_type in QUANT_TYPES}
    assert quantized <= {t.data_type for t in result.model.graph.initializer}
    op.save_model(result.model, tmp_path / "pruned.onnx", reference=original)


def test_qdq_weights_are_sliced_as_integers():
    original = op.load_model(fixture("cnn_qdq_int8_per_channel"))
    result = op.prune(original, "l2", ratio=0.5, verify=True)
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
    result = op.prune(fixture("mlp_matmulnbits_4bit"), "l2", ratio=0.5, options=op.Options(step_size=1), verify=True)
    sizes = [(a.name, a.i) for n in result.model.graph.node if n.op_type == "MatMulNBits" for a in n.attribute
             if a.name in ("K", "N")]
    assert sizes == [("K", 32), ("N", 32), ("K", 32), ("N", 16), ("K", 16), ("N", 10)]


def test_mask_oracle_uses_zero_points():
    """A removed element of a uint8 activation holds its zero point: with 0 instead the oracle would fail."""
    from onnxprune.verify import channel_masks, masked_original

    original = op.load_model(fixture("cnn_qdq_uint8_per_tensor"))
    result = op.prune(original, "l2", ratio=0.5, verify=True)
    quantized = [t for t, m in channel_masks(original, result.channels).items() if m.elem_type == TensorProto.UINT8]
    assert quantized
    masked, _ = masked_original(original, channel_masks(original, result.channels))
    fills = {n.input[2] for n in masked.graph.node if n.op_type == "Where" and n.output[0] in quantized}
    assert fills and not any(f.endswith("/zero") for f in fills)
    assert np.isfinite(result.verification.max_rel_error)


def weight_only_mlp(element_type: int) -> onnx.ModelProto:
    """x -> MatMul(DequantizeLinear(W1 int)) -> Relu -> MatMul(DequantizeLinear(W2 int)): float activations, only
    the weights quantized (per output channel for int8, per tensor for int4)."""
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(0)
    low, high = (-8, 7) if element_type == TensorProto.INT4 else (-128, 127)
    nodes, inits, last = [], [], "x"
    for k, (cin, cout) in enumerate([(16, 32), (32, 8)]):
        values = rng.integers(low, high + 1, size=(cin, cout))
        weight = helper.make_tensor(f"w{k}", element_type, [cin, cout], values.flatten().tolist())
        per_channel = element_type == TensorProto.INT8
        scale = numpy_helper.from_array(rng.uniform(0.01, 0.02, cout if per_channel else ()).astype(np.float32),
                                        f"s{k}")
        inits += [weight, scale]
        nodes.append(helper.make_node("DequantizeLinear", [f"w{k}", f"s{k}"], [f"dq{k}"], name=f"dq{k}",
                                      **({"axis": 1} if per_channel else {})))
        nodes.append(helper.make_node("MatMul", [last, f"dq{k}"], [f"m{k}"], name=f"matmul{k}"))
        last = f"m{k}"
        if k == 0:
            nodes.append(helper.make_node("Relu", [last], ["r0"], name="relu0"))
            last = "r0"
    graph = helper.make_graph(nodes, "weight_only", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 16])],
                              [helper.make_tensor_value_info(last, TensorProto.FLOAT, [4, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.mark.parametrize("element_type", [TensorProto.INT8, TensorProto.INT4])
def test_weight_only_quantized_weights_stay_quantized(element_type, tmp_path):
    original = weight_only_mlp(element_type)
    result = op.prune(original, "l2", ratio=0.5, options=op.Options(step_size=1), verify=True)
    assert result.verification.ok and result.pruned_groups
    inits = {t.name: t for t in result.model.graph.initializer}
    dequantized = [(inits[n.input[0]], inits[n.input[1]]) for n in result.model.graph.node
                   if n.op_type == "DequantizeLinear"]
    assert [(w.data_type, list(w.dims)) for w, _ in dequantized] == [(element_type, [16, 16]), (element_type, [16, 8])]
    if element_type == TensorProto.INT8:
        assert list(dequantized[0][1].dims) == [16]  # the per-channel scale follows the kept output channels
    assert not any(t.data_type in FLOAT_TYPES and len(t.dims) == 2 for t in result.model.graph.initializer)
    op.save_model(result.model, tmp_path / "pruned.onnx", reference=original)
