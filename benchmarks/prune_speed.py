#!/usr/bin/env python
"""Speed and memory of analyze + prune(ratio=0.3) + save, against plain onnx.load + onnx.save.

    python benchmarks/prune_speed.py [--quick] [--repeats N] [--big-gb 2.5] [--skip-big] [--tmp DIR]

Tables (DESIGN.md section 6, issue 2):
  1. light_resnet50 from the onnx package, a ResNet-50-like (25.6M params) and a ViT-B/16-like
     (86.6M params) graph with random weights: median time of the onnxprune pipeline over the median
     of a plain onnx.load + onnx.save of the same file, measured in the same run (goal <= 1.2x),
     with save_model's validation (checker full_check + onnxruntime load) and without it (check=False),
     then the time split into stages.
  2. Linear scaling: 1x, 2x, 4x, 8x stacked units of 8 bottleneck blocks; time per block should be flat.
  3. Big model: >= --big-gb GB of float32 weights in external data, pruned and saved in a child
     process; peak RSS over the weights' size (bar: < 1.5x), per stage.

The pipeline timed is what `onnxprune prune` does: result = prune(path, ratio=0.3);
save_model(result.model, out, reference=result.reference).
Stage times come from wrapping library functions for the duration of the benchmark (exclusive
time: a nested stage's time is not counted in its parent). All models are generated into a
temporary folder and deleted at the end; nothing is written next to the inputs.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for _p in (ROOT, HERE):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import onnx  # noqa: E402

import _llama  # noqa: E402
import _models  # noqa: E402

RATIO = 0.3

# --------------------------------------------------------------------------- memory (Linux /proc)


def _status() -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon, RssFile of this process in bytes (empty off Linux)."""
    out = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                    out[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return out


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False when not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class _Sampler(threading.Thread):
    """Samples RSS split (anon / file-backed) every few ms; keeps the split at the highest RSS."""

    def __init__(self, period: float = 0.005):
        super().__init__(daemon=True)
        self.period = period
        self.stop = threading.Event()
        self.peak = {"VmRSS": 0, "RssAnon": 0, "RssFile": 0}
        self.max_anon = 0

    def run(self) -> None:
        while not self.stop.is_set():
            s = _status()
            if s.get("VmRSS", 0) > self.peak["VmRSS"]:
                self.peak = {k: s.get(k, 0) for k in self.peak}
            self.max_anon = max(self.max_anon, s.get("RssAnon", 0))
            self.stop.wait(self.period)


# --------------------------------------------------------------------------- stage profiler


class Stages:
    """Exclusive wall time per stage (and, with memory=True, exact peak RSS per stage via VmHWM resets)."""

    def __init__(self, memory: bool = False):
        self.model_runs = 0  # onnxruntime runs of the model (runtime.run / runtime.observe): none expected
        self.time: dict[str, float] = {}
        self.peak: dict[str, int] = {}
        self.rss_after: dict[str, int] = {}
        self.memory = memory and _reset_peak()
        self._stack: list[list] = []  # [name, start, child_time]

    def _segment(self) -> None:
        """Close a memory segment: its peak belongs to the innermost open stage."""
        if not self.memory:
            return
        owner = self._stack[-1][0] if self._stack else "(outside)"
        hwm = _status().get("VmHWM", 0)
        self.peak[owner] = max(self.peak.get(owner, 0), hwm)
        _reset_peak()

    @contextlib.contextmanager
    def stage(self, name: str):
        self._segment()
        self._stack.append([name, time.perf_counter(), 0.0])
        try:
            yield
        finally:
            self._segment()
            _, start, child = self._stack.pop()
            elapsed = time.perf_counter() - start
            self.time[name] = self.time.get(name, 0.0) + elapsed - child
            if self._stack:
                self._stack[-1][2] += elapsed
            if self.memory:
                self.rss_after[name] = _status().get("VmRSS", 0)

    def wrap(self, name: str, fn):
        def wrapped(*args, **kwargs):
            with self.stage(name):
                return fn(*args, **kwargs)
        wrapped.__wrapped__ = fn
        return wrapped

    def total_peak(self) -> int:
        self._segment()
        return max(self.peak.values(), default=0)


# (module, attribute, stage). Missing attributes are skipped: the library is free to refactor,
# its time then shows up in the enclosing stage.
_PATCHES = [
    ("onnxprune.ir", "load_model", "load"),
    ("onnxprune.ir", "load_with_weights", "load"),
    ("onnxprune.pruning", "analyze", "analyze"),
    ("onnxprune.ir", "infer_shapes_and_types", "shapes"),
    ("onnxprune.pruning", "apply", "surgery"),
    ("onnxprune.stats", "stats", "stats"),
    ("onnxprune.external_data", "build_output", "save:build"),
    ("onnxprune.external_data", "write_proto", "save:write"),
    ("onnxprune.ir", "validate_file", "validate"),
]

STAGE_COLUMNS = ["load", "analyze", "shapes", "criteria", "surgery", "stats", "prune:rest",
                 "save:build", "save:write", "validate", "save:rest"]


@contextlib.contextmanager
def instrumented(stages: Stages):
    """Wrap library functions so that their time is booked to `stages` (restored on exit)."""
    undo = []
    for module_name, attr, stage in _PATCHES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        fn = getattr(module, attr, None)
        if fn is None:
            continue
        setattr(module, attr, stages.wrap(stage, fn))
        undo.append((module, attr, fn))
    runtime = importlib.import_module("onnxprune.runtime")
    for attr in ("run", "observe"):
        fn = getattr(runtime, attr)

        def counted(*args, _fn=fn, **kwargs):
            stages.model_runs += 1
            return _fn(*args, **kwargs)
        setattr(runtime, attr, counted)
        undo.append((runtime, attr, fn))
    pruning = importlib.import_module("onnxprune.pruning")
    criterion_for = getattr(pruning, "criterion_for", None)
    if criterion_for is not None:
        pruning.criterion_for = lambda *a, **k: stages.wrap("criteria", criterion_for(*a, **k))
        undo.append((pruning, "criterion_for", criterion_for))
    try:
        yield
    finally:
        for module, attr, fn in reversed(undo):
            setattr(module, attr, fn)


def run_pipeline(path: str, out: str, *, check: bool, stages: Stages, external_data: bool | None = None):
    """prune(path, 0.3); save_model(..., reference=result.reference), as the CLI does."""
    import onnxprune as op

    with instrumented(stages):
        with stages.stage("prune:rest"):
            result = op.prune(path, ratio=RATIO)
        with stages.stage("save:rest"):
            op.save_model(result.model, out, reference=result.reference, check=check, external_data=external_data)
    return result.reference, result


# --------------------------------------------------------------------------- helpers


def _remove(*paths: str) -> None:
    for p in paths:
        for q in (p, p + ".data"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(q)


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def table(title: str, note: str, header: list[str], rows: list[list], align: str | None = None) -> str:
    """Aligned text table: title, one-line explanation, header, rows (first column left-aligned)."""
    cells = [[str(c) for c in header]] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[k]) for r in cells) for k in range(len(header))]
    align = align or "l" + "r" * (len(header) - 1)

    def line(r):
        return "  ".join(c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(r, widths, align)).rstrip()

    out = [title, note, line(cells[0]), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in cells[1:]]
    return "\n".join(out) + "\n"


