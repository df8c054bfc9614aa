"""Registry of model families: how to build each from a config and to (de)serialise it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from kaffee.errors import KaffeeError
from kaffee.models import bert, gpt, lstm, ngram
from kaffee.models.lm import LanguageModel


@dataclass(frozen=True)
class Family:
    name: str
    config_cls: type  # the family's config dataclass
    presets: dict[str, dict]  # preset name -> config overrides
    neural: bool  # trained by gradient descent (else by counting)
    objective: str = "causal"  # "causal" (next token) or "mlm" (masked tokens, both sides seen: no FIM)


FAMILIES: dict[str, Family] = {
    "gpt": Family("gpt", gpt.GPTConfig, gpt.PRESETS, True),
    "lstm": Family("lstm", lstm.LSTMConfig, lstm.PRESETS, True),
    "ngram": Family("ngram", ngram.NgramConfig, ngram.PRESETS, False),
    "bert": Family("bert", bert.BERTConfig, bert.PRESETS, True, objective="mlm"),
}


def get_family(name: str) -> Family:
    if name not in FAMILIES:
        raise KaffeeError(f"unknown model family {name!r}; available: {', '.join(FAMILIES)}")
    return FAMILIES[name]


def make_config(family: str, preset: str, vocab_size: int, **overrides: Any):
    fam = get_family(family)
    if preset not in fam.presets:
        raise KaffeeError(f"unknown preset {preset!r} for {family}; available: {', '.join(fam.presets)}")
    try:
        return fam.config_cls(vocab_size=vocab_size, **{**fam.presets[preset], **overrides})
    except (TypeError, ValueError) as exc:  # an unknown field or a bad value from --set
        raise KaffeeError(f"{family} config: {exc}") from exc


def build_module(family: str, cfg) -> torch.nn.Module:
    """A freshly initialised torch module for a neural family."""
    if family == "gpt":
        return gpt.build_module(cfg)
    if family == "lstm":
        return lstm.LSTMModule(cfg)
    if family == "bert":
        return bert.build_module(cfg)
    raise KaffeeError(f"family {family!r} has no torch module")


def wrap(family: str, cfg, module_or_counts) -> LanguageModel:
    """The LanguageModel view of a trained module (or n-gram counts)."""
    if family == "gpt":
        return gpt.GPTModel(cfg, module_or_counts)
    if family == "lstm":
        return lstm.LSTMModel(cfg, module_or_counts)
    if family == "bert":
        return bert.BERTModel(cfg, module_or_counts)
    return ngram.NgramModel(cfg, module_or_counts)


def model_tensors(model: LanguageModel) -> dict[str, torch.Tensor]:
    if isinstance(model, ngram.NgramModel):
        return model.counts.tensors()
    sd = model.module.state_dict()
    # tied weights appear twice in state_dict; safetensors refuses shared storage, keep one
    seen: dict[int, str] = {}
    out = {}
    for k, v in sd.items():
        ptr = v.data_ptr()
        if ptr in seen:
            continue
        seen[ptr] = k
        out[k] = v.detach().contiguous()
    return out


def from_tensors(family: str, cfg, tensors: dict[str, torch.Tensor], device: str = "cpu") -> LanguageModel:
    if family == "ngram":
        return ngram.NgramModel(cfg, ngram.NgramCounts.from_tensors(tensors, cfg.vocab_size, cfg.order))
    module = build_module(family, cfg)
    missing, unexpected = module.load_state_dict(tensors, strict=False)
    # tied head weights are legitimately absent from the file
    missing = [m for m in missing if not (getattr(cfg, "tie_embeddings", False) and _is_tied_name(m))]
    if missing or unexpected:
        raise KaffeeError(
            f"weights do not match the {family} config: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return wrap(family, cfg, module.to(device))


def _is_tied_name(name: str) -> bool:
    return name in (
        "lm_head.weight",
        "head.weight",
        "model.embed_tokens.weight",
        "embed.weight",
        "cls.predictions.decoder.weight",  # bert: the input embedding
        "cls.predictions.decoder.bias",  # bert: cls.predictions.bias
    )
