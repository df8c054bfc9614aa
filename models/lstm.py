"""`lstm` family: a multi-layer recurrent language model in plain torch (the neural baseline).

The cell is an LSTM or, with ``cell="gru"``, a GRU (the study Kaffee grew from compared
both): same decode state (hidden-state snapshots), so the engine and harness treat them
alike. ``kaffee train --family lstm --set cell=gru`` trains a GRU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from kaffee.models.lm import DecodeState, NeuralLM
from torch import nn


@dataclass
class LSTMConfig:
    vocab_size: int = 16384  # tokenizer vocabulary (must match tokenizer.json)
    n_embd: int = 256  # token embedding width
    n_hidden: int = 512  # LSTM hidden width
    n_layer: int = 2  # stacked LSTM layers
    dropout: float = 0.1  # dropout between layers while training
    tie_embeddings: bool = True  # share embedding and output head (through a hidden->embd projection)
    block_size: int = 256  # training sequence length (truncated BPTT); inference context is unbounded
    max_context: int = 4096  # longest context the engine feeds it
    cell: str = "lstm"  # recurrent cell: "lstm" or "gru" (config.json without it: lstm)

    def __post_init__(self) -> None:
        if self.cell not in CELLS:
            raise ValueError(f"cell must be one of {sorted(CELLS)}, not {self.cell!r}")


CELLS = {"lstm": nn.LSTM, "gru": nn.GRU}

PRESETS: dict[str, dict] = {
    "nano": dict(n_embd=64, n_hidden=128, n_layer=1, block_size=128),
    "small": dict(n_embd=256, n_hidden=512, n_layer=2, block_size=256),
    "base": dict(n_embd=512, n_hidden=1024, n_layer=2, block_size=512),
}

SNAPSHOT_EVERY = 64  # keep the hidden state every this many tokens so crop() re-runs little


class LSTMModule(nn.Module):
    def __init__(self, cfg: LSTMConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.rnn = CELLS[cfg.cell](
            cfg.n_embd,
            cfg.n_hidden,
            cfg.n_layer,
            batch_first=True,
            dropout=cfg.dropout if cfg.n_layer > 1 else 0.0,
        )
        self.proj = nn.Linear(cfg.n_hidden, cfg.n_embd, bias=False)
        self.head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.head.weight = self.embed.weight
        nn.init.normal_(self.embed.weight, std=0.02)

    def forward(self, idx: torch.Tensor, hidden=None):
        x = self.drop(self.embed(idx))  # (B, T, E)
        h, hidden = self.rnn(x, hidden)  # (B, T, H)
        logits = self.head(self.proj(self.drop(h)))  # (B, T, V)
        return logits, hidden


class LSTMModel(NeuralLM):
    family = "lstm"

    def __init__(self, cfg: LSTMConfig, module: LSTMModule):
        super().__init__(cfg, module, cfg.max_context)

    @torch.inference_mode()
    def next_logprobs(self, contexts: list[list[int]]) -> torch.Tensor:
        return torch.stack([self.advance(self.new_state(), c) for c in contexts])  # (B, V)

    def _all_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)[0][0]

    def new_state(self) -> DecodeState:
        # cache: list of (position, hidden) snapshots, always starting with (0, None)
        return DecodeState(ids=[], cache=[(0, None)])

    @torch.inference_mode()
    def advance(self, state: DecodeState, ids: list[int]) -> torch.Tensor:
        if not ids:
            raise ValueError("advance needs at least one token")
        hidden = state.cache[-1][1]
        pos = len(state.ids)
        logits = None
        for start in range(0, len(ids), SNAPSHOT_EVERY):
            chunk = ids[start : start + SNAPSHOT_EVERY]
            logits, hidden = self.module(torch.tensor([chunk], device=self.device), hidden)
            pos += len(chunk)
            state.cache.append((pos, hidden))
        state.ids.extend(ids)
        state.last_logprobs = torch.log_softmax(logits[0, -1].float(), dim=-1).cpu()
        return state.last_logprobs

    def crop(self, state: DecodeState, n: int) -> None:
        while state.cache[-1][0] > n:
            state.cache.pop()
        kept_pos = state.cache[-1][0]
        replay = state.ids[kept_pos:n]
        del state.ids[kept_pos:]
        state.last_logprobs = None
        if replay:
            self.advance(state, replay)
