"""Reduce int64 (key, value) pairs by key with bounded memory: sorted runs spilled to disk, then merged.

Pairs are added in chunks. Up to ``max_items`` of them are held in memory; past that they are
sorted and reduced (numpy), and written to a temporary file as one sorted run of unique keys
unless they shrank to under half the budget. :meth:`SortedRuns.merged` yields the reduced pairs
in key order, block by block, merging the runs with a vectorised k-way merge (each step takes,
from every run's current block, the keys up to the smallest last key of those blocks). Runs are
read with plain reads (no memory map), so the pages read do not stay in the process.

Two reductions: ``"sum"`` adds the values of equal keys; ``"first"`` keeps the value added first.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

PAIR = np.dtype([("key", np.int64), ("value", np.int64)])
COMBINE = ("sum", "first")


def reduce_pairs(keys: np.ndarray, values: np.ndarray, combine: str) -> tuple[np.ndarray, np.ndarray]:
    """Unique keys (ascending) and their reduced values; "first" means first in the given order."""
    order = np.argsort(keys, kind="stable")
    keys, values = keys[order], values[order]
    if len(keys) == 0:
        return keys, values
    starts = np.concatenate(([0], np.flatnonzero(keys[1:] != keys[:-1]) + 1))
    if combine == "sum":
        return keys[starts], np.add.reduceat(values, starts)
    return keys[starts], values[starts]


class SortedRuns:
    """Accumulates (key, value) pairs and yields them reduced by key, in key order."""

    def __init__(self, combine: str, max_items: int, spill_dir: Path | None = None) -> None:
        if combine not in COMBINE:
            raise ValueError(f"combine must be one of {COMBINE}, got {combine!r}")
        self.combine = combine
        self.max_items = max(2, max_items)  # pairs held in memory before sorting and maybe spilling
        self.spill_dir = spill_dir  # where run files go (a temporary folder under it; default: the system's)
        self._keys: list[np.ndarray] = []
        self._values: list[np.ndarray] = []
        self._buffered = 0
        self._tmp: Path | None = None
        self.runs: list[tuple[Path, int]] = []  # (file, pairs) of each spilled run, oldest first

    def add(self, keys: np.ndarray, values: np.ndarray) -> None:
        if len(keys) != len(values):
            raise ValueError(f"{len(keys)} keys but {len(values)} values")
        if len(keys):
            self._keys.append(np.asarray(keys, np.int64))
            self._values.append(np.asarray(values, np.int64))
            self._buffered += len(keys)
        if self._buffered >= self.max_items:
            keys, values = self._reduce_buffer()
            if len(keys) * 2 >= self.max_items:
                self._spill(keys, values)
            else:  # reduced well (few distinct keys): keep it in memory
                self._keys, self._values, self._buffered = [keys], [values], len(keys)

    def _reduce_buffer(self) -> tuple[np.ndarray, np.ndarray]:
        keys = np.concatenate(self._keys) if self._keys else np.empty(0, np.int64)
        values = np.concatenate(self._values) if self._values else np.empty(0, np.int64)
        self._keys, self._values, self._buffered = [], [], 0
        return reduce_pairs(keys, values, self.combine)

    def _spill(self, keys: np.ndarray, values: np.ndarray) -> None:
        if self._tmp is None:
            self._tmp = Path(tempfile.mkdtemp(prefix="kaffee-runs-", dir=self.spill_dir))
        path = self._tmp / f"run-{len(self.runs):05d}.bin"
        pairs = np.empty(len(keys), PAIR)
        pairs["key"], pairs["value"] = keys, values
        pairs.tofile(path)
        self.runs.append((path, len(keys)))

    def merged(self, block: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(keys, values) blocks, reduced and in ascending key order over everything added. Consumes the
        pairs: the run files are deleted when the iteration ends."""
        try:
            tail = self._reduce_buffer()
            if not self.runs:
                if len(tail[0]):
                    yield tail
                return
            if len(tail[0]):
                self._spill(*tail)
            del tail
            yield from self._merge(block or max(1 << 16, self.max_items // len(self.runs)))
        finally:
            self.close()

    def _merge(self, block: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        files: list[BinaryIO] = [open(path, "rb") for path, _ in self.runs]  # noqa: SIM115 (closed below)
        try:
            left = [n for _, n in self.runs]  # pairs not yet read, per run
            current = [np.empty(0, PAIR) for _ in self.runs]  # read, not yet yielded, per run
            while True:
                for i, f in enumerate(files):
                    if len(current[i]) == 0 and left[i]:
                        current[i] = np.fromfile(f, PAIR, min(block, left[i]))
                        left[i] -= len(current[i])
                active = [i for i in range(len(files)) if len(current[i])]
                if not active:
                    return
                # every key <= frontier of every run is in its current block (runs are sorted and unique)
                frontier = min(current[i]["key"][-1] for i in active)
                parts = []
                for i in active:  # in run order, so "first" keeps the oldest run's value
                    cut = int(np.searchsorted(current[i]["key"], frontier, side="right"))
                    parts.append(current[i][:cut])
                    current[i] = current[i][cut:]
                taken = np.concatenate(parts)
                yield reduce_pairs(taken["key"], taken["value"], self.combine)
        finally:
            for f in files:
                f.close()

    def close(self) -> None:
        """Delete the run files (also done when :meth:`merged` finishes)."""
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
        self.runs = []
