"""Exact and near duplicate detection.

Exact: a hash of the whitespace-normalised text. Near: MinHash signatures of 5-gram token
shingles, computed vectorised with numpy (token hashes -> shingle hashes -> ``num_perm``
multiply-shift permutations -> column minimum), indexed with datasketch's MinHashLSH and
confirmed by the signatures' estimated Jaccard similarity.
"""

from __future__ import annotations

import hashlib
import re
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from datasketch import MinHashLSH
from tqdm import tqdm

TOKEN_RE = re.compile(r"[A-Za-z_$][\w$]*|\d[\w.]*|\S")
_MIX = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit constant used to combine token hashes


@dataclass
class MinHashConfig:
    """Near-dedup parameters."""

    num_perm: int = 128  # permutations per signature
    shingle: int = 5  # tokens per shingle
    threshold: float = 0.85  # estimated Jaccard at or above which two files are near duplicates
    seed: int = 1  # seed of the permutations (fixed so signatures are comparable across runs)
    max_tokens: int = 100_000  # tokens of a file that are shingled (longer files are cut)
    chunk: int = 4096  # shingles permuted at once (bounds memory)


def check_threshold(threshold: float, num_perm: int) -> None:
    """ValueError, with the valid range, unless the LSH index can be built for ``threshold``.

    datasketch's MinHashLSH picks b bands of r rows (b * r <= num_perm) for the threshold and
    needs b >= 2; near 1 the best choice is a single band, so with 128 permutations the
    threshold must stay at or below about 0.98.
    """
    if not 0 < threshold < 1:
        raise ValueError(f"must be above 0 and at most {max_threshold(num_perm)}, got {threshold}")
    try:
        MinHashLSH(threshold=threshold, num_perm=num_perm)
    except ValueError:
        raise ValueError(f"must be above 0 and at most {max_threshold(num_perm)} with {num_perm} MinHash "
                         f"permutations (the LSH index needs at least 2 bands), got {threshold}") from None  # fmt: skip


def max_threshold(num_perm: int) -> float:
    """The highest threshold (2 decimals) that MinHashLSH accepts with ``num_perm`` permutations."""
    for hundredths in range(99, 0, -1):
        try:
            MinHashLSH(threshold=hundredths / 100, num_perm=num_perm)
        except ValueError:
            continue
        return hundredths / 100
    return 0.0


def normalised_hash(text: str) -> bytes:
    """16-byte hash of the text with all whitespace runs collapsed (exact-dedup key)."""
    return hashlib.blake2b(" ".join(text.split()).encode(), digest_size=16).digest()


class _TokenHashes(dict[str, int]):
    """Deterministic 32-bit token hashes (crc32; Python's hash() differs per process), memoised."""

    def __missing__(self, token: str) -> int:
        value = zlib.crc32(token.encode())
        if len(self) < 2_000_000:
            self[token] = value
        return value


class Signer:
    """Computes MinHash signatures; one per worker process."""

    def __init__(self, cfg: MinHashConfig) -> None:
        self.cfg = cfg
        rng = np.random.default_rng(cfg.seed)
        # permutation i of the 32-bit shingle hashes: x -> (a_i * x + b_i) mod 2**32, a bijection as a_i is odd
        self.a = rng.integers(0, 2**32, cfg.num_perm, dtype=np.uint32) | np.uint32(1)
        self.b = rng.integers(0, 2**32, cfg.num_perm, dtype=np.uint32)
        self.tokens = _TokenHashes()

    def shingles(self, text: str) -> np.ndarray:
        """32-bit hashes of the file's token k-grams; duplicates are harmless to a minimum."""
        toks = TOKEN_RE.findall(text)[: self.cfg.max_tokens]
        if not toks:
            return np.zeros(1, dtype=np.uint32)
        t = np.fromiter(map(self.tokens.__getitem__, toks), dtype=np.uint64, count=len(toks))
        k = min(self.cfg.shingle, len(t))
        n = len(t) - k + 1
        h = t[:n].copy()
        for i in range(1, k):
            h = h * _MIX + t[i : i + n]  # wraps mod 2**64
        h ^= h >> np.uint64(29)
        h *= _MIX
        return (h >> np.uint64(32)).astype(np.uint32)

    def signature(self, text: str) -> np.ndarray:
        """(num_perm,) uint32 MinHash signature."""
        s = self.shingles(text)
        out = np.full(self.cfg.num_perm, np.iinfo(np.uint32).max, dtype=np.uint32)
        for start in range(0, len(s), self.cfg.chunk):
            perm = np.multiply.outer(self.a, s[start : start + self.cfg.chunk])  # (P, C), wraps mod 2**32
            perm += self.b[:, None]
            np.minimum(out, perm.min(axis=1), out=out)
        return out


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Jaccard similarity estimated from two signatures."""
    return float(np.count_nonzero(a == b)) / len(a)


def lsh_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows per band) of the LSH index, as datasketch's MinHashLSH picks them for ``threshold``."""
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    return lsh.b, lsh.r


