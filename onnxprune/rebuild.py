"""The one rebuild step of every rewrite (pruning surgery, decomposition chains, sparse storage).

A rewrite hands over its new node list and its initializer changes; `rebuild` makes the output model:
nodes and initializers that no longer reach a graph output dropped, nodes in a stable topological order
(an already sorted list stays as it is), model and graph metadata kept, value_info kept where asked and
still naming a tensor of the graph. Initializers are never re-encoded: untouched ones are the source's
TensorProtos (moved when the source is ours, one protobuf copy otherwise).

onnx-graphsurgeon (0.6.1) is not used here: its export re-creates every node (node metadata_props are
lost) and regenerates value_info, and its toposort orders nodes by depth level, so an already sorted graph
is reordered; a rebuild through it would change node content and order of every model.
"""
from __future__ import annotations

import heapq
import sys
from collections.abc import Mapping, Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from onnxprune import ir
from onnxprune.graph import copy_fields_except


def rebuild(source: onnx.ModelProto, nodes: Sequence[onnx.NodeProto], *,
            added: Mapping[str, onnx.TensorProto] | None = None, replaced: dict[str, np.ndarray] | None = None,
            own: bool = False, keep_value_info: bool = False) -> onnx.ModelProto:
    """The output model of a rewrite of `source` whose graph now has `nodes`.

    added: new initializers, appended in order where read. replaced: new values of source initializers that
    keep their name (and their graph input, if any, takes the new dims); entries are taken out of the dict as
    they are written, so one copy of each value is alive at a time. An initializer whose name a node now
    writes is dropped (the node replaces it). own=True changes `source` in place (no weight copies); else
    `source` is left as it was. keep_value_info=False drops value_info (shapes changed; it is inferred again).
    """
    added = added or {}
    replaced = {} if replaced is None else replaced
    replaced_names = set(replaced)
    live, needed = live_nodes(nodes, [v.name for v in source.graph.output])
    ordered = topological(live, source.graph)
    produced = {o for n in ordered for o in n.output if o}
    input_names = {v.name for v in source.graph.input}

    def kept(tensor: onnx.TensorProto) -> bool:
        return tensor.name not in produced and (tensor.name in needed or tensor.name in input_names)

    if own:
        model = source
        graph = model.graph
        dead = []
        for k, tensor in enumerate(graph.initializer):
            if not kept(tensor):
                dead.append(k)
            elif tensor.name in replaced:
                _overwrite(tensor, replaced.pop(tensor.name))  # one sliced copy alive at a time
        for k in reversed(dead):
            del graph.initializer[k]
    else:
        model = onnx.ModelProto()
        copy_fields_except(source, model, {"graph"})
        graph = model.graph
        copy_fields_except(source.graph, graph, {"node", "initializer", "value_info"})
        for tensor in source.graph.initializer:
            if kept(tensor):
                if tensor.name in replaced:
                    fresh = onnx.TensorProto(name=tensor.name, doc_string=tensor.doc_string)
                    _overwrite(fresh, replaced.pop(tensor.name))
                    tensor = fresh
                graph.initializer.append(tensor)
    new_dims = {t.name: list(t.dims) for t in graph.initializer if t.name in input_names and t.name in replaced_names}
    # value_info is dropped unless asked: shapes of activations and of values computed from weights change
    # (Shape of a weight, Expand of a bias); onnxruntime and the checker infer them again.
    still = needed | produced
    _replace_repeated(graph.value_info, [v for v in source.graph.value_info if keep_value_info and v.name in still])
    _replace_repeated(graph.node, ordered)
    existing = {t.name for t in graph.initializer}
    for name, tensor in added.items():
        if name not in existing and name in needed:
            graph.initializer.append(tensor)
            if source.ir_version < 4:  # IR < 4: every initializer must also be a graph input
                graph.input.append(onnx.helper.make_tensor_value_info(name, tensor.data_type, tensor.dims))
    for value in graph.input:
        if value.name in new_dims:
            _set_dims(value, new_dims[value.name])
    ir.set_base_dir(model, ir.base_dir(source))
    return model


def live_nodes(nodes: Sequence[onnx.NodeProto], outputs: list[str]) -> tuple[list[onnx.NodeProto], set[str]]:
    """The nodes that contribute to a graph output (or have no outputs), in the given order, and every tensor
    name they or the graph outputs read (including outer names read inside subgraphs)."""
    needed = set(outputs)
    live = []
    for node in reversed(nodes):
        if any(o in needed for o in node.output if o) or not any(node.output):
            live.append(node)
            needed.update(t for t in node.input if t)
            for attr in node.attribute:
                if attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
                    needed.update(_subgraph_reads(attr))
    live.reverse()
    return live, needed


def topological(nodes: Sequence[onnx.NodeProto], graph: onnx.GraphProto) -> list[onnx.NodeProto]:
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
        raise ValueError("rewritten graph has a cycle")
    return order


def _replace_repeated(field, items: list) -> None:
    """Make a repeated message field hold `items` (which may be its own elements)."""
    holder = [type(item)() for item in items]
    for copy, item in zip(holder, items):
        copy.CopyFrom(item)
    del field[:]
    field.extend(holder)


def _overwrite(tensor: onnx.TensorProto, array: np.ndarray) -> None:
    """Give an initializer new contents in place (inline raw data; external references dropped)."""
    name, doc = tensor.name, tensor.doc_string
    tensor.Clear()
    tensor.name = name
    if doc:
        tensor.doc_string = doc
    array = np.ascontiguousarray(array)
    tensor.dims.extend(array.shape)
    data_type = _PLAIN_TYPES.get(array.dtype) if sys.byteorder == "little" else None
    if data_type is not None:  # one copy into the proto (numpy_helper.from_array makes three)
        tensor.data_type = data_type
        tensor.raw_data = array.tobytes()
        return
    packed = numpy_helper.from_array(array)  # 4-bit and other special types, byte order
    tensor.data_type = packed.data_type
    tensor.raw_data = packed.raw_data


_PLAIN_TYPES = {np.dtype(t): onnx.helper.np_dtype_to_tensor_dtype(np.dtype(t)) for t in (
    np.float32, np.float16, np.float64, np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64,
    np.uint64, np.bool_)}


def _set_dims(value: onnx.ValueInfoProto, dims: list[int]) -> None:
    shape = value.type.tensor_type.shape
    del shape.dim[:]
    for d in dims:
        shape.dim.add().dim_value = d


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
