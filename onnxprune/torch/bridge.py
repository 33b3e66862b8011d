"""Apply a pruning result to a torch.nn.Module whose parameter names match the ONNX initializer names.

How it works
  * `result.weights` (recorded by the surgery) lists every constant of the ORIGINAL ONNX model that was
    sliced, with the kept positions per axis: {"conv1.weight": {0: [0, 2, 5], 1: [...]}, ...}.
  * Each name is matched to a parameter or buffer of the module (`module.named_parameters()` /
    `named_buffers()`): first exactly, then by a unique dotted suffix (a wrapper's "model.conv1.weight"
    matches "conv1.weight" and the other way round). The tensor is sliced (`index_select` per axis) and put
    back in its owner module as a new Parameter (requires_grad kept) or buffer; tied parameters stay tied.
  * The owner modules' attributes follow the new shapes: Conv*/ConvTranspose* (in/out_channels, groups of
    depthwise convolutions), Linear (in/out_features), Bilinear, BatchNorm*/InstanceNorm* (num_features),
    GroupNorm (num_channels), LayerNorm/RMSNorm (normalized_shape), Embedding/EmbeddingBag
    (num_embeddings, embedding_dim); plain Parameters are only sliced.

Names that cannot be matched raise BridgeError before anything is changed. The usual cause is an export
that folded BatchNorm into the preceding Conv (the Conv weight then gets a generated name like
"onnx::Conv_123" and the BatchNorm parameters vanish): export with the legacy exporter and
`torch.onnx.export(..., dynamo=False, training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False)`
so every initializer keeps its parameter name.

What the bridge cannot see: sizes hard-coded in `forward` (`x.view(-1, 128)`, `torch.zeros(64)`); use
-1 / shapes read from tensors there. Optimizers hold the OLD parameter objects: create them after applying.
"""
from __future__ import annotations

from typing import Any

from onnxprune.errors import InvalidRequestError, OnnxPruneError
from onnxprune.errors import MissingExtraError

__all__ = ["apply_pruning", "kept_indices", "BridgeError"]

EXPORT_HINT = ("export the model so that ONNX initializers keep the PyTorch parameter names and BatchNorm is not "
               "folded into the convolutions: torch.onnx.export(module.eval(), args, path, dynamo=False, "
               "training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False)")


class BridgeError(OnnxPruneError):
    """The pruning result cannot be applied to this torch module (names or shapes do not match)."""


def _torch():
    try:
        import torch
    except ImportError:
        raise MissingExtraError('onnxprune.torch needs PyTorch, which is not installed: pip install '
                                '"onnxprune[torch]" (torch==2.13.0)') from None
    return torch


def kept_indices(result_or_plan: Any, model: Any = None) -> dict[str, dict[int, list[int]]]:
    """{initializer name of the original ONNX model: {axis: kept positions}} for every sliced constant.

    A PruneResult carries them; a Plan (object, dict, JSON text or path) is applied to `model` (the ONNX
    model it was made for) first.
    """
    from onnxprune.plan import Plan
    from onnxprune.pruning import PruneResult

    if isinstance(result_or_plan, PruneResult):
        return result_or_plan.weights
    if hasattr(result_or_plan, "weights") and hasattr(result_or_plan, "model") and \
            isinstance(getattr(result_or_plan, "weights"), dict):
        return result_or_plan.weights
    if isinstance(result_or_plan, (Plan, dict, str)) or hasattr(result_or_plan, "__fspath__"):
        if model is None:
            raise InvalidRequestError("a plan says which channel units go, not which tensors shrink: pass the ONNX "
                                      "model it was made for too, apply_pruning(module, plan, model='model.onnx')")
        from onnxprune.pruning import apply_plan

        return apply_plan(model, result_or_plan).weights
    raise InvalidRequestError(f"apply_pruning takes a PruneResult (from op.prune / op.apply_plan) or a plan, not "
                              f"{type(result_or_plan).__name__}")


