"""What every task is made of: held-out files, sampled positions, per-item scores, metric rows.

A task turns the test split into positions (seeded, identical for every system),
asks a system one question per position (``predict``, whose JSON output the harness
caches), scores each answer on its own (``score``) and aggregates the scores with
bootstrap intervals (``aggregate``).
"""

from __future__ import annotations

import zlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, ClassVar

import numpy as np
from kaffee.evaluation.lexer import CodeLine, JavaToken, code_lines, lex
from kaffee.evaluation.metrics import Estimate
from kaffee.evaluation.system_base import Context, System


@dataclass(frozen=True)
class SourceFile:
    index: int
    project: str
    path: str
    text: str
    sha256: str


class HeldOut:
    """The test split's files, sorted by (project, path), with lexing shared between tasks."""

    def __init__(self, files: Sequence[SourceFile]):
        self.files = list(files)
        self._counts: list[tuple[int, int]] | None = None
        self.tokens = lru_cache(maxsize=256)(self._tokens)
        self.lines = lru_cache(maxsize=256)(self._lines)

    def _tokens(self, i: int) -> list[JavaToken]:
        return lex(self.files[i].text)

    def _lines(self, i: int) -> list[CodeLine]:
        return code_lines(self.tokens(i))

    def counts(self) -> list[tuple[int, int]]:
        """(tokens, code lines) per file; lexes every file once."""
        if self._counts is None:
            out = []
            for i in range(len(self.files)):
                toks = lex(self.files[i].text)
                out.append((len(toks), len(code_lines(toks))))
            self._counts = out
        return self._counts

    def workspace(self, i: int) -> dict[str, str]:
        """The other files of file ``i``'s project (what an editor's workspace holds)."""
        project = self.files[i].project
        return {f.path: f.text for f in self.files if f.project == project and f.index != i}


