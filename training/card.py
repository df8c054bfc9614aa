"""card.md for a model directory: data, tokenizer, architecture, training, how to reproduce."""

from __future__ import annotations

import json


def model_card(family: str, meta: dict, command: str) -> str:
    tr = meta.get("training", {})
    cfg = meta.get("config", {})
    hist = tr.get("history") or []
    lines = [
        f"# Kaffee {family} model",
        "",
        "## Data",
        f"- corpus: `{meta.get('corpus', '?')}` (train split; validation on the valid split)",
        f"- fill-in-the-middle rate: {meta.get('fim_rate', 0)}",
        "",
        "## Model",
        f"- family: {family}, parameters: {tr.get('params', '?'):,}" if isinstance(tr.get("params"), int) else f"- family: {family}",
        f"- config: `{json.dumps(cfg)}`",
        "",
        "## Training",
        f"- steps: {tr.get('step', '?')}, tokens seen: {tr.get('tokens', '?'):,}" if isinstance(tr.get("tokens"), int) else "- counted n-grams (no gradient training)",
        f"- hardware: {meta.get('hardware', '?')}",
        f"- validation loss (nats/token): {hist[-1]['val_loss']:.4f}" if hist else "",
        "",
        "## Reproduce",
        "```",
        command,
        "```",
        "",
    ]
    return "\n".join(line for line in lines if line is not None)
