"""One entry per op family: how channels couple through the op, and how surgery rewrites the op.

`couple(walker, i, node)` runs in the analysis walk (coupling/walker.py); `rewrite(ctx, i, node, nodes)`
runs in pruning surgery on a copy of node i whose channels shrank, with `ctx` the surgery's view below.
Adding an op means one `@rule(...)` entry in a rules_*.py module.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np
import onnx


class RewriteContext(Protocol):
    """What a rewrite may read and do during surgery (implemented by onnxprune.surgery.prune)."""

    kept: dict[str, dict[int, np.ndarray]]  # tensor -> axis -> kept positions (changed axes only)
    sliced_in_place: dict[str, dict[int, np.ndarray]]  # initializers sliced under their own name
    opset: int

    def shape(self, tensor: str) -> tuple | None: ...  # the original shape

    def ints(self, tensor: str) -> list[int] | None: ...  # a constant int vector's value

    def new_dim(self, tensor: str, axis: int): ...

    def new_shape(self, tensor: str) -> list: ...

    def original(self, i: int) -> onnx.NodeProto: ...  # node i as analysed (before input renames)

    def fresh(self, base: str) -> str: ...  # a new unique name

    def add_initializer(self, base: str, array: np.ndarray) -> str: ...  # a new initializer; returns its name

    def set_int_input(self, node: onnx.NodeProto, slot: int, positions: dict[int, int],
                      nodes: list[onnx.NodeProto]) -> None: ...

    def place_after(self, i: int, nodes: list[onnx.NodeProto]) -> None: ...  # nodes right after node i


Couple = Callable[..., None]  # (Walker, node index, node)
Rewrite = Callable[[RewriteContext, int, onnx.NodeProto, list], None]


@dataclass(frozen=True)
class OpRule:
    couple: Couple
    rewrite: Rewrite | None = None  # None: the op has no parameter that depends on channel counts


RULES: dict[str, OpRule] = {}


def rule(*op_types: str, rewrite: Rewrite | None = None) -> Callable[[Couple], Couple]:
    """Register a channel rule (and the surgery rewrite, if any) for these op types (default domain)."""

    def register(fn: Couple) -> Couple:
        for op in op_types:
            RULES[op] = OpRule(fn, rewrite)
        return fn

    return register


def set_attribute(node: onnx.NodeProto, attr: onnx.AttributeProto) -> None:
    """Replace the node's attribute of that name, or add it."""
    for k, existing in enumerate(node.attribute):
        if existing.name == attr.name:
            node.attribute[k].CopyFrom(attr)
            return
    node.attribute.append(attr)
