"""Depth pruning: find residual blocks, score them, remove whole blocks.

A *residual block* is a branch that leaves the residual stream x and rejoins it through `Add(x, branch(x))` with x,
the branch output and the sum all of one shape: transformer attention and MLP sub-blocks, ResNet blocks without
downsampling. The branch is every node that descends from x and leads to the branch output; it must feed nothing
but itself and that Add. Removing the block deletes the branch and lets x through (the Add is gone). onnxruntime's
fused SkipLayerNormalization / SkipSimplifiedLayerNormalization join a branch (input 0 or 1) and the stream too;
there the join stays and reads zeros for the branch (its bias and normalisation still apply, as the oracle's).

Importance is ShortGPT's block influence, 1 - cos(x_t, x_t + branch(x)_t) per token t (a feature vector: last axis
of a sequence, channel axis of a feature map), averaged over tokens and calibration samples; with
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
from onnxprune.executor import uses_executor
from onnxprune.graph import GraphIndex, zeros_like
from onnxprune.rebuild import live_nodes
from onnxprune.runtime import make_inputs, run


@dataclass(frozen=True)
class Block:
    """A residual block (named by its joining Add), or a transformer layer: an attention block and the block that
    follows it on the same stream (named "<attention Add>+<next Add>", its `parts`)."""

    name: str
    kind: str  # "attention" (its branch multiplies two activations), "branch" (any other) or "layer"
    stream: str  # x: the stream tensor the branch leaves (a layer: its first part's)
    output: str  # the stream after the block (the joining Add's output; a layer: its last part's)
    branch_output: str  # branch(x): the Add's other input ("" for a layer)
    nodes: tuple[int, ...]  # node indices of the branch(es), in graph order
    shape: tuple
    parts: tuple[str, ...]  # the residual blocks it removes (itself, or a layer's two)
    join_slot: int = 1  # the joining node's input that reads the branch output
    fused_join: bool = False  # joined by a Skip*LayerNormalization (kept, fed zeros) instead of an Add (removed)


@dataclass
class BlockResult:
    model: onnx.ModelProto
    removed: list[str]  # names of the removed blocks / layers, in graph order
    blocks: list[Block]  # every block and layer found in the original
    scores: dict[str, float] = field(default_factory=dict)  # candidate name -> importance (lower goes first)
    score_kind: str = ""  # "influence" (calibration data) or "relative branch norm" (generated inputs)
    verification: object | None = None

    @property
    def removed_parts(self) -> list[str]:
        """The residual blocks removed (a removed layer's parts), in graph order."""
        by_name = {b.name: b for b in self.blocks}
        return [p for name in self.removed for p in by_name[name].parts]


def find_blocks(model) -> list[Block]:
    """Every residual block of the model's main graph, then every transformer layer, each in graph order."""
    model = ir.load_model(model)
    index = GraphIndex.build(model.graph)
    shapes, _ = ir.infer_shapes_and_types(model)
    outputs = set(index.graph_outputs)
    found = []
    for i, node in enumerate(index.nodes):
        fused = node.domain == "com.microsoft" and node.op_type in _FUSED_JOINS
        if not fused and (node.op_type != "Add" or node.domain not in ("", "ai.onnx") or len(node.input) != 2):
            continue
        shape = shapes.get(node.input[0])
        if node.input[0] == node.input[1] or not _same_shape(shape, shapes.get(node.input[1])) or \
                (not fused and not _same_shape(shape, shapes.get(node.output[0]))):
            continue
        # the stream after a fused join: its input+skip(+bias) output 3 (pre-norm), else the normalised output
        after = node.output[3] if fused and len(node.output) > 3 and node.output[3] else node.output[0]
        for slot in (1, 0):
            stream, branch_out = node.input[1 - slot], node.input[slot]
            nodes = _branch(index, i, stream, branch_out, outputs)
            if nodes:
                kind = "attention" if _mixes_activations(index, nodes) else "branch"
                found.append(Block(index.names[i], kind, stream, after, branch_out, nodes, tuple(shape),
                                   (index.names[i],), slot, fused))
                break
    return found + _layers(found)


_FUSED_JOINS = ("SkipLayerNormalization", "SkipSimplifiedLayerNormalization")


def _same_shape(a: tuple | None, b: tuple | None) -> bool:
    """Equal ranks, equal static dims; a symbolic dim ('batch', or one onnxruntime observed) matches any dim but 1
    (which could broadcast)."""
    if a is None or b is None or len(a) != len(b):
        return False
    return all(x == y if isinstance(x, int) and isinstance(y, int) else
               (x != 1 and y != 1) for x, y in zip(a, b))


def candidates(blocks: list[Block]) -> list[Block]:
    """What n= chooses from: transformer layers, and the blocks that are part of no layer (ResNet blocks)."""
    in_layers = {p for b in blocks if b.kind == "layer" for p in b.parts}
    return [b for b in blocks if b.kind == "layer" or b.name not in in_layers]


def _layers(blocks: list[Block]) -> list[Block]:
    """An attention block directly followed by a non-attention block on its output stream: one transformer layer."""
    layers = []
    for first, second in zip(blocks, blocks[1:]):
        if first.kind == "attention" and second.kind != "attention" and second.stream == first.output:
            layers.append(Block(f"{first.name}+{second.name}", "layer", first.stream, second.output, "",
                                tuple(sorted(first.nodes + second.nodes)), first.shape, (first.name, second.name)))
    return layers


def _mixes_activations(index: GraphIndex, nodes: tuple[int, ...]) -> bool:
    """True when a branch node multiplies two tensors the branch computes (attention scores and mixing)."""
    inside = set(nodes)
    for k in nodes:
        node = index.nodes[k]
        if node.op_type in ("MatMul", "FusedMatMul", "Attention", "MultiHeadAttention", "GroupQueryAttention"):
            made = [t for t in node.input[:2] if t in index.producer and index.producer[t][0] in inside]
            if len(made) == 2 or node.op_type not in ("MatMul", "FusedMatMul"):
                return True
    return False


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
    roots = [stream]
    producer = index.producer_node(stream)
    if producer is not None and producer.op_type in _FUSED_JOINS and list(producer.output).index(stream) == 3:
        roots.append(producer.output[0])  # a fused pre-norm join: the next branch reads its normalised output
    descend = index.downstream(roots, within=ancestors)
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
    """Importance per block: influence 1 - cos(x, block(x)) over calibration data, else ||block(x) - x|| / ||x||."""
    if calibration is not None:
        requests = {b.name: SampleMean((b.stream, b.output), _influence) for b in blocks}
        results = collect(model, calibration, requests)
        return {name: float(np.asarray(value).reshape(-1)[0]) for name, value in results.items()}, "influence"
    warnings.warn("prune_blocks without calibration data: blocks are ranked by their branch output's norm relative "
                  "to the stream's on generated inputs; pass calibration= for block influence on real data",
                  stacklevel=3)
    model = ir.load_model(model)
    wanted = list(dict.fromkeys(t for b in blocks for t in (b.stream, b.output)))
    values = run(model, make_inputs(model), outputs=wanted)
    return {b.name: float(np.linalg.norm(values[b.output] - values[b.stream])
                          / (np.linalg.norm(values[b.stream]) + 1e-12)) for b in blocks}, "relative branch norm"


def _influence(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per sample: 1 - cos(x_t, y_t) averaged over its tokens t, as ShortGPT (first axis: samples). A token is a
    feature vector: the last axis of a [batch, tokens, features] sequence, the channel axis of an NCHW map, the
    whole sample otherwise."""
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if a.ndim >= 4:  # [N, C, spatial...]: channels are the features of each position
        a, b = np.moveaxis(a, 1, -1), np.moveaxis(b, 1, -1)
    if a.ndim >= 3:
        a, b = a.reshape(len(a), -1, a.shape[-1]), b.reshape(len(b), -1, b.shape[-1])
    else:
        a, b = a.reshape(len(a), 1, -1), b.reshape(len(b), 1, -1)
    cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-12)
    return (1.0 - cos).mean(axis=1)[:, None]


# --------------------------------------------------------------------------- removal

@uses_executor
def prune_blocks(model, n: int | None = None, blocks: list[str] | None = None, calibration=None,
                 verify: bool = False) -> BlockResult:
    """Remove residual blocks: the named `blocks` (blocks or layers, as find_blocks names them), or the `n` least
    important of the transformer layers and the residual blocks outside them (see the module doc).

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
        pool = candidates(found)
        if not pool:
            raise InvalidRequestError("this model has no residual block (a branch rejoining its input through an Add "
                                      "or a fused Skip*LayerNormalization of the same shape); nothing to remove")
        if isinstance(n, bool) or not isinstance(n, int) or not 0 < n <= len(pool):
            raise InvalidRequestError(f"n={n!r}: this model has {len(pool)} removable blocks (transformer layers "
                                      f"and residual blocks outside them); give 1..{len(pool)}")
        scores, kind = block_scores(model, pool, calibration)
        chosen = sorted(scores, key=lambda name: (scores[name], name))[:n]
    order = [b.name for b in found]
    chosen.sort(key=order.index)
    result = BlockResult(model, chosen, found, scores, kind)
    parts = list(dict.fromkeys(result.removed_parts))
    if len(parts) < len(result.removed_parts):
        raise InvalidRequestError(f"blocks {chosen} overlap (a layer and one of its parts); name each block once")
    result.model = remove_blocks(model, [by_name[name] for name in parts])
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
    zeroed: dict[int, list[onnx.NodeProto]] = {}  # fused joins: the zeros they read instead of the branch
    graph_outputs = set(index.graph_outputs)
    types = ir.infer_shapes_and_types(model)[1] if any(b.fused_join for b in chosen) else {}
    for block in chosen:
        add = index.by_name[block.name]
        drop.update(block.nodes)
        if block.fused_join:
            zeroed[add] = zeros_like(block.stream, f"{block.branch_output}/removed", types)
            continue
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
        if i in zeroed:
            block = next(b for b in chosen if index.by_name[b.name] == i)
            nodes.extend(_renamed(zeroed[i], rename))
            copy.input[block.join_slot] = zeroed[i][-1].output[0]
        nodes.append(copy)
    nodes, used = live_nodes(nodes, [o.name for o in g.output])  # constants only the branches read go too
    del g.node[:]
    g.node.extend(nodes)
    live = {t for n in g.node for t in n.output} | {v.name for v in g.input}
    kept_inits = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(kept_inits)
    kept_info = [v for v in g.value_info if v.name in live]
    del g.value_info[:]
    g.value_info.extend(kept_info)
    return out


def _renamed(nodes: list[onnx.NodeProto], rename: dict[str, str]) -> list[onnx.NodeProto]:
    for node in nodes:
        for slot, name in enumerate(node.input):
            node.input[slot] = _resolve(rename, name)
    return nodes


def _resolve(rename: dict[str, str], name: str) -> str:
    while name in rename:  # consecutive removed blocks: the stream of one is the output of the one before
        name = rename[name]
    return name
