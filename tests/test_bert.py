"""The bert family (issue 11): the masked-LM objective, training, checkpoints, resume, and `bert:DIR` in eval."""

from __future__ import annotations

import argparse
import json
import math
import sys

import numpy as np
import pytest
import torch
from eval_fixtures import make_corpus
from java_samples import training_texts
from kaffee.errors import KaffeeError
from kaffee.evaluation import cli as eval_cli
from kaffee.evaluation.bert_system import BertSystem, heal
from kaffee.evaluation.system_base import Context
from kaffee.evaluation.system_registry import parse_system_spec
from kaffee.models import bert, checkpoint, families
from kaffee.training.trainer import TrainConfig, causal_loss, objective, train

LOOP = dict(batch_size=4, lr=3e-3, warmup_steps=2, eval_interval=1000, block_size=32)


def _stream(tok, copies: int = 2) -> np.ndarray:
    return np.asarray([i for t in training_texts(copies) for i in tok.encode(t) + [tok.eos_id]], np.int32)


def _bert(tok, **overrides):
    torch.manual_seed(0)
    cfg = families.make_config("bert", "nano", tok.vocab_size, **overrides)
    model = families.wrap("bert", cfg, families.build_module("bert", cfg).eval())
    model.tokenizer = tok
    return model


def test_masking_follows_the_bert_recipe_and_is_seeded():
    ids = torch.randint(5, 500, (40, 500))
    inputs, labels = bert.mask_tokens(ids, mask=1, vocab_size=512, rate=0.15, seed=7)
    chosen = labels != bert.IGNORE
    assert abs(chosen.float().mean().item() - 0.15) < 0.01
    assert torch.equal(labels[chosen], ids[chosen]) and torch.equal(inputs[~chosen], ids[~chosen])
    masked = (inputs == 1) & chosen
    same = (inputs == ids) & chosen
    n = chosen.sum().item()
    assert abs(masked.sum().item() / n - 0.8) < 0.03
    assert abs(same.sum().item() / n - 0.1 - 0.1 * 0.01) < 0.03  # kept, or swapped for itself (1/512 * 10 %)
    again, _ = bert.mask_tokens(ids, mask=1, vocab_size=512, rate=0.15, seed=7)
    other, _ = bert.mask_tokens(ids, mask=1, vocab_size=512, rate=0.15, seed=8)
    assert torch.equal(inputs, again) and not torch.equal(inputs, other)


def test_loss_at_init_is_log_vocab_on_masked_positions(tiny_tokenizer):
    model = _bert(tiny_tokenizer)
    x = torch.from_numpy(_stream(tiny_tokenizer)[: 8 * 64].astype(np.int64)).view(8, 64)
    loss_fn = objective("bert", model.cfg, tiny_tokenizer)
    assert loss_fn is not causal_loss and objective("gpt", None, tiny_tokenizer) is causal_loss
    loss = loss_fn(model.module, x, x, 0).item()
    assert abs(loss - math.log(tiny_tokenizer.vocab_size)) < 0.3, loss
    # the mask is <|pad|>, whose embedding row trains like any other (no padding_idx)
    assert bert.mask_id(tiny_tokenizer) == tiny_tokenizer.pad_id
    assert model.module.bert.embeddings.word_embeddings.padding_idx is None


def test_a_few_steps_lower_the_masked_loss(tiny_tokenizer, tmp_path):
    cfg = families.make_config("bert", "nano", tiny_tokenizer.vocab_size)
    losses: list[float] = []
    tc = TrainConfig(**{**LOOP, "batch_size": 8, "block_size": 64, "max_steps": 40, "save_interval": 1000})
    train("bert", cfg, tiny_tokenizer, _stream(tiny_tokenizer), None, tmp_path / "m", tc,
          on_step=lambda s, loss: losses.append(loss))  # fmt: skip
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    assert last < first - 1.0, (first, last)


