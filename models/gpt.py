"""`gpt` family: a Llama-style decoder-only transformer (RoPE, SwiGLU, RMSNorm) from `transformers`."""

from __future__ import annotations

import inspect
import typing
from dataclasses import dataclass

import torch
from kaffee.models.lm import DecodeState, NeuralLM

if typing.TYPE_CHECKING:  # imported where used: the modelling code costs ~130 MB of RSS
    from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM


@dataclass
class GPTConfig:
    vocab_size: int = 16384  # tokenizer vocabulary (must match tokenizer.json)
    n_layer: int = 6  # transformer blocks
    n_head: int = 8  # attention heads (head dim = n_embd / n_head)
    n_embd: int = 512  # residual stream width
    intermediate_size: int = 1536  # SwiGLU hidden width
    block_size: int = 1024  # context length in tokens (RoPE, so longer contexts degrade gracefully)
    rope_theta: float = 10000.0  # RoPE base frequency
    dropout: float = 0.0  # attention dropout while training
    tie_embeddings: bool = True  # share input embedding and output head (saves vocab * n_embd params)
    rms_norm_eps: float = 1e-6  # RMSNorm epsilon; LlamaConfig's default, which configs without the field used

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if not self.rms_norm_eps > 0:
            raise ValueError(f"rms_norm_eps must be > 0, not {self.rms_norm_eps}")


PRESETS: dict[str, dict] = {
    "nano": dict(
        n_layer=2, n_head=4, n_embd=64, intermediate_size=192, block_size=256
    ),  # ~1M with 4k vocab; tests
    "small": dict(
        n_layer=4, n_head=4, n_embd=256, intermediate_size=768, block_size=512
    ),  # ~6.5M; CPU in an hour
    "base": dict(
        n_layer=6, n_head=8, n_embd=512, intermediate_size=1536, block_size=1024
    ),  # ~29M; GPU default
}


def hf_config(cfg: GPTConfig) -> LlamaConfig:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.n_embd,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.n_layer,
        num_attention_heads=cfg.n_head,
        num_key_value_heads=cfg.n_head,
        max_position_embeddings=cfg.block_size,
        rope_theta=cfg.rope_theta,
        rms_norm_eps=cfg.rms_norm_eps,
        attention_dropout=cfg.dropout,
        tie_word_embeddings=cfg.tie_embeddings,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )


def build_module(cfg: GPTConfig) -> LlamaForCausalLM:
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM(hf_config(cfg))


def _crop_cache(cache: DynamicCache, n: int) -> None:
    # A negative argument means "remove this many" on old and new transformers alike.
    remove = cache.get_seq_length() - n
    if remove > 0:
        cache.crop(-remove)


def _cache_kwarg(module: LlamaForCausalLM) -> str:
    """The name ``forward`` takes the KV cache under: ``cache`` since transformers 5.24.

    5.24 renamed ``past_key_values`` (the old name warns and goes in 5.40); earlier versions
    we support (>= 4.45) know only the old name and would silently ignore ``cache``.
    """
    params = inspect.signature(type(module).forward).parameters  # follows the decorators' __wrapped__
    return "cache" if "cache" in params else "past_key_values"


class GPTModel(NeuralLM):
    family = "gpt"

    def __init__(self, cfg: GPTConfig, module: LlamaForCausalLM):
        super().__init__(cfg, module, cfg.block_size)
        self._cache_kwarg = _cache_kwarg(module)

    @torch.inference_mode()
    def next_logprobs(self, contexts: list[list[int]]) -> torch.Tensor:
        width = max(len(c) for c in contexts)
        ids = torch.zeros((len(contexts), width), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, c in enumerate(contexts):  # left-pad so the last position is the one we want
            ids[i, width - len(c) :] = torch.tensor(c)
            mask[i, width - len(c) :] = 1
        pos = (mask.cumsum(1) - 1).clamp(min=0)  # RoPE positions as if unpadded
        dev = self.device
        logits = self.module(
            input_ids=ids.to(dev), attention_mask=mask.to(dev), position_ids=pos.to(dev)
        ).logits[:, -1]
        return torch.log_softmax(logits.float(), dim=-1).cpu()  # (B, V)

    def _all_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(input_ids=x).logits[0]

    def new_state(self) -> DecodeState:
        from transformers import DynamicCache

        return DecodeState(ids=[], cache=DynamicCache())

    @torch.inference_mode()
    def advance(self, state: DecodeState, ids: list[int]) -> torch.Tensor:
        self._check_advance(state, ids)
        if state.cache is None:
            state.cache = self.new_state().cache
        x = torch.tensor([ids], device=self.device)
        # the DynamicCache is updated in place (reading it back from the output would need the
        # output's field name, which 5.24 renamed as well)
        out = self.module(input_ids=x, use_cache=True, **{self._cache_kwarg: state.cache})
        state.ids.extend(ids)
        state.last_logprobs = torch.log_softmax(out.logits[0, -1].float(), dim=-1).cpu()
        return state.last_logprobs

    def crop(self, state: DecodeState, n: int) -> None:
        if state.cache is not None:
            _crop_cache(state.cache, n)
        del state.ids[n:]
        state.last_logprobs = None
