"""Weight parameters and multiply-accumulates of a layer and of the chains that can replace it."""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Geometry:
    """Sizes a cost depends on. Conv: channels, kernel, spatial sizes (batch counted in `batch`);
    Gemm / MatMul: c_in = K, c_out = N, batch = rows of the activation, no kernel or spatial axes.
    Unknown dims are estimated: batch 1, a missing spatial size from the other side and the stride."""

    c_in: int
    c_out: int
    kernel: tuple[int, ...] = ()
    batch: int = 1
    in_spatial: tuple[int, ...] = ()
    out_spatial: tuple[int, ...] = ()
    first_strides: tuple[int, ...] = ()  # stride a Tucker chain's first 1x1 conv takes exactly (movable_strides)

    @classmethod
    def for_conv(cls, c_in, c_out, kernel, strides, in_shape, out_shape, first_strides=()) -> Geometry:
        """From the (possibly partly unknown) input and output shapes (N, C, *spatial) of a Conv."""
        n = len(kernel)
        ins = list(in_shape[2:]) if in_shape is not None and len(in_shape) == n + 2 else [None] * n
        outs = list(out_shape[2:]) if out_shape is not None and len(out_shape) == n + 2 else [None] * n
        for j, stride in enumerate(strides):
            if outs[j] is None:
                outs[j] = max(1, math.ceil(ins[j] / stride)) if ins[j] is not None else 1
            if ins[j] is None:
                ins[j] = outs[j] * stride
        batch = next((s[0] for s in (in_shape, out_shape) if s is not None and s and s[0] is not None), None)
        return cls(c_in, c_out, tuple(kernel), batch or 1, tuple(ins), tuple(outs), tuple(first_strides))

    @classmethod
    def for_matrix(cls, k: int, n: int, rows: int | None) -> Geometry:
        return cls(k, n, batch=rows or 1)

    @property
    def rows_in(self) -> int:
        return self.batch * math.prod(self.in_spatial)

    @property
    def rows_out(self) -> int:
        return self.batch * math.prod(self.out_spatial)

    @property
    def rows_first(self) -> int:
        """Rows of a Tucker chain's first conv: the input, subsampled by `first_strides` when it has them."""
        if not self.first_strides:
            return self.rows_in
        return self.batch * math.prod(-(-i // g) for i, g in zip(self.in_spatial, self.first_strides))


def movable_strides(kernel, strides, pads, dilations, auto_pad="NOTSET") -> tuple[int, ...]:
    """Per spatial axis, the largest factor g of a Conv's stride that a pointwise (1x1, no bias) conv before it
    can take exactly: 1x1 with stride g, then the conv with stride s/g, dilation d/g, pads p/g.

    Proof: the conv reads its input h at s*o + d*k - p_begin for taps k. When g divides s, d (or the kernel is
    1 along the axis, k = 0 only) and p_begin, every index read is g*j with j = (s/g)*o + (d/g)*k - p_begin/g,
    so only h[g*j] = (h subsampled by g)[j] is ever read, and j < 0 or g*j >= I (zero padding in the original)
    is j < 0 or j >= ceil(I/g) (zero padding after subsampling). When g also divides p_end, the output sizes
    agree for every input size I: floor((I - 1 + p_end) / g) = floor((I - 1) / g) + p_end / g. The first conv
    has no bias, so zero padding commutes with it. Only explicit pads (NOTSET) and VALID qualify: SAME_* pads
    depend on the input size. All ones when nothing can move."""
    n = len(kernel)
    if auto_pad not in ("NOTSET", b"NOTSET", "VALID", b"VALID", "", b""):
        return (1,) * n
    pads = list(pads) if pads and auto_pad in ("NOTSET", b"NOTSET", "", b"") else [0] * (2 * n)
    dilations = list(dilations) if dilations else [1] * n
    out = []
    for j in range(n):
        g = math.gcd(strides[j], pads[j], pads[j + n])
        if kernel[j] > 1:
            g = math.gcd(g, dilations[j])
        out.append(g)
    return tuple(out)


def layer_cost(g: Geometry) -> tuple[int, int]:
    """(weight parameters, MACs) of the original layer."""
    params = g.c_in * g.c_out * math.prod(g.kernel)
    return params, params * g.rows_out


def chain_cost(g: Geometry, method: str, ranks: tuple[int, ...]) -> tuple[int, int]:
    """(weight parameters, MACs) of the factor chain at these ranks."""
    if method == "tucker":
        r_in, r_out = ranks
        core = r_in * r_out * math.prod(g.kernel)
        params = g.c_in * r_in + core + r_out * g.c_out
        return params, g.rows_first * g.c_in * r_in + g.rows_out * (core + r_out * g.c_out)
    (rank,) = ranks
    if method == "svd":  # the first factor carries the stride
        params = rank * (g.c_in + g.c_out)
        return params, params * g.rows_out
    params = rank * (g.c_in + sum(g.kernel) + g.c_out)
    macs = g.rows_in * g.c_in * rank + g.rows_out * rank * g.c_out
    for j, k in enumerate(g.kernel):  # depthwise along axis j: axes <= j already at output size
        rows = g.batch * math.prod(g.out_spatial[: j + 1]) * math.prod(g.in_spatial[j + 1 :])
        macs += rows * rank * k
    return params, macs