def _fmt(value) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        return f"{value:.2f}"
    return str(value)


def _ms(seconds: float) -> str:
    return "n/a" if math.isnan(seconds) else f"{seconds * 1000:.0f}"


def _x(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.2f}x"


def _human(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return str(int(n))


def _short_error(exc: BaseException) -> str:
    msg = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {msg}"[:160]


# --------------------------------------------------------------------------- measurements


def measure(path: str, repeats: int, workdir: str, *, with_nocheck: bool = True) -> dict:
    """Baseline and pipeline, interleaved, `repeats` times after one warm-up; medians."""
    base_out = os.path.join(workdir, "baseline_out.onnx")
    out = os.path.join(workdir, "pruned_out.onnx")
    out_nc = os.path.join(workdir, "pruned_nocheck.onnx")
    base_load, base_save, base_total = [], [], []
    totals, totals_nc = [], []
    cpu_ratios = []  # pipeline CPU time over the baseline's, per repeat (waiting for a busy CPU is not counted)
    per_stage: dict[str, list[float]] = {k: [] for k in STAGE_COLUMNS}
    errors: dict[str, str] = {}
    info: dict = {}
    for rep in range(repeats + 1):  # rep 0 warms caches and imports, not counted
        gc.collect()
        c0 = time.process_time()
        t0 = time.perf_counter()
        model = onnx.load(path)
        t1 = time.perf_counter()
        onnx.save(model, base_out)
        t2 = time.perf_counter()
        c2 = time.process_time()
        if rep == 0:
            info["nodes"] = len(model.graph.node)
        del model
        _remove(base_out)
        gc.collect()

        stages = Stages()
        c3 = time.process_time()
        t3 = time.perf_counter()
        result = None
        try:
            _, result = run_pipeline(path, out, check=True, stages=stages)
        except Exception as exc:  # noqa: BLE001 - a failing library call is reported, not hidden
            errors.setdefault("check", _short_error(exc))
        t4 = time.perf_counter()
        c4 = time.process_time()
        _remove(out)
        if result is not None and rep == 0:
            info["model_runs"] = stages.model_runs
            info["groups"] = len(result.pruned_groups)
            info["params_after"] = result.summary.after.params
            info["params_before"] = result.summary.before.params
        del result
        gc.collect()
        t_nc = float("nan")
        if with_nocheck:
            st_nc = Stages()
            t5 = time.perf_counter()
            try:
                run_pipeline(path, out_nc, check=False, stages=st_nc)
                t_nc = time.perf_counter() - t5
            except Exception as exc:  # noqa: BLE001
                errors.setdefault("nocheck", _short_error(exc))
            _remove(out_nc)
            gc.collect()
        if rep == 0:
            continue
        base_load.append(t1 - t0)
        base_save.append(t2 - t1)
        base_total.append(t2 - t0)
        if "check" not in errors:
            totals.append(t4 - t3)
            cpu_ratios.append((c4 - c3) / max(c2 - c0, 1e-9))
            for k in STAGE_COLUMNS:
                per_stage[k].append(stages.time.get(k, 0.0))
        totals_nc.append(t_nc)
        if "check" in errors and with_nocheck and not math.isnan(t_nc):  # stages from the check=False run
            for k in STAGE_COLUMNS:
                per_stage[k].append(st_nc.time.get(k, 0.0))
    return {
        "base_load": _median(base_load), "base_save": _median(base_save), "base": _median(base_total),
        "total": _median(totals), "total_nocheck": _median(totals_nc), "cpu_ratio": _median(cpu_ratios),
        "ratios": [t / b for t, b in zip(totals, base_total)],
        "stages": {k: _median(v) for k, v in per_stage.items()},
        "errors": errors, **info,
    }


def table1(models: list[tuple[str, str, int]], repeats: int, workdir: str) -> tuple[str, dict]:
    rows, stage_rows, results = [], [], {}
    for name, path, params in models:
        print(f"  [1] {name}: {repeats} repeats ...", file=sys.stderr, flush=True)
        m = measure(path, repeats, workdir)
        results[name] = m
        status = "ok"
        if m["errors"]:
            status = "; ".join(f"{k}: {v}" for k, v in m["errors"].items())
        base = m["base"]
        rows.append([name, _human(params), f"{os.path.getsize(path) / 1e6:.1f}", m.get("nodes", "?"),
                     f"{_ms(m['base_load'])} + {_ms(m['base_save'])}", _ms(base), _ms(m["total"]), _x(m["total"] / base),
                     _x(_median(m["ratios"])), _x(m["cpu_ratio"]), _ms(m["total_nocheck"]),
                     _x(m["total_nocheck"] / base), m.get("model_runs", "?"), status])
        st = m["stages"]
        checked = "check" not in m["errors"]
        cells = [f"{_ms(st[k])} ({st[k] / base:.2f})" for k in STAGE_COLUMNS]
        stage_rows.append([name + ("" if checked else " [check=False]"), _ms(base), *cells,
                           f"{_ms(sum(st.values()))} ({sum(st.values()) / base:.2f})"])
    t1 = table(
        f"Table 1. analyze + prune(ratio={RATIO}) + save vs plain onnx.load + onnx.save "
        f"(medians of {repeats} runs, same process)",
        "ratio = pipeline / baseline (goal <= 1.2x): of the medians; 'paired' = median of each repeat's ratio (the two "
        "runs side by side); 'cpu' = the same for process CPU time (time spent waiting for a busy CPU left out). "
        "'check' = save_model default (checker full_check + ORT load), 'nocheck' = save_model(check=False); "
        "'ORT runs' = onnxruntime runs of the model in the pipeline (runtime.run / observe; the goal is none).",
        ["model", "params", "MB", "nodes", "base load+save ms", "baseline ms", "check ms", "ratio", "paired", "cpu",
         "nocheck ms", "ratio nocheck", "ORT runs", "status"],
        rows, align="lrrrrrrrrrrrrl")
    t1b = table(
        "Table 1b. where the time goes: median ms per stage (in parentheses: multiple of the baseline time)",
        "load = load_model; shapes = ir.infer_shapes_and_types (analysis + stats); prune:rest / save:rest = "
        "what prune() / save_model() spend outside the listed stages; validate = checker full_check + ORT load.",
        ["model", "baseline", *STAGE_COLUMNS, "sum"], stage_rows)
    return t1 + "\n" + t1b, results


def table2(units_list: list[int], repeats: int, workdir: str) -> str:
    rows = []
    first = None
    prev = None
    for units in units_list:
        blocks = units * 8
        model, params = _models.conv_blocks(units)
        path = os.path.join(workdir, f"conv_blocks_x{units}.onnx")
        onnx.save(model, path)
        nodes = len(model.graph.node)
        del model
        print(f"  [2] conv_blocks x{units}: {repeats} repeats ...", file=sys.stderr, flush=True)
        m = measure(path, repeats, workdir)
        _remove(path)
        total = m["total"] if not math.isnan(m["total"]) else m["total_nocheck"]
        per_block = total / blocks
        first = first or per_block
        marginal = float("nan") if prev is None else (total - prev[1]) / (blocks - prev[0])
        prev = (blocks, total)
        st = m["stages"]
        analysis = st["analyze"] + st["shapes"]
        rows.append([f"{units}x", blocks, nodes, _human(params), _ms(m["base"]), _ms(total), f"{per_block * 1000:.1f}",
                     f"{per_block / first:.2f}", "n/a" if math.isnan(marginal) else f"{marginal * 1000:.1f}",
                     f"{analysis / blocks * 1000:.1f}", _x(total / m["base"]),
                     _x(m["total_nocheck"] / m["base"]),
                     "ok" if not m["errors"] else "; ".join(f"{k}: {v}" for k, v in m["errors"].items())])
    return table(
        f"Table 2. linear scaling: stem + N units of 8 bottleneck blocks (512-128-128-512, 28x28), "
        f"prune(ratio={RATIO}) + save, medians of {repeats}",
        "ms/block should stay flat (per-block vs 1x ~ 1.0; marginal = extra ms per added block); "
        "analysis ms/block = analyze + shape inference; ratios vs plain onnx.load + onnx.save.",
        ["size", "blocks", "nodes", "params", "baseline ms", "pipeline ms", "ms/block", "per-block vs 1x",
         "marginal ms/block", "analysis ms/block", "ratio", "ratio nocheck", "status"],
        rows, align="lrrrrrrrrrrrl")


# --------------------------------------------------------------------------- big model (child processes)


def _child(mode: str, path: str, out: str) -> None:
    """Run in a fresh interpreter: prints one JSON line with times and memory."""
    import onnxruntime

    import onnxprune  # noqa: F401  (imports counted in the startup RSS, as for any user)

    onnxruntime.set_default_logger_severity(3)

    gc.collect()
    startup = _status().get("VmRSS", 0)
    sampler = _Sampler()
    sampler.start()
    stages = Stages(memory=True)
    t0 = time.perf_counter()
    error = None
    try:
        if mode == "baseline":
            with stages.stage("load"):
                model = onnx.load(path)
            with stages.stage("save:rest"):
                onnx.save(model, out, save_as_external_data=True, all_tensors_to_one_file=True,
                          location=os.path.basename(out) + ".data")
        else:
            run_pipeline(path, out, check=True, stages=stages, external_data=True)
    except Exception as exc:  # noqa: BLE001
        error = _short_error(exc)
    elapsed = time.perf_counter() - t0
    peak = stages.total_peak()
    sampler.stop.set()
    sampler.join()
    print(json.dumps({"time": elapsed, "startup_rss": startup, "peak": peak, "stage_peak": stages.peak,
                      "model_runs": stages.model_runs,
                      "rss_after": stages.rss_after, "stage_time": stages.time, "sampled": sampler.peak,
                      "max_anon": sampler.max_anon, "exact_peaks": stages.memory, "error": error,
                      "out_bytes": _file_bytes(out)}))


def _file_bytes(path: str) -> int:
    return sum(os.path.getsize(p) for p in (path, path + ".data") if os.path.exists(p))


def _run_child(mode: str, path: str, out: str) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", mode, path, out]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": f"child exited {proc.returncode}: {proc.stderr.strip().splitlines()[-1:] or ''}"}
    return json.loads(lines[-1])


