"""Pruning surgery: slice constants, rewrite attributes and shape inputs, record what shrank.

Input: an Analysis and a boolean `keep` per channel element. Output: a new ModelProto (the
analysed model is never changed) and the pruning record `channels` (DESIGN.md §1).
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from onnxprune import ir
from onnxprune.coupling.analysis import Analysis
from onnxprune.coupling.rules_shape import slice_params
from onnxprune.graph import NameSource, attribute
from onnxprune.surgery.constants import ConstantSlicer


@dataclass
class Surgery:
    model: onnx.ModelProto
    channels: dict[str, dict]
    # constant (original name) -> {axis: kept positions}: every constant sliced in place or copied with one
    # slicing; a constant sliced differently for different readers is left out (read-only, for onnxprune.torch)
    weights: dict[str, dict[int, list[int]]] = field(default_factory=dict)


def apply(analysis: Analysis, keep: np.ndarray, *, own: bool = False) -> Surgery:
    """Prune the analysed model; with own=True its ModelProto is changed in place (no weight copies)."""
    return _Surgeon(analysis, keep, own).run()


class _Surgeon:
    def __init__(self, analysis: Analysis, keep: np.ndarray, own: bool):
        self.a = analysis
        self.own = own
        self.keep = keep
        self.index = analysis.index
        self.walker = analysis.channels  # the frozen channel map (axes, const_uses, shape, dim, resolver)
        self.resolver = analysis.channels.resolver
        self.names = NameSource(analysis.model.graph)
        self.slicer = ConstantSlicer(self.index, self.resolver, self.names)
        self.kept: dict[str, dict[int, np.ndarray]] = {}  # tensor -> axis -> kept positions (changed axes only)
        self.sliced_in_place: dict[str, dict[int, np.ndarray]] = {}  # initializers sliced under their own name
        self.after: dict[int, list[onnx.NodeProto]] = {}  # nodes to place right after node i

    # ---- new shapes ----------------------------------------------------------------
    def _changed_axes(self) -> None:
        for tensor, axes in self.walker.axes.items():
            for axis, ids in axes.items():
                mask = self.keep[ids]
                if not mask.all():
                    self.kept.setdefault(tensor, {})[axis] = np.flatnonzero(mask)

    def new_dim(self, tensor: str, axis: int):
        kept = self.kept.get(tensor, {}).get(axis)
        if kept is not None:
            return len(kept)
        return self.walker.dim(tensor, axis)

    def new_shape(self, tensor: str) -> list:
        shape = self.walker.shape(tensor)
        return [self.new_dim(tensor, a) for a in range(len(shape))]

    # ---- the run ---------------------------------------------------------------------
    def run(self) -> Surgery:
        self._changed_axes()
        redirects, pending, weights = self._slice_constants()
        nodes: list[onnx.NodeProto] = []
        for i, node in enumerate(self.index.nodes):
            nodes.extend(pending.get(i, []))
            new_inputs = {slot: redirects[(i, slot)] for slot in range(len(node.input)) if (i, slot) in redirects}
            nodes.append(self._rewrite(i, node, new_inputs, nodes))
            nodes.extend(self.after.pop(i, []))
        model = self._assemble(nodes)
        produced = {o for n in model.graph.node for o in n.output} | {v.name for v in model.graph.input}
        channels = {t: entry for t, entry in self._record().items() if t in produced}
        return Surgery(model=model, channels=channels, weights=weights)

    def _slice_constants(self) -> tuple[dict[tuple[int, int], str], dict[int, list[onnx.NodeProto]], dict]:
        """Slice every constant input whose channels shrank.

        Returns per-use input renames, the new nodes (sliced constant subgraphs) to place
        before the first node that reads them, and the kept positions per sliced constant.
        """
        selections: dict[str, dict[tuple[int, int], tuple]] = {}
        for (i, slot), use in self.walker.const_uses.items():
            selection = {}
            for axis, ids in use.axes.items():
                mask = self.keep[ids]
                if not mask.all():
                    selection[axis] = np.flatnonzero(mask)
            if selection:
                name = self.index.nodes[i].input[slot]
                selections.setdefault(name, {})[(i, slot)] = selection
        redirects: dict[tuple[int, int], str] = {}
        pending: dict[int, list[onnx.NodeProto]] = {}
        weights: dict[str, dict[int, list[int]]] = {}
        for name, uses in selections.items():
            keys = {_selection_key(s) for s in uses.values()}
            if len(keys) == 1:
                only = next(iter(uses.values()))
                weights[name] = {int(axis): kept.tolist() for axis, kept in sorted(only.items())}
            all_uses = self.index.consumers.get(name, [])
            shared = len(all_uses) > len(uses) or name in self.index.graph_outputs
            if name in self.index.initializers and len(keys) == 1 and not shared:
                selection = next(iter(uses.values()))
                self.slicer.slice_initializer_in_place(name, selection)
                self.sliced_in_place[name] = selection
                continue
            made: dict[tuple, str] = {}
            for use, selection in uses.items():
                key = _selection_key(selection)
                if key not in made:
                    made[key] = self.slicer.sliced_copy(name, selection)
                    first = min(u[0] for u, sel in uses.items() if _selection_key(sel) == key)
                    pending.setdefault(first, []).extend(self.slicer.nodes)
                    self.slicer.nodes.clear()
                redirects[use] = made[key]
        return redirects, pending, weights

    # ---- per-node rewrites -----------------------------------------------------------
    def _rewrite(self, i: int, node: onnx.NodeProto, new_inputs: dict[int, str],
                 nodes: list[onnx.NodeProto]) -> onnx.NodeProto:
        touched = any(t in self.kept or t in self.sliced_in_place for t in list(node.input) + list(node.output))
        if not new_inputs and not touched:
            return node
        node_copy = onnx.NodeProto()
        node_copy.CopyFrom(node)
        for slot, name in new_inputs.items():
            node_copy.input[slot] = name
        if touched:
            handler = _REWRITES.get(node.op_type)
            if handler is not None:
                handler(self, i, node_copy, nodes)
        return node_copy

    def set_int_input(self, node: onnx.NodeProto, slot: int, positions: dict[int, int],
                      nodes: list[onnx.NodeProto]) -> None:
        """Replace entries (position -> value) of an int64 vector input, constant or computed."""
        if not positions:
            return
        current = self.resolver.int_list(node.input[slot])
        base = f"{node.name or node.op_type}_{slot}"
        if current is not None:
            for k, v in positions.items():
                current[k] = v
            name = self.names.fresh(f"{base}_pruned")
            self.slicer.initializers[name] = numpy_helper.from_array(np.array(current, dtype=np.int64), name)
            node.input[slot] = name
            return
        shape = self.walker.shape(node.input[slot])
        if not shape or not isinstance(shape[0], int):
            raise ValueError(f"input '{node.input[slot]}' of node '{node.name}' has an unknown length")
        length = shape[0]
        mask = np.zeros(length, dtype=bool)
        values = np.zeros(length, dtype=np.int64)
        for k, v in positions.items():
            mask[k], values[k] = True, v
        mask_name, values_name = self.names.fresh(f"{base}_mask"), self.names.fresh(f"{base}_values")
        out_name = self.names.fresh(f"{base}_patched")
        self.slicer.initializers[mask_name] = numpy_helper.from_array(mask, mask_name)
        self.slicer.initializers[values_name] = numpy_helper.from_array(values, values_name)
        nodes.append(onnx.helper.make_node("Where", [mask_name, values_name, node.input[slot]], [out_name],
                                           name=self.names.fresh(f"{base}_patch")))
        node.input[slot] = out_name

    # ---- output ----------------------------------------------------------------------
    def _assemble(self, nodes: list[onnx.NodeProto]) -> onnx.ModelProto:
        """The output model: built in place when the analysed model is ours to change, else a copy."""
        source = self.a.model
        replaced = self.slicer.initializers
        resliced = self.slicer.in_place
        live = _live_tensors(nodes, [v.name for v in source.graph.output])
        live_nodes = onnx.GraphProto()
        live_nodes.node.extend(_topological([n for n in nodes if n in live.nodes], self.a.model.graph))
        input_names = {v.name for v in source.graph.input}
        if self.own:
            model = source
            graph = model.graph
            dead = []
            for k, tensor in enumerate(graph.initializer):
                if tensor.name not in live.tensors and tensor.name not in input_names:
                    dead.append(k)
                elif tensor.name in resliced:
                    _overwrite(tensor, resliced.pop(tensor.name))  # one sliced copy alive at a time
            for k in reversed(dead):
                del graph.initializer[k]
            existing = {t.name for t in graph.initializer}
        else:
            model = onnx.ModelProto()
            _copy_fields_except(source, model, {"graph"})
            graph = model.graph
            _copy_fields_except(source.graph, graph, {"node", "initializer", "value_info"})
            for tensor in source.graph.initializer:
                if tensor.name in live.tensors or tensor.name in input_names:
                    if tensor.name in resliced:
                        tensor = numpy_helper.from_array(resliced.pop(tensor.name), tensor.name)
                    graph.initializer.append(tensor)
            existing = {t.name for t in source.graph.initializer}
        # value_info is dropped: shapes of activations and of values computed from weights (Shape of a
        # weight, Expand of a bias) change; onnxruntime and the checker infer them again.
        graph.ClearField("value_info")
        graph.ClearField("node")
        graph.node.extend(live_nodes.node)
        for name, tensor in replaced.items():
            if name not in existing and name in live.tensors:
                graph.initializer.append(tensor)
                if source.ir_version < 4:  # IR < 4: every initializer must also be a graph input
                    graph.input.append(onnx.helper.make_tensor_value_info(name, tensor.data_type, tensor.dims))
        dims = {t.name: list(t.dims) for t in graph.initializer if t.name in input_names}
        for value in graph.input:
            if value.name in dims and value.name in self.sliced_in_place:
                _set_dims(value, dims[value.name])
        return model

    def _record(self) -> dict[str, dict]:
        channels = {}
        constant = self.resolver.is_constant
        for tensor, axes in self.kept.items():
            if constant(tensor):
                continue
            ordered = sorted(axes)
            masks = []
            for axis in ordered:
                mask = np.zeros(len(self.walker.axes[tensor][axis]), dtype=bool)
                mask[axes[axis]] = True
                masks.append(mask)
            full = masks[0]
            for extra in masks[1:]:
                full = np.logical_and.outer(full, extra)
            channels[tensor] = {"axes": ordered, "mask": full.tolist()}
        return channels


def _topological(nodes: list[onnx.NodeProto], graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """Nodes in an order where every input is produced first (stable: the given order where it is)."""
    ready = {v.name for v in graph.input} | {t.name for t in graph.initializer} | {""}
    produced_by = {o: k for k, n in enumerate(nodes) for o in n.output}
    ready.update(t for n in nodes for t in n.input if t not in produced_by)  # new initializers, outer names
    waiting: dict[str, list[int]] = {}
    missing = []
    order: list[onnx.NodeProto] = []
    for k, node in enumerate(nodes):
        need = {t for t in node.input if t not in ready and t in produced_by}
        missing.append(len(need))
        for t in need:
            waiting.setdefault(t, []).append(k)
    queue = [k for k, m in enumerate(missing) if m == 0]
    heapq.heapify(queue)
    while queue:
        k = heapq.heappop(queue)
        order.append(nodes[k])
        for out in nodes[k].output:
            for j in waiting.pop(out, []):
                missing[j] -= 1
                if missing[j] == 0:
                    heapq.heappush(queue, j)
    if len(order) != len(nodes):
        raise ValueError("pruned graph has a cycle")
    return order


def _overwrite(tensor: onnx.TensorProto, array: np.ndarray) -> None:
    """Give an initializer new contents in place (inline raw data; external references dropped)."""
    name, doc = tensor.name, tensor.doc_string
    tensor.Clear()
    tensor.name = name
    if doc:
        tensor.doc_string = doc
    tensor.data_type = onnx.helper.np_dtype_to_tensor_dtype(array.dtype)
    tensor.dims.extend(array.shape)
    tensor.raw_data = np.ascontiguousarray(array).tobytes()


def _copy_fields_except(src, dst, skip: set[str]) -> None:
    for descriptor, value in src.ListFields():
        if descriptor.name in skip:
            continue
        if descriptor.is_repeated:
            getattr(dst, descriptor.name).extend(value)
        elif descriptor.message_type is not None:
            getattr(dst, descriptor.name).CopyFrom(value)
        else:
            setattr(dst, descriptor.name, value)


def _selection_key(selection: dict[int, np.ndarray]) -> tuple:
    return tuple((axis, kept.tobytes()) for axis, kept in sorted(selection.items()))


def _set_dims(value: onnx.ValueInfoProto, dims: list[int]) -> None:
    shape = value.type.tensor_type.shape
    del shape.dim[:]
    for d in dims:
        shape.dim.add().dim_value = d


class _Live:
    def __init__(self) -> None:
        self.nodes: set = set()
        self.tensors: set[str] = set()


def _live_tensors(nodes: list[onnx.NodeProto], outputs: list[str]) -> _Live:
    """Nodes that contribute to a graph output (or have side outputs used), and the tensors they read."""
    live = _Live()
    needed = set(outputs)
    keep_ids = set()
    for node in reversed(nodes):
        if any(o in needed for o in node.output if o) or not any(node.output):
            keep_ids.add(id(node))
            needed.update(t for t in node.input if t)
            for attr in node.attribute:
                if attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
                    needed.update(_subgraph_reads(attr))
    live.nodes = _IdSet(keep_ids)
    live.tensors = needed
    return live


class _IdSet:
    def __init__(self, ids: set[int]):
        self.ids = ids

    def __contains__(self, node) -> bool:
        return id(node) in self.ids


def _subgraph_reads(attr: onnx.AttributeProto) -> set[str]:
    graphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
    reads: set[str] = set()
    for g in graphs:
        for node in g.node:
            reads.update(t for t in node.input if t)
            for inner in node.attribute:
                if inner.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
                    reads.update(_subgraph_reads(inner))
        reads.update(v.name for v in g.output)
    return reads


# ---- rewrites of parameters that depend on channel counts ------------------------------

def _rewrite_reshape(s: _Surgeon, i: int, node: onnx.NodeProto, nodes: list) -> None:
    out = node.output[0]
    if out not in s.kept:
        return
    if node.op_type == "Flatten":
        return
    new_shape = s.new_shape(out)
    current = s.resolver.int_list(node.input[1])
    positions = {}
    for axis in s.kept[out]:
        if current is not None and current[axis] == -1:
            continue
        positions[axis] = int(new_shape[axis])
    s.set_int_input(node, 1, positions, nodes)


def _rewrite_expand(s: _Surgeon, i: int, node: onnx.NodeProto, nodes: list) -> None:
    out = node.output[0]
    if out not in s.kept:
        return
    current = s.resolver.int_list(node.input[1])
    length = len(current) if current is not None else s.walker.shape(node.input[1])[0]
    shift = len(s.walker.shape(out)) - length
    positions = {}
    for axis in s.kept[out]:
        k = axis - shift
        if k >= 0 and (current is None or current[k] != 1):
            positions[k] = s.new_dim(out, axis)
    s.set_int_input(node, 1, positions, nodes)


def _rewrite_split(s: _Surgeon, i: int, node: onnx.NodeProto, nodes: list) -> None:
    x = node.input[0]
    rank = len(s.walker.shape(x))
    axis = attribute(node, "axis", 0) % rank
    if axis not in s.kept.get(x, {}):
        return
    sizes = [int(s.new_dim(out, axis)) for out in node.output]
    if any(a.name == "split" for a in node.attribute):
        _replace_attribute(node, onnx.helper.make_attribute("split", sizes))
        return
    if s.resolver.opset < 13:
        node.attribute.append(onnx.helper.make_attribute("split", sizes))
        return
    kept_attrs = [a for a in node.attribute if a.name != "num_outputs"]
    del node.attribute[:]
    node.attribute.extend(kept_attrs)
    name = s.names.fresh(f"{node.name or 'Split'}_sizes")
    s.slicer.initializers[name] = numpy_helper.from_array(np.array(sizes, dtype=np.int64), name)
    if len(node.input) > 1:
        node.input[1] = name
    else:
        node.input.append(name)


def _rewrite_slice(s: _Surgeon, i: int, node: onnx.NodeProto, nodes: list) -> None:
    x = node.input[0]
    kept = s.kept.get(x, {})
    if not kept:
        return
    shape = s.walker.shape(x)
    params = slice_params(s.walker, node, len(shape))
    if len(params) == 1 and params[0][3] != 1 and params[0][0] in kept:
        _strided_slice_as_gather(s, node, params[0], shape[params[0][0]], kept[params[0][0]])
        return
    starts, ends = [], []
    changed = False
    for axis, start, end, step in params:
        if axis in kept:
            size = shape[axis]
            lo, hi, _ = slice(start, end, step).indices(size)
            positions = kept[axis]
            start = int(np.searchsorted(positions, lo))
            end = int(np.searchsorted(positions, max(hi, lo)))
            changed = True
        starts.append(start)
        ends.append(end)
    if not changed:
        return
    if len(node.input) == 1:
        _replace_attribute(node, onnx.helper.make_attribute("starts", starts))
        _replace_attribute(node, onnx.helper.make_attribute("ends", ends))
        return
    for slot, values in ((1, starts), (2, ends)):
        name = s.names.fresh(f"{node.name or 'Slice'}_{'starts' if slot == 1 else 'ends'}")
        s.slicer.initializers[name] = numpy_helper.from_array(np.array(values, dtype=np.int64), name)
        node.input[slot] = name


def _strided_slice_as_gather(s: _Surgeon, node: onnx.NodeProto, param: tuple, size: int,
                             kept: np.ndarray) -> None:
    """A strided Slice over pruned channels becomes a Gather of the kept ones' new positions."""
    axis, start, end, step = param
    picked = np.arange(size)[slice(start, end, step)]
    new_position = {int(p): k for k, p in enumerate(kept)}
    indices = np.array([new_position[int(p)] for p in picked if int(p) in new_position], dtype=np.int64)
    name = s.names.fresh(f"{node.name or 'Slice'}_indices")
    s.slicer.initializers[name] = numpy_helper.from_array(indices, name)
    data = node.input[0]
    del node.input[:]
    node.input.extend([data, name])
    del node.attribute[:]
    node.attribute.append(onnx.helper.make_attribute("axis", axis))
    node.op_type = "Gather"