def test_save_load_is_the_identity_in_safetensors(tiny_tokenizer, tmp_path):
    model = _bert(tiny_tokenizer)
    checkpoint.save_model_dir(tmp_path / "b", model, tiny_tokenizer, "# tiny bert\n", extra={"fim_rate": 0.0})
    assert (tmp_path / "b" / "model.safetensors").is_file()
    loaded = checkpoint.load_model(tmp_path / "b")
    assert loaded.family == "bert" and loaded.cfg == model.cfg
    ctx = tiny_tokenizer.encode(training_texts(1)[0][:300])
    row = ctx[:40] + [loaded.mask_id] * 3 + ctx[40:60]
    assert torch.equal(model.masked_logprobs([row])[0], loaded.masked_logprobs([row])[0])
    assert torch.equal(model.next_logprobs([ctx]), loaded.next_logprobs([ctx]))
    # the decoder is tied to the embedding, in memory and after loading
    assert (
        loaded.module.cls.predictions.decoder.weight is loaded.module.bert.embeddings.word_embeddings.weight
    )


def test_left_to_right_reading_is_a_proper_next_token_model(tiny_tokenizer):
    model = _bert(tiny_tokenizer)
    ids = tiny_tokenizer.encode(training_texts(1)[1])[:40]
    seq = model.sequence_logprobs(ids)
    assert seq.shape == (39,)
    assert torch.allclose(seq[-1], model.next_logprobs([ids[:39]])[0][ids[39]], atol=1e-5)
    state = model.new_state()
    model.sync(state, ids[:30])
    model.sync(state, ids[:20] + ids[25:35])
    assert torch.allclose(state.last_logprobs, model.next_logprobs([ids[:20] + ids[25:35]])[0], atol=1e-5)


def test_resume_after_a_kill_continues_exactly(tiny_tokenizer, tmp_path):
    cfg = families.make_config("bert", "nano", tiny_tokenizer.vocab_size)
    stream = _stream(tiny_tokenizer)
    tc = dict(LOOP, max_steps=8, save_interval=4)
    full: dict[int, float] = {}
    train("bert", cfg, tiny_tokenizer, stream, None, tmp_path / "a", TrainConfig(**tc),
          on_step=lambda s, loss: full.__setitem__(s, loss))  # fmt: skip

    class Killed(Exception):
        pass

    def kill_at_6(step: int, loss: float) -> None:
        if step == 6:
            raise Killed

    with pytest.raises(Killed):
        train("bert", cfg, tiny_tokenizer, stream, None, tmp_path / "b", TrainConfig(**tc), on_step=kill_at_6)
    resumed: dict[int, float] = {}
    train("bert", cfg, tiny_tokenizer, stream, None, tmp_path / "b", TrainConfig(**tc), resume=True,
          on_step=lambda s, loss: resumed.__setitem__(s, loss))  # fmt: skip
    assert sorted(resumed) == [5, 6, 7, 8]
    for s in resumed:
        assert resumed[s] == pytest.approx(full[s], rel=1e-5, abs=1e-6)


# -- the evaluation system, on a scripted model (the filling logic) and a trained one (the CLI) ------


class Scripted:
    """Stands in for BERTModel: slot distributions chosen by the test."""

    def __init__(self, tok, script):
        self.tokenizer, self.mask_id, self.max_context = tok, tok.pad_id, 64
        self.script = script  # (number of masks in the row, calls so far) -> [{piece text: prob}] per mask
        self.rows: list[list[int]] = []

    def masked_logprobs(self, rows):
        out = []
        for row in rows:
            self.rows.append(row)
            slots = self.script(row.count(self.mask_id), len(self.rows) - 1)
            lp = torch.full((len(slots), self.tokenizer.vocab_size), -30.0)
            for s, dist in enumerate(slots):
                for text, p in dist.items():
                    (piece,) = self.tokenizer.encode(text)
                    lp[s, piece] = math.log(p)
            out.append(lp)
        return out


def _system(tok, script, options="") -> BertSystem:
    return BertSystem(parse_system_spec(f"bert:/nowhere{options}"), model=Scripted(tok, script))


