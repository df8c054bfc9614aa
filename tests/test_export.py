"""`kaffee export`: Hugging Face and GGUF exports of a tiny gpt model, checked against Kaffee.

- hf: transformers' Auto classes load the directory with no Kaffee code and compute the
  same logits as ``checkpoint.load_model``; AutoTokenizer encodes like Kaffee's tokenizer.
- gguf: GGUFReader reads back the metadata, vocabulary and tensors; a numpy forward pass in
  llama.cpp's conventions (interleaved RoPE pairs, token_embd as the head when tied) over the
  file's tensors gives Kaffee's logits, which checks the Q/K permutation; GPT-2's
  pre-tokenizer (what the file declares) splits Java like Kaffee's.
- When llama-cpp-python is installed, llama.cpp greedily continues prompts like Kaffee.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_tiny_model_dir
from java_samples import SAMPLES
from kaffee.cli import main
from kaffee.errors import KaffeeError
from kaffee.models import checkpoint, families
from kaffee.models.checkpoint import load_model
from kaffee.models.export import export_model, llama_permute

ROOT = Path(__file__).resolve().parent.parent
TEXTS = [*SAMPLES.values(), (ROOT / "examples" / "Bank.java").read_text()]

gguf = pytest.importorskip("gguf")


@pytest.fixture(scope="module")
def untied_model_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    """An untrained nano gpt with a separate output head (the other layout a gpt can have)."""
    cfg = families.make_config("gpt", "nano", tiny_tokenizer.vocab_size, tie_embeddings=False)
    torch.manual_seed(1)
    model = families.wrap("gpt", cfg, families.build_module("gpt", cfg))
    out = tmp_path_factory.mktemp("models") / "untied"
    checkpoint.save_model_dir(out, model, tiny_tokenizer, "# untied test model\n")
    return out


@pytest.fixture(scope="module")
def lstm_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    # untrained: a refusal reads only config.json (the shared fixture spends minutes overfitting)
    return make_tiny_model_dir(
        tmp_path_factory.mktemp("models") / "lstm", "lstm", tiny_tokenizer, train=False
    )


@pytest.fixture(scope="module", params=["tied", "untied"])
def gpt_dir(request, tiny_model_dir: Path, untied_model_dir: Path) -> Path:
    return tiny_model_dir if request.param == "tied" else untied_model_dir


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory, gpt_dir: Path) -> Path:
    return export_model(gpt_dir, "hf", tmp_path_factory.mktemp("hf") / "out")


@pytest.fixture(scope="module")
def gguf_f32(tmp_path_factory, gpt_dir: Path) -> Path:
    return export_model(gpt_dir, "gguf", tmp_path_factory.mktemp("gguf") / "model.gguf", dtype="f32")


def _prompt(model, n: int = 200) -> list[int]:
    tok = model.tokenizer
    return [tok.eos_id, *tok.encode(TEXTS[0])][:n]


# -- hf -------------------------------------------------------------------------------------------


def test_hf_export_loads_with_auto_classes_and_gives_kaffee_logits(gpt_dir: Path, hf_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    kaffee = load_model(gpt_dir)
    hf = AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    assert type(hf).__name__ == "LlamaForCausalLM"
    assert hf.dtype == torch.float32
    x = torch.tensor([_prompt(kaffee)])
    with torch.inference_mode():
        want = kaffee.module(input_ids=x).logits
        got = hf(input_ids=x).logits
    assert got.shape == want.shape
    assert (got - want).abs().max().item() <= 1e-5
    config = json.loads((hf_dir / "config.json").read_text())
    assert config["eos_token_id"] == kaffee.tokenizer.eos_id
    assert config["tie_word_embeddings"] == kaffee.cfg.tie_embeddings
    assert config["max_position_embeddings"] == kaffee.cfg.block_size


def test_hf_tokenizer_encodes_like_kaffee_and_knows_special_tokens(gpt_dir: Path, hf_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = load_model(gpt_dir).tokenizer
    at = AutoTokenizer.from_pretrained(hf_dir)
    for text in TEXTS:
        ids = at(text)["input_ids"]  # add_special_tokens on, as servers call it: nothing is added
        assert ids == tok.encode(text)
        assert at.decode(ids) == text
    assert (at.eos_token, at.eos_token_id) == ("<|endoftext|>", tok.eos_id)
    assert at.bos_token_id == tok.eos_id and at.pad_token_id == tok.pad_id
    fim = ["<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"]
    assert at.convert_tokens_to_ids(fim) == [tok.fim_prefix_id, tok.fim_suffix_id, tok.fim_middle_id]
    assert set(fim) <= set(at.all_special_tokens)
    # written in text, a FIM token is one id, not split into pieces
    assert at("<|fim_prefix|>int x<|fim_suffix|>")["input_ids"] == [
        tok.fim_prefix_id,
        *tok.encode("int x"),
        tok.fim_suffix_id,
    ]
    assert at.model_max_length == load_model(gpt_dir).cfg.block_size


def test_hf_export_in_f16_halves_the_weights(tiny_model_dir: Path, tmp_path: Path) -> None:
    from safetensors import safe_open

    out = export_model(tiny_model_dir, "hf", tmp_path / "f16", dtype="f16")
    config = json.loads((out / "config.json").read_text())
    assert config.get("dtype", config.get("torch_dtype")) == "float16"
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}


# -- gguf -----------------------------------------------------------------------------------------


def _field(reader, key: str):
    return reader.fields[key].contents()


def test_gguf_metadata_vocabulary_and_tensors(gpt_dir: Path, gguf_f32: Path) -> None:
    model = load_model(gpt_dir)
    cfg, tok = model.cfg, model.tokenizer
    r = gguf.GGUFReader(str(gguf_f32))
    assert _field(r, "general.architecture") == "llama"
    expect = {
        "llama.context_length": cfg.block_size,
        "llama.embedding_length": cfg.n_embd,
        "llama.block_count": cfg.n_layer,
        "llama.feed_forward_length": cfg.intermediate_size,
        "llama.attention.head_count": cfg.n_head,
        "llama.attention.head_count_kv": cfg.n_head,
        "llama.rope.dimension_count": cfg.n_embd // cfg.n_head,
        "llama.vocab_size": cfg.vocab_size,
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "gpt-2",
        "tokenizer.ggml.bos_token_id": tok.eos_id,
        "tokenizer.ggml.eos_token_id": tok.eos_id,
        "tokenizer.ggml.padding_token_id": tok.pad_id,
        "tokenizer.ggml.add_bos_token": False,
        "tokenizer.ggml.fim_pre_token_id": tok.fim_prefix_id,
        "tokenizer.ggml.fim_suf_token_id": tok.fim_suffix_id,
        "tokenizer.ggml.fim_mid_token_id": tok.fim_middle_id,
    }
    assert {k: _field(r, k) for k in expect} == expect
    assert _field(r, "llama.rope.freq_base") == pytest.approx(cfg.rope_theta)
    assert _field(r, "llama.attention.layer_norm_rms_epsilon") == pytest.approx(cfg.rms_norm_eps)

    tokens = _field(r, "tokenizer.ggml.tokens")
    assert tokens == [tok.tk.id_to_token(i) for i in range(tok.vocab_size)]
    types = _field(r, "tokenizer.ggml.token_type")
    control = {i for i, t in enumerate(types) if t == gguf.TokenType.CONTROL}
    assert control == set(tok.special_ids)
    assert all(t == gguf.TokenType.NORMAL for i, t in enumerate(types) if i not in control)
    merges = json.loads(tok.tk.to_str())["model"]["merges"]
    assert _field(r, "tokenizer.ggml.merges") == [m if isinstance(m, str) else " ".join(m) for m in merges]

    names = {t.name: t for t in r.tensors}
    n_expected = 2 + 9 * cfg.n_layer + (0 if cfg.tie_embeddings else 1)
    assert len(names) == n_expected
    assert ("output.weight" in names) == (not cfg.tie_embeddings)
    assert list(names["token_embd.weight"].shape) == [cfg.n_embd, cfg.vocab_size]  # GGML order
    assert list(names["blk.0.ffn_gate.weight"].shape) == [cfg.n_embd, cfg.intermediate_size]
    src = checkpoint.load_tensors(gpt_dir)
    q = np.asarray(names["blk.1.attn_q.weight"].data)
    assert np.array_equal(q, llama_permute(src["model.layers.1.self_attn.q_proj.weight"], cfg.n_head).numpy())
    assert not np.array_equal(q, src["model.layers.1.self_attn.q_proj.weight"].numpy())
    v = np.asarray(names["blk.1.attn_v.weight"].data)
    assert np.array_equal(v, src["model.layers.1.self_attn.v_proj.weight"].numpy())  # V is not permuted


def _llama_cpp_style_logits(path: Path, ids: list[int]) -> np.ndarray:
    """A Llama forward pass over the GGUF's own tensors, in llama.cpp's conventions:
    RoPE rotates adjacent pairs (x[2i], x[2i+1]) and a missing ``output`` means token_embd."""
    r = gguf.GGUFReader(str(path))
    w = {t.name: np.asarray(t.data, dtype=np.float64) for t in r.tensors}
    n_head = _field(r, "llama.attention.head_count")
    n_layer = _field(r, "llama.block_count")
    eps = _field(r, "llama.attention.layer_norm_rms_epsilon")
    base = _field(r, "llama.rope.freq_base")
    d = _field(r, "llama.rope.dimension_count")
    n = len(ids)
    ang = np.arange(n)[:, None] * base ** (-np.arange(0, d, 2) / d)[None]
    cos, sin = np.cos(ang)[:, None], np.sin(ang)[:, None]

    def rope(x):  # (n, heads, d)
        a, b = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2], out[..., 1::2] = a * cos - b * sin, a * sin + b * cos
        return out

    def rms(x, g):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * g

    mask = np.triu(np.full((n, n), -np.inf), 1)
    x = w["token_embd.weight"][ids]
    for i in range(n_layer):
        p = f"blk.{i}."
        h = rms(x, w[p + "attn_norm.weight"])
        q = rope((h @ w[p + "attn_q.weight"].T).reshape(n, n_head, d))
        k = rope((h @ w[p + "attn_k.weight"].T).reshape(n, n_head, d))
        v = (h @ w[p + "attn_v.weight"].T).reshape(n, n_head, d)
        s = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(d) + mask
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        x = x + np.einsum("hqk,khd->qhd", s, v).reshape(n, -1) @ w[p + "attn_output.weight"].T
        h = rms(x, w[p + "ffn_norm.weight"])
        gate = h @ w[p + "ffn_gate.weight"].T
        x = x + ((gate / (1 + np.exp(-gate))) * (h @ w[p + "ffn_up.weight"].T)) @ w[p + "ffn_down.weight"].T
    x = rms(x, w["output_norm.weight"])
    return x @ w.get("output.weight", w["token_embd.weight"]).T


def test_gguf_computes_kaffee_logits_in_llama_cpp_conventions(gpt_dir: Path, gguf_f32: Path) -> None:
    kaffee = load_model(gpt_dir)
    ids = _prompt(kaffee, 96)
    with torch.inference_mode():
        want = kaffee.module(input_ids=torch.tensor([ids])).logits[0].double().numpy()
    got = _llama_cpp_style_logits(gguf_f32, ids)
    assert np.abs(got - want).max() <= 1e-4
    assert (got.argmax(-1) == want.argmax(-1)).all()


def test_gguf_f16_keeps_norms_in_f32(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = export_model(tiny_model_dir, "gguf", tmp_path / "m.gguf")  # f16 is the gguf default
    r = gguf.GGUFReader(str(out))
    kinds = {t.name: t.tensor_type for t in r.tensors}
    assert kinds["token_embd.weight"] == gguf.GGMLQuantizationType.F16
    assert kinds["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.F16
    assert kinds["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32
    assert _field(r, "general.file_type") == gguf.LlamaFileType.MOSTLY_F16


def test_gpt2_pre_tokenizer_splits_java_like_kaffee(tiny_model_dir: Path) -> None:
    """The GGUF declares pre="gpt-2"; GPT-2's split with Kaffee's BPE gives Kaffee's ids."""
    from tokenizers import Tokenizer, pre_tokenizers

    tok = load_model(tiny_model_dir).tokenizer
    gpt2 = Tokenizer.from_str(tok.tk.to_str())
    gpt2.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    texts = [
        *TEXTS,
        "a\r\n\r\n\tb  \n  c\n\n\n    }\t\t// x",
        "x =\u00a0 1;\x0c\n \u00a0\tint",  # no-break space, form feed
        'String s = "caf\u00e9 \u2003 \U0001f600";\r\n\t \r\n',
    ]
    for text in texts:
        assert gpt2.encode(text, add_special_tokens=False).ids == tok.encode(text)


