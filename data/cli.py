"""``kaffee corpus build`` and ``kaffee corpus stats`` (and the tokenizer command, when present)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from kaffee.data.debian import default_cache_dir

BUILD_EPILOG = """\
SOURCE is any of:
  DIR                 a directory or git checkout (project = its name)
  ARCHIVE             .zip, .jar, .tar, .tar.gz, .tgz, .tar.xz, .tar.bz2 (project = its name)
  FILE.java           a single file
  jdk                 the installed JDK's src.zip (each module is a project)
  debian:PKG[=VER]    a Debian source package, fetched with a private apt configuration

A source that cannot be used (missing, unreadable, unknown package, no network) is reported
and skipped; the build fails only when no usable Java file is left. The corpus is written
to a temporary folder and renamed to --out at the end, so an interrupted build leaves no
half-written corpus. Re-running reuses finished Debian downloads (--cache-dir).
"""


def register(subparsers: Any) -> None:
    corpus = subparsers.add_parser("corpus", help="build and inspect a Java training corpus",
                                   description="Build and inspect a Java training corpus (an Arrow dataset).")  # fmt: skip
    sub = corpus.add_subparsers(dest="corpus_command", metavar="ACTION", required=True)

    b = sub.add_parser("build", help="build a corpus from Java sources", epilog=BUILD_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Discover, decode, filter, scrub secrets, dedup and split Java files by project.")  # fmt: skip
    b.add_argument("sources", nargs="*", metavar="SOURCE", help="directories, archives, jdk, debian:PKG")
    b.add_argument("--out", required=True, type=_out_dir, help="corpus directory to create")
    b.add_argument(
        "--recipe",
        help="add the Debian packages of a recipe (data/recipes/NAME, e.g. debian-java) or a recipe file",
    )
    b.add_argument("--seed", type=int, default=0, help="seed of the project split (default 0)")
    b.add_argument(
        "--num-proc",
        type=_positive_int,
        default=os.cpu_count() or 1,
        help="worker processes (default: all cores)",
    )
    b.add_argument("--force", action="store_true", help="replace an existing corpus at --out")
    b.add_argument(
        "--max-file-bytes",
        type=_positive_int,
        default=1_000_000,
        help="drop .java files larger than this (default 1000000)",
    )
    b.add_argument(
        "--cache-dir",
        type=Path,
        default=default_cache_dir(),
        help="Debian download cache (default %(default)s)",
    )
    b.add_argument(
        "--projects-from-subdirs",
        action="store_true",
        help="treat each immediate subdirectory (or top-level archive folder) as its own project",
    )
    b.add_argument("--valid-frac", type=float, default=0.05, help="share of files for valid (default 0.05)")
    b.add_argument("--test-frac", type=float, default=0.05, help="share of files for test (default 0.05)")
    b.add_argument("--near-dup-threshold", type=_threshold, default=0.85,
                   help="MinHash Jaccard threshold, above 0 and at most 0.98 (default 0.85)")  # fmt: skip
    b.add_argument("--no-progress", action="store_true", help="no progress bars")
    b.set_defaults(func=_build)

    s = sub.add_parser(
        "stats", help="print a readable summary of a corpus", description="Summarise a corpus directory."
    )
    s.add_argument("dir", type=Path, help="corpus directory")
    s.add_argument("--json", action="store_true", help="print stats.json as is")
    s.add_argument("--tokenizer", type=Path, default=None,
                   help="also count the tokens of every split with this tokenizer.json (reads all text)")  # fmt: skip
    s.set_defaults(func=_stats)

    try:
        from kaffee.data import tokenizer_cli
    except ImportError:
        pass
    else:
        tokenizer_cli.register(subparsers)


# Argument types: a bad value is an argparse error (exit 2, usage and message) before any work.


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


def _threshold(value: str) -> float:
    from kaffee.data.dedup import MinHashConfig, check_threshold

    try:
        number = float(value)
        check_threshold(number, MinHashConfig().num_perm)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            str(exc) if "must be" in str(exc) else f"not a number: {value!r}"
        ) from None
    return number


def _out_dir(value: str) -> Path:
    from kaffee.data.corpus import out_problem

    path = Path(value).expanduser()
    problem = out_problem(path)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return path


def _build(args: argparse.Namespace) -> int:
    from kaffee.data.corpus import BuildConfig, build
    from kaffee.data.dedup import MinHashConfig
    from kaffee.data.sources import Limits
    from kaffee.data.split import SplitConfig
    from kaffee.data.stats_report import render
    from kaffee.errors import KaffeeError

    if not args.sources and not args.recipe:
        raise KaffeeError("give at least one SOURCE or --recipe (see `kaffee corpus build --help`)")
    try:
        split = SplitConfig(valid_frac=args.valid_frac, test_frac=args.test_frac)
    except ValueError as exc:
        raise KaffeeError(str(exc)) from exc
    cfg = BuildConfig(
        sources=list(args.sources), out=args.out, recipe=args.recipe, seed=args.seed, num_proc=args.num_proc,
        force=args.force, projects_from_subdirs=args.projects_from_subdirs, cache_dir=args.cache_dir,
        limits=Limits(max_file_bytes=args.max_file_bytes), split=split,
        minhash=MinHashConfig(threshold=args.near_dup_threshold), progress=not args.no_progress,
    )  # fmt: skip
    stats = build(cfg)
    print(render(stats, args.out))
    return 0


def _stats(args: argparse.Namespace) -> int:
    import json

    from kaffee.data.corpus import load_corpus, load_stats
    from kaffee.data.stats_report import render

    stats = load_stats(args.dir)
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0
    ds = load_corpus(args.dir)
    print(render(stats, args.dir, rows=ds.num_rows))
    if args.tokenizer is not None:
        from kaffee.data.stats_report import count_tokens, render_tokens
        from kaffee.data.tokenizer import KaffeeTokenizer

        tok = KaffeeTokenizer.from_file(args.tokenizer)
        print(render_tokens(count_tokens(ds, tok), args.tokenizer))
    return 0
