"""Text outputs (plans, reports, sensitivity JSON, CLI text files) are written atomically."""
import builtins

import pytest

from onnxprune.files import write_text


def test_write_text_creates_folder_and_leaves_no_staging(tmp_path):
    target = tmp_path / "new" / "plan.json"
    write_text(target, "first")
    write_text(target, "second")
    assert target.read_text() == "second"
    assert [p.name for p in target.parent.iterdir()] == ["plan.json"]


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "report.md"
    target.write_text("good")
    real_open = builtins.open

    class Broken:
        def __init__(self, handle):
            self.handle = handle

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

        def write(self, text):
            self.handle.write(text[:3])
            raise OSError("disk full")

    monkeypatch.setattr(builtins, "open", lambda path, *a, **k: Broken(real_open(path, *a, **k)))
    with pytest.raises(OSError, match="disk full"):
        write_text(target, "a much longer replacement")
    monkeypatch.setattr(builtins, "open", real_open)
    assert target.read_text() == "good"
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]