def test_gguf_without_the_package_names_the_extra(tiny_model_dir: Path, tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "gguf", None)
    with pytest.raises(KaffeeError, match=r"kaffee\[export\]"):
        export_model(tiny_model_dir, "gguf", tmp_path / "m.gguf")
    assert not (tmp_path / "m.gguf").exists()


# -- refusals and the CLI -------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["hf", "gguf"])
def test_lstm_and_ngram_are_not_exportable(lstm_dir: Path, tiny_ngram_dir: Path, tmp_path, fmt) -> None:
    for family, model_dir in (("lstm", lstm_dir), ("ngram", tiny_ngram_dir)):
        with pytest.raises(KaffeeError, match=f"{family} model, which is not exportable to {fmt}"):
            export_model(model_dir, fmt, tmp_path / f"{family}.{fmt}")
        assert not (tmp_path / f"{family}.{fmt}").exists()


def test_cli_exports_and_refuses_clearly(tiny_model_dir: Path, lstm_dir: Path, tmp_path, capsys) -> None:
    hf_out, gguf_out = tmp_path / "hf", tmp_path / "m.gguf"
    assert main(["export", "--model", str(tiny_model_dir), "--format", "hf", "--out", str(hf_out)]) == 0
    assert (hf_out / "config.json").is_file() and (hf_out / "tokenizer.json").is_file()
    assert main(["export", "--model", str(tiny_model_dir), "--format", "gguf", "--out", str(gguf_out)]) == 0
    assert gguf.GGUFReader(str(gguf_out)).fields["general.architecture"].contents() == "llama"
    capsys.readouterr()

    # an existing output is kept unless --force; --force never replaces a non-export directory
    assert main(["export", "--model", str(tiny_model_dir), "--format", "hf", "--out", str(hf_out)]) == 1
    assert "already exists; pass --force" in capsys.readouterr().err
    args = ["export", "--model", str(tiny_model_dir), "--format", "hf", "--out", str(hf_out), "--force"]
    assert main(args) == 0
    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("keep me")
    assert (
        main(["export", "--model", str(tiny_model_dir), "--format", "hf", "--out", str(other), "--force"])
        == 1
    )
    assert (other / "todo.txt").read_text() == "keep me"
    capsys.readouterr()

    assert main(["export", "--model", str(lstm_dir), "--format", "gguf", "--out", str(tmp_path / "l")]) == 1
    assert "lstm model, which is not exportable to gguf" in capsys.readouterr().err


