"""Export a Kaffee model directory to formats other engines serve: Hugging Face and GGUF.

Only the ``gpt`` family can be exported: it *is* a transformers ``LlamaForCausalLM``
(models/gpt.py), stored with Hugging Face tensor names, so

- ``hf`` is ``config.json`` (from ``hf_config``) + the weights via ``save_pretrained``
  + a ``PreTrainedTokenizerFast`` built from Kaffee's ``tokenizer.json`` with its end-of-text,
  pad and fill-in-the-middle tokens declared. transformers, vLLM and TGI load it with no Kaffee code.
- ``gguf`` is one file for llama.cpp (``llama`` architecture), written with the ``gguf``
  package (the ``export`` extra). The vocabulary is written as byte-level BPE with
  ``tokenizer.ggml.pre = "gpt-2"``: llama.cpp does not know Kaffee's pre-tokenizer by name,
  and GPT-2's split gives the same tokens on Java text because Kaffee's BPE never learned a
  merge across a newline. Q and K projections are permuted the way llama.cpp's
  ``convert_hf_to_gguf.py`` does for Llama (HF's rotate-half RoPE layout -> GGML's
  interleaved pairs).

Prompts are not given a BOS automatically by either export: Kaffee's serving code puts an
end-of-text token before each file itself, so both declare ``<|endoftext|>`` as BOS and EOS
but with add-BOS off, and a client sends exactly the ids Kaffee would.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kaffee.errors import KaffeeError

if TYPE_CHECKING:
    import numpy as np
    import torch
    from kaffee.data.tokenizer import KaffeeTokenizer

FORMATS = ("hf", "gguf")
DTYPES = ("f32", "f16")
DEFAULT_DTYPE = {"hf": "f32", "gguf": "f16"}  # hf: Kaffee's own fp32 logits; gguf: what llama.cpp serves
GGUF_PRE_TOKENIZER = "gpt-2"
EXPORTABLE_FAMILIES = ("gpt",)


def export_model(
    model_dir: str | Path,
    fmt: str,
    out: str | Path,
    dtype: str | None = None,
    force: bool = False,
) -> Path:
    """Export ``model_dir`` to ``out`` in ``fmt`` ("hf" or "gguf"); returns ``out``."""
    from kaffee.models.checkpoint import read_meta

    if fmt not in FORMATS:
        raise KaffeeError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    dtype = dtype or DEFAULT_DTYPE[fmt]
    if dtype not in DTYPES:
        raise KaffeeError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    model_dir, out = Path(model_dir), Path(out)
    meta = read_meta(model_dir)
    family = meta["family"]
    if family not in EXPORTABLE_FAMILIES:
        raise KaffeeError(
            f"{model_dir} holds a {family} model, which is not exportable to {fmt}: "
            f"only the {'/'.join(EXPORTABLE_FAMILIES)} family (a Llama-style transformer) is"
        )
    _check_out(model_dir, out, fmt, force)
    if fmt == "hf":
        export_hf(model_dir, out, dtype)
    else:
        export_gguf(model_dir, out, dtype)
    return out


def _check_out(model_dir: Path, out: Path, fmt: str, force: bool) -> None:
    if out.resolve() == model_dir.resolve() or model_dir.resolve() in out.resolve().parents:
        raise KaffeeError(f"--out {out} is the model directory or inside it; write the export elsewhere")
    if not out.exists():
        return
    if fmt == "gguf":
        if out.is_dir():
            raise KaffeeError(f"{out} is a directory; gguf export writes one file (e.g. {out}/model.gguf)")
        if not force:
            raise KaffeeError(f"{out} already exists; pass --force to replace it")
        return
    if not out.is_dir():
        raise KaffeeError(f"{out} exists and is not a directory")
    if not any(out.iterdir()):
        return
    if not force:
        raise KaffeeError(f"{out} already exists; pass --force to replace it")
    if not (out / "config.json").is_file():  # --force replaces an earlier export, never any directory
        raise KaffeeError(f"{out} is not a model directory; refusing to replace it even with --force")


# -- Hugging Face ------------------------------------------------------------------------------


def hf_tokenizer(tokenizer: KaffeeTokenizer, model_max_length: int):
    """Kaffee's tokenizer as a ``PreTrainedTokenizerFast`` with its special tokens declared."""
    from kaffee.data.tokenizer import EOS, FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX, PAD
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer.tk,
        bos_token=EOS,  # training puts <|endoftext|> before every file; nothing is added automatically
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=[FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE],
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )


