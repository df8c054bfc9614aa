"""What the repository layout gives a model to read, measured on a corpus split (numbers, not pass/fail).

For each project of the split, the files are put in training order (``training/repo_order``)
and measured in tokens of the model's tokenizer:

- how many files refer to another file of their project (an import or a same-package type);
- of those, how many follow at least one of their dependencies in the order (the rest sit
  in cycles that were cut);
- how many have a dependency's text *within the model's window* (``--block`` tokens)
  before them, which is what a model trained on fixed-length blocks can actually learn
  to read (a dependency three files back and 5,000 tokens away is invisible at 1,024);
- the same within-window rate for the old layout (files in corpus order), the baseline;
- the time the ordering takes.

    python -P bench/repo_layout.py --corpus runs/corpus-full --split train --max-projects 400
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

from kaffee.data.corpus import load_corpus, split_of
from kaffee.data.layout import file_header
from kaffee.data.tokenizer import KaffeeTokenizer
from kaffee.models import default_model_dir
from kaffee.training.repo_order import dependencies, dependency_order


def _within_window(
    order: list[int], deps: list[list[int]], lengths: list[int], block: int
) -> tuple[int, int]:
    """(files with a dependency, of those with one ending within ``block`` tokens before the file's start)."""
    end: dict[int, int] = {}
    pos, with_dep, seen = 0, 0, 0
    for i in order:
        if deps[i]:
            with_dep += 1
            if any(j in end and pos - end[j] < block for j in deps[i]):
                seen += 1
        pos += lengths[i]
        end[i] = pos
    return with_dep, seen


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, required=True)
    ap.add_argument("--split", default="train")
    ap.add_argument("--tokenizer", type=Path, default=default_model_dir() / "tokenizer.json")
    ap.add_argument("--block", type=int, default=1024, help="the model's window in tokens")
    ap.add_argument("--max-projects", type=int, default=None, help="a seeded sample of this many projects")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    tok = KaffeeTokenizer.from_file(args.tokenizer)
    ds = split_of(load_corpus(args.corpus), args.split)
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(ds["project"]):
        groups.setdefault(p, []).append(i)
    names = list(groups)
    if args.max_projects and len(names) > args.max_projects:
        names = random.Random(args.seed).sample(names, args.max_projects)
    totals = {"projects": 0, "files": 0, "tokens": 0, "with_dep": 0, "after_a_dep": 0}
    totals |= {"in_window_repo": 0, "in_window_corpus_order": 0}
    order_seconds = 0.0
    for name in names:
        rows = groups[name]
        sub = ds.select(rows)
        paths, texts = list(sub["path"]), list(sub["text"])
        t0 = time.perf_counter()
        order = dependency_order(paths, texts)
        order_seconds += time.perf_counter() - t0
        deps = dependencies(paths, texts)
        lengths = [
            len(ids) + 1
            for ids in tok.encode_batch([file_header(p) + t for p, t in zip(paths, texts, strict=True)])
        ]
        placed: set[int] = set()
        for i in order:
            totals["after_a_dep"] += bool(deps[i]) and any(j in placed for j in deps[i])
            placed.add(i)
        with_dep, seen = _within_window(order, deps, lengths, args.block)
        _, seen_plain = _within_window(list(range(len(rows))), deps, lengths, args.block)
        totals["projects"] += 1
        totals["files"] += len(rows)
        totals["tokens"] += sum(lengths)
        totals["with_dep"] += with_dep
        totals["in_window_repo"] += seen
        totals["in_window_corpus_order"] += seen_plain
    w = max(1, totals["with_dep"])
    report = {
        "bench": "repo_layout",
        "corpus": str(args.corpus),
        "split": args.split,
        "block": args.block,
        **totals,
        "share_with_dep": round(totals["with_dep"] / max(1, totals["files"]), 4),
        "share_after_a_dep": round(totals["after_a_dep"] / w, 4),
        "share_dep_in_window_repo": round(totals["in_window_repo"] / w, 4),
        "share_dep_in_window_corpus_order": round(totals["in_window_corpus_order"] / w, 4),
        "ordering_seconds": round(order_seconds, 2),
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
