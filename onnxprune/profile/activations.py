"""The latency outside the modelled layers, spread over the activation tensors it reads and writes.

A model's measured latency minus its layers' (micro-graphs at full counts) is the work the micro-graphs do not
see: elementwise ops (a squeeze-excitation's Sigmoid and Mul, a swish), pooling, Concat, Resize, and what a layer
costs more inside a model than alone. Much of it shrinks with the channels pruning removes (an EfficientNet-B0-
like model spends about 40 % of its latency there). `activation_terms` spreads it over the outputs of the
model's other nodes in proportion to their elements (an elementwise op's work is proportional to the tensor it
writes), skipping the nodes onnxruntime fuses into a layer (a BatchNormalization or activation right after it,
a MatMul's bias Add). A tensor with channel axes becomes a term of the cost model (onnxprune.cost: `tensors`)
that scales with its kept elements; the share of the other tensors stays fixed.
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from onnxprune.coupling import Analysis
from onnxprune.profile.layers import ACTIVATIONS

SKIPPED_OPS = ("Constant", "Shape", "Size", "ConstantOfShape")


def fused_nodes(analysis: Analysis, layers: Iterable[str]) -> set[str]:
    """Names of the nodes onnxruntime fuses into a layer: a BatchNormalization, an activation or (after a MatMul)
    an Add of a constant that alone reads a layer's (or such a fused node's) output."""
    graph = analysis.model.graph
    producer = {out: node for node in graph.node for out in node.output}
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    owners = set(layers)
    fused: set[str] = set()
    for node in graph.node:  # topological order: a chain is followed link by link
        source = producer.get(node.input[0]) if node.input else None
        if source is None or source.name not in owners | fused or readers.get(node.input[0], 0) != 1:
            continue
        bias_add = node.op_type == "Add" and source.op_type == "MatMul" and any(
            analysis.channels.is_const(name) for name in node.input)
        if node.op_type == "BatchNormalization" or node.op_type in ACTIVATIONS or bias_add:
            fused.add(node.name)
    return fused


def activation_terms(analysis: Analysis, layers: Iterable[str], rest_ms: float,
                     batch: int) -> dict[str, tuple[int, int, float]]:
    """{tensor: (size_in, size_out, ms at full size)} for the prunable activation tensors: `rest_ms` (the
    latency outside the layers) spread over the outputs of the non-layer, non-fused nodes by their elements
    (symbolic dims = `batch`); size_in / size_out are the tensor's last two channel axes' sizes (one axis:
    size_in = 1), as onnxprune.budget.term_axes reads them."""
    layers = set(layers)
    skip = layers | fused_nodes(analysis, layers)
    channels = analysis.channels
    elements: dict[str, int] = {}
    for node in analysis.model.graph.node:
        if node.name in skip or node.op_type in SKIPPED_OPS:
            continue
        for tensor in node.output:
            shape = channels.shape(tensor) if tensor else None
            if shape is None or any(d is None for d in shape):
                continue
            elements[tensor] = int(np.prod([d if isinstance(d, int) else int(batch) for d in shape]))
    total = sum(elements.values())
    if rest_ms <= 0 or not total:
        return {}
    terms = {}
    for tensor, count in sorted(elements.items()):
        axes = channels.tracked(tensor)
        if not axes or not count:
            continue
        sizes = [len(axes[axis]) for axis in sorted(axes)][-2:]
        size_in, size_out = ([1] + sizes)[-2:]
        terms[tensor] = (int(size_in), int(size_out), rest_ms * count / total)
    return terms