# -- llama.cpp itself, where llama-cpp-python is installed ------------------------------------------


def test_llama_cpp_greedily_continues_like_kaffee(tiny_model_dir: Path, tmp_path: Path) -> None:
    llama_cpp = pytest.importorskip("llama_cpp")
    out = export_model(tiny_model_dir, "gguf", tmp_path / "m.gguf", dtype="f32")
    kaffee = load_model(tiny_model_dir)
    tok = kaffee.tokenizer
    llm = llama_cpp.Llama(model_path=str(out), n_ctx=256, n_threads=2, verbose=False)
    for text in TEXTS:  # llama.cpp's "gpt-2" tokenization is Kaffee's
        assert llm.tokenize(text.encode(), add_bos=False, special=False) == tok.encode(text)
    for text in TEXTS[:3]:
        cut = text.index("{") + 1
        prompt = [tok.eos_id, *tok.encode(text[:cut])]
        assert llm.tokenize(text[:cut].encode(), add_bos=False, special=False) == prompt[1:]
        want, ids = [], list(prompt)
        with torch.inference_mode():
            for _ in range(16):
                nxt = int(kaffee.module(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
                want.append(nxt)
                ids.append(nxt)
        got = []
        for t in llm.generate(prompt, temp=0.0, top_k=1, reset=True):
            got.append(t)
            if len(got) == 16:
                break
        assert got == want
    llm.close()
