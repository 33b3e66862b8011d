"""A model run in segments across reconstruction passes: each pass runs only the nodes no earlier pass ran,
from the boundary activations the earlier passes kept.

A pass asks for some tensors (the inputs or targets of the stage it fits); the nodes those depend on join the
`done` region, and the region's boundary (its tensors that later passes will read) is kept, batch by batch, in
files of a temporary folder: memory does not grow with the number of samples (disk does). Valid while what is
kept does not change: the reference never does, and the model being re-fitted only changes at layers that
later passes ask for, downstream of every kept tensor (refit's stages ask in topological order).
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

import numpy as np
import onnx
from onnx import helper

from onnxprune.graph import GraphIndex
from onnxprune.reconstruction.upstream import node_reads, upstream_model, upstream_nodes
from onnxprune.runtime import session


class Segments:
    """One model's part of the passes: `plan(outputs)` the next segment, `run(feed)` it per batch, `commit()`
    its boundary. `model` may change between passes only downstream of what was kept (see the module)."""

    def __init__(self, model: onnx.ModelProto, targets: Iterable[str], folder: str, tag: str) -> None:
        self.model = model
        self.folder, self.tag = folder, tag
        index = GraphIndex.build(model.graph)
        self.useful = upstream_nodes(index, targets)  # the nodes any pass may still need
        self.nested = {i for i in self.useful if any(a.type in _GRAPHS for a in index.nodes[i].attribute)}
        self.done: set[int] = set()
        self.kept: dict[str, tuple[int, int]] = {}  # boundary tensor -> (ONNX element type, rank)
        self.files: dict[str, str] = {}  # boundary tensor -> file name stem
        self.count = 0  # file name stems given out
        self.pending: tuple[set[int], list[str], dict[str, str], dict[str, tuple[int, int]]] | None = None
        self.sess = None
        self.fetch: list[str] = []
        self.reads: set[str] = set()  # kept tensors the batch needs: segment inputs and asked-for outputs
        self.batch = 0

    def plan(self, outputs: list[str]) -> None:
        """Prepare the segment that gives `outputs` (graph inputs excluded) and the new boundary."""
        index = GraphIndex.build(self.model.graph)
        behind = [t for t in outputs if t in index.producer and index.producer[t][0] in self.done
                  and t not in self.kept]
        if behind:  # asked for a tensor the boundary has passed: start again from the graph inputs
            self.done, self.kept, self.files = set(), {}, {}
        segment = upstream_nodes(index, outputs, set(self.kept))
        done = self.done | segment
        later = [index.nodes[i] for i in self.nested - done]
        boundary = [t for i in sorted(done) for t in index.nodes[i].output
                    if t and (any(j in self.useful and j not in done for j, _ in index.consumers.get(t, []))
                              or any(t in node_reads(n) for n in later))]
        new = [t for t in boundary if t not in self.kept]
        stems = {t: f"{self.tag}{self.count + k}" for k, t in enumerate(new)}
        self.count += len(new)
        self.fetch = list(dict.fromkeys([t for t in outputs if t in index.producer and t not in self.kept] + new))
        known = [helper.make_tensor_value_info(t, elem, [None] * rank) for t, (elem, rank) in self.kept.items()]
        self.sess = session(upstream_model(self.model, self.fetch, known)) if self.fetch else None
        inputs = {v.name for v in self.sess.get_inputs()} if self.sess is not None else set()
        self.reads = {t for t in self.kept if t in inputs or t in outputs}
        self.pending = (done, boundary, stems, {})
        self.batch = 0

    def run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The planned outputs (and the feed) for the next batch; the new boundary is written to files."""
        k = self.batch
        self.batch += 1
        values = dict(feed)
        values.update({t: np.load(self._path(self.files[t], k)) for t in self.reads})
        if self.sess is not None:
            inputs = [v.name for v in self.sess.get_inputs()]
            values.update(zip(self.fetch, self.sess.run(self.fetch, {n: values[n] for n in inputs})))
        _, _, stems, types = self.pending
        for t, stem in stems.items():
            array = np.asarray(values[t])
            types[t] = (helper.np_dtype_to_tensor_dtype(array.dtype), array.ndim)
            np.save(self._path(stem, k), array)
        return values

    def commit(self) -> None:
        """Make the planned segment's boundary the one the next plan starts from; drop files no longer read."""
        done, boundary, stems, types = self.pending
        for t in [t for t in self.kept if t not in boundary]:
            for k in range(self.batch):
                _remove(self._path(self.files[t], k))
            del self.kept[t], self.files[t]
        for t, stem in stems.items():
            self.kept[t], self.files[t] = types[t], stem
        self.done = done
        self.pending, self.sess = None, None

    def _path(self, stem: str, batch: int) -> str:
        return os.path.join(self.folder, f"{stem}_{batch}.npy")


_GRAPHS = (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)


def _remove(path: str) -> None:
    if os.path.exists(path):
        os.remove(path)
