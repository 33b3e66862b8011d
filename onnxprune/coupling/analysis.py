"""`analyze()`: channel groups and prunable layers of a model, without changing it."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np
import onnx

from onnxprune import ir
from onnxprune.folding import ConstantResolver
from onnxprune.coupling.channel_map import ChannelMap, ConstantUse, frozen_axes, read_only
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


@dataclass(frozen=True, eq=False)
class Analysis:
    """The result of analyze(): public `groups` and `layers`, and the frozen channel map surgery reads."""

    model: onnx.ModelProto
    groups: list[ChannelGroup]
    layers: list[Layer]
    channels: ChannelMap
    # layer weights read by several layers (tied embeddings, a layer applied twice): weight -> the reading nodes;
    # they lose the same channels everywhere
    tied: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    by_name: Mapping[str, Layer] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        by_name: dict[str, Layer] = {}
        for layer in self.layers:
            by_name.setdefault(layer.name, layer)
        object.__setattr__(self, "by_name", MappingProxyType(by_name))

    @property
    def index(self) -> GraphIndex:
        return self.channels.index

    def layer(self, name: str) -> Layer | None:
        return self.by_name.get(name)

    def layer_output_ids(self, name: str) -> np.ndarray | None:
        """Element ids of a layer's output channels (positions = the layer's output channel indices)."""
        i = self.index.by_name.get(name)
        return None if i is None else self.channels.layer_out.get(i)

    def unit_positions(self, group: int) -> dict[int, int]:
        """unit id -> its index within the group."""
        return {int(u): k for k, u in enumerate(self.channels.group_units[group])}

    def summary(self) -> str:
        prunable = sum(g.prunable for g in self.groups)
        return f"{len(self.layers)} layers, {len(self.groups)} channel groups ({prunable} prunable)"


def analyze(model, options: Options | None = None, *, weights: dict[str, np.ndarray] | None = None) -> Analysis:
    """Channel-coupling analysis of `model` (a ModelProto or a path); the model is not changed.

    weights: initializer values known already (ir.load_with_weights(...)[1].arrays, for the model it loaded);
    a path is loaded here with its weights read as views of the file."""
    if weights is None:
        model, loaded = ir.load_with_weights(model)
        weights = loaded.arrays
    else:
        model = ir.load_model(model)
    options = options or Options()
    index = GraphIndex.build(model.graph)
    shapes, types = ir.infer_shapes_and_types(model)
    resolver = ConstantResolver(index, shapes, ir.base_dir(model), _default_opset(model), types, weights)
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
    channels, internal_ids = _channel_map(walker, res)
    members = _members(channels, len(internal_ids))
    layers = _layers(channels)
    groups = []
    for k, g in enumerate(internal_ids.tolist()):
        size = len(channels.group_units[k])
        blocked = res.blocked.get(g)
        inexact = res.inexact.get(g)
        reason = blocked or (f"only {size} channel" if size < 2 else None) or inexact
        groups.append(ChannelGroup(
            id=k, size=size, members=members[k], exact=inexact is None,
            prunable=blocked is None and size >= 2, reason=reason,
            layers=[layer.name for layer in layers if layer.group == k],
        ))
    tied = MappingProxyType({weight: tuple(nodes) for weight, nodes in walker.tied.items()})
    return Analysis(model=model, groups=groups, layers=layers, channels=channels, tied=tied)


def _channel_map(walker: Walker, res: Resolution) -> tuple[ChannelMap, np.ndarray]:
    """The walk frozen, and the internal group id of each public group (public ids follow internal order)."""
    units = np.unique(res.unit)
    unit_group = res.group[units] if len(units) else np.zeros(0, dtype=np.int64)
    order = np.lexsort((units, unit_group))
    units, unit_group = units[order], unit_group[order]
    internal_ids, starts = np.unique(unit_group, return_index=True)
    sizes = np.diff(np.append(starts, len(units)))
    public = np.full(int(internal_ids.max(initial=-1)) + 1, -1, dtype=np.int64)
    public[internal_ids] = np.arange(len(internal_ids))
    unit_position = np.zeros(len(res.unit), dtype=np.int64)
    unit_position[units] = np.arange(len(units)) - np.repeat(starts, sizes)
    channels = ChannelMap(
        index=walker.index, resolver=walker.resolver, options=walker.options,
        shapes=MappingProxyType(walker.shapes),
        axes=MappingProxyType({t: frozen_axes(axes) for t, axes in walker.axes.items()}),
        const_uses=MappingProxyType({key: ConstantUse(frozen_axes(use.axes), MappingProxyType(dict(use.roles)))
                                     for key, use in walker.const_uses.items()}),
        layer_out=MappingProxyType({i: read_only(ids) for i, ids in walker.layer_out.items()}),
        gathered=MappingProxyType({key: frozen_axes(axes) for key, axes in walker.gathered.items()}),
        unit=read_only(res.unit), group=read_only(public[res.group]), position=read_only(unit_position[res.unit]),
        group_units=tuple(read_only(units[s:s + n]) for s, n in zip(starts, sizes)))
    return channels, internal_ids


def _members(channels: ChannelMap, n_groups: int) -> list[list[Member]]:
    """Per public group: the tensor axes (activations, then weights) that carry its channels."""
    members: list[list[Member]] = [[] for _ in range(n_groups)]

    def add_members(ids: np.ndarray, make) -> None:
        of_ids = channels.group[ids]
        if len(of_ids) and of_ids.min() == of_ids.max():  # the usual case: the axis carries one group
            members[int(of_ids[0])].append(make(len(of_ids)))
            return
        groups, counts = np.unique(of_ids, return_counts=True)
        for g, c in zip(groups.tolist(), counts.tolist()):
            members[g].append(make(int(c)))

    for tensor, axes in channels.axes.items():
        for axis, ids in axes.items():
            add_members(ids, lambda c, t=tensor, a=axis: Member(t, a, "activation", size=c))
    for (i, slot), use in channels.const_uses.items():
        node = channels.index.nodes[i]
        for axis, ids in use.axes.items():
            add_members(ids, lambda c, n=node, s=slot, a=axis, r=use.roles[axis]:
                        Member(n.input[s], a, "weight", node=channels.index.names[i], role=r, size=c))
    return members


def _layers(channels: ChannelMap) -> list[Layer]:
    layers = []
    out_ids = channels.layer_out
    for i, node in enumerate(channels.index.nodes):
        if i not in out_ids:  # rules record the output channels of layers only
            continue
        ids = out_ids[i]
        group = int(channels.group[ids[0]]) if len(ids) else None
        plain = node.op_type in LAYER_OPS and node.domain in ("", "ai.onnx")  # else fused / quantized layers
        cin, cout = _channel_counts(channels, node) if plain else (None, len(ids))
        layers.append(Layer(channels.index.names[i], node.op_type, cin, cout, group))
    return layers


def _channel_counts(channels: ChannelMap, node: onnx.NodeProto) -> tuple[int | None, int | None]:
    left = node.op_type == "Gather" or (node.op_type == "MatMul" and not channels.is_const(node.input[1]))
    slot = 0 if left else 1
    shape = channels.shape(node.input[slot])
    lay = weight_layout(node, len(shape), slot)
    if lay is None:
        return None, None
    return lay.in_channels(shape), lay.out_channels(shape)
