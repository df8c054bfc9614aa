"""What `kaffee train` and `kaffee finetune` do, as plain functions (the CLI only parses)."""

from __future__ import annotations

import json
import logging
import platform
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from kaffee.data.tokenizer import KaffeeTokenizer
from kaffee.errors import KaffeeError
from kaffee.training import checkpoint, families
from kaffee.training.card import model_card
from kaffee.training.data import BlockSampler, DataConfig, cached_token_stream
from kaffee.training.ngram import NgramCounts
from kaffee.training.trainer import TrainConfig, evaluate, train

log = logging.getLogger(__name__)


@dataclass
class TrainJob:
    family: str  # gpt | lstm | ngram
    preset: str  # nano | small | base
    corpus: Path  # corpus directory or train.jsonl[.xz] export
    tokenizer: Path  # tokenizer.json
    out: Path  # model directory to write
    resume: bool = False  # continue the run saved in `out`


def hardware() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _command() -> str:
    return "kaffee " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def run_train(job: TrainJob, cfg: TrainConfig, data_cfg: DataConfig, overrides: dict | None = None) -> dict:
    tok = KaffeeTokenizer.from_file(job.tokenizer)
    tok_path = job.tokenizer if job.tokenizer.is_file() else job.tokenizer / "tokenizer.json"
    model_cfg = families.make_config(job.family, job.preset, tok.vocab_size, **(overrides or {}))
    fam = families.get_family(job.family)
    cache_dir = job.out.parent / f".{job.out.name}.data-cache"
    meta = {
        "corpus": str(job.corpus),
        "preset": job.preset,
        "hardware": hardware(),
        "fim_rate": data_cfg.fim_rate if fam.neural else 0.0,
    }
    if job.resume and job.out.exists():
        old = checkpoint.read_meta(job.out)
        if old.get("family") != job.family:
            raise KaffeeError(f"--resume: {job.out} holds a {old.get('family')} model, not {job.family}")
    valid = _maybe_stream(job.corpus, "valid", tok, tok_path, data_cfg, cache_dir)
    if not fam.neural:
        return _count_ngram(job, model_cfg, tok, tok_path, data_cfg, cache_dir, valid, meta)
    train_stream = cached_token_stream(job.corpus, "train", tok, tok_path, data_cfg, True, cache_dir)
    summary = train(
        job.family,
        model_cfg,
        tok,
        train_stream,
        valid,
        job.out,
        cfg,
        resume=job.resume,
        extra_meta=meta,
        card=lambda m: model_card(job.family, {**m, "config": vars(model_cfg)}, _command()),
    )
    return summary


def _maybe_stream(
    corpus: Path, split: str, tok, tok_path, data_cfg: DataConfig, cache_dir: Path
) -> np.ndarray | None:
    try:
        return cached_token_stream(corpus, split, tok, tok_path, data_cfg, False, cache_dir)
    except KaffeeError as exc:
        log.warning("no validation data: %s", exc)
        return None


def _count_ngram(job: TrainJob, model_cfg, tok, tok_path, data_cfg, cache_dir, valid, meta) -> dict:
    import time

    t0 = time.time()
    stream = cached_token_stream(job.corpus, "train", tok, tok_path, data_cfg, False, cache_dir)
    counts = NgramCounts.build(stream, tok.vocab_size, model_cfg.order, model_cfg.min_count)
    model = families.wrap("ngram", model_cfg, counts)
    val = None
    if valid is not None and len(valid) > 1:
        sample = valid[:20_000].tolist()
        val = float(-model.sequence_logprobs(sample).double().mean())
    seconds = time.time() - t0
    n_keys = sum(len(k) for k in counts.keys)
    meta["training"] = {
        "tokens": int(len(stream)),
        "ngrams": n_keys,
        "seconds": seconds,
        "history": [{"step": 0, "val_loss": val}] if val else [],
    }
    checkpoint.save_model_dir(
        job.out, model, tok, model_card("ngram", {**meta, "config": vars(model_cfg)}, _command()), extra=meta
    )
    return {
        "family": "ngram",
        "tokens": int(len(stream)),
        "ngrams": n_keys,
        "val_loss": val,
        "seconds": seconds,
    }


