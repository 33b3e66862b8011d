"""Factor chains against the reconstruction oracle: each chain equals the original op carrying the kernel it
encodes (any rank), and full-rank Tucker / SVD reproduce the original model."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnxprune.decomposition import decompose, verify_decomposition
from onnxprune.verify import verify
from test_decompose_helpers import conv_model, gemm_model, matmul_model

TOL = 1e-4

CONV_CASES = {
    "3x3 stride 1 bias": dict(kernel=(3, 3), pads=(1, 1, 1, 1)),
    "3x3 stride 2 asymmetric pads": dict(kernel=(3, 3), strides=(2, 2), pads=(0, 1, 2, 1)),
    "3x3 dilation 2 no bias": dict(kernel=(3, 3), dilations=(2, 2), pads=(2, 2, 2, 2), bias=False),
    "3x1 stride (2, 1)": dict(kernel=(3, 1), strides=(2, 1), pads=(1, 0, 0, 0)),
    "1x5 pads": dict(kernel=(1, 5), pads=(0, 2, 0, 1), bias=False),
    "3x5 stride 2 dilation 2 asymmetric": dict(kernel=(3, 5), strides=(2, 1), dilations=(2, 2), pads=(1, 0, 3, 2),
                                               hw=(13, 15)),
    "3x3 auto_pad SAME_UPPER stride 2": dict(kernel=(3, 3), strides=(2, 2), auto_pad="SAME_UPPER", relu=False),
    "conv1d k5 stride 2": dict(kernel=(5,), strides=(2,), pads=(2, 1), dilations=(1,)),
}


def _check(model, result):
    report = verify_decomposition(model, result)
    assert report.ok, str(report)
    assert result.decomposed, [layer.skipped for layer in result.layers]
    assert max(report.chains.values()) <= TOL
    onnx.checker.check_model(result.model, full_check=True)
    ort.InferenceSession(result.model.SerializeToString(), providers=["CPUExecutionProvider"])
    return report


@pytest.mark.parametrize("case", list(CONV_CASES))
@pytest.mark.parametrize("method,ranks", [("tucker", (2, 3)), ("tucker", (5, 8)), ("cp", (2,)), ("cp", (5,))])
def test_conv_chain_equals_op_with_encoded_kernel(case, method, ranks):
    model = conv_model(**CONV_CASES[case])
    result = decompose(model, method, ranks={"conv": ranks}, force=True)
    _check(model, result)
    (layer,) = result.layers
    assert layer.ranks == ranks and layer.nodes[0] == f"conv/{method}_first"
    last = next(n for n in result.model.graph.node if n.name == layer.nodes[-1])
    assert last.output[0] == "y"  # activation names kept
    assert not any(t.name == "W" for t in result.model.graph.initializer)


@pytest.mark.parametrize("case", ["3x3 stride 2 asymmetric pads", "3x5 stride 2 dilation 2 asymmetric"])
def test_full_rank_tucker_reproduces_the_original(case):
    model = conv_model(**CONV_CASES[case])
    result = decompose(model, "tucker", rank_ratio=1.0, force=True)
    report = _check(model, result)
    assert report.full_rank and report.original_error <= TOL
    assert verify(model, result.model, tol=TOL).ok


@pytest.mark.parametrize("strides,pads", [((1, 1), (0, 0, 0, 0)), ((2, 2), (1, 0, 0, 1))])
@pytest.mark.parametrize("rank", [2, 6])
def test_svd_of_1x1_conv(strides, pads, rank):
    model = conv_model(cin=12, cout=8, kernel=(1, 1), strides=strides, pads=pads)
    result = decompose(model, "svd", ranks={"conv": rank}, force=True)
    report = _check(model, result)
    assert report.full_rank == (rank == 8)
    if rank == 8:
        assert report.original_error <= TOL


@pytest.mark.parametrize("trans_a,trans_b", [(0, 0), (0, 1), (1, 1)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("rank", [3, 9])
def test_svd_of_gemm(trans_a, trans_b, bias, rank):
    model = gemm_model(trans_a=trans_a, trans_b=trans_b, alpha=0.7, beta=1.3, bias=bias)
    result = decompose(model, "FD_SVD", ranks={"fc": rank}, force=True)
    report = _check(model, result)
    if rank == 9:  # full rank min(K=12, N=9)
        assert report.full_rank and report.original_error <= TOL


@pytest.mark.parametrize("batch", [(7,), (2, 3, 4), (2, 1, 3, 5)])
@pytest.mark.parametrize("rank", [4, 10])
def test_svd_of_batched_matmul(batch, rank):
    model = matmul_model(batch=batch)
    result = decompose(model, "svd", ranks={"mm": rank}, force=True)
    report = _check(model, result)
    if rank == 10:
        assert report.original_error <= TOL


def test_constant_node_weight_is_folded():
    model = matmul_model(constant_node=True)
    result = decompose(model, "svd", ranks={"mm": 3})
    _check(model, result)
    assert not any(n.op_type == "Constant" for n in result.model.graph.node)


def test_input_untouched_and_output_deterministic():
    model = conv_model(cin=16, cout=16, hw=(8, 8), pads=(1, 1, 1, 1))
    before = model.SerializeToString()
    first = decompose(model, "cp", rank_ratio=0.5, seed=3)
    second = decompose(model, "cp", rank_ratio=0.5, seed=3)
    assert model.SerializeToString() == before
    assert first.model.SerializeToString() == second.model.SerializeToString()


def test_verify_flag_runs_the_oracle():
    model = conv_model(cin=16, cout=24, hw=(8, 8), pads=(1, 1, 1, 1))
    result = decompose(model, "tucker", rank_ratio=0.25, verify=True, rank_step=1)
    (layer,) = result.layers
    assert layer.ranks == (4, 6) and layer.macs_after < layer.macs_before and 0 < layer.rel_error < 1
    assert layer.params_before == 16 * 24 * 9 and layer.params_after == 16 * 4 + 4 * 6 * 9 + 6 * 24


MOVABLE_STRIDE_CASES = {  # (conv attributes, strides expected on the first 1x1 conv)
    "3x3 stride 2 dilation 2 pads 2": (dict(kernel=(3, 3), strides=(2, 2), dilations=(2, 2), pads=(2, 2, 2, 2)),
                                       [2, 2]),
    "3x1 stride 2: the kernel-1 axis moves": (dict(kernel=(3, 1), strides=(2, 2), pads=(1, 0, 1, 0)), [1, 2]),
    "3x3 stride 4 dilation 2 pads (2, 0, 2, 4)": (dict(kernel=(3, 3), strides=(4, 4), dilations=(2, 2),
                                                       pads=(2, 0, 2, 4)), [2, 2]),
    "3x3 stride 2 dilation 2 VALID": (dict(kernel=(3, 3), strides=(2, 2), dilations=(2, 2), auto_pad="VALID"),
                                      [2, 2]),
    "conv1d k3 stride 3 dilation 3 pads 3": (dict(kernel=(3,), strides=(3,), dilations=(3,), pads=(3, 3)), [3]),
}


@pytest.mark.parametrize("case", list(MOVABLE_STRIDE_CASES))
@pytest.mark.parametrize("hw", [(11, 9), (16, 13), (8, 8)])
@pytest.mark.parametrize("ranks", [(3, 4), (6, 10)])
def test_tucker_moves_the_stride_to_the_first_conv_where_exact(case, hw, ranks):
    attrs, first_strides = MOVABLE_STRIDE_CASES[case]
    model = conv_model(hw=hw, **attrs)
    result = decompose(model, "tucker", ranks={"conv": ranks}, force=True)
    report = _check(model, result)  # chain == op with the encoded kernel, output shapes equal
    first = next(n for n in result.model.graph.node if n.name == "conv/tucker_first")
    assert onnx.helper.get_attribute_value(next(a for a in first.attribute if a.name == "strides")) == first_strides
    if ranks == (6, 10):  # full rank: the original model itself
        assert report.original_error <= TOL and verify(model, result.model, tol=TOL).ok
    (layer,) = result.layers  # MACs count the first conv at the subsampled size
    n = len(attrs["kernel"])
    rows_first = 2 * np.prod([-(-s // g) for s, g in zip(hw[:n], first_strides)])
    out = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        ["z"], {"x": np.zeros((2, 6, *hw[:n]), np.float32)})[0]
    rows_out = int(np.prod(out.shape)) // 10
    r_in, r_out = ranks
    assert layer.macs_after == rows_first * 6 * r_in + rows_out * (r_in * r_out * np.prod(attrs["kernel"]) + r_out * 10)


@pytest.mark.parametrize("attrs", [dict(kernel=(3, 3), strides=(2, 2), pads=(1, 1, 1, 1)),  # ResNet stride 2
                                   dict(kernel=(3, 3), strides=(2, 2), dilations=(2, 2), pads=(2, 2, 1, 1)),
                                   dict(kernel=(2, 2), strides=(2, 2)),
                                   dict(kernel=(3, 1), strides=(2, 2), auto_pad="SAME_UPPER")])  # size-dependent
def test_tucker_keeps_the_stride_on_the_core_where_moving_it_is_not_exact(attrs):
    model = conv_model(hw=(12, 10), **attrs)
    result = decompose(model, "tucker", ranks={"conv": (3, 4)}, force=True)
    _check(model, result)
    first = next(n for n in result.model.graph.node if n.name == "conv/tucker_first")
    assert not any(a.name == "strides" for a in first.attribute)
