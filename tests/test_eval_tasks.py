"""Tasks: the lexer they count in, seeded positions, and oracle / random sanity checks."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from eval_fixtures import GREETER, TEST_FILES, OracleSystem, RandomSystem, make_corpus
from kaffee.errors import KaffeeError
from kaffee.evaluation.harness import load_held_out
from kaffee.evaluation.lexer import (
    IDENTIFIER,
    KEYWORD,
    LITERAL,
    MEMBER,
    METHOD_CALL,
    OPERATOR,
    TYPE,
    code_lines,
    lex,
)
from kaffee.evaluation.system_base import Context
from kaffee.evaluation.systems import model_bits
from kaffee.evaluation.task_codexglue import detokenize, prediction_tokens, read_codexglue_file
from kaffee.evaluation.tasks import TASKS, get_task

CXG_FIXTURE = Path(__file__).parent / "fixtures" / "codexglue_line_sample.jsonl"


@pytest.fixture(scope="module")
def held(tmp_path_factory):
    return load_held_out(make_corpus(tmp_path_factory.mktemp("corpus") / "c"))


# -- lexer ---------------------------------------------------------------------------------------------------------


def test_lexer_kinds_and_whole_literals():
    toks = lex(GREETER)
    by_text = {t.text: t for t in toks}
    assert by_text['"Grüß dich, %s!"'].kind == LITERAL  # one token, not quote + fragment + quote
    assert by_text["'!'"].kind == LITERAL
    assert by_text["0x1F"].kind == LITERAL
    assert any(t.text.startswith('"""') and t.kind == LITERAL and t.end_line > t.line for t in toks)
    assert (
        by_text["class"].kind == KEYWORD
        and by_text["void" if "void" in by_text else "return"].kind == KEYWORD
    )
    assert by_text["Greeter"].kind == IDENTIFIER
    assert by_text["->"].kind == OPERATOR
    members = {t.text for t in toks if t.kind == MEMBER}
    assert {"stream", "map", "toList", "format", "strip"} <= members
    assert not any("Greets" in t.text or "greeting" in t.text for t in toks)  # comments are not tokens
    for t in toks:  # character offsets, also after non-ASCII text
        assert GREETER[t.start : t.end] == t.text
    calls = {t.text for t in toks if t.category == METHOD_CALL}
    assert {"stream", "map", "toList", "format", "strip"} <= calls and "Greeter" not in calls
    types = {t.text for t in toks if t.category == TYPE}
    assert "String" in types and not types & calls


def test_code_lines_skip_headers_comments_and_multiline_tokens():
    toks = lex(GREETER)
    lines = {c.line for c in code_lines(toks)}
    text_lines = GREETER.split("\n")
    for n in lines:
        s = text_lines[n].strip()
        assert not s.startswith(("package", "import", "/**", "*", "//"))
    banner = next(i for i, s in enumerate(text_lines) if "String text" in s)
    assert banner not in lines  # the text block starts there
    assert any("HELLO =" in text_lines[n] for n in lines)  # trailing comment does not exclude a line


# -- positions ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["token", "line", "typing", "bpc"])
def test_same_seed_same_positions(held, name):
    task = get_task(name)
    a = task.positions(held, seed=7, limit=15)
    b = get_task(name).positions(held, seed=7, limit=15)
    assert [p.id for p in a] == [p.id for p in b]
    assert len(a) == min(15, len(held.files) if name == "bpc" else 15)
    if name != "bpc":
        c = task.positions(held, seed=8, limit=15)
        assert [p.id for p in a] != [p.id for p in c]
    everything = task.positions(held, seed=7, limit=None)
    if name == "line":  # a limited run samples a subset of the lines (the cut in each is drawn per line)
        assert {(p.file, p.data["line"]) for p in a} <= {(p.file, p.data["line"]) for p in everything}
    else:
        assert {p.id for p in a} <= {p.id for p in everything}


def test_token_positions_cover_every_token(held):
    positions = get_task("token").positions(held, seed=0, limit=None)
    assert len(positions) == sum(len(lex(f.text)) for f in held.files)
    for p in positions[:200]:
        text = held.files[p.file].text
        assert text[p.data["offset"] :].startswith(p.data["target"])


def test_line_positions_are_inside_code_lines(held):
    for p in get_task("line").positions(held, seed=3, limit=40):
        text = held.files[p.file].text
        off = p.data["offset"]
        line_start = text.rfind("\n", 0, off) + 1
        line_end = text.find("\n", off)
        line = text[line_start:line_end]
        assert not line.strip().startswith(("import", "package", "//", "*"))
        assert text[line_start:off].strip(), "the cursor is after at least one token of the line"
        assert p.data["target"] and text[off:line_end].startswith(p.data["target"])
        assert "//" not in p.data["target"]


# -- oracle and random ---------------------------------------------------------------------------------------------


def _score(task_name, system, held, limit=60, **options):
    task = get_task(task_name, **options)
    positions = task.positions(held, seed=0, limit=limit)
    outputs = []
    for p in positions:
        if p.file >= 0:
            f = held.files[p.file]
            system.begin_file(f.project, f.path, held.workspace(p.file))
        outputs.append(task.predict(system, held, p))
    rows = task.aggregate(positions, outputs, seed=0).rows
    return {r.metric: r.estimate.value for r in rows if r.slice == "all"}