# -- fine-tuning -----------------------------------------------------------------------------


def project_texts(source: Path, seed: int, valid_fraction: float = 0.1) -> tuple[list[str], list[str]]:
    """Train/valid texts from a corpus dir (its splits) or any source (held-out files of it)."""
    if (source / "stats.json").is_file():
        from kaffee.data.corpus import load_corpus

        ds = load_corpus(source)
        texts = list(ds["text"])
        splits = list(ds["split"])
        train = [t for t, s in zip(texts, splits, strict=True) if s == "train"]
        valid = [t for t, s in zip(texts, splits, strict=True) if s != "train"]
        if train and valid:
            return train, valid
    else:
        if not source.exists():
            raise KaffeeError(f"{source} does not exist")
        texts = []
        for p in sorted(source.rglob("*.java")) if source.is_dir() else []:
            try:
                if p.is_file() and p.stat().st_size < 1_000_000:
                    texts.append(p.read_text(encoding="utf-8", errors="replace"))
            except OSError as exc:
                log.warning("skipping %s: %s", p, exc)
    if len(texts) < 2:
        raise KaffeeError(
            f"{source} has fewer than 2 Java files; fine-tuning needs some to train on and some to hold out"
        )
    order = np.random.default_rng(seed).permutation(len(texts))
    n_valid = max(1, int(round(len(texts) * valid_fraction)))
    return [texts[i] for i in order[n_valid:]], [texts[i] for i in order[:n_valid]]


def run_finetune(from_dir: Path, source: Path, out: Path, cfg: TrainConfig, data_cfg: DataConfig) -> dict:
    base = checkpoint.load_model(from_dir)
    if base.family == "ngram":
        raise KaffeeError(
            "n-gram models are not fine-tuned: retrain by counting with `kaffee train --family ngram`"
        )
    tok = base.tokenizer
    train_texts, valid_texts = project_texts(source, data_cfg.seed)
    fim_rate = float(base.meta.get("fim_rate", 0.0))
    from kaffee.training.data import doc_ids

    train_stream = np.asarray(
        [i for n, t in enumerate(train_texts) for i in doc_ids(t, n, tok, fim_rate, data_cfg.seed)], np.int32
    )
    valid_stream = np.asarray([i for t in valid_texts for i in tok.encode(t) + [tok.eos_id]], np.int32)
    block = min(
        base.max_context if base.family == "gpt" else base.cfg.block_size,
        len(valid_stream) - 1,
        len(train_stream) - 1,
    )
    if block < 16:
        raise KaffeeError("the project is too small to fine-tune on (fewer than 16 tokens held out)")
    cfg.block_size = min(cfg.block_size or block, block)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    before = evaluate(
        base.module.to(device),
        BlockSampler(valid_stream, cfg.block_size, 0),
        cfg.eval_blocks,
        cfg.batch_size,
        device,
    )
    meta = {
        **{k: v for k, v in base.meta.items() if k not in ("config", "family", "training")},
        "finetuned_from": str(from_dir),
        "corpus": str(source),
        "hardware": hardware(),
    }
    summary = train(
        base.family,
        base.cfg,
        tok,
        train_stream,
        valid_stream,
        out,
        cfg,
        init_tensors=families.model_tensors(base),
        extra_meta=meta,
        card=lambda m: model_card(base.family, {**m, "config": vars(base.cfg)}, _command()),
    )
    after = checkpoint.load_model(out)
    after_loss = evaluate(
        after.module.to(device),
        BlockSampler(valid_stream, cfg.block_size, 0),
        cfg.eval_blocks,
        cfg.batch_size,
        device,
    )
    result = {
        **summary,
        "val_loss_before": before,
        "val_loss_after": after_loss,
        "train_files": len(train_texts),
        "valid_files": len(valid_texts),
    }
    (out / "finetune.json").write_text(json.dumps(result, indent=2))
    return result
