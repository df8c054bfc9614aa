"""A lean incremental decoder for the `gpt` family, used by the completion engine.

Same weights and the same maths as ``transformers``' LlamaForCausalLM (RMSNorm, RoPE,
SwiGLU, tied head), written for batch-1 CPU decoding: fused QKV and gate/up matrices,
a preallocated KV cache per state (crop = move a length, no tensor concatenation),
and two extras the engine needs — the logits at every position of a block (to verify
a speculative draft in one forward) and the next-token distributions of several
branches sharing one prefix (tree attention, for the beam over sub-word pieces).
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, MutableMapping
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from kaffee.errors import KaffeeError
from kaffee.models import checkpoint
from kaffee.models.gpt import GPTConfig, GPTModel
from kaffee.models.lm import DecodeState, LanguageModel

log = logging.getLogger(__name__)

QUANTIZE_MODES = ("none", "bf16", "int8")


def _cpu_has_vnni() -> bool:
    """Whether the CPU has VNNI int8 dot products (Linux: /proc/cpuinfo flags)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return "avx512_vnni" in line or "avx_vnni" in line
    except OSError:
        pass
    return False


# Activations are quantized per tensor to 8 bits where VNNI multiplies u8 x s8 exactly; without
# it fbgemm's int16 accumulation can saturate, so 7 bits (reduce_range) as torch does by default.
# Measured on examples/ (tests/test_default_model.py): top-1 agreement with fp32 92.7 % at 7 bits,
# 95.9 % at 8 bits.
REDUCE_RANGE = not _cpu_has_vnni()


