"""`analyze()`: channel groups and prunable layers of a model, without changing it."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from onnxprune import ir
from onnxprune.constants import ConstantResolver
from onnxprune.coupling.tracker import Resolution
from onnxprune.coupling.walker import Walker
from onnxprune.graph import GraphIndex
from onnxprune.layout import weight_layout
from onnxprune.options import Options

LAYER_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "Gather")


@dataclass
class Member:
    """One tensor axis that carries channels of a group."""

    tensor: str
    axis: int
    kind: str  # "activation" or "weight"
    node: str | None = None  # for weights: the node that reads them
    role: str | None = None  # for weights: "out", "in", "bias" or "param"
    size: int = 0  # how many positions of that axis belong to the group


@dataclass
class ChannelGroup:
    id: int
    size: int  # number of independently removable channels (units)
    members: list[Member]
    exact: bool
    prunable: bool
    reason: str | None
    layers: list[str] = field(default_factory=list)


@dataclass
class Layer:
    name: str
    op_type: str
    in_channels: int | None
    out_channels: int | None
    group: int | None


@dataclass
class Analysis:
    """The result of analyze(): public `groups` and `layers`, plus what surgery needs."""

    model: onnx.ModelProto
    groups: list[ChannelGroup]
    layers: list[Layer]
    walker: Walker
    resolution: Resolution
    group_units: list[np.ndarray]  # per group id: its unit ids (root elements), in channel order
    group_of_internal: dict[int, int]  # internal group id -> public id

    @property
    def index(self) -> GraphIndex:
        return self.walker.index

    def layer(self, name: str) -> Layer | None:
        return next((layer for layer in self.layers if layer.name == name), None)

    def layer_output_ids(self, name: str) -> np.ndarray | None:
        """Element ids of a layer's output channels (positions = the layer's output channel indices)."""
        i = self.index.by_name.get(name)
        return None if i is None else self.walker.layer_out.get(i)

    def unit_positions(self, group: int) -> dict[int, int]:
        """unit id -> its index within the group."""
        return {int(u): k for k, u in enumerate(self.group_units[group])}

    def summary(self) -> str:
        prunable = sum(g.prunable for g in self.groups)
        return f"{len(self.layers)} layers, {len(self.groups)} channel groups ({prunable} prunable)"


def analyze(model, options: Options | None = None) -> Analysis:
    """Channel-coupling analysis of `model` (a ModelProto or a path); the model is not changed."""
    model = ir.load_model(model)
    options = options or Options()
    index = GraphIndex.build(model.graph)
    shapes, types = ir.infer_shapes_and_types(model)
    resolver = ConstantResolver(index, shapes, ir.base_dir(model), _default_opset(model), types)
    walker = Walker(model, index, resolver, shapes, options)
    walker.run()
    resolution = walker.tracker.resolve()
    return _build(model, walker, resolution)


def _default_opset(model: onnx.ModelProto) -> int:
    """The ai.onnx opset; a model of other domains only (ai.onnx.ml, training) has no ai.onnx node to
    interpret, and one that does use ai.onnx ops without importing them fails the checker."""
    if any(node.domain in ("", "ai.onnx") for node in model.graph.node):
        return ir.opset_version(model)
    return ir.opset_version(model, default=onnx.defs.onnx_opset_version())


def _build(model: onnx.ModelProto, walker: Walker, res: Resolution) -> Analysis:
    units = np.unique(res.unit)
    unit_group = res.group[units] if len(units) else np.zeros(0, dtype=np.int64)
    order = np.lexsort((units, unit_group))
    units, unit_group = units[order], unit_group[order]
    internal_ids, starts = np.unique(unit_group, return_index=True)
    bounds = list(starts[1:]) + [len(units)]
    public = {int(g): k for k, g in enumerate(internal_ids)}
    group_units = [units[s:e] for s, e in zip(starts, bounds)]
    members: list[list[Member]] = [[] for _ in internal_ids]

    def add_members(ids: np.ndarray, make) -> None:
        groups, counts = np.unique(res.group[ids], return_counts=True)
        for g, c in zip(groups.tolist(), counts.tolist()):
            members[public[g]].append(make(int(c)))

    for tensor, axes in walker.axes.items():
        for axis, ids in axes.items():
            add_members(ids, lambda c, t=tensor, a=axis: Member(t, a, "activation", size=c))
    for (i, slot), use in walker.const_uses.items():
        node = walker.index.nodes[i]
        for axis, ids in use.axes.items():
            add_members(ids, lambda c, n=node, s=slot, a=axis, r=use.roles[axis]:
                        Member(n.input[s], a, "weight", node=walker.index.names[i], role=r, size=c))
    layers = _layers(walker, res, public)
    groups = []
    for k, g in enumerate(internal_ids.tolist()):
        size = len(group_units[k])
        blocked = res.blocked.get(g)
        inexact = res.inexact.get(g)
        reason = blocked or (f"only {size} channel" if size < 2 else None) or inexact
        groups.append(ChannelGroup(
            id=k, size=size, members=members[k], exact=inexact is None,
            prunable=blocked is None and size >= 2, reason=reason,
            layers=[layer.name for layer in layers if layer.group == k],
        ))
    return Analysis(model=model, groups=groups, layers=layers, walker=walker, resolution=res,
                    group_units=group_units, group_of_internal=public)


def _layers(walker: Walker, res: Resolution, public: dict[int, int]) -> list[Layer]:
    layers = []
    out_ids = walker.layer_out
    for i, node in enumerate(walker.index.nodes):
        if node.op_type not in LAYER_OPS or i not in out_ids:
            continue
        ids = out_ids[i]
        group = public.get(int(res.group[ids[0]])) if len(ids) else None
        cin, cout = _channel_counts(walker, node)
        layers.append(Layer(walker.index.names[i], node.op_type, cin, cout, group))
    return layers


def _channel_counts(walker: Walker, node: onnx.NodeProto) -> tuple[int | None, int | None]:
    left = node.op_type == "Gather" or (node.op_type == "MatMul" and not walker.is_const(node.input[1]))
    slot = 0 if left else 1
    shape = walker.shape(node.input[slot])
    lay = weight_layout(node, len(shape), slot)
    if lay is None:
        return None, None
    return lay.in_channels(shape), lay.out_channels(shape)
