"""Depth pruning: find residual blocks, score them, remove whole blocks.

A *residual block* is a branch that leaves the residual stream x and rejoins it through `Add(x, branch(x))` with x,
the branch output and the sum all of one shape: transformer attention and MLP sub-blocks, ResNet blocks without
downsampling. The branch is every node that descends from x and leads to the branch output; it must feed nothing
but itself and that Add. Removing the block deletes the branch and lets x through (the Add is gone).

Importance is ShortGPT's block influence, 1 - cos(x, x + branch(x)) per sample, averaged over calibration data; with
no data, ||branch(x)|| / ||x|| on generated inputs (with a warning). The zero-branch oracle (DESIGN.md §4,
onnxprune.verify.verify_blocks) checks a result: it equals the original with each removed branch's output zeroed.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import onnx

from onnxprune import ir
from onnxprune.calibration import SampleMean, collect
from onnxprune.errors import InvalidRequestError, VerificationError
from onnxprune.graph import GraphIndex
from onnxprune.runtime import make_inputs, run


@dataclass(frozen=True)
class Block:
    """One residual block: its joining Add (`name`, the node name), stream input, branch output, branch nodes."""

    name: str
    stream: str  # x: the stream tensor the branch leaves and rejoins
    branch_output: str  # branch(x): the Add's other input
    output: str  # the Add's output (x + branch(x))
    nodes: tuple[int, ...]  # node indices of the branch, in graph order
    shape: tuple


@dataclass
class BlockResult:
    model: onnx.ModelProto
    removed: list[str]  # block names, in graph order
    blocks: list[Block]  # every block found in the original
    scores: dict[str, float] = field(default_factory=dict)  # block name -> importance (lower goes first)
    score_kind: str = ""  # "influence" (calibration data) or "relative branch norm" (generated inputs)
    verification: object | None = None


def find_blocks(model) -> list[Block]:
    """Every residual block of the model's main graph, in graph order."""
    model = ir.load_model(model)
    index = GraphIndex.build(model.graph)
    shapes, _ = ir.infer_shapes_and_types(model)
    outputs = set(index.graph_outputs)
    found = []
    for i, node in enumerate(index.nodes):
        if node.op_type != "Add" or node.domain not in ("", "ai.onnx") or len(node.input) != 2:
            continue
        shape = shapes.get(node.output[0])
        if shape is None or any(shapes.get(t) != shape for t in node.input) or node.input[0] == node.input[1]:
            continue
        for stream, branch_out in ((node.input[0], node.input[1]), (node.input[1], node.input[0])):
            nodes = _branch(index, i, stream, branch_out, outputs)
            if nodes:
                found.append(Block(index.names[i], stream, branch_out, node.output[0], nodes, tuple(shape)))
                break
    return found


def _branch(index: GraphIndex, add: int, stream: str, branch_out: str, outputs: set[str]) -> tuple[int, ...] | None:
    """Nodes between `stream` and `branch_out` (descendants of the one, ancestors of the other), or None when
    branch_out does not descend from stream or a branch node feeds anything outside the branch."""
    start = index.producer[stream][0] if stream in index.producer else -1
    last = index.producer.get(branch_out)
    if last is None or last[0] <= start:
        return None
    ancestors, stack = set(), [last[0]]
    while stack:  # ancestors of branch_out that come after the stream's producer
        k = stack.pop()
        if k in ancestors:
            continue
        ancestors.add(k)
        for t in index.nodes[k].input:
            found = index.producer.get(t)
            if found is not None and found[0] > start:
                stack.append(found[0])
    descend, stack = set(), [k for k, _ in index.consumers.get(stream, []) if k in ancestors]
    while stack:
        k = stack.pop()
        if k in descend:
            continue
        descend.add(k)
        for t in index.nodes[k].output:
            stack.extend(c for c, _ in index.consumers.get(t, []) if c in ancestors)
    if last[0] not in descend:
        return None
    for k in descend:
        for t in index.nodes[k].output:
            if t in outputs or any(c not in descend and not (c == add and t == branch_out)
                                   for c, _ in index.consumers.get(t, [])):
                return None
    return tuple(sorted(descend))


# --------------------------------------------------------------------------- scores

