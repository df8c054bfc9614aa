"""The model directory format (DESIGN.md "Model directory") and its safe, atomic I/O.

A model directory holds ``config.json`` (with ``family``), ``model.safetensors`` (or
shards ``model-00001-of-0000N.safetensors`` + ``model.safetensors.index.json``),
``tokenizer.json`` and ``card.md``. Loading never unpickles anything.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from kaffee.atomic_dir import make_tmp_dir, recover_dir, replace_dir
from kaffee.data.tokenizer import KaffeeTokenizer
from kaffee.errors import KaffeeError
from kaffee.models import families
from kaffee.models.hf import is_hf_config
from kaffee.models.lm import LanguageModel
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

FORMAT_VERSION = 1
SHARD_BYTES = 15 * 1024 * 1024  # shards stay below 16 MiB so they fit transfer limits
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
INT8_SCALE = ".int8_scale"  # suffix of the per-row float32 scale stored beside an int8 matrix
INT8_MIN_ELEMENTS = 4096  # smaller matrices stay float (too small to matter, e.g. tiny test models)


def atomic_dir(out: Path, write: Callable[[Path], None]) -> None:
    """Run ``write(tmpdir)`` then swap ``tmpdir`` into ``out``: a kill at any instant leaves the old
    or the new complete directory at ``out`` (kaffee.atomic_dir); what earlier kills left is cleaned first."""
    out = Path(out)
    recover_dir(out)
    tmp = make_tmp_dir(out)
    try:
        write(tmp)
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def quantize_rows(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per row (output channel): ``t ≈ q * scale[:, None]``.

    The int8 decoder (server/fastgpt.py) quantizes each row with the same rule, so it
    recovers exactly these ``q`` from the dequantized weights: storing int8 changes nothing
    it computes, and halves the bytes of fp16.
    """
    t = t.detach().float()
    scale = (t.abs().amax(dim=1) / 127.0).clamp(min=1e-8)
    q = (t / scale[:, None]).round_().clamp_(-127, 127).to(torch.int8)
    return q, scale


def _int8_storage(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Matrices (>= INT8_MIN_ELEMENTS) as int8 + a float32 scale per row; the rest unchanged."""
    out: dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        if t.is_floating_point() and t.dim() == 2 and t.numel() >= INT8_MIN_ELEMENTS:
            out[name], out[name + INT8_SCALE] = quantize_rows(t)
        else:
            out[name] = t
    return out


def _dequantize(name: str, t: torch.Tensor, get: Callable[[str], torch.Tensor]) -> torch.Tensor:
    return t.float() * get(name + INT8_SCALE)[:, None] if t.dtype == torch.int8 else t


def save_tensors(tensors: dict[str, torch.Tensor], directory: Path, stem: str = "model") -> None:
    """Write tensors as one safetensors file, or shards below SHARD_BYTES with an index."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > SHARD_BYTES:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    if len(shards) == 1:
        save_file(shards[0], str(directory / f"{stem}.safetensors"))
        return
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        fname = f"{stem}-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(directory / fname))
        weight_map.update({k: fname for k in shard})
    (directory / f"{stem}.safetensors.index.json").write_text(
        json.dumps({"weight_map": weight_map}, indent=1)
    )


def _weight_files(directory: Path, stem: str) -> list[Path]:
    """The safetensors file(s) of a model directory: one file, or the shards its index names."""
    single = directory / f"{stem}.safetensors"
    index = directory / f"{stem}.safetensors.index.json"
    if single.is_file():
        return [single]
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise KaffeeError(f"{directory}: {index.name} is corrupt or unreadable ({exc})") from exc
        for name in names:
            if not (directory / name).is_file():
                raise KaffeeError(f"{directory} is incomplete: shard {name} is missing")
        return [directory / name for name in names]
    pickles = [p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES]
    if pickles:
        raise KaffeeError(
            f"{directory} holds {pickles[0]}, a pickle-based file; Kaffee only loads safetensors "
            "(pickle files can run arbitrary code)"
        )
    raise KaffeeError(f"{directory} has no {stem}.safetensors")


class LazyTensors(Mapping):
    """A model directory's tensors, each read from its (memory-mapped) file when asked for.

    ``pop`` reads a tensor and forgets it, so a loader that converts weights one by one
    (``FastGPT``) never holds the whole stored model besides its converted copy.
    """

    def __init__(self, directory: Path, files: list[Path]):
        self._directory = directory
        self._where: dict[str, Path] = {}
        for f in files:
            with safe_open(str(f), framework="pt") as handle:
                self._where.update(dict.fromkeys(handle.keys(), f))
        self._scales = {k for k in self._where if k.endswith(INT8_SCALE)}

    def _read(self, name: str) -> torch.Tensor:
        try:
            with safe_open(str(self._where[name]), framework="pt") as handle:
                return handle.get_tensor(name)
        except (SafetensorError, OSError) as exc:
            raise KaffeeError(f"{self._directory}: weights are corrupt or unreadable ({exc})") from exc

    def __getitem__(self, name: str) -> torch.Tensor:
        if name in self._scales:
            raise KeyError(name)
        return _dequantize(name, self._read(name), self._read)

    def __iter__(self):
        return (k for k in self._where if k not in self._scales)

    def __len__(self) -> int:
        return len(self._where) - len(self._scales)

    def pop(self, name: str) -> torch.Tensor:
        tensor = self[name]
        del self._where[name]
        if self._where.pop(name + INT8_SCALE, None) is not None:
            self._scales.discard(name + INT8_SCALE)
        return tensor


def load_tensors(
    directory: Path, stem: str = "model", lazy: bool = False
) -> dict[str, torch.Tensor] | LazyTensors:
    """All tensors of a model directory (``lazy``: a mapping that reads each when asked for)."""
    files = _weight_files(directory, stem)
    try:
        if lazy:
            return LazyTensors(directory, files)
        raw: dict[str, torch.Tensor] = {}
        for f in files:
            raw.update(load_file(str(f)))
        return {k: _dequantize(k, t, raw.__getitem__) for k, t in raw.items() if not k.endswith(INT8_SCALE)}
    except (SafetensorError, OSError, ValueError, KeyError) as exc:
        raise KaffeeError(f"{directory}: weights are corrupt or unreadable ({exc})") from exc


def save_model_dir(
    out: Path,
    model: LanguageModel,
    tokenizer: KaffeeTokenizer,
    card: str,
    extra: dict[str, Any] | None = None,
    dtype: torch.dtype | str | None = None,
    also: Callable[[Path], None] | None = None,
) -> None:
    """Atomically write a complete model directory.

    ``dtype``: store floating tensors in it; ``"int8"`` stores matrices as int8 with a
    scale per row (``quantize_rows``) and the small rest unchanged — about half the bytes
    of float16, and what the int8 decoder computes is unchanged. Loading dequantizes.
    """
    meta = {
        "kaffee_format": FORMAT_VERSION,
        "family": model.family,
        "config": model.config_dict(),
        "tokenizer_vocab_size": tokenizer.vocab_size,
        **(extra or {}),
    }
    tensors = families.model_tensors(model)
    if dtype == "int8":
        tensors = _int8_storage(tensors)  # the small rest (norms, biases) stays as it is
    elif isinstance(dtype, str):
        raise KaffeeError(f"unknown storage dtype {dtype!r} (a torch dtype or 'int8')")
    elif dtype is not None:
        tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}

    def write(tmp: Path) -> None:
        save_tensors(tensors, tmp)
        tokenizer.save(tmp / "tokenizer.json")
        (tmp / "config.json").write_text(json.dumps(meta, indent=2))
        (tmp / "card.md").write_text(card)
        if also is not None:
            also(tmp)  # e.g. resumable training state, written into the same atomic swap

    atomic_dir(Path(out), write)