def export_hf(model_dir: Path, out: Path, dtype: str = "f32") -> None:
    """Write a transformers model directory (LlamaForCausalLM + tokenizer) to ``out``."""
    import torch
    from kaffee.models.checkpoint import atomic_dir, load_model

    model = load_model(model_dir, expect_family="gpt")  # the same loader the server uses: fp32 weights
    tok = model.tokenizer
    module = model.module.eval()
    if dtype == "f16":
        module = module.to(torch.float16)
    for cfg in (module.config, module.generation_config):
        cfg.bos_token_id = tok.eos_id
        cfg.eos_token_id = tok.eos_id
        cfg.pad_token_id = tok.pad_id
    _set_config_dtype(module.config, torch.float16 if dtype == "f16" else torch.float32)
    hf_tok = hf_tokenizer(tok, model.cfg.block_size)
    card = _hf_card(model_dir, model.meta, tok)

    def write(tmp: Path) -> None:
        module.save_pretrained(tmp)
        hf_tok.save_pretrained(tmp)
        _portable_configs(tmp, model.cfg)
        (tmp / "README.md").write_text(card)

    atomic_dir(out, write)


def _set_config_dtype(config: Any, dtype: torch.dtype) -> None:
    import transformers

    # transformers 5 calls it `dtype` (and warns on the old name), 4.x `torch_dtype`
    attr = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"
    setattr(config, attr, dtype)


def _portable_configs(directory: Path, cfg: Any) -> None:
    """Spell the configs so transformers 4.x readers (older vLLM/TGI images) load them too.

    transformers 5 writes ``tokenizer_class: TokenizersBackend`` and ``extra_special_tokens``,
    and nests ``rope_theta`` under ``rope_parameters``; 4.x knows ``PreTrainedTokenizerFast``,
    ``additional_special_tokens`` and a top-level ``rope_theta``. Both versions read these.
    """
    tc_path = directory / "tokenizer_config.json"
    tc = json.loads(tc_path.read_text())
    tc["tokenizer_class"] = "PreTrainedTokenizerFast"
    extra = tc.pop("extra_special_tokens", None)
    if isinstance(extra, list):
        tc["additional_special_tokens"] = extra
    tc_path.write_text(json.dumps(tc, indent=2) + "\n")
    c_path = directory / "config.json"
    c = json.loads(c_path.read_text())
    c.setdefault("rope_theta", cfg.rope_theta)
    c_path.write_text(json.dumps(c, indent=2, sort_keys=True) + "\n")


def _hf_card(model_dir: Path, meta: dict[str, Any], tok: KaffeeTokenizer) -> str:
    card_path = model_dir / "card.md"
    card = card_path.read_text() if card_path.is_file() else ""
    return (
        "---\nlibrary_name: transformers\npipeline_tag: text-generation\ntags: [code, java, kaffee]\n---\n\n"
        + card.rstrip()
        + "\n\n## Exported from Kaffee\n\n"
        f"A `LlamaForCausalLM` exported by `kaffee export` from a {meta['family']} model directory. "
        "Prompts are built as Kaffee builds them: `<|endoftext|>` before each file (not added by the "
        "tokenizer), and fill-in-the-middle as "
        "`<|fim_prefix|> prefix <|fim_suffix|> suffix <|fim_middle|>` "
        f"(ids {tok.fim_prefix_id}, {tok.fim_suffix_id}, {tok.fim_middle_id}); generation ends at "
        f"`<|endoftext|>` (id {tok.eos_id}).\n"
    )


# -- GGUF ----------------------------------------------------------------------------------------


def _import_gguf():
    try:
        import gguf
    except ImportError as exc:
        raise KaffeeError(
            "exporting to gguf needs the `gguf` package: pip install 'kaffee[export]' (or pip install gguf)"
        ) from exc
    return gguf


def llama_permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Reorder Q/K rows from HF's rotate-half RoPE layout to GGML's interleaved pairs.

    The same as ``LlamaModel.permute`` in llama.cpp's convert_hf_to_gguf.py: within each head,
    row ``j`` of the first half and row ``j`` of the second half become rows ``2j`` and ``2j+1``.
    """
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_vocab(tokenizer: KaffeeTokenizer) -> tuple[list[str], list[int], list[str]]:
    """(tokens in id order, token types, merges as "a b") for llama.cpp's byte-level BPE."""
    gguf = _import_gguf()
    data = json.loads(tokenizer.tk.to_str())
    model = data["model"]
    if model.get("type") != "BPE":
        raise KaffeeError(f"the tokenizer is a {model.get('type')} model; gguf export needs byte-level BPE")
    tokens: list[str | None] = [None] * tokenizer.vocab_size
    for piece, i in model["vocab"].items():
        tokens[i] = piece
    for added in data.get("added_tokens", []):
        tokens[added["id"]] = added["content"]
    missing = [i for i, t in enumerate(tokens) if t is None]
    if missing:
        raise KaffeeError(f"tokenizer.json has no token for ids {missing[:5]}; it cannot be exported")
    types = [
        int(gguf.TokenType.CONTROL if i in tokenizer.special_ids else gguf.TokenType.NORMAL)
        for i in range(len(tokens))
    ]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return [str(t) for t in tokens], types, merges


