"""Seeded structure-aware fuzzing of onnxprune's public entry points, each case in a limited worker process.

    taskset -c 0 python tools/fuzz/run.py --cases 3000 --seed 0 [--timeout 60] [--memory-gb 3] [--keep DIR]

Case k: a seed model (a fixture or an onnx backend-test model file) chosen with numpy.random.default_rng((seed, k)),
0-3 mutations (mutations.py), one operation (worker.OPERATIONS). The worker process has an address-space limit;
a case over `timeout` seconds kills it (outcome `timeout`, a new worker starts), a dead worker is a `crash`.
Prints the counts by outcome and by operation, and every breach (foreign, invalid-output, modified-input,
memory, timeout, crash) with its mutations; --keep copies breach cases there. Exit status 1 on a breach.
"""
from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import resource
import select
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import onnx

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

from mutations import mutate, write_case  # noqa: E402
from worker import OPERATIONS  # noqa: E402
BREACHES = ("foreign", "invalid-output", "modified-input", "memory", "timeout", "crash")
BACKEND = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data")


def seed_models() -> list[str]:
    """Fixtures (external-data ones left out: cases are rewritten inline) and backend-test model files."""
    files = [p for p in sorted(glob.glob(os.path.join(ROOT, "fixtures", "*.onnx")))
             if not os.path.exists(p + ".data")]
    for folder in ("pytorch-converted", "pytorch-operator", "simple"):
        files += sorted(glob.glob(os.path.join(BACKEND, folder, "*", "model.onnx")))
    return files


class Worker:
    """A worker.py process under an address-space limit; `ask` returns its reply or None on timeout / death."""

    def __init__(self, memory_gb: float):
        self.memory = int(memory_gb * 2**30)
        self.proc: subprocess.Popen | None = None

    def _start(self) -> subprocess.Popen:
        limit = self.memory

        def limits() -> None:
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
                   OMP_NUM_THREADS="1")
        return subprocess.Popen([sys.executable, os.path.join(HERE, "worker.py")], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, preexec_fn=limits,
                                env=env, cwd=ROOT)

    def ask(self, request: dict, timeout: float) -> tuple[str, str]:
        if self.proc is None or self.proc.poll() is not None:
            self.proc = self._start()
        try:
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            self.stop()
            return "crash", "worker died before the request"
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            self.stop()
            return "timeout", f"over {timeout:g} s"
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait()
            self.proc = None
            return "crash", f"worker exit status {code}"
        reply = json.loads(line)
        return reply["outcome"], reply["detail"]

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


def make_case(k: int, seed: int, seeds: list[str], folder: str) -> tuple[str, str, list[str], str]:
    """(path, operation, mutations, seed model) of case k, written under `folder`."""
    rng = np.random.default_rng((seed, k))
    source = seeds[int(rng.integers(len(seeds)))]
    model = onnx.load(source)
    done = mutate(model, rng, int(rng.integers(0, 4)))
    operation = OPERATIONS[int(rng.integers(len(OPERATIONS)))]
    return write_case(model, os.path.join(folder, f"case_{k}")), operation, done, os.path.relpath(source, ROOT)


def fuzz(cases: int, seed: int = 0, timeout: float = 60.0, memory_gb: float = 3.0, keep: str | None = None,
         log=None) -> dict:
    """Run `cases` cases; {"outcomes": Counter, "by_operation": {op: Counter}, "breaches": [...], "errors": own
    errors by class, "unmutated": outcomes of unmutated cases, "seconds"}."""
    seeds = seed_models()
    worker = Worker(memory_gb)
    outcomes: collections.Counter = collections.Counter()
    by_op: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    errors: collections.Counter = collections.Counter()  # own errors by class
    unmutated: collections.Counter = collections.Counter()  # outcomes of the cases without a mutation
    breaches = []
    start = time.perf_counter()
    scratch = tempfile.mkdtemp(prefix="onnxprune-fuzz-")
    try:
        for k in range(cases):
            cases_dir = os.path.join(scratch, "cases")
            out = os.path.join(scratch, "out")
            os.makedirs(out, exist_ok=True)
            path, operation, done, source = make_case(k, seed, seeds, cases_dir)
            outcome, detail = worker.ask({"path": path, "op": operation, "out": out}, timeout)
            outcomes[outcome] += 1
            by_op[operation][outcome] += 1
            if outcome == "own-error":
                errors[detail.split(":")[0]] += 1
            if not done:
                unmutated[outcome] += 1
            if outcome in BREACHES:
                breaches.append({"case": k, "op": operation, "seed": source, "mutations": done,
                                 "outcome": outcome, "detail": detail})
                if keep:
                    shutil.copytree(os.path.dirname(path), os.path.join(keep, f"case_{k}_{operation}"),
                                    dirs_exist_ok=True)
                if log:
                    log(f"case {k} {operation} {outcome}: {detail} | {source} {done}")
            shutil.rmtree(os.path.dirname(path), ignore_errors=True)
            shutil.rmtree(out, ignore_errors=True)
    finally:
        worker.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    return {"outcomes": outcomes, "by_operation": dict(by_op), "breaches": breaches, "errors": errors,
            "unmutated": unmutated, "seconds": time.perf_counter() - start}


def table(report: dict) -> str:
    kinds = sorted({o for c in report["by_operation"].values() for o in c})
    lines = [f"{'operation':<14}" + "".join(f"{k:>16}" for k in kinds) + f"{'total':>8}"]
    for operation in sorted(report["by_operation"]):
        row = report["by_operation"][operation]
        lines.append(f"{operation:<14}" + "".join(f"{row.get(k, 0):>16}" for k in kinds) + f"{sum(row.values()):>8}")
    total = report["outcomes"]
    lines.append(f"{'all':<14}" + "".join(f"{total.get(k, 0):>16}" for k in kinds) + f"{sum(total.values()):>8}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--memory-gb", type=float, default=3.0)
    parser.add_argument("--keep", help="copy breach cases into this folder")
    args = parser.parse_args(argv)
    report = fuzz(args.cases, args.seed, args.timeout, args.memory_gb, args.keep, log=print)
    print(table(report))
    print("own errors by class: " + ", ".join(f"{k} {v}" for k, v in report["errors"].most_common()))
    print("cases without a mutation: " + ", ".join(f"{k} {v}" for k, v in sorted(report["unmutated"].items())))
    print(f"{args.cases} cases in {report['seconds']:.0f} s; breaches: {len(report['breaches'])}")
    return 1 if report["breaches"] else 0


if __name__ == "__main__":
    sys.exit(main())