def _write_big(kind: str, path: str, big_gb: float) -> tuple[int, int, str]:
    """Write the big model; returns (weight bytes, params, description)."""
    if kind == "mlp":
        weight_bytes, params = _models.write_big_mlp(path, int(big_gb * 2**30))
        return weight_bytes, params, f"{weight_bytes // (8192 * 8192 * 4)} x MatMul 8192x8192 + Relu"
    config = _llama.LlamaConfig.big(big_gb * 2**30)
    weight_bytes, params = _llama.write_llama(path, config)
    return weight_bytes, params, (f"Llama-shaped decoder: {config.layers} layers, dim {config.dim}, {config.heads} "
                                  f"query / {config.kv_heads} KV heads, SwiGLU {config.ffn}, vocabulary "
                                  f"{config.vocab}, RoPE, RMSNorm, prefill graph")


def table3(big_gb: float, workdir: str, kind: str = "llama") -> str:
    need = big_gb * 2**30 * 2.6  # input + pruned output (~0.5x) + baseline output (1x), plus margin
    free = shutil.disk_usage(workdir).free
    if free < need:
        return f"Table 3 skipped: {free / 2**30:.1f} GiB free in {workdir}, need ~{need / 2**30:.1f} GiB\n"
    path = os.path.join(workdir, f"big_{kind}.onnx")
    print(f"  [3] writing >= {big_gb} GiB of external weights ({kind}) ...", file=sys.stderr, flush=True)
    t = time.perf_counter()
    weight_bytes, params, described = _write_big(kind, path, big_gb)
    gen = time.perf_counter() - t
    runs = {}
    for mode in ("baseline", "onnxprune"):
        print(f"  [3] {mode} child ...", file=sys.stderr, flush=True)
        out = os.path.join(workdir, f"big_{mode}_out.onnx")
        runs[mode] = _run_child(mode, path, out)
        _remove(out)
    _remove(path)
    gib = 2**30
    rows = []
    for mode, label in (("onnxprune", "onnxprune load+prune+save(ext)"),
                        ("baseline", "onnx.load + onnx.save(ext)")):
        r = runs[mode]
        if r.get("peak") is None:
            rows.append([label, "n/a", "n/a", "n/a", "n/a", "n/a", "n/a", "n/a", "n/a", "n/a", r.get("error")])
            continue
        base_time = runs["baseline"].get("time")
        ratio = _x(r["time"] / base_time) if base_time else "n/a"
        rows.append([label, f"{r['time']:.1f}", ratio, f"{r['startup_rss'] / gib:.2f}", f"{r['peak'] / gib:.2f}",
                     _x(r["peak"] / weight_bytes), _x((r["peak"] - r["startup_rss"]) / weight_bytes),
                     f"{r['sampled']['RssAnon'] / gib:.2f} / {r['sampled']['RssFile'] / gib:.2f}",
                     f"{r['out_bytes'] / gib:.2f}", r.get("model_runs", 0) if mode == "onnxprune" else "-",
                     ("FAIL " if r["peak"] >= 1.5 * weight_bytes else "ok ") + (r["error"] or "")])
    t3 = table(
        f"Table 3. big model: {params / 1e9:.2f}G params, {weight_bytes / gib:.2f} GiB float32 weights in external "
        f"data ({described}; generated in {gen:.0f} s), one child process each, baseline first",
        "time ratio = over the baseline's time (goal <= 1.3x); peak = exact VmHWM of the child; bar: peak < 1.5x the "
        "weights; anon/file = RSS split at the sampled peak (file = page cache mapped by memmap).",
        ["run", "time s", "ratio", "startup GiB", "peak GiB", "peak/weights", "(peak-startup)/weights",
         "anon/file GiB", "output GiB", "ORT runs", "status"],
        rows, align="lrrrrrrrrrl")
    r = runs["onnxprune"]
    if r.get("stage_peak"):
        srows = []
        for k in STAGE_COLUMNS + ["(outside)"]:
            if k in r["stage_peak"] or k in r["stage_time"]:
                peak = r["stage_peak"].get(k, 0)
                srows.append([k, f"{r['stage_time'].get(k, 0.0):.2f}", f"{peak / gib:.2f}",
                              _x(peak / weight_bytes),
                              f"{r['rss_after'][k] / gib:.2f}" if k in r["rss_after"] else "-"])
        t3 += "\n" + table(
            "Table 3b. big model, onnxprune child: exclusive time and peak RSS per stage",
            "peak GiB = highest RSS while the stage (and not a nested one) ran; RSS after = resident when it returned.",
            ["stage", "time s", "peak GiB", "peak/weights", "RSS after GiB"], srows)
    return t3


