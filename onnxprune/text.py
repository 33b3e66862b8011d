"""Plain-text formatting shared by reports, summaries and the command line."""
from __future__ import annotations


def table(rows: list[list], header: list[str]) -> str:
    """An aligned text table with a dashed rule under the header."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[k]) for row in cells) for k in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def human(value: float) -> str:
    """1234567 -> '1.23M'."""
    units = ["", "K", "M", "G", "T"]
    index = 0
    while abs(value) >= 1000 and index < len(units) - 1:
        value /= 1000
        index += 1
    return f"{value:.0f}" if index == 0 else f"{value:.2f}{units[index]}"
