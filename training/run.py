"""What `kaffee train` and `kaffee finetune` do, as plain functions (the CLI only parses)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import platform
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from kaffee.atomic_dir import recover_dir
from kaffee.data.layout import REPO_LAYOUT
from kaffee.data.tokenizer import KaffeeTokenizer
from kaffee.errors import KaffeeError
from kaffee.models import checkpoint, families
from kaffee.models.ngram import NgramCounts
from kaffee.training.card import model_card
from kaffee.training.data import BlockSampler, DataConfig, cached_token_stream
from kaffee.training.trainer import TrainConfig, evaluate, objective, train

log = logging.getLogger(__name__)


@dataclass
class TrainJob:
    family: str  # gpt | lstm | ngram
    preset: str  # nano | small | base
    corpus: Path  # corpus directory or train.jsonl[.xz] export
    tokenizer: Path  # tokenizer.json
    out: Path  # model directory to write
    resume: bool = False  # continue the run saved in `out`, even with changed loop settings
    force: bool = False  # start over even if `out` holds another or a finished run
    tokenize_only: bool = False  # write the token cache (train and valid) and stop: no model, no run
    data_cache: Path | None = None  # token cache folder (None: .OUT.data-cache beside out); runs that share
    # one and read the same data the same way tokenise it once (entries are keyed by everything that changes them)


def hardware() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _command() -> str:
    return "kaffee " + " ".join(shlex.quote(a) for a in sys.argv[1:])


# TrainConfig fields that change when a run logs, evaluates, saves or stops, not what it computes
_NOT_IN_SPEC = ("max_minutes", "eval_interval", "eval_blocks", "save_interval", "log_interval", "compile")
# spec sections without which a checkpoint cannot be continued (its weights would not fit or mean something else)
_STRUCTURAL = ("family", "model", "tokenizer")


def run_spec(
    family: str, model_cfg: Any, tok: KaffeeTokenizer, cfg: TrainConfig, data: dict[str, Any]
) -> dict[str, Any]:
    """What a run computes; a checkpoint is continued only by a command with the same spec."""
    spec = {
        "family": family,
        "model": vars(model_cfg),
        "tokenizer": hashlib.sha256(tok.tk.to_str().encode()).hexdigest()[:16],
        "train": {k: v for k, v in asdict(cfg).items() if k not in _NOT_IN_SPEC},
        "data": data,
    }
    return json.loads(json.dumps(spec))  # as it reads back from state.json (tuples become lists)


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


# what runs saved before these spec keys existed trained with (a resume is compared against it)
LEGACY_SPEC = {"data.layout": "files", "data.line_fim_share": 0.0}


def spec_changes(saved: dict[str, Any], want: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{key: (saved, wanted)}`` for each key of ``want`` the saved spec has with another value."""
    old = {**LEGACY_SPEC, **_flat(saved)} if "data" in saved else _flat(saved)
    # a key the checkpoint lacks was added after it was written: nothing to compare
    return {k: (old[k], v) for k, v in _flat(want).items() if k in old and old[k] != v}


def _describe(changes: dict[str, tuple[Any, Any]]) -> str:
    return "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changes.items())


def _saved_state(out: Path) -> dict[str, Any] | None:
    path = out / "trainer" / "state.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise KaffeeError(f"{path} is corrupt ({exc}); pass --force to start over") from exc


def _recover(out: Path) -> None:
    """Clean (or put back) what killed writers of ``out`` left, before any process reads ``out``."""
    from accelerate import PartialState

    # under torchrun every process gets here: the main one recovers while the others wait, so all see one `out`
    with PartialState(cpu=not torch.cuda.is_available()).main_process_first():
        recover_dir(out)


def continue_run(out: Path, want: dict[str, Any], resume: bool, force: bool) -> bool:
    """Whether to continue the run saved in ``out`` (True) or start one (False); refuses what would lose work.

    The same command continues its own unfinished run; ``resume`` also continues it with changed
    loop settings (data order, schedule); ``force`` starts over. Anything else that ``out``
    holds (a finished run, another run, another model) is kept unless ``force``.
    """
    if resume and force:
        raise KaffeeError("--resume and --force contradict each other: continue the saved run, or start over")
    _recover(out)
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        if resume:
            log.info("--resume: %s holds no checkpoint yet; starting a new run", out)
        return False
    if not (out / "config.json").is_file():
        raise KaffeeError(
            f"{out} exists and is not a Kaffee model directory; refusing to replace it (choose another --out)"
        )
    if force:
        log.warning("--force: starting over; the first checkpoint replaces what %s holds", out)
        return False
    state = _saved_state(out)
    if state is None:
        raise KaffeeError(
            f"{out} already holds a model that is not a resumable training run; pass --force to replace it, or choose another --out"
        )
    step, spec = state["run"]["step"], state.get("spec")
    if spec is None:  # written before checkpoints recorded their spec
        if not resume:
            raise KaffeeError(
                f"{out} holds a checkpoint (step {step}) that does not record its settings; pass --resume to continue it, or --force to start over"
            )
        return True
    changes = spec_changes(spec, want)
    structural = {k: v for k, v in changes.items() if k.split(".")[0] in _STRUCTURAL}
    if structural:
        raise KaffeeError(
            f"{out} holds another run ({_describe(structural)}); pass --force to start over, or choose another --out"
        )
    max_steps = want["train"]["max_steps"]
    if step >= max_steps:
        raise KaffeeError(
            f"{out} holds a finished run (step {step} of {max_steps}); pass --force to start over, or --resume with a larger --max-steps to train on"
        )
    if changes and not resume:
        raise KaffeeError(
            f"{out} holds an unfinished run with other settings ({_describe(changes)}); rerun its own command to continue it, "
            "pass --resume to continue it with these settings, or --force to start over"
        )
    if changes:
        log.warning(
            "--resume: continuing %s at step %d with changed settings (%s)", out, step, _describe(changes)
        )
    else:
        log.info(
            "%s holds an unfinished run of this command: continuing it at step %d of %d (--force starts over)",
            out,
            step,
            max_steps,
        )
    return True