def profile(name: str, path: str, workdir: str, top: int = 15) -> str:
    """cProfile of one load + prune + save(check=True), top functions by internal time."""
    import cProfile
    import io
    import pstats

    out = os.path.join(workdir, "profiled.onnx")
    prof = cProfile.Profile()
    prof.enable()
    try:
        run_pipeline(path, out, check=True, stages=Stages())
    except Exception as exc:  # noqa: BLE001
        print(f"  profile {name}: {_short_error(exc)}", file=sys.stderr)
    prof.disable()
    _remove(out)
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(top)
    body = "\n".join(ln for ln in buf.getvalue().splitlines() if ln.strip() and "Ordered by" not in ln
                     and "List reduced" not in ln)
    return f"cProfile, {name}: load + prune + save, top {top} by internal time\n{body}\n"


# --------------------------------------------------------------------------- main


def light_resnet50() -> str:
    return os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light", "light_resnet50.onnx")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 repeats, scaling up to 4x")
    parser.add_argument("--repeats", type=int, default=None, help="repeats per measurement (default 5, --quick 2)")
    parser.add_argument("--big-gb", type=float, default=2.5, help="GiB of external weights for table 3 (default 2.5)")
    parser.add_argument("--skip-big", action="store_true", help="skip table 3")
    parser.add_argument("--big-model", choices=("llama", "mlp"), default="llama",
                        help="table 3's model: the Llama-shaped decoder (default) or the MatMul+Relu stack")
    parser.add_argument("--no-torch", action="store_true",
                        help="table 1 without the torch.onnx.export models (they need torch and onnxscript)")
    parser.add_argument("--tables", default="1,2,3", help="which tables to run, e.g. 1,3")
    parser.add_argument("--tmp", default=None, help="folder for the generated models (default: system temp)")
    parser.add_argument("--profile", action="store_true",
                        help="also print the cProfile top 15 (internal time) of one pipeline run per table-1 model")
    parser.add_argument("--child", nargs=3, metavar=("MODE", "MODEL", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(*args.child)
        return 0
    repeats = args.repeats or (2 if args.quick else 5)
    wanted = {t.strip() for t in args.tables.split(",")}
    if args.skip_big:
        wanted.discard("3")
    import onnxruntime

    import onnxprune

    onnxruntime.set_default_logger_severity(3)  # keep ORT warnings (e.g. unused initializers) off the tables

    print(f"onnxprune benchmark: python {sys.version.split()[0]}, onnx {onnx.__version__}, onnxruntime "
          f"{onnxruntime.__version__}, {os.cpu_count()} CPUs, onnxprune from {os.path.dirname(onnxprune.__file__)}\n")
    workdir = tempfile.mkdtemp(prefix="onnxprune-bench-", dir=args.tmp)
    try:
        if "1" in wanted:
            models = [("light_resnet50 (onnx pkg)", light_resnet50(), 0)]
            for name, build in (("resnet50_like", _models.resnet50_like), ("vit_b16_like", _models.vit_b16_like)):
                print(f"  building {name} ...", file=sys.stderr, flush=True)
                model, params = build()
                path = os.path.join(workdir, f"{name}.onnx")
                onnx.save(model, path)
                del model
                models.append((name, path, params))
            if not args.no_torch:
                models += _torch_exports(workdir)
            models[0] = (models[0][0], models[0][1], _light_params(models[0][1]))
            text, _ = table1(models, repeats, workdir)
            print(text, flush=True)
            if args.profile:
                for name, path, _ in models:
                    print(profile(name, path, workdir), flush=True)
            for _, path, _ in models[1:]:
                _remove(path)
        if "2" in wanted:
            print(table2([1, 2, 4] if args.quick else [1, 2, 4, 8], repeats, workdir), flush=True)
        if "3" in wanted:
            print(table3(args.big_gb, workdir, args.big_model), flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def _torch_exports(workdir: str) -> list[tuple[str, str, int]]:
    """ResNet-50 and ViT-B/16 (benchmarks/_torch_models.py) exported by both torch exporters, each in a child
    process (torch stays out of the measuring process); [] with a note when torch or onnxscript is missing."""
    models = []
    for arch in ("resnet50", "vit_b16"):
        for exporter in ("legacy", "dynamo"):
            name = f"{arch} torch {exporter}"
            path = os.path.join(workdir, f"{arch}_{exporter}.onnx")
            print(f"  exporting {name} ...", file=sys.stderr, flush=True)
            code = (f"import sys; sys.path.insert(0, {HERE!r}); import warnings; warnings.simplefilter('ignore'); "
                    f"import _torch_models; print(_torch_models.export({arch!r}, {path!r}, {exporter == 'dynamo'}))")
            proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
            lines = proc.stdout.strip().splitlines()
            if proc.returncode != 0 or not lines or not lines[-1].isdigit():
                tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
                print(f"  {name}: export failed ({tail}); left out", file=sys.stderr, flush=True)
                continue
            models.append((name, path, int(lines[-1])))
    return models


def _light_params(path: str) -> int:
    import onnxprune as op

    try:
        return op.stats(path).params
    except Exception:  # noqa: BLE001
        return 0


if __name__ == "__main__":
    sys.exit(main())
