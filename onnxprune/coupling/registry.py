"""One entry per op family: how channels couple through the op, and how surgery rewrites the op.

`couple(walker, i, node)` runs in the analysis walk (coupling/walker.py); `rewrite(ctx, i, node, nodes)`
runs in pruning surgery on a copy of node i whose channels shrank, with `ctx` the surgery's view below.
Adding an op means one `@rule(...)` entry in a rules_*.py module; ops of another domain (com.microsoft) name it:
`@rule("Attention", domain="com.microsoft")`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np
import onnx


class RewriteContext(Protocol):
    """What a rewrite may read and do during surgery (implemented by onnxprune.surgery.prune)."""

    kept: dict[str, dict[int, np.ndarray]]  # tensor -> axis -> kept positions (changed axes only)
    sliced_in_place: dict[str, dict[int, np.ndarray]]  # constants sliced under their own name
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

    def value(self, tensor: str) -> np.ndarray | None: ...  # a constant's original value

    def const_kept(self, i: int, slot: int) -> dict[int, np.ndarray]: ...  # axis -> kept positions of a constant input


Couple = Callable[..., None]  # (Walker, node index, node)
Rewrite = Callable[[RewriteContext, int, onnx.NodeProto, list], None]


@dataclass(frozen=True)
class OpRule:
    couple: Couple
    rewrite: Rewrite | None = None  # None: the op has no parameter that depends on channel counts
    source: bool = False  # the op makes channels from its constant weights (walked even when no input is tracked)


RULES: dict[str, OpRule] = {}  # ops of the default (ai.onnx) domain
DOMAIN_RULES: dict[tuple[str, str], OpRule] = {}  # (domain, op type) -> rule, for every other domain


def rule(*op_types: str, rewrite: Rewrite | None = None, domain: str = "",
         source: bool = False) -> Callable[[Couple], Couple]:
    """Register a channel rule (and the surgery rewrite, if any) for these op types of `domain`."""

    def register(fn: Couple) -> Couple:
        for op in op_types:
            entry = OpRule(fn, rewrite, source)
            if domain in ("", "ai.onnx"):
                RULES[op] = entry
            else:
                DOMAIN_RULES[(domain, op)] = entry
        return fn

    return register


def rule_for(node: onnx.NodeProto) -> OpRule | None:
    """The rule of a node's op in its domain (None: no rule; the op blocks the channels flowing into it)."""
    if node.domain in ("", "ai.onnx"):
        return RULES.get(node.op_type)
    return DOMAIN_RULES.get((node.domain, node.op_type))


def set_attribute(node: onnx.NodeProto, attr: onnx.AttributeProto) -> None:
    """Replace the node's attribute of that name, or add it."""
    for k, existing in enumerate(node.attribute):
        if existing.name == attr.name:
            node.attribute[k].CopyFrom(attr)
            return
    node.attribute.append(attr)
