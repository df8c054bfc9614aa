"""`hf` family: an ordinary Hugging Face causal-LM directory, served through ``transformers``.

Any architecture ``AutoModelForCausalLM`` loads (config.json with ``model_type`` or
``architectures``, safetensors weights), with the directory's own ``tokenizer.json`` when it is
a byte-level BPE (GPT-2 style, as most code models have). The engine sees the usual two pieces:

- ``HFTokenizer``: a :class:`KaffeeTokenizer` over that tokenizer.json. Its ``eos_id`` is the
  token a document starts with (the declared bos, else eos); its FIM ids come from the usual
  token names and are None (``has_fim`` False) when the vocabulary has none. A tokenizer that
  is not byte-level (SentencePiece, WordPiece, byte fallback) is refused with a KaffeeError.
- ``HFCausalLM``: a :class:`LanguageModel` whose decode state holds the model's own KV cache
  (``DynamicCache`` or whatever the architecture returns), cropped in place when it can be and
  re-encoded from the kept ids when it cannot.

Nothing here is the int8 fast decoder: correct, slower. Loading never unpickles and never runs
code from the directory (``use_safetensors``, no ``trust_remote_code``).
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from kaffee.data.tokenizer import KaffeeTokenizer, _bytes_to_unicode
from kaffee.errors import KaffeeError
from kaffee.models.lm import DecodeState, LanguageModel

# Usual names of the end-of-text token, tried when neither tokenizer_config.json nor config.json
# declares one.
EOS_NAMES = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>", "<|end|>")
# Fill-in-the-middle tokens (prefix, suffix, middle) as code models name them; the layout is PSM.
FIM_NAMES = (
    ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"),  # Kaffee, Qwen2.5-Coder, CodeGemma
    ("<fim_prefix>", "<fim_suffix>", "<fim_middle>"),  # StarCoder, SantaCoder
    ("<fim-prefix>", "<fim-suffix>", "<fim-middle>"),
    ("<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"),  # DeepSeek-Coder  # noqa: RUF001
)
# Where a split at a line start is checked against encoding the whole text (see splits_at_newline).
_NEWLINE_PROBES = ("a\n    b", "}\n\n\tx();", "x;\n  \n  y", "int a; \nb", "{\r\n    return")
_ROUND_TRIP = 'class A {\n\tint x = 1;  // é ü 名\r\n    String s = "a  b";\n}\n'


def is_hf_config(config: Any) -> bool:
    """A config.json that describes a transformers model (and not a Kaffee one)."""
    return (
        isinstance(config, dict)
        and "family" not in config
        and ("model_type" in config or "architectures" in config)
    )


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _token_text(value: Any) -> str | None:
    """A token as tokenizer_config.json writes it: a string or an AddedToken dict."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def _first_id(value: Any) -> int | None:
    if isinstance(value, list):
        value = value[0] if value else None
    return value if isinstance(value, int) and value >= 0 else None


