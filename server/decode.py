"""Decoding over a :class:`LanguageModel` state: greedy lines/blocks and a whole-token beam.

Pure algorithms; the engine owns the model, the states and the lock. Every loop checks
the cancel event and the deadline between model calls, so a request stops within one
decode step of being cancelled.
"""

from __future__ import annotations

import bisect
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from kaffee.data.tokenizer import KaffeeTokenizer
from kaffee.models.lm import DecodeState, LanguageModel, resync_point
from kaffee.server.cache import logaddexp
from kaffee.server.context import Prompt
from kaffee.server.fastgpt import FastGPT
from kaffee.server.java_tokens import extension_chars, first_token, is_word_char

Mixer = Callable[[torch.Tensor, list[int]], torch.Tensor]  # (log-probs (V,), context ids) -> log-probs (V,)
NEG_INF = float("-inf")


class Vocab:
    """Byte-level facts about every token id, precomputed once per tokenizer."""

    def __init__(self, tokenizer: KaffeeTokenizer):
        self.tokenizer = tokenizer
        self.pieces: list[bytes] = tokenizer.id_to_bytes
        self.special = np.zeros(len(self.pieces), dtype=bool)
        self.special[list(tokenizer.special_ids)] = True
        order = sorted((p, i) for i, p in enumerate(self.pieces) if not self.special[i] and p)
        self._sorted = [p for p, _ in order]
        self._sorted_ids = np.array([i for _, i in order], dtype=np.int64)
        self._by_bytes = {p: i for p, i in order}
        first = np.array([p[0] if p else 0 for p in self.pieces], dtype=np.int64)
        word = np.array([is_word_char(chr(b)) or b >= 0x80 for b in range(256)])
        self.word_start = word[first] & ~self.special
        self.first_byte = first
        self._end_masks: dict[str | None, np.ndarray] = {}

    def allowed(self, rem: bytes) -> np.ndarray:
        """Ids whose bytes are consistent with continuing text that must start with ``rem``."""
        lo = bisect.bisect_left(self._sorted, rem)
        hi = lo
        while hi < len(self._sorted) and self._sorted[hi].startswith(rem):
            hi += 1
        ids = [self._by_bytes[rem[:k]] for k in range(1, len(rem)) if rem[:k] in self._by_bytes]
        return np.concatenate([self._sorted_ids[lo:hi], np.array(ids, dtype=np.int64)])

    def end_mask(self, ext: str | None) -> np.ndarray:
        """Ids that would end a token whose extension characters are ``ext`` (None: word chars)."""
        mask = self._end_masks.get(ext)
        if mask is None:
            if ext is None:
                mask = ~self.word_start
            else:
                mask = ~np.isin(self.first_byte, np.frombuffer(ext.encode(), dtype=np.uint8).astype(np.int64))
                mask |= self.special
            self._end_masks[ext] = mask
        return mask


def constrain(logprobs: torch.Tensor, allowed: np.ndarray) -> torch.Tensor:
    out = torch.full_like(logprobs, NEG_INF)
    idx = torch.from_numpy(allowed)
    out[idx] = logprobs[idx]
    return out


class Runner:
    """Routes model calls (with fast paths for :class:`FastGPT`) and counts encoded tokens."""

    def __init__(self, model: LanguageModel, delay_s: float = 0.0):
        self.model = model
        self.fast = isinstance(model, FastGPT)
        self.delay_s = delay_s  # testing aid: a slow model
        self.tokens_advanced = 0  # tokens run through the model by this runner

    def _count(self, n: int) -> None:
        self.tokens_advanced += n
        if self.delay_s:
            time.sleep(self.delay_s)

    def sync(self, state: DecodeState, ids: list[int]) -> torch.Tensor:
        """Make ``state`` hold ``ids``, re-encoding only what differs from its cached prefix."""
        common = resync_point(state, ids)
        if common is None:
            assert state.last_logprobs is not None
            return state.last_logprobs
        if common < len(state.ids):
            self.model.crop(state, common)
        return self.step(state, ids[common:])

    def step(self, state: DecodeState, ids: list[int]) -> torch.Tensor:
        self._count(len(ids))
        return self.model.advance(state, ids)

    def step_all(self, state: DecodeState, ids: list[int]) -> torch.Tensor:
        """Log-probs after each of ``ids`` appended to ``state``: (T, V)."""
        self._count(len(ids))
        if self.fast:
            return self.model.advance_all(state, ids)
        return torch.stack([self.model.advance(state, [i]) for i in ids])

    def branches(self, state: DecodeState, branches: list[list[int]]) -> torch.Tensor:
        """Log-probs after ``state.ids + b`` for each branch; ``state`` keeps its ids: (B, V)."""
        self._count(sum(len(b) for b in branches))
        if self.fast:
            return self.model.branch_logprobs(state, branches)
        base = len(state.ids)
        rows = []
        for b in branches:
            rows.append(self.model.advance(state, b))
            self.model.crop(state, base)
        return torch.stack(rows)


