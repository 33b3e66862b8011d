"""Progress bars (tqdm) for long work: calibration passes, evaluation, sensitivity, profiling, reconstruction.

A bar is shown only when its stream (default stderr) is a terminal, when `silenced()` is not in force (the CLI's
`--quiet`), and when no other bar is open: work nested inside a bar (the evaluations inside a sensitivity sweep,
the calibration pass inside a prune inside it) runs without a second bar fighting for the line.
"""
from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterable, Iterator
from typing import Any, TextIO, TypeVar

from tqdm import tqdm

T = TypeVar("T")

_state = {"quiet": False, "open": 0}


@contextlib.contextmanager
def silenced() -> Iterator[None]:
    """No bar is shown inside this block (the CLI's --quiet)."""
    before = _state["quiet"]
    _state["quiet"] = True
    try:
        yield
    finally:
        _state["quiet"] = before


def is_terminal(stream: Any) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty()) if callable(isatty) else False
    except (ValueError, OSError):  # a closed stream
        return False


class Bar:
    """A tqdm bar (or nothing, see the module docstring) used as a context manager: `update(n)` (n more done),
    `update_to(done)`, `postfix(text)`, `write(text)`."""

    def __init__(self, desc: str, total: int | None = None, *, unit: str = "batch",
                 stream: TextIO | None = None) -> None:
        self.stream = sys.stderr if stream is None else stream
        shown = not _state["quiet"] and _state["open"] == 0 and is_terminal(self.stream)
        _state["open"] += 1
        self.closed = False
        self.bar = tqdm(total=total, desc=desc, unit=unit, file=self.stream, dynamic_ncols=True,
                        leave=True) if shown else None

    def update(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def update_to(self, done: int) -> None:
        """`done` items are finished in all (for work that reports totals, e.g. tasks finishing out of order)."""
        if self.bar is not None and done > self.bar.n:
            self.bar.update(done - self.bar.n)

    def postfix(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=False)

    def write(self, text: str) -> None:
        """Print a line on the bar's stream without breaking the bar."""
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        _state["open"] -= 1
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> "Bar":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def track(items: Iterable[T], desc: str, total: int | None = None, *, unit: str = "batch",
          stream: TextIO | None = None) -> Iterator[T]:
    """`items`, one bar step per item; `total` defaults to len(items) when it has one."""
    if total is None:
        try:
            total = len(items)  # type: ignore[arg-type]
        except TypeError:
            total = None
    with Bar(desc, total, unit=unit, stream=stream) as bar:
        for item in items:
            yield item
            bar.update()


def message(text: str, stream: TextIO | None = None) -> None:
    """Print a line on `stream` (default stderr) without breaking an open bar."""
    tqdm.write(text, file=sys.stderr if stream is None else stream)
