"""The on-disk cache of measurements, so that profiling a model a second time takes no measuring at all.

One JSON file, `latency-cache.json`, in $XDG_CACHE_HOME/onnxprune (default ~/.cache/onnxprune) or the folder
given as `cache=`. Entries are keyed by the environment (provider, threads, batch, onnxruntime version, CPU
model) and then by layer signature (its measured points) or, for whole models, by graph fingerprint (the
measured total, and each node's kernel time in context). Saving merges with what another process may have written meanwhile and replaces the file
atomically; an unreadable cache file counts as empty.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from onnxprune.errors import InvalidRequestError
from onnxprune.files import write_text

FILE_NAME = "latency-cache.json"
FORMAT = "onnxprune-latency-cache/3"  # /3: conversions inside a micro-graph count; whole-model node times


def default_folder() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "onnxprune")


def write_json(path: str, data: Any) -> None:
    """Write `data` as JSON to `path` atomically (files.write_text)."""
    write_text(path, json.dumps(data, indent=1, sort_keys=True))


class LatencyCache:
    """Measured points per layer signature and totals per model, for one environment; `path` None: disabled."""

    def __init__(self, path: str | None, environment: Mapping[str, Any]) -> None:
        self.path = path
        self.key = json.dumps(dict(environment), sort_keys=True)
        self.layers: dict[str, list[list[float]]] = {}
        self.totals: dict[str, float] = {}
        self.nodes: dict[str, list] = {}  # fingerprint -> [ms outside kernels, {node: kernel ms}]
        self.changed = False
        if path is not None:
            entry = self._read().get(self.key, {})
            self.layers = dict(entry.get("layers", {}))
            self.totals = dict(entry.get("totals", {}))
            self.nodes = dict(entry.get("nodes", {}))

    @classmethod
    def open(cls, cache: Any, environment: Mapping[str, Any]) -> LatencyCache:
        """`cache`: None (the default folder), False (no cache) or a folder path."""
        if cache is False:
            return cls(None, environment)
        if cache is None or cache is True:
            folder = default_folder()
        elif isinstance(cache, (str, os.PathLike)):
            folder = os.fspath(cache)
        else:
            raise InvalidRequestError(f"cache must be None (default folder), False (off) or a folder path, "
                                      f"not {cache!r}")
        if os.path.exists(folder) and not os.path.isdir(folder):
            raise InvalidRequestError(f"cache folder '{folder}' is a file; give a folder")
        return cls(os.path.join(folder, FILE_NAME), environment)

    def _read(self) -> dict[str, Any]:
        try:
            with open(self.path, encoding="utf-8") as handle:
                data = json.load(handle)
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            return {}
        return data.get("entries", {})

    def put_layer(self, signature: str, points: list[list[float]]) -> None:
        self.layers[signature] = points
        self.changed = True

    def put_total(self, fingerprint: str, total: float) -> None:
        self.totals[fingerprint] = total
        self.changed = True

    def put_nodes(self, fingerprint: str, outside_ms: float, node_ms: dict[str, float]) -> None:
        self.nodes[fingerprint] = [outside_ms, node_ms]
        self.changed = True

    def save(self) -> None:
        """Merge this environment's entries into the file (no-op when disabled or nothing new)."""
        if self.path is None or not self.changed:
            return
        entries = self._read()
        entry = entries.setdefault(self.key, {})
        entry.setdefault("layers", {}).update(self.layers)
        entry.setdefault("totals", {}).update(self.totals)
        entry.setdefault("nodes", {}).update(self.nodes)
        try:
            write_json(self.path, {"format": FORMAT, "entries": entries})
        except OSError as exc:
            raise InvalidRequestError(f"cannot write the latency cache '{self.path}': {exc}; pass cache=False "
                                      "(CLI: --no-cache) or another folder") from None
        self.changed = False
