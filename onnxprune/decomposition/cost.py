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

    @classmethod
    def for_conv(cls, c_in, c_out, kernel, strides, in_shape, out_shape) -> Geometry:
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
        return cls(c_in, c_out, tuple(kernel), batch or 1, tuple(ins), tuple(outs))

    @classmethod
    def for_matrix(cls, k: int, n: int, rows: int | None) -> Geometry:
        return cls(k, n, batch=rows or 1)

    @property
    def rows_in(self) -> int:
        return self.batch * math.prod(self.in_spatial)

    @property
    def rows_out(self) -> int:
        return self.batch * math.prod(self.out_spatial)


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
        return params, g.rows_in * g.c_in * r_in + g.rows_out * (core + r_out * g.c_out)
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