def apply_pruning(module, result_or_plan, *, model: Any = None, strict: bool = True):
    """Slice `module`'s parameters and buffers as the ONNX pruning did and update its attributes; returns it.

    result_or_plan: a PruneResult, or a plan (with `model=` the ONNX model the plan was made for).
    strict: every sliced ONNX constant must match a parameter or buffer (else BridgeError, nothing changed).
        With strict=False, constants without a match are skipped (e.g. sliced copies of computed constants)
        and listed in `module._onnxprune_unmatched`.
    """
    torch = _torch()
    if not isinstance(module, torch.nn.Module):
        raise InvalidRequestError(f"apply_pruning needs a torch.nn.Module, not {type(module).__name__}")
    weights = kept_indices(result_or_plan, model)
    tensors = _named_tensors(module)
    matched, unmatched = _match(weights, tensors)
    if unmatched and strict:
        raise BridgeError(_unmatched_message(unmatched, tensors))
    by_tensor: dict[int, tuple[Any, dict[int, list[int]], list[str]]] = {}
    for onnx_name, torch_name in matched.items():
        tensor = tensors[torch_name][2]
        selection = weights[onnx_name]
        _check_selection(onnx_name, torch_name, tensor, selection)
        key = id(tensor)
        if key in by_tensor and by_tensor[key][1] != selection:
            raise BridgeError(f"'{torch_name}' is shared by several ONNX constants that were sliced differently "
                              f"({by_tensor[key][2]} and '{onnx_name}'); it cannot be sliced consistently")
        by_tensor.setdefault(key, (tensor, selection, []))[2].append(onnx_name)
    new_values: dict[int, Any] = {}
    with torch.no_grad():
        for key, (tensor, selection, _) in by_tensor.items():
            value = tensor.detach()
            for axis, kept in sorted(selection.items()):
                index = torch.as_tensor(kept, dtype=torch.long, device=value.device)
                value = value.index_select(int(axis), index)
            new_values[key] = value.contiguous()
    touched = []
    created: dict[int, Any] = {}  # one new Parameter per old one: tied parameters stay tied
    for torch_name, (owner, leaf, tensor, kind) in tensors.items():
        key = id(tensor)
        if key not in new_values:
            continue
        if kind == "parameter":
            if key not in created:
                created[key] = torch.nn.Parameter(new_values[key], requires_grad=tensor.requires_grad)
            owner._parameters[leaf] = created[key]
        else:
            owner._buffers[leaf] = new_values[key]
        touched.append(owner)
    for owner in {id(m): m for m in touched}.values():
        _update_attributes(torch, owner)
    module._onnxprune_unmatched = sorted(unmatched)
    return module


# ---- matching --------------------------------------------------------------------------

def _named_tensors(module) -> dict[str, tuple[Any, str, Any, str]]:
    """torch name -> (owner module, attribute name, tensor, "parameter" | "buffer"), aliases included."""
    tensors = {}
    for prefix, owner in module.named_modules(remove_duplicate=False):
        for leaf, tensor in owner._parameters.items():
            if tensor is not None:
                tensors[f"{prefix}.{leaf}" if prefix else leaf] = (owner, leaf, tensor, "parameter")
        for leaf, tensor in owner._buffers.items():
            if tensor is not None:
                tensors[f"{prefix}.{leaf}" if prefix else leaf] = (owner, leaf, tensor, "buffer")
    return tensors


def _match(weights: dict, tensors: dict) -> tuple[dict[str, str], list[str]]:
    matched: dict[str, str] = {}
    unmatched: list[str] = []
    for name in weights:
        if name in tensors:
            matched[name] = name
            continue
        candidates = [t for t in tensors if t.endswith("." + name) or name.endswith("." + t)]
        distinct = {id(tensors[t][2]) for t in candidates}
        if len(distinct) == 1:
            matched[name] = candidates[0]
        else:
            unmatched.append(name)
    return matched, unmatched


