"""Run every reliability case (a folder holding model.onnx and repro.py) and count the outcomes.

    python tools/reliability.py ../shared/reliability/cases [--timeout 120] [--memory-gb 4]

Each repro.py runs in its own process, in a copy of its folder, with a time and an address-space limit. Outcomes:
`valid` (the repro finished: its result was saved and passed the checks), `own-error` (an onnxprune error, or the
CLI's exit code 2), and the contract breaches `foreign` (any other exception, or the CLI's exit code 3),
`memory` (MemoryError or the address-space limit), `timeout`, `crash` (the process died). Exit status 1 when a
breach was seen.
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile

DRIVER = r"""
import runpy, sys
try:
    runpy.run_path("repro.py", run_name="__main__")
except MemoryError:
    print("OUTCOME memory"); sys.exit(0)
except BaseException as exc:
    from onnxprune.errors import OnnxPruneError
    kind = "own-error" if isinstance(exc, OnnxPruneError) else "foreign"
    print(f"OUTCOME {kind} {type(exc).__name__}: {str(exc)[:300]}"); sys.exit(0)
print("OUTCOME done")
"""
BREACHES = ("foreign", "memory", "timeout", "crash")


def run_case(folder: str, timeout: float, memory_gb: float) -> tuple[str, str]:
    """(outcome, detail) of one case folder."""
    work = tempfile.mkdtemp(prefix="onnxprune-case-")
    try:
        case = os.path.join(work, os.path.basename(folder))
        shutil.copytree(folder, case)
        limit = int(memory_gb * 2**30)

        def limits() -> None:
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

        try:
            proc = subprocess.run([sys.executable, "-c", DRIVER], cwd=case, capture_output=True, text=True,
                                  timeout=timeout, preexec_fn=limits)
        except subprocess.TimeoutExpired:
            return "timeout", f"over {timeout:g} s"
        lines = [line for line in proc.stdout.splitlines() if line.startswith(("OUTCOME", "exit "))]
        if proc.returncode != 0 or not lines:
            return "crash", f"exit status {proc.returncode}: {proc.stderr.strip()[-300:]}"
        outcome = lines[-1].split(maxsplit=2)
        if outcome[0] == "OUTCOME" and outcome[1] != "done":
            return outcome[1], " ".join(outcome[2:])
        cli_codes = [line.split()[1] for line in lines if line.startswith("exit ")]
        if cli_codes and cli_codes[-1] == "2":
            return "own-error", "CLI exit 2: " + proc.stderr.strip().splitlines()[-1][:300]
        if cli_codes and cli_codes[-1] != "0":
            return "foreign", f"CLI exit {cli_codes[-1]}: " + proc.stderr.strip()[-300:]
        return "valid", ""
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cases", help="folder of case folders")
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--memory-gb", type=float, default=4.0)
    args = parser.parse_args(argv)
    counts: dict[str, int] = {}
    for name in sorted(os.listdir(args.cases)):
        folder = os.path.join(args.cases, name)
        if not os.path.isfile(os.path.join(folder, "repro.py")):
            continue
        outcome, detail = run_case(folder, args.timeout, args.memory_gb)
        counts[outcome] = counts.get(outcome, 0) + 1
        print(f"{outcome:<10} {name}  {detail}", flush=True)
    print("counts: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    return 1 if any(counts.get(k) for k in BREACHES) else 0


if __name__ == "__main__":
    sys.exit(main())
