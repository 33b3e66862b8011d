"""The latency outside the modelled layers, put on the activation tensors it reads and writes.

A model's measured latency minus its layers' (micro-graphs at full counts) is the work the micro-graphs do not
see: elementwise ops (a squeeze-excitation's Sigmoid and Mul, a swish), pooling, Concat, Resize, attention's
products of activations, and the per-run overhead. Part of it shrinks with the channels pruning removes (an
EfficientNet-B0-like model spends about 40 % of its latency there). A tensor with channel axes becomes a term
of the cost model (onnxprune.cost: `tensors`) that scales with its kept elements; the rest stays fixed.

`in_context` puts on a tensor what onnxruntime's profile of the whole model (timing.Timer.nodes) measured for
the node writing it, in context, and scales the layers' micro-graph curves to what the layers took in the
model. A node's name in the optimised graph leads back to the model's node (`source_node`): a fused node keeps
the name of the node it grew from ("mul_45/QuickGeluFusion/"), a node of the blocked layout is named after the
tensor it writes ("clip_37_out_nchwc"); nodes the runtime made up (layout reorders, "Gelu_token_12") count
with the layers, the gap between the kernels and the wall clock is fixed. What onnxruntime fuses into a layer
costs nothing apart: MobileNetV2's residual Add runs inside the convolution before it (the blocked conv's sum
fusion), which a spread by elements got wrong (it put 1.4 of 9.7 ms on the Add of a 24-channel stream, so the
allocator cut that stream to 4 channels for a saving the model never showed). And the part outside the layers
is not all fixed: a whole model timed on a loaded machine is stretched evenly, kernels and all, so leaving
everything but the layers' micro-graphs fixed made the predictions of an EfficientNet-B0-like model save a
third of what its measurements saved.

`activation_terms` is the fallback when no per-node profile is at hand (a runtime whose profile has no node
events): the rest spread over the outputs of the model's other nodes in proportion to their elements (an
elementwise op's work is proportional to the tensor it writes), skipping the nodes onnxruntime fuses into a
layer (a BatchNormalization or activation right after it, a MatMul's bias Add).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from onnxprune.coupling import Analysis
from onnxprune.profile.layers import ACTIVATIONS
from onnxprune.profile.products import ProductSpec, product_spec

SKIPPED_OPS = ("Constant", "Shape", "Size", "ConstantOfShape")


def fused_nodes(analysis: Analysis, layers: Iterable[str]) -> dict[str, str]:
    """{node: the layer it is fused into} for the nodes onnxruntime fuses into a layer: a BatchNormalization, an
    activation or (after a MatMul) an Add of a constant that alone reads a layer's (or such a fused node's)
    output."""
    graph = analysis.model.graph
    producer = {out: node for node in graph.node for out in node.output}
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    owners = {name: name for name in layers}
    fused: dict[str, str] = {}
    for node in graph.node:  # topological order: a chain is followed link by link
        source = producer.get(node.input[0]) if node.input else None
        if source is None or readers.get(node.input[0], 0) != 1:
            continue
        owner = owners.get(source.name) or fused.get(source.name)
        if owner is None:
            continue
        bias_add = node.op_type == "Add" and source.op_type == "MatMul" and any(
            analysis.channels.is_const(name) for name in node.input)
        if node.op_type == "BatchNormalization" or node.op_type in ACTIVATIONS or bias_add:
            fused[node.name] = owner
    return fused


def source_node(name: str, nodes: Mapping[str, object], producers: Mapping[str, object]):
    """The model's node an onnxruntime node name (of its optimised graph) stands for, or None: the name itself,
    the name without trailing "/part"s (a fusion: "mul_45/QuickGeluFusion/" of "mul_45"), or the producer of the
    tensor named by the name without one or two trailing "_word" parts (a blocked-layout node
    "clip_37_out_nchwc", a normalisation turned into one "batchnormalization_82_out_bn_nchwc"); a Gemm with its
    activation is "fused gemm_61"."""
    name = name.removeprefix("fused ")
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


@dataclass(frozen=True)
class InContext:
    """The whole model's measured latency split as its profile saw it (in the total's ms): `tensors` (terms of
    the non-layer nodes writing prunable tensors) and `scale` (the layers' time in context over their
    micro-graphs' sum); the rest is fixed (the time outside the kernels, the non-layer nodes writing tensors
    without channel axes). `layers`: each layer's own kernel time in the model, with what the runtime fused into
    it ({layer: ms}; layers the profile's names do not lead back to are left out)."""

    tensors: dict[str, tuple[int, int, float]]
    scale: float
    layers: dict[str, float]
    products: dict[str, tuple[ProductSpec, float]] = field(default_factory=dict)

    def products_as_linear(self, tensors: Iterable[str]) -> dict[str, tuple[int, int, float]]:
        """The tensor terms with the time of the products on `tensors` put back on their term, scaling with its
        kept elements (for products whose curve was not measured)."""
        out = dict(self.tensors)
        for tensor in tensors:
            spec, ms = self.products[tensor]
            size_in, size_out, linear = out.get(tensor, (1, spec.size, 0.0))
            out[tensor] = (size_in, size_out, linear + ms)
        return out


def in_context(analysis: Analysis, layers: Iterable[str], outside_ms: float, node_ms: Mapping[str, float],
               total: float, layer_sum: float, batch: int = 1) -> InContext | None:
    """The split of `total` (the whole model's measured ms) by its profile (`outside_ms` per run outside the
    kernels, `node_ms`: kernel ms per optimised-graph node, see source_node; timing.node_ms_per_run) given the
    modelled layers' micro-graph sum `layer_sum`; None when the profile has no kernel time.

    Each non-layer, non-fused node's kernel time goes to the tensor it writes (a term when the tensor has
    channel axes), or when that has none to a pruned tensor it reads (charged_tensor: attention's q @ k^T), else
    is fixed; the run's time outside the kernels is fixed; the remaining kernels (the layers with
    what the runtime fused into them, and the layout conversions the runtime put between them) are the layers in
    context: the layers' curves are scaled by that over `layer_sum`; what each layer's own nodes took is kept
    apart (`layers`: a layer's micro-graph can be off its time in the model either way, by up to a third on a
    VGG-like model, which one scale for all cannot see). The profile's ms are brought to the total's
    (total / the profile's run): the two were timed apart, and machine load stretches a run evenly. A product
    of two activations charged to a one-axis term (profile.products: attention's q @ k^T, p @ v) is kept apart in
    `products` ({tensor: (its ProductSpec, ms)}), to be charged along its measured curve; its term stays, with
    the rest of the tensor's time (possibly none)."""
    kernels = sum(node_ms.values())
    if kernels <= 0 or layer_sum <= 0:
        return None
    run_ms = kernels + max(outside_ms, 0.0)
    to_total = total / run_ms
    layers = set(layers)
    owner = {**fused_nodes(analysis, layers), **{name: name for name in layers}}
    graph = analysis.model.graph
    nodes = {node.name: node for node in graph.node}
    producers = {out: node for node in graph.node for out in node.output if out}
    spent: dict[str, float] = {}
    own: dict[str, float] = {}
    products: dict[str, tuple[ProductSpec, float]] = {}
    for name, ms in sorted(node_ms.items()):
        node = source_node(name, nodes, producers)
        if node is not None and node.name in owner:
            own[owner[node.name]] = own.get(owner[node.name], 0.0) + float(ms) * to_total
        elif node is not None and node.op_type not in SKIPPED_OPS and node.output:
            tensor = charged_tensor(analysis, node)
            spec = product_spec(analysis, node, tensor, batch) if tensor not in products else None
            if spec is not None:
                products[tensor] = (spec, float(ms) * to_total)
            else:
                spent[tensor] = spent.get(tensor, 0.0) + float(ms)
    tensors = {}
    for tensor in sorted({*spent, *products}):
        sizes = _term_sizes(analysis, tensor)
        if sizes is not None and (spent.get(tensor, 0.0) > 0 or tensor in products):
            tensors[tensor] = (*sizes, spent.get(tensor, 0.0) * to_total)
    in_layers = kernels - sum(spent.values()) - sum(ms for _, ms in products.values()) / to_total
    return InContext(tensors, in_layers * to_total / layer_sum, {name: ms for name, ms in sorted(own.items())
                                                                  if ms > 0}, products)


def charged_tensor(analysis: Analysis, node) -> str:
    """The tensor whose term pays for a non-layer node's time: the tensor it writes, unless that carries no
    pruned axis and a tensor it reads does (a product or reduction over a pruned axis: attention's q @ k^T writes
    heads x tokens x tokens, but its work follows the q / k head dim it sums over; a mean over channels); then
    the first such input. A node reading no pruned axis either stays on its output (a fixed cost)."""
    out = node.output[0]
    if analysis.channels.tracked(out):
        return out
    return next((name for name in node.input if name and not analysis.channels.is_const(name)
                 and analysis.channels.tracked(name)), out)


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
    skip = layers | fused_nodes(analysis, layers).keys()
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
