"""Re-fitting that knows attention: what a layer should reproduce when its own output is not the point.

Per-layer re-fitting asks each layer that reads pruned channels to reproduce its own unpruned output. In an
attention block that misses two things:

* Query/key dims pruned inside the heads: no layer reads a pruned channel (Q and K meet in an activation
  MatMul), so nothing is re-fitted, yet every logit lost the removed dims' share q_R . k_R. Over the
  calibration data the removed key dims are regressed on the kept ones, per head, with an intercept:
  k_R ~ A k_S + c. Then q . k ~ (q_S + q_R A) . k_S + q_R . c, and the last term is the same for every key
  of a query, which softmax ignores. So the query projection's target becomes q_S + q_R A (`query_maps`):
  its kept columns absorb what the removed ones contributed to the logits, fitted against the unpruned
  logits rather than against its own unpruned columns.
* Layers whose input is not pruned but drifted (the output projection after a pruned Q/K, the Q/K/V and
  first MLP layer of every later block): they are re-fitted too, against their unpruned outputs
  (`drifted_layers`), so every block is corrected in turn, not only the layers next to a cut. The output
  projection is then fitted against the unpruned attention output and the MLP's second layer against the
  unpruned MLP output, whichever of their inputs was pruned.

Attention blocks are found by pattern (`find_attention`): a MatMul of two computed tensors whose result
reaches a Softmax through scalar Mul/Div/Add, each side traced back through Reshape / Transpose / scalar
Mul, Div / Identity to a MatMul or Gemm with a constant weight (and its bias Add).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from onnxprune import calibration as calib
from onnxprune.graph import GraphIndex
from onnxprune.reconstruction import layers
from onnxprune.workflows.metric_key import QuietStream

_PASS = ("Reshape", "Transpose", "Identity", "Mul", "Div", "Squeeze", "Unsqueeze")
_SCORE = ("Mul", "Div", "Add", "Sub", "Where", "Cast")
_KEY_RIDGE = 1e-4  # relative to the mean diagonal of the kept key dims' Gram


@dataclass(frozen=True)
class Attention:
    """One attention block of the original model: node names of its query and key projections, the key
    projection's output tensor (the layer's output, after its bias Add if any) and the head size."""

    query: str
    key: str
    key_output: str
    query_output: str
    head_size: int


def find_attention(model: onnx.ModelProto) -> list[Attention]:
    """The attention blocks of `model` whose query and key sides each lead back to one projection layer."""
    index = GraphIndex.build(model.graph)
    found = []
    for i, node in enumerate(index.nodes):
        if node.op_type != "MatMul" or len(node.input) != 2 or any(t in index.initializers for t in node.input):
            continue
        if not _reaches_softmax(index, node.output[0]):
            continue
        sides = [_projection(index, model, t) for t in node.input]
        if any(s is None for s in sides):
            continue
        (q, q_out, q_head), (k, k_out, k_head) = sides
        head = k_head or q_head
        if q == k or head is None:
            continue
        found.append(Attention(index.names[q], index.names[k], k_out, q_out, head))
    return found


def _reaches_softmax(index: GraphIndex, tensor: str) -> bool:
    for _ in range(6):
        uses = index.consumers.get(tensor, [])
        if len(uses) != 1:
            return False
        node = index.nodes[uses[0][0]]
        if node.op_type == "Softmax":
            return True
        if node.op_type not in _SCORE:
            return False
        tensor = node.output[0]
    return False


def _projection(index: GraphIndex, model: onnx.ModelProto, tensor: str):
    """(node index, output tensor, head size) of the projection a side of the logits MatMul comes from."""
    head = None
    for _ in range(8):
        if tensor not in index.producer:
            return None
        i = index.producer[tensor][0]
        node = index.nodes[i]
        if node.op_type == "Add":  # a bias Add: the projection is its computed input
            computed = [t for t in node.input if t not in index.initializers]
            if len(computed) != 1:
                return None
            inner = computed[0]
            j = index.producer.get(inner, (None,))[0]
            if j is not None and _is_projection(index, index.nodes[j]):
                return j, node.output[0], head
            return None
        if _is_projection(index, node):
            return i, node.output[0], head
        if node.op_type not in _PASS:
            return None
        if node.op_type == "Reshape" and head is None:
            head = _head_size(index, model, node)
        if node.op_type in ("Mul", "Div") and not any(t in index.initializers for t in node.input[1:]):
            return None
        tensor = node.input[0]
    return None


def _is_projection(index: GraphIndex, node: onnx.NodeProto) -> bool:
    return node.op_type in ("MatMul", "Gemm") and len(node.input) > 1 and node.input[1] in index.initializers


def _head_size(index: GraphIndex, model: onnx.ModelProto, node: onnx.NodeProto) -> int | None:
    """The last dim of a Reshape into heads, when its shape is a constant or a Concat ending in one."""
    shape = node.input[1] if len(node.input) > 1 else ""
    value = _constant(index, shape)
    if value is not None and len(value) >= 3 and value[-1] > 0:
        return int(value[-1])
    if shape in index.producer:
        concat = index.nodes[index.producer[shape][0]]
        if concat.op_type == "Concat" and concat.input:
            last = _constant(index, concat.input[-1])
            if last is not None and len(last) == 1 and last[0] > 0:
                return int(last[0])
    return None


def _constant(index: GraphIndex, tensor: str) -> np.ndarray | None:
    if tensor in index.initializers:
        return onnx.numpy_helper.to_array(index.initializers[tensor]).reshape(-1)
    if tensor in index.producer:
        node = index.nodes[index.producer[tensor][0]]
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    return onnx.numpy_helper.to_array(attr.t).reshape(-1)
    return None


# --------------------------------------------------------------------------- the key regression

class HeadGram:
    """Per head, the streamed Gram matrix of [k_head, 1] over all rows (samples x tokens) of a key output."""

    def __init__(self, tensor: str, head_size: int) -> None:
        self.tensors = (tensor,)
        self.head_size = head_size
        self.G: np.ndarray | None = None

    def update(self, k: np.ndarray) -> None:
        rows = np.asarray(k, dtype=np.float64).reshape(-1, k.shape[-1])
        heads = rows.shape[1] // self.head_size
        x = rows.reshape(len(rows), heads, self.head_size).transpose(1, 0, 2)
        xa = np.concatenate([x, np.ones(x.shape[:2] + (1,))], axis=2)
        g = xa.transpose(0, 2, 1) @ xa
        self.G = g if self.G is None else self.G + g

    def result(self) -> np.ndarray | None:
        return self.G


def query_maps(original: onnx.ModelProto, blocks: list[Attention], keeps: Mapping[str, np.ndarray],
               calibration: Any, batch_size: int = calib.DEFAULT_BATCH_SIZE) -> dict[str, np.ndarray]:
    """{query node name: T (full query columns x kept columns)} so that the query's target is q_ref @ T
    (see the module doc); `keeps` gives the kept key columns of the blocks whose Q/K dims were pruned (one
    onnxruntime pass of `original` over the calibration data)."""
    pruned = [b for b in blocks if b.key in keeps and b.query in keeps]
    if not pruned:
        return {}
    grams = calib.collect(original, calibration, {b.key: HeadGram(b.key_output, b.head_size) for b in pruned},
                          batch_size=batch_size, stream=QuietStream())
    maps = {}
    for b in pruned:
        gram = grams[b.key]
        if gram is None:
            continue
        maps[b.query] = _query_map(gram, b.head_size, keeps[b.key])
    return maps


def _query_map(gram: np.ndarray, head_size: int, keep: np.ndarray) -> np.ndarray:
    heads = gram.shape[0]
    full = heads * head_size
    kept = np.zeros(full, dtype=bool)
    kept[keep] = True
    position = {int(j): p for p, j in enumerate(np.flatnonzero(kept))}
    t = np.zeros((full, int(kept.sum())))
    for h in range(heads):
        cols = np.arange(h * head_size, (h + 1) * head_size)
        s = cols[kept[cols]] - h * head_size
        r = cols[~kept[cols]] - h * head_size
        targets = [position[int(h * head_size + j)] for j in s]
        t[h * head_size + s, targets] = 1.0
        if not len(s) or not len(r):
            continue
        g = gram[h]
        sa = np.append(s, head_size)  # kept dims and the intercept
        a = g[np.ix_(sa, sa)]
        lam = _KEY_RIDGE * max(float(np.mean(np.diag(a)[:-1])), 1e-12)
        a = a + lam * np.diag(np.append(np.ones(len(s)), 0.0))
        coef = np.linalg.lstsq(a, g[np.ix_(sa, r)], rcond=None)[0]  # (s + 1, r): k_R ~ k_S coef[:s] + coef[s]
        t[np.ix_(h * head_size + r, targets)] = coef[:-1].T
    return t


# --------------------------------------------------------------------------- drifted layers

def drifted_layers(model: onnx.ModelProto, changed: set[str]) -> list[str]:
    """Node names (GraphIndex names) of the Conv / Gemm / MatMul layers with a constant weight downstream of
    any tensor in `changed` (tensors whose values differ from the original's)."""
    index = GraphIndex.build(model.graph)
    seen = index.downstream(changed)
    return [index.names[i] for i in sorted(seen) if index.nodes[i].op_type in layers.OPS
            and len(index.nodes[i].input) > 1 and index.nodes[i].input[1] in index.initializers]
