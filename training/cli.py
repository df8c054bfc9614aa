"""`kaffee train` and `kaffee finetune`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

FAMILY_NAMES = ("gpt", "lstm", "ngram", "bert")  # kept literal so `kaffee --help` does not import torch


def _loop_args(p: argparse.ArgumentParser, lr: float, steps: int) -> None:
    p.add_argument(
        "--max-steps",
        type=int,
        default=steps,
        help=f"optimizer steps (default {steps}); also the cosine schedule length",
    )
    p.add_argument("--max-minutes", type=float, default=None, help="stop and save after this many minutes")
    p.add_argument("--batch-size", type=int, default=16, help="blocks per micro-batch per process")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    p.add_argument(
        "--block-size", type=int, default=None, help="training sequence length (default: the model's context)"
    )
    p.add_argument("--lr", type=float, default=lr, help=f"peak learning rate (default {lr})")
    p.add_argument(
        "--warmup-steps", type=int, default=None, help="linear warm-up steps (default: 5%% of max steps)"
    )
    p.add_argument("--eval-interval", type=int, default=None, help="steps between validation passes")
    p.add_argument("--save-interval", type=int, default=None, help="steps between checkpoints")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--num-proc", type=int, default=2, help="processes for tokenisation")
    p.add_argument("--max-docs", type=int, default=None, help="use at most this many documents (smoke runs)")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile on GPU")
    p.add_argument("--precision", choices=["auto", "bf16", "no"], default="auto")


def _out_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="model directory to write; rerunning the same command continues its unfinished run",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run saved in --out even with changed loop settings (start one if there is none)",
    )
    p.add_argument(
        "--force", action="store_true", help="start over even if --out holds a finished or another run"
    )


def _train_config(args: argparse.Namespace):
    from kaffee.training.trainer import TrainConfig

    steps = args.max_steps
    return TrainConfig(
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        lr=args.lr,
        warmup_steps=args.warmup_steps if args.warmup_steps is not None else max(1, steps // 20),
        max_steps=steps,
        max_minutes=args.max_minutes,
        eval_interval=args.eval_interval or max(1, steps // 10),
        save_interval=args.save_interval or max(1, steps // 4),
        seed=args.seed,
        compile=not args.no_compile,
        precision=args.precision,
        block_size=args.block_size,
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    t = subparsers.add_parser(
        "train",
        help="train a gpt, lstm, ngram or bert model on a corpus",
        description="Train a model family from a preset on a corpus directory (or a train.jsonl[.xz] export) "
        "and write a model directory (config.json, model.safetensors, tokenizer.json, card.md).",
    )
    t.add_argument("--family", choices=FAMILY_NAMES, required=True)
    t.add_argument("--preset", default="small", help="nano | small | base (default small)")
    t.add_argument("--corpus", type=Path, required=True, help="corpus directory or train.jsonl[.xz]")
    t.add_argument(
        "--tokenizer", type=Path, required=True, help="tokenizer.json from `kaffee tokenizer train`"
    )
    _out_args(t)
    t.add_argument(
        "--fim-rate", type=float, default=0.5, help="fraction of documents in fill-in-the-middle form"
    )
    t.add_argument(
        "--line-fim-share",
        type=float,
        default=0.5,
        help="of the FIM documents, the share whose middle is the rest of a line or a few lines "
        "from a cursor (the others: cut at two random characters of the file)",
    )
    t.add_argument(
        "--no-repo-level",
        dest="repo_level",
        action="store_false",
        help="do not lay out the files of a project side by side (dependency order, path headers)",
    )
    t.add_argument(
        "--tokenize-only",
        action="store_true",
        help="write the tokenised data to the cache (see --data-cache) and stop; a later run with the same "
        "data options starts training at once",
    )
    t.add_argument(
        "--data-cache",
        type=Path,
        default=None,
        help="folder for the tokenised data (default: .OUT.data-cache beside --out); two runs on the same "
        "data with one --data-cache tokenise it once",
    )
    t.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a model config field, e.g. --set n_layer=8",
    )
    _loop_args(t, lr=1e-3, steps=1000)
    t.set_defaults(func=cmd_train)

    f = subparsers.add_parser(
        "finetune",
        help="continue training a model on your own code",
        description="Fine-tune a model directory on a corpus directory or any source of Java files "
        "(held-out files of it give the validation loss, reported before and after).",
    )
    f.add_argument("--from", dest="from_dir", type=Path, required=True, help="model directory to start from")
    f.add_argument("--corpus", type=Path, required=True, help="corpus directory or a directory of Java code")
    f.add_argument(
        "--layout",
        choices=("repo", "files"),
        default=None,
        help="repo: files of a project side by side under path headers (what the engine's project "
        "context then reproduces); files: one file at a time (default: the base model's layout)",
    )
    _out_args(f)
    _loop_args(f, lr=1e-4, steps=200)
    f.set_defaults(func=cmd_finetune)


def _overrides(pairs: list[str]) -> dict:
    from kaffee.errors import KaffeeError

    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise KaffeeError(f"--set expects KEY=VALUE, got {pair!r}")
        k, v = pair.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def _emit(record: dict) -> None:
    # one write per line: under torchrun every rank prints, and print() writes the
    # newline separately, which lets two ranks' lines interleave
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


def cmd_train(args: argparse.Namespace) -> int:
    from kaffee.training.run import TrainJob, run_train

    for name in ("fim_rate", "line_fim_share"):
        if not 0.0 <= getattr(args, name) <= 1.0:  # also false for NaN
            from kaffee.errors import KaffeeError

            raise KaffeeError(f"--{name.replace('_', '-')} must be between 0 and 1")
    from kaffee.training.data import DataConfig

    job = TrainJob(
        args.family,
        args.preset,
        args.corpus,
        args.tokenizer,
        args.out,
        args.resume,
        args.force,
        tokenize_only=args.tokenize_only,
        data_cache=args.data_cache,
    )
    data_cfg = DataConfig(
        fim_rate=args.fim_rate,
        line_fim_share=args.line_fim_share,
        repo_level=args.repo_level,
        seed=args.seed,
        num_proc=args.num_proc,
        max_docs=args.max_docs,
    )
    summary = run_train(job, _train_config(args), data_cfg, _overrides(args.set))
    _emit(summary)
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from kaffee.training.data import DataConfig
    from kaffee.training.run import run_finetune

    data_cfg = DataConfig(seed=args.seed, num_proc=args.num_proc, max_docs=args.max_docs)
    result = run_finetune(
        args.from_dir,
        args.corpus,
        args.out,
        _train_config(args),
        data_cfg,
        args.resume,
        args.force,
        args.layout,
    )
    _emit(result)
    print(f"validation loss: {result['val_loss_before']:.4f} -> {result['val_loss_after']:.4f} (nats/token)")
    return 0