NEITHER = (
    "neither a Kaffee model (config.json with 'family' and 'config') nor a Hugging Face causal LM "
    "(config.json with 'model_type' or 'architectures')"
)


def read_meta(model_dir: Path) -> dict[str, Any]:
    """config.json of a model directory; for a Hugging Face checkpoint ``{"family": "hf", "config": ...}``."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise KaffeeError(f"model directory {model_dir} does not exist")
    cfg_path = model_dir / "config.json"
    if not cfg_path.is_file():
        raise KaffeeError(
            f"{model_dir} is not a Kaffee model directory nor a Hugging Face causal LM (no config.json)"
        )
    try:
        meta = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise KaffeeError(f"{cfg_path} is not valid JSON ({exc})") from exc
    if is_hf_config(meta):  # an ordinary Hugging Face checkpoint: models/hf.py serves it
        return {"family": "hf", "config": meta}
    if not isinstance(meta, dict) or "family" not in meta or "config" not in meta:
        raise KaffeeError(f"{cfg_path} is not a model config: {NEITHER}")
    if meta["family"] not in families.FAMILIES:
        raise KaffeeError(
            f"{cfg_path} names the model family {meta['family']!r}, which Kaffee does not know "
            f"(families: {', '.join(families.FAMILIES)})"
        )
    return meta


def load_model(model_dir: str | Path, device: str = "cpu", expect_family: str | None = None) -> LanguageModel:
    """Load a model directory; the result carries ``.tokenizer`` and ``.meta``."""
    model_dir = Path(model_dir)
    meta = read_meta(model_dir)
    family = meta["family"]
    if expect_family and family != expect_family:
        raise KaffeeError(f"{model_dir} holds a {family} model, not {expect_family}")
    if family == "hf":
        from kaffee.models.hf import load_hf

        return load_hf(model_dir, device=device)
    fam = families.get_family(family)
    try:
        cfg = fam.config_cls(**meta["config"])
    except TypeError as exc:
        raise KaffeeError(f"{model_dir}/config.json does not fit the {family} config: {exc}") from exc
    tokenizer = KaffeeTokenizer.from_file(model_dir / "tokenizer.json")
    if tokenizer.vocab_size != cfg.vocab_size:
        raise KaffeeError(
            f"tokenizer.json has {tokenizer.vocab_size} tokens but the model expects {cfg.vocab_size}: they do not belong together"
        )
    tensors = load_tensors(model_dir)
    if family != "ngram":
        tensors = {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}
    model = families.from_tensors(family, cfg, tensors, device=device)
    model.tokenizer = tokenizer
    model.meta = meta
    return model


def read_gpt_dir(model_dir: Path) -> tuple[dict[str, Any], Any, KaffeeTokenizer]:
    """(meta, GPTConfig, tokenizer) of a gpt model directory, checked to belong together.

    For readers that take the weights themselves (the fast decoder, the exporters).
    """
    from kaffee.models.gpt import GPTConfig

    meta = read_meta(model_dir)
    if meta["family"] != "gpt":
        raise KaffeeError(f"{model_dir} holds a {meta['family']} model, not gpt")
    try:
        cfg = GPTConfig(**meta["config"])
    except (TypeError, ValueError) as exc:
        raise KaffeeError(f"{model_dir}/config.json does not fit the gpt config: {exc}") from exc
    tokenizer = KaffeeTokenizer.from_file(model_dir / "tokenizer.json")
    if tokenizer.vocab_size != cfg.vocab_size:
        raise KaffeeError(
            f"tokenizer.json has {tokenizer.vocab_size} tokens but the model expects {cfg.vocab_size}: "
            "they do not belong together"
        )
    return meta, cfg, tokenizer