def _rewrite_conv_group(s: _Surgeon, i: int, node: onnx.NodeProto, nodes: list) -> None:
    groups = attribute(node, "group", 1)
    x = node.input[0]
    if groups == 1 or 1 not in s.kept.get(x, {}):
        return
    weight_shape = s.walker.shape(s.index.nodes[i].input[1])  # the original name: the copy may read a sliced one
    cin_per_group = weight_shape[1] if node.op_type == "Conv" else weight_shape[0] // groups
    if cin_per_group == 1:  # depthwise: one group per remaining channel
        _replace_attribute(node, onnx.helper.make_attribute("group", int(s.new_dim(x, 1))))


def _rewrite_resize(s: _Surgeon, i: int, node: onnx.NodeProto, nodes: list) -> None:
    out = node.output[0]
    if out not in s.kept or node.op_type != "Resize" or len(node.input) < 4 or not node.input[3]:
        return
    s.set_int_input(node, 3, {axis: s.new_dim(out, axis) for axis in s.kept[out]}, nodes)


def _freeze_shape(s: _Surgeon, i: int, node: onnx.NodeProto, nodes: list) -> None:
    """Shape of a shrunk tensor reports its ORIGINAL channel counts.

    Values computed from shapes (attention's 1/sqrt(head_dim), a view's C // heads) keep the
    original's meaning; every shape input that must follow the new sizes (Reshape, Expand,
    Split, Slice, Resize) is rewritten explicitly.
    """
    x = node.input[0]
    changed = s.kept.get(x) or s.sliced_in_place.get(x)
    if not changed:
        return
    shape = s.walker.shape(x)
    axes = list(range(len(shape)))[attribute(node, "start", 0):attribute(node, "end")]  # clipped as Shape does
    positions = {k: int(shape[a]) for k, a in enumerate(axes) if a in changed}
    if not positions:
        return
    raw = s.names.fresh(f"{node.output[0]}_pruned")
    frozen = node.output[0]
    node.output[0] = raw
    mask = np.zeros(len(axes), dtype=bool)
    values = np.zeros(len(axes), dtype=np.int64)
    for k, v in positions.items():
        mask[k], values[k] = True, v
    mask_name, values_name = s.names.fresh(f"{frozen}_mask"), s.names.fresh(f"{frozen}_original")
    s.slicer.initializers[mask_name] = numpy_helper.from_array(mask, mask_name)
    s.slicer.initializers[values_name] = numpy_helper.from_array(values, values_name)
    s.after[i] = [onnx.helper.make_node("Where", [mask_name, values_name, raw], [frozen],
                                        name=s.names.fresh(f"{node.name or 'Shape'}_original_dims"))]


def _replace_attribute(node: onnx.NodeProto, attr: onnx.AttributeProto) -> None:
    for k, existing in enumerate(node.attribute):
        if existing.name == attr.name:
            node.attribute[k].CopyFrom(attr)
            return
    node.attribute.append(attr)


_REWRITES = {
    "Reshape": _rewrite_reshape,
    "Flatten": _rewrite_reshape,
    "Expand": _rewrite_expand,
    "Split": _rewrite_split,
    "Slice": _rewrite_slice,
    "Conv": _rewrite_conv_group,
    "ConvTranspose": _rewrite_conv_group,
    "Resize": _rewrite_resize,
    "Shape": _freeze_shape,
}