def gguf_tensor_name(name: str, n_layer: int) -> str:
    gguf = _import_gguf()
    mapped = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_layer).get_name(
        name, try_suffixes=(".weight", ".bias")
    )
    if mapped is None:
        raise KaffeeError(f"no GGUF name for tensor {name}")
    return mapped


def gguf_tensors(tensors: dict[str, torch.Tensor], cfg: Any, dtype: str) -> dict[str, np.ndarray]:
    """HF-named Llama tensors -> GGUF-named numpy arrays (Q/K permuted; 1-D tensors kept f32)."""
    import numpy as np

    out: dict[str, np.ndarray] = {}
    for name, t in tensors.items():
        if cfg.tie_embeddings and name == "lm_head.weight":
            continue  # llama.cpp uses token_embd as the output head when `output` is absent
        t = t.float()
        if name.endswith(("q_proj.weight", "k_proj.weight")):
            t = llama_permute(t, cfg.n_head)  # n_head == n_kv_head in Kaffee's config
        arr = t.numpy()
        if dtype == "f16" and arr.ndim > 1:
            arr = arr.astype(np.float16)
        out[gguf_tensor_name(name, cfg.n_layer)] = np.ascontiguousarray(arr)
    return out


def export_gguf(model_dir: Path, out: Path, dtype: str = "f16") -> None:
    """Write one GGUF file (llama architecture, byte-level BPE vocabulary) to ``out``."""
    gguf = _import_gguf()
    from kaffee.models.checkpoint import load_tensors, read_gpt_dir

    meta, cfg, tok = read_gpt_dir(model_dir)
    arrays = gguf_tensors(load_tensors(model_dir), cfg, dtype)
    expected = 2 + 9 * cfg.n_layer + (0 if cfg.tie_embeddings else 1)
    if len(arrays) != expected:
        raise KaffeeError(f"{model_dir} has {len(arrays)} exportable tensors, expected {expected}")
    tokens, types, merges = gguf_vocab(tok)

    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        w = gguf.GGUFWriter(str(tmp), "llama")
        w.add_name(_model_name(model_dir, meta))
        w.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if dtype == "f16" else gguf.LlamaFileType.ALL_F32)
        w.add_vocab_size(cfg.vocab_size)
        w.add_context_length(cfg.block_size)
        w.add_embedding_length(cfg.n_embd)
        w.add_block_count(cfg.n_layer)
        w.add_feed_forward_length(cfg.intermediate_size)
        w.add_head_count(cfg.n_head)
        w.add_head_count_kv(cfg.n_head)
        w.add_rope_dimension_count(cfg.n_embd // cfg.n_head)
        w.add_rope_freq_base(cfg.rope_theta)
        w.add_layer_norm_rms_eps(cfg.rms_norm_eps)

        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(GGUF_PRE_TOKENIZER)
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_merges(merges)
        w.add_bos_token_id(tok.eos_id)
        w.add_eos_token_id(tok.eos_id)
        w.add_eot_token_id(tok.eos_id)
        w.add_pad_token_id(tok.pad_id)
        w.add_add_bos_token(False)  # the client sends Kaffee's own ids, <|endoftext|> first
        w.add_add_eos_token(False)
        w.add_uint32(gguf.Keys.Tokenizer.FIM_PRE_ID, tok.fim_prefix_id)
        w.add_uint32(gguf.Keys.Tokenizer.FIM_SUF_ID, tok.fim_suffix_id)
        w.add_uint32(gguf.Keys.Tokenizer.FIM_MID_ID, tok.fim_middle_id)

        for name, arr in arrays.items():
            w.add_tensor(name, arr)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _model_name(model_dir: Path, meta: dict[str, Any]) -> str:
    name = model_dir.resolve().name
    return f"kaffee-{meta.get('preset') or name}" if name == "default" else f"kaffee-{name}"
