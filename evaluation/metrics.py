"""Per-item metric functions and their aggregation (bootstrap intervals, percentiles).

Per-item functions score one prediction against one target; aggregation turns a list
of per-item values into a number with a 95 % bootstrap interval (lm-evaluation-harness
keeps the two apart the same way). Definitions follow CodeXGLUE where one exists
(DESIGN.md "Metrics").
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from rapidfuzz import fuzz

BOOTSTRAP_SAMPLES = 1000  # resamples per interval
CONFIDENCE = 0.95


# -- line level (CodeXGLUE CodeCompletion-line) ---------------------------------------------


def exact_match(pred: str, target: str) -> float:
    """1.0 when ``pred`` and ``target`` are the same token sequence: ``pred.split() == target.split()``."""
    return 1.0 if pred.split() == target.split() else 0.0


def edit_similarity(pred: str, target: str) -> float:
    """Levenshtein (indel) ratio x 100, as ``fuzz.ratio``; CodeXGLUE strips the prediction first."""
    return float(fuzz.ratio(pred.strip(), target))


_LIT_PLACEHOLDER = re.compile(r"<(STR|NUM|CHAR)_LIT:(.*?)>", re.S)


def codexglue_post_process(code: str) -> str:
    """CodeXGLUE's literal de-normalisation before scoring: <NUM_LIT> -> 0, <STR_LIT> -> '', <X_LIT:v> -> v."""
    code = code.replace("<NUM_LIT>", "0").replace("<STR_LIT>", "").replace("<CHAR_LIT>", "")
    for kind, value in _LIT_PLACEHOLDER.findall(code):
        code = code.replace(f"<{kind}_LIT:{value}>", value)
    return code


def codexglue_line_scores(pred: str, gt: str) -> tuple[float, float]:
    """(exact match 0/1, edit similarity 0..100) exactly as CodeXGLUE's line evaluator computes them."""
    pred = codexglue_post_process(pred.strip())
    gt = codexglue_post_process(gt)
    return (1.0 if pred.split() == gt.split() else 0.0), float(fuzz.ratio(pred, gt))


# -- token level --------------------------------------------------------------------------------


def rank_of(target: str, ranked: Sequence[str]) -> int | None:
    """1-based rank of ``target`` among the suggestions (whole-token equality), or None."""
    for i, cand in enumerate(ranked, 1):
        if cand == target:
            return i
    return None


def top_k_hit(target: str, ranked: Sequence[str], k: int) -> float:
    r = rank_of(target, ranked)
    return 1.0 if r is not None and r <= k else 0.0


def reciprocal_rank(target: str, ranked: Sequence[str], k: int = 10) -> float:
    """1/rank within the first ``k`` suggestions, else 0 (MRR@k per item)."""
    r = rank_of(target, ranked)
    return 1.0 / r if r is not None and r <= k else 0.0


# -- typing replay --------------------------------------------------------------------------------


def accepted_length(suggestion: str, upcoming: str) -> int:
    """Characters a user gains by accepting ``suggestion`` when about to type ``upcoming``.

    The suggestion (trailing whitespace dropped) must be a prefix of what the user was
    going to type on this line; anything else is rejected and gains nothing.
    """
    s = suggestion.rstrip()
    if "\n" in s:
        s = s.split("\n", 1)[0].rstrip()
    return len(s) if s and upcoming.startswith(s) else 0


# -- aggregation ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    value: float
    low: float | None  # 95 % bootstrap interval; None when n < 2
    high: float | None
    n: int


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, 0x6B6166]))


def _resample_indices(n: int, seed: int, samples: int):
    rng = _rng(seed)
    chunk = max(1, min(samples, 2_000_000 // max(n, 1)))
    done = 0
    while done < samples:
        m = min(chunk, samples - done)
        yield rng.integers(0, n, size=(m, n))
        done += m


def _interval(stats: np.ndarray) -> tuple[float, float]:
    alpha = (1 - CONFIDENCE) / 2
    lo, hi = np.quantile(stats, [alpha, 1 - alpha])
    return float(lo), float(hi)


def mean_estimate(
    values: Sequence[float], scale: float = 1.0, seed: int = 0, samples: int = BOOTSTRAP_SAMPLES
) -> Estimate:
    """Mean x ``scale`` with a percentile-bootstrap 95 % interval."""
    v = np.asarray(values, dtype=np.float64)
    n = len(v)
    if n == 0:
        return Estimate(math.nan, None, None, 0)
    value = float(v.mean() * scale)
    if n < 2:
        return Estimate(value, None, None, n)
    stats = np.concatenate([v[idx].mean(axis=1) for idx in _resample_indices(n, seed, samples)]) * scale
    lo, hi = _interval(stats)
    return Estimate(value, lo, hi, n)


def ratio_estimate(
    num: Sequence[float],
    den: Sequence[float],
    scale: float = 1.0,
    seed: int = 0,
    samples: int = BOOTSTRAP_SAMPLES,
) -> Estimate:
    """sum(num) / sum(den) x ``scale`` (e.g. bits per character), bootstrapped over items."""
    a = np.asarray(num, dtype=np.float64)
    b = np.asarray(den, dtype=np.float64)
    n = len(a)
    if n == 0 or b.sum() == 0:
        return Estimate(math.nan, None, None, n)
    value = float(a.sum() / b.sum() * scale)
    if n < 2:
        return Estimate(value, None, None, n)
    parts = []
    for idx in _resample_indices(n, seed, samples):
        d = b[idx].sum(axis=1)
        parts.append(np.where(d > 0, a[idx].sum(axis=1) / np.where(d > 0, d, 1), np.nan))
    stats = np.concatenate(parts) * scale
    stats = stats[~np.isnan(stats)]
    lo, hi = _interval(stats) if len(stats) else (math.nan, math.nan)
    return Estimate(value, lo, hi, n)


def percentile_estimate(
    values: Sequence[float], q: float, seed: int = 0, samples: int = BOOTSTRAP_SAMPLES
) -> Estimate:
    """The ``q``-th percentile (0..100) with a bootstrap interval."""
    v = np.asarray(values, dtype=np.float64)
    n = len(v)
    if n == 0:
        return Estimate(math.nan, None, None, 0)
    value = float(np.percentile(v, q))
    if n < 2:
        return Estimate(value, None, None, n)
    stats = np.concatenate([np.percentile(v[idx], q, axis=1) for idx in _resample_indices(n, seed, samples)])
    lo, hi = _interval(stats)
    return Estimate(value, lo, hi, n)
