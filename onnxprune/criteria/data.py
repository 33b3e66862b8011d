"""Data-based criteria: channel scores from activations over calibration data.

Every criterion reads its tensors in ONE onnxruntime pass (`calibration.collect`) and keeps running
sums only. A "sample" is one index of a tensor's first axis (the batch axis; a tensor whose channel axis
is the first one counts as a single sample). Scores are per tensor position first, then per unit: the
positions whose element ids belong to one unit (dim d of every head when heads share their dims, the
slices of a grouped conv) are combined by `Options.group_policy`, and the tensors of a group with several
producers by `Options.policy`, exactly as for the weight-based criteria.

activation: for each layer of the group, the feature map is the layer's output followed through its
    activation: while the tensor has a single consumer that is a per-element op (Relu, Clip, Sigmoid,
    BatchNormalization, ...) or an Add/Sub/Mul/Div with a constant (bias, scale) keeping the channel
    positions, the consumer's output is taken instead. Score of channel c: mean over samples n of
    ||x[n, c]||_2, the L2 norm over every non-channel axis.
nn (PR_NN): same feature maps; score of channel c: mean over samples of the nuclear norm (sum of singular
    values) of x[n, c] as a matrix: rows = the first remaining axis, columns = all later axes flattened
    (H x W for NCHW, D x HW for NCDHW). With one remaining axis (N, C, L) or tokens (N, T, D) with channels
    last, the matrix is a single column, whose nuclear norm is its L2 norm over L / the tokens; with no
    remaining axis (N, C) it is |x[n, c]|.
snp (PR_SNP, arXiv 2404.11630): on attention, found from the graph: a MatMul of two activations whose first
    operand comes from a Softmax is a value MatMul (P @ V), any other one a score MatMul (Q @ K^T).
    Q/K units (tied across Q and K by the score MatMul's contracted axis): removing dim d of Q and K
    removes q_d k_d^T from every head's attention logits, whose Frobenius norm is ||q_{n,h,d}|| ||k_{n,h,d}||
    (norms over tokens). Score of d: mean over samples n of sqrt(sum over heads h of that norm squared).
    V units (dims inside heads): the value MatMul's output o (N, heads, T, dv) is the value neurons'
    contribution; with G its Gram matrix over the H*dv features (rows = samples x tokens, streamed),
    feature (h, d) has magnitude m = sqrt(G_ii / rows) and inter-head redundancy r = max |cos(i, j)| over
    features j of OTHER heads; feature (h, d) scores m * (1 - r), and the heads' scores of dim d combine by
    `group_policy` (average by default). A neuron another head
    already reproduces scores low; with one head (or heads folded into the batch axis) r = 0.
    Whole heads (Options.reshape_channel_axis 0 / -2, Q, K and V of a head are one unit): score of head h =
    mean over samples of ||o[n, h]||_F, the head's output from the value MatMul.
    Groups with no attention site (MLPs, convolutions) are scored by `l2`, with a RuntimeWarning naming them.
fluctuation: the error mean compensation leaves (FLAP's weighted input feature variance, An et al., AAAI 2024).
    Removing channel c and folding its calibration mean into the bias of a consumer layer W (a Conv / Gemm /
    MatMul reading c through a weight axis of role "in") leaves the consumer's output off by W[:, c] (x_c - mean
    x_c), of expected energy ||W[:, c]||^2 Var(x_c) (Var over samples and positions of the consumer's input
    channel). Score of c: sqrt of that energy summed over every consumer of the group (slices of a grouped
    weight summed too; `policy` does not apply: energies add). Groups no weight reads across channels (Q/K
    dims, channels only a graph output reads) are scored by `activation`.
"""
from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np

from onnxprune import calibration
from onnxprune.coupling.analysis import Analysis
from onnxprune.coupling.rules_elementwise import UNARY
from onnxprune.criteria.registry import CriterionContext, register_criterion
from onnxprune.criteria.weight import combine_layers, combined, group_slices, l2, slice_rows

_PER_ELEMENT = set(UNARY) | {"Clip", "BatchNormalization", "Dropout"}
_WITH_CONSTANT = {"Add", "Sub", "Mul", "Div"}
_TO_SOFTMAX = {"Dropout", "Cast", "Identity"}


@dataclass(frozen=True)
class Site:
    """Where a statistic is read: a tensor, the channel axis, and the element ids along that axis."""

    tensor: str
    axis: int
    ids: np.ndarray


# --------------------------------------------------------------------------- per-sample statistics

def _channels_second(x: np.ndarray, axis: int) -> np.ndarray:
    """(samples, channels, rest...) view; a tensor whose channel axis is first is one sample."""
    x = np.asarray(x, dtype=np.float32)
    if axis == 0:
        x, axis = x[None], 1
    return np.moveaxis(x, axis, 1)


