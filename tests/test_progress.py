"""Progress bars (onnxprune.progress, tqdm): shown on a terminal only, one at a time, silenced by --quiet; and what
the CLI prints besides its results: onnxprune's warnings as one line, third-party warnings not at all."""
from __future__ import annotations

import io
import sys
import warnings

import numpy as np
import onnx
import pytest

import onnxprune as op
from onnxprune import progress
from onnxprune.cli import main
from tests.test_datasources import make_folder, small_classifier


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bar_only_on_a_terminal_and_not_when_silenced():
    tty, plain = FakeTTY(), io.StringIO()
    assert list(progress.track(range(5), "work", stream=tty)) == [0, 1, 2, 3, 4]
    list(progress.track(range(5), "work", stream=plain))
    assert "work" in tty.getvalue() and "5/5" in tty.getvalue()
    assert plain.getvalue() == ""
    quiet = FakeTTY()
    with progress.silenced():
        list(progress.track(range(5), "work", stream=quiet))
    assert quiet.getvalue() == ""


def test_nested_work_shows_only_the_outer_bar():
    tty = FakeTTY()
    with progress.Bar("outer", 2, stream=tty) as bar:
        for _ in range(2):
            list(progress.track(range(3), "inner", stream=tty))
            bar.update()
        bar.write("a line beside the bar")
    assert "outer" in tty.getvalue() and "inner" not in tty.getvalue()
    assert "a line beside the bar" in tty.getvalue()
    after = FakeTTY()
    list(progress.track(range(3), "later", stream=after))  # a bar closed (even by an error) frees the line
    assert "later" in after.getvalue()


def test_update_to_counts_totals_reported_out_of_order():
    tty = FakeTTY()
    with progress.Bar("tasks", 4, stream=tty) as bar:
        for done in (2, 1, 4):  # a total lower than the last one changes nothing
            bar.update_to(done)
        assert bar.bar.n == 4
    assert "4/4" in tty.getvalue()


def test_an_error_inside_a_bar_closes_it():
    with pytest.raises(RuntimeError):
        with progress.Bar("failing", 3, stream=FakeTTY()):
            raise RuntimeError("boom")
    tty = FakeTTY()
    list(progress.track(range(2), "next", stream=tty))
    assert "next" in tty.getvalue()


@pytest.fixture
def cli_inputs(tmp_path):
    path = str(tmp_path / "m.onnx")
    onnx.save(small_classifier(), path)
    return path, make_folder(tmp_path / "images", per_class=12)


def test_cli_bars_on_a_terminal_and_quiet(cli_inputs, tmp_path, monkeypatch):
    model, folder = cli_inputs
    for quiet in ([], ["--quiet"]):
        err = FakeTTY()
        monkeypatch.setattr(sys, "stderr", err)
        assert main(["evaluate", model, "--data", folder, "--batch-size", "8", *quiet]) == 0
        assert main(["prune", model, "-o", str(tmp_path / "p.onnx"), "--method", "nn", "--ratio", "0.5",
                     "--calibration", folder, *quiet]) == 0
        assert main(["sensitivity", model, "--data", folder, "--ratios", "0.25,0.5", *quiet]) == 0
        text = err.getvalue()
        if quiet:
            assert "|" not in text and "evaluate:" not in text
        else:
            assert "evaluate: 100%" in text and "6/6" in text
            assert "calibration: 100%" in text
            assert "sensitivity: 100%" in text and "4/4" in text  # 2 groups x 2 ratios; no inner bars
            during = text[text.index("sensitivity:"):]
            assert "evaluate:" not in during and "calibration:" not in during


def test_cli_warnings_are_one_line_and_third_party_ones_hidden(cli_inputs, tmp_path, capsys, monkeypatch):
    model, _ = cli_inputs
    assert main(["prune-blocks", "fixtures/resnet_legacy.onnx", "-o", str(tmp_path / "b.onnx"), "--n", "1"]) == 0
    err = capsys.readouterr().err
    assert err.startswith("onnxprune prune-blocks: warning: prune_blocks without calibration data")
    assert "warnings.warn" not in err and len(err.strip().splitlines()) == 1

    real = op.analyze

    def noisy(*args, **kwargs):  # a warning raised inside a third-party module
        warnings.warn_explicit("internal detail", UserWarning, "/site-packages/somelib/core.py", 1)
        return real(*args, **kwargs)

    monkeypatch.setattr(op, "analyze", noisy)
    assert main(["inspect", model]) == 0
    assert "internal detail" not in capsys.readouterr().err
    assert main(["inspect", model, "--debug"]) == 0
    assert "internal detail" in capsys.readouterr().err


def test_decomposition_shows_no_tensorly_warnings(tmp_path, capsys):
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        op.decompose("fixtures/convnext_legacy.onnx", "tucker", rank_ratio=1.0, force=True)
    assert not [w for w in seen if "tensorly" in w.filename]
    assert main(["decompose", "fixtures/convnext_legacy.onnx", "-o", str(tmp_path / "d.onnx"), "--method", "tucker",
                 "--rank-ratio", "1.0", "--force"]) == 0
    assert "n_eigenvecs" not in capsys.readouterr().err


def test_image_flags_need_a_folder(tmp_path, capsys):
    path = str(tmp_path / "m.onnx")
    onnx.save(small_classifier(), path)
    data = tmp_path / "d.npz"
    np.savez(data, x=np.zeros((2, 3, 32, 32), np.float32), y=np.zeros(2, np.int64))
    assert main(["evaluate", path, "--data", str(data), "--crop", "32"]) == 2
    assert "--crop apply to image folders" in capsys.readouterr().err
    assert main(["evaluate", path, "--data", str(data), "--json"]) == 0
