"""The completion engine with the tiny models: answers, stop rules, reuse, speed paths, degradation."""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kaffee.errors import KaffeeError
from kaffee.models.checkpoint import load_model
from kaffee.server.cache import CacheConfig
from kaffee.server.engine import CompletionEngine, EngineOptions
from kaffee.server.fastgpt import FastGPT
from kaffee.server.java_tokens import unclosed_openers

MAIN = """package com.example.bank;

public class Main {
    public static void main(String[] args) {
        Account account = new Account("alice", 100);
        account.deposit(50);
        System.out."""
AFTER = "\n    }\n}\n"

# fp32, no drafts, no reuse, no cache: the plain greedy path, comparable to `generate`
PLAIN = dict(quantize="none", speculate=0, reuse_previous=False, workspace_cache=False)


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> CompletionEngine:
    return CompletionEngine.from_model_dir(tiny_model_dir, EngineOptions(workspace_cache=False))


def test_rest_of_the_line(engine: CompletionEngine) -> None:
    c = engine.complete(MAIN, AFTER)
    assert c.text.startswith("println(") and c.text.endswith(";")
    assert "\n" not in c.text and c.stop_reason == "newline" and c.tokens > 0 and c.elapsed_ms >= 0


def test_next_tokens_are_whole_tokens(engine: CompletionEngine) -> None:
    toks = engine.next_tokens(MAIN, AFTER, k=5)
    assert toks[0].text == "println" and not toks[0].attached
    assert len(toks) == 5 and [t.logprob for t in toks] == sorted((t.logprob for t in toks), reverse=True)
    assert all(t.text == t.text.strip() and t.text for t in toks)
    inside = engine.next_tokens(MAIN + "pri", AFTER, k=3)
    assert inside[0].text == "println" and inside[0].attached
    after_word = engine.next_tokens(MAIN + "println", AFTER, k=3)
    assert after_word[0].text == "(" and not after_word[0].attached


def test_suffix_overlap_and_existing_closer(engine: CompletionEngine) -> None:
    prefix = MAIN + "println("
    c = engine.complete(prefix, ");" + AFTER)
    assert unclosed_openers("(" + c.text) == ["("] and not c.text.endswith(";"), (
        c.text
    )  # ");" is already there
    c2 = engine.complete(MAIN, "println(account);" + AFTER)
    assert "println(account);" not in c2.text


def test_block_after_an_opening_brace(tiny_model_dir: Path) -> None:
    eng = CompletionEngine.from_model_dir(tiny_model_dir, EngineOptions(workspace_cache=False, max_lines=4))
    prefix = "public class Account {\n    private long balance;\n\n    public long getBalance() {\n        "
    closed = eng.complete(prefix, "\n    }\n}\n")
    assert closed.text.strip() and not closed.text.rstrip().endswith("}"), closed
    assert len(closed.text.split("\n")) <= 4
    open_ = eng.complete(prefix, "\n")
    if open_.stop_reason == "block_end":
        assert open_.text.rstrip().endswith("}")
    one = eng.complete(prefix, "\n    }\n}\n", max_lines=1)
    assert "\n" not in one.text


def test_block_keeps_tab_indentation(tiny_model_dir: Path) -> None:
    eng = CompletionEngine.from_model_dir(tiny_model_dir, EngineOptions(workspace_cache=False, max_lines=6))
    prefix = "public class Account {\n\tprivate long balance;\n\n\tpublic void deposit(long amount) {\n\t\t"
    c = eng.complete(prefix, "\n")
    for line in c.text.split("\n")[1:]:
        assert not line.startswith(" "), c.text


def test_reencodes_only_the_changed_tail(tiny_model_dir: Path) -> None:
    eng = CompletionEngine.from_model_dir(tiny_model_dir, EngineOptions(**PLAIN))
    first = eng.complete(MAIN, AFTER)
    cold = eng.tokens_advanced
    assert cold >= 40  # the whole prompt went through the model once
    typed = MAIN + "p"
    before = eng.tokens_advanced
    second = eng.complete(typed, AFTER)
    warm = eng.tokens_advanced - before
    # re-encoded: the healed last word (a couple of pieces) plus one step per generated token
    assert warm <= second.tokens + 3, (warm, second.tokens)
    assert first.text.startswith("p") and second.text == first.text[1:]


