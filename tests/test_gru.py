"""The GRU cell of the recurrent family (issue 11): same invariants as the LSTM and the GPT."""

from __future__ import annotations

import math

import pytest
import torch
from java_samples import training_texts
from kaffee.errors import KaffeeError
from kaffee.models import checkpoint, families
from kaffee.server.engine import CompletionEngine
from kaffee.training.trainer import lm_loss
from torch import nn


def _gru(tok, **overrides):
    torch.manual_seed(0)
    cfg = families.make_config("lstm", "nano", tok.vocab_size, cell="gru", **overrides)
    return families.wrap("lstm", cfg, families.build_module("lstm", cfg))


def test_gru_cell_is_a_gru_and_loss_at_init_is_log_vocab(tiny_tokenizer):
    model = _gru(tiny_tokenizer)
    assert isinstance(model.module.rnn, nn.GRU)
    ids = [i for t in training_texts(1) for i in tiny_tokenizer.encode(t)][:257]
    x = torch.tensor([ids])
    loss = lm_loss(model.module.eval(), x[:, :-1], x[:, 1:]).item()
    assert abs(loss - math.log(tiny_tokenizer.vocab_size)) < 0.3, loss


def test_gru_incremental_state_matches_full_recompute(tiny_tokenizer):
    model = _gru(tiny_tokenizer)
    ids = tiny_tokenizer.encode(training_texts(1)[1])[:150]
    state = model.new_state()
    model.sync(state, ids[:140])  # past a hidden-state snapshot (every 64 tokens)
    model.sync(state, ids[:70] + ids[75:130])  # crop back before the snapshot, then extend
    full = model.next_logprobs([ids[:70] + ids[75:130]])[0]
    assert torch.allclose(state.last_logprobs, full, atol=1e-4)


def test_gru_model_directory_round_trip_and_engine(tiny_tokenizer, tmp_path):
    model = _gru(tiny_tokenizer)
    checkpoint.save_model_dir(
        tmp_path / "gru", model, tiny_tokenizer, "# tiny gru\n", extra={"fim_rate": 0.0}
    )
    loaded = checkpoint.load_model(tmp_path / "gru")
    assert loaded.cfg.cell == "gru" and isinstance(loaded.module.rnn, nn.GRU)
    ctx = tiny_tokenizer.encode(training_texts(1)[0][:300])
    assert torch.equal(model.next_logprobs([ctx]), loaded.next_logprobs([ctx]))
    engine = CompletionEngine.from_model_dir(tmp_path / "gru")
    assert not engine.degraded and len(engine.next_tokens("class A { int x = ", "", k=3)) == 3


def test_old_lstm_configs_stay_lstm_and_a_bad_cell_is_a_clear_error(tiny_tokenizer):
    cfg = families.make_config("lstm", "nano", tiny_tokenizer.vocab_size)
    assert cfg.cell == "lstm" and isinstance(families.build_module("lstm", cfg).rnn, nn.LSTM)
    with pytest.raises(KaffeeError, match="cell must be one of"):
        families.make_config("lstm", "nano", tiny_tokenizer.vocab_size, cell="transformer")
