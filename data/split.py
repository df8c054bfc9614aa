"""Split by project: every project goes whole into train, valid or test (DESIGN.md, Corpus directory).

Projects are visited in a seeded order; valid and test take projects until they reach
their share of the files (a project that would overshoot a share by more than
``tolerance`` goes to train instead), train takes the rest. With three or more projects,
valid and test each get at least one. Deterministic for a given seed and project list.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

SPLITS = ("train", "valid", "test")


@dataclass
class SplitConfig:
    """Shares of the split (by file count) and its seed."""

    valid_frac: float = 0.05  # share of files for valid
    test_frac: float = 0.05  # share of files for test
    seed: int = 0  # seed of the project order
    tolerance: float = 1.5  # a project may fill valid/test up to this multiple of its target

    def __post_init__(self) -> None:
        if not (0 <= self.valid_frac < 1 and 0 <= self.test_frac < 1 and self.valid_frac + self.test_frac < 1):
            raise ValueError(f"bad split fractions: valid={self.valid_frac} test={self.test_frac}")


def _order_key(seed: int, project: str) -> str:
    return hashlib.sha256(f"{seed}\0{project}".encode()).hexdigest()


def split_projects(files_per_project: Mapping[str, int], cfg: SplitConfig) -> dict[str, str]:
    """{project: split} so that valid/test hold about their share of the files."""
    total = sum(files_per_project.values())
    targets = {"test": cfg.test_frac * total, "valid": cfg.valid_frac * total}
    counts = {"test": 0, "valid": 0}
    order = sorted(files_per_project, key=lambda p: _order_key(cfg.seed, p))
    assign: dict[str, str] = {}
    for project in order:
        size = files_per_project[project]
        assign[project] = "train"
        for split in ("test", "valid"):
            if counts[split] < targets[split] and counts[split] + size <= max(targets[split] * cfg.tolerance, 1):
                assign[project] = split
                counts[split] += size
                break
    if len(order) >= 3:  # small corpora: still give valid and test one (the smallest) project each
        for split in ("test", "valid"):
            if targets[split] > 0 and split not in assign.values():
                train = [p for p in order if assign[p] == "train"]
                if len(train) > 1:
                    assign[min(train, key=lambda p: (files_per_project[p], p))] = split
    return assign
