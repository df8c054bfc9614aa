"""`ngram` family: interpolated modified Kneser-Ney over BPE tokens, with a cache component.

Counting is vectorised with numpy: every n-gram is one int64 key, ``hash(history) << vbits | w``,
so sorting the keys puts all continuations of a history in one contiguous run. A query
finds that run with two binary searches per order. The cache (SLP-Core's idea) is the
same count structure built over the file being edited, mixed in by confidence.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from kaffee.models.lm import DecodeState, LanguageModel
from kaffee.models.sorted_runs import SortedRuns
from tqdm import tqdm

_PRIME = np.uint64(0x9E3779B97F4A7C15)  # odd multiplier for the rolling history hash
DEFAULT_CHUNK = 1 << 23  # token positions counted at once, and pairs held in memory before a spill


@dataclass
class NgramConfig:
    vocab_size: int = 16384  # tokenizer vocabulary (must match tokenizer.json)
    order: int = 6  # longest n-gram counted
    min_count: int = 1  # drop n-grams of order >= 3 seen fewer times (1 keeps everything)
    # unused (the cache over the project's files is server/cache.py's); kept because every saved
    # ngram config.json names them, and an unknown key would make the config fail to load
    cache_order: int = 6
    cache_beta: float = 3.0
    max_context: int = 4096  # longest context the engine feeds it


# Pruning (min_count=2) cost 0.45 nats/token on held-out projects in a 10M-token test, so no preset prunes.
PRESETS: dict[str, dict] = {"nano": dict(order=3), "small": dict(order=4), "base": dict(order=6)}


def _vbits(vocab_size: int) -> int:
    return max(1, int(vocab_size - 1).bit_length())


class NgramCounts:
    """Sorted n-gram keys with (continuation) counts and modified-KN discounts per order."""

    def __init__(
        self, vocab_size: int, keys: list[np.ndarray], counts: list[np.ndarray], discounts: np.ndarray
    ):
        self.vocab_size = vocab_size
        self.vbits = _vbits(vocab_size)
        self.vmask = (1 << self.vbits) - 1
        self.hmask = np.uint64((1 << (63 - self.vbits)) - 1)
        self.keys = keys  # keys[n-1]: sorted int64 keys of order n
        self.counts = counts  # counts[n-1]: raw counts (top order) or continuation counts (lower)
        self.discounts = discounts  # (order, 3): D1, D2, D3+ per order
        self.order = len(keys)

    # -- building -----------------------------------------------------------------------
    @classmethod
    def build(cls, tokens: np.ndarray, vocab_size: int, order: int, min_count: int = 1,
              chunk: int = DEFAULT_CHUNK, spill_dir: Path | None = None, progress: bool = False) -> NgramCounts:  # fmt: skip
        """Count the n-grams of ``tokens`` with memory bounded by ``chunk`` besides the counts themselves.

        The top order keeps raw counts; a lower order n keeps continuation counts (the number of
        distinct (n+1)-gram keys whose first occurrence has this n-gram as its suffix). Keys are
        counted ``chunk`` positions at a time; past ``chunk`` pairs in memory, sorted runs are
        spilled under ``spill_dir`` (default: the system's temporary folder) and merged
        (:mod:`kaffee.models.sorted_runs`). The counts do not depend on ``chunk``.
        """
        vbits = _vbits(vocab_size)
        keys: list[np.ndarray] = [np.empty(0, np.int64)] * order
        counts: list[np.ndarray] = [np.empty(0, np.int32)] * order
        bar = tqdm(total=order, desc="n-gram orders", unit="order", disable=not progress)
        for n in range(order, 0, -1):
            if n == order:
                runs = SortedRuns("sum", chunk, spill_dir)
                for k, _ in _chunks(tokens, n, 0, chunk, vbits):
                    runs.add(k, np.ones(len(k), np.int64))
            else:  # each distinct (n+1)-gram key gives its first occurrence's suffix one continuation
                firsts = SortedRuns("first", chunk, spill_dir)
                for k, suffix in _chunks(tokens, n + 1, n, chunk, vbits):
                    firsts.add(k, suffix)
                runs = SortedRuns("sum", chunk, spill_dir)
                for _, suffix in firsts.merged():
                    runs.add(suffix, np.ones(len(suffix), np.int64))
            uniq, cnt = _collect(runs.merged())
            if n >= 3 and min_count > 1:
                keep = cnt >= min_count
                uniq, cnt = uniq[keep], cnt[keep]
            keys[n - 1], counts[n - 1] = uniq, cnt.astype(np.int32, copy=False)
            bar.update(1)
        bar.close()
        return cls(vocab_size, keys, counts, _discounts(counts))

    # -- querying -----------------------------------------------------------------------
    def _hash(self, hist: list[int]) -> int:
        h = np.uint64(0)
        with np.errstate(over="ignore"):
            for t in hist:
                h = (h * _PRIME + np.uint64(t + 1)) & self.hmask
        return int(h)

    def _run(self, n: int, hist: list[int]) -> tuple[int, int, int]:
        base = self._hash(hist) << self.vbits
        keys = self.keys[n - 1]
        lo = int(np.searchsorted(keys, base))
        hi = int(np.searchsorted(keys, base + (1 << self.vbits)))
        return base, lo, hi

    def distribution(self, context: list[int]) -> tuple[np.ndarray, int, int]:
        """p(. | context) over the vocabulary; also the longest matched order and its history count."""
        p = np.full(self.vocab_size, 1.0 / self.vocab_size)
        matched, hist_count = 0, 0
        for n in range(1, self.order + 1):
            if len(context) < n - 1:
                break
            _, lo, hi = self._run(n, context[len(context) - (n - 1) :] if n > 1 else [])
            if lo == hi:
                break
            ws = self.keys[n - 1][lo:hi] & self.vmask
            cs = self.counts[n - 1][lo:hi].astype(np.float64)
            d = self.discounts[n - 1][np.minimum(cs, 3).astype(np.int64) - 1]
            total = cs.sum()
            p *= d.sum() / total
            np.add.at(p, ws, (cs - d) / total)
            matched, hist_count = n, int(total)
        return p, matched, hist_count

    def prob(self, context: list[int], w: int) -> float:
        """p(w | context) without building the whole distribution (for scoring)."""
        p = 1.0 / self.vocab_size
        for n in range(1, self.order + 1):
            if len(context) < n - 1:
                break
            base, lo, hi = self._run(n, context[len(context) - (n - 1) :] if n > 1 else [])
            if lo == hi:
                break
            keys, cnts = self.keys[n - 1], self.counts[n - 1]
            cs = cnts[lo:hi].astype(np.float64)
            total = cs.sum()
            dvec = self.discounts[n - 1]
            gamma = (dvec[np.minimum(cs, 3).astype(np.int64) - 1]).sum() / total
            j = lo + int(np.searchsorted(keys[lo:hi], base + w))
            own = 0.0
            if j < hi and keys[j] == base + w:
                c = float(cnts[j])
                own = (c - dvec[min(int(c), 3) - 1]) / total
            p = own + gamma * p
        return p

    # -- persistence ----------------------------------------------------------------------
    def tensors(self, prefix: str = "") -> dict[str, torch.Tensor]:
        out = {f"{prefix}discounts": torch.from_numpy(self.discounts.copy())}
        for n in range(1, self.order + 1):
            out[f"{prefix}keys.{n}"] = torch.from_numpy(self.keys[n - 1])
            out[f"{prefix}counts.{n}"] = torch.from_numpy(self.counts[n - 1])
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], vocab_size: int, order: int) -> NgramCounts:
        keys = [tensors[f"keys.{n}"].numpy() for n in range(1, order + 1)]
        counts = [tensors[f"counts.{n}"].numpy() for n in range(1, order + 1)]
        return cls(vocab_size, keys, counts, tensors["discounts"].numpy())


def _keys_of_order(tokens: np.ndarray, n: int, vbits: int) -> np.ndarray:
    """int64 key of every n-gram starting at 0..len-n."""
    m = len(tokens) - n + 1
    if m <= 0:
        return np.empty(0, np.int64)
    hmask = np.uint64((1 << (63 - vbits)) - 1)
    h = np.zeros(m, np.uint64)
    with np.errstate(over="ignore"):
        for j in range(n - 1):
            h = (h * _PRIME + (tokens[j : j + m].astype(np.uint64) + np.uint64(1))) & hmask
    return ((h << np.uint64(vbits)) | tokens[n - 1 : n - 1 + m].astype(np.uint64)).astype(np.int64)


def _chunks(tokens: np.ndarray, n: int, suffix_order: int, chunk: int,
            vbits: int) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:  # fmt: skip
    """Keys of the n-grams starting at each position, ``chunk`` positions at a time, with (when
    ``suffix_order``) the key of the ``suffix_order``-gram starting one position later."""
    positions = len(tokens) - n + 1
    for start in range(0, max(positions, 0), chunk):
        end = min(start + chunk, positions)
        part = np.asarray(tokens[start : end + n - 1], dtype=np.int64)
        suffix = _keys_of_order(part[1:], suffix_order, vbits)[: end - start] if suffix_order else None
        yield _keys_of_order(part, n, vbits), suffix


def _collect(blocks: Iterator[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate merged (keys, counts) blocks (counts as int32, block by block, to spare memory)."""
    ks, cs = [], []
    for k, c in blocks:
        ks.append(k)
        cs.append(c.astype(np.int32))
    if not ks:
        return np.empty(0, np.int64), np.empty(0, np.int32)
    keys = np.concatenate(ks)
    del ks[:]
    return keys, np.concatenate(cs)


def _discounts(counts: list[np.ndarray]) -> np.ndarray:
    """Modified Kneser-Ney discounts D1, D2, D3+ per order (Chen & Goodman 1998)."""
    out = np.zeros((len(counts), 3))
    for i, c in enumerate(counts):
        n1, n2, n3, n4 = (int((c == k).sum()) for k in (1, 2, 3, 4))
        if min(n1, n2, n3, n4) == 0:
            out[i] = (0.5, 1.0, 1.5)
            continue
        y = n1 / (n1 + 2 * n2)
        out[i] = (1 - 2 * y * n2 / n1, 2 - 3 * y * n3 / n2, 3 - 4 * y * n4 / n3)
        out[i] = np.clip(out[i], 0.05, (1, 2, 3))
    return out


def cache_weight(matched: int, hist_count: int, beta: float) -> float:
    """How much to trust the cache: only a history of >= 2 tokens counts as evidence."""
    return hist_count / (hist_count + beta) if matched >= 3 else 0.0


class NgramModel(LanguageModel):
    family = "ngram"

    def __init__(self, cfg: NgramConfig, counts: NgramCounts):
        self.cfg = cfg
        self.counts = counts
        self.vocab_size = cfg.vocab_size
        self.max_context = cfg.max_context

    def config_dict(self) -> dict:
        return asdict(self.cfg)

    def _dist(self, context: list[int]) -> np.ndarray:
        tail = context[-(self.cfg.order - 1) :] if self.cfg.order > 1 else []
        p, _, _ = self.counts.distribution(tail)
        return p

    def next_logprobs(self, contexts: list[list[int]]) -> torch.Tensor:
        return torch.from_numpy(np.log(np.stack([self._dist(c) for c in contexts]))).float()  # (B, V)

    def sequence_logprobs(self, ids: list[int]) -> torch.Tensor:
        k = self.cfg.order - 1
        out = [np.log(self.counts.prob(ids[max(0, i - k) : i], ids[i])) for i in range(1, len(ids))]
        return torch.tensor(out, dtype=torch.float32)

    def advance(self, state: DecodeState, ids: list[int]) -> torch.Tensor:
        if not ids:
            raise ValueError("advance needs at least one token")
        state.ids.extend(ids)
        state.last_logprobs = torch.from_numpy(np.log(self._dist(state.ids))).float()
        return state.last_logprobs

    def crop(self, state: DecodeState, n: int) -> None:
        del state.ids[n:]
        state.last_logprobs = None
