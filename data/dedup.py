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
from datasketch import LeanMinHash, MinHashLSH

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


def near_duplicates(signatures: np.ndarray, order: Iterable[int], cfg: MinHashConfig) -> dict[int, int]:
    """Greedy near-dedup in ``order``: each file is kept unless it is a near duplicate of one kept before.

    Returns {dropped index: index of the kept file it duplicates}.
    """
    lsh = MinHashLSH(threshold=cfg.threshold, num_perm=signatures.shape[1])
    dropped: dict[int, int] = {}
    for i in order:
        mh = LeanMinHash(seed=cfg.seed, hashvalues=signatures[i], scheme="affine32")
        match = next(
            (c for c in lsh.query(mh) if jaccard(signatures[i], signatures[c]) >= cfg.threshold), None
        )
        if match is None:
            lsh.insert(i, mh, check_duplication=False)
        else:
            dropped[i] = match
    return dropped