class HFTokenizer(KaffeeTokenizer):
    """A byte-level BPE tokenizer.json of a Hugging Face directory, in Kaffee's tokenizer interface."""

    def __init__(
        self,
        tokenizer,
        eos_id: int,
        bos_id: int | None = None,
        pad_id: int | None = None,
        fim: tuple[int, int, int] | None = None,
        source: str = "tokenizer.json",
    ):
        # KaffeeTokenizer.__init__ is not called: it insists on Kaffee's own special tokens.
        self.tk = tokenizer
        self.source = source
        self.end_id = eos_id  # what the model writes at the end of a text
        self.bos_id = bos_id
        # the engine's eos_id is what a document starts with: the declared bos, else eos
        self.eos_id = bos_id if bos_id is not None else eos_id
        self.pad_id = pad_id if pad_id is not None else eos_id
        self.has_fim = fim is not None
        self.fim_prefix_id, self.fim_suffix_id, self.fim_middle_id = fim or (None, None, None)
        added = tokenizer.get_added_tokens_decoder()
        special = {i for i, t in added.items() if t.special}
        special |= {i for i in (eos_id, bos_id, pad_id, *(fim or ())) if i is not None}
        self.special_ids = frozenset(special)
        self._added = {i: t.content for i, t in added.items()}
        vocab = tokenizer.get_vocab(with_added_tokens=True)
        self._vocab_size = max(vocab.values()) + 1 if vocab else 0
        _ = self.id_to_bytes  # refuses a vocabulary that is not byte-level, now rather than mid-request
        got = self.decode_bytes(self.encode(_ROUND_TRIP))
        if got != _ROUND_TRIP.encode():
            raise KaffeeError(
                f"{source} does not reproduce text it encodes (decode(encode(x)) != x: a normaliser or "
                "a prefix space); Kaffee needs a lossless byte-level BPE"
            )
        # GPT-2's split keeps a line break with the indentation after it, Kaffee's never does:
        # the prompt encoder may reuse the ids of earlier lines only when a line start is a split.
        self.splits_at_newline = all(
            self.encode(p) == self.encode(p[: i + 1]) + self.encode(p[i + 1 :])
            for p in _NEWLINE_PROBES
            for i, ch in enumerate(p)
            if ch == "\n" and i + 1 < len(p)
        )

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> HFTokenizer:
        from tokenizers import Tokenizer

        model_dir = Path(model_dir)
        path = model_dir / "tokenizer.json"
        if not path.is_file():
            raise KaffeeError(
                f"{model_dir} has no tokenizer.json; Kaffee serves Hugging Face models with a fast "
                "(tokenizers) byte-level BPE tokenizer only"
            )
        try:
            tk = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises plain Exception on bad JSON
            raise KaffeeError(f"{path} is not a valid tokenizer file: {exc}") from exc
        spec = json.loads(tk.to_str())
        model = spec.get("model") or {}
        kinds = json.dumps([spec.get("pre_tokenizer"), spec.get("decoder")])
        if model.get("type") != "BPE" or model.get("byte_fallback") or '"ByteLevel"' not in kinds:
            what = model.get("type", "?") + (" with byte fallback" if model.get("byte_fallback") else "")
            raise KaffeeError(
                f"{path} is a {what} tokenizer, not a byte-level BPE (GPT-2 style); Kaffee cannot "
                "represent it (SentencePiece-style tokenizers such as Llama 2's are not supported)"
            )
        tcfg = _read_json(model_dir / "tokenizer_config.json")
        mcfg = _read_json(model_dir / "config.json")
        gcfg = _read_json(model_dir / "generation_config.json")

        def lookup(name: str) -> int | None:
            text = _token_text(tcfg.get(f"{name}_token"))
            if text is not None and tk.token_to_id(text) is not None:
                return tk.token_to_id(text)
            for cfg in (gcfg, mcfg):
                i = _first_id(cfg.get(f"{name}_token_id"))
                if i is not None and tk.id_to_token(i) is not None:
                    return i
            return None

        eos = lookup("eos")
        if eos is None:
            eos = next((tk.token_to_id(n) for n in EOS_NAMES if tk.token_to_id(n) is not None), None)
        if eos is None:
            raise KaffeeError(
                f"{path}: no end-of-text token (none declared in tokenizer_config.json or config.json, "
                f"none of {', '.join(EOS_NAMES)} in the vocabulary)"
            )
        fim = None
        for names in FIM_NAMES:
            ids = [tk.token_to_id(n) for n in names]
            if all(i is not None for i in ids):
                fim = (ids[0], ids[1], ids[2])
                break
        return cls(tk, eos, bos_id=lookup("bos"), pad_id=lookup("pad"), fim=fim, source=str(path))

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    def fim_ids(self, prefix, suffix, middle=()) -> list[int]:
        if not self.has_fim:
            raise KaffeeError(f"{self.source} has no fill-in-the-middle tokens")
        return super().fim_ids(prefix, suffix, middle)

    @cached_property
    def id_to_bytes(self) -> list[bytes]:
        """The bytes of every id: vocabulary pieces through GPT-2's byte table, added tokens as written."""
        inverse = {c: b for b, c in _bytes_to_unicode().items()}
        out: list[bytes] = []
        for i in range(self._vocab_size):
            if i in self._added:
                out.append(self._added[i].encode())
                continue
            piece = self.tk.id_to_token(i) or ""
            try:
                out.append(bytes(inverse[ch] for ch in piece))
            except KeyError:
                raise KaffeeError(
                    f"{self.source}: token {i} ({piece!r}) is not written in byte-level characters; "
                    "Kaffee needs a byte-level BPE (GPT-2 style)"
                ) from None
        return out


