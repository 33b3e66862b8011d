"""The part of a model a set of tensors depends on: a reconstruction pass runs only that far."""
from __future__ import annotations

import onnx

from onnxprune.graph import GraphIndex, copy_fields_except


def upstream_model(model: onnx.ModelProto, outputs: list[str]) -> onnx.ModelProto:
    """A new model holding only the nodes (and initializers) that `outputs` depend on, with `outputs` as its
    graph outputs. The graph inputs stay as they are (every calibration feed still fits); a tensor that is a
    graph input or an initializer is not a valid output and must not be asked for."""
    index = GraphIndex.build(model.graph)
    needed: set[int] = set()
    todo = [index.producer[t][0] for t in outputs if t in index.producer]
    while todo:
        i = todo.pop()
        if i in needed:
            continue
        needed.add(i)
        node = index.nodes[i]
        for tensor in list(node.input) + _outer_inputs(node):
            if tensor in index.producer:
                todo.append(index.producer[tensor][0])
    used = {t for i in needed for t in list(index.nodes[i].input) + _outer_inputs(index.nodes[i])}
    out = onnx.ModelProto()
    copy_fields_except(model, out, {"graph"})  # opsets, functions, metadata (the external data origin too)
    copy_fields_except(model.graph, out.graph, {"node", "initializer", "sparse_initializer", "output",
                                                 "value_info"})
    out.graph.node.extend(index.nodes[i] for i in sorted(needed))
    out.graph.initializer.extend(t for t in model.graph.initializer if t.name in used)
    out.graph.sparse_initializer.extend(t for t in model.graph.sparse_initializer if t.values.name in used)
    out.graph.output.extend(onnx.ValueInfoProto(name=t) for t in outputs)
    return out


def _outer_inputs(node: onnx.NodeProto) -> list[str]:
    """Names a node's subgraphs read (outer scope included; a superset is harmless here)."""
    names = []
    for attr in node.attribute:
        graphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
        for g in graphs:
            for inner in g.node:
                names.extend(inner.input)
                names.extend(_outer_inputs(inner))
    return names
