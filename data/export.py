"""Export one split of a corpus as ``{"text", "project", "path"}`` JSON lines, xz-compressed.

For moving training text to a machine without ``datasets`` (``kaffee train`` reads
``train.jsonl.xz`` directly):

    python -m kaffee.data.export runs/corpus --split train --out carry/train.jsonl.xz --max-bytes N --seed 0

With ``--seed`` the files are drawn in a seeded random order until ``--max-bytes`` is
reached, and a file of an application project (IDEs, games, GUI and web applications,
tools: ``recipe_tools.app_packages``, by Debian section) is drawn ``--app-weight`` times as
likely as a library's. What was drawn (files, characters, the applications' share) is
printed and written beside ``--out`` as ``OUT.json``, with what it was drawn from (the corpus's
path and a SHA-256 of its ``stats.json``, a SHA-256 of the application names) so that a later
run can tell whether an existing export came from the same data. ``--dry-run`` draws the
sample and prints that record without writing anything (no ``--out`` needed):

    python -m kaffee.data.export runs/corpus-all --split train --max-bytes 420000000 --seed 0 --app-weight 3 --dry-run
"""

from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import math
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from kaffee.errors import KaffeeError

# Default --app-weight: the bundled model's line exact match fell from 49 % on its own test split to
# 36 % on applications, which are 6 % of the full corpus's train text; at the bundled model's sample
# size (420 M characters) 2 raises that to 9 % without repeating a file, and higher weights add less
# (docs/architecture.md, "The full corpus", has the shares measured for W = 1, 2, 3, 4).
DEFAULT_APP_WEIGHT = 2.0


@dataclass
class ExportConfig:
    split: str = "train"  # which split of the corpus to write
    max_bytes: int | None = None  # stop before the file that would pass this many characters (None: all)
    seed: int | None = None  # draw files in a seeded random order (None: the stored order, nothing weighted)
    app_weight: float = 1.0  # with a seed: an application's file is this many times as likely (1: off)
    preset: int = 6  # xz compression preset


def draw_order(is_app: np.ndarray, seed: int, app_weight: float = 1.0) -> np.ndarray:
    """Row indices in the order they are drawn: weighted sampling without replacement.

    Efraimidis-Spirakis: each row gets the key ``log(u) / w`` and rows are taken by decreasing
    key, which draws each next row with probability proportional to its weight ``w`` (``app_weight``
    for application rows, 1 otherwise). The uniforms ``u`` are the ranks of the seeded shuffle that
    ``datasets.Dataset.shuffle(seed=seed)`` makes (``default_rng(seed).permutation``), so
    ``app_weight`` 1 is exactly that shuffle, and within applications and within libraries the
    order never changes with the weight (only how the two interleave).
    """
    if not (math.isfinite(app_weight) and app_weight > 0):
        raise KaffeeError(f"--app-weight must be positive and finite, not {app_weight}")
    n = len(is_app)
    perm = np.random.default_rng(seed).permutation(n)  # what datasets' shuffle(seed=seed) uses
    pos = np.empty(n, dtype=np.int64)
    pos[perm] = np.arange(n)
    key = np.log1p(-(pos + 1) / (n + 1))  # log u, u = 1 - (pos+1)/(n+1): decreasing along the shuffle
    key = key / np.where(is_app, app_weight, 1.0)
    return np.lexsort((pos, -key))  # largest key first; ties (none in practice) by shuffle position


def take_until(order: np.ndarray, lengths: np.ndarray, max_bytes: int | None) -> np.ndarray:
    """The longest prefix of ``order`` whose texts fit in ``max_bytes`` characters."""
    if max_bytes is None:
        return order
    total = np.cumsum(lengths[order])
    return order[: int(np.searchsorted(total, max_bytes, side="right"))]


def app_mask(projects: Sequence[str], apps: Collection[str]) -> np.ndarray:
    """Which rows belong to an application project (a project named like an application package)."""
    return np.fromiter((p in apps for p in projects), dtype=bool, count=len(projects))


def _text_lengths(ds) -> np.ndarray:  # noqa: ANN001 (datasets.Dataset)
    """Characters of every row's text, read batch by batch (nothing of the text is kept)."""
    import pyarrow.compute as pc

    parts = [
        pc.utf8_length(batch["text"]).to_numpy(zero_copy_only=False)
        for batch in ds.select_columns(["text"]).with_format("arrow").iter(batch_size=4096)
    ]
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)


