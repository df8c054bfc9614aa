"""Corpus build throughput on the installed JDK's src.zip: files/s and MB/s (DESIGN.md, "Numbers").

    python bench/corpus.py                 # all cores, whole src.zip
    python bench/corpus.py --num-proc 1    # one core
    python bench/corpus.py --src PATH.zip  # another JDK's src.zip

Builds into a temporary folder (deleted afterwards) and prints one JSON line plus a summary.
The design target is the full debian-java recipe in <= 30 min on 2 cores, excluding download.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path

from kaffee.data.corpus import BuildConfig, build
from kaffee.data.sources import find_jdk_src_zip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--num-proc", type=int, default=os.cpu_count() or 1, help="worker processes")
    ap.add_argument("--src", help="a JDK src.zip (default: the installed JDK's)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    src = args.src or find_jdk_src_zip()
    if src is None:
        raise SystemExit("no JDK src.zip found; install openjdk-17-source or pass --src")
    with tempfile.TemporaryDirectory() as tmp:
        # "jdk" projects per module; an explicit path is read the same way with --projects-from-subdirs
        cfg = BuildConfig(sources=["jdk" if not args.src else str(src)], out=Path(tmp) / "corpus",
                          num_proc=args.num_proc, projects_from_subdirs=True, progress=False)  # fmt: skip
        t0 = time.perf_counter()
        stats = build(cfg)
        seconds = time.perf_counter() - t0
    mb = stats["bytes_seen"] / 1e6
    result = {
        "bench": "corpus_build_jdk", "src_zip": str(src), "num_proc": args.num_proc, "cpus": os.cpu_count(),
        "files_seen": stats["files_seen"], "files_kept": stats["files_kept"], "mb_read": round(mb, 1),
        "seconds": round(seconds, 2), "files_per_s": round(stats["files_seen"] / seconds, 1),
        "mb_per_s": round(mb / seconds, 2), "timing_s": stats["timing_s"],
    }  # fmt: skip
    print(json.dumps(result))
    print(f"{stats['files_seen']:,} files, {mb:,.1f} MB in {seconds:.1f} s on {args.num_proc} process(es): "
          f"{result['files_per_s']:,.0f} files/s, {result['mb_per_s']:.2f} MB/s")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
