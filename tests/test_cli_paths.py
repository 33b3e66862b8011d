"""Command-line paths: every command checks all its outputs against its inputs and against each other before any
work (exit 2, nothing written, inputs unchanged byte for byte), creates missing output folders, and refuses flags
it would silently ignore."""
from __future__ import annotations

import re

import numpy as np
import onnx
import pytest

from onnxprune.cli import main
from test_criteria_weight import chain_model
from test_sensitivity import cnn

NEVER = "onnxprune never overwrites its input"


@pytest.fixture
def files(tmp_path):
    """A model, a plan made for it, calibration and evaluation data; and their bytes, to check they stay."""
    model, plan = tmp_path / "m.onnx", tmp_path / "plan.json"
    onnx.save(chain_model(), model)
    assert main(["plan", str(model), "-o", str(plan), "--ratio", "0.5", "--quiet"]) == 0
    x = np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32)
    np.save(tmp_path / "cal.npy", x)
    np.savez(tmp_path / "eval.npz", x=x, y=np.zeros(4, np.int64))
    paths = {"model": model, "plan": plan, "cal": tmp_path / "cal.npy", "eval": tmp_path / "eval.npz"}
    return paths, {name: path.read_bytes() for name, path in paths.items()}


def refused(capsys, argv: list[str], message: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "error:" in err and message in err, err


def unchanged(files) -> bool:
    paths, before = files
    return {name: path.read_bytes() for name, path in paths.items()} == before


def written(tmp_path) -> set[str]:
    """The files in tmp_path other than the fixture's."""
    return {p.name for p in tmp_path.rglob("*") if p.is_file()} - {"m.onnx", "plan.json", "cal.npy", "eval.npz"}


# --------------------------------------------------------------------------- 1. prune --plan never overwrites the plan

@pytest.mark.parametrize("flag", ["-o", "--save-plan"])
def test_prune_with_a_plan_never_overwrites_the_plan(files, tmp_path, capsys, flag):
    paths, _ = files
    argv = ["prune", str(paths["model"]), "--plan", str(paths["plan"]), "-o", str(tmp_path / "out.onnx"),
            flag, str(paths["plan"])]
    refused(capsys, argv, f"output {flag} '{paths['plan']}' is the input plan; {NEVER}")
    assert unchanged(files) and not written(tmp_path)


# --------------------------------------------------------------------------- 2. --record is not the model output

def test_record_cannot_be_the_model_output(files, tmp_path, capsys):
    paths, _ = files
    out = tmp_path / "out.onnx"
    refused(capsys, ["prune", str(paths["model"]), "--ratio", "0.5", "-o", str(out), "--record", str(out)],
            f"output --record '{out}' is also the output -o; give each output its own file")
    assert unchanged(files) and not written(tmp_path)


# --------------------------------------------------------------------------- 3. output folders

def _sensitivity(paths, tmp_path, *outputs: str) -> list[str]:
    onnx.save(cnn(), tmp_path / "cnn.onnx")
    x = np.random.default_rng(1).standard_normal((32, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "data.npz", x=x, labels=np.arange(32) % 10)
    return ["sensitivity", str(tmp_path / "cnn.onnx"), "--data", str(tmp_path / "data.npz"), "--ratios", "0.5,0.75",
            "--target-macs", "0.3", *outputs]


@pytest.mark.parametrize("command, flag, name", [
    ("prune", "--record", "r.json"), ("prune", "--save-plan", "p.json"), ("prune", "--report", "r.md"),
    ("sparsify", "--report", "r.md"), ("apply", "--save-plan", "p.json"), ("sensitivity", "--save-ratios", "r.json"),
])
def test_missing_output_folders_are_created(files, tmp_path, capsys, command, flag, name):
    paths, _ = files
    side = tmp_path / "new" / "deeper" / name
    argv = {"prune": ["prune", str(paths["model"]), "--ratio", "0.5"],
            "sparsify": ["sparsify", str(paths["model"]), "--sparsity", "0.5"],
            "apply": ["apply", str(paths["plan"]), str(paths["model"])]}.get(command)
    if argv is None:
        argv = _sensitivity(paths, tmp_path, flag, str(side))
    else:
        argv += ["-o", str(tmp_path / "out" / "m.onnx"), flag, str(side)]
    assert main(argv) == 0
    assert side.stat().st_size > 0 and unchanged(files)
    if command != "sensitivity":
        onnx.checker.check_model(onnx.load(tmp_path / "out" / "m.onnx"), full_check=True)


@pytest.mark.parametrize("command", ["prune", "apply", "plan", "decompose", "sparsify", "sensitivity"])
def test_an_output_under_a_file_is_refused_before_any_work(files, tmp_path, capsys, command):
    paths, _ = files
    blocked = str(tmp_path / "eval.npz" / "r.json")
    model, out = str(paths["model"]), str(tmp_path / "out.onnx")
    argv = {"prune": ["prune", model, "--ratio", "0.5", "-o", out, "--record", blocked],
            "apply": ["apply", str(paths["plan"]), model, "-o", out, "--save-plan", blocked],
            "plan": ["plan", model, "-o", blocked],
            "decompose": ["decompose", model, "--rank-ratio", "0.5", "-o", out, "--report", blocked],
            "sparsify": ["sparsify", model, "--sparsity", "0.5", "-o", out, "--report", blocked]}.get(command)
    flag = {"plan": "-o", "prune": "--record", "apply": "--save-plan"}.get(command, "--report")
    if argv is None:
        argv, flag = _sensitivity(paths, tmp_path, "--json", blocked), "--json"
    refused(capsys, argv, f"output {flag} '{blocked}' cannot be written: '{tmp_path / 'eval.npz'}' is a file")
    assert unchanged(files) and written(tmp_path) <= {"cnn.onnx", "data.npz"}


# --------------------------------------------------------------------------- 4. outputs vs every input, every command

@pytest.mark.parametrize("flag", ["--json", "--plot", "--save-ratios"])
def test_sensitivity_outputs_never_overwrite_the_model_or_the_data(files, tmp_path, capsys, flag):
    argv = _sensitivity(files[0], tmp_path)
    model, data = tmp_path / "cnn.onnx", tmp_path / "data.npz"
    before = model.read_bytes(), data.read_bytes()
    refused(capsys, argv + [flag, str(model)], f"output {flag} '{model}' is the input model; {NEVER}")
    refused(capsys, argv + [flag, str(data)], f"output {flag} '{data}' is the input data; {NEVER}")
    (tmp_path / "s.json").write_text("{}")
    refused(capsys, argv + ["--json", str(tmp_path / "s.json"), *(["--plot"] if flag == "--json" else [flag]),
                            str(tmp_path / "s.json")], "give each output its own file")
    assert (model.read_bytes(), data.read_bytes()) == before and (tmp_path / "s.json").read_text() == "{}"
    assert written(tmp_path) == {"cnn.onnx", "data.npz", "s.json"}


@pytest.mark.parametrize("argv, message", [
    (["prune", "MODEL", "--ratio", "0.5", "--compensate", "--calibration", "CAL", "-o", "OUT", "--record", "CAL"],
     "output --record 'CAL' is the input calibration data"),
    (["prune", "MODEL", "--ratio", "0.5", "-o", "OUT", "--report", "r.md", "--eval-data", "EVAL",
      "--save-plan", "EVAL"], "output --save-plan 'EVAL' is the input evaluation data"),
    (["prune", "MODEL", "--ratio", "0.5", "-o", "OUT", "--save-plan", "MODEL"], "output --save-plan 'MODEL' is the "
                                                                                  "input model"),
    (["prune", "MODEL", "--ratio", "0.5", "-o", "OUT", "--save-plan", "r.json", "--report", "r.json"],
     "output --report 'r.json' is also the output --save-plan"),
    (["apply", "PLAN", "MODEL", "-o", "OUT", "--save-plan", "MODEL"], "output --save-plan 'MODEL' is the input model"),
    (["apply", "PLAN", "MODEL", "-o", "OUT", "--save-plan", "OUT"], "output --save-plan 'OUT' is also the output -o"),
    (["plan", "MODEL", "--method", "nn", "--ratio", "0.5", "--calibration", "CAL", "-o", "CAL"],
     "output -o 'CAL' is the input calibration data"),
    (["decompose", "MODEL", "--rank-ratio", "0.5", "-o", "OUT", "--report", "MODEL"],
     "output --report 'MODEL' is the input model"),
    (["decompose", "MODEL", "--rank-ratio", "0.5", "-o", "EVAL", "--report", "r.md", "--eval-data", "EVAL"],
     "output -o 'EVAL' is the input evaluation data"),
    (["sparsify", "MODEL", "--sparsity", "0.5", "-o", "OUT", "--report", "MODEL"],
     "output --report 'MODEL' is the input model"),
    (["sparsify", "MODEL", "--sparsity", "0.5", "-o", "CAL", "--calibration", "CAL",
      "--strategy", "global_activation_magnitude"], "output -o 'CAL' is the input calibration data"),
])
def test_every_output_is_checked_against_every_input_and_output(files, tmp_path, capsys, argv, message):
    paths, _ = files
    names = {"MODEL": paths["model"], "PLAN": paths["plan"], "CAL": paths["cal"], "EVAL": paths["eval"],
             "OUT": tmp_path / "out.onnx", "r.md": tmp_path / "r.md", "r.json": tmp_path / "r.json"}
    argv = [str(names.get(a, a)) for a in argv]
    for key, path in names.items():
        message = message.replace(f"'{key}'", f"'{path}'")
    refused(capsys, argv, message)
    assert unchanged(files) and not written(tmp_path)


# --------------------------------------------------------------------------- 5. sparsify --report extension

def test_sparsify_report_must_be_markdown_or_json(files, tmp_path, capsys):
    paths, _ = files
    report = tmp_path / "r.txt"
    refused(capsys, ["sparsify", str(paths["model"]), "--sparsity", "0.5", "-o", str(tmp_path / "out.onnx"),
                     "--report", str(report)], f"onnxprune sparsify: error: report '{report}' must end in .md or .json")
    assert unchanged(files) and not written(tmp_path)


# --------------------------------------------------------------------------- 6. prune --plan ignores no flag

@pytest.mark.parametrize("extra, flags", [
    (["--method", "gm"], "--method"), (["--scope", "global"], "--scope"), (["--recommend", "slamp"], "--recommend"),
    (["--seed", "3"], "--seed"), (["--step-size", "4", "--score-consumers"], "--step-size, --score-consumers"),
    (["--policy", "max", "--method", "PR_GM"], "--method, --policy"),
])
def test_prune_plan_refuses_the_flags_the_plan_carries(files, tmp_path, capsys, extra, flags):
    paths, _ = files
    refused(capsys, ["prune", str(paths["model"]), "--plan", str(paths["plan"]), "-o", str(tmp_path / "out.onnx"),
                     *extra], f"{flags} cannot be used with --plan: the plan carries the method, scope, "
                              "recommendation, seed and options; edit the plan, or drop --plan")
    assert unchanged(files) and not written(tmp_path)


def test_prune_plan_accepts_those_flags_at_their_defaults(files, tmp_path):
    paths, _ = files
    base = ["prune", str(paths["model"]), "--plan", str(paths["plan"])]
    assert main(base + ["-o", str(tmp_path / "a.onnx")]) == 0
    # --method and --scope have no default value now (none: the recommended pipeline), so they are not given
    assert main(base + ["-o", str(tmp_path / "b.onnx"), "--seed", "0", "--step-size", "2", "--policy", "average"]) == 0
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes() and unchanged(files)


# --------------------------------------------------------------------------- 7. help text

def _help(capsys, command: str) -> str:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    return re.sub(r"\s+", " ", capsys.readouterr().out)


def test_help_names_what_the_files_hold_and_who_needs_them(capsys):
    prune = _help(capsys, "prune")
    assert "calibration data for data-based methods (nn, activation, snp, fluctuation, obs), --compensate and --reconstruct" in prune
    for command in ("prune", "decompose"):
        assert ("class labels under 'y' (or 'labels' when there is no 'y') and the input arrays keyed by input name "
                "(a single-input model may use 'x')") in _help(capsys, command)
    assert "--compensate" not in _help(capsys, "apply")  # apply has no corrections: its --calibration is the plan's


def test_eval_data_is_checked_before_any_work(files, tmp_path, capsys):
    paths, _ = files
    missing = tmp_path / "nope.npz"
    refused(capsys, ["prune", str(paths["model"]), "--ratio", "0.5", "-o", str(tmp_path / "out.onnx"), "--report",
                     str(tmp_path / "r.md"), "--eval-data", str(missing)], f"evaluation data '{missing}' is not")
    np.savez(tmp_path / "nolabels.npz", x=np.zeros((2, 3, 8, 8), np.float32))
    refused(capsys, ["decompose", str(paths["model"]), "--rank-ratio", "0.5", "-o", str(tmp_path / "out.onnx"),
                     "--report", str(tmp_path / "r.md"), "--eval-data", str(tmp_path / "nolabels.npz")],
            "has no labels")
    assert unchanged(files) and written(tmp_path) == {"nolabels.npz"}
