"""``bert:DIR``: a masked language model answering by filling mask slots at the cursor.

Unlike the causal families it sees the text after the cursor in the same pass:

- the token task puts 1..``slots`` masks between the text before and after the cursor,
  keeps the ``beam`` best fills of each slot count (a beam over the slots' distributions,
  read from one pass per count), and ranks the first whole Java token of each fill by the
  log-probability of the pieces that spell it; a token found with several counts keeps
  its best score;
- the line task fills left to right: ``ahead`` masks after the text filled so far, the
  most likely piece at the leftmost mask is kept, and again, until a piece holds a line
  break (or ends the file, or ``max_pieces`` are filled).

It answers through the model directly, not through the completion engine (which reads a
bert model left to right only: ``model:DIR``), so no project context or cache is used.
Bits per character come from the left context alone (``models/bert.py``), as the engine's.
Options: ``bert:DIR,slots=4,beam=8,ahead=4,max_pieces=32,right=64,label=NAME``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from kaffee.errors import KaffeeError
from kaffee.evaluation.cost import model_size
from kaffee.evaluation.system_base import Context, System, SystemSpec
from kaffee.server.java_tokens import first_token
from kaffee.server.options import coerce

NEG_INF = float("-inf")


@dataclass
class FillOptions:
    slots: int = 4  # token task: most mask slots tried at the cursor (1..slots)
    beam: int = 8  # token task: fills kept per slot count
    ahead: int = 4  # line task: masks after the text filled so far
    max_pieces: int = 32  # line task: most sub-word pieces filled for one line
    right: int = 64  # tokens of the text after the cursor the model sees (0: none)

    def __post_init__(self) -> None:
        for name in ("slots", "beam", "ahead", "max_pieces"):
            if getattr(self, name) < 1:
                raise KaffeeError(f"bert option {name} must be at least 1, not {getattr(self, name)}")
        if self.right < 0:
            raise KaffeeError(f"bert option right must be 0 or more, not {self.right}")


def parse_fill_options(options: dict[str, str], where: str) -> FillOptions:
    """FillOptions from a spec's ``key=value`` options; unknown keys and bad values are KaffeeErrors."""
    defaults = FillOptions()
    known = [f.name for f in dataclasses.fields(FillOptions)]
    values = {}
    for key, value in options.items():
        name = key.strip().replace("-", "_")
        if name not in known:
            raise KaffeeError(
                f"{where}: unknown option {key!r}; a bert system takes {', '.join(known)}, label"
            )
        values[name] = coerce(value, getattr(defaults, name), f"{where}: {key}")
    return FillOptions(**values)


def heal(prefix: str) -> tuple[str, str]:
    """(context, lead): a space or tab that ends ``prefix`` moves into the fill.

    The tokenizer attaches one space to the word after it (`` foo``) and keeps the rest of
    a run of spaces apart, so the fill starts where training text would: ``x = `` is read
    as ``x =`` and the fill spells `` 5``.
    """
    if prefix and prefix[-1] in " \t":
        return prefix[:-1], prefix[-1]
    return prefix, ""


