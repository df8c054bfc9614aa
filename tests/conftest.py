"""Shared fixtures: a tiny tokenizer and tiny model directories of every family.

Built once per test session from tests/java_samples.py, in a few seconds, with the
same code paths users run (tokenizer training, checkpoint saving).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from java_samples import SAMPLES, training_texts  # noqa: E402
from kaffee.data.tokenizer import KaffeeTokenizer, TokenizerTrainConfig  # noqa: E402
from kaffee.models import checkpoint, families  # noqa: E402
from kaffee.models.ngram import NgramCounts  # noqa: E402


@pytest.fixture(scope="session")
def java_samples() -> dict[str, str]:
    return dict(SAMPLES)


@pytest.fixture(scope="session")
def tiny_tokenizer() -> KaffeeTokenizer:
    return KaffeeTokenizer.train(training_texts(), TokenizerTrainConfig(vocab_size=512))


def _overfit(model, tok: KaffeeTokenizer, steps: int = 150) -> None:
    """A few optimizer steps on the samples so the tiny model predicts something sensible."""
    ids = []
    for t in training_texts(2):
        ids += tok.encode(t) + [tok.eos_id]
    data = torch.tensor(ids)
    module = model.module.train()
    opt = torch.optim.AdamW(module.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    block = 128
    for _ in range(steps):
        starts = torch.randint(0, len(data) - block - 1, (8,), generator=g)
        x = torch.stack([data[s : s + block] for s in starts])
        y = torch.stack([data[s + 1 : s + block + 1] for s in starts])
        out = module(x)
        logits = out.logits if hasattr(out, "logits") else out[0]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    module.eval()


def make_tiny_model_dir(out: Path, family: str, tok: KaffeeTokenizer, train: bool = True) -> Path:
    cfg = families.make_config(family, "nano", tok.vocab_size)
    if family == "ngram":
        ids = np.concatenate([tok.encode(t) + [tok.eos_id] for t in training_texts()])
        model = families.wrap(family, cfg, NgramCounts.build(ids, tok.vocab_size, cfg.order))
    else:
        torch.manual_seed(0)
        model = families.wrap(family, cfg, families.build_module(family, cfg))
        if train:
            _overfit(model, tok)
    checkpoint.save_model_dir(out, model, tok, f"# tiny {family} test model\n", extra={"fim_rate": 0.0})
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    """A nano GPT overfitted on the Java samples (the server's default kind of model)."""
    return make_tiny_model_dir(tmp_path_factory.mktemp("models") / "gpt", "gpt", tiny_tokenizer)


@pytest.fixture(scope="session")
def tiny_lstm_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("models") / "lstm", "lstm", tiny_tokenizer)


@pytest.fixture(scope="session")
def tiny_ngram_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("models") / "ngram", "ngram", tiny_tokenizer)


@pytest.fixture(autouse=True)
def _private_state_dir(tmp_path_factory, monkeypatch) -> None:
    """Servers started by tests write acceptance statistics under a temporary state dir, never ~."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path_factory.mktemp("state")))