def _check_data(out: Path, train_tokens: int, resume: bool) -> None:
    """Once the data is tokenised: refuse to continue a run on other data unless ``resume``."""
    changes = spec_changes(_saved_state(out).get("spec") or {}, {"data": {"train_tokens": train_tokens}})
    if changes and not resume:
        raise KaffeeError(
            f"the training data changed since {out} was saved ({_describe(changes)}); "
            "pass --resume to continue on it anyway, or --force to start over"
        )
    if changes:
        log.warning("--resume: the training data changed since %s was saved (%s)", out, _describe(changes))


def run_train(job: TrainJob, cfg: TrainConfig, data_cfg: DataConfig, overrides: dict | None = None) -> dict:
    tok = KaffeeTokenizer.from_file(job.tokenizer)
    tok_path = job.tokenizer if job.tokenizer.is_file() else job.tokenizer / "tokenizer.json"
    model_cfg = families.make_config(job.family, job.preset, tok.vocab_size, **(overrides or {}))
    fam = families.get_family(job.family)
    cache_dir = job.data_cache or job.out.parent / f".{job.out.name}.data-cache"
    # an mlm family (bert) sees both sides of every mask already: fill-in-the-middle samples only reorder its text
    fim_rate = data_cfg.fim_rate if fam.neural and fam.objective == "causal" else 0.0
    share = data_cfg.line_fim_share if fim_rate > 0 else 0.0
    data_cfg = dataclasses.replace(data_cfg, fim_rate=fim_rate, line_fim_share=share)  # what the stream gets
    layout = {"fim_rate": fim_rate, "line_fim_share": share, "layout": data_cfg.layout}
    meta = {"corpus": str(job.corpus), "preset": job.preset, "hardware": hardware(), **layout}
    data = {"corpus": str(job.corpus.resolve()), **layout, "max_docs": data_cfg.max_docs}
    spec = run_spec(job.family, model_cfg, tok, cfg, data)
    if job.tokenize_only:  # e.g. the GPU job: tokenise first, then give training the time that is left
        t0 = time.perf_counter()
        train_stream = cached_token_stream(
            job.corpus, "train", tok, tok_path, data_cfg, fam.neural, cache_dir
        )
        valid = _maybe_stream(job.corpus, "valid", tok, tok_path, data_cfg, cache_dir)
        return {
            "tokenized": str(cache_dir),
            "train_tokens": len(train_stream),
            "valid_tokens": 0 if valid is None else len(valid),
            "seconds": round(time.perf_counter() - t0, 1),
        }
    resume = continue_run(job.out, spec, job.resume, job.force)
    valid = _maybe_stream(job.corpus, "valid", tok, tok_path, data_cfg, cache_dir)
    if not fam.neural:
        return _count_ngram(job, model_cfg, tok, tok_path, data_cfg, cache_dir, valid, meta)
    train_stream = cached_token_stream(job.corpus, "train", tok, tok_path, data_cfg, True, cache_dir)
    if resume:
        _check_data(job.out, len(train_stream), job.resume)
    spec["data"]["train_tokens"] = len(train_stream)
    summary = train(
        job.family,
        model_cfg,
        tok,
        train_stream,
        valid,
        job.out,
        cfg,
        resume=resume,
        extra_meta=meta,
        card=lambda m: model_card(job.family, {**m, "config": vars(model_cfg)}, _command()),
        spec=spec,
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


def project_texts(
    source: Path, seed: int, valid_fraction: float = 0.1
) -> tuple[list[tuple[str, str, str]], list[tuple[str, str, str]]]:
    """Train/valid (project, path, text) documents from a corpus dir (its splits) or any source
    (held-out files of it)."""
    docs: list[tuple[str, str, str]] = []
    if (source / "stats.json").is_file():
        from kaffee.data.corpus import load_corpus

        ds = load_corpus(source)
        docs = list(zip(ds["project"], ds["path"], ds["text"], strict=True))
        splits = list(ds["split"])
        train = [d for d, s in zip(docs, splits, strict=True) if s == "train"]
        valid = [d for d, s in zip(docs, splits, strict=True) if s != "train"]
        if train and valid:
            return train, valid
    else:
        if not source.exists():
            raise KaffeeError(f"{source} does not exist")
        for p in sorted(source.rglob("*.java")) if source.is_dir() else []:
            try:
                if p.is_file() and p.stat().st_size < 1_000_000:
                    rel = p.relative_to(source).as_posix()
                    docs.append((source.name, rel, p.read_text(encoding="utf-8", errors="replace")))
            except OSError as exc:
                log.warning("skipping %s: %s", p, exc)
    if len(docs) < 2:
        raise KaffeeError(
            f"{source} has fewer than 2 Java files; fine-tuning needs some to train on and some to hold out"
        )
    order = np.random.default_rng(seed).permutation(len(docs))
    n_valid = max(1, int(round(len(docs) * valid_fraction)))
    return [docs[i] for i in order[n_valid:]], [docs[i] for i in order[:n_valid]]


def _tensors_hash(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def run_finetune(
    from_dir: Path,
    source: Path,
    out: Path,
    cfg: TrainConfig,
    data_cfg: DataConfig,
    resume: bool = False,
    force: bool = False,
    layout: str | None = None,
) -> dict:
    """Fine-tune ``from_dir`` on ``source``; ``layout`` ("repo" or "files") changes how the text is
    laid out (default: the base model's own layout)."""
    base = checkpoint.load_model(from_dir)
    if base.family == "ngram":
        raise KaffeeError(
            "n-gram models are not fine-tuned: retrain by counting with `kaffee train --family ngram`"
        )
    tok = base.tokenizer
    fim_rate = float(base.meta.get("fim_rate", 0.0))
    init_tensors = families.model_tensors(base)
    data = {
        "base": _tensors_hash(init_tensors),
        "corpus": str(source.resolve()),
        "fim_rate": fim_rate,
        "layout": layout or base.meta.get("layout", "files"),
    }
    spec = run_spec(base.family, base.cfg, tok, cfg, data)
    resume_run = continue_run(out, spec, resume, force)
    train_texts, valid_texts = project_texts(source, data_cfg.seed)
    from kaffee.training.data import docs_stream

    _say(f"fine-tuning {from_dir} on {len(train_texts)} files ({len(valid_texts)} held out for validation)")
    # the base model's own layout unless told otherwise: a repository-layout model keeps reading
    # files under path headers; an older model can learn to (--layout repo)
    repo = data["layout"] == REPO_LAYOUT
    share = float(base.meta.get("line_fim_share", data_cfg.line_fim_share if repo else 0.0) or 0.0)
    share = share if fim_rate > 0 else 0.0
    train_stream = docs_stream(train_texts, tok, fim_rate, data_cfg.seed, share, repo)
    if resume_run:
        _check_data(out, len(train_stream), resume)
    spec["data"]["train_tokens"] = len(train_stream)
    valid_stream = docs_stream(valid_texts, tok, 0.0, data_cfg.seed, 0.0, repo)
    block = min(
        base.max_context if base.family == "gpt" else base.cfg.block_size,
        len(valid_stream) - 1,
        len(train_stream) - 1,
    )
    if block < 16:
        raise KaffeeError("the project is too small to fine-tune on (fewer than 16 tokens held out)")
    cfg.block_size = min(cfg.block_size or block, block)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    _say(f"{len(train_stream):,} training tokens; measuring the base model's validation loss ...")
    # the trainer's own validation sampler (block and seed), so its last evaluation is the "after"
    before = evaluate(
        base.module.to(device),
        BlockSampler(valid_stream, cfg.block_size, cfg.seed),
        cfg.eval_blocks,
        cfg.batch_size,
        device,
        objective(base.family, base.cfg, tok),
    )
    _say(f"validation loss before: {before:.4f}")
    meta = {
        **{k: v for k, v in base.meta.items() if k not in ("config", "family", "training")},
        "finetuned_from": str(from_dir),
        "layout": data["layout"],
        "line_fim_share": share,
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
        resume=resume_run,
        init_tensors=init_tensors,
        extra_meta=meta,
        card=lambda m: model_card(base.family, {**m, "config": vars(base.cfg)}, _command()),
        spec=spec,
    )
    # measured at the last step on the same blocks (the held-out stream is longer than a block,
    # so the trainer always validates), not run again
    after_loss = summary["val_loss"]
    result = {
        **summary,
        "val_loss_before": before,
        "val_loss_after": after_loss,
        "train_files": len(train_texts),
        "valid_files": len(valid_texts),
    }
    (out / "finetune.json").write_text(json.dumps(result, indent=2))
    return result


def _say(message: str) -> None:
    """A progress line on stderr (stdout carries the command's result)."""
    print(message, file=sys.stderr, flush=True)
