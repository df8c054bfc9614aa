"""`kaffee tokenizer train`: byte-level BPE on the train split of a corpus directory."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from kaffee.data.tokenizer import KaffeeTokenizer, TokenizerTrainConfig

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("tokenizer", help="train the BPE tokenizer", description="Tokenizer commands.")
    sub = p.add_subparsers(dest="tokenizer_command", metavar="ACTION", required=True)
    t = sub.add_parser(
        "train",
        help="train a byte-level BPE tokenizer on a corpus's train split",
        description="Train a lossless byte-level BPE tokenizer (tokenizers) on the train split of a corpus directory.",
    )
    t.add_argument("--corpus", required=True, type=Path, help="corpus directory written by `kaffee corpus build`")
    t.add_argument("--out", required=True, type=Path, help="where to write tokenizer.json")
    t.add_argument("--vocab-size", type=int, default=16384, help="vocabulary size incl. special tokens (default 16384)")
    t.add_argument("--max-bytes", type=int, default=400_000_000, help="cap on training text bytes")
    t.add_argument("--seed", type=int, default=0, help="seed of the file order (matters with --max-bytes)")
    t.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    from kaffee.data.corpus import load_corpus, split_of

    if args.vocab_size < 300:
        from kaffee.errors import KaffeeError

        raise KaffeeError("--vocab-size must be at least 300 (256 bytes + special tokens + merges)")
    train = split_of(load_corpus(args.corpus), "train")
    # a seeded shuffle, so that a --max-bytes cap samples every project rather than the first few
    texts = (row["text"] for row in train.shuffle(seed=args.seed).flatten_indices(num_proc=1))
    tok = KaffeeTokenizer.train(texts, TokenizerTrainConfig(vocab_size=args.vocab_size, max_bytes=args.max_bytes))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tok.save(tmp)
    tmp.replace(args.out)
    print(json.dumps({"tokenizer": str(args.out), "vocab_size": tok.vocab_size, "train_files": len(train)}))
    return 0
