"""Helpers shared by the CLI commands: output paths, JSON input, tables."""
from __future__ import annotations

import json
import os

from onnxprune.errors import InvalidRequestError
from onnxprune.text import table  # noqa: F401  (the commands import it from here)


def output_path(model_path: str, output: str) -> str:
    """The output path, refusing the input file itself."""
    if os.path.exists(output) and os.path.exists(model_path) and os.path.samefile(model_path, output):
        raise InvalidRequestError(f"output '{output}' is the input model; onnxprune never overwrites its input")
    return output


def make_parent(path: str) -> None:
    """Create the output's folder (called once the result is ready to be written)."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)


def read_json(path: str, what: str):
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise InvalidRequestError(f"{what} file '{path}' does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequestError(f"{what} file '{path}' is not valid JSON: {exc}") from None
