"""`onnxprune inspect MODEL`: layers, channel groups, and why a group cannot be pruned."""
from __future__ import annotations

import argparse

from onnxprune.text import table


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="list layers and channel groups: what can be pruned or decomposed, and why not",
                       description="Analyse channel coupling (nothing is written). Each group is a set of channels "
                                   "that must be removed together across all the layers and tensors it spans.")
    p.add_argument("model", help="ONNX model file")
    p.add_argument("--groups", action="store_true", help="also list every group's members (tensors and axes)")
    p.add_argument("--reshape-channel-axis", type=int, default=-1, choices=[0, 1, -1, -2],
                   help="at a Reshape into heads: -1/1 prune dims inside heads (default), 0/-2 prune whole heads")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import onnxprune as op

    analysis = op.analyze(args.model, op.Options(reshape_channel_axis=args.reshape_channel_axis))
    groups = analysis.groups
    rows = []
    for layer in analysis.layers:
        group = groups[layer.group] if layer.group is not None else None
        status = "prunable" if group and group.prunable else "fixed"
        if group and group.prunable and not group.exact:
            status = "prunable (inexact)"
        rows.append([layer.name, layer.op_type, "-" if layer.in_channels is None else layer.in_channels,
                     layer.out_channels,
                     layer.group if layer.group is not None else "-", group.size if group else "-", status])
    print(f"{args.model}: {analysis.summary()}\n")
    print(table(rows, ["layer", "op", "in", "out", "group", "channels", "status"]))
    print()
    group_rows = [[g.id, g.size, "yes" if g.prunable else "no", "yes" if g.exact else "no",
                   ", ".join(g.layers[:4]) + (" ..." if len(g.layers) > 4 else ""), g.reason or ""]
                  for g in groups]
    print(table(group_rows, ["group", "channels", "prunable", "exact", "layers", "reason"]))
    if args.groups:
        for g in groups:
            print(f"\ngroup {g.id}:")
            for m in g.members:
                where = f" (read by {m.node}, {m.role})" if m.kind == "weight" else ""
                print(f"  {m.kind:10s} {m.tensor} axis {m.axis}: {m.size} positions{where}")
    _print_decomposable(args.model)
    _print_blocks(analysis.model)
    return 0


def _print_blocks(model) -> None:
    from onnxprune.blocks import find_blocks

    rows = [[b.name, b.kind, len(b.nodes), "x".join(str(d) for d in b.shape), b.stream] for b in find_blocks(model)]
    if rows:
        print()
        print(table(rows, ["residual block", "kind", "nodes", "shape", "stream input"]))


def _print_decomposable(model: str) -> None:
    try:
        from onnxprune.decomposition import decomposable_layers
    except ImportError:
        return
    rows = []
    for entry in decomposable_layers(model):
        rows.append([entry.name, entry.op_type, "x".join(str(d) for d in entry.kernel_shape),
                     entry.full_ranks, "yes" if entry.decomposable else "no", entry.reason or ""])
    if rows:
        print()
        print(table(rows, ["layer", "op", "kernel", "full ranks", "decomposable", "reason"]))
