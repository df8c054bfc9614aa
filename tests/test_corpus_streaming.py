"""The streaming corpus build gives the rows of the in-memory pipeline it replaced, and writes them in the
format ``save_to_disk`` gives; the numpy near-dedup drops what an incremental datasketch LSH index drops."""

from __future__ import annotations

import collections
import json
from pathlib import Path

import datasets
import numpy as np
import pytest
from datasketch import LeanMinHash, MinHashLSH
from kaffee.data import corpus, dedup
from kaffee.data.corpus import FEATURES, build, load_corpus
from kaffee.data.dataset_writer import DatasetWriter, shard_sizes
from kaffee.data.sources import resolve_path
from kaffee.data.split import SPLITS, split_projects
from test_corpus_dedup_split import _near_copy
from test_corpus_helpers import config, make_java, write_project


def _datasketch_near_duplicates(
    sigs: np.ndarray, order: list[int], cfg: dedup.MinHashConfig
) -> dict[int, list[int]]:
    """The greedy near-dedup the build did before: an incremental MinHashLSH index of the kept files.
    Returns {dropped: every kept candidate it is a near duplicate of}."""
    lsh = MinHashLSH(threshold=cfg.threshold, num_perm=sigs.shape[1])
    dropped: dict[int, list[int]] = {}
    for i in order:
        mh = LeanMinHash(seed=cfg.seed, hashvalues=sigs[i], scheme="affine32")
        matches = [c for c in lsh.query(mh) if dedup.jaccard(sigs[i], sigs[c]) >= cfg.threshold]
        if matches:
            dropped[i] = matches
        else:
            lsh.insert(i, mh, check_duplication=False)
    return dropped


def _reference_rows(cfg: corpus.BuildConfig) -> list[tuple[str, ...]]:
    """The rows of the old, in-memory build: every kept text in a list, split, near-dedup, then written."""
    corpus._init_worker(cfg.filters, cfg.minhash)
    records = []
    for spec in cfg.sources:
        records += corpus.process_batch(
            list(resolve_path(spec, cfg.limits, cfg.projects_from_subdirs).iter_files())
        )
    seen, kept = set(), []
    for rec in records:
        if rec[2] is not None and rec[4] not in seen:
            seen.add(rec[4])
            kept.append(rec)
    assign = split_projects(collections.Counter(r[0] for r in kept), cfg.split)
    order = [i for name in ("test", "valid", "train") for i, r in enumerate(kept) if assign[r[0]] == name]
    dropped = _datasketch_near_duplicates(np.stack([r[5] for r in kept]), order, cfg.minhash)
    return [(r[2], r[0], r[1], r[3], name) for name in SPLITS for i, r in enumerate(kept)
            if assign[r[0]] == name and i not in dropped]  # fmt: skip


def _fixture(root: Path) -> Path:
    """14 projects with exact duplicates, near-duplicate clusters across projects and files that are dropped."""
    for i in range(14):
        write_project(root, f"proj{i:02d}", 2 + i % 4, seed=50 + i)
    shared, other = make_java(4242, methods=14), make_java(4343, methods=10)
    for i in range(14):
        (root / f"proj{i:02d}" / "Shared.java").write_text(_near_copy(shared) if i % 3 else shared)
        if i % 4 == 0:
            (root / f"proj{i:02d}" / "Other.java").write_text(other.replace("    ", "\t") if i % 8 else other)
    (root / "proj01" / "Binary.java").write_bytes(b"\xca\xfe\xba\xbe\0\0\0" * 100)
    (root / "proj02" / "Empty.java").write_text("// nothing\n")
    return root


@pytest.mark.parametrize("seed", [0, 3])
def test_streaming_build_gives_the_rows_of_the_in_memory_build(tmp_path: Path, seed: int) -> None:
    root = _fixture(tmp_path / "src")
    # tiny spool batches and shards, so that batch and shard boundaries fall inside every split
    cfg = config(
        [root], tmp_path / "out", projects_from_subdirs=True, seed=seed, batch_rows=3, shard_bytes=6000
    )
    stats = build(cfg)
    ds = load_corpus(tmp_path / "out")
    rows = list(zip(*(ds[c] for c in corpus.COLUMNS), strict=True))
    expected = _reference_rows(cfg)
    assert rows == expected
    assert len(list((tmp_path / "out").glob("data-*.arrow"))) > 3
    assert stats["exact_duplicates"] > 0 and stats["near_duplicates"] + stats[
        "near_duplicates_of_valid_test_removed_from_train"] > 0  # fmt: skip
    assert stats["files_kept"] == stats["num_rows"] == len(rows)
    for name in SPLITS:
        mine = [r for r in rows if r[4] == name]
        assert stats["files_per_split"][name] == len(mine)
        assert stats["bytes_per_split"][name] == sum(len(r[0].encode()) for r in mine)
        assert stats["projects_per_split"][name] == len({r[1] for r in mine})
    assert [p.name for p in (tmp_path / "out").iterdir() if p.name.startswith(".")] == []  # no spool left


