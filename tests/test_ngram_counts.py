"""Chunked n-gram counting (sorted runs spilled to disk and merged) gives the counts of the in-memory counter."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kaffee.models import ngram
from kaffee.models.ngram import NgramCounts, _discounts, _vbits
from kaffee.models.sorted_runs import SortedRuns, reduce_pairs


def _in_memory(tokens: np.ndarray, vocab_size: int, order: int, min_count: int = 1) -> NgramCounts:
    """The counter NgramCounts.build replaced: every key of an order in memory, one np.unique per order.
    (Keys come from ngram._keys_of_order, looked up at call time, so a patched one is used here too.)"""
    _keys_of_order = ngram._keys_of_order
    tokens = np.ascontiguousarray(tokens, dtype=np.int64)
    vbits = _vbits(vocab_size)
    keys: list[np.ndarray] = [np.empty(0, np.int64)] * order
    counts: list[np.ndarray] = [np.empty(0, np.int32)] * order
    above_idx = None
    for n in range(order, 0, -1):
        k = _keys_of_order(tokens, n, vbits)
        if n == order or above_idx is None:
            uniq, idx, cnt = np.unique(k, return_index=True, return_counts=True)
        else:
            uniq, cnt = np.unique(k[above_idx + 1], return_counts=True)
            _, idx = np.unique(k, return_index=True)
        if n >= 3 and min_count > 1:
            keep = cnt >= min_count
            uniq, cnt = uniq[keep], cnt[keep]
        keys[n - 1], counts[n - 1] = uniq, cnt.astype(np.int32)
        above_idx = idx[idx + 1 < len(tokens)] if n > 1 else None
    return NgramCounts(vocab_size, keys, counts, _discounts(counts))


def _assert_same(a: NgramCounts, b: NgramCounts) -> None:
    assert a.order == b.order
    for n in range(a.order):
        assert a.keys[n].dtype == b.keys[n].dtype == np.int64 and a.counts[n].dtype == b.counts[n].dtype
        np.testing.assert_array_equal(a.keys[n], b.keys[n])
        np.testing.assert_array_equal(a.counts[n], b.counts[n])
    np.testing.assert_array_equal(a.discounts, b.discounts)


@settings(max_examples=60, deadline=None)
@given(
    tokens=st.lists(st.integers(0, 11), max_size=300),
    order=st.integers(1, 5),
    chunk=st.integers(2, 64),
    min_count=st.sampled_from([1, 2]),
)
def test_chunked_counts_equal_in_memory_counts(
    tokens: list[int], order: int, chunk: int, min_count: int
) -> None:
    arr = np.array(tokens, dtype=np.int32)
    _assert_same(
        NgramCounts.build(arr, 12, order, min_count, chunk=chunk), _in_memory(arr, 12, order, min_count)
    )


def test_spills_and_merges_many_runs_on_a_realistic_stream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Zipf-like tokens, 200k positions, chunks of 4096: dozens of runs per order, all merged."""
    rng = np.random.default_rng(0)
    tokens = np.minimum(rng.zipf(1.3, 200_000) - 1, 999).astype(np.int32)
    spilled: list[int] = []
    real_spill = SortedRuns._spill

    def counting_spill(self: SortedRuns, keys: np.ndarray, values: np.ndarray) -> None:
        spilled.append(len(keys))
        real_spill(self, keys, values)

    monkeypatch.setattr(SortedRuns, "_spill", counting_spill)
    chunked = NgramCounts.build(tokens, 1000, 4, chunk=4096, spill_dir=tmp_path)
    assert len(spilled) > 100
    assert list(tmp_path.iterdir()) == []  # run files are deleted after the merge
    _assert_same(chunked, _in_memory(tokens, 1000, 4))
    ctx = [int(t) for t in tokens[1000:1003]]
    assert chunked.prob(ctx, int(tokens[1003])) == _in_memory(tokens, 1000, 4).prob(ctx, int(tokens[1003]))


def test_hash_collisions_keep_the_first_occurrence(monkeypatch: pytest.MonkeyPatch) -> None:
    """A history hash reduced to 2 bits makes many n-grams share a key; which suffix a shared key
    counts for is still the first occurrence's, across chunks, as in the in-memory counter."""
    real = ngram._keys_of_order

    def colliding(tokens: np.ndarray, n: int, vbits: int) -> np.ndarray:
        k = real(tokens, n, vbits)
        return ((k >> vbits) & 3) << vbits | (k & ((1 << vbits) - 1))

    monkeypatch.setattr(ngram, "_keys_of_order", colliding)
    tokens = np.random.default_rng(3).integers(0, 6, 3000).astype(np.int32)
    expected = _in_memory(tokens, 6, 4)
    assert sum(len(k) for k in expected.keys) < 4 * 3000 // 10  # keys are shared: collisions happen
    _assert_same(NgramCounts.build(tokens, 6, 4, chunk=50), expected)


@settings(max_examples=40, deadline=None)
@given(
    pairs=st.lists(st.tuples(st.integers(-5, 40), st.integers(0, 9)), max_size=200),
    max_items=st.integers(2, 30),
    combine=st.sampled_from(["sum", "first"]),
)
def test_sorted_runs_reduce_like_a_dict(pairs: list[tuple[int, int]], max_items: int, combine: str) -> None:
    runs = SortedRuns(combine, max_items)
    for start in range(0, len(pairs), 7):
        part = pairs[start : start + 7]
        runs.add(np.array([k for k, _ in part], np.int64), np.array([v for _, v in part], np.int64))
    expected: dict[int, int] = {}
    for k, v in pairs:
        expected[k] = expected.get(k, 0) + v if combine == "sum" else expected.get(k, v)
    blocks = list(runs.merged(block=3))
    keys = np.concatenate([k for k, _ in blocks]) if blocks else np.empty(0, np.int64)
    values = np.concatenate([v for _, v in blocks]) if blocks else np.empty(0, np.int64)
    assert keys.tolist() == sorted(expected) and values.tolist() == [expected[k] for k in sorted(expected)]


def test_reduce_pairs_and_bad_input() -> None:
    k, v = reduce_pairs(np.array([3, 1, 3, 1]), np.array([1, 2, 3, 4]), "first")
    assert k.tolist() == [1, 3] and v.tolist() == [2, 1]
    with pytest.raises(ValueError, match="combine"):
        SortedRuns("max", 10)
    with pytest.raises(ValueError, match="3 keys but 2 values"):
        SortedRuns("sum", 10).add(np.arange(3), np.arange(2))