class BertSystem(System):
    """A ``bert`` model directory filling masks at the cursor (evaluation only, not a server default)."""

    capabilities = frozenset({"next_tokens", "complete", "bits"})

    def __init__(self, spec: SystemSpec, device: str = "cpu", model=None):
        """``model``: an already loaded bert model (tests); else the spec's directory is loaded."""
        from kaffee.evaluation.systems import _dir_fingerprint
        from kaffee.models.checkpoint import load_model, read_meta

        self.spec = spec
        self.label = spec.label or spec.text
        self.path = Path(spec.target)
        self.options = parse_fill_options(spec.options, f"system spec {spec.text!r}")
        if model is None:
            family = read_meta(self.path)["family"]  # KaffeeError when missing / not a model dir
            if family != "bert":
                raise KaffeeError(
                    f"system spec {spec.text!r} says bert but {self.path} holds a {family} model "
                    f"(use {family}:{spec.target})"
                )
            model = load_model(self.path, device=device)
        self.model = model
        self.tok = self.model.tokenizer
        self.mask = self.model.mask_id
        self.pieces = self.tok.id_to_bytes
        self.special = torch.zeros(self.tok.vocab_size, dtype=torch.bool)
        self.special[list(self.tok.special_ids)] = True
        self._fingerprint = f"{spec.text}@{_dir_fingerprint(self.path)}"

    def fingerprint(self) -> str:
        return self._fingerprint

    def cost(self) -> dict[str, Any]:
        return model_size(self.path)

    # -- the input around the masks ------------------------------------------------------------
    def _sides(self, ctx: Context) -> tuple[list[int], str, list[int]]:
        """(ids before the cursor, the healed lead, ids after the cursor within the right budget)."""
        before, lead = heal(ctx.prefix)
        right_budget = min(self.options.right, self.model.max_context // 2)
        right = self.tok.encode(ctx.suffix)[:right_budget] if ctx.suffix and right_budget else []
        return self.tok.encode(before), lead, right

    def _row(self, left: list[int], middle: list[int], right: list[int]) -> list[int]:
        """``left + middle + right`` cropped on the left to the model's window."""
        room = self.model.max_context - len(middle) - len(right)
        if room < 1:
            raise KaffeeError(
                f"{len(middle)} filled pieces leave no room in a {self.model.max_context}-token window"
            )
        return left[-room:] + middle + right

    def _text(self, ids: list[int]) -> str:
        return b"".join(self.pieces[i] for i in ids).decode("utf-8", errors="ignore")

    # -- token task -----------------------------------------------------------------------------
    def next_tokens(self, ctx: Context, k: int = 10) -> list[str]:
        left, lead, right = self._sides(ctx)
        counts = range(1, self.options.slots + 1)
        rows = [self._row(left, [self.mask] * n, right) for n in counts]
        best: dict[str, float] = {}
        for slot_lps in self.model.masked_logprobs(rows):  # (n, V) for each slot count n
            for path, lps in self._beam(slot_lps):
                found = self._first_token(path, lps, lead)
                if found is not None and found[1] > best.get(found[0], NEG_INF):
                    best[found[0]] = found[1]
        return [t for t, _ in sorted(best.items(), key=lambda kv: -kv[1])[:k]]

    def _beam(self, slot_lps: torch.Tensor) -> list[tuple[list[int], list[float]]]:
        """The ``beam`` best fills of the slots (their pieces and per-piece log-probs)."""
        width = self.options.beam
        live: list[tuple[list[int], list[float], float]] = [([], [], 0.0)]
        for lp in slot_lps:
            lp = lp.masked_fill(self.special, NEG_INF)
            top = torch.topk(lp, width)
            grown = [
                (ids + [i], lps + [v], total + v)
                for ids, lps, total in live
                for v, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)
            ]
            live = sorted(grown, key=lambda b: -b[2])[:width]
        return [(ids, lps) for ids, lps, _ in live]

    def _first_token(self, ids: list[int], lps: list[float], lead: str) -> tuple[str, float] | None:
        """The first whole Java token a fill spells and the log-prob of the pieces up to its end.

        A token is whole once text follows it in the fill, or at the fill's end (the text
        after the cursor follows the masks). Comments are never suggested.
        """
        for j in range(1, len(ids) + 1):
            tok, has_more = first_token(lead + self._text(ids[:j]))
            if tok is not None and (has_more or j == len(ids)):
                return None if tok.kind == "comment" else (tok.text, sum(lps[:j]))
        return None

    # -- line task ------------------------------------------------------------------------------
    def complete(self, ctx: Context) -> str:
        left, lead, right = self._sides(ctx)
        fill: list[int] = []
        masks = [self.mask] * self.options.ahead
        text = ""
        for _ in range(self.options.max_pieces):
            raw = self.model.masked_logprobs([self._row(left, fill + masks, right)])[0][0]  # leftmost mask
            lp = raw.masked_fill(self.special, NEG_INF)
            lp[self.tok.eos_id] = raw[self.tok.eos_id]  # the file may end here
            piece = int(torch.argmax(lp))
            if piece == self.tok.eos_id:
                break
            fill.append(piece)
            text = self._text(fill)
            if "\n" in text:
                text = text.split("\n", 1)[0]
                break
        return text[len(lead) :] if lead and text.startswith(lead) else text.lstrip(" \t")

    def bits(self, text: str) -> tuple[float, int]:
        from kaffee.evaluation.systems import model_bits

        return model_bits(self.model, text), len(text)
