"""Exact and near dedup, and the leak-free project split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from kaffee.data import corpus, dedup
from kaffee.data.corpus import build, load_corpus, split_of
from kaffee.data.split import SplitConfig, split_projects
from test_corpus_helpers import config, make_java, write_project

SIGNER = dedup.Signer(dedup.MinHashConfig())


def _near_copy(text: str) -> str:
    """The same file with one method's constant changed and a comment added: a near duplicate."""
    return text.replace("return", "// tweaked\n        return", 1).replace("* 2", "* 3", 1)


def test_normalised_hash_ignores_whitespace() -> None:
    a = make_java(1)
    assert dedup.normalised_hash(a) == dedup.normalised_hash(a.replace("    ", "\t") + "\n\n")
    assert dedup.normalised_hash(a) != dedup.normalised_hash(make_java(2))


def test_signatures_estimate_jaccard() -> None:
    a, b = make_java(1, methods=12), make_java(2, methods=12)
    sa, sb, sn = SIGNER.signature(a), SIGNER.signature(b), SIGNER.signature(_near_copy(a))
    assert sa.dtype == np.uint32 and sa.shape == (128,)
    assert np.array_equal(sa, dedup.Signer(dedup.MinHashConfig()).signature(a))  # deterministic
    assert dedup.jaccard(sa, sn) >= 0.85
    assert dedup.jaccard(sa, sb) < 0.5


def test_near_duplicates_greedy() -> None:
    texts = [make_java(1, methods=12), make_java(2, methods=12)]
    texts.append(_near_copy(texts[0]))
    sigs = np.stack([SIGNER.signature(t) for t in texts])
    assert dedup.near_duplicates(sigs, [0, 1, 2], dedup.MinHashConfig()) == {2: 0}
    assert dedup.near_duplicates(sigs, [2, 1, 0], dedup.MinHashConfig()) == {0: 2}


def test_split_never_splits_a_project_and_is_seeded() -> None:
    sizes = {f"p{i}": (i % 7) + 1 for i in range(60)}
    a = split_projects(sizes, SplitConfig(seed=1))
    assert a == split_projects(sizes, SplitConfig(seed=1))
    assert a != split_projects(sizes, SplitConfig(seed=2))
    assert set(a) == set(sizes) and set(a.values()) == {"train", "valid", "test"}
    total = sum(sizes.values())
    for name in ("valid", "test"):
        share = sum(n for p, n in sizes.items() if a[p] == name) / total
        assert 0.02 <= share <= 0.1, (name, share)


def test_split_small_corpus_still_has_valid_and_test() -> None:
    a = split_projects({"a": 10, "b": 1, "c": 1}, SplitConfig())
    assert sorted(a.values()) == ["test", "train", "valid"]
    assert split_projects({"only": 5}, SplitConfig()) == {"only": "train"}


def test_build_dedups_and_split_is_leak_free(tmp_path: Path) -> None:
    root = tmp_path / "src"
    for i in range(12):
        write_project(root, f"proj{i:02d}", 4, seed=i)
    # an exact duplicate (whitespace differs) inside one project, near duplicates across all projects
    base = root / "proj00" / "src" / "main" / "java"
    (base / "Copy.java").write_text((base / "File0.java").read_text().replace("    ", "\t"))
    shared = make_java(4242, methods=14)
    for i in range(12):
        (root / f"proj{i:02d}" / f"Shared{i}.java").write_text(_near_copy(shared) if i % 2 else shared)
    stats = build(config([root], tmp_path / "out", projects_from_subdirs=True, seed=3))
    assert stats["exact_duplicates"] == 1 + 5 + 5  # the copy, and the identical Shared*.java of each kind
    assert stats["near_duplicates"] + stats["near_duplicates_of_valid_test_removed_from_train"] == 1
    ds = load_corpus(tmp_path / "out")
    assert ds.num_rows == stats["files_kept"] == sum(stats["files_per_split"].values())
    by_split = {name: split_of(ds, name) for name in ("train", "valid", "test")}
    projects = {name: set(d["project"]) for name, d in by_split.items()}
    assert not (projects["train"] & projects["valid"] or projects["train"] & projects["test"]
                or projects["valid"] & projects["test"])  # fmt: skip
    shared_class = shared.split("public class ")[1].split()[0]
    assert sum(shared_class in text for text in ds["text"]) == 1  # one survivor of the near-dup cluster
    eval_sigs = [SIGNER.signature(t) for name in ("valid", "test") for t in by_split[name]["text"]]
    for text in by_split["train"]["text"]:
        sig = SIGNER.signature(text)
        assert all(dedup.jaccard(sig, e) < 0.85 for e in eval_sigs)


def test_near_duplicate_of_test_file_is_removed_from_train(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "src"
    for i in range(4):
        write_project(root, f"proj{i}", 3, seed=100 + i)
    shared = make_java(777, methods=14)
    (root / "proj0" / "Shared.java").write_text(shared)
    (root / "proj1" / "Shared.java").write_text(_near_copy(shared))

    def fake_split(sizes: dict[str, int], cfg: SplitConfig) -> dict[str, str]:
        return {p: {"src/proj0": "test", "src/proj3": "valid"}.get(p, "train") for p in sizes}

    monkeypatch.setattr(corpus, "split_projects", fake_split)
    stats = build(config([root], tmp_path / "out", projects_from_subdirs=True))
    assert stats["near_duplicates_of_valid_test_removed_from_train"] == 1
    assert stats["dropped"]["near_duplicate_of_valid_test"] == 1
    ds = load_corpus(tmp_path / "out")
    kept = {(p, path) for p, path in zip(ds["project"], ds["path"], strict=True)}
    assert ("src/proj0", "proj0/Shared.java") in kept and ("src/proj1", "proj1/Shared.java") not in kept
