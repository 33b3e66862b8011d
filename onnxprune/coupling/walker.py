"""The walk over the graph: applies one rule per node, in topological order.

Rules see the node through `Walker`, which knows shapes, constants, the element ids of
every tracked (tensor, axis), and which constant inputs get sliced along which axes.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from onnxprune.folding import ConstantResolver
from onnxprune.coupling.channel_map import ShapeQueries, weight_root
from onnxprune.coupling.registry import rule_for
from onnxprune.coupling.tracker import ChannelTracker
from onnxprune.graph import GraphIndex
from onnxprune.layout import layer_problem
from onnxprune.surgery.slicing import can_slice


@dataclass
class ConstUse:
    """A constant input of a node whose axes carry channels: sliced in surgery."""

    axes: dict[int, np.ndarray] = field(default_factory=dict)
    roles: dict[int, str] = field(default_factory=dict)  # "out" (a layer's output channels), "in", "param"


class Walker(ShapeQueries):
    def __init__(self, model: onnx.ModelProto, index: GraphIndex, resolver: ConstantResolver,
                 shapes: dict[str, tuple], options) -> None:
        self.model = model
        self.index = index
        self.resolver = resolver
        self.shapes = shapes
        self.options = options
        self.tracker = ChannelTracker()
        self.axes: dict[str, dict[int, np.ndarray]] = {}
        self.const_uses: dict[tuple[int, int], ConstUse] = {}
        self._graph_outputs = set(index.graph_outputs)
        self.layer_out: dict[int, np.ndarray] = {}  # layer node -> element ids of its output channels
        self.gathered: dict[tuple[int, int], dict[int, np.ndarray]] = {}  # (node, slot) -> axis -> element ids
        self.tied: dict[str, list[str]] = {}  # a layer weight read by several layers -> those layers' nodes

    # ---- queries -------------------------------------------------------------------
    def tracked(self, tensor: str) -> dict[int, np.ndarray]:
        return self.axes.get(tensor, {}) if tensor else {}

    def observed_shape(self, tensor: str) -> tuple | None:
        """Concrete shape the tensor has when the model runs on generated inputs (symbolic dims at their
        generated sizes: shapes.example_shape), worked out without running it.

        Used where symbolic dims (batch, '4*batch') hide how a Reshape maps channels.
        """
        from onnxprune.shapes import example_shape

        return example_shape(self.model, self.shapes.get(tensor))

    def used(self, tensor: str) -> bool:
        """True when a node (or subgraph) reads the tensor or it is a graph output."""
        return bool(tensor) and (tensor in self.index.consumers or tensor in self._graph_outputs)

    def where(self, i: int, node: onnx.NodeProto) -> str:
        return f"node '{self.index.names[i]}' ({node.op_type})"

    def layer_problem(self, node: onnx.NodeProto) -> str | None:
        """Why a layer's attributes do not fit its constant weight (layout.layer_problem), None when they do."""
        if node.op_type not in ("Conv", "ConvTranspose", "Gemm") or len(node.input) < 2:
            return None
        weight = self.shape(node.input[1])
        if weight is None or not self.is_const(node.input[1]):
            return None
        return layer_problem(node, weight, self.shape(node.input[0]))

    # ---- updates -------------------------------------------------------------------
    def set_axes(self, tensor: str, axes: dict[int, np.ndarray]) -> None:
        if tensor and axes:
            self.axes[tensor] = dict(axes)

    def new_channels(self, n: int, node: int) -> np.ndarray:
        return self.tracker.new_segment(n, node)

    def fixed_channels(self, n: int, node: int, reason: str) -> np.ndarray:
        ids = self.tracker.new_segment(n, node, kind="fixed")
        self.tracker.block(ids, reason)
        return ids

    def use_const(self, i: int, slot: int, axis: int, ids: np.ndarray, role: str = "param") -> None:
        use = self.const_uses.setdefault((i, slot), ConstUse())
        use.axes[axis] = ids
        use.roles[axis] = role

    def gather_input(self, i: int, slot: int, axis: int, ids: np.ndarray) -> None:
        """Input `slot` of node i carries no channels but meets channels `ids` on `axis` (a RoPE cos/sin table, a
        position table, a mask computed from the inputs): surgery slices it for this reader alone (a Gather), so its
        other readers stay free."""
        self.gathered.setdefault((i, slot), {})[axis] = ids

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        self.tracker.union(a, b)

    def block(self, ids: np.ndarray, reason: str) -> None:
        self.tracker.block(ids, reason)

    def block_tensor(self, tensor: str, reason: str) -> None:
        for ids in self.tracked(tensor).values():
            self.tracker.block(ids, reason)

    def block_inputs(self, i: int, node: onnx.NodeProto, why: str) -> None:
        reason = f"{self.where(i, node)}: {why}"
        for tensor in node.input:
            self.block_tensor(tensor, reason)

    def inexact(self, ids: np.ndarray, reason: str) -> None:
        self.tracker.mark_inexact(ids, reason)

    # ---- the walk ------------------------------------------------------------------
    def run(self) -> None:
        outer_captures = _subgraph_captures(self.index)
        for i, node in enumerate(self.index.nodes):
            entry = rule_for(node)
            default = node.domain in ("", "ai.onnx")
            source = (default and node.op_type in _SOURCE_OPS) or (entry is not None and entry.source)
            if not any(self.tracked(t) for t in node.input) and not source:
                continue  # nothing carries channels into this node: no rule needed
            if entry is None:
                domain = "" if default else f" of domain '{node.domain}'"
                self.block_inputs(i, node, f"no channel rule for this op{domain}; channels flowing into it cannot be "
                                  "pruned (prune other layers, or ask for a rule)")
                continue
            problem = self.layer_problem(node)
            if problem is not None:
                self.block_inputs(i, node, f"{problem}; fix the node's attributes to prune through it")
                continue
            try:
                entry.couple(self, i, node)
            except (KeyError, IndexError, ValueError, TypeError, AttributeError, ZeroDivisionError) as exc:
                self.block_inputs(i, node, f"channel rule could not map this node ({type(exc).__name__}: {exc})")
                for tensor in node.output:
                    self.axes.pop(tensor, None)
        self._tie_shared_constants()
        self._block_unsliceable_constants()
        for tensor in outer_captures:
            self.block_tensor(tensor, f"tensor '{tensor}' is read inside a subgraph (If/Loop/Scan body)")
        for tensor in self.index.graph_outputs:
            self.block_tensor(tensor, f"tensor '{tensor}' is a graph output; its shape must not change")

    def _block_unsliceable_constants(self) -> None:
        """A weight computed by a node surgery cannot evaluate (If, Loop, an op without a folding) stays whole."""
        for (i, slot), use in self.const_uses.items():
            node = self.index.nodes[i]
            name = node.input[slot]
            if not can_slice(self.index, self.resolver, name):
                producer = self.index.producer_node(name)
                made = f" (made by {producer.op_type} node '{producer.name}')" if producer is not None else ""
                for ids in use.axes.values():
                    self.block(ids, f"{self.where(i, node)}: weight '{name}'{made} cannot be evaluated to slice "
                                    "it; fold it into an initializer to prune this layer")

    def _tie_shared_constants(self) -> None:
        """A layer weight read by several nodes (a layer applied twice, tied embeddings read through a Transpose)
        loses the same slices everywhere: it stays shared (recorded in `tied`). A shared constant that no node reads
        as a layer weight (biases, norm scales, per-channel constants an exporter de-duplicated because their values
        are equal) ties nothing: each reader keeps its own channels and surgery slices a copy per distinct slicing."""
        by_root: dict[str, list[tuple[int, ConstUse, tuple[int, ...] | None]]] = {}
        for (i, slot), use in self.const_uses.items():
            root, perm = weight_root(self.index, self.index.nodes[i].input[slot])
            by_root.setdefault(root, []).append((i, use, perm))
        for root, uses in by_root.items():
            if len(uses) < 2 or not any(role in LAYER_ROLES for _, use, _ in uses for role in use.roles.values()):
                continue
            self.tied[root] = sorted({self.index.names[i] for i, _, _ in uses})
            on_root: dict[int, list[np.ndarray]] = {}
            for _, use, perm in uses:
                for axis, ids in use.axes.items():
                    on_root.setdefault(axis if perm is None else perm[axis], []).append(ids)
            for arrays in on_root.values():
                if len(arrays) == len(uses) and all(len(a) == len(arrays[0]) for a in arrays):
                    for other in arrays[1:]:
                        self.union(arrays[0], other)


LAYER_ROLES = ("out", "in")  # the roles of a layer's weight (a "bias" or "param" is not one)
_SOURCE_OPS = {"Gather", "MatMul", "Gemm", "Conv", "ConvTranspose"}  # ops that can create channels from constants


def _subgraph_captures(index: GraphIndex) -> list[str]:
    return [t for t, uses in index.consumers.items() if any(slot == -1 for _, slot in uses)]
