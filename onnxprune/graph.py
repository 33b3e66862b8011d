"""A read-only index over an ONNX graph: producers, consumers, initializers, node names.

Built in one linear pass; the analysis and the surgery both stand on it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import onnx


@dataclass
class GraphIndex:
    graph: onnx.GraphProto
    nodes: list[onnx.NodeProto]
    names: list[str]  # a unique, stable name per node (the node's own name where it has one)
    producer: dict[str, tuple[int, int]]  # tensor -> (node index, output slot)
    consumers: dict[str, list[tuple[int, int]]]  # tensor -> [(node index, input slot)]; slot -1 = used inside a subgraph
    initializers: dict[str, onnx.TensorProto]
    graph_inputs: list[str]
    graph_outputs: list[str]
    by_name: dict[str, int] = field(default_factory=dict)

    @classmethod
    def build(cls, graph: onnx.GraphProto) -> "GraphIndex":
        nodes = list(graph.node)
        initializers = {t.name: t for t in graph.initializer}
        producer: dict[str, tuple[int, int]] = {}
        consumers: dict[str, list[tuple[int, int]]] = {}
        names: list[str] = []
        seen: set[str] = set()
        for i, node in enumerate(nodes):
            name = node.name or f"{node.op_type}_{i}"
            if name in seen:
                name = f"{name}__{i}"
            seen.add(name)
            names.append(name)
            for slot, tensor in enumerate(node.output):
                if tensor:
                    producer[tensor] = (i, slot)
            for slot, tensor in enumerate(node.input):
                if tensor:
                    consumers.setdefault(tensor, []).append((i, slot))
            for tensor in _outer_names_used_by_subgraphs(node):
                consumers.setdefault(tensor, []).append((i, -1))
        index = cls(
            graph=graph,
            nodes=nodes,
            names=names,
            producer=producer,
            consumers=consumers,
            initializers=initializers,
            graph_inputs=[v.name for v in graph.input if v.name not in initializers],
            graph_outputs=[v.name for v in graph.output],
        )
        index.by_name = {n: i for i, n in enumerate(names)}
        return index

    def producer_node(self, tensor: str) -> onnx.NodeProto | None:
        found = self.producer.get(tensor)
        return self.nodes[found[0]] if found else None

    def downstream(self, tensors, within: set[int] | None = None) -> set[int]:
        """Indices of the nodes that read any of `tensors`, directly or through other nodes (only nodes in
        `within`, when given, are entered)."""
        seen: set[int] = set()
        todo = [i for t in tensors for i, _ in self.consumers.get(t, []) if within is None or i in within]
        while todo:
            i = todo.pop()
            if i in seen:
                continue
            seen.add(i)
            for t in self.nodes[i].output:
                todo.extend(j for j, _ in self.consumers.get(t, []) if within is None or j in within)
        return seen


def attribute(node: onnx.NodeProto, name: str, default=None):
    """The value of a node attribute, or `default` when it is absent."""
    for attr in node.attribute:
        if attr.name == name:
            return onnx.helper.get_attribute_value(attr)
    return default


def attributes(node: onnx.NodeProto) -> dict[str, object]:
    """Every attribute of a node, name -> value."""
    return {attr.name: onnx.helper.get_attribute_value(attr) for attr in node.attribute}


def _outer_names_used_by_subgraphs(node: onnx.NodeProto) -> set[str]:
    """Names a node's subgraphs (If/Loop/Scan bodies) read from the enclosing scope."""
    used: set[str] = set()
    for attr in node.attribute:
        graphs = []
        if attr.type == onnx.AttributeProto.GRAPH:
            graphs = [attr.g]
        elif attr.type == onnx.AttributeProto.GRAPHS:
            graphs = list(attr.graphs)
        for sub in graphs:
            defined = {v.name for v in sub.input} | {t.name for t in sub.initializer}
            for inner in sub.node:
                defined.update(o for o in inner.output if o)
            for inner in sub.node:
                used.update(t for t in inner.input if t and t not in defined)
                used.update(t for t in _outer_names_used_by_subgraphs(inner) if t not in defined)
            used.update(v.name for v in sub.output if v.name not in defined)
    return used


class NameSource:
    """Fresh names derived from a base, never colliding with any name already in the graph."""

    def __init__(self, graph: onnx.GraphProto):
        self.taken: set[str] = {n.name for n in graph.node} | {t.name for t in graph.initializer}
        for values in (graph.input, graph.output, graph.value_info):
            self.taken.update(v.name for v in values)
        for node in graph.node:
            self.taken.update(node.input)
            self.taken.update(node.output)

    def fresh(self, base: str) -> str:
        name, k = base, 1
        while name in self.taken:
            name, k = f"{base}_{k}", k + 1
        self.taken.add(name)
        return name

    __call__ = fresh


def copy_fields_except(src, dst, skip: set[str]) -> None:
    """Copy every set field of protobuf message `src` into `dst`, except the fields named in `skip`."""
    for descriptor, value in src.ListFields():
        if descriptor.name not in skip:
            copy_field(dst, descriptor, value)


def copy_field(dst, descriptor, value) -> None:
    """Set field `descriptor` of protobuf message `dst` to `value` (as `ListFields()` gives them)."""
    if descriptor.is_repeated:
        getattr(dst, descriptor.name).extend(value)
    elif descriptor.message_type is not None:
        getattr(dst, descriptor.name).CopyFrom(value)
    else:
        setattr(dst, descriptor.name, value)


def zeros_like(tensor: str, name: str, types: dict[str, int]) -> list[onnx.NodeProto]:
    """Nodes making `name`: zeros of `tensor`'s shape and element type (Shape + ConstantOfShape)."""
    value = onnx.helper.make_tensor("value", types.get(tensor, onnx.TensorProto.FLOAT), [1], [0])
    return [onnx.helper.make_node("Shape", [tensor], [f"{name}_shape"], name=f"{name}/shape"),
            onnx.helper.make_node("ConstantOfShape", [f"{name}_shape"], [name], name=f"{name}/fill", value=value)]
