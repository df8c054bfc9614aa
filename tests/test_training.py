"""Invariants of the model families, the training loop and the checkpoint format."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_tiny_model_dir
from java_samples import training_texts
from kaffee.errors import KaffeeError
from kaffee.models import checkpoint, families
from kaffee.training.trainer import TrainConfig, lm_loss, train

NEURAL = ["gpt", "lstm"]


def _stream(tok, copies: int = 4) -> np.ndarray:
    return np.asarray([i for t in training_texts(copies) for i in tok.encode(t) + [tok.eos_id]], np.int32)


@pytest.mark.parametrize("family", NEURAL)
def test_loss_at_init_is_log_vocab(family, tiny_tokenizer):
    torch.manual_seed(0)
    cfg = families.make_config(family, "nano", tiny_tokenizer.vocab_size)
    module = families.build_module(family, cfg)
    x = torch.from_numpy(_stream(tiny_tokenizer)[:513].astype(np.int64)).view(1, -1)
    loss = lm_loss(module.eval(), x[:, :-1], x[:, 1:]).item()
    assert abs(loss - math.log(tiny_tokenizer.vocab_size)) < 0.3, loss


@pytest.mark.parametrize("family", NEURAL)
def test_nano_model_overfits_fixture(family, tiny_tokenizer, tmp_path):
    losses: list[float] = []
    cfg = families.make_config(family, "nano", tiny_tokenizer.vocab_size)
    stream = _stream(tiny_tokenizer, 2)
    lr = {"gpt": 3e-3, "lstm": 1e-2}[family]  # the recurrent net wants a larger step
    tc = TrainConfig(
        batch_size=8,
        max_steps=120,
        lr=lr,
        warmup_steps=5,
        eval_interval=1000,
        save_interval=1000,
        block_size=64,
    )
    train(
        family,
        cfg,
        tiny_tokenizer,
        stream,
        None,
        tmp_path / "m",
        tc,
        on_step=lambda s, loss: losses.append(loss),
    )
    assert losses[-1] < 0.5 * losses[0], (losses[0], losses[-1])


@pytest.mark.parametrize("family", ["gpt", "lstm", "ngram"])
def test_save_load_gives_identical_logits(family, tiny_tokenizer, tmp_path):
    model_dir = make_tiny_model_dir(tmp_path / family, family, tiny_tokenizer, train=False)
    a = checkpoint.load_model(model_dir)
    checkpoint.save_model_dir(tmp_path / "copy", a, a.tokenizer, "card", extra=a.meta)
    b = checkpoint.load_model(tmp_path / "copy")
    ctx = tiny_tokenizer.encode(training_texts(1)[0][:300])
    assert torch.equal(a.next_logprobs([ctx]), b.next_logprobs([ctx]))
    assert b.meta["family"] == family


@pytest.mark.parametrize("family", ["gpt", "lstm", "ngram"])
def test_incremental_state_matches_full_recompute(family, tiny_model_dir, tiny_lstm_dir, tiny_ngram_dir):
    model = checkpoint.load_model(
        {"gpt": tiny_model_dir, "lstm": tiny_lstm_dir, "ngram": tiny_ngram_dir}[family]
    )
    ids = model.tokenizer.encode(training_texts(1)[1])[:120]
    state = model.new_state()
    model.sync(state, ids[:100])
    model.sync(state, ids[:90] + ids[95:118])  # edit in the middle: crop then extend
    full = model.next_logprobs([ids[:90] + ids[95:118]])[0]
    assert torch.allclose(state.last_logprobs, full, atol=1e-4)
    seq = model.sequence_logprobs(ids[:50])
    assert torch.allclose(seq[-1], model.next_logprobs([ids[:49]])[0][ids[49]], atol=1e-4)


def test_resume_after_kill_reproduces_uninterrupted_run(tiny_tokenizer, tmp_path):
    cfg = families.make_config("gpt", "nano", tiny_tokenizer.vocab_size)
    stream = _stream(tiny_tokenizer, 2)
    tc = dict(
        batch_size=4,
        max_steps=12,
        lr=3e-3,
        warmup_steps=2,
        eval_interval=1000,
        save_interval=6,
        block_size=32,
    )
    full: dict[int, float] = {}
    train(
        "gpt",
        cfg,
        tiny_tokenizer,
        stream,
        None,
        tmp_path / "a",
        TrainConfig(**tc),
        on_step=lambda s, loss: full.__setitem__(s, loss),
    )

    class Killed(Exception):
        pass

    def kill_at_9(step: int, loss: float) -> None:
        if step == 9:
            raise Killed

    with pytest.raises(Killed):
        train("gpt", cfg, tiny_tokenizer, stream, None, tmp_path / "b", TrainConfig(**tc), on_step=kill_at_9)
    assert json.loads((tmp_path / "b" / "trainer" / "state.json").read_text())["run"]["step"] == 6
    resumed: dict[int, float] = {}
    train(
        "gpt",
        cfg,
        tiny_tokenizer,
        stream,
        None,
        tmp_path / "b",
        TrainConfig(**tc),
        resume=True,
        on_step=lambda s, loss: resumed.__setitem__(s, loss),
    )
    assert sorted(resumed) == list(range(7, 13))
    for s in resumed:
        assert resumed[s] == pytest.approx(full[s], rel=1e-5, abs=1e-6)
    a, b = checkpoint.load_model(tmp_path / "a"), checkpoint.load_model(tmp_path / "b")
    for (ka, va), (kb, vb) in zip(a.module.state_dict().items(), b.module.state_dict().items(), strict=True):
        assert ka == kb and torch.allclose(va, vb, atol=1e-6)


def test_interrupted_save_leaves_previous_checkpoint(tiny_model_dir, tmp_path, monkeypatch):
    model = checkpoint.load_model(tiny_model_dir)
    out = tmp_path / "m"
    checkpoint.save_model_dir(out, model, model.tokenizer, "v1")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "save_tensors", boom)
    with pytest.raises(OSError):
        checkpoint.save_model_dir(out, model, model.tokenizer, "v2")
    assert (out / "card.md").read_text() == "v1"
    assert checkpoint.load_model(out).family == "gpt"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".m.tmp")]


# -- bad checkpoints -----------------------------------------------------------------------


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_corrupt_weights_are_a_clear_error(tiny_model_dir, tmp_path):
    d = _copy(tiny_model_dir, tmp_path / "m")
    (d / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(KaffeeError, match="corrupt"):
        checkpoint.load_model(d)


def test_half_written_sharded_checkpoint_is_refused(tiny_model_dir, tmp_path, monkeypatch):
    model = checkpoint.load_model(tiny_model_dir)
    monkeypatch.setattr(checkpoint, "SHARD_BYTES", 50_000)
    checkpoint.save_model_dir(tmp_path / "m", model, model.tokenizer, "")
    shards = sorted((tmp_path / "m").glob("model-*.safetensors"))
    assert len(shards) > 1
    shards[-1].unlink()
    with pytest.raises(KaffeeError, match="missing"):
        checkpoint.load_model(tmp_path / "m")


def test_other_family_and_mismatched_tokenizer(tiny_model_dir, tiny_lstm_dir, tmp_path):
    with pytest.raises(KaffeeError, match="not lstm"):
        checkpoint.load_model(tiny_model_dir, expect_family="lstm")
    d = _copy(tiny_lstm_dir, tmp_path / "m")
    from kaffee.data.tokenizer import KaffeeTokenizer, TokenizerTrainConfig

    KaffeeTokenizer.train(training_texts(2), TokenizerTrainConfig(vocab_size=400)).save(d / "tokenizer.json")
    with pytest.raises(KaffeeError, match="do not belong together"):
        checkpoint.load_model(d)


def test_pickle_weights_are_refused(tiny_model_dir, tmp_path):
    d = _copy(tiny_model_dir, tmp_path / "m")
    (d / "model.safetensors").unlink()
    torch.save({"x": torch.zeros(1)}, d / "pytorch_model.bin")
    with pytest.raises(KaffeeError, match="pickle"):
        checkpoint.load_model(d)


def test_not_a_model_dir(tmp_path):
    with pytest.raises(KaffeeError, match="does not exist"):
        checkpoint.load_model(tmp_path / "nope")
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "config.json").write_text("{not json")
    with pytest.raises(KaffeeError, match="not valid JSON"):
        checkpoint.load_model(tmp_path / "x")


# -- command line ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def jsonl_corpus(tmp_path_factory, tiny_tokenizer) -> Path:
    d = tmp_path_factory.mktemp("jsonl")
    texts = training_texts(6)
    for name, rows in (("train", texts[:14]), ("valid", texts[14:])):
        lines = [
            json.dumps({"text": t, "project": f"p{i % 3}", "path": f"src/F{i}.java"})
            for i, t in enumerate(rows)
        ]
        (d / f"{name}.jsonl").write_text("".join(line + "\n" for line in lines))
    tiny_tokenizer.save(d / "tokenizer.json")
    return d


def kaffee(*args: str, env_extra: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "kaffee", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


@pytest.mark.parametrize("family", ["gpt", "lstm", "ngram"])
def test_cli_train_each_family(family, jsonl_corpus, tmp_path):
    r = kaffee(
        "train",
        "--family",
        family,
        "--preset",
        "nano",
        "--corpus",
        str(jsonl_corpus / "train.jsonl"),
        "--tokenizer",
        str(jsonl_corpus / "tokenizer.json"),
        "--out",
        str(tmp_path / family),
        "--max-steps",
        "6",
        "--block-size",
        "32",
        "--batch-size",
        "4",
    )
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["val_loss"] is not None
    assert checkpoint.load_model(tmp_path / family).family == family


def test_cli_finetune_improves_validation_loss(tiny_model_dir, tmp_path, java_samples):
    project = tmp_path / "project"
    project.mkdir()
    for i in range(4):
        for name, text in java_samples.items():
            (project / f"{i}{name}").write_text(text.replace("Account", "Konto").replace("balance", "saldo"))
    r = kaffee(
        "finetune",
        "--from",
        str(tiny_model_dir),
        "--corpus",
        str(project),
        "--out",
        str(tmp_path / "ft"),
        "--max-steps",
        "25",
        "--lr",
        "1e-3",
        "--batch-size",
        "4",
    )
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads(r.stdout.strip().splitlines()[-2])
    assert result["val_loss_after"] < result["val_loss_before"]
    # progress before training, and "after" is the trainer's last validation, not a second run
    assert "validation loss before" in r.stderr and "training tokens" in r.stderr
    assert result["val_loss_after"] == result["val_loss"]


def test_cli_errors_are_clear(jsonl_corpus, tmp_path):
    r = kaffee(
        "train",
        "--family",
        "gpt",
        "--preset",
        "nano",
        "--corpus",
        str(tmp_path / "missing.jsonl"),
        "--tokenizer",
        str(jsonl_corpus / "tokenizer.json"),
        "--out",
        str(tmp_path / "m"),
    )
    assert r.returncode == 1 and "error" in r.stderr and "Traceback" not in r.stderr
    empty = tmp_path / "train.jsonl"
    empty.write_text("")
    (tmp_path / "valid.jsonl").write_text("")
    r = kaffee(
        "train",
        "--family",
        "gpt",
        "--preset",
        "nano",
        "--corpus",
        str(empty),
        "--tokenizer",
        str(jsonl_corpus / "tokenizer.json"),
        "--out",
        str(tmp_path / "m"),
    )
    assert r.returncode == 1 and "no documents" in r.stderr and "Traceback" not in r.stderr
    r = kaffee(
        "train",
        "--family",
        "gpt",
        "--preset",
        "huge",
        "--corpus",
        str(jsonl_corpus / "train.jsonl"),
        "--tokenizer",
        str(jsonl_corpus / "tokenizer.json"),
        "--out",
        str(tmp_path / "m"),
    )
    assert r.returncode == 1 and "available: nano, small, base" in r.stderr


def test_ddp_two_cpu_processes_agree(jsonl_corpus, tmp_path):
    # --standalone: a c10d rendezvous on localhost:0, so the OS picks a free port (no fixed port to collide on)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "kaffee",
        "train",
        "--family",
        "gpt",
        "--preset",
        "nano",
        "--corpus",
        str(jsonl_corpus / "train.jsonl"),
        "--tokenizer",
        str(jsonl_corpus / "tokenizer.json"),
        "--out",
        str(tmp_path / "ddp"),
        "--max-steps",
        "5",
        "--block-size",
        "32",
        "--batch-size",
        "2",
    ]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    summaries = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert sorted(s["rank"] for s in summaries) == [0, 1]
    assert all(s["world_size"] == 2 for s in summaries)
    assert summaries[0]["param_checksum"] == summaries[1]["param_checksum"]
    assert checkpoint.load_model(tmp_path / "ddp").family == "gpt"
