"""bench/architectures.py and bench/plot_architectures.py at a microscopic budget on the fixture corpus.

Every family is trained for two steps and all are evaluated on the same three positions per
task; ``kaffee`` runs in this process (the bench's subprocess call swapped for ``cli.main``),
so torch is imported once.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from eval_fixtures import make_corpus

BENCH = Path(__file__).resolve().parent.parent / "bench"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_every_family_trains_and_is_scored_on_the_same_positions(tiny_tokenizer, tmp_path, monkeypatch):
    from kaffee.cli import main as kaffee_main

    arch, plot = _load("architectures"), _load("plot_architectures")
    calls = []

    def in_process(*args: str) -> None:
        calls.append(args[0])
        assert kaffee_main(list(args)) == 0, args

    monkeypatch.setattr(arch, "kaffee", in_process)
    corpus = make_corpus(tmp_path / "corpus")
    tiny_tokenizer.save(tmp_path / "tokenizer.json")
    out = tmp_path / "arch"
    argv = ["architectures.py", "--corpus", str(corpus), "--eval-corpus", str(corpus),
            "--tokenizer", str(tmp_path / "tokenizer.json"), "--budgets", "1", "--preset", "nano",
            "--max-docs", "50", "--max-steps", "2", "--limit", "3", "--out", str(out),
            "--train-args", "--batch-size 2 --block-size 32 --num-proc 1"]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    assert arch.main() == 0
    assert calls == ["train"] * 5 + ["eval"]  # n-gram, lstm, gru, gpt, bert, then one evaluation
    assert (out / "architectures.md").is_file()

    rows = plot.load_runs([out])
    assert [r["system"] for r in rows] == ["ngram", "lstm-1min", "gru-1min", "gpt-1min", "bert-1min"]
    for r in rows:
        assert r["top1"]["n"] == 3 and r["edit_sim"]["n"] == 3, r["system"]
        assert r["params_m"] > 0 and r["cpu_ms_token"] is not None and r["train_tokens"]
    assert {r["steps"] for r in rows if r["family"] != "ngram"} == {2}
    gru = json.loads((out / "models" / "gru-1min" / "config.json").read_text())
    assert gru["config"]["cell"] == "gru"

    table = plot.tables(rows)
    assert table.count("| bert-1min |") == 3  # quality, categories, cost
    for png in plot.plots(rows, tmp_path / "img"):
        assert 0 < png.stat().st_size < 200_000

    # a run scored on other positions is refused, not merged
    other = tmp_path / "other"
    (other / "eval").mkdir(parents=True)
    (other / "eval" / "results.json").write_text((out / "eval" / "results.json").read_text())
    predictions = (out / "eval" / "predictions.jsonl").read_text()
    moved = json.loads(predictions.splitlines()[0])["k"].rsplit("|", 1)[1]  # one position id, elsewhere
    (other / "eval" / "predictions.jsonl").write_text(predictions.replace(f'|{moved}"', '|elsewhere:0"'))
    (other / "models").symlink_to(out / "models")
    with pytest.raises(SystemExit, match="not the same positions"):
        plot.load_runs([out, other])