def test_typing_through_a_suggestion_reuses_it(tiny_model_dir: Path) -> None:
    eng = CompletionEngine.from_model_dir(tiny_model_dir, EngineOptions(workspace_cache=False))
    first = eng.complete(MAIN, AFTER)
    before = eng.tokens_advanced
    again = eng.complete(MAIN + first.text[:3], AFTER)
    assert again.text == first.text[3:] and again.stop_reason == "reuse" and eng.tokens_advanced == before
    other = eng.complete(MAIN + "x", AFTER)
    assert other.stop_reason != "reuse"


@pytest.mark.parametrize("quantize", ["none", "int8"])
def test_speculation_does_not_change_plain_greedy(tiny_model_dir: Path, quantize: str) -> None:
    options = {**PLAIN, "quantize": quantize}
    plain = CompletionEngine.from_model_dir(tiny_model_dir, EngineOptions(**options))
    spec = CompletionEngine.from_model_dir(tiny_model_dir, EngineOptions(**{**options, "speculate": 8}))
    assert plain.model.quantize == spec.model.quantize == quantize
    naive = CompletionEngine.from_model_dir(
        tiny_model_dir, EngineOptions(**{**options, "naive": True, "token_healing": False})
    )
    nohealing = CompletionEngine.from_model_dir(
        tiny_model_dir, EngineOptions(**{**options, "token_healing": False})
    )
    prefixes = [
        MAIN,
        MAIN + "println(",
        "public class TodoList {\n    private final List<String> items = new ",
    ]
    for p in prefixes:
        assert spec.complete(p, AFTER).text == plain.complete(p, AFTER).text
        assert naive.complete(p, AFTER).text == nohealing.complete(p, AFTER).text
    assert spec.stats.drafted > 0 and spec.stats.accepted > 0


def test_fast_decoder_matches_transformers(tiny_model_dir: Path) -> None:
    model = load_model(tiny_model_dir)
    fast = FastGPT.from_gpt(model)
    ids = model.tokenizer.encode(MAIN)
    ref_state, state = model.new_state(), fast.new_state()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert torch.allclose(model.advance(ref_state, ids[:30]), fast.advance(state, ids[:30]), atol=1e-4)
        rows = fast.advance_all(state, ids[30:36])
        ref = torch.stack([model.advance(ref_state, [i]) for i in ids[30:36]])
    # the KV cache goes by its current name: no deprecation notice from transformers
    assert not [w for w in caught if "past_key_values" in str(w.message)]
    assert torch.allclose(rows, ref, atol=1e-4)
    branches = [[5, 6], [7], [8, 9, 10]]
    got = fast.branch_logprobs(state, branches)
    assert len(state.ids) == 36
    for b, row in zip(branches, got, strict=True):
        assert torch.allclose(row, model.advance(model.new_state(), ids[:36] + b), atol=1e-4)
    fast.crop(state, 10)
    assert torch.allclose(
        fast.advance(state, ids[10:12]), model.advance(model.new_state(), ids[:12]), atol=1e-4
    )


def test_rms_eps_comes_from_the_config(tiny_model_dir: Path, tmp_path: Path) -> None:
    assert FastGPT.load(tiny_model_dir).eps == 1e-6  # the default, saved into config.json
    other = tmp_path / "eps"
    shutil.copytree(tiny_model_dir, other)
    meta = json.loads((other / "config.json").read_text())
    meta["config"]["rms_norm_eps"] = 0.5  # large enough to change every output
    (other / "config.json").write_text(json.dumps(meta))
    fast, ref = FastGPT.load(other), load_model(other)
    assert fast.eps == ref.module.config.rms_norm_eps == 0.5
    ids = ref.tokenizer.encode(MAIN)
    got = fast.advance(fast.new_state(), ids)
    assert torch.allclose(got, ref.advance(ref.new_state(), ids), atol=1e-4)
    base = FastGPT.load(tiny_model_dir)
    assert not torch.allclose(got, base.advance(base.new_state(), ids), atol=1e-2)