def _unmatched_message(unmatched: list[str], tensors: dict) -> str:
    shown = ", ".join(f"'{n}'" for n in unmatched[:8]) + (f" and {len(unmatched) - 8} more" if len(unmatched) > 8
                                                         else "")
    generated = [n for n in unmatched if n.startswith(("onnx::", "/")) or "::" in n or n.startswith("val_")]
    text = (f"{len(unmatched)} pruned ONNX constant(s) match no parameter or buffer of the module: {shown}. "
            f"The module has e.g. {sorted(tensors)[:5]}. ")
    if generated:
        text += ("Generated names (like 'onnx::Conv_12') mean the exporter renamed or rewrote the weights, most "
                 "often by folding BatchNorm into the preceding Conv (the BatchNorm parameters then vanish). ")
    return text + "To fix it, " + EXPORT_HINT + "; or pass strict=False to skip these constants."


def _check_selection(onnx_name: str, torch_name: str, tensor, selection: dict[int, list[int]]) -> None:
    for axis, kept in selection.items():
        axis = int(axis)
        if axis >= tensor.dim():
            raise BridgeError(f"ONNX constant '{onnx_name}' was sliced on axis {axis}, but '{torch_name}' has shape "
                              f"{tuple(tensor.shape)}: the module is not the one the ONNX model was exported from")
        if kept and (max(kept) >= tensor.shape[axis] or len(kept) > tensor.shape[axis]):
            raise BridgeError(f"ONNX constant '{onnx_name}' keeps positions up to {max(kept)} on axis {axis}, but "
                              f"'{torch_name}' has shape {tuple(tensor.shape)}: was it already pruned, or is it "
                              "another model?")


# ---- attributes ------------------------------------------------------------------------

def _update_attributes(torch, m) -> None:
    nn = torch.nn
    weight = getattr(m, "weight", None)
    if isinstance(m, nn.modules.conv._ConvNd):
        _update_conv(m)
    elif isinstance(m, nn.Linear):
        m.out_features, m.in_features = (int(d) for d in weight.shape)
    elif isinstance(m, nn.Bilinear):
        m.out_features, m.in1_features, m.in2_features = (int(d) for d in weight.shape)
    elif isinstance(m, nn.modules.batchnorm._NormBase):  # BatchNorm*, InstanceNorm*, SyncBatchNorm
        source = weight if weight is not None else getattr(m, "running_mean", None)
        if source is not None:
            m.num_features = int(source.shape[0])
    elif isinstance(m, nn.GroupNorm):
        if weight is not None:
            m.num_channels = int(weight.shape[0])
    elif isinstance(m, nn.LayerNorm) or type(m).__name__ == "RMSNorm":
        if weight is not None:
            m.normalized_shape = tuple(int(d) for d in weight.shape)
    elif isinstance(m, (nn.Embedding, nn.EmbeddingBag)):
        m.num_embeddings, m.embedding_dim = (int(d) for d in weight.shape)


def _update_conv(m) -> None:
    old_groups = m.groups
    w = m.weight
    transposed = m.transposed
    if not transposed:  # weight (out, in / groups, k...)
        out_channels, in_per_group = int(w.shape[0]), int(w.shape[1])
        per_group_out = m.out_channels // old_groups
        if old_groups > 1 and m.in_channels // old_groups == 1:  # depthwise (channel multiplier per_group_out)
            groups = out_channels // per_group_out
        else:
            groups = old_groups
        m.out_channels = out_channels
        m.in_channels = in_per_group * groups
    else:  # weight (in, out / groups, k...)
        in_channels, out_per_group = int(w.shape[0]), int(w.shape[1])
        per_group_in = m.in_channels // old_groups
        if old_groups > 1 and m.out_channels // old_groups == 1:
            groups = in_channels // per_group_in
        else:
            groups = old_groups
        m.in_channels = in_channels
        m.out_channels = out_per_group * groups
    if groups != old_groups and groups < 1:
        raise BridgeError(f"convolution {m} lost every group")
    m.groups = groups