def source_fields(corpus: Path, apps: Collection[str]) -> dict[str, str | None]:
    """What an export was drawn from: the corpus's path, SHA-256s of its ``stats.json`` and of the app names.

    ``corpus_stats_sha256`` is None when the corpus has no ``stats.json``; ``apps_sha256`` hashes
    the sorted names joined by newlines (UTF-8).
    """
    stats = corpus / "stats.json"
    return {
        "corpus": str(corpus.resolve()),
        "corpus_stats_sha256": hashlib.sha256(stats.read_bytes()).hexdigest() if stats.is_file() else None,
        "apps_sha256": hashlib.sha256("\n".join(sorted(apps)).encode("utf-8")).hexdigest(),
    }


def export_split(
    corpus: Path,
    out: Path | None,
    cfg: ExportConfig,
    apps: Collection[str] | None = None,
    dry_run: bool = False,
) -> dict:
    """Write ``cfg.split`` of ``corpus`` to ``out`` (and what was drawn to ``OUT.json``); return that record.

    ``apps``: the application project names (default: ``recipe_tools.app_packages()``).
    ``dry_run``: draw the sample and return its record (without ``compressed_bytes``), writing nothing;
    ``out`` may then be None.
    """
    if out is None and not dry_run:
        raise KaffeeError("an export needs an output file (or a dry run)")
    from kaffee.data.corpus import load_corpus, split_of

    if apps is None:
        from kaffee.data.recipe_tools import app_packages

        apps = app_packages()
    ds = split_of(load_corpus(corpus), cfg.split)
    projects = ds["project"]
    is_app = app_mask(projects, apps)
    lengths = _text_lengths(ds)
    weight = cfg.app_weight if cfg.seed is not None else 1.0
    order = np.arange(len(ds)) if cfg.seed is None else draw_order(is_app, cfg.seed, weight)
    chosen = take_until(order, lengths, cfg.max_bytes)
    if not dry_run:
        assert out is not None
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        with lzma.open(tmp, "wt", encoding="utf-8", preset=cfg.preset) as f:
            for batch in ds.select(chosen).iter(batch_size=1024):
                for text, project, path in zip(batch["text"], batch["project"], batch["path"], strict=True):
                    f.write(json.dumps({"text": text, "project": project, "path": path}) + "\n")
        tmp.replace(out)
    chars, app_chars = int(lengths[chosen].sum()), int(lengths[chosen][is_app[chosen]].sum())
    record = {
        "split": cfg.split,
        **source_fields(corpus, apps),
        "files": len(chosen),
        "chars": chars,
        "out": None if out is None else str(out),
        **({"dry_run": True} if dry_run else {"compressed_bytes": out.stat().st_size}),
        **{k: v for k, v in asdict(cfg).items() if k in ("max_bytes", "seed")},
        "app_weight": weight,
        "app_projects": len({projects[i] for i in chosen if is_app[i]}),
        "app_files": int(is_app[chosen].sum()),
        "app_chars": app_chars,
        "app_share": round(app_chars / chars, 4) if chars else 0.0,
        "app_share_of_split": round(int(lengths[is_app].sum()) / max(1, int(lengths.sum())), 4),
    }
    if not dry_run:
        sidecar = out.with_name(out.name + ".json")
        sidecar.write_text(json.dumps(record, indent=1) + "\n")
    return record


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("corpus", type=Path)
    ap.add_argument("--split", default="train")
    ap.add_argument("--out", type=Path, default=None, help="the .jsonl.xz to write (not with --dry-run)")
    ap.add_argument("--max-bytes", type=int, default=None, help="stop after this many characters of text")
    ap.add_argument("--seed", type=int, default=None, help="draw files in a seeded random order")
    ap.add_argument(
        "--app-weight",
        type=float,
        default=None,
        help=f"with --seed: draw an application project's file this many times as likely as a library's "
        f"(default {DEFAULT_APP_WEIGHT}; 1 = unweighted, the sample of exports before this option)",
    )
    ap.add_argument(
        "--dry-run",
        action="store_true",
        help="draw the sample and print its record (files, characters, application shares); write nothing",
    )
    args = ap.parse_args(argv)
    if args.out is None and not args.dry_run:
        ap.error("--out is required (or --dry-run)")
    if args.app_weight is not None and args.seed is None:
        ap.error("--app-weight weights the seeded sample: pass --seed too")
    if args.app_weight is not None and not (math.isfinite(args.app_weight) and args.app_weight > 0):
        ap.error("--app-weight must be positive and finite")
    weight = DEFAULT_APP_WEIGHT if args.app_weight is None else args.app_weight
    cfg = ExportConfig(args.split, args.max_bytes, args.seed, weight)
    try:
        print(json.dumps(export_split(args.corpus, args.out, cfg, dry_run=args.dry_run)))
    except KaffeeError as exc:
        print(f"error: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