def test_deadline_and_cancel(engine: CompletionEngine) -> None:
    c = engine.complete(MAIN + "ac", AFTER, deadline=time.monotonic() - 1)
    assert c.stop_reason == "deadline" and c.text == ""
    cancel = threading.Event()
    cancel.set()
    assert engine.complete(MAIN + "acc", AFTER, cancel=cancel).stop_reason == "cancelled"
    assert engine.next_tokens(MAIN, AFTER, cancel=cancel) == []


def test_cancel_stops_between_steps(tiny_model_dir: Path) -> None:
    eng = CompletionEngine.from_model_dir(
        tiny_model_dir, EngineOptions(workspace_cache=False, step_delay_ms=200, speculate=0)
    )
    cancel = threading.Event()
    threading.Timer(0.5, cancel.set).start()
    t0 = time.monotonic()
    c = eng.complete(MAIN, AFTER, cancel=cancel)
    assert c.stop_reason == "cancelled" and time.monotonic() - t0 < 1.5


def test_concurrent_calls_are_serialised(engine: CompletionEngine) -> None:
    expected = engine.complete(MAIN + "print", AFTER).text
    results: list[str] = []

    def run() -> None:
        results.append(engine.complete(MAIN + "print", AFTER).text)
        engine.next_tokens(MAIN, AFTER)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [expected] * 4


def test_workspace_cache_lifts_project_identifiers(tiny_model_dir: Path) -> None:
    prefix = "public class Shop {\n    void run() {\n        cart.frobnicate"
    workspace = {
        "file:///ws/Cart.java": "class Cart {\n" + "        cart.frobnicateWidget(cart);\n" * 30 + "}\n"
    }
    without = CompletionEngine.from_model_dir(tiny_model_dir, EngineOptions(workspace_cache=False))
    strong = CacheConfig(mixture="capped", max_weight=1.0, documents=True)  # the mechanism at full strength
    with_cache = CompletionEngine.from_model_dir(
        tiny_model_dir, EngineOptions(workspace_cache=True, cache=strong)
    )
    with_cache.set_workspace_files(workspace)
    with_cache.cache.refresh(wait=True)
    assert not with_cache.cache.empty
    assert with_cache.complete(prefix, AFTER).text.startswith("Widget(")
    assert not without.complete(prefix, AFTER).text.startswith("Widget(")
    with_cache.update_document("file:///ws/Shop.java", prefix)
    with_cache.cache.refresh(wait=True)
    with_cache.remove_document("file:///ws/Shop.java")


@pytest.mark.parametrize("family", ["lstm", "ngram"])
def test_other_families_answer(family: str, tiny_lstm_dir: Path, tiny_ngram_dir: Path) -> None:
    eng = CompletionEngine.from_model_dir(tiny_lstm_dir if family == "lstm" else tiny_ngram_dir)
    assert eng.model.family == family and not eng.degraded
    c = eng.complete(MAIN, AFTER)
    assert c.text and "\n" not in c.text and c.stop_reason in ("newline", "length"), c
    toks = eng.next_tokens(MAIN, AFTER, k=3)
    assert len(toks) == 3 and [t.logprob for t in toks] == sorted((t.logprob for t in toks), reverse=True)
    if family == "ngram":  # counted over the samples MAIN comes from; the tiny LSTM is too weak to know
        assert c.text.startswith("println(") and toks[0].text == "println", (c, toks)


