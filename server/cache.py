"""Project-local n-gram caches mixed into the model's distribution (SLP-Core's nested cache).

Two levels, each an :class:`NgramCounts` over BPE ids: the workspace files (rebuilt when
the file set changes) and the open documents (rebuilt at most every few seconds while
the user types). Each level is mixed in with the confidence ``c(h) / (c(h) + beta)`` of
its longest matching history ``h``, the more local level last. Builds run on a
background thread; requests always read the last complete build.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass

import numpy as np
import torch
from kaffee.data.tokenizer import KaffeeTokenizer
from kaffee.errors import KaffeeError
from kaffee.models.ngram import NgramCounts, cache_weight

log = logging.getLogger(__name__)

MIXTURES = ("fitted", "capped")
# sigmoid weights fitted by bench/cache_mixture.py on the default corpus's valid-split projects
FITTED_MIXTURE = (-3.0, -6.6, -5.09, -4.28, -3.81, -3.35, -1.87, -0.01, 0.67)


@dataclass
class CacheConfig:
    order: int = 6  # longest n-gram the caches count
    beta: float = 3.0  # confidence c(h) / (c(h) + beta) of the longest matched history
    max_tokens: int = 400_000  # tokens of workspace text counted at most (open documents come first)
    max_file_chars: int = 400_000  # longer files are counted only up to this many characters
    rebuild_interval_s: float = 2.0  # the open-documents level is rebuilt at most this often
    max_weight: float = (
        0.3  # cap on a level's mixing weight in the "capped" mixture (1.0 hurt: line ES 71 -> 63)
    )
    mixture: str = (
        "fitted"  # fitted: weight from the matched order, its count and the model's entropy; capped
    )
    # logistic weight sigmoid(a[matched] + b * log(1 + count) + e * entropy); fitted on held-out projects
    # (runs/fit/fit.py, see models/default/card.md); a[0..6] by matched n-gram order, then b, e
    fitted: tuple[float, ...] = FITTED_MIXTURE

    def __post_init__(self) -> None:
        if self.mixture not in MIXTURES:
            raise KaffeeError(f"cache mixture must be one of {', '.join(MIXTURES)}; not {self.mixture!r}")
        if len(self.fitted) != self.order + 3:
            raise KaffeeError(
                f"cache.fitted needs {self.order + 3} numbers (order {self.order}), not {len(self.fitted)}"
            )

    documents: bool = False  # a level over the open documents too (their text is in the prompt already)


class WorkspaceCache:
    """Counts over workspace files and open documents, built off the request path."""

    def __init__(self, tokenizer: KaffeeTokenizer, config: CacheConfig | None = None):
        self.tokenizer = tokenizer
        self.cfg = config or CacheConfig()
        self._files: dict[str, str] = {}
        self._docs: dict[str, str] = {}
        self._ids: dict[str, tuple[str, list[int]]] = {}  # key -> (text it was encoded from, ids)
        self._lock = threading.Lock()  # guards the inputs and flags
        self._build_lock = threading.Lock()  # one build at a time
        self._workspace: NgramCounts | None = None
        self._open: NgramCounts | None = None
        self._dirty_files = False
        self._dirty_docs = False
        self._building = False
        self._last_build = 0.0
        self.builds = 0  # completed builds (for tests)

    # -- inputs ------------------------------------------------------------------------------
    def set_files(self, files: dict[str, str]) -> None:
        with self._lock:
            self._files = dict(files)
            self._dirty_files = True

    def update(self, key: str, text: str) -> None:
        with self._lock:
            self._docs[key] = text
            self._dirty_docs = True

    def remove(self, key: str) -> None:
        with self._lock:
            if self._docs.pop(key, None) is not None:
                self._dirty_docs = True

    # -- building ----------------------------------------------------------------------------
    def _encode(self, key: str, text: str) -> list[int]:
        text = text[: self.cfg.max_file_chars]
        hit = self._ids.get(key)
        if hit is not None and hit[0] == text:
            return hit[1]
        ids = self.tokenizer.encode(text) + [self.tokenizer.eos_id]
        self._ids[key] = (text, ids)
        return ids

    def _collect(self, texts: dict[str, str], budget: int) -> list[int]:
        out: list[int] = []
        for key, text in texts.items():
            if len(out) >= budget:
                break
            out += self._encode(key, text)[: budget - len(out)]
        return out

    def _build(self) -> None:
        with self._build_lock:
            self._build_locked()

    def _build_locked(self) -> None:
        try:
            with self._lock:
                files, docs = dict(self._files), dict(self._docs)
                do_files, do_docs = self._dirty_files, self._dirty_docs
                self._dirty_files = self._dirty_docs = False
            vocab = self.tokenizer.vocab_size
            if do_docs and self.cfg.documents:
                ids = self._collect(docs, self.cfg.max_tokens)
                self._open = (
                    NgramCounts.build(np.asarray(ids), vocab, self.cfg.order) if len(ids) > 1 else None
                )
            if do_files:
                rest = {k: v for k, v in files.items() if k not in docs} if self.cfg.documents else files
                ids = self._collect(rest, self.cfg.max_tokens)
                self._workspace = (
                    NgramCounts.build(np.asarray(ids), vocab, self.cfg.order) if len(ids) > 1 else None
                )
            live = set(files) | set(docs)
            for key in [k for k in self._ids if k not in live]:
                del self._ids[key]
            self.builds += 1
        except Exception:  # a cache is an optimisation: never let it take the server down
            log.exception("building the workspace cache failed; continuing without it")
        finally:
            self._last_build = time.monotonic()
            self._building = False

    def refresh(self, wait: bool = False) -> None:
        """Rebuild what changed: in the background (at most every few seconds for open documents),
        or now when ``wait`` is set, so that answers do not depend on thread timing."""
        if wait:
            with self._build_lock:
                if self._dirty_files or self._dirty_docs:
                    self._building = True
                    self._build_locked()
            return
        with self._lock:
            due = self._dirty_files or (
                self._dirty_docs and time.monotonic() - self._last_build >= self.cfg.rebuild_interval_s
            )
            if not due or self._building:
                return
            self._building = True
        threading.Thread(target=self._build, name="kaffee-cache", daemon=True).start()

    def all_ids(self) -> list[int]:
        """Every cached token id (workspace and open documents), e.g. to build a fallback n-gram model."""
        with self._lock:
            texts = {**self._files, **self._docs}
        return self._collect(texts, self.cfg.max_tokens)

    @property
    def empty(self) -> bool:
        return self._workspace is None and self._open is None

    # -- use ----------------------------------------------------------------------------------
    def fitted_weight(self, matched: int, count: int, entropy: float) -> float:
        """The fitted mixture weight: trust grows with the matched order, its count and the model's doubt."""
        theta = self.cfg.fitted
        a = theta[min(max(matched, 0), len(theta) - 3)]
        z = a + theta[-2] * math.log1p(count) + theta[-1] * entropy
        return 1.0 / (1.0 + math.exp(-z))

    def mix(self, logprobs: torch.Tensor, context: list[int]) -> torch.Tensor:
        """Mix the caches into next-token log-probs (V,) after ``context``."""
        levels = [c for c in (self._workspace, self._open if self.cfg.documents else None) if c is not None]
        if not levels:
            return logprobs
        hist = context[-(self.cfg.order - 1) :]
        p = None
        entropy = None
        for counts in levels:
            pc, matched, hist_count = counts.distribution(hist)
            if self.cfg.mixture == "fitted":
                if entropy is None:
                    entropy = float(-(logprobs.double().exp() * logprobs.double()).nan_to_num().sum())
                lam = self.fitted_weight(matched, hist_count, entropy)
            else:
                lam = min(self.cfg.max_weight, cache_weight(matched, hist_count, self.cfg.beta))
            if lam <= 0.0:
                continue
            if p is None:
                p = logprobs.double().exp().numpy()
            p = (1.0 - lam) * p + lam * pc[: len(p)]
        if p is None:
            return logprobs
        return torch.from_numpy(np.log(np.maximum(p, 1e-30))).float()


def logaddexp(a: float, b: float) -> float:
    if a == -math.inf:
        return b
    if b == -math.inf:
        return a
    hi, lo = max(a, b), min(a, b)
    return hi + math.log1p(math.exp(lo - hi))
