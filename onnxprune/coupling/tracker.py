"""Channel elements and their equivalences.

Every channel-carrying tensor axis holds an array of *element ids*, one per position.
Ops that pass channels through reuse the same ids (no copy, no union); ops that merge
two activations (Add, Mul, MatMul's contracted axis, ...) union their ids. After the
walk, a *unit* is a union-find class of elements (what one pruning decision removes),
and a *group* is a set of units joined through a producer's output channels.
"""
from __future__ import annotations

import numpy as np

MAX_TRACKED = 2**24  # most element ids one channel axis or one reshape block may need (memory: 8 bytes each)


class UnionFind:
    """Vectorised union-find over integer ids (union by smaller root, path compression)."""

    def __init__(self, capacity: int = 4096):
        self.parent = np.arange(capacity, dtype=np.int64)
        self.size = 0

    def allocate(self, n: int) -> np.ndarray:
        start = self.size
        self._reserve(start + n)
        ids = np.arange(start, start + n, dtype=np.int64)
        self.parent[start : start + n] = ids
        self.size += n
        return ids

    def _reserve(self, needed: int) -> None:
        if needed <= len(self.parent):
            return
        capacity = max(needed, 2 * len(self.parent))
        grown = np.arange(capacity, dtype=np.int64)
        grown[: len(self.parent)] = self.parent
        self.parent = grown

    def find(self, ids: np.ndarray) -> np.ndarray:
        roots = np.asarray(ids, dtype=np.int64)
        while True:
            up = self.parent[roots]
            if np.array_equal(up, roots):
                break
            roots = up
        self.parent[np.asarray(ids, dtype=np.int64)] = roots
        return roots

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        a = np.asarray(a, dtype=np.int64).reshape(-1)
        b = np.asarray(b, dtype=np.int64).reshape(-1)
        while True:
            ra, rb = self.find(a), self.find(b)
            differ = ra != rb
            if not differ.any():
                return
            low = np.minimum(ra[differ], rb[differ])
            high = np.maximum(ra[differ], rb[differ])
            self.parent[high] = low  # duplicates: one write wins, the loop finishes the rest

    def roots(self) -> np.ndarray:
        return self.find(np.arange(self.size, dtype=np.int64))


class ChannelTracker:
    """Element ids, their segments (producer output channels) and marks (blocked, inexact)."""

    def __init__(self) -> None:
        self.elements = UnionFind()
        self.segment_of: list[np.ndarray] = []  # per allocation: the segment id of each element
        self.segments: list[tuple[int | None, str]] = []  # per segment: (node index, kind)
        self.blocked: list[tuple[np.ndarray, str]] = []
        self.inexact: list[tuple[np.ndarray, str]] = []

    def new_segment(self, n: int, node: int | None, kind: str = "producer") -> np.ndarray:
        if not 0 <= n <= MAX_TRACKED:  # the walker blocks the node: its rule failed
            raise ValueError(f"a channel axis of {n} positions (onnxprune tracks 0 to {MAX_TRACKED})")
        ids = self.elements.allocate(n)
        self.segment_of.append(np.full(n, len(self.segments), dtype=np.int64))
        self.segments.append((node, kind))
        return ids

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        self.elements.union(a, b)

    def block(self, ids: np.ndarray, reason: str) -> None:
        if len(ids):
            self.blocked.append((np.asarray(ids, dtype=np.int64).reshape(-1), reason))

    def mark_inexact(self, ids: np.ndarray, reason: str) -> None:
        if len(ids):
            self.inexact.append((np.asarray(ids, dtype=np.int64).reshape(-1), reason))

    def resolve(self) -> "Resolution":
        """Final classes: unit (root element) and group of every element, with marks."""
        n = self.elements.size
        unit = self.elements.roots()
        segment = np.concatenate(self.segment_of) if self.segment_of else np.zeros(0, dtype=np.int64)
        segments = UnionFind(max(len(self.segments), 1))
        segments.allocate(len(self.segments))
        if n:
            segments.union(segment, segment[unit])
        group_of_segment = segments.roots()
        group = group_of_segment[segment[unit]] if n else np.zeros(0, dtype=np.int64)
        return Resolution(unit=unit, group=group, blocked=_first_reason(self.blocked, group, n),
                          inexact=_first_reason(self.inexact, group, n))


class Resolution:
    """Per element: its unit and its group; per group: why it is blocked or inexact."""

    def __init__(self, unit: np.ndarray, group: np.ndarray, blocked: dict[int, str], inexact: dict[int, str]):
        self.unit = unit
        self.group = group
        self.blocked = blocked
        self.inexact = inexact


def _first_reason(marks: list[tuple[np.ndarray, str]], group: np.ndarray, n: int) -> dict[int, str]:
    reasons: dict[int, str] = {}
    for ids, reason in marks:
        ids = ids[ids < n]
        for g in np.unique(group[ids]).tolist():
            reasons.setdefault(int(g), reason)
    return reasons