def block_scores(model, blocks: list[Block], calibration=None) -> tuple[dict[str, float], str]:
    """Importance per block: influence 1 - cos(x, x + f(x)) over calibration data, else ||f(x)|| / ||x||."""
    if calibration is not None:
        requests = {b.name: SampleMean((b.stream, b.output), _influence) for b in blocks}
        results = collect(model, calibration, requests)
        return {name: float(np.asarray(value).reshape(-1)[0]) for name, value in results.items()}, "influence"
    warnings.warn("prune_blocks without calibration data: blocks are ranked by their branch output's norm relative "
                  "to the stream's on generated inputs; pass calibration= for block influence on real data",
                  stacklevel=3)
    model = ir.load_model(model)
    wanted = list(dict.fromkeys(t for b in blocks for t in (b.stream, b.branch_output)))
    values = run(model, make_inputs(model), outputs=wanted)
    return {b.name: float(np.linalg.norm(values[b.branch_output]) / (np.linalg.norm(values[b.stream]) + 1e-12))
            for b in blocks}, "relative branch norm"


def _influence(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per sample: 1 - cos(x, y) over all of a sample's values (first axis: samples)."""
    a = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    b = np.asarray(y, dtype=np.float64).reshape(len(y), -1)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
    return (1.0 - cos)[:, None]


# --------------------------------------------------------------------------- removal

def prune_blocks(model, n: int | None = None, blocks: list[str] | None = None, calibration=None,
                 verify: bool = False) -> BlockResult:
    """Remove residual blocks: the named `blocks`, or the `n` least important (see the module doc).

    verify: run the zero-branch oracle (onnxprune.verify.verify_blocks) and raise VerificationError if it fails.
    """
    model = ir.load_model(model)
    found = find_blocks(model)
    by_name = {b.name: b for b in found}
    if (n is None) == (blocks is None):
        raise InvalidRequestError("give exactly one of n= (how many blocks to remove) or blocks= (their names)")
    scores, kind = {}, ""
    if blocks is not None:
        unknown = [name for name in blocks if name not in by_name]
        if unknown:
            raise InvalidRequestError(f"no residual block named {unknown}; blocks are named by their joining Add: "
                                      f"{sorted(by_name) or 'this model has none'}")
        chosen = list(dict.fromkeys(blocks))
    else:
        if isinstance(n, bool) or not isinstance(n, int) or not 0 < n <= len(found):
            raise InvalidRequestError(f"n={n!r}: this model has {len(found)} residual blocks; give 1..{len(found)}")
        scores, kind = block_scores(model, found, calibration)
        chosen = sorted(scores, key=lambda name: (scores[name], name))[:n]
    order = [b.name for b in found]
    chosen.sort(key=order.index)
    pruned = remove_blocks(model, [by_name[name] for name in chosen])
    result = BlockResult(pruned, chosen, found, scores, kind)
    if verify:
        from onnxprune.verify import verify_blocks

        report = verify_blocks(model, result)
        result.verification = report
        if not report.ok:
            raise VerificationError(f"zero-branch oracle failed (max relative error {report.max_rel_error:.3g}):"
                                    f"\n{report}")
    return result


def remove_blocks(model: onnx.ModelProto, chosen: list[Block]) -> onnx.ModelProto:
    """A copy of `model` without the chosen blocks' branches; each joining Add's readers read the stream instead."""
    index = GraphIndex.build(model.graph)
    drop: set[int] = set()
    rename: dict[str, str] = {}
    keep_output: dict[int, onnx.NodeProto] = {}
    graph_outputs = set(index.graph_outputs)
    for block in chosen:
        add = index.by_name[block.name]
        drop.update(block.nodes)
        drop.add(add)
        if block.output in graph_outputs:
            keep_output[add] = onnx.helper.make_node("Identity", [block.stream], [block.output], name=block.name)
        else:
            rename[block.output] = block.stream
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    nodes = []
    for i, node in enumerate(index.nodes):
        if i in keep_output:
            identity = keep_output[i]
            identity.input[0] = _resolve(rename, identity.input[0])
            nodes.append(identity)
        if i in drop:
            continue
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        for slot, name in enumerate(copy.input):
            copy.input[slot] = _resolve(rename, name)
        nodes.append(copy)
    del g.node[:]
    g.node.extend(nodes)
    used = {t for n in g.node for t in n.input} | {o.name for o in g.output}
    live = {t for n in g.node for t in n.output} | {v.name for v in g.input}
    kept_inits = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(kept_inits)
    kept_info = [v for v in g.value_info if v.name in live]
    del g.value_info[:]
    g.value_info.extend(kept_info)
    return out


def _resolve(rename: dict[str, str], name: str) -> str:
    while name in rename:  # consecutive removed blocks: the stream of one is the output of the one before
        name = rename[name]
    return name
