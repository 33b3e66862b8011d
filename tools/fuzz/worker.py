"""Fuzz worker: runs one public entry point of onnxprune per request and classifies what happened.

Reads JSON lines {"path": model file, "op": operation, "out": scratch folder} on stdin and writes one JSON line
{"outcome", "detail"} per request on stdout. Outcomes: valid (a result, saved and checked independently:
onnx.checker full_check and an onnxruntime session with default options), own-error (an onnxprune error),
and the breaches: foreign (any other exception), invalid-output (a result that fails the independent checks,
or that save_model refuses although onnxruntime loads the original), modified-input, memory.
Run it under a memory limit; the driver (run.py) kills it on timeout.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import traceback
from contextlib import redirect_stderr, redirect_stdout

import onnx
import onnxruntime as ort

import onnxprune as op
from onnxprune.cli import main as cli_main

ort.set_default_logger_severity(4)


def fingerprint(folder: str) -> str:
    digest = hashlib.sha256()
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if os.path.isfile(path) and not os.path.islink(path):
            digest.update(name.encode())
            with open(path, "rb") as f:
                digest.update(f.read())
    return digest.hexdigest()


def loads_in_ort(path: str) -> bool:
    try:
        ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        return True
    except Exception:  # noqa: BLE001  any refusal
        return False


def check_written(path: str) -> str | None:
    """None when the written file passes onnx.checker (full) and loads in onnxruntime, else why not."""
    try:
        onnx.checker.check_model(path, full_check=True)
    except Exception as exc:  # noqa: BLE001
        return f"checker: {str(exc)[:200]}"
    try:
        ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001
        return f"onnxruntime: {str(exc)[:200]}"
    return None


def save_and_check(result, source: str, out: str) -> tuple[str, str]:
    target = os.path.join(out, "result.onnx")
    try:
        op.save_model(result.model, target, reference=onnx.load(source, load_external_data=False))
    except op.VerificationError as exc:
        if loads_in_ort(source):
            return "invalid-output", f"save_model refused the result: {str(exc)[:200]}"
        return "own-error", "VerificationError (the original does not load in onnxruntime either)"
    problem = check_written(target)
    return ("invalid-output", problem) if problem else ("valid", "")


def first_layer(path: str) -> str:
    analysis = op.analyze(path)
    names = [l.name for l in analysis.layers if l.group is not None and analysis.groups[l.group].prunable]
    if not names:
        raise op.UnsupportedError("no prunable layer")  # the operation then ends in onnxprune's own error
    return names[0]


def run_op(name: str, path: str, out: str) -> tuple[str, str]:
    if name == "analyze":
        op.analyze(path)
        return "valid", ""
    if name == "stats":
        op.stats(path)
        return "valid", ""
    if name == "prune":
        return save_and_check(op.prune(path, ratio=0.3), path, out)
    if name == "prune_verify":
        return save_and_check(op.prune(path, ratio=0.3, verify=True), path, out)
    if name == "prune_ratios":
        return save_and_check(op.prune(path, ratios={first_layer(path): 0.5}), path, out)
    if name == "prune_index":
        return save_and_check(op.prune_by_index(path, {first_layer(path): [0]}, verify=True), path, out)
    if name == "prune_macs":
        return save_and_check(op.prune(path, target_macs=0.7, scope="uniform"), path, out)
    if name == "plan_apply":
        plan = op.make_plan(path, "l1", 0.3, scope="global")
        return save_and_check(op.apply_plan(path, plan), path, out)
    if name == "verify":
        op.verify(path, path)
        return "valid", ""
    if name == "decompose":
        return save_and_check(op.decompose(path, method="svd", rank_ratio=0.5), path, out)
    if name == "sparsify":
        return save_and_check(op.sparsify(path, sparsity=0.5), path, out)
    if name == "cli_prune":
        target = os.path.join(out, "cli.onnx")
        err = io.StringIO()
        with redirect_stderr(err), redirect_stdout(io.StringIO()):
            code = cli_main(["prune", path, "-o", target, "--ratio", "0.3", "--verify"])
        if code == 2:
            return "own-error", "CLI exit 2"
        if code != 0 or "Traceback" in err.getvalue():
            return "foreign", f"CLI exit {code}: {err.getvalue().strip()[-200:]}"
        problem = check_written(target)
        return ("invalid-output", problem) if problem else ("valid", "")
    raise ValueError(f"unknown operation {name}")


OPERATIONS = ("analyze", "stats", "prune", "prune_verify", "prune_ratios", "prune_index", "prune_macs", "plan_apply",
              "verify", "decompose", "sparsify", "cli_prune")


def handle(request: dict) -> dict:
    path, name, out = request["path"], request["op"], request["out"]
    folder = os.path.dirname(path)
    before = fingerprint(folder)
    try:
        outcome, detail = run_op(name, path, out)
    except op.OnnxPruneError as exc:
        outcome, detail = "own-error", f"{type(exc).__name__}: {str(exc)[:160]}"
    except MemoryError:
        outcome, detail = "memory", "MemoryError"
    except Exception as exc:  # noqa: BLE001  the breach being looked for
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if "onnxprune" in f.filename]
        where = f"{os.path.relpath(frames[-1].filename)}:{frames[-1].lineno}" if frames else "?"
        outcome, detail = "foreign", f"{type(exc).__name__} @ {where}: {str(exc)[:160]}"
    if fingerprint(folder) != before:
        outcome, detail = "modified-input", f"the case folder changed ({detail})"
    return {"outcome": outcome, "detail": detail}


def main() -> None:
    replies = os.fdopen(os.dup(1), "w")  # the protocol's channel; anything else printed goes to stderr
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    for line in sys.stdin:
        if line.strip():
            replies.write(json.dumps(handle(json.loads(line))) + "\n")
            replies.flush()


if __name__ == "__main__":
    main()
