"""The one interface every model family answers (gpt, lstm, ngram).

The completion engine and the evaluation harness only talk to this class, so a
family can be swapped without touching them. Token ids are plain ``list[int]``;
log-probabilities are float32 torch tensors over the whole vocabulary.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any

import torch


@dataclass
class DecodeState:
    """Incremental decoding state: the ids consumed so far plus a family-specific cache.

    gpt: a transformers KV cache; lstm: hidden states after each position; ngram: nothing
    beyond ``ids``. ``last_logprobs`` is the next-token distribution after ``ids``
    (None while ``ids`` is empty and nothing was computed yet).
    """

    ids: list[int] = field(default_factory=list)
    cache: Any = None
    last_logprobs: torch.Tensor | None = None  # (V,)


class LanguageModel(ABC):
    """A next-token model over BPE ids."""

    family: str = "?"
    vocab_size: int
    max_context: int  # longest context (in tokens) the model can attend to
    tokenizer = None  # KaffeeTokenizer; set by checkpoint.load_model
    meta: dict = {}  # config.json of the model directory; set by checkpoint.load_model

    @property
    def supports_fim(self) -> bool:
        """Trained with fill-in-the-middle samples, so a suffix can be given in the prompt."""
        return float(self.meta.get("fim_rate", 0.0) or 0.0) > 0.0

    def config_dict(self) -> dict:
        raise NotImplementedError

    @abstractmethod
    def next_logprobs(self, contexts: list[list[int]]) -> torch.Tensor:
        """Next-token log-probabilities after each context. Returns (B, V)."""

    @abstractmethod
    def sequence_logprobs(self, ids: list[int]) -> torch.Tensor:
        """log p(ids[i] | ids[:i]) for i >= 1, scoring a whole sequence. Returns (len(ids) - 1,)."""

    def new_state(self) -> DecodeState:
        return DecodeState()

    @abstractmethod
    def advance(self, state: DecodeState, ids: list[int]) -> torch.Tensor:
        """Append ``ids`` to ``state`` (in place) and return the next-token log-probs (V,)."""

    @abstractmethod
    def crop(self, state: DecodeState, n: int) -> None:
        """Keep only the first ``n`` consumed ids in ``state`` (in place)."""

    def sync(self, state: DecodeState, ids: list[int]) -> torch.Tensor:
        """Make ``state`` hold exactly ``ids``, re-encoding only what differs.

        Keeps the longest common prefix of ``state.ids`` and ``ids`` (KV-cache crop),
        then extends with the rest. Returns next-token log-probs (V,) after ``ids``.
        """
        common = resync_point(state, ids)
        if common is None:
            assert state.last_logprobs is not None
            return state.last_logprobs
        if common < len(state.ids):
            self.crop(state, common)
        return self.advance(state, ids[common:])


class NeuralLM(LanguageModel):
    """A :class:`LanguageModel` over a torch module and its config dataclass (gpt, lstm).

    Holds what the neural families share; a family supplies ``_all_logits`` (logits at
    every position of one sequence) and the incremental ``advance``/``crop``.
    """

    def __init__(self, cfg: Any, module: torch.nn.Module, max_context: int):
        self.cfg = cfg  # the family's config dataclass (config.json's "config")
        self.module = module.eval()
        self.vocab_size = cfg.vocab_size
        self.max_context = max_context

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    def config_dict(self) -> dict:
        return asdict(self.cfg)

    @abstractmethod
    def _all_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (T, V) at every position of the one sequence in ``x`` (1, T)."""

    @torch.inference_mode()
    def sequence_logprobs(self, ids: list[int]) -> torch.Tensor:
        x = torch.tensor([ids], device=self.device)
        lp = torch.log_softmax(self._all_logits(x)[:-1].float(), dim=-1)  # (T-1, V)
        return lp.gather(1, x[0, 1:, None])[:, 0].cpu()

    def _check_advance(self, state: DecodeState, ids: list[int]) -> None:
        if not ids:
            raise ValueError("advance needs at least one token")
        if len(state.ids) + len(ids) > self.max_context:
            raise ValueError(
                f"context of {len(state.ids) + len(ids)} tokens exceeds the window {self.max_context}"
            )


def resync_point(state: DecodeState, ids: list[int]) -> int | None:
    """Where ``state`` must be cropped to and re-encoded from to hold ``ids`` (None: it already does).

    The longest common prefix of ``state.ids`` and ``ids``, less one when that is all of
    ``ids`` (the logits at the last position are needed). The one rule for both
    ``LanguageModel.sync`` and the engine's counting ``Runner.sync``.
    """
    if not ids:
        raise ValueError("sync needs at least one token of context")
    common, limit = 0, min(len(state.ids), len(ids))
    while common < limit and state.ids[common] == ids[common]:
        common += 1
    if common == len(ids) == len(state.ids) and state.last_logprobs is not None:
        return None
    return common - 1 if common == len(ids) else common
