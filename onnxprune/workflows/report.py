"""Before/after reports of `onnxprune prune` and `onnxprune decompose` (their `--report out.md | out.json`).

A report compares the input model file with the written output file:
  * totals: params, MACs (counted from shapes, per sample), file size on disk (model file plus its external
    data files) and onnxruntime latency (a short interleaved bench: 20 timed runs, batch 1, median and
    p10/p90), each before, after and the ratio after / before;
  * layers: every node with params or MACs before, and after (a decomposed layer's chain nodes, named
    "<layer>/...", are summed into their layer's row; a removed node counts 0);
  * prune: the pruned channel groups, their layers and kept / size channels;
    decompose: every considered layer with its ranks, full ranks, kernel relative error and result;
  * metric before/after, only when labelled evaluation data is given (build_report's `data=`; on the command
    line `--eval-data FILE.npz`, read by load_eval_data): evaluate()'s dict for the original and for the output
    (with fidelity to the original).
The format follows the extension: .md (markdown tables) or .json. The command-line flags live in cli/common.py.
"""
from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from onnxprune import ir
from onnxprune.errors import InvalidRequestError
from onnxprune.files import write_text
from onnxprune.stats import ModelStats, stats

__all__ = ["REPORT_FORMATS", "build_report", "check_report_path", "load_eval_data", "to_markdown", "write_report"]

REPORT_REPEATS = 20
REPORT_WARMUP = 3
REPORT_FORMATS = (".md", ".json")


# --------------------------------------------------------------------------- inputs

def check_report_path(path: str) -> None:
    """Fail when the report path does not end in .md or .json."""
    if os.path.splitext(path)[1].lower() not in REPORT_FORMATS:
        raise InvalidRequestError(f"report '{path}' must end in .md or .json")


