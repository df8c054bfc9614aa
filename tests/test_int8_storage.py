"""int8 weight storage: half the bytes of float16, and the int8 decoder computes exactly what it did."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from kaffee.models import checkpoint
from kaffee.server.fastgpt import FastGPT


def _bytes(d: Path) -> int:
    return sum(p.stat().st_size for p in d.glob("*.safetensors"))


def test_int8_storage_halves_fp16_and_keeps_the_int8_decoder_exact(
    tiny_model_dir: Path, tmp_path, monkeypatch
):
    monkeypatch.setattr(checkpoint, "INT8_MIN_ELEMENTS", 1)  # the nano test model's matrices are small
    model = checkpoint.load_model(tiny_model_dir)
    tok = model.tokenizer
    extra = {k: v for k, v in model.meta.items() if k not in ("family", "config")}
    checkpoint.save_model_dir(tmp_path / "f16", model, tok, "", extra=extra, dtype=torch.float16)
    checkpoint.save_model_dir(tmp_path / "i8", model, tok, "", extra=extra, dtype="int8")
    assert _bytes(tmp_path / "i8") < 0.62 * _bytes(tmp_path / "f16")

    stored = checkpoint.load_tensors(tmp_path / "i8")
    lazy = checkpoint.load_tensors(tmp_path / "i8", lazy=True)
    names = set(checkpoint.load_tensors(tiny_model_dir))
    assert set(stored) == names and set(lazy) == names and len(lazy) == len(names)
    name = next(n for n, t in stored.items() if t.dim() == 2)
    assert torch.equal(lazy[name], stored[name]) and torch.equal(lazy.pop(name), stored[name])
    assert name not in set(lazy) and len(lazy) == len(names) - 1

    int8_model = checkpoint.load_model(tmp_path / "i8")
    ids = [tok.eos_id] + tok.encode("public class Bank {\n    private int total;\n    public int total() {\n")
    ref = model.next_logprobs([ids])
    got = int8_model.next_logprobs([ids])
    assert (got - ref).abs().max() < 0.25 and got.argmax() == ref.argmax()  # float path: close
    a = FastGPT.from_gpt(model, quantize="int8").next_logprobs([ids])
    b = FastGPT.from_gpt(int8_model, quantize="int8").next_logprobs([ids])
    assert torch.equal(a, b)  # the int8 decoder recovers the stored int8 weights exactly


def test_unknown_storage_dtype_is_a_clear_error(tiny_model_dir: Path, tmp_path):
    model = checkpoint.load_model(tiny_model_dir)
    with pytest.raises(Exception, match="unknown storage dtype"):
        checkpoint.save_model_dir(tmp_path / "x", model, model.tokenizer, "", dtype="int4")
