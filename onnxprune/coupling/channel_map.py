"""The frozen result of the channel walk: which element ids sit on which tensor axes, and their units and groups.

Criteria, allocation and surgery read this map; only `coupling/` knows the walker that built it. Every array
is read-only and every mapping a `MappingProxyType`.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from onnxprune.folding import ConstantResolver
from onnxprune.graph import GraphIndex
from onnxprune.options import Options

_NO_AXES: Mapping[int, np.ndarray] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class ConstantUse:
    """A constant input of a node whose axes carry channels (sliced in surgery)."""

    axes: Mapping[int, np.ndarray]  # axis -> element ids
    roles: Mapping[int, str]  # axis -> "out" (a layer's output channels), "in", "bias" or "param"


class ShapeQueries:
    """Shape and constant queries answered by `self.resolver` (a ConstantResolver): the walker asks them while
    it walks, readers of the frozen map afterwards."""

    __slots__ = ()
    resolver: ConstantResolver

    def shape(self, tensor: str) -> tuple | None:
        return self.resolver.shape_of(tensor)

    def rank(self, tensor: str) -> int | None:
        shape = self.shape(tensor)
        return None if shape is None else len(shape)

    def dim(self, tensor: str, axis: int):
        shape = self.shape(tensor)
        if shape is None or axis >= len(shape):
            return None
        return shape[axis]

    def is_const(self, tensor: str) -> bool:
        return self.resolver.is_constant(tensor)

    def ints(self, tensor: str) -> list[int] | None:
        return self.resolver.int_list(tensor)


@dataclass(frozen=True, slots=True)
class ChannelMap(ShapeQueries):
    """Per tensor axis its element ids; per element its unit, public group and the unit's position in the group.

    A *unit* is what one pruning decision removes; its *position* is its index within its group
    (0 .. group size - 1, the positions plans and criteria speak of).
    """

    index: GraphIndex
    resolver: ConstantResolver
    options: Options
    shapes: Mapping[str, tuple]  # inferred shapes (as ir.infer_shapes_and_types gives them)
    axes: Mapping[str, Mapping[int, np.ndarray]]  # tensor -> axis -> element ids
    const_uses: Mapping[tuple[int, int], ConstantUse]  # (node index, input slot) -> sliced axes
    layer_out: Mapping[int, np.ndarray]  # layer node index -> element ids of its output channels
    # (node index, input slot) -> axis -> element ids: inputs without channels that surgery slices for that node alone
    gathered: Mapping[tuple[int, int], Mapping[int, np.ndarray]]
    unit: np.ndarray  # per element: its unit id (a root element)
    group: np.ndarray  # per element: its public group id
    position: np.ndarray  # per element: its unit's position within its group
    group_units: tuple[np.ndarray, ...]  # per public group: its unit ids, in position order

    # ---- shapes and constants ------------------------------------------------------
    def tracked(self, tensor: str) -> Mapping[int, np.ndarray]:
        """axis -> element ids of a channel-carrying tensor ({} for any other)."""
        return self.axes.get(tensor, _NO_AXES) if tensor else _NO_AXES

    def constant_source(self, tensor: str) -> str:
        """The tensor a constant input really is (through Identity nodes)."""
        return constant_source(self.index, tensor)

    # ---- units and groups ----------------------------------------------------------
    def groups_of(self, ids: np.ndarray) -> set[int]:
        """Public ids of the groups these elements belong to."""
        return set(np.unique(self.group[ids]).tolist())

    def removed_units(self, removed: Mapping[int, np.ndarray]) -> np.ndarray:
        """Per unit id: True when `removed` (group id -> removed unit positions) takes it."""
        out = np.zeros(len(self.unit), dtype=bool)
        for g, positions in removed.items():
            out[self.group_units[g][positions]] = True
        return out

    def keep_mask(self, removed: Mapping[int, np.ndarray]) -> np.ndarray:
        """Per element: True when it stays after removing `removed` (group id -> removed unit positions)."""
        return ~self.removed_units(removed)[self.unit]


def constant_source(index: GraphIndex, tensor: str) -> str:
    """The tensor a constant input really is: Identity nodes followed back to their input."""
    node = index.producer_node(tensor)
    while node is not None and node.op_type == "Identity":
        tensor = node.input[0]
        node = index.producer_node(tensor)
    return tensor


def weight_root(index: GraphIndex, tensor: str) -> tuple[str, tuple[int, ...] | None]:
    """The tensor a constant input is read from through Identity and Transpose nodes, and where each axis of the
    input sits in it (None: the same axes)."""
    perm: tuple[int, ...] | None = None
    node = index.producer_node(tensor)
    while node is not None and node.op_type in ("Identity", "Transpose") and node.domain in ("", "ai.onnx"):
        if node.op_type == "Transpose":
            listed = next((tuple(a.ints) for a in node.attribute if a.name == "perm"), None)
            if listed is None:  # no perm: the axes reversed
                return tensor, perm
            perm = listed if perm is None else tuple(listed[p] for p in perm)
        tensor = node.input[0]
        node = index.producer_node(tensor)
    return tensor, perm


def read_only(array: np.ndarray) -> np.ndarray:
    """The array, no longer writeable (in place: the walk that made it is over)."""
    array.flags.writeable = False
    return array


def frozen_axes(axes: dict[int, np.ndarray]) -> Mapping[int, np.ndarray]:
    return MappingProxyType({axis: read_only(ids) for axis, ids in axes.items()})