def test_oracle_scores_100_and_random_near_0(held):
    oracle, rnd = OracleSystem(), RandomSystem()
    tok = _score("token", oracle, held)
    assert tok == {"top1": 100.0, "top5": 100.0, "mrr10": 100.0}
    line = _score("line", oracle, held)
    assert all(v == 100.0 for v in line.values()), line
    tok_r = _score("token", rnd, held)
    assert tok_r["top1"] <= 5.0 and tok_r["mrr10"] <= 10.0
    line_r = _score("line", rnd, held)
    assert line_r["em"] == 0.0 and line_r["edit_sim"] < 40.0
    typing = _score("typing", oracle, held, limit=10)
    assert typing["keystrokes_saved"] > 80.0 and typing["accepted"] > 90.0
    assert _score("typing", rnd, held, limit=10)["keystrokes_saved"] < 5.0


# -- codexglue-line --------------------------------------------------------------------------------------------------


class _CxgOracle(OracleSystem):
    """Answers CodeXGLUE examples from their ground truth (literals restored to code)."""

    def __init__(self):
        from kaffee.evaluation.task_codexglue import restore_literal

        rows = read_codexglue_file(CXG_FIXTURE)
        self.answers = {
            detokenize(r["input"]): " ".join(restore_literal(t) for t in r["gt"].split()) for r in rows
        }

    def complete(self, ctx: Context) -> str:
        return self.answers[ctx.prefix]


def test_codexglue_line_oracle_and_random():
    options = {"codexglue_file": str(CXG_FIXTURE)}
    scores = _score("codexglue-line", _CxgOracle(), None, limit=None, **options)
    assert scores == {"em": 100.0, "edit_sim": 100.0}
    scores = _score("codexglue-line", RandomSystem(), None, limit=None, **options)
    assert scores["em"] == 0.0 and scores["edit_sim"] < 50


def test_codexglue_detokenize_and_retokenize():
    rows = read_codexglue_file(CXG_FIXTURE)
    code = detokenize(rows[0]["input"])
    assert code.startswith("package com.example.bank;\n")
    assert "<STR_LIT" not in code and "<NUM_LIT" not in code and "<s>" not in code
    assert "if (amount <= 0) {" in code
    assert code.rstrip().endswith("history.")
    assert prediction_tokens('add("deposit " + amount);\nfoo') == 'add ( "depositU+0020" + amount ) ;'


def test_codexglue_bad_files(tmp_path):
    with pytest.raises(KaffeeError, match="no file"):
        read_codexglue_file(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"input": "<s> a"}\n')
    with pytest.raises(KaffeeError, match="'input' and 'gt'"):
        read_codexglue_file(bad)
    bad.write_text("not json\n")
    with pytest.raises(KaffeeError, match="not a JSON line"):
        read_codexglue_file(bad)
    with pytest.raises(KaffeeError, match="--codexglue-file"):
        get_task("codexglue-line").positions(None, 0, None)


# -- registry ----------------------------------------------------------------------------------------------------------


def test_unknown_task_lists_available():
    with pytest.raises(KaffeeError) as err:
        get_task("tokn")
    msg = str(err.value)
    assert "did you mean 'token'" in msg
    for name in TASKS:
        assert name in msg


# -- bits per character -------------------------------------------------------------------------------------------------


def test_bits_per_character_with_windows(tiny_ngram_dir, tiny_tokenizer):
    import torch
    from kaffee.models import families
    from kaffee.models.checkpoint import load_model

    text = TEST_FILES[("bank", "src/Account.java")]
    ngram = load_model(tiny_ngram_dir)
    full = model_bits(ngram, text)
    n_tokens = len(ngram.tokenizer.encode(text))
    uniform = n_tokens * math.log2(ngram.vocab_size)
    assert 0 < full < uniform / 2
    # the n-gram sees 2 tokens back: windows of 8 tokens (4 kept) must give the same total
    assert model_bits(ngram, text, window=8) == pytest.approx(full, rel=1e-5)
    torch.manual_seed(0)  # an untrained nano GPT is enough to check the windowing
    cfg = families.make_config("gpt", "nano", tiny_tokenizer.vocab_size)
    gpt = families.wrap("gpt", cfg, families.build_module("gpt", cfg))
    gpt.tokenizer = tiny_tokenizer
    short = "public class A { int x; }"
    assert model_bits(gpt, short, window=64) == pytest.approx(model_bits(gpt, short), rel=1e-4)
    windowed = model_bits(gpt, text, window=32)  # Account.java is longer than 32 tokens
    assert 0.9 * uniform < windowed < 1.1 * uniform  # untrained: about log2(V) bits per token


def test_results_of_json_roundtrip(held):
    # predictions are cached as JSON: every task's output must survive a round trip
    oracle = OracleSystem()
    for name in ("token", "line", "typing"):
        task = get_task(name)
        p = task.positions(held, seed=0, limit=1)[0]
        out = task.predict(oracle, held, p)
        assert json.loads(json.dumps(out)) == out


@pytest.mark.parametrize("name", ["token", "line", "typing"])
def test_two_stage_sampling_on_big_splits(held, monkeypatch, name):
    """Above EXACT_SAMPLING_CHARS a quick run lexes only the files it draws; still seeded and valid."""
    from kaffee.evaluation import task_base

    monkeypatch.setattr(task_base, "EXACT_SAMPLING_CHARS", 0)
    a = get_task(name).positions(held, seed=5, limit=12)
    b = get_task(name).positions(held, seed=5, limit=12)
    assert [p.id for p in a] == [p.id for p in b]
    assert len({p.id for p in a}) == 12
    assert [p.file for p in a] == sorted(p.file for p in a)  # grouped by file
    for p in a:
        text = held.files[p.file].text
        if name == "token":
            assert text[p.data["offset"] :].startswith(p.data["target"])
        elif name == "line":
            assert p.data["target"] and text[p.data["offset"] :].startswith(p.data["target"])