def test_dataset_writer_matches_save_to_disk(tmp_path: Path) -> None:
    rows = {c: [f"{c}{i}" * (i + 1) for i in range(11)] for c in corpus.COLUMNS}
    reference = datasets.Dataset.from_dict(rows, features=FEATURES)
    reference.save_to_disk(str(tmp_path / "ref"), max_shard_size=100)
    ref_files = json.loads((tmp_path / "ref" / "state.json").read_text())["_data_files"]
    assert len(shard_sizes(11, reference.data.nbytes, 100)) == len(ref_files)  # the same number of shards
    writer = DatasetWriter(tmp_path / "mine", FEATURES, shard_sizes(11, 700, 300))
    (tmp_path / "mine").mkdir()
    table = reference.data.table
    for start in range(0, 11, 4):  # batches that straddle shard boundaries
        writer.write(table.slice(start, 4))
    with pytest.raises(ValueError, match="more rows"):
        writer.write(table.slice(0, 1))
    writer.close("0123456789abcdef")
    mine = datasets.load_from_disk(str(tmp_path / "mine"))
    assert mine.features == reference.features and mine.to_dict() == reference.to_dict()
    assert len(list((tmp_path / "mine").glob("data-*.arrow"))) == 3
    for name in ("state.json", "dataset_info.json"):
        ref_json, my_json = (json.loads((tmp_path / d / name).read_text()) for d in ("ref", "mine"))
        ref_json.pop("_fingerprint", None), ref_json.pop("_data_files", None)
        my_json.pop("_fingerprint", None), my_json.pop("_data_files", None)
        assert my_json == ref_json, name
    assert json.loads((tmp_path / "mine" / "state.json").read_text())["_fingerprint"] == "0123456789abcdef"


def test_shard_sizes_are_contiguous_and_even() -> None:
    assert shard_sizes(10, 0, 500) == [10]
    assert shard_sizes(10, 1200, 500) == [4, 3, 3]
    assert shard_sizes(2, 10_000, 500) == [1, 1]
    assert shard_sizes(0, 0, 500) == [0]


def _clustered_signatures(rng: np.random.Generator) -> np.ndarray:
    """Signatures around a few bases with 0-47 of 128 values replaced by small numbers (so they collide
    too): near duplicates, files sharing bands below the threshold, and unrelated files."""
    base = rng.integers(0, 2**32, (int(rng.integers(1, 30)), 128), dtype=np.uint32)
    sigs = base[rng.integers(0, len(base), int(rng.integers(1, 250)))].copy()
    for row in sigs:
        k = int(rng.integers(0, 48))
        row[rng.choice(128, k, replace=False)] = rng.integers(0, 4, k)
    return sigs


def _check_against_datasketch(sigs: np.ndarray, order: np.ndarray) -> None:
    cfg = dedup.MinHashConfig()
    mine = dedup.near_duplicates(sigs, order, cfg)
    reference = _datasketch_near_duplicates(sigs, order.tolist(), cfg)
    assert set(mine) == set(reference)
    position = {int(i): p for p, i in enumerate(order)}
    for i, j in mine.items():  # the match named is the earliest kept one in the visit order
        assert j in reference[i] and position[j] == min(position[c] for c in reference[i])


def test_near_duplicates_drop_what_datasketch_drops() -> None:
    rng = np.random.default_rng(0)
    for _ in range(25):
        sigs = _clustered_signatures(rng)
        _check_against_datasketch(sigs, rng.permutation(len(sigs)))


def test_near_duplicates_ignore_band_key_collisions(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every band key equal (as if the 64-bit hash collided everywhere): the bands themselves decide."""
    monkeypatch.setattr(dedup, "_band_keys", lambda sigs, order, cols, chunk: np.zeros(len(order), np.uint64))
    rng = np.random.default_rng(1)
    for _ in range(5):
        sigs = _clustered_signatures(rng)
        _check_against_datasketch(sigs, rng.permutation(len(sigs)))


def test_near_duplicates_read_a_memmap(tmp_path: Path) -> None:
    sigs = _clustered_signatures(np.random.default_rng(2))
    sigs.tofile(tmp_path / "s.u32")
    mapped = np.memmap(tmp_path / "s.u32", dtype=np.uint32, mode="r", shape=sigs.shape)
    order = np.arange(len(sigs))[::-1]
    assert dedup.near_duplicates(mapped, order, dedup.MinHashConfig()) == dedup.near_duplicates(
        sigs, order, dedup.MinHashConfig()
    )
