"""Corpus build throughput and peak memory: files/s, MB/s and peak RSS (DESIGN.md, "Numbers").

    python bench/corpus.py                       # all cores, the installed JDK's whole src.zip
    python bench/corpus.py --num-proc 1          # one core
    python bench/corpus.py --src PATH.zip        # another JDK's src.zip
    python bench/corpus.py --sources-file LIST   # sources listed one per line (dirs, archives, debian:PKG)

Builds into a temporary folder (deleted afterwards) and prints one JSON line plus a summary.
Peak RSS is the build process's (``ru_maxrss``); the worker processes' largest is given apart.
Run it on two source lists of different sizes to see that memory does not grow with the corpus.
The design target is the full debian-java recipe in <= 30 min on 2 cores and <= 8 GB peak RSS.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import tempfile
import time
from pathlib import Path

from kaffee.data.corpus import BuildConfig, build
from kaffee.data.sources import find_jdk_src_zip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--num-proc", type=int, default=os.cpu_count() or 1, help="worker processes")
    ap.add_argument("--src", help="a JDK src.zip (default: the installed JDK's)")
    ap.add_argument(
        "--sources-file", type=Path, help="build these sources (one per line) instead of a src.zip"
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.sources_file:
        src = str(args.sources_file)
        sources = [line.strip() for line in args.sources_file.read_text().splitlines() if line.strip()]
    else:
        src = args.src or find_jdk_src_zip()
        if src is None:
            raise SystemExit("no JDK src.zip found; install openjdk-17-source or pass --src")
        sources = ["jdk" if not args.src else str(src)]
    with tempfile.TemporaryDirectory() as tmp:
        # "jdk" projects per module; an explicit path is read the same way with --projects-from-subdirs
        cfg = BuildConfig(sources=sources, out=Path(tmp) / "corpus", num_proc=args.num_proc,
                          projects_from_subdirs=not args.sources_file, progress=False)  # fmt: skip
        t0 = time.perf_counter()
        stats = build(cfg)
        seconds = time.perf_counter() - t0
    mb = stats["bytes_seen"] / 1e6
    result = {
        "bench": "corpus_build", "sources": str(src), "num_proc": args.num_proc, "cpus": os.cpu_count(),
        "files_seen": stats["files_seen"], "files_kept": stats["files_kept"], "mb_read": round(mb, 1),
        "seconds": round(seconds, 2), "files_per_s": round(stats["files_seen"] / seconds, 1),
        "mb_per_s": round(mb / seconds, 2), "timing_s": stats["timing_s"],
        "mb_kept": round(stats["bytes_kept"] / 1e6, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "peak_rss_workers_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
    }  # fmt: skip
    print(json.dumps(result))
    print(f"{stats['files_seen']:,} files, {mb:,.1f} MB in {seconds:.1f} s on {args.num_proc} process(es): "
          f"{result['files_per_s']:,.0f} files/s, {result['mb_per_s']:.2f} MB/s; {result['mb_kept']:,.1f} MB kept, "
          f"peak RSS {result['peak_rss_mb']:,.0f} MB (workers {result['peak_rss_workers_mb']:,.0f} MB)")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
