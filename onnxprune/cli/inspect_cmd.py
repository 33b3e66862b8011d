"""`onnxprune inspect MODEL [--cost COST.json | --latency [--threads N]]`: layers (with each one's share of the
model's measured latency), channel groups, and why a group cannot be pruned."""
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
    timing = p.add_mutually_exclusive_group()
    timing.add_argument("--cost", metavar="COST.json",
                        help="show each layer's measured latency and share of the model's, from this cost file "
                             "(`onnxprune profile MODEL -o COST.json`)")
    timing.add_argument("--latency", action="store_true",
                        help="the same from a profile made now (cached: a second run measures nothing)")
    p.add_argument("--threads", type=int, help="onnxruntime threads: to profile with (--latency) or that the --cost "
                                               "file was measured with (default: onnxruntime's own)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import onnxprune as op

    if args.threads is not None and not (args.latency or args.cost):
        raise op.InvalidRequestError("--threads goes with --latency or --cost")
    cost = None
    if args.cost:
        cost = op.load_cost(args.cost, args.model, threads=args.threads)
    elif args.latency:
        cost = op.profile(args.model, threads=args.threads)
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
                     layer.group if layer.group is not None else "-", group.size if group else "-", status,
                     *(_latency(cost, layer.name) if cost is not None else [])])
    print(f"{args.model}: {analysis.summary()}\n")
    print(table(rows, ["layer", "op", "in", "out", "group", "channels", "status",
                       *(["latency ms", "share %"] if cost is not None else [])]))
    if cost is not None:
        print(f"whole model: {cost.total:.4f} ms measured (onnxruntime, {cost.environment['provider']}, threads "
              f"{cost.environment['threads'] if cost.environment['threads'] is not None else 'default'}); a "
              "layer's share is its micro-graph latency / the whole model's")
    print()
    group_rows = [[g.id, g.size, "yes" if g.prunable else "no", "yes" if g.exact else "no",
                   ", ".join(g.layers[:4]) + (" ..." if len(g.layers) > 4 else ""), g.reason or ""]
                  for g in groups]
    print(table(group_rows, ["group", "channels", "prunable", "exact", "layers", "reason"]))
    for weight, nodes in analysis.tied.items():
        print(f"tied weight {weight}: read by {', '.join(nodes)} (kept tied: they lose the same channels)")
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


def _latency(cost, name: str) -> list[str]:
    """[ms, share %] of a layer in the cost model, or "-" for a layer it does not model."""
    if name not in cost.layers:
        return ["-", "-"]
    ms = cost.layer_cost(name, *cost.layers[name])
    return [f"{ms:.4f}", f"{100 * ms / cost.total:.1f}" if cost.total else "-"]


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