def task_rng(seed: int, name: str) -> np.random.Generator:
    """Per-task generator: the same (seed, task) always samples the same positions."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), zlib.crc32(name.encode())]))


def sample_indices(rng: np.random.Generator, total: int, limit: int | None) -> list[int]:
    """Sorted sample of ``limit`` distinct indices from range(total), or all of them."""
    if limit is None or limit >= total:
        return list(range(total))
    return sorted(int(i) for i in rng.choice(total, size=limit, replace=False))


EXACT_SAMPLING_CHARS = 4_000_000  # held-out text up to this size is lexed whole for exactly uniform samples


def sample_units(
    held: HeldOut, rng: np.random.Generator, limit: int | None, unit: str
) -> list[tuple[int, int]]:
    """Sorted (file index, unit index) pairs; ``unit`` is "token" or "line" (a code line).

    Exactly uniform over every unit of the split when there is no limit or the split is
    small (every file is lexed to count). Otherwise two-stage, so a quick run on a big
    split lexes only the files it draws: a file with probability proportional to its
    size (characters for tokens, lines for lines), then a unit uniformly within it.
    """
    assert unit in ("token", "line")
    total_chars = sum(len(f.text) for f in held.files)
    if limit is None or total_chars <= EXACT_SAMPLING_CHARS:
        counts = [c[0] if unit == "token" else c[1] for c in held.counts()]
        out = []
        base, fi = 0, 0
        for g in sample_indices(rng, sum(counts), limit):
            while g >= base + counts[fi]:
                base += counts[fi]
                fi += 1
            out.append((fi, g - base))
        return out
    sizes = [len(f.text) if unit == "token" else f.text.count("\n") + 1 for f in held.files]
    p = np.asarray(sizes, dtype=np.float64)
    p /= p.sum()
    chosen: set[tuple[int, int]] = set()
    attempts = 0
    while len(chosen) < limit and attempts < 20 * limit:
        for fi in rng.choice(len(held.files), size=limit - len(chosen), p=p):
            attempts += 1
            n = len(held.tokens(int(fi))) if unit == "token" else len(held.lines(int(fi)))
            if n:
                chosen.add((int(fi), int(rng.integers(n))))
            if len(chosen) >= limit:
                break
    return sorted(chosen)


def editor_context(f: SourceFile, offset: int, hide_suffix: bool = False) -> Context:
    """The editor's view with the cursor at ``offset`` while the rest of its line is not typed yet.

    Text after the cursor's line stays (the file around the edit), unless ``hide_suffix``.
    """
    text = f.text
    line_end = text.find("\n", offset)
    suffix = "" if hide_suffix or line_end < 0 else text[line_end:]
    return Context(prefix=text[:offset], suffix=suffix, project=f.project, path=f.path)


@dataclass
class Position:
    """One held-out question. ``id`` is stable across runs (keys the prediction cache)."""

    id: str
    file: int  # index into HeldOut.files (-1 for positions not from the corpus)
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class MetricRow:
    metric: str
    estimate: Estimate
    slice: str = "all"  # sub-population ("kind=identifier", "context=1k-2k", ...)
    unit: str = "%"
    higher_is_better: bool = True


@dataclass
class TaskOutcome:
    rows: list[MetricRow]
    distributions: dict[str, list[float]] = field(default_factory=dict)  # e.g. latency_ms


class Task(ABC):
    name: ClassVar[str]
    summary: ClassVar[str]
    needs: ClassVar[str]  # system capability: "next_tokens", "complete" or "bits"
    uses_corpus: ClassVar[bool] = True
    #: metrics shown in the Markdown table, in order (others go to results.json / plots only)
    headline: ClassVar[tuple[str, ...]] = ()

    def __init__(self, **options: Any):
        self.options = options

    @abstractmethod
    def positions(self, held: HeldOut | None, seed: int, limit: int | None) -> list[Position]:
        """Sampled positions, in file order."""

    @abstractmethod
    def predict(self, system: System, held: HeldOut | None, pos: Position) -> dict[str, Any]:
        """Ask ``system`` about ``pos``; JSON-serialisable (cached). Raises RequestFailed."""

    @abstractmethod
    def aggregate(self, positions: list[Position], outputs: list[dict | None], seed: int) -> TaskOutcome:
        """Metric rows over all positions; ``None`` outputs are errors (scored as misses)."""

    def item_scores(self, positions: list[Position], outputs: list[dict | None]) -> dict[str, list[float]]:
        """Per-position scores of the headline metrics (0..1 or 0..100, as reported), for paired
        comparisons such as the project-context gain. Tasks that have none return ``{}``."""
        return {}

    #: how item scores are scaled for reports (metric -> factor); 100 turns a 0/1 hit into %
    item_scale: ClassVar[dict[str, float]] = {}

    def examples(
        self, held: HeldOut | None, positions: list[Position], outputs: list[dict | None], n: int = 6
    ) -> list[dict[str, Any]]:
        """A few predictions to show in the report: where, the line before the cursor, target,
        prediction, hit. Positions are a seeded sample already, so the first ``n`` answered
        ones are a fair sample. Tasks without a readable prediction (``shown``) return ``[]``."""
        if held is None:
            return []
        out = []
        for pos, o in zip(positions, outputs, strict=True):
            shown = self.shown(pos, o) if o else None
            if shown is not None and len(out) < n:
                f = held.files[pos.file]
                out.append(example(f, pos.data["offset"], pos.data["target"], *shown))
        return out

    def shown(self, pos: Position, output: dict[str, Any]) -> tuple[str, bool] | None:
        """(prediction as text, hit) of one answered position for the report, if the task has one."""
        return None


def example(f: SourceFile, offset: int, target: str, prediction: str, hit: bool) -> dict[str, Any]:
    """One report example: the cursor's line up to the cursor (at most 80 characters)."""
    line_start = f.text.rfind("\n", 0, offset) + 1
    line_no = f.text.count("\n", 0, offset) + 1
    before = f.text[line_start:offset].lstrip()[-80:]
    return {
        "where": f"{f.project}/{f.path}:{line_no}",
        "before": before,
        "target": target,
        "prediction": prediction,
        "hit": hit,
    }