def test_token_task_ranks_whole_tokens_over_slot_counts(tiny_tokenizer):
    tok = tiny_tokenizer
    name = "Balance"
    assert all(len(tok.encode(p)) == 1 for p in (" get", name, " this", "("))  # one piece each

    def script(n, call):
        return {
            1: [{" get": 0.5, " this": 0.4}],  # " get" alone before the suffix: the token "get"
            2: [{" get": 0.9}, {name: 0.9}],  # "get" + name: the whole token spans two pieces
            3: [{" get": 0.9}, {name: 0.5}, {"(": 0.9}],  # the same token, with its end seen
        }[n]

    system = _system(tok, script, ",slots=3,beam=2")
    ranked = system.next_tokens(Context("int y = this.", "\n}\n"), k=5)
    assert ranked[0] == "get" + name and set(ranked[1:]) >= {"get", "this"}
    rows = system.model.rows
    assert [r.count(tok.pad_id) for r in rows] == [1, 2, 3]
    assert all(r[-len(tok.encode("\n}\n")) :] == tok.encode("\n}\n") for r in rows)  # it sees the suffix


def test_line_task_fills_left_to_right_until_the_line_ends(tiny_tokenizer):
    tok = tiny_tokenizer
    pieces = [" 0", ";", "\n"]
    system = _system(tok, lambda n, call: [{pieces[call]: 0.9}] + [{";": 0.5}] * (n - 1), ",ahead=3")
    assert heal("int x =  ") == ("int x = ", " ")
    assert system.complete(Context("int x = ", "\nreturn x;")) == "0;"
    rows = system.model.rows
    assert len(rows) == 3 and all(r.count(tok.pad_id) == 3 for r in rows)  # three masks ahead, every step
    filled = [tok.decode(r[: r.index(tok.pad_id)]) for r in rows]
    assert filled == ["int x =", "int x = 0", "int x = 0;"]


def test_bad_bert_options_are_clear_errors(tiny_tokenizer):
    with pytest.raises(KaffeeError, match="unknown option 'cache'"):
        _system(tiny_tokenizer, None, ",cache=off")
    with pytest.raises(KaffeeError, match="slots must be at least 1"):
        _system(tiny_tokenizer, None, ",slots=0")
    with pytest.raises(KaffeeError, match="not a valid int"):
        _system(tiny_tokenizer, None, ",beam=wide")


def test_cli_trains_bert_and_evaluates_it_with_cost(tiny_tokenizer, tmp_path, capsys):
    from kaffee.cli import main

    corpus = make_corpus(tmp_path / "corpus")
    tiny_tokenizer.save(tmp_path / "tokenizer.json")
    out = tmp_path / "bert"
    argv = ["train", "--family", "bert", "--preset", "nano", "--corpus", str(corpus),
            "--tokenizer", str(tmp_path / "tokenizer.json"), "--out", str(out), "--max-steps", "6",
            "--block-size", "32", "--batch-size", "4", "--num-proc", "1"]  # fmt: skip
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["family"] == "bert" and summary["val_loss"] is not None
    meta = checkpoint.read_meta(out)
    assert meta["family"] == "bert" and meta["fim_rate"] == 0.0  # a masked LM needs no FIM samples
    with pytest.raises(KaffeeError, match="holds a bert model"):
        from kaffee.evaluation.systems import EngineSystem

        EngineSystem(parse_system_spec(f"gpt:{out}"))

    parser = argparse.ArgumentParser(prog="kaffee")
    eval_cli.register(parser.add_subparsers(dest="command"))
    spec = f"bert:{out},slots=2,max_pieces=4,label=bert"
    args = parser.parse_args(["eval", "--corpus", str(corpus), "--system", spec, "--task", "token",
                              "--task", "line", "--limit", "4", "--no-progress", "--out", str(tmp_path / "ev")])  # fmt: skip
    assert int(args.func(args) or 0) == 0, capsys.readouterr().err
    results = json.loads((tmp_path / "ev" / "results.json").read_text())
    metrics = {(r["task"], r["metric"]) for r in results["results"] if r["system"] == "bert"}
    assert {("token", "top1"), ("token", "mrr10"), ("line", "em"), ("line", "edit_sim")} <= metrics
    cost = results["systems"][0]["cost"]
    assert cost["params"] > 0 and cost["disk_mb"] > 0 and set(cost["cpu_ms"]) == {"token", "line"}
    print(results["systems"][0], file=sys.stderr)
