"""Writing text files atomically: a half-written report, plan or JSON file never replaces a good one."""
from __future__ import annotations

import os
import shutil
import tempfile


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` (created with its folder): staged in a temporary folder beside it, then renamed."""
    path = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".onnxprune-", dir=folder)
    try:
        staged = os.path.join(tmp, os.path.basename(path))
        with open(staged, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(staged, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