def test_a_model_that_fails_to_load_degrades_to_ngram(tiny_model_dir: Path, tmp_path: Path, caplog) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "model.safetensors").write_bytes(b"not safetensors at all")
    with caplog.at_level(logging.ERROR):
        eng = CompletionEngine.from_model_dir(broken, EngineOptions(workspace_cache=False))
    assert eng.degraded and "cannot load" in eng.stats.fallback_reason
    assert sum("n-gram" in r.getMessage() for r in caplog.records) == 1
    eng.set_workspace_files({"file:///ws/Main.java": MAIN + "println(account);\n" + AFTER})
    eng.cache.refresh(wait=True)
    assert eng.complete(MAIN, AFTER).text.startswith("println")
    assert eng.next_tokens(MAIN, AFTER)[0].text == "println"
    with pytest.raises(KaffeeError):
        CompletionEngine.from_model_dir(tmp_path / "nothing-here")


def test_a_model_that_raises_degrades_once(tiny_model_dir: Path, caplog) -> None:
    eng = CompletionEngine.from_model_dir(
        tiny_model_dir, EngineOptions(workspace_cache=False, reuse_previous=False)
    )

    def boom(*args, **kwargs):
        raise RuntimeError("simulated kernel failure")

    eng.model.advance = boom
    eng.model.advance_all = boom
    with caplog.at_level(logging.ERROR):
        first = eng.complete(MAIN, AFTER)
        second = eng.complete(MAIN + "p", AFTER)
        toks = eng.next_tokens(MAIN, AFTER)
    assert eng.degraded and "simulated kernel failure" in eng.stats.fallback_reason
    # the n-gram fallback is counted over the text it has seen (the document), so it answers from it
    assert eng.model.family == "ngram" and first.text and second.text and toks
    assert all(t.text in MAIN for t in toks), toks
    assert sum("n-gram" in r.getMessage() for r in caplog.records) == 1


_nasty = st.lists(
    st.sampled_from(list("ab(){};. \n\t\"'/*😀é\x00\ufffd") + ["System.out.", "return "]), max_size=40
).map("".join)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_nasty, _nasty, st.integers(1, 5))
def test_engine_never_fails_on_odd_text(
    engine: CompletionEngine, prefix: str, suffix: str, max_lines: int
) -> None:
    c = engine.complete(prefix, suffix, max_lines=max_lines)
    assert len(c.text.split("\n")) <= max_lines and c.stop_reason != "error", c
    for t in engine.next_tokens(prefix, suffix, k=3):
        assert t.text and t.text == t.text.lstrip()


def test_options_are_validated() -> None:
    with pytest.raises(KaffeeError):
        EngineOptions(max_lines=0)
    with pytest.raises(KaffeeError):
        EngineOptions(quantize="int4")


@pytest.mark.parametrize("fast", [True, False])
def test_runner_sync_reencodes_only_the_edit_and_matches_a_full_recompute(tiny_model_dir: Path, fast: bool):
    """The engine's counting Runner.sync (what production runs) keeps the common prefix."""
    from kaffee.server.decode import Runner

    model = FastGPT.load(tiny_model_dir) if fast else load_model(tiny_model_dir)
    ids = model.tokenizer.encode("public class A { int x = 1; void f() { x += 2; } }" * 3)[:60]
    runner = Runner(model)
    state = model.new_state()
    runner.sync(state, ids[:50])
    assert runner.tokens_advanced == 50
    edited = ids[:40] + ids[45:58]
    lp = runner.sync(state, edited)
    assert runner.tokens_advanced == 50 + (len(edited) - 40)  # cropped to the 40 common ids
    assert runner.sync(state, edited) is lp and runner.tokens_advanced == 50 + len(edited) - 40  # cached
    assert torch.allclose(lp, load_model(tiny_model_dir).next_logprobs([edited])[0], atol=1e-4)


def test_lazy_tensors_read_the_same_weights_one_by_one(tiny_model_dir: Path):
    from kaffee.models.checkpoint import load_tensors

    eager = load_tensors(tiny_model_dir)
    lazy = load_tensors(tiny_model_dir, lazy=True)
    assert set(lazy) == set(eager) and len(lazy) == len(eager)
    name = next(iter(eager))
    assert torch.equal(lazy[name], eager[name]) and torch.equal(lazy.pop(name), eager[name])
    assert name not in lazy and len(lazy) == len(eager) - 1
    with pytest.raises(KeyError):
        lazy[name]
