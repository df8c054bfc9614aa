"""Export one split of a corpus as ``{"text", "project", "path"}`` JSON lines, xz-compressed.

For moving training text to a machine without ``datasets`` (``kaffee train`` reads
``train.jsonl.xz`` directly):

    python -m kaffee.data.export runs/corpus --split train --out carry/train.jsonl.xz
"""

from __future__ import annotations

import argparse
import json
import lzma
from pathlib import Path

from kaffee.errors import KaffeeError


def export_split(
    corpus: Path, split: str, out: Path, max_bytes: int | None = None, preset: int = 6, seed: int | None = None
) -> dict:
    from kaffee.data.corpus import load_corpus, split_of

    ds = split_of(load_corpus(corpus), split)
    if seed is not None:  # sample files from every project when --max-bytes cuts the split short
        ds = ds.shuffle(seed=seed).flatten_indices()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    n, size = 0, 0
    with lzma.open(tmp, "wt", encoding="utf-8", preset=preset) as f:
        for row in ds:
            if max_bytes is not None and size + len(row["text"]) > max_bytes:
                break
            f.write(json.dumps({"text": row["text"], "project": row["project"], "path": row["path"]}) + "\n")
            n += 1
            size += len(row["text"])
    tmp.replace(out)
    return {"split": split, "files": n, "chars": size, "out": str(out), "compressed_bytes": out.stat().st_size}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("corpus", type=Path)
    ap.add_argument("--split", default="train")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--max-bytes", type=int, default=None, help="stop after this many characters of text")
    ap.add_argument("--seed", type=int, default=None, help="shuffle files with this seed first")
    args = ap.parse_args(argv)
    try:
        print(json.dumps(export_split(args.corpus, args.split, args.out, args.max_bytes, seed=args.seed)))
    except KaffeeError as exc:
        print(f"error: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
