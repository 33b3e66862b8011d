"""Pruning surgery: slice constants, rewrite attributes and shape inputs, record what shrank.

Input: an Analysis and a boolean `keep` per channel element. Output: a new ModelProto (the
analysed model is never changed) and the pruning record `channels` (DESIGN.md §1).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from onnxprune.coupling.analysis import Analysis
from onnxprune.coupling.registry import rule_for
from onnxprune.errors import UnsupportedError
from onnxprune.graph import NameSource
from onnxprune.rebuild import rebuild
from onnxprune.surgery.slicing import ConstantSlicer


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
    """Slices constants and calls each op's rewrite (coupling.registry); the RewriteContext of the rewrites."""

    def __init__(self, analysis: Analysis, keep: np.ndarray, own: bool):
        self.a = analysis
        self.own = own
        self.keep = keep
        self.index = analysis.index
        self.channels = analysis.channels  # the frozen channel map
        self.resolver = analysis.channels.resolver
        self.opset = self.resolver.opset
        self.names = NameSource(analysis.model.graph)
        self.slicer = ConstantSlicer(self.index, self.resolver, self.names)
        self.kept: dict[str, dict[int, np.ndarray]] = {}  # tensor -> axis -> kept positions (changed axes only)
        # constants sliced under their own name (initializers, and ConstantOfShape fills given a smaller shape)
        self.sliced_in_place: dict[str, dict[int, np.ndarray]] = {}
        self.after: dict[int, list[onnx.NodeProto]] = {}  # nodes to place right after node i
        self.folded_shapes: dict[int, onnx.NodeProto] = {}  # Shape of a sliced constant -> its Constant

    # ---- the view rewrites read (coupling.registry.RewriteContext) -------------------
    def shape(self, tensor: str) -> tuple | None:
        return self.channels.shape(tensor)

    def ints(self, tensor: str) -> list[int] | None:
        return self.resolver.int_list(tensor)

    def original(self, i: int) -> onnx.NodeProto:
        return self.index.nodes[i]

    def fresh(self, base: str) -> str:
        return self.names.fresh(base)

    def add_initializer(self, base: str, array: np.ndarray) -> str:
        name = self.names.fresh(base)
        self.slicer.initializers[name] = numpy_helper.from_array(array, name)
        return name

    def place_after(self, i: int, nodes: list[onnx.NodeProto]) -> None:
        self.after[i] = nodes

    def value(self, tensor: str) -> np.ndarray | None:
        return self.resolver.value(tensor)

    def const_kept(self, i: int, slot: int) -> dict[int, np.ndarray]:
        use = self.channels.const_uses.get((i, slot))
        if use is None:
            return {}
        kept = {axis: np.flatnonzero(self.keep[ids]) for axis, ids in use.axes.items()}
        return {axis: positions for axis, positions in kept.items() if len(positions) < len(use.axes[axis])}

    # ---- new shapes ----------------------------------------------------------------
    def _changed_axes(self) -> None:
        for tensor, axes in self.channels.axes.items():
            for axis, ids in axes.items():
                mask = self.keep[ids]
                if not mask.all():
                    self.kept.setdefault(tensor, {})[axis] = np.flatnonzero(mask)

    def new_dim(self, tensor: str, axis: int):
        kept = self.kept.get(tensor, {}).get(axis)
        if kept is not None:
            return len(kept)
        return self.channels.dim(tensor, axis)

    def new_shape(self, tensor: str) -> list:
        shape = self.shape(tensor)
        return [self.new_dim(tensor, a) for a in range(len(shape))]

    # ---- the run ---------------------------------------------------------------------
    def run(self) -> Surgery:
        self._changed_axes()
        redirects, pending, weights = self._slice_constants()
        self._gather_inputs(redirects, pending)
        nodes: list[onnx.NodeProto] = []
        for i, node in enumerate(self.index.nodes):
            nodes.extend(pending.get(i, []))
            if i in self.folded_shapes:
                nodes.append(self.folded_shapes[i])
                continue
            new_inputs = {slot: redirects[(i, slot)] for slot in range(len(node.input)) if (i, slot) in redirects}
            nodes.append(self._rewrite(i, node, new_inputs, nodes))
            nodes.extend(self.after.pop(i, []))
        model = rebuild(self.a.model, nodes, added=self.slicer.initializers, replaced=self.slicer.in_place,
                        own=self.own)
        produced = {o for n in model.graph.node for o in n.output} | {v.name for v in model.graph.input}
        channels = {t: entry for t, entry in self._record().items() if t in produced}
        return Surgery(model=model, channels=channels, weights=weights)

    def _slice_constants(self) -> tuple[dict[tuple[int, int], str], dict[int, list[onnx.NodeProto]], dict]:
        """Slice every constant input whose channels shrank.

        Returns per-use input renames, the new nodes (sliced constant subgraphs) to place
        before the first node that reads them, and the kept positions per sliced constant.
        """
        selections: dict[str, dict[tuple[int, int], tuple]] = {}
        for (i, slot), use in self.channels.const_uses.items():
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
            all_uses = [u for u in self.index.consumers.get(name, []) if not self._fold_shape(u[0], name)]
            shared = len(all_uses) > len(uses) or name in self.index.graph_outputs
            if len(keys) == 1 and not shared and self.slicer.slice_in_place(name, next(iter(uses.values()))):
                self.sliced_in_place[name] = next(iter(uses.values()))
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

    def _fold_shape(self, i: int, name: str) -> bool:
        """Whether node i is a Shape of the constant `name` (which is being sliced): it then becomes a Constant of
        the shape it read, so the unsliced constant is not kept for it alone (exporters read a weight's shape to
        size its bias). The value is what the Shape read, unchanged."""
        node = self.index.nodes[i]
        dims = self.shape(name)
        if node.op_type != "Shape" or node.domain not in ("", "ai.onnx") or dims is None:
            return False
        if not all(isinstance(d, int) for d in dims):
            return False
        attrs = {a.name: a.i for a in node.attribute}
        value = np.array(dims, dtype=np.int64)[attrs.get("start", 0):attrs.get("end", len(dims))]
        self.folded_shapes[i] = onnx.helper.make_node("Constant", [], list(node.output), name=node.name,
                                                      value=numpy_helper.from_array(value))
        return True

    def _gather_inputs(self, redirects: dict[tuple[int, int], str], pending: dict[int, list[onnx.NodeProto]]) -> None:
        """Slice each input without channels (coupling's `gathered`) for its reader: one Gather per axis, shared by
        the readers that keep the same positions, placed before the first of them."""
        made: dict[tuple, str] = {}
        for (i, slot), axes in sorted(self.channels.gathered.items()):
            selection = {axis: np.flatnonzero(self.keep[ids]) for axis, ids in axes.items()}
            selection = {axis: kept for axis, kept in selection.items() if len(kept) < len(axes[axis])}
            if not selection:
                continue
            tensor = self.index.nodes[i].input[slot]
            key = (tensor, _selection_key(selection))
            if key not in made:
                current = tensor
                for axis, kept in sorted(selection.items()):
                    indices = self.add_initializer(f"{tensor}_kept{axis}", kept.astype(np.int64))
                    out = self.names.fresh(f"{tensor}_sliced")
                    pending.setdefault(i, []).append(onnx.helper.make_node(
                        "Gather", [current, indices], [out], name=self.names.fresh(f"{tensor}_gather"), axis=axis))
                    current = out
                made[key] = current
            redirects[(i, slot)] = made[key]

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
            entry = rule_for(node)
            if entry is not None and entry.rewrite is not None:
                entry.rewrite(self, i, node_copy, nodes)
        return node_copy

    def set_int_input(self, node: onnx.NodeProto, slot: int, positions: dict[int, int],
                      nodes: list[onnx.NodeProto]) -> None:
        """Replace entries (position -> value) of an int64 vector input, constant or computed."""
        if not positions:
            return
        current = self.ints(node.input[slot])
        base = f"{node.name or node.op_type}_{slot}"
        if current is not None:
            for k, v in positions.items():
                current[k] = v
            name = node.input[slot]
            if name in self.index.initializers and len(self.index.consumers.get(name, [])) == 1 \
                    and name not in self.index.graph_outputs and name not in self.slicer.in_place:
                self.slicer.in_place[name] = np.array(current, dtype=np.int64)  # read by this node alone
                return
            node.input[slot] = self.add_initializer(f"{base}_pruned", np.array(current, dtype=np.int64))
            return
        shape = self.shape(node.input[slot])
        if not shape or not isinstance(shape[0], int):
            raise UnsupportedError(f"node '{node.name}' ({node.op_type}): its input '{node.input[slot]}' is computed "
                                   "with a length that shape inference cannot tell, so its channel counts cannot be "
                                   "rewritten; make that shape static (e.g. onnxsim) or leave these layers out")
        length = shape[0]
        mask = np.zeros(length, dtype=bool)
        values = np.zeros(length, dtype=np.int64)
        for k, v in positions.items():
            mask[k], values[k] = True, v
        mask_name = self.add_initializer(f"{base}_mask", mask)
        values_name = self.add_initializer(f"{base}_values", values)
        out_name = self.names.fresh(f"{base}_patched")
        nodes.append(onnx.helper.make_node("Where", [mask_name, values_name, node.input[slot]], [out_name],
                                           name=self.names.fresh(f"{base}_patch")))
        node.input[slot] = out_name

    # ---- output ----------------------------------------------------------------------
    def _record(self) -> dict[str, dict]:
        channels = {}
        constant = self.resolver.is_constant
        for tensor, axes in self.kept.items():
            if constant(tensor):
                continue
            ordered = sorted(axes)
            masks = []
            for axis in ordered:
                mask = np.zeros(len(self.channels.axes[tensor][axis]), dtype=bool)
                mask[axes[axis]] = True
                masks.append(mask)
            full = masks[0]
            for extra in masks[1:]:
                full = np.logical_and.outer(full, extra)
            channels[tensor] = {"axes": ordered, "mask": full.tolist()}
        return channels


def _selection_key(selection: dict[int, np.ndarray]) -> tuple:
    return tuple((axis, kept.tobytes()) for axis, kept in sorted(selection.items()))
