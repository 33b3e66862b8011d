"""Entry points: re-fit the consumers of pruned channels, or the last factor of decomposition chains."""
from __future__ import annotations

from typing import Any

import numpy as np
import onnx

from onnxprune import ir
from onnxprune.graph import GraphIndex
from onnxprune.reconstruction import layers
from onnxprune.reconstruction.attention import drifted_layers, find_attention, query_maps
from onnxprune.reconstruction.refit import (ACTIVATION_AWARE, DEFAULT_PASSES, DEFAULT_RIDGE, InputView,
                                            LayerReconstruction, Reconstruction, refit)


def pruned_consumers(model: onnx.ModelProto, channels: dict[str, dict]) -> dict[str, np.ndarray | None]:
    """{node name: kept output positions or None} for every Conv / Gemm / MatMul of the pruned `model`
    whose input's channel axis (Conv: 1, Gemm: 1, MatMul: last) shrank, per the pruning record. Names are
    GraphIndex names (unnamed nodes get unique ones), so GraphIndex.by_name resolves them."""
    names = GraphIndex.build(model.graph).names
    shapes = ir.infer_shapes(model)
    inits = {t.name for t in model.graph.initializer}
    found: dict[str, np.ndarray | None] = {}
    for i, node in enumerate(model.graph.node):
        if node.op_type not in layers.OPS or not node.input or node.input[0] not in channels:
            continue
        if node.op_type == "MatMul" and (len(node.input) < 2 or node.input[1] not in inits):
            continue
        rank = len(shapes.get(node.input[0]) or ())
        axis = 1 if node.op_type in ("Conv", "Gemm") else rank - 1
        if axis < 0 or axis not in _axes(channels[node.input[0]], rank):
            continue
        found[names[i]] = _out_keep(node, model, channels)
    return found


def _axes(entry: dict, rank: int) -> list[int]:
    return [a % rank if rank else a for a in entry.get("axes", [])]


def _out_keep(node: onnx.NodeProto, model: onnx.ModelProto, channels: dict) -> np.ndarray | None:
    """Kept positions of the node's output channel axis (the output's own record, or its bias Add's)."""
    entry = channels.get(node.output[0])
    if entry is None:
        return None
    if len(entry["axes"]) != 1:
        return np.zeros(0, dtype=np.int64)  # several axes: marked, refused by the caller
    return np.flatnonzero(np.asarray(entry["mask"], dtype=bool))


def reconstruct_pruned(original, result, calibration: Any, *, ridge: float = DEFAULT_RIDGE,
                       batch_size: int | None = None, attention: bool = True,
                       passes: int | None = DEFAULT_PASSES, activation_aware: bool = ACTIVATION_AWARE) -> Reconstruction:
    """Re-fit, in place on `result.model`, every layer that reads pruned channels; sets and returns
    `result.reconstruction`. `original` is the unpruned model (ModelProto or path).

    attention: also re-fit every layer downstream of a pruned tensor (its input drifted), and fit the query
    projection of a block whose query/key dims were pruned against the unpruned attention logits
    (onnxprune.reconstruction.attention); False re-fits only the layers reading pruned channels, each against
    its own unpruned output. activation_aware: as in refit (a layer read by a Relu / Clip alone is fitted
    where the activation passes its target)."""
    original = ir.load_model(original)
    targets = pruned_consumers(result.model, result.channels)
    maps = {}
    if attention:
        index = GraphIndex.build(result.model.graph)
        for name in drifted_layers(result.model, set(result.channels)):
            targets.setdefault(name, _out_keep(index.nodes[index.by_name[name]], result.model, result.channels))
        keeps = {}
        blocks = find_attention(original)
        for b in blocks:
            for name in (b.query, b.key):
                if name in index.by_name:
                    keep = _out_keep(index.nodes[index.by_name[name]], result.model, result.channels)
                    if keep is not None and len(keep):
                        keeps[name] = keep
        maps = query_maps(original, blocks, keeps, calibration, **({} if batch_size is None else
                                                                   {"batch_size": batch_size}))
        for name in maps:
            targets[name] = keeps[name]
    usable = {n: k for n, k in targets.items() if k is None or len(k)}
    kwargs = {} if batch_size is None else {"batch_size": batch_size}
    report = refit(original, result.model, usable, calibration, ridge=ridge, maps=maps, passes=passes,
                   views=input_views(original, result.model, result.channels, usable),
                   activation_aware=activation_aware, **kwargs)
    for name in targets.keys() - usable.keys():
        report.layers.append(LayerReconstruction(name, "?", skipped="its output is pruned along several axes"))
    result.reconstruction = report
    return report


def input_views(original: onnx.ModelProto, model: onnx.ModelProto, channels: dict[str, dict],
                names) -> dict[str, InputView]:
    """{input tensor: InputView} for the layers `names` of the pruned `model` whose input is a tensor of
    `original` too, whole or pruned along its channel axis alone (Conv, Gemm: 1; MatMul: last): a pass of
    several stages reads those from the unpruned model (refit's `views`)."""
    index = GraphIndex.build(model.graph)
    shapes = ir.infer_shapes(model)
    known = {v.name for v in original.graph.input} | {t for n in original.graph.node for t in n.output}
    views = {}
    for name in names:
        node = index.nodes[index.by_name[name]] if name in index.by_name else None
        if node is None or not node.input or node.input[0] not in known:
            continue
        x = node.input[0]
        rank = len(shapes.get(x) or ())
        axis = 1 if node.op_type in ("Conv", "Gemm") else rank - 1
        entry = channels.get(x)
        if entry is None:
            views[x] = InputView(x, axis)
        elif axis >= 0 and _axes(entry, rank) == [axis]:
            views[x] = InputView(x, axis, np.flatnonzero(np.asarray(entry["mask"], dtype=bool)))
    return views


def reconstruct_chains(source: onnx.ModelProto, model: onnx.ModelProto, last_nodes: list[str], calibration: Any, *,
                       ridge: float = DEFAULT_RIDGE, batch_size: int | None = None) -> Reconstruction:
    """Re-fit, in place on the decomposed `model`, the last node of each chain to reproduce `source`'s
    output of the replaced layer (the chain's last node writes that same tensor)."""
    kwargs = {} if batch_size is None else {"batch_size": batch_size}
    return refit(source, model, {name: None for name in last_nodes}, calibration, ridge=ridge, **kwargs)
