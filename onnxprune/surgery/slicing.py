"""Slicing constant tensors along channel axes: initializers, Constant nodes, constant subgraphs."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from onnxprune.folding import ConstantResolver
from onnxprune.graph import GraphIndex, NameSource, attribute

Selection = dict[int, np.ndarray]  # axis -> kept positions


def take(array: np.ndarray, selection: Selection) -> np.ndarray:
    for axis, kept in sorted(selection.items()):
        array = np.take(array, kept, axis=axis)
    return np.ascontiguousarray(array)


class ConstantSlicer:
    """Creates sliced copies of constant tensors; collects the new initializers and nodes."""

    def __init__(self, index: GraphIndex, resolver: ConstantResolver, names: NameSource):
        self.index = index
        self.resolver = resolver
        self.names = names
        self.initializers: dict[str, onnx.TensorProto] = {}  # new initializers, by name
        self.in_place: dict[str, np.ndarray] = {}  # new values of initializers that keep their name
        self.nodes: list[onnx.NodeProto] = []  # new nodes, placed before the first node that reads them
        self._made: dict[tuple, str] = {}

    def slice_in_place(self, name: str, selection: Selection) -> bool:
        """Slice a constant under its own name (its only readers all keep `selection`): an initializer, or a
        ConstantOfShape whose shape initializer nothing else reads (that shape shrinks), also seen through Identity /
        Cast / Unsqueeze nodes that are its only readers. False: make a copy."""
        if name in self.index.initializers:
            self.in_place[name] = take(self.resolver.value(name), selection)
            return True
        node = self.index.producer_node(name)
        if node is None or node.domain not in ("", "ai.onnx"):
            return False
        if node.op_type in ("Identity", "Cast", "Unsqueeze") and node.input[0] and self._read_once(node.input[0]):
            inner = _inner_selection(node, selection, self.resolver)
            return inner is not None and self.slice_in_place(node.input[0], inner)
        if node.op_type != "ConstantOfShape":
            return False
        shape_name = node.input[0]
        shape = self.resolver.int_list(shape_name)
        if shape is None or shape_name not in self.index.initializers or not self._read_once(shape_name):
            return False
        for axis, kept in selection.items():
            shape[axis] = len(kept)
        self.in_place[shape_name] = np.array(shape, dtype=np.int64)
        return True

    def _read_once(self, name: str) -> bool:
        """Read by one node input, not a graph output, not already given a new value."""
        return len(self.index.consumers.get(name, [])) == 1 and name not in self.index.graph_outputs \
            and name not in self.in_place

    def sliced_copy(self, name: str, selection: Selection) -> str:
        """A tensor holding `name` sliced by `selection` (made once per distinct slicing); returns its name."""
        key = (name, tuple((axis, kept.tobytes()) for axis, kept in sorted(selection.items())))
        if key not in self._made:
            new_name = self.names.fresh(f"{name}_pruned")
            self._emit(name, selection, new_name)
            self._made[key] = new_name
        return self._made[key]

    def _emit(self, name: str, selection: Selection, new_name: str) -> None:
        if name in self.index.initializers:
            array = take(self.resolver.value(name), selection)
            self.initializers[new_name] = numpy_helper.from_array(array, new_name)
            return
        node = self.index.producer_node(name)
        if node is not None and node.op_type == "DequantizeLinear" and self._dequantize_copy(node, selection, new_name):
            return
        if node is not None and node.op_type == "ConstantOfShape":
            shape = self.resolver.int_list(node.input[0])
            if shape is not None:
                for axis, kept in selection.items():
                    shape[axis] = len(kept)
                shape_name = self.names.fresh(f"{new_name}_shape")
                self.initializers[shape_name] = numpy_helper.from_array(np.array(shape, dtype=np.int64), shape_name)
                copy = onnx.helper.make_node("ConstantOfShape", [shape_name], [new_name],
                                             name=self.names.fresh(f"{new_name}_fill"))
                copy.attribute.extend(node.attribute)
                self.nodes.append(copy)
                return
        if node is not None and node.op_type == "Expand" and self._expand_copy(node, selection, new_name):
            return
        if node is not None and self._fill_copy(name, selection, new_name):
            return
        if node is not None and node.op_type in _CHAINED and node.input[0]:
            inner = _inner_selection(node, selection, self.resolver)
            if inner is not None:
                source = self.sliced_copy(node.input[0], inner)
                copy = onnx.NodeProto()
                copy.CopyFrom(node)
                copy.input[0] = source
                del copy.output[:]
                copy.output.append(new_name)
                copy.name = self.names.fresh(f"{new_name}_{node.op_type.lower()}")
                self.nodes.append(copy)
                return
        if node is not None and self._gather_copy(name, selection, new_name):
            return
        value = self.resolver.value(name)
        if value is None:
            raise ValueError(f"constant '{name}' cannot be evaluated for slicing")
        self.initializers[new_name] = numpy_helper.from_array(take(value, selection), new_name)

    def _fill_copy(self, name: str, selection: Selection, new_name: str) -> bool:
        """A ConstantOfShape seen through ops that only move or cast its elements (Reshape, Transpose, ...) is one
        value everywhere: its slice is a ConstantOfShape of the smaller shape, never materialised."""
        fill = uniform_fill(self.index, name)
        shape = self.resolver.shape_of(name)
        if fill is None or shape is None or not all(isinstance(d, int) for d in shape):
            return False
        shape = list(shape)
        for axis, kept in selection.items():
            shape[axis] = len(kept)
        shape_name = self.names.fresh(f"{new_name}_shape")
        self.initializers[shape_name] = numpy_helper.from_array(np.array(shape, dtype=np.int64), shape_name)
        self.nodes.append(onnx.helper.make_node("ConstantOfShape", [shape_name], [new_name],
                                                name=self.names.fresh(f"{new_name}_fill"),
                                                value=numpy_helper.from_array(fill)))
        return True

    def _gather_copy(self, name: str, selection: Selection, new_name: str) -> bool:
        """A computed constant whose sliced value would take more bytes than the kept indices: keep computing it
        and Gather the kept positions after it (onnxruntime folds the Gather when it loads the model)."""
        shape = self.resolver.shape_of(name)
        dtype = self.resolver.types.get(name)
        if shape is None or dtype is None or not all(isinstance(d, int) for d in shape):
            return False
        kept_size = int(np.prod([len(selection[a]) if a in selection else d for a, d in enumerate(shape)]))
        item = onnx.helper.tensor_dtype_to_np_dtype(dtype).itemsize
        gather_bytes = sum(8 * len(kept) for kept in selection.values()) + _NODE_BYTES * len(selection)
        if kept_size * item <= gather_bytes or stored_bytes(self.index, name, kept_size * item) >= kept_size * item:
            return False  # materialising is smaller (and lets the subgraph computing the constant go)
        current = name
        for k, (axis, kept) in enumerate(sorted(selection.items())):
            indices = self.names.fresh(f"{new_name}_kept{axis}")
            self.initializers[indices] = numpy_helper.from_array(kept.astype(np.int64), indices)
            out = new_name if k == len(selection) - 1 else self.names.fresh(f"{new_name}_{axis}")
            self.nodes.append(onnx.helper.make_node("Gather", [current, indices], [out],
                                                    name=self.names.fresh(f"{new_name}_gather"), axis=axis))
            current = out
        return True

    def _dequantize_copy(self, node: onnx.NodeProto, selection: Selection, new_name: str) -> bool:
        """A quantized weight stays quantized: slice the integer tensor and its per-channel scale / zero point, and
        dequantize the slices (instead of folding the float weight)."""
        x_shape = self.resolver.shape_of(node.input[0])
        if x_shape is None or attribute(node, "block_size", 0):
            return False
        axis = attribute(node, "axis", 1) % max(len(x_shape), 1)
        inputs = [self.sliced_copy(node.input[0], selection)]
        for param in node.input[1:]:
            shape = self.resolver.shape_of(param) if param else None
            if shape and len(shape) == 1 and shape[0] > 1 and axis in selection:
                inputs.append(self.sliced_copy(param, {0: selection[axis]}))
            else:
                inputs.append(param)
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        del copy.input[:]
        copy.input.extend(inputs)
        del copy.output[:]
        copy.output.append(new_name)
        copy.name = self.names.fresh(f"{new_name}_dequantize")
        self.nodes.append(copy)
        return True

    def _expand_copy(self, node: onnx.NodeProto, selection: Selection, new_name: str) -> bool:
        """Expand(small, shape): slice `small` where it is full-size, and shrink `shape`."""
        out_shape = self.resolver.shape_of(node.output[0])
        in_shape = self.resolver.shape_of(node.input[0])
        target = self.resolver.int_list(node.input[1])
        if out_shape is None or in_shape is None or target is None:
            return False
        shift = len(out_shape) - len(in_shape)
        inner = {}
        for axis, kept in selection.items():
            k = axis - len(out_shape) + len(target)
            if k >= 0:
                target[k] = 1 if target[k] == 1 else len(kept)
            if axis - shift >= 0 and in_shape[axis - shift] != 1:
                inner[axis - shift] = kept
        source = self.sliced_copy(node.input[0], inner) if inner else node.input[0]
        shape_name = self.names.fresh(f"{new_name}_shape")
        self.initializers[shape_name] = numpy_helper.from_array(np.array(target, dtype=np.int64), shape_name)
        self.nodes.append(onnx.helper.make_node("Expand", [source, shape_name], [new_name],
                                                name=self.names.fresh(f"{new_name}_expand")))
        return True


_CHAINED = ("Identity", "Cast", "Unsqueeze", "Transpose")  # copied node by node over a sliced copy of their input
_NODE_BYTES = 64  # about what one added node and its initializer's header take in the file
_ELEMENT_MOVES = ("Identity", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Expand", "Cast")


def stored_bytes(index: GraphIndex, name: str, limit: int) -> int:
    """Bytes the file spends on the constants a computed tensor is made from (initializers and Constant nodes
    upstream of it), counted up to `limit`."""
    total, seen, stack = 0, set(), [name]
    while stack and total < limit:
        tensor = stack.pop()
        if not tensor or tensor in seen:
            continue
        seen.add(tensor)
        if tensor in index.initializers:
            total += index.initializers[tensor].ByteSize()
            continue
        node = index.producer_node(tensor)
        if node is None:
            continue
        if node.op_type == "Constant":
            total += node.ByteSize()
        stack.extend(node.input)
    return total


def uniform_fill(index: GraphIndex, name: str) -> np.ndarray | None:
    """The one value (a 1-element array of the tensor's type) of a ConstantOfShape output seen through ops that
    only move, repeat or cast elements; None for any other tensor."""
    casts = []
    node = index.producer_node(name)
    while node is not None and node.op_type in _ELEMENT_MOVES and node.domain in ("", "ai.onnx"):
        if node.op_type == "Cast":
            casts.append(attribute(node, "to"))
        node = index.producer_node(node.input[0])
    if node is None or node.op_type != "ConstantOfShape" or node.domain not in ("", "ai.onnx"):
        return None
    value = attribute(node, "value")
    fill = numpy_helper.to_array(value).reshape(-1)[:1] if value is not None else np.zeros(1, np.float32)
    for to in reversed(casts):
        fill = fill.astype(onnx.helper.tensor_dtype_to_np_dtype(to))
    return fill


def _inner_selection(node: onnx.NodeProto, selection: Selection, resolver: ConstantResolver) -> Selection | None:
    """The selection on the input of a shape-preserving, Transpose or Unsqueeze node."""
    if node.op_type == "Transpose":
        perm = attribute(node, "perm")
        return None if perm is None else {perm[axis]: kept for axis, kept in selection.items()}
    if node.op_type != "Unsqueeze":
        return dict(selection)
    out_shape = resolver.shape_of(node.output[0])
    if out_shape is None:
        return None
    rank = len(out_shape)
    listed = attribute(node, "axes")
    if listed is None and len(node.input) > 1:
        listed = resolver.int_list(node.input[1])
    if listed is None:
        return None
    inserted = sorted(a % rank for a in listed)
    kept_axes = [k for k in range(rank) if k not in inserted]
    if any(axis in inserted for axis in selection):
        return None
    return {kept_axes.index(axis): positions for axis, positions in selection.items()}


def can_slice(index: GraphIndex, resolver: ConstantResolver, name: str) -> bool:
    """Whether ConstantSlicer can make sliced copies of the constant `name` (the cases of its _emit): analysis asks
    before calling a weight prunable. Nothing is allocated for initializers and the chains copied node by node."""
    if name in index.initializers:
        return True
    node = index.producer_node(name)
    if node is not None and node.op_type == "ConstantOfShape" and resolver.int_list(node.input[0]) is not None:
        return True
    if node is not None and node.op_type in (*_CHAINED, "Expand") and node.input[0] \
            and can_slice(index, resolver, node.input[0]):
        return True
    return resolver.value(name) is not None
