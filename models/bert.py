"""`bert` family: a BERT encoder trained as a masked language model (transformers' ``BertForMaskedLM``).

The study Kaffee grew from compared BERT with the causal families; this family lets the
same corpus, tokenizer and training loop produce one. It is an evaluation system
(``evaluation/bert_system.py`` fills mask slots at the cursor while seeing the text after
it), not a server default.

BERT rather than RoBERTa: ``RobertaForMaskedLM`` derives position ids from the input ids
and gives every token equal to ``pad_token_id`` the padding position, which would break
with the mask token below; ``BertForMaskedLM``'s positions are simply 0..T-1. What RoBERTa
changed besides is the training recipe, and this family follows its dynamic masking anyway:
the masks are drawn anew for every batch.

The mask token: Kaffee's tokenizer has no ``[MASK]``. ``<|pad|>`` never occurs in a training
stream (documents are concatenated with EOS, never padded), so its embedding row is free
and this family uses it as the mask (``mask_id``). The tokenizer stays byte-identical to the
other families' (same vocabulary, same data cache, a fair comparison), and the bundled
model's tokenizer is untouched.

The objective (Devlin et al. 2019, "BERT", §3.1): 15 % of the positions are chosen; of those,
80 % become the mask, 10 % a random token, 10 % stay as they are; the loss is the
cross-entropy at the chosen positions only (``mlm_loss``). The training loop calls it
through ``training/trainer.py: objective``.

As a :class:`LanguageModel` (so the engine and ``bits`` work), the next-token distribution
after a context is read at one mask appended to it: the model then sees no right side.
"""

from __future__ import annotations

import functools
import typing
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from kaffee.errors import KaffeeError
from kaffee.models.lm import DecodeState, NeuralLM

if typing.TYPE_CHECKING:  # imported where used: the modelling code is slow to import
    from kaffee.data.tokenizer import KaffeeTokenizer
    from transformers import BertConfig, BertForMaskedLM

MASK_SHARE = 0.8  # chosen positions replaced by the mask (Devlin et al. 2019)
RANDOM_SHARE = 0.1  # chosen positions replaced by a random token; the remaining 10 % stay
IGNORE = -100  # label of the positions the loss skips (cross_entropy's ignore_index)


@dataclass
class BERTConfig:
    vocab_size: int = 16384  # tokenizer vocabulary (must match tokenizer.json)
    n_layer: int = 4  # transformer encoder blocks
    n_head: int = 4  # attention heads (head dim = n_embd / n_head)
    n_embd: int = 256  # hidden width
    intermediate_size: int = 1024  # feed-forward (GELU) width
    block_size: int = 512  # longest input in tokens (absolute position embeddings: none longer is possible)
    dropout: float = 0.0  # hidden and attention dropout while training (BERT used 0.1; 0 like the gpt family)
    mask_rate: float = 0.15  # share of positions the objective predicts (Devlin et al. 2019)
    layer_norm_eps: float = 1e-12  # LayerNorm epsilon (BertConfig's default)

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if not 0.0 < self.mask_rate < 1.0:
            raise ValueError(f"mask_rate must lie in (0, 1), not {self.mask_rate}")
        if self.block_size < 2:
            raise ValueError(f"block_size must be at least 2, not {self.block_size}")

    @property
    def tie_embeddings(self) -> bool:
        """The MLM decoder always shares the input embedding (BERT's layout): stored once."""
        return True


PRESETS: dict[str, dict] = {
    "nano": dict(n_layer=2, n_head=4, n_embd=64, intermediate_size=256, block_size=256),  # tests, CPU minutes
    "small": dict(n_layer=4, n_head=4, n_embd=256, intermediate_size=1024, block_size=512),
    "base": dict(n_layer=6, n_head=8, n_embd=512, intermediate_size=2048, block_size=512),
}


def hf_config(cfg: BERTConfig) -> BertConfig:
    from transformers import BertConfig

    return BertConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.n_embd,
        num_hidden_layers=cfg.n_layer,
        num_attention_heads=cfg.n_head,
        intermediate_size=cfg.intermediate_size,
        max_position_embeddings=cfg.block_size,
        type_vocab_size=1,  # no sentence pairs
        hidden_dropout_prob=cfg.dropout,
        attention_probs_dropout_prob=cfg.dropout,
        layer_norm_eps=cfg.layer_norm_eps,
        pad_token_id=None,  # the pad row is the mask: it must be trained, not held at zero
        tie_word_embeddings=True,
    )


def build_module(cfg: BERTConfig) -> BertForMaskedLM:
    return _masked_lm_class()(hf_config(cfg))


@functools.cache
def _masked_lm_class() -> type:
    """``BertForMaskedLM`` whose forward can run the prediction head at chosen positions only.

    The head (a vocabulary-wide projection) dominates a small model's cost, and the objective
    needs it at 15 % of the positions, the evaluation at the masks: ``select`` (B, T) bool
    gives logits (N, V) for its N true positions. Same weights and names as the parent.
    """
    from transformers import BertForMaskedLM
    from transformers.modeling_outputs import MaskedLMOutput

    class SelectiveBertForMaskedLM(BertForMaskedLM):
        def forward(self, input_ids, attention_mask=None, select=None, **kwargs):
            hidden = self.bert(input_ids, attention_mask=attention_mask, return_dict=True, **kwargs)[
                0
            ]  # (B, T, C)
            if select is not None:
                hidden = hidden[select]  # (N, C)
            return MaskedLMOutput(logits=self.cls(hidden))  # (B, T, V) or (N, V)

    return SelectiveBertForMaskedLM


