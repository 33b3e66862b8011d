"""The part of a model a set of tensors depends on: a reconstruction pass runs only that far."""
from __future__ import annotations

from collections.abc import Iterable, Sequence, Set

import onnx

from onnxprune.graph import GraphIndex, copy_fields_except


def upstream_model(model: onnx.ModelProto, outputs: list[str],
                   known: Sequence[onnx.ValueInfoProto] = ()) -> onnx.ModelProto:
    """A new model holding only the nodes (and initializers) that `outputs` depend on, with `outputs` as its
    graph outputs. The graph inputs stay as they are (every calibration feed still fits); a tensor that is a
    graph input or an initializer is not a valid output and must not be asked for. `known` tensors are given
    rather than computed: those the outputs depend on become graph inputs too (after the model's own), and
    the nodes behind them are left out; they are not valid outputs either."""
    index = GraphIndex.build(model.graph)
    needed = upstream_nodes(index, outputs, {v.name for v in known})
    used = {t for i in needed for t in node_reads(index.nodes[i])}
    out = onnx.ModelProto()
    copy_fields_except(model, out, {"graph"})  # opsets, functions, metadata (the external data origin too)
    copy_fields_except(model.graph, out.graph, {"node", "initializer", "sparse_initializer", "output",
                                                 "value_info"})
    out.graph.node.extend(index.nodes[i] for i in sorted(needed))
    out.graph.initializer.extend(t for t in model.graph.initializer if t.name in used)
    out.graph.sparse_initializer.extend(t for t in model.graph.sparse_initializer if t.values.name in used)
    out.graph.input.extend(v for v in known if v.name in used)
    out.graph.output.extend(onnx.ValueInfoProto(name=t) for t in outputs)
    return out


def upstream_nodes(index: GraphIndex, outputs: Iterable[str], known: Set[str] = frozenset()) -> set[int]:
    """Positions of the nodes `outputs` depend on, not looking behind the `known` tensors."""
    needed: set[int] = set()
    todo = [index.producer[t][0] for t in outputs if t in index.producer and t not in known]
    while todo:
        i = todo.pop()
        if i in needed:
            continue
        needed.add(i)
        for tensor in node_reads(index.nodes[i]):
            if tensor in index.producer and tensor not in known:
                todo.append(index.producer[tensor][0])
    return needed


def node_reads(node: onnx.NodeProto) -> list[str]:
    """The tensors a node reads: its inputs and the outer names its subgraphs read."""
    return list(node.input) + _outer_inputs(node)


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
