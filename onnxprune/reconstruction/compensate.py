"""Mean compensation: every Conv / Gemm / MatMul that read a removed channel gets that channel's mean over the
calibration data folded into its bias, as if the channel were still there holding its mean.

Pruning drops a channel's whole contribution, including its average level (for a BN-folded Conv + ReLU
that is often most of it: relu(bias)). The next layers' statistics then shift, which is what makes freshly
pruned networks collapse to one class (the reason EagleEye re-estimates BN statistics, Li et al. 2020).
Compensation puts the removed channels' mean back: for a consumer with weight W and removed input channels
R, bias += sum_{c in R} mean_c * sum_kernel W[:, c] (Gemm: alpha * mean_R @ B). It costs one onnxruntime
pass over the calibration data on the ORIGINAL model (the means) and writes biases only.

Exactness (the compensation oracle, `verify_compensation`): the compensated model equals the masked
original (mask oracle) in which every compensated layer sees its removed input channels holding their mean,
zero padding included (a padded Conv's padding is made explicit before the means are put in).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxprune import calibration as calib
from onnxprune import ir
from onnxprune.errors import InvalidRequestError
from onnxprune.graph import GraphIndex
from onnxprune.reconstruction import layers
from onnxprune.reconstruction.api import pruned_consumers


@dataclass
class CompensatedLayer:
    """One consumer: how many of its input channels were compensated and the largest bias change."""

    name: str
    op_type: str
    output: str = ""  # the layer's output tensor (its name in the original and the pruned model)
    channels: int = 0
    max_shift: float = 0.0
    skipped: str | None = None


@dataclass
class Compensation:
    layers: list[CompensatedLayer] = field(default_factory=list)
    # layer name -> (removed mask along the layer's input channel axis, its input's channel means)
    means: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    tensor_means: dict[str, np.ndarray] = field(default_factory=dict)  # input tensor -> per-channel means
    verification: Any = None  # the compensation oracle's VerifyReport, when prune(verify=True) ran it

    @property
    def compensated(self) -> list[CompensatedLayer]:
        return [r for r in self.layers if r.skipped is None]

    def as_dict(self) -> dict:
        return {"layers": [vars(r).copy() for r in self.layers]}

    def __str__(self) -> str:
        width = max([32] + [len(r.name) for r in self.layers])  # the layer column fits every name
        rows = [f"mean compensation: {len(self.compensated)} layers took the calibration mean of their removed "
                f"input channels into their bias",
                f"  {'layer':<{width}} {'op':<7} {'channels':>8} {'max |shift|':>11}"]
        for r in self.layers:
            if r.skipped is not None:
                rows.append(f"  {r.name:<{width}} {r.op_type:<7} skipped: {r.skipped}")
            else:
                rows.append(f"  {r.name:<{width}} {r.op_type:<7} {r.channels:>8} {r.max_shift:>11.4g}")
        return "\n".join(rows)


def compensate_pruned(original, result, calibration: Any, *, batch_size: int = calib.DEFAULT_BATCH_SIZE,
                      tensor_means: dict[str, np.ndarray] | None = None) -> Compensation:
    """Fold the removed channels' calibration means into the biases of `result.model` (in place); sets and
    returns `result.compensation`. `original` is the unpruned model (ModelProto or path). `tensor_means`
    (a Compensation's, for the same original) replaces the calibration pass where it has the tensor."""
    tensor_means = dict(tensor_means or {})
    original = ir.load_model(original)
    report = Compensation()
    index_orig = GraphIndex.build(original.graph)
    index_pruned = GraphIndex.build(result.model.graph)
    todo: list[tuple[str, layers.Consumer, layers.Consumer, np.ndarray]] = []
    for name, keep in pruned_consumers(result.model, result.channels).items():
        node = index_pruned.nodes[index_pruned.by_name[name]]
        output = node.output[0]  # activation names survive surgery: the same tensor in the original
        i = index_orig.producer[output][0]
        row = CompensatedLayer(index_orig.names[i], node.op_type, output)
        report.layers.append(row)
        try:
            if keep is not None and not len(keep):
                raise layers.Skip("its output is pruned along several axes")
            source = layers.find_at(original, index_orig, i, None)
            target = layers.find(result.model, index_pruned, name, keep)
            if target.op_type == "MatMul" and target.bias is None:
                raise layers.Skip("a MatMul without a bias Add has no bias to absorb the shift")
            removed = _removed(result.channels[source.x])
        except layers.Skip as exc:
            row.skipped = str(exc)
            continue
        todo.append((row, source, target, removed))
    for node in result.model.graph.node:
        if node.op_type == "ConvTranspose" and node.input and node.input[0] in result.channels:
            report.layers.append(CompensatedLayer(node.name or node.output[0], node.op_type, node.output[0],
                                                  skipped="ConvTranspose layers are not compensated"))
    if not todo:
        result.compensation = report
        return report
    requests = {x: calib.SampleMean((x,), _per_channel_mean(axis)) for x, _, axis in
                dict.fromkeys((s.x, s.op_type, s.layout.x_axis) for _, s, _, _ in todo) if x not in tensor_means}
    if requests:
        if callable(calibration):  # a function returning a fresh iterable, as reconstruction accepts
            calibration = calibration()
        if calibration is None:
            raise InvalidRequestError("mean compensation needs calibration data: pass calibration=... (a dict of "
                                      "input arrays, an array for a single-input model, an iterable of either, or "
                                      "a path)")
        tensor_means.update(calib.collect(original, calibration, requests, batch_size=batch_size))
    means = report.tensor_means = tensor_means
    for row, source, target, removed in todo:
        mean = np.asarray(means[source.x], dtype=np.float64)
        delta = _shift(layers.current(original, source), source, removed, mean)
        if target.out_keep is not None:
            delta = delta[target.out_keep]
        layers.add_to_bias(result.model, target, delta)
        report.means[row.name] = (removed, mean)
        row.channels = int(removed.sum())
        row.max_shift = float(np.abs(delta).max()) if delta.size else 0.0
    result.compensation = report
    return report


def _removed(entry: dict) -> np.ndarray:
    """Removed positions (bool) along the layer's input channel axis, from the pruning record entry."""
    if len(entry["axes"]) != 1:
        raise layers.Skip("its input is pruned along several axes (heads x dims)")
    return ~np.asarray(entry["mask"], dtype=bool)


def _per_channel_mean(axis: int):
    """Per-sample channel means along the layer's input channel axis (1 for Conv / Gemm, the last for MatMul)."""
    def per_sample(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if axis != 1:
            x = np.moveaxis(x, axis, 1) if x.ndim > 1 else x[None]
        return x.reshape(x.shape[0], x.shape[1], -1).mean(axis=2)
    return per_sample


def _shift(theta: np.ndarray, c: layers.Consumer, removed: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Per output channel: what the removed channels, each holding its mean, added to the layer's output."""
    held = np.where(removed, mean, 0.0)
    if c.op_type == "Conv":
        g, rows, per_group = theta.shape[0], theta.shape[1] - 1, theta.shape[2]
        cin = held.size
        kernel = rows // (cin // g)
        w = theta[:, :rows, :].reshape(g, cin // g, kernel, per_group).sum(axis=2)  # (g, cin/g, cout/g)
        return np.einsum("gc,gco->go", held.reshape(g, cin // g), w).reshape(-1)
    return held @ theta[0, :-1, :]


# --------------------------------------------------------------------------- the oracle

def compensation_reference(original, result) -> onnx.ModelProto:
    """The masked original (removed channels zeroed, as in the mask oracle) in which every compensated layer
    reads its removed input channels as their calibration means, explicit zero padding included."""
    from onnxprune.verify import channel_masks, masked_original

    original = ir.load_model(original)
    if getattr(result, "compensation", None) is None:
        raise InvalidRequestError("this result was not compensated: prune(..., compensate=True, calibration=...)")
    model, _ = masked_original(original, channel_masks(original, result.channels))
    graph = model.graph
    index = GraphIndex.build(graph)
    shapes = ir.infer_shapes(original)
    inserts: dict[int, list[onnx.NodeProto]] = {}
    for row in result.compensation.compensated:
        removed, mean, output = *result.compensation.means[row.name], row.output
        producer = index.producer.get(output)
        if producer is None or graph.node[producer[0]].op_type not in layers.OPS:
            producer = index.producer[f"{output}/premask"]  # masked_original renamed the masked output t
        i = producer[0]
        node = graph.node[i]
        c = layers.find_at(model, index, i, None)
        name = index.names[i]
        x = node.input[0]
        shape = [1] * len(shapes.get(x) or ())
        shape[c.layout.x_axis] = removed.size
        dtype = helper.tensor_dtype_to_np_dtype(index.initializers[c.weight].data_type)
        new: list[onnx.NodeProto] = []
        if c.op_type == "Conv":
            pads = layers.conv_pads(c.attrs, (shapes.get(x) or ())[2:])
            if any(pads):
                n = len(pads) // 2
                new.append(_pad_node(model, x, [0, 0] + pads[:n] + [0, 0] + pads[n:], f"{x}/padded_for_{name}",
                                     f"{name}/explicit_pad"))
                x = f"{x}/padded_for_{name}"
                _set_no_padding(node, n)
        held = np.where(removed, mean, 0.0).reshape(shape).astype(dtype)  # x is 0 there: the mask oracle's zeros
        graph.initializer.append(numpy_helper.from_array(held, f"{name}/held_means"))
        new.append(helper.make_node("Add", [x, f"{name}/held_means"], [f"{x}/compensated_for_{name}"],
                                    name=f"{name}/hold_means"))
        node.input[0] = f"{x}/compensated_for_{name}"
        inserts[i] = new
    nodes = []
    for i, node in enumerate(graph.node):
        nodes.extend(inserts.get(i, []))
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    return model


def _pad_node(model: onnx.ModelProto, x: str, pads: list[int], out: str, name: str) -> onnx.NodeProto:
    """Zero padding as its own node (pads as an input from opset 11, an attribute before)."""
    if ir.opset_version(model, default=11) >= 11:
        model.graph.initializer.append(numpy_helper.from_array(np.array(pads, dtype=np.int64), f"{name}/pads"))
        return helper.make_node("Pad", [x, f"{name}/pads"], [out], name=name)
    return helper.make_node("Pad", [x], [out], name=name, pads=pads)


def _set_no_padding(node: onnx.NodeProto, n: int) -> None:
    kept = [a for a in node.attribute if a.name not in ("pads", "auto_pad")]
    del node.attribute[:]
    node.attribute.extend(kept)
    node.attribute.append(helper.make_attribute("pads", [0] * (2 * n)))


def verify_compensation(original, result, inputs=None, *, tol: float | None = None):
    """The compensation oracle: `result.model` vs compensation_reference(); a VerifyReport. Default tolerance
    1e-4, 5e-3 for float16 / bfloat16 weights (the bias and the held means are rounded to them)."""
    from onnxprune.verify import verify

    reference = compensation_reference(original, result)
    if tol is None:
        half = {onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
        tol = 5e-3 if any(t.data_type in half for t in reference.graph.initializer) else 1e-4
    return verify(reference, result.model, inputs, tol=tol)