def _band_keys(signatures: np.ndarray, order: np.ndarray, cols: slice, chunk: int) -> np.ndarray:
    """(len(order),) uint64 hash of columns ``cols`` of the signatures in ``order``, ``chunk`` rows at a time."""
    keys = np.empty(len(order), np.uint64)
    with np.errstate(over="ignore"):
        for start in range(0, len(order), chunk):
            band = np.asarray(signatures[order[start : start + chunk], cols], dtype=np.uint64)
            h = np.zeros(len(band), np.uint64)
            for col in band.T:
                h = (h ^ col) * _MIX
            keys[start : start + len(band)] = h ^ (h >> np.uint64(31))
    return keys


def _shared_bands(signatures: np.ndarray, order: np.ndarray, bands: int, rows: int,
                  chunk: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """Groups of visit positions whose band keys are equal (groups of one are left out).

    Returns (members, starts, band): group g is ``members[starts[g]:starts[g + 1]]`` (ascending) in
    band ``band[g]``.
    """
    members, sizes, band_of = [], [], []
    for b in range(bands):
        keys = _band_keys(signatures, order, slice(b * rows, (b + 1) * rows), chunk)
        idx = np.argsort(keys, kind="stable")  # positions by key, ascending within one key
        sorted_keys = keys[idx]
        del keys
        edge = np.flatnonzero(sorted_keys[1:] != sorted_keys[:-1]) + 1
        del sorted_keys
        length = np.diff(np.concatenate(([0], edge, [len(idx)])))
        shared = length > 1
        members.append(idx[np.repeat(shared, length)])
        sizes.append(length[shared])
        band_of.append(np.full(int(shared.sum()), b))
    sizes_all = np.concatenate(sizes)
    starts = np.concatenate(([0], np.cumsum(sizes_all)))
    return np.concatenate(members), starts, np.concatenate(band_of)


def near_duplicates(signatures: np.ndarray, order: Iterable[int], cfg: MinHashConfig,
                    progress: bool = False) -> dict[int, int]:  # fmt: skip
    """Greedy near-dedup in ``order``: each file is kept unless it is a near duplicate of one kept before.

    Returns {dropped index: index of the earliest (in ``order``) kept file it duplicates}.

    Candidates are files that share an LSH band (the b bands of r rows that datasketch's
    MinHashLSH uses for the threshold, :func:`lsh_bands`), confirmed by the estimated Jaccard
    similarity, so the dropped set is the one an incremental MinHashLSH index gives. The index is
    built band by band with numpy (one sorted uint64 key per file, keeping only keys two or more
    files share), so its memory is a few bytes per file whatever the size of the texts.
    ``signatures`` (files, num_perm) may be a read-only ``np.memmap``: it is read in chunks, and
    row by row for candidates.
    """
    order = np.fromiter(order, dtype=np.int64)
    if len(order) == 0:
        return {}
    bands, rows = lsh_bands(cfg.threshold, signatures.shape[1])
    members, starts, band_of = _shared_bands(signatures, order, bands, rows, max(1, cfg.chunk * 16))
    group_of = np.repeat(np.arange(len(band_of)), np.diff(starts))
    by_pos = np.argsort(members, kind="stable")
    pos, groups = members[by_pos], group_of[by_pos]  # (visit position, group) pairs, by position
    if len(pos) == 0:
        return {}
    bounds = np.concatenate(([0], np.flatnonzero(np.diff(pos)) + 1, [len(pos)]))
    kept = np.ones(len(order), bool)
    dropped: dict[int, int] = {}
    for a, z in tqdm(zip(bounds[:-1], bounds[1:], strict=True), total=len(bounds) - 1, desc="near-dedup",
                     unit="file", disable=not progress):  # fmt: skip
        p = pos[a]
        sig = np.asarray(signatures[order[p]])
        cands: set[int] = set()
        for g in groups[a:z]:
            group = members[starts[g] : starts[g + 1]]
            cols = slice(band_of[g] * rows, (band_of[g] + 1) * rows)
            before = group[: np.searchsorted(group, p)]
            before = before[kept[before]]  # earlier files of the group that were kept
            if len(before):
                same = (np.asarray(signatures[order[before], cols]) == sig[cols]).all(axis=1)
                cands.update(before[same].tolist())  # equal keys but unequal bands: a hash collision
        for c in sorted(cands):
            if jaccard(sig, np.asarray(signatures[order[c]])) >= cfg.threshold:
                kept[p] = False
                dropped[int(order[p])] = int(order[c])
                break
    return dropped