def load_eval_data(model: Any, path: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """(inputs, labels) from a .npz: labels under 'y' (or 'labels'), inputs by input name (or 'x')."""
    from onnxprune.calibration import input_specs

    if not os.path.isfile(path) or not path.endswith(".npz"):
        raise InvalidRequestError(f"evaluation data '{path}' is not an existing .npz file")
    with np.load(path, allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}
    label_key = next((k for k in ("y", "labels") if k in arrays), None)
    if label_key is None:
        raise InvalidRequestError(f"evaluation data '{path}' has no labels: store them under 'y' "
                                  f"(found {sorted(arrays)})")
    labels = arrays.pop(label_key)
    specs = input_specs(ir.load_model(model))
    if set(arrays) == {"x"} and len(specs) == 1 and specs[0].name != "x":
        arrays = {specs[0].name: arrays["x"]}
    return arrays, labels


# --------------------------------------------------------------------------- building

def file_size(path: str) -> int:
    """Bytes on disk: the model file plus every external data file it references."""
    total = os.path.getsize(path)
    model = ir.load_model(path)
    directory = ir.base_dir(model) or os.path.dirname(os.path.abspath(path))
    seen = set()
    for tensor in ir.iter_tensors(model):
        if ir.is_external(tensor):
            location = ir.resolve_location(tensor, directory)
            if location not in seen and os.path.exists(location):
                seen.add(location)
                total += os.path.getsize(location)
    return total


def _ratio(before: float | None, after: float | None) -> float | None:
    if before is None or after is None or not before:
        return None
    return after / before


def _pair(before: Any, after: Any) -> dict[str, Any]:
    return {"before": before, "after": after, "ratio": _ratio(before, after)}


def _layers(before: ModelStats, after: ModelStats) -> list[dict[str, Any]]:
    rows = []
    for name, node in before.nodes.items():
        if not (node.params or node.macs):
            continue
        if name in after.nodes:
            parts = [after.nodes[name]]
        else:
            parts = [s for key, s in after.nodes.items() if key.startswith(name + "/")]
        params, macs = sum(p.params for p in parts), sum(p.macs for p in parts)
        rows.append({"name": name, "op_type": node.op_type, "params_before": node.params, "params_after": params,
                     "macs_before": node.macs, "macs_after": macs, "macs_ratio": _ratio(node.macs, macs)})
    return rows


def build_report(before: str, after: str, *, command: str, prune_result: Any = None, decomposition: Any = None,
                 data: Any = None, repeats: int = REPORT_REPEATS, warmup: int = REPORT_WARMUP) -> dict[str, Any]:
    """The report dict for two model files (the original and the written result)."""
    from onnxprune.workflows.bench import bench

    model_before, model_after = ir.load_model(before), ir.load_model(after)
    s_before, s_after = stats(model_before), stats(model_after)
    timing = bench(model_before, model_after, repeats=repeats, warmup=warmup, batch_size=1,
                   names=("before", "after"))
    report: dict[str, Any] = {
        "command": command,
        "models": {"before": os.fspath(before), "after": os.fspath(after)},
        "totals": {
            "params": _pair(s_before.params, s_after.params),
            "macs": _pair(s_before.macs, s_after.macs),
            "file_size_bytes": _pair(file_size(before), file_size(after)),
            "latency_ms": {**_pair(timing.a.median_ms, timing.b.median_ms),
                           "p10_before": timing.a.p10_ms, "p90_before": timing.a.p90_ms,
                           "p10_after": timing.b.p10_ms, "p90_after": timing.b.p90_ms,
                           "repeats": repeats, "batch_size": timing.a.batch_size},
        },
        "layers": _layers(s_before, s_after),
    }
    if prune_result is not None:
        report["groups"] = [{"id": g["id"], "layers": list(g["layers"]), "size": g["size"], "kept": g["kept"],
                             "exact": g.get("exact")} for g in prune_result.summary.groups]
        report["achieved_ratio"] = prune_result.achieved_ratio
        if prune_result.summary.budget is not None:
            report["budget"] = prune_result.summary.budget
        if getattr(prune_result.summary, "pipeline", None) is not None:
            report["pipeline"] = prune_result.summary.pipeline.as_dict()
    if decomposition is not None:
        report["method"] = decomposition.method
        report["decomposition"] = [
            {"name": r.name, "op_type": r.op_type,
             "ranks": None if r.ranks is None else list(r.ranks),
             "full_ranks": None if r.full_ranks is None else list(r.full_ranks),
             "rel_error": r.rel_error, "params_before": r.params_before, "params_after": r.params_after,
             "macs_before": r.macs_before, "macs_after": r.macs_after,
             "result": r.skipped or "decomposed"} for r in decomposition.layers]
    if data is not None:
        from onnxprune.workflows.evaluate import evaluate

        report["metric"] = {"before": evaluate(model_before, data),
                            "after": evaluate(model_after, data, reference=model_before)}
    return report


# --------------------------------------------------------------------------- writing

def write_report(report: dict[str, Any], path: str) -> None:
    """Write `report` as markdown (.md) or JSON (.json), by the path's extension."""
    check_report_path(path)
    ext = os.path.splitext(path)[1].lower()
    text = json.dumps(report, indent=2) if ext == ".json" else to_markdown(report)
    write_text(path, text + "\n")


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "x".join(str(v) for v in value)
    return str(value).replace("|", "\\|")


def _md_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def to_markdown(report: dict[str, Any]) -> str:
    totals = report["totals"]
    lat = totals["latency_ms"]
    out = [f"# onnxprune {report['command']} report", "",
           f"- before: `{report['models']['before']}`", f"- after: `{report['models']['after']}`", "",
           "## Totals", "",
           _md_table(["", "before", "after", "after / before"], [
               ["params", totals["params"]["before"], totals["params"]["after"], totals["params"]["ratio"]],
               ["MACs (per sample, counted)", totals["macs"]["before"], totals["macs"]["after"],
                totals["macs"]["ratio"]],
               ["file size (bytes)", totals["file_size_bytes"]["before"], totals["file_size_bytes"]["after"],
                totals["file_size_bytes"]["ratio"]],
               ["latency median ms (measured)", lat["before"], lat["after"], lat["ratio"]],
               ["latency p10-p90 ms", f"{lat['p10_before']:.4g}-{lat['p90_before']:.4g}",
                f"{lat['p10_after']:.4g}-{lat['p90_after']:.4g}", None],
           ]), "",
           f"Latency: onnxruntime CPU, batch {lat['batch_size']}, {lat['repeats']} interleaved runs; it is "
           "measured on this machine, MACs are counted: the two ratios rarely match."]
    if "metric" in report:
        before, after = report["metric"]["before"], report["metric"]["after"]
        keys = list(dict.fromkeys([*before, *after]))
        out += ["", "## Metric", "",
                _md_table(["metric", "before", "after"], [[k, before.get(k), after.get(k)] for k in keys])]
    if "budget" in report:
        b = report["budget"]
        rows = [["predicted (cost model)", b["predicted_fraction"]]]
        if "measured_fraction" in b:
            rows.append(["measured after pruning", b["measured_fraction"]])
        out += ["", f"## Budget: {b['kind']} <= {b['target']:g} x the original", "",
                _md_table(["", "fraction of the original"], rows)]
        if b.get("attempts"):
            out += ["", "Allocations measured (the closest to the target was kept):", "",
                    _md_table(["asked", "predicted", "measured", "original ms", "pruned ms"],
                              [[a["asked"], a["predicted"], a["measured"], a["original_ms"], a["measured_ms"]]
                               for a in b["attempts"]])]
    if "pipeline" in report:
        p = report["pipeline"]
        chosen = set(p.get("chosen", ()))
        out += ["", "## Pipeline" + (" (recommended: the knobs marked * were chosen by onnxprune)" if chosen else ""),
                "", _md_table(["knob", "value"], [
                    ["method" + (" *" if "method" in chosen else ""), p["method"]],
                    ["scope" + (" *" if "scope" in chosen else ""), p["scope"]],
                    ["layer_norm, max_ratio, score_consumers" + (" *" if "options" in chosen else ""),
                     f"{p['layer_norm']}, {p['max_ratio']:g}, {p['score_consumers']}"],
                    ["compensate, reconstruct" + (" *" if "recovery" in chosen else ""),
                     f"{p['compensate']}, {p['reconstruct']}"]])]
        out += ["", f"Allocation: {p['allocation']}"] if p.get("allocation") else []
        out += ["", f"Note: {p['note']}"] if p.get("note") else []
    if "groups" in report:
        out += ["", "## Pruned groups", "",
                f"Achieved ratio {report.get('achieved_ratio', 0):.1%} of the targeted channels.", "",
                _md_table(["group", "layers", "kept / size", "exact"],
                          [[g["id"], ", ".join(g["layers"]), f"{g['kept']} / {g['size']}", g["exact"]]
                           for g in report["groups"]])]
    if "decomposition" in report:
        out += ["", f"## Decomposed layers ({report.get('method')})", "",
                _md_table(["layer", "op", "ranks", "full ranks", "kernel rel err", "MACs before", "MACs after",
                           "result"],
                          [[r["name"], r["op_type"], r["ranks"], r["full_ranks"], r["rel_error"], r["macs_before"],
                            r["macs_after"], r["result"]] for r in report["decomposition"]])]
    out += ["", "## Layers", "",
            _md_table(["layer", "op", "params before", "params after", "MACs before", "MACs after",
                       "MACs after / before"],
                      [[r["name"], r["op_type"], r["params_before"], r["params_after"], r["macs_before"],
                        r["macs_after"], r["macs_ratio"]] for r in report["layers"]])]
    return "\n".join(out)