def make_linear(weight: torch.Tensor, mode: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """``x @ weight.T`` as a callable, with the weight stored as ``mode`` says.

    none: float32. bf16: bfloat16 weights and activations (half the memory traffic).
    int8: per-channel int8 weights with dynamically quantized activations (fbgemm);
    a 30M model then fits in a CPU's L3 cache, which makes a decode step several
    times faster. Falls back to float32 where the quantized kernels are missing.
    """
    weight = weight.detach().float().contiguous()
    if mode == "int8":
        try:
            scales = (weight.abs().amax(dim=1) / 127.0).clamp(min=1e-8).double()
            zeros = torch.zeros(weight.shape[0], dtype=torch.long)
            # torch.ao.quantization's eager ops are deprecated in favour of torchao (its int8
            # dynamic-activation / int8-weight config); they still ship in torch 2.x, and the
            # ImportError-free fallback below keeps serving if a release drops them.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "quantized tensor creation ... deprecated"
                qweight = torch.quantize_per_channel(weight, scales, zeros, 0, torch.qint8)
            packed = torch.ops.quantized.linear_prepack(qweight, None)

            def int8_linear(x: torch.Tensor) -> torch.Tensor:
                return torch.ops.quantized.linear_dynamic(x, packed, REDUCE_RANGE)

            int8_linear(torch.zeros(1, weight.shape[1]))
            return int8_linear
        except (RuntimeError, AttributeError, NotImplementedError) as exc:
            log.warning("int8 kernels are unavailable (%s); decoding in float32", exc)
            mode = "none"
    if mode == "bf16":
        wb = weight.to(torch.bfloat16)
        return lambda x: F.linear(x.to(torch.bfloat16), wb).float()
    return lambda x: F.linear(x, weight)


@dataclass
class KVCache:
    """Preallocated keys and values of every layer; only the first ``length`` slots are live."""

    k: torch.Tensor  # (L, H, T_max, D)
    v: torch.Tensor  # (L, H, T_max, D)
    length: int = 0


class FastGPT(LanguageModel):
    """A :class:`LanguageModel` over a gpt model directory's weights, tuned for CPU decoding.

    Built straight from the safetensors tensors (``transformers`` is never imported, which
    saves ~130 MB of RSS and the fp32 copy of the weights in int8 mode).
    """

    family = "gpt"

    def __init__(
        self,
        cfg: GPTConfig,
        tensors: MutableMapping[str, torch.Tensor] | checkpoint.LazyTensors,  # consumed (popped)
        quantize: str = "none",
        device: str | torch.device = "cpu",
    ):
        if quantize not in QUANTIZE_MODES:
            raise ValueError(f"quantize must be one of {QUANTIZE_MODES}, not {quantize!r}")
        self.cfg = cfg
        self.quantize = quantize
        self.vocab_size = cfg.vocab_size
        self.max_context = cfg.block_size
        self.n_head = cfg.n_head
        self.head_dim = cfg.n_embd // cfg.n_head
        self.eps = float(cfg.rms_norm_eps)
        self.tokens_advanced = 0  # tokens run through the network so far (for tests and stats)
        dev = torch.device(device)
        self._device = dev

        def w(name: str) -> torch.Tensor:
            # popped: each stored tensor is freed once its packed form exists, which keeps the
            # load's peak RSS near the steady state instead of holding every weight twice
            return tensors.pop(name).detach().to(dev, torch.float32)

        with torch.no_grad():
            self.layers = []
            for i in range(cfg.n_layer):
                p = f"model.layers.{i}."
                qkv = torch.cat(
                    [
                        w(p + "self_attn.q_proj.weight"),
                        w(p + "self_attn.k_proj.weight"),
                        w(p + "self_attn.v_proj.weight"),
                    ]
                )
                gate_up = torch.cat([w(p + "mlp.gate_proj.weight"), w(p + "mlp.up_proj.weight")])
                self.layers.append(
                    (
                        w(p + "input_layernorm.weight"),
                        make_linear(qkv, quantize),  # (3C, C)
                        make_linear(w(p + "self_attn.o_proj.weight"), quantize),  # (C, C)
                        w(p + "post_attention_layernorm.weight"),
                        make_linear(gate_up, quantize),  # (2I, C)
                        make_linear(w(p + "mlp.down_proj.weight"), quantize),  # (C, I)
                    )
                )
                del qkv, gate_up
            self.norm = w("model.norm.weight")
            embed = w("model.embed_tokens.weight")  # (V, C)
            head = w("lm_head.weight") if "lm_head.weight" in tensors else embed
            self.head = make_linear(head, quantize)  # (V, C)
            self._embed_q: torch.Tensor | None = None
            if quantize == "int8":  # embedding rows as int8 + a scale per row: 4x smaller
                scale = (embed.abs().amax(dim=1) / 127.0).clamp(min=1e-8)
                self._embed_q = torch.empty(embed.shape, dtype=torch.int8, device=dev)
                for i in range(0, embed.shape[0], 2048):  # in row chunks: no full-size fp32 temporaries
                    rows = embed[i : i + 2048] / scale[i : i + 2048, None]
                    self._embed_q[i : i + 2048] = rows.round_().clamp_(-127, 127).to(torch.int8)
                self._embed_scale = scale
                self.embed = None
            elif quantize == "bf16":
                self.embed = embed.to(torch.bfloat16)
            else:
                self.embed = embed
            del head, embed
            theta = float(getattr(cfg, "rope_theta", 10000.0))
            d = self.head_dim
            inv_freq = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.float32, device=dev) / d))
            freqs = torch.arange(self.max_context, dtype=torch.float32, device=dev)[:, None] * inv_freq[None]
            emb = torch.cat([freqs, freqs], dim=-1)  # (T_max, D)
            self.cos, self.sin = emb.cos(), emb.sin()
        self.scale = 1.0 / math.sqrt(self.head_dim)

    @classmethod
    def from_gpt(cls, gpt: GPTModel, quantize: str = "none") -> FastGPT:
        """The fast decoder over an already loaded :class:`GPTModel` (weights are copied)."""
        tensors = dict(gpt.module.state_dict())
        model = cls(gpt.cfg, tensors, quantize=quantize, device=gpt.device)
        model.tokenizer, model.meta = gpt.tokenizer, gpt.meta
        return model

    @classmethod
    def load(cls, model_dir: str | Path, quantize: str = "none", device: str = "cpu") -> FastGPT:
        """Load a gpt model directory (same checks as ``checkpoint.load_model``)."""
        model_dir = Path(model_dir)
        meta, cfg, tokenizer = checkpoint.read_gpt_dir(model_dir)
        tensors = checkpoint.load_tensors(model_dir, lazy=True)  # each read when converted
        expected = {"model.embed_tokens.weight", "model.norm.weight"} | {
            f"model.layers.{i}.{n}"
            for i in range(cfg.n_layer)
            for n in (
                "input_layernorm.weight",
                "post_attention_layernorm.weight",
                "self_attn.q_proj.weight",
                "self_attn.k_proj.weight",
                "self_attn.v_proj.weight",
                "self_attn.o_proj.weight",
                "mlp.gate_proj.weight",
                "mlp.up_proj.weight",
                "mlp.down_proj.weight",
            )
        }
        if not cfg.tie_embeddings:
            expected.add("lm_head.weight")
        missing = sorted(expected - set(tensors))
        if missing:
            raise KaffeeError(f"weights do not match the gpt config: missing {missing[:5]}")
        try:
            model = cls(cfg, tensors, quantize=quantize, device=device)
        except RuntimeError as exc:  # shapes that do not fit the config
            raise KaffeeError(f"weights do not match the gpt config: {exc}") from exc
        model.tokenizer, model.meta = tokenizer, meta
        return model

    @property
    def device(self) -> torch.device:
        return self._device

    def config_dict(self) -> dict:
        return asdict(self.cfg)

    def _embed(self, ids: list[int]) -> torch.Tensor:
        idx = torch.tensor(ids, device=self._device)
        if self._embed_q is not None:
            return self._embed_q[idx].float() * self._embed_scale[idx, None]
        return self.embed[idx].float()

    # -- the network ------------------------------------------------------------------------
    def _rms(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * w

    def _rope(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        rot = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * cos + rot * sin

    def _forward(
        self, cache: KVCache, ids: list[int], positions: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Run ``ids`` at ``positions``; their K/V go to slots ``cache.length ...``. Returns hidden (T, C).

        ``mask`` (T, length + T) says which slots each new token attends to; None means causal.
        ``cache.length`` is not moved: the caller commits the slots or leaves them as scratch.
        """
        n = len(ids)
        start = cache.length
        end = start + n
        x = self._embed(ids)  # (T, C)
        cos, sin = self.cos[positions], self.sin[positions]  # (T, D)
        h_, d_ = self.n_head, self.head_dim
        if mask is None and n > 1:
            mask = torch.ones(n, end, dtype=torch.bool, device=self.device).tril(diagonal=start)
        for li, (w_in, w_qkv, w_o, w_post, w_gu, w_down) in enumerate(self.layers):
            h = self._rms(x, w_in)
            qkv = w_qkv(h).view(n, 3, h_, d_).transpose(0, 2)  # (H, 3, T, D)
            q = self._rope(qkv[:, 0], cos, sin)  # (H, T, D)
            cache.k[li, :, start:end] = self._rope(qkv[:, 1], cos, sin)
            cache.v[li, :, start:end] = qkv[:, 2]
            att = F.scaled_dot_product_attention(
                q[None],
                cache.k[li, None, :, :end],
                cache.v[li, None, :, :end],
                attn_mask=mask,
                scale=self.scale,
            )  # (1, H, T, D)
            x = x + w_o(att[0].transpose(0, 1).reshape(n, h_ * d_))
            h = self._rms(x, w_post)
            gate, up = w_gu(h).chunk(2, dim=-1)
            x = x + w_down(F.silu(gate) * up)
        self.tokens_advanced += n
        return self._rms(x, self.norm)  # (T, C)

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.head(hidden)  # (T, V)

    # -- LanguageModel ------------------------------------------------------------------------
    def new_state(self) -> DecodeState:
        shape = (len(self.layers), self.n_head, self.max_context, self.head_dim)
        cache = KVCache(torch.zeros(shape, device=self.device), torch.zeros(shape, device=self.device))
        return DecodeState(ids=[], cache=cache)

    def _check_room(self, state: DecodeState, n: int) -> None:
        if not n:
            raise ValueError("advance needs at least one token")
        if len(state.ids) + n > self.max_context:
            raise ValueError(f"context of {len(state.ids) + n} tokens exceeds the window {self.max_context}")

    def _extend(self, state: DecodeState, ids: list[int]) -> torch.Tensor:
        """Run ``ids`` through the model on top of ``state``'s cache; hidden states (T, C)."""
        self._check_room(state, len(ids))
        cache: KVCache = state.cache
        pos = torch.arange(cache.length, cache.length + len(ids), device=self.device)
        hidden = self._forward(cache, ids, pos, None)
        cache.length += len(ids)
        state.ids.extend(ids)
        return hidden

    @torch.inference_mode()
    def advance(self, state: DecodeState, ids: list[int]) -> torch.Tensor:
        hidden = self._extend(state, ids)
        state.last_logprobs = torch.log_softmax(self._logits(hidden[-1:])[0], dim=-1).cpu()
        return state.last_logprobs

    @torch.inference_mode()
    def advance_all(self, state: DecodeState, ids: list[int]) -> torch.Tensor:
        """Like :meth:`advance`, but returns the log-probs after every new token: (T, V)."""
        hidden = self._extend(state, ids)
        out = torch.log_softmax(self._logits(hidden), dim=-1).cpu()
        state.last_logprobs = out[-1]
        return out

    @torch.inference_mode()
    def branch_logprobs(self, state: DecodeState, branches: list[list[int]]) -> torch.Tensor:
        """Next-token log-probs after ``state.ids + b`` for each branch b, in one forward: (B, V).

        The branches go into scratch cache slots; ``state`` is unchanged afterwards.
        """
        cache: KVCache = state.cache
        flat = [t for b in branches for t in b]
        base = cache.length
        if not flat:
            return state.last_logprobs[None].expand(len(branches), -1)
        if base + len(flat) > self.max_context:
            raise ValueError("branches do not fit in the context window")
        n = len(flat)
        mask = torch.zeros(n, base + n, dtype=torch.bool)
        mask[:, :base] = True
        positions, last = [], []
        i = 0
        for b in branches:
            for j in range(len(b)):
                mask[i + j, base + i : base + i + j + 1] = True
                positions.append(base + j)
            i += len(b)
            last.append(i - 1)
        hidden = self._forward(cache, flat, torch.tensor(positions, device=self.device), mask.to(self.device))
        return torch.log_softmax(self._logits(hidden[last]), dim=-1).cpu()  # (B, V)

    def crop(self, state: DecodeState, n: int) -> None:
        state.cache.length = min(state.cache.length, n)
        del state.ids[n:]
        state.last_logprobs = None

    @torch.inference_mode()
    def next_logprobs(self, contexts: list[list[int]]) -> torch.Tensor:
        return torch.stack([self.advance(self.new_state(), c) for c in contexts])  # (B, V)

    @torch.inference_mode()
    def sequence_logprobs(self, ids: list[int]) -> torch.Tensor:
        if len(ids) < 2:
            return torch.zeros(0)
        rows = self.advance_all(self.new_state(), ids[:-1])  # (T-1, V)
        return rows.gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
