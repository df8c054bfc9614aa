"""`--model DIR` with an ordinary Hugging Face causal-LM directory (models/hf.py).

- The `kaffee export --format hf` of the tiny gpt gives, through the generic transformers path,
  the same greedy suggestions and next tokens as the native fp32 path on fixture positions.
- A randomly initialised `GPT2LMHeadModel` with GPT-2's byte-level BPE (another architecture,
  another pre-tokenizer, FIM tokens under StarCoder's names, logits padded past the vocabulary)
  loads, keeps its KV cache consistent across crops, and answers through the engine, the CLI
  and `kaffee eval --system hf:DIR`.
- A directory that is neither a Kaffee model nor an HF causal LM is a one-line error, exit 1.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from java_samples import ACCOUNT, MAIN, training_texts
from kaffee.errors import KaffeeError
from kaffee.models.checkpoint import load_model, read_meta
from kaffee.models.hf import HFCausalLM, HFTokenizer
from kaffee.server.context import build_prompt
from kaffee.server.engine import CompletionEngine, EngineOptions

transformers = pytest.importorskip("transformers")


def kaffee(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kaffee", *args], capture_output=True, text=True, timeout=300
    )


def _byte_level_bpe(specials: list[str], vocab_size: int = 400):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)  # GPT-2's own split
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator(training_texts(), trainer=trainer)
    return tk


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory) -> Path:
    """A tiny random GPT-2 with its own byte-level BPE, written by save_pretrained (no Kaffee code)."""
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    out = tmp_path_factory.mktemp("hf") / "gpt2"
    tk = _byte_level_bpe(["<|endoftext|>", "<fim_prefix>", "<fim_middle>", "<fim_suffix>"])
    fast = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=tk.get_vocab_size() + 16,  # padded, as real checkpoints often are
        n_positions=256,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=0,
        eos_token_id=0,
    )
    GPT2LMHeadModel(cfg).save_pretrained(out)
    fast.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def exported_dir(tmp_path_factory, tiny_model_dir: Path) -> Path:
    from kaffee.models.export import export_model

    return export_model(tiny_model_dir, "hf", tmp_path_factory.mktemp("hf") / "export")


# -- the exported tiny gpt: same answers as the native path --------------------------------------------

SPOTS = [
    (MAIN, MAIN.index("System.out.") + len("System.out.")),  # after a dot
    (MAIN, MAIN.index("System.out.") + len("System.out.pri")),  # inside a word (token healing)
    (ACCOUNT, ACCOUNT.index("this.balance = balance;")),  # a line start
    (ACCOUNT, ACCOUNT.index("return owner;") + len("return ")),
    (ACCOUNT, ACCOUNT.index("if (amount <= 0) {") + len("if (amount <= 0) {\n")),  # a block
]


def test_exported_gpt_through_hf_gives_the_native_suggestions(
    tiny_model_dir: Path, exported_dir: Path
) -> None:
    options = dict(workspace_cache=False, project_context=False, quantize="none", max_lines=4)
    native = CompletionEngine.from_model_dir(tiny_model_dir, EngineOptions(**options))
    hf = CompletionEngine.from_model_dir(exported_dir, EngineOptions(**options))
    assert isinstance(hf.model, HFCausalLM) and not hf.degraded
    assert hf.model.meta["family"] == "hf" and hf.model.meta["architectures"] == ["LlamaForCausalLM"]
    assert hf.tokenizer.eos_id == native.tokenizer.eos_id and hf.tokenizer.splits_at_newline
    assert hf.tokenizer.special_ids == native.tokenizer.special_ids and hf.model.supports_fim
    for text, cut in SPOTS:
        prefix, suffix = text[:cut], text[cut:]
        want, got = native.complete(prefix, suffix), hf.complete(prefix, suffix)
        assert got.text == want.text and got.stop_reason == want.stop_reason, (prefix[-30:], want, got)
        want_t, got_t = native.next_tokens(prefix, suffix, k=5), hf.next_tokens(prefix, suffix, k=5)
        assert [t.text for t in got_t] == [t.text for t in want_t], (prefix[-30:], want_t, got_t)
        assert [t.logprob for t in got_t] == pytest.approx([t.logprob for t in want_t], abs=1e-3)
    assert native.complete(*_split(MAIN, "System.out.")).text.startswith("println(")


def _split(text: str, after: str) -> tuple[str, str]:
    cut = text.index(after) + len(after)
    return text[:cut], text[cut:]


# -- another architecture and tokenizer ------------------------------------------------------------


def test_gpt2_checkpoint_loads_with_its_own_tokenizer(gpt2_dir: Path) -> None:
    assert read_meta(gpt2_dir)["family"] == "hf"
    model = load_model(gpt2_dir)
    tok = model.tokenizer
    assert isinstance(model, HFCausalLM) and isinstance(tok, HFTokenizer)
    assert model.meta["architectures"] == ["GPT2LMHeadModel"] and model.max_context == 256
    assert model.vocab_size == tok.vocab_size == 400  # the 16 padded logit rows are dropped
    assert tok.eos_id == tok.end_id == 0 and tok.has_fim and model.supports_fim
    assert tok.fim_ids([5], [6]) == [tok.fim_prefix_id, 5, tok.fim_suffix_id, 6, tok.fim_middle_id]
    assert not tok.splits_at_newline  # GPT-2's split keeps "\n" with the indentation after it
    for text in (MAIN, ACCOUNT, "x\r\n\tü 名 😀"):
        assert tok.decode_bytes(tok.encode(text)) == text.encode()
    # the prompt is the whole window encoded at once, as the model was trained on
    prompt = build_prompt(tok, MAIN, "", 200, 0, fim=False, heal=False)
    assert prompt.ids[1:] == tok.encode(MAIN[prompt.window_start :])


def test_kv_cache_reuse_matches_encoding_from_scratch(gpt2_dir: Path) -> None:
    model = load_model(gpt2_dir)
    ids = [model.tokenizer.eos_id, *model.tokenizer.encode(ACCOUNT)][:120]
    state = model.new_state()
    model.advance(state, ids[:70])
    model.crop(state, 40)
    assert state.cache.get_seq_length() == 40 and len(state.ids) == 40
    got = model.advance(state, ids[40:100])
    assert torch.allclose(got, model.next_logprobs([ids[:100]])[0], atol=1e-5)
    assert torch.allclose(model.sync(state, ids[:110]), model.next_logprobs([ids[:110]])[0], atol=1e-5)

    # a cache that cannot be cropped is dropped and the kept ids re-encoded
    def refuse(n: int) -> None:
        raise NotImplementedError("this cache cannot be cropped")

    state.cache.crop = refuse
    model.crop(state, 30)
    assert state.cache is None and len(state.ids) == 30
    assert torch.allclose(model.advance(state, ids[30:50]), model.next_logprobs([ids[:50]])[0], atol=1e-5)
    seq = model.sequence_logprobs(ids[:50])
    assert seq.shape == (49,) and torch.isclose(
        seq[-1], model.next_logprobs([ids[:49]])[0][ids[49]], atol=1e-5
    )


def test_gpt2_checkpoint_answers_through_the_engine(gpt2_dir: Path) -> None:
    eng = CompletionEngine.from_model_dir(gpt2_dir, EngineOptions(workspace_cache=False, max_lines=3))
    assert isinstance(eng.model, HFCausalLM) and not eng.degraded
    prefix, suffix = _split(MAIN, "System.out.")
    first = eng.complete(prefix, suffix)
    assert first.stop_reason in ("newline", "suffix", "eos", "length", "dedent", "block_end")
    assert eng.complete(prefix, suffix).text == first.text  # the cached state gives the same answer
    assert len(eng.next_tokens(prefix, suffix, k=3)) == 3


def test_tokenizers_kaffee_cannot_represent_are_refused(gpt2_dir: Path, tmp_path: Path) -> None:
    import shutil

    from tokenizers import Tokenizer, models, pre_tokenizers

    wordpiece = tmp_path / "wp"
    shutil.copytree(gpt2_dir, wordpiece)
    tk = Tokenizer(models.WordPiece({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.save(str(wordpiece / "tokenizer.json"))
    with pytest.raises(KaffeeError, match="not a byte-level BPE"):
        load_model(wordpiece)
    (wordpiece / "tokenizer.json").unlink()
    with pytest.raises(KaffeeError, match="no tokenizer.json"):
        CompletionEngine.from_model_dir(wordpiece)


# -- the command line ---------------------------------------------------------------------------------


def test_cli_complete_with_an_hf_dir_and_with_junk(gpt2_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "Main.java"
    src.write_text(MAIN)
    line = MAIN[: MAIN.index("System.out.")].count("\n") + 1
    spot = f"{src}:{line}:{len('        System.out.') + 1}"
    out = kaffee("complete", spot, "--model", str(gpt2_dir), "--json", "-k", "3")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["degraded"] is None and len(data["tokens"]) == 3 and "text" in data["completion"]
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "config.json").write_text(json.dumps({"hello": "world"}))
    (junk / "tokenizer.json").write_text("{}")
    (junk / "model.safetensors").write_bytes(b"junk")
    out = kaffee("complete", spot, "--model", str(junk))
    assert out.returncode == 1 and out.stdout == "", out
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "error:" in lines[0] and "neither a Kaffee model" in lines[0], out.stderr


def test_junk_dirs_are_errors_in_the_engine_not_an_ngram(tmp_path: Path) -> None:
    for name, config in [("foreign", {"hello": "world"}), ("family", {"family": "mamba", "config": {}})]:
        d = tmp_path / name
        d.mkdir()
        (d / "config.json").write_text(json.dumps(config))
        with pytest.raises(KaffeeError):
            CompletionEngine.from_model_dir(d)
    with pytest.raises(KaffeeError, match="no config.json"):
        CompletionEngine.from_model_dir(tmp_path)


def test_eval_system_hf_smoke(gpt2_dir: Path, tmp_path: Path, capsys) -> None:
    from eval_fixtures import make_corpus
    from kaffee.evaluation import cli as eval_cli
    from kaffee.evaluation.report import load_results

    corpus = make_corpus(tmp_path / "corpus")
    parser = argparse.ArgumentParser(prog="kaffee")
    eval_cli.register(parser.add_subparsers(dest="command"))
    spec = f"hf:{gpt2_dir},cache=off"
    argv = ["eval", "--corpus", str(corpus), "--system", spec, "--task", "token,line,bpc"]
    argv += ["--limit", "4", "--seed", "1", "--out", str(tmp_path / "run"), "--no-progress"]
    args = parser.parse_args(argv)
    assert int(args.func(args) or 0) == 0
    data = load_results(tmp_path / "run")
    rows = {(r["task"], r["metric"]) for r in data["results"] if r["system"] == spec and r["slice"] == "all"}
    assert {("token", "top1"), ("bpc", "bpc")} <= rows and any(t == "line" for t, _ in rows), rows
    assert not data["problems"], data["problems"]


@pytest.mark.asyncio
async def test_lsp_server_with_an_hf_dir_answers_inline(exported_dir: Path) -> None:
    pytest.importorskip("pytest_lsp")
    from test_lsp import CURSOR, SOURCE, inline, open_doc, start, stop

    client = await start(exported_dir, {"deadlineMs": 30_000, "device": "cpu"})
    try:
        uri = open_doc(client, "Hf.java", SOURCE)
        result = await inline(client, uri, CURSOR)
        assert len(result.items) == 1 and result.items[0].insert_text.startswith("println("), result
        assert not any("n-gram" in m.message for m in client.messages), client.messages
    finally:
        await stop(client)


def test_finetuning_an_hf_checkpoint_is_a_clear_refusal(gpt2_dir: Path, tmp_path: Path) -> None:
    from kaffee.training.data import DataConfig
    from kaffee.training.run import run_finetune
    from kaffee.training.trainer import TrainConfig

    with pytest.raises(KaffeeError, match="served as it is"):
        run_finetune(gpt2_dir, tmp_path / "code", tmp_path / "out", TrainConfig(), DataConfig())