def channel_norms(axis: int) -> Callable[[np.ndarray], np.ndarray]:
    """Per sample and channel: the L2 norm over every other axis."""

    def per_sample(x: np.ndarray) -> np.ndarray:
        y = _channels_second(x, axis)
        return np.sqrt(np.square(y, dtype=np.float64).reshape(y.shape[0], y.shape[1], -1).sum(axis=2))

    return per_sample


def nuclear_norms(axis: int) -> Callable[[np.ndarray], np.ndarray]:
    """Per sample and channel: the nuclear norm of the (first remaining axis) x (the rest) matrix."""

    def per_sample(x: np.ndarray) -> np.ndarray:
        y = _channels_second(x, axis)
        rows = y.shape[2] if y.ndim > 2 else 1
        matrices = y.reshape(y.shape[0], y.shape[1], rows, -1)
        if min(matrices.shape[2:]) == 1:  # a single row or column: its one singular value is its norm
            return np.sqrt(np.square(matrices, dtype=np.float64).sum(axis=(2, 3)))
        return np.linalg.svd(matrices, compute_uv=False).sum(axis=-1, dtype=np.float64)

    return per_sample


def qk_contributions(q: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Per sample and dim d: Frobenius norm over heads of q_d k_d^T, for q (..., T, d) and k (..., d, T')."""
    q_norm = np.sqrt(np.square(q, dtype=np.float64).sum(axis=-2))
    k_norm = np.sqrt(np.square(k, dtype=np.float64).sum(axis=-1))
    squared = np.square(q_norm * k_norm)  # (samples, heads..., d) after broadcasting
    if squared.ndim == 1:
        return np.sqrt(squared)[None]
    return np.sqrt(squared.reshape(squared.shape[0], -1, squared.shape[-1]).sum(axis=1))


class InterHeadRedundancy:
    """SNP value score per (head, dim) feature: magnitude * (1 - max |cos| with other heads' features)."""

    def __init__(self, tensor: str) -> None:
        self.tensors = (tensor,)
        self.gram: np.ndarray | None = None
        self.rows = 0
        self.heads = 1

    def update(self, o: np.ndarray) -> None:
        o = np.asarray(o, dtype=np.float64)
        heads = o.shape[1:-2] if o.ndim > 3 else ()  # (samples, heads..., tokens, dv)
        self.heads = int(np.prod(heads, dtype=np.int64))
        features = (np.moveaxis(o, -2, 1) if heads else o).reshape(-1, self.heads * o.shape[-1])
        gram = features.T @ features
        self.gram = gram if self.gram is None else self.gram + gram
        self.rows += len(features)

    def merge(self, other: "InterHeadRedundancy") -> None:
        if other.gram is not None:
            self.gram = other.gram if self.gram is None else self.gram + other.gram
            self.heads = other.heads
        self.rows += other.rows

    def result(self) -> np.ndarray:
        gram = self.gram
        norms = np.sqrt(np.diag(gram))
        cos = np.abs(gram) / np.maximum(np.outer(norms, norms), 1e-30)
        head = np.arange(len(gram)) // (len(gram) // self.heads)
        cos[head[:, None] == head[None, :]] = 0.0
        return norms / np.sqrt(max(self.rows, 1)) * (1.0 - cos.max(axis=1))


# --------------------------------------------------------------------------- where to read

def feature_sites(analysis: Analysis, groups: list[int]) -> list[Site]:
    """The feature maps of the groups' layers (each layer output followed through its activation)."""
    sites = []
    for name in (name for g in groups for name in analysis.groups[g].layers):
        ids = analysis.layer_output_ids(name)
        tensor = analysis.index.nodes[analysis.index.by_name[name]].output[0]
        axis = next((a for a, tracked in analysis.channels.tracked(tensor).items() if np.array_equal(tracked, ids)),
                    None)
        if axis is not None:
            sites.append(_after_activation(analysis, Site(tensor, axis, ids)))
    return sites


def _after_activation(analysis: Analysis, site: Site) -> Site:
    index, channels = analysis.index, analysis.channels
    while site.tensor not in index.graph_outputs:
        uses = index.consumers.get(site.tensor, [])
        if len(uses) != 1:
            return site
        node = index.nodes[uses[0][0]]
        others = [t for t in node.input if t and t != site.tensor]
        per_channel = node.op_type in _PER_ELEMENT or (
            node.op_type in _WITH_CONSTANT and all(channels.is_const(t) for t in others))
        ids = channels.tracked(node.output[0]).get(site.axis)
        if not per_channel or ids is None or not np.array_equal(ids, site.ids):
            return site
        site = Site(node.output[0], site.axis, ids)
    return site


def attention_sites(analysis: Analysis) -> list[tuple[str, Site, tuple[str, ...]]]:
    """(kind, site, tensors) per attention pattern: "qk" (score MatMul operands), "v" (value MatMul output,
    dims) or "heads" (value MatMul output, head axis)."""
    index, channels = analysis.index, analysis.channels
    found = []
    for node in index.nodes:
        if node.op_type != "MatMul" or channels.is_const(node.input[0]) or channels.is_const(node.input[1]):
            continue
        a, b, out = node.input[0], node.input[1], node.output[0]
        rank_a, rank_out = channels.rank(a), channels.rank(out)
        if rank_a is None or rank_out is None:
            continue
        if _from_softmax(analysis, a):
            for axis, ids in channels.tracked(out).items():
                if axis == rank_out - 1:
                    found.append(("v", Site(out, axis, ids), (out,)))
                elif 0 < axis < rank_out - 2:
                    found.append(("heads", Site(out, axis, ids), (out,)))
        elif rank_a - 1 in channels.tracked(a):
            found.append(("qk", Site(a, rank_a - 1, channels.tracked(a)[rank_a - 1]), (a, b)))
    return found


def _from_softmax(analysis: Analysis, tensor: str) -> bool:
    node = analysis.index.producer_node(tensor)
    while node is not None and node.op_type in _TO_SOFTMAX:
        node = analysis.index.producer_node(node.input[0])
    return node is not None and node.op_type == "Softmax"


# --------------------------------------------------------------------------- positions -> units

def unit_scores(analysis: Analysis, site: Site, values: np.ndarray, group_policy: str) -> dict[int, np.ndarray]:
    """Per group touched by the site: per-position values (or per head and position, heads first)
    combined into units by `group_policy` (NaN where the site lacks a unit)."""
    channels = analysis.channels
    ids = np.tile(site.ids, len(values) // len(site.ids))  # values may come per (head, position)
    groups = channels.group[ids]
    scores = {}
    for g in np.unique(groups).tolist():
        chosen = groups == g
        scores[g] = group_slices(values[chosen], channels.position[ids[chosen]], analysis.groups[g].size,
                                 group_policy)
    return scores


def _score(ctx: CriterionContext, requests: list[tuple[Site, calibration.Statistic]]) -> dict[int, np.ndarray]:
    """Collect every statistic in one pass, map positions to units, combine the layers by policy."""
    a = ctx.analysis
    results = calibration.collect(a.model, ctx.calibration, dict(enumerate(stat for _, stat in requests)))
    per_group: dict[int, list[np.ndarray]] = {g: [] for g in ctx.groups}
    for k, (site, _) in enumerate(requests):
        for g, scores in unit_scores(a, site, results[k], ctx.options.group_policy).items():
            if g in per_group:
                per_group[g].append(scores)
    return combined(ctx, per_group)


def _feature_criterion(ctx: CriterionContext, method: str,
                       statistic: Callable[[int], Callable[[np.ndarray], np.ndarray]]) -> dict[int, np.ndarray]:
    calibration.require(ctx.calibration, method)
    sites = feature_sites(ctx.analysis, ctx.groups)
    return _score(ctx, [(s, calibration.SampleMean((s.tensor,), statistic(s.axis))) for s in sites])


@register_criterion("activation")
def activation(ctx: CriterionContext) -> dict[int, np.ndarray]:
    """Mean over samples of each channel's activation L2 norm (feature map after the activation)."""
    return _feature_criterion(ctx, "activation", channel_norms)


@register_criterion("nn")
def nuclear_norm(ctx: CriterionContext) -> dict[int, np.ndarray]:
    """PR_NN: mean over samples of the nuclear norm of each channel's feature map."""
    return _feature_criterion(ctx, "nn", nuclear_norms)


@register_criterion("snp")
def snp(ctx: CriterionContext) -> dict[int, np.ndarray]:
    """PR_SNP: Q/K dims by their share of the attention logits, V dims by inter-head redundancy."""
    calibration.require(ctx.calibration, "snp")
    a = ctx.analysis
    wanted = set(ctx.groups)
    requests = []
    for kind, site, tensors in attention_sites(a):
        if not _site_groups(a, site) & wanted:
            continue
        if kind == "qk":
            requests.append((site, calibration.SampleMean(tensors, qk_contributions)))
        elif kind == "v":
            requests.append((site, InterHeadRedundancy(site.tensor)))
        else:
            requests.append((site, calibration.SampleMean(tensors, channel_norms(site.axis))))
    scored = _score(ctx, requests) if requests else {}
    covered = {g for site, _ in requests for g in _site_groups(a, site)} & wanted
    rest = sorted(wanted - covered)
    if rest:
        warnings.warn(f"snp: channel groups {rest} are not attention groups (no Q/K or V site); scored by l2",
                      RuntimeWarning, stacklevel=2)
        scored.update(l2(dataclasses.replace(ctx, groups=rest)))
    return {g: scored[g] for g in ctx.groups}


def _site_groups(analysis: Analysis, site: Site) -> set[int]:
    """Public ids of the groups a site's positions belong to."""
    return analysis.channels.groups_of(site.ids)


# --------------------------------------------------------------------------- fluctuation

@dataclass(frozen=True)
class ConsumerSlice:
    """A weight axis of role "in" (a layer reading a group across channels): the layer's input, its channel axis,
    ||W[:, c]||^2 per position, and per position its group and unit position."""

    node: int
    ids: np.ndarray
    tensor: str
    axis: int
    weight_energy: np.ndarray
    groups: np.ndarray
    positions: np.ndarray


def consumer_slices(analysis: Analysis, groups: list[int]) -> list[ConsumerSlice]:
    """Every weight axis of role "in" touching `groups` whose layer input tracks the same channel ids."""
    channels = analysis.channels
    wanted = set(groups)
    found = []
    for (i, slot), use in channels.const_uses.items():
        node = channels.index.nodes[i]
        for axis, role in use.roles.items():
            ids = use.axes[axis]
            if role != "in" or not wanted.intersection(channels.group[ids].tolist()):
                continue
            x = next((t for k, t in enumerate(node.input[:2]) if k != slot and t and not channels.is_const(t)), None)
            value = channels.resolver.value(node.input[slot])
            tracked = channels.tracked(x).items() if x is not None else ()
            x_axis = next((a for a, t in tracked if np.array_equal(t, ids)), None)
            if x_axis is None or value is None:
                continue
            energy = np.square(slice_rows(value, axis)).sum(axis=1)
            found.append(ConsumerSlice(i, ids, x, x_axis, energy, channels.group[ids], channels.position[ids]))
    return found


def channel_moments(axis: int) -> Callable[[np.ndarray], np.ndarray]:
    """Per sample: each channel's mean, then its mean square, over every other axis ((samples, 2 x channels))."""

    def per_sample(x: np.ndarray) -> np.ndarray:
        y = _channels_second(x, axis)
        y = y.reshape(y.shape[0], y.shape[1], -1).astype(np.float64)
        return np.concatenate([y.mean(axis=2), np.square(y).mean(axis=2)], axis=1)

    return per_sample


@register_criterion("fluctuation")
def fluctuation(ctx: CriterionContext) -> dict[int, np.ndarray]:
    """sqrt(sum over consumers of ||W[:, c]||^2 Var(x_c)): the output error left by removing c under mean
    compensation (see the module doc); groups without such a consumer by `activation`, in the same pass."""
    calibration.require(ctx.calibration, "fluctuation")
    requests, finish = fluctuation_requests(ctx)
    return finish(calibration.collect(ctx.analysis.model, ctx.calibration, requests))


def fluctuation_requests(ctx: CriterionContext) -> tuple[dict, Callable[[dict], dict[int, np.ndarray]]]:
    """The statistics `fluctuation` reads (keys ("slice", k) and ("site", k)), and the function from their
    results to its scores: for a criterion that adds its own statistics to the same pass."""
    a = ctx.analysis
    slices = consumer_slices(a, ctx.groups)
    rest = sorted(set(ctx.groups).difference(g for s in slices for g in s.groups.tolist()))
    sites = feature_sites(a, rest)
    requests = {("slice", k): calibration.SampleMean((s.tensor,), channel_moments(s.axis))
                for k, s in enumerate(slices)}
    requests.update({("site", k): calibration.SampleMean((s.tensor,), channel_norms(s.axis))
                     for k, s in enumerate(sites)})

    def finish(results: dict) -> dict[int, np.ndarray]:
        per_group: dict[int, list[np.ndarray]] = {g: [] for g in ctx.groups}
        for k, s in enumerate(slices):
            mean, square = np.split(results["slice", k], 2)
            energy = s.weight_energy * np.clip(square - mean ** 2, 0.0, None)
            for g in sorted(set(per_group).intersection(s.groups.tolist())):
                chosen = s.groups == g
                per_group[g].append(group_slices(energy[chosen], s.positions[chosen], a.groups[g].size, "sum"))
        scores = {g: np.sqrt(combine_layers(v, a.groups[g].size, "sum")) for g, v in per_group.items() if v}
        features: dict[int, list[np.ndarray]] = {g: [] for g in rest}
        for k, site in enumerate(sites):
            for g, values in unit_scores(a, site, results["site", k], ctx.options.group_policy).items():
                if g in features:
                    features[g].append(values)
        scores.update(combined(ctx, features))
        return {g: scores[g] for g in ctx.groups}

    return requests, finish
