"""The latency outside the modelled layers, put on the activation tensors it reads and writes.

A model's measured latency minus its layers' (micro-graphs at full counts) is the work the micro-graphs do not
see: elementwise ops (a squeeze-excitation's Sigmoid and Mul, a swish), pooling, Concat, Resize, attention's
products of activations, and the per-run overhead. Part of it shrinks with the channels pruning removes (an
EfficientNet-B0-like model spends about 40 % of its latency there). A tensor with channel axes becomes a term
of the cost model (onnxprune.cost: `tensors`) that scales with its kept elements; the rest stays fixed.

`measured_terms` puts on a tensor what onnxruntime's profile of the whole model (timing.Timer.nodes) measured
for the node writing it, in context. A node's name in the optimised graph leads back to the model's node
(`source_node`): a fused node keeps the name of the node it grew from ("mul_45/QuickGeluFusion/"), a node of
the blocked layout is named after the tensor it writes ("clip_37_out_nchwc"); nodes the runtime made up
(layout reorders, "Gelu_token_12") and the gap between the kernels and the wall clock stay fixed. What
onnxruntime fuses into a layer costs nothing apart: MobileNetV2's residual Add runs inside the convolution
before it (the blocked conv's sum fusion), which a spread by elements got wrong (it put 1.4 of 9.7 ms on the
Add of a 24-channel stream, so the allocator cut that stream to 4 channels for a saving the model never showed).

`activation_terms` is the fallback when no per-node profile is at hand (a runtime whose profile has no node
events): the rest spread over the outputs of the model's other nodes in proportion to their elements (an
elementwise op's work is proportional to the tensor it writes), skipping the nodes onnxruntime fuses into a
layer (a BatchNormalization or activation right after it, a MatMul's bias Add).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping

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


def source_node(name: str, nodes: Mapping[str, object], producers: Mapping[str, object]):
    """The model's node an onnxruntime node name (of its optimised graph) stands for, or None: the name itself,
    the name without trailing "/part"s (a fusion: "mul_45/QuickGeluFusion/" of "mul_45"), or the producer of the
    tensor named by the name without one or two trailing "_word" parts (a blocked-layout node
    "clip_37_out_nchwc", a normalisation turned into one "batchnormalization_82_out_bn_nchwc")."""
    base = name
    while base:
        if base in nodes:
            return nodes[base]
        base = base.rstrip("/").rpartition("/")[0]
    base = name
    for _ in range(2):
        base = base.rpartition("_")[0]
        if base in producers:
            return producers[base]
    return None


def measured_terms(analysis: Analysis, layers: Iterable[str], node_ms: Mapping[str, float],
                   rest_ms: float) -> dict[str, tuple[int, int, float]]:
    """{tensor: (size_in, size_out, ms at full size)} for the prunable activation tensors written by the model's
    non-layer, non-fused nodes, each the kernel time onnxruntime's profile measured for its node in the whole
    model (`node_ms`: optimised-graph node name -> ms, see source_node); scaled down when they sum to more than
    `rest_ms` (the latency outside the layers)."""
    layers = set(layers)
    skip = layers | fused_nodes(analysis, layers)
    graph = analysis.model.graph
    nodes = {node.name: node for node in graph.node}
    producers = {out: node for node in graph.node for out in node.output if out}
    spent: dict[str, float] = {}
    for name, ms in sorted(node_ms.items()):
        node = source_node(name, nodes, producers)
        if node is not None and node.name not in skip and node.op_type not in SKIPPED_OPS and node.output:
            spent[node.output[0]] = spent.get(node.output[0], 0.0) + float(ms)
    terms = {}
    for tensor, ms in sorted(spent.items()):
        sizes = _term_sizes(analysis, tensor)
        if sizes is not None and ms > 0:
            terms[tensor] = (*sizes, ms)
    total = sum(ms for _, _, ms in terms.values())
    if rest_ms <= 0:
        return {}
    scale = min(1.0, rest_ms / total) if total else 1.0
    return {tensor: (i, o, ms * scale) for tensor, (i, o, ms) in terms.items()}


def _term_sizes(analysis: Analysis, tensor: str) -> tuple[int, int] | None:
    """(size_in, size_out) of a tensor term: its last two channel axes' sizes (one axis: size_in = 1), as
    onnxprune.budget.term_axes reads them; None when the tensor carries no channel axis."""
    axes = analysis.channels.tracked(tensor)
    if not axes:
        return None
    sizes = [len(axes[axis]) for axis in sorted(axes)][-2:]
    size_in, size_out = ([1] + sizes)[-2:]
    return int(size_in), int(size_out)


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
        sizes = _term_sizes(analysis, tensor)
        if sizes is None or not count:
            continue
        terms[tensor] = (*sizes, rest_ms * count / total)
    return terms