class Lookup:
    """Prompt-lookup drafts: what followed the most recent earlier occurrence of the last tokens.

    Searches the previous request's tokens first (its suggestion usually still applies
    after a keystroke), then the current context.
    """

    def __init__(self, seq: list[int], extra: list[int] | None = None, ngrams: tuple[int, ...] = (3, 2)):
        self.seq: list[int] = []
        self.index: dict[int, list[int]] = {}
        self.extra = list(extra or [])
        self.extra_index: dict[int, list[int]] = {}
        for i, t in enumerate(self.extra):
            self.extra_index.setdefault(t, []).append(i)
        self.ngrams = ngrams
        for t in seq:
            self.push(t)

    def push(self, tok: int) -> None:
        self.index.setdefault(tok, []).append(len(self.seq))
        self.seq.append(tok)

    @staticmethod
    def _search(seq: list[int], index: dict[int, list[int]], key: list[int], limit: int, k: int) -> list[int]:
        for i in reversed(index.get(key[-1], ())):
            if i >= limit:
                continue
            j = i - len(key) + 1
            if j >= 0 and seq[j : i + 1] == key and i + 1 < len(seq):
                return seq[i + 1 : i + 1 + k]
        return []

    def draft(self, k: int) -> list[int]:
        if k <= 0:
            return []
        for n in self.ngrams:
            if len(self.seq) < n:
                continue
            key = self.seq[-n:]
            got = self._search(self.extra, self.extra_index, key, len(self.extra), k)
            if not got:
                got = self._search(self.seq, self.index, key, len(self.seq) - 1, k)
            if got:
                return got
        return []


@dataclass
class Generation:
    text: str  # the continuation after the cursor, cut by the stop rule
    ids: list[int]  # generated ids (healed piece included)
    reason: str  # newline, suffix, block_end, dedent, max_lines, eos, length, deadline, cancelled
    drafted: int = 0  # draft tokens proposed by prompt lookup
    accepted: int = 0  # of which the model confirmed


def _interrupted(cancel: threading.Event | None, deadline: float | None) -> str | None:
    if cancel is not None and cancel.is_set():
        return "cancelled"
    if deadline is not None and time.monotonic() > deadline:
        return "deadline"
    return None


def greedy(
    runner: Runner,
    vocab: Vocab,
    state: DecodeState,
    prompt: Prompt,
    stop,
    max_new: int,
    mix: Mixer,
    deadline: float | None = None,
    cancel: threading.Event | None = None,
    speculate: int = 0,
    previous: list[int] | None = None,
) -> Generation:
    """Greedy decoding from ``prompt`` until ``stop.feed(text)`` cuts, with optional lookup drafts."""
    model = runner.model
    lp = runner.sync(state, prompt.ids)
    heal = prompt.heal
    out = bytearray()
    gen: list[int] = []
    text = ""
    lookup = Lookup(prompt.ids, previous) if speculate > 0 and runner.fast else None
    result = Generation("", gen, "length")

    def take(tok: int) -> str | None:
        """Append ``tok``; returns a stop reason when generation must end with it."""
        nonlocal text
        if vocab.special[tok]:
            return "eos"
        gen.append(tok)
        out.extend(vocab.pieces[tok])
        if lookup is not None:
            lookup.push(tok)
        if len(out) < len(heal):
            return None
        text = bytes(out[len(heal) :]).decode("utf-8", errors="ignore")
        cut = stop.feed(text)
        if cut is not None:
            text = text[: cut.at]
            return cut.reason
        return None

    while True:
        reason = _interrupted(cancel, deadline)
        if reason is None and len(gen) >= max_new:
            reason = "length"
        if reason is None and len(state.ids) + 1 > model.max_context:
            reason = "length"
        if reason is not None:
            result.reason = reason
            break
        dist = mix(lp, state.ids)
        if len(out) < len(heal):
            dist = constrain(dist, vocab.allowed(bytes(heal[len(out) :])))
        tok = int(torch.argmax(dist))
        reason = take(tok)
        if reason is not None:
            result.reason = reason
            break
        draft: list[int] = []
        if lookup is not None and len(out) >= len(heal):
            room = min(speculate, max_new - len(gen), model.max_context - len(state.ids) - 1)
            if room > 0:
                draft = lookup.draft(room)
        if not draft:
            lp = runner.step(state, [tok])
            continue
        base = len(state.ids)
        rows = runner.step_all(state, [tok] + draft)  # (1 + d, V)
        result.drafted += len(draft)
        accepted = 0
        reason = None
        for i, d in enumerate(draft):
            if int(torch.argmax(mix(rows[i], state.ids[: base + 1 + i]))) != d:
                break
            accepted += 1
            reason = take(d)
            if reason is not None:
                break
        result.accepted += accepted
        model.crop(state, base + 1 + accepted)
        if reason is not None:
            result.reason = reason
            break
        lp = rows[accepted]
    result.text = text
    return result