def mask_id(tokenizer: KaffeeTokenizer) -> int:
    """The id this family uses as its mask token: ``<|pad|>`` (see the module docstring)."""
    return tokenizer.pad_id


def mask_tokens(
    ids: torch.Tensor, mask: int, vocab_size: int, rate: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's corruption of a batch ``ids`` (B, T): (inputs, labels), labels IGNORE where not chosen.

    Drawn from a generator seeded with ``seed``, so a batch is corrupted the same way on
    every run (resume continues exactly; validation passes see the same masks).
    """
    g = torch.Generator().manual_seed(seed)
    shape = ids.shape
    chosen = torch.rand(shape, generator=g) < rate  # (B, T)
    if not chosen.any():  # a tiny batch may draw none; the loss needs one
        chosen.view(-1)[0] = True
    action = torch.rand(shape, generator=g)
    random_ids = torch.randint(0, vocab_size, shape, generator=g)
    chosen, action, random_ids = (t.to(ids.device) for t in (chosen, action, random_ids))
    inputs = ids.clone()
    inputs[chosen & (action < MASK_SHARE)] = mask
    swap = chosen & (action >= MASK_SHARE) & (action < MASK_SHARE + RANDOM_SHARE)
    inputs[swap] = random_ids[swap]
    labels = ids.masked_fill(~chosen, IGNORE)
    return inputs, labels


def mlm_loss(
    module: torch.nn.Module, ids: torch.Tensor, mask: int, vocab_size: int, rate: float, seed: int
) -> torch.Tensor:
    """Mean cross-entropy (nats) at the chosen positions of ``ids`` (B, T), corrupted by ``mask_tokens``."""
    inputs, labels = mask_tokens(ids, mask, vocab_size, rate, seed)
    chosen = labels != IGNORE
    logits = module(
        input_ids=inputs, select=chosen
    ).logits  # (N, V): the head runs at the chosen positions only
    return F.cross_entropy(logits.float(), labels[chosen])


class BERTModel(NeuralLM):
    family = "bert"

    def __init__(self, cfg: BERTConfig, module: BertForMaskedLM):
        super().__init__(cfg, module, cfg.block_size)

    @property
    def mask_id(self) -> int:
        if self.tokenizer is None:
            raise KaffeeError("a bert model needs its tokenizer (load it with checkpoint.load_model)")
        return mask_id(self.tokenizer)

    @torch.inference_mode()
    def masked_logprobs(self, rows: list[list[int]]) -> list[torch.Tensor]:
        """For each row of ids holding mask ids: log-probs (n_masks, V) at its masks, left to right.

        Rows of different lengths run as one batch, right-padded and masked out of attention
        (positions stay 0..T-1 per row). A row may not exceed ``max_context``.
        """
        width = max(len(r) for r in rows)
        if width > self.max_context:
            raise ValueError(f"input of {width} tokens exceeds the window {self.max_context}")
        ids = torch.zeros((len(rows), width), dtype=torch.long)
        attn = torch.zeros_like(ids)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            attn[i, : len(r)] = 1
        select = (ids == self.mask_id) & (attn == 1)
        dev = self.device
        logits = self.module(input_ids=ids.to(dev), attention_mask=attn.to(dev), select=select.to(dev)).logits
        lp = torch.log_softmax(logits.float(), dim=-1).cpu()  # (N, V), row-major over (row, position)
        return list(torch.split(lp, select.sum(1).tolist()))

    def _left_rows(self, contexts: list[list[int]]) -> list[list[int]]:
        keep = self.max_context - 1
        return [list(c[-keep:]) + [self.mask_id] if c else [self.mask_id] for c in contexts]

    def next_logprobs(self, contexts: list[list[int]]) -> torch.Tensor:
        return torch.stack([lp[-1] for lp in self.masked_logprobs(self._left_rows(contexts))])  # (B, V)

    def _all_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Next-token log-probs (T, V) after each prefix of ``x`` (1, T): one mask after each, in chunks."""
        ids = x[0].tolist()
        rows = self._left_rows([ids[: t + 1] for t in range(len(ids))])
        out = []
        for start in range(0, len(rows), 32):
            out += [lp[-1] for lp in self.masked_logprobs(rows[start : start + 32])]
        return torch.stack(out)

    def advance(self, state: DecodeState, ids: list[int]) -> torch.Tensor:
        # no cache: an encoder sees the whole input at once, so every step recomputes
        self._check_advance(state, ids)
        state.ids.extend(ids)
        state.last_logprobs = self.next_logprobs([state.ids])[0]
        return state.last_logprobs

    def crop(self, state: DecodeState, n: int) -> None:
        del state.ids[n:]
        state.last_logprobs = None