def _max_context(config, tokenizer_config: dict) -> int:
    for name in ("max_position_embeddings", "n_positions", "n_ctx", "seq_length", "max_seq_len"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    value = tokenizer_config.get("model_max_length")
    if isinstance(value, int) and 0 < value < 1_000_000:
        return value
    return 2048


def _cache_of(out) -> Any:
    """The KV cache a forward returned (``cache`` since transformers 5.24, ``past_key_values`` before)."""
    for name in ("cache", "past_key_values"):
        value = getattr(out, name, None)
        if value is not None:
            return value
    return None


class HFCausalLM(LanguageModel):
    """Any ``AutoModelForCausalLM``, with its KV cache reused across requests by the engine."""

    family = "hf"

    def __init__(self, module: torch.nn.Module, tokenizer: HFTokenizer, meta: dict, max_context: int):
        from kaffee.models.gpt import _cache_kwarg

        self.module = module.eval()
        self.tokenizer = tokenizer
        self.meta = meta
        self.vocab_size = tokenizer.vocab_size
        self.max_context = max_context
        self._cache_kwarg = _cache_kwarg(module)

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    @property
    def supports_fim(self) -> bool:
        return self.tokenizer.has_fim

    @property
    def cfg(self):
        # what training reads of a Kaffee family (kaffee finetune): a clear refusal, not an AttributeError
        raise KaffeeError(
            "a Hugging Face checkpoint is served as it is; Kaffee trains and fine-tunes only its own "
            "families (gpt, lstm, bert, ngram)"
        )

    def config_dict(self) -> dict:
        return self.module.config.to_dict()

    def _logprobs(self, logits: torch.Tensor) -> torch.Tensor:
        # rows past the tokenizer's vocabulary (padding to a multiple of 64 or 128) are never used
        return torch.log_softmax(logits[..., : self.vocab_size].float(), dim=-1)

    def _forward(self, ids: list[int], cache: Any = None):
        x = torch.tensor([ids], device=self.device)
        kwargs = {self._cache_kwarg: cache} if cache is not None else {}
        return self.module(input_ids=x, use_cache=cache is not None, **kwargs)

    @torch.inference_mode()
    def next_logprobs(self, contexts: list[list[int]]) -> torch.Tensor:
        # one context at a time: not every architecture takes position ids for left padding
        rows = [self._logprobs(self._forward(c).logits[0, -1]) for c in contexts]
        return torch.stack(rows).cpu()

    @torch.inference_mode()
    def sequence_logprobs(self, ids: list[int]) -> torch.Tensor:
        logits = self._forward(ids).logits[0, :-1]
        lp = self._logprobs(logits)
        target = torch.tensor(ids[1:], device=lp.device)
        return lp.gather(1, target[:, None])[:, 0].cpu()

    def new_state(self) -> DecodeState:
        return DecodeState()

    @torch.inference_mode()
    def advance(self, state: DecodeState, ids: list[int]) -> torch.Tensor:
        if not ids:
            raise ValueError("advance needs at least one token")
        if len(state.ids) + len(ids) > self.max_context:
            raise ValueError(
                f"context of {len(state.ids) + len(ids)} tokens exceeds the window {self.max_context}"
            )
        # a state whose cache was dropped (it could not be cropped) re-encodes the ids it kept
        feed = ids if state.cache is not None or not state.ids else state.ids + ids
        x = torch.tensor([feed], device=self.device)
        kwargs = {self._cache_kwarg: state.cache} if state.cache is not None else {}
        out = self.module(input_ids=x, use_cache=True, **kwargs)
        cache = _cache_of(out)
        state.cache = cache if cache is not None else state.cache
        state.ids.extend(ids)
        state.last_logprobs = self._logprobs(out.logits[0, -1]).cpu()
        return state.last_logprobs

    def crop(self, state: DecodeState, n: int) -> None:
        cache = state.cache
        if cache is not None and n < len(state.ids):
            try:
                if not getattr(cache, "is_croppable", True):
                    raise NotImplementedError("not croppable")
                remove = cache.get_seq_length() - n
                if remove > 0:
                    cache.crop(-remove)  # negative: remove this many (old and new transformers alike)
            except (AttributeError, NotImplementedError, TypeError, ValueError, RuntimeError):
                state.cache = None  # re-encoded from the kept ids by the next advance
        del state.ids[n:]
        if not state.ids:
            state.cache = None
        state.last_logprobs = None


def load_hf(model_dir: str | Path, device: str = "cpu") -> HFCausalLM:
    """Load a Hugging Face causal-LM directory (safetensors only, no remote code)."""
    from kaffee.models.checkpoint import _weight_files

    model_dir = Path(model_dir)
    tokenizer = HFTokenizer.from_dir(model_dir)
    _weight_files(model_dir, "model")  # KaffeeError: no safetensors, pickle files, missing shard
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(model_dir, local_files_only=True, trust_remote_code=False)
    except Exception as exc:  # ValueError/KeyError for an unknown model_type, OSError for a bad file
        raise KaffeeError(f"{model_dir}: transformers cannot read config.json ({_one_line(exc)})") from exc
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # no "Loading weights" bar on kaffee complete's stderr
    try:
        module = AutoModelForCausalLM.from_pretrained(
            model_dir, config=config, local_files_only=True, trust_remote_code=False, use_safetensors=True
        )
    except Exception as exc:
        raise KaffeeError(
            f"{model_dir} is not a causal language model transformers can load ({_one_line(exc)})"
        ) from exc
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    if str(device).startswith("cpu") and module.dtype != torch.float32:
        module = module.float()  # half precision on CPU is slow and coarse
    module = module.to(device)
    head = module.get_output_embeddings()
    rows = head.weight.shape[0] if head is not None else None
    if rows is not None and rows < tokenizer.vocab_size:
        raise KaffeeError(
            f"{model_dir}: tokenizer.json has {tokenizer.vocab_size} tokens but the model only {rows}: "
            "they do not belong together"
        )
    raw = _read_json(model_dir / "config.json")
    meta = {
        "family": "hf",
        "config": raw,
        "model_type": getattr(config, "model_type", None),
        "architectures": getattr(config, "architectures", None) or [type(module).__name__],
        "fim": tokenizer.has_fim,
        "fim_rate": 0.0,  # unknown; supports_fim follows the tokenizer's FIM tokens instead
    }
    tcfg = _read_json(model_dir / "tokenizer_config.json")
    return HFCausalLM(module, tokenizer, meta, _max_context(config, tcfg))


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 300 else text[:297] + "..."