@dataclass
class _Beam:
    ids: list[int]
    logprob: float
    data: bytes = b""
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class TokenCandidate:
    text: str  # the whole Java token
    attached: bool  # it continues the word that ends at the cursor (text includes that word)


def _classify(after: str, lead: str, type_depth: int = 0) -> tuple[TokenCandidate | None, bool, str | None]:
    """For the text generated after the cursor: (token, is it certainly finished, extension chars).

    token None means nothing but whitespace yet (or a comment, which is never suggested:
    then finished is True). ``type_depth``: type arguments open at the cursor; a run of at
    most that many ``>`` is that many tokens (JLS §3.2, as ``java_tokens.lex`` cuts them).
    """
    attached = bool(lead) and bool(after) and is_word_char(after[0])
    source = lead + after if attached else after
    tok, has_more = first_token(source)
    if tok is None:
        return None, False, None
    if tok.kind == "comment":
        return None, True, None
    if 0 < len(tok.text) <= type_depth and tok.kind == "operator" and set(tok.text) == {">"}:
        return TokenCandidate(">", attached), True, None
    cand = TokenCandidate(tok.text, attached)
    if has_more:
        return cand, True, None
    if not tok.complete:
        return cand, False, "\x00"  # an open string or comment: nothing ends it but its closer
    ext = extension_chars(tok)
    if tok.text == ".":
        ext = ""
    return cand, ext == "", ext


def token_beam(
    runner: Runner,
    vocab: Vocab,
    state: DecodeState,
    prompt: Prompt,
    lead: str,
    k: int,
    mix: Mixer,
    beam_width: int = 8,
    max_pieces: int = 6,
    deadline: float | None = None,
    cancel: threading.Event | None = None,
    type_depth: int = 0,
) -> list[tuple[TokenCandidate, float]]:
    """Rank whole Java tokens at the cursor: a beam over sub-word pieces up to a token boundary.

    A token's probability is the mass of the paths that spell it and then end it: for a
    path whose text could end here, the mass of the next pieces that cannot extend it.
    ``type_depth``: type arguments open at the cursor (``java_tokens.open_type_arguments``).
    """
    root = runner.sync(state, prompt.ids)
    heal = prompt.heal
    finished: dict[TokenCandidate, float] = {}
    live = [_Beam([], 0.0)]
    dists = [mix(root, state.ids)]

    def add(cand: TokenCandidate, logprob: float) -> None:
        finished[cand] = logaddexp(finished.get(cand, NEG_INF), logprob)

    for _ in range(max_pieces):
        candidates: list[_Beam] = []
        for beam, dist in zip(live, dists, strict=True):
            if len(beam.data) < len(heal):
                dist = constrain(dist, vocab.allowed(heal[len(beam.data) :]))
            else:
                cand, done, ext = beam.extra.get("cls", (None, False, None))
                if cand is not None and ext != "\x00":
                    ends = torch.from_numpy(vocab.end_mask(ext))
                    add(cand, beam.logprob + float(torch.logsumexp(dist[ends], 0)))
                    dist = dist.masked_fill(ends, NEG_INF)
            top = torch.topk(dist, min(beam_width, dist.numel()))
            for lp_, tid in zip(top.values.tolist(), top.indices.tolist(), strict=True):
                if lp_ == NEG_INF or vocab.special[tid]:
                    continue
                nb = _Beam(beam.ids + [tid], beam.logprob + lp_, beam.data + vocab.pieces[tid])
                if len(nb.data) >= len(heal):
                    after = nb.data[len(heal) :].decode("utf-8", errors="ignore")
                    cand, done, ext = _classify(after, lead, type_depth)
                    if done:
                        if cand is not None:
                            add(cand, nb.logprob)
                        continue
                    nb.extra["cls"] = (cand, done, ext)
                candidates.append(nb)
        candidates.sort(key=lambda b: -b.logprob)
        live = candidates[:beam_width]
        if len(finished) >= k:
            kth = sorted(finished.values(), reverse=True)[k - 1]
            live = [b for b in live if b.logprob > kth]
        if not live or _interrupted(cancel, deadline) is not None:
            break
        if len(state.ids) + sum(len(b.ids) for b in live) > runner.model.max_context:
            break
        rows = runner.branches(state, [b.ids for b in live])
        dists = [mix(rows[i], state.ids + b.ids) for i, b in enumerate(live)]
    for beam in live:  # out of depth or time: count what the open paths spell so far
        cand, _, ext = beam.extra.get("cls", (None, False, None))
        if cand is not None and ext != "\x00" and cand not in finished:
            add(cand, beam.logprob)
    ranked = sorted(finished.items(), key=lambda kv: -kv[1])
    return [(c, lp) for c, lp in ranked[:k] if lp > -math.inf]
