"""Rank selection (explicit, rank_ratio, energy, VBMF + calibration ratio), layer eligibility and request errors."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from onnxprune.decomposition import decomposable_layers, decompose, factorize
from onnxprune.decomposition.ranks import calibrate
from onnxprune.decomposition.vbmf import vbmf_rank
from onnxprune.errors import InvalidRequestError, UnsupportedError
from test_decompose_helpers import conv_model, gemm_model, matmul_model


def _planted(rows, cols, rank, noise, seed=0):
    rng = np.random.default_rng(seed)
    signal = rng.standard_normal((rows, rank)) @ rng.standard_normal((rank, cols))
    return signal + noise * rng.standard_normal((rows, cols))


@pytest.mark.parametrize("shape,rank", [((64, 576), 10), ((128, 64), 32), ((100, 100), 5), ((40, 300), 1)])
def test_vbmf_recovers_a_planted_rank(shape, rank):
    assert vbmf_rank(_planted(*shape, rank, noise=0.05)) == rank


def test_vbmf_of_pure_noise_keeps_nothing():
    assert vbmf_rank(np.random.default_rng(1).standard_normal((64, 200))) == 0


def test_calibration_formula_matches_netspresso_example():
    assert [calibrate(32, 64, r) for r in (0.2, -0.2, 0.0, 1.0, -1.0)] == [38, 26, 32, 64, 1]
    assert calibrate(10, 64, -1.0) == 1  # 2 * 10 - 64 < 1: clipped


@pytest.mark.parametrize("ratio,expected", [(-1.0, 1), (-0.2, 26), (0.0, 32), (0.2, 38), (1.0, 64)])
def test_vbmf_ranks_with_calibration_ratio(ratio, expected):
    model = matmul_model(batch=(4,), k=64, n=96, weight=_planted(64, 96, 32, 0.01).astype(np.float32))
    result = decompose(model, "svd", recommendation="VBMF", calibration_ratio=ratio, force=True, rank_step=1)
    assert result.layers[0].ranks == (expected,) and result.layers[0].full_ranks == (64,)
    rounded = decompose(model, "svd", recommendation="VBMF", calibration_ratio=ratio, force=True)  # default step 16
    assert rounded.layers[0].ranks == (min(-(-expected // 16) * 16, 64),)


def test_vbmf_tucker_ranks_per_mode():
    rng = np.random.default_rng(0)
    core = rng.standard_normal((6, 4, 3, 3))
    kernel = np.einsum("abhw,oa,ib->oihw", core, rng.standard_normal((24, 6)), rng.standard_normal((20, 4)))
    kernel += 0.01 * rng.standard_normal(kernel.shape)
    model = conv_model(cin=20, cout=24, pads=(1, 1, 1, 1), weight=kernel.astype(np.float32))
    result = decompose(model, "tucker", recommendation="vbmf", rank_step=1)
    assert result.layers[0].ranks == (4, 6) and result.layers[0].rel_error < 0.01
    assert decompose(model, "tucker", recommendation="vbmf", rank_step=4).layers[0].ranks == (4, 8)


def test_rank_ratio_and_energy():
    model = conv_model(cin=16, cout=32, pads=(1, 1, 1, 1))
    assert decompose(model, "tucker", rank_ratio=0.25, rank_step=1).layers[0].ranks == (4, 8)
    assert decompose(model, "cp", rank_ratio=0.5, rank_step=1).layers[0].ranks == (8,)
    rng = np.random.default_rng(0)
    u, v = np.linalg.qr(rng.standard_normal((12, 4)))[0], np.linalg.qr(rng.standard_normal((10, 4)))[0]
    weight = u * [8.0, 4.0, 2.0, 1.0] @ v.T  # energies of ranks 1, 2, 3: 64/85, 80/85, 84/85
    model = matmul_model(weight=weight.astype(np.float32))
    assert [decompose(model, "svd", energy=e, force=True, rank_step=1).layers[0].ranks for e in (0.7, 0.9, 0.98)] \
        == [(1,), (2,), (3,)]


def test_explicit_ranks_only_decompose_named_layers_and_are_validated():
    model = gemm_model(k=12, n=9)
    assert decompose(model, "svd", ranks={"fc": 2}).layers[0].ranks == (2,)
    for bad in (0, 10, (2, 3), 2.5):
        with pytest.raises(InvalidRequestError, match="fc"):
            decompose(model, "svd", ranks={"fc": bad})
    with pytest.raises(InvalidRequestError, match="out of range"):
        decompose(conv_model(), "tucker", ranks={"conv": (7, 3)})  # C_in = 6
    with pytest.raises(InvalidRequestError, match="unknown layer 'nope'"):
        decompose(model, "svd", ranks={"nope": 2})


def test_rank_step_rounds_computed_ranks_up_and_keeps_explicit_ones():
    model = conv_model(cin=48, cout=64, hw=(8, 8), pads=(1, 1, 1, 1))
    # default: computed ranks rounded up to a multiple of 16, clipped to full rank (48, 64)
    assert decompose(model, "tucker", rank_ratio=0.1).layers[0].ranks == (16, 16)
    assert decompose(model, "tucker", rank_ratio=0.3).layers[0].ranks == (16, 32)  # 14, 19
    assert decompose(model, "tucker", rank_ratio=0.9, force=True).layers[0].ranks == (48, 64)  # 43 -> 48, 58 -> 64
    assert decompose(model, "cp", rank_ratio=0.3).layers[0].ranks == (16,)
    assert decompose(model, "tucker", rank_ratio=0.3, rank_step=8).layers[0].ranks == (16, 24)
    assert decompose(model, "tucker", rank_ratio=0.3, rank_step=1).layers[0].ranks == (14, 19)
    # explicit ranks are kept unless rounding is asked for
    assert decompose(model, "tucker", ranks={"conv": (5, 17)}).layers[0].ranks == (5, 17)
    assert decompose(model, "tucker", ranks={"conv": (5, 17)}, rank_step=16).layers[0].ranks == (16, 32)
    assert decompose(model, "tucker", ranks={"conv": (40, 60)}, rank_step=16, force=True).layers[0].ranks == (48, 64)
    fc = gemm_model(k=40, n=36)
    assert decompose(fc, "svd", rank_ratio=0.25, force=True).layers[0].ranks == (16,)
    assert decompose(fc, "svd", rank_ratio=0.25, rank_step=1).layers[0].ranks == (9,)


def test_rank_rounded_past_the_layers_cost_is_skipped_with_the_step_named():
    model = conv_model(cin=16, cout=16, hw=(8, 8), pads=(1, 1, 1, 1))
    layer = decompose(model, "tucker", rank_ratio=0.5).layers[0]  # (8, 8) -> full rank (16, 16): more MACs
    assert layer.ranks == (16, 16) and "rank_step=16" in layer.skipped
    assert decompose(model, "tucker", rank_ratio=0.5, rank_step=1).layers[0].decomposed


@pytest.mark.parametrize("step", [0, -16, 2.5, True, "16"])
def test_bad_rank_step(step):
    with pytest.raises(InvalidRequestError, match="rank_step"):
        decompose(gemm_model(), "svd", rank_ratio=0.5, rank_step=step)


@pytest.mark.parametrize("kwargs", [{}, {"rank_ratio": 0.5, "energy": 0.9}, {"rank_ratio": 0.0},
                                    {"rank_ratio": 1.5}, {"recommendation": "slamp"},
                                    {"recommendation": "vbmf", "calibration_ratio": 2.0},
                                    {"rank_ratio": 0.5, "calibration_ratio": 0.5}])
def test_bad_rank_requests(kwargs):
    with pytest.raises(InvalidRequestError):
        decompose(gemm_model(), "svd", **kwargs)


def test_method_aliases_and_unknown_method():
    model = conv_model(cin=16, cout=16, pads=(1, 1, 1, 1))
    assert decompose(model, "fd_tk", rank_ratio=0.25).method == "tucker"
    assert decompose(model, "FD_CP", rank_ratio=0.25).method == "cp"
    with pytest.raises(InvalidRequestError, match="unknown decomposition method"):
        decompose(model, "qr", rank_ratio=0.5)


@pytest.mark.parametrize("kwargs,reason", [
    (dict(cin=8, cout=8, group=2), "grouped convolution"),
    (dict(cin=8, cout=8, group=8), "depthwise convolution"),
    (dict(cin=8, cout=6, op="ConvTranspose"), "ConvTranspose"),
])
def test_layers_that_cannot_be_decomposed_are_listed_with_a_reason(kwargs, reason):
    model = conv_model(pads=(1, 1, 1, 1), **kwargs)
    (layer,) = decomposable_layers(model)
    assert not layer.decomposable and reason in layer.reason
    with pytest.raises(UnsupportedError, match=reason):
        decompose(model, "tucker", ranks={"conv": (1, 1)})
    assert decompose(model, "tucker", rank_ratio=0.5).layers[0].skipped  # listed, not decomposed


def test_too_small_and_method_specific_reasons():
    (tiny,) = decomposable_layers(gemm_model(k=2, n=2))
    assert not tiny.decomposable and "too small to gain" in tiny.reason
    (conv,) = decomposable_layers(conv_model())
    assert conv.full_ranks == {"tucker": (6, 10), "cp": (6,)} and "svd" in conv.reasons
    (pointwise,) = decomposable_layers(conv_model(kernel=(1, 1)))
    assert pointwise.methods == ("svd",) and "use method 'svd'" in pointwise.reasons["tucker"]


def test_chain_costing_more_macs_is_skipped_unless_forced():
    model = conv_model(cin=8, cout=8, pads=(1, 1, 1, 1))
    skipped = decompose(model, "tucker", rank_ratio=1.0).layers[0]
    assert skipped.skipped and "force" in skipped.skipped and skipped.macs_after > skipped.macs_before
    assert decompose(model, "tucker", rank_ratio=1.0, force=True).layers[0].decomposed


def test_degenerate_cp_fit_leaves_the_layer(monkeypatch):
    def cancelling(core, rank, **_):
        factors = [np.ones((dim, rank)) / np.sqrt(dim) for dim in core.shape]
        return np.array([1e6, -1e6] + [0.0] * (rank - 2)), factors

    monkeypatch.setattr(factorize, "parafac", cancelling)
    model = conv_model(cin=8, cout=8, pads=(1, 1, 1, 1))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = decompose(model, "cp", ranks={"conv": 4})
    assert "degenerated" in result.layers[0].skipped and caught
    assert [n.op_type for n in result.model.graph.node] == ["Conv", "Relu"]
