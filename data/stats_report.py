"""Human-readable summary of a corpus's stats.json (``kaffee corpus stats``)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from kaffee.data.split import SPLITS

if TYPE_CHECKING:
    import datasets
    from kaffee.data.tokenizer import KaffeeTokenizer


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB" if n >= 100_000 else f"{n / 1e3:,.1f} kB"


def render(stats: dict[str, Any], path: str | os.PathLike[str], rows: int | None = None) -> str:
    lines = [f"corpus {path}  (built {stats.get('created', '?')}, seed {stats.get('seed')})"]
    lines.append(f"  files: {stats['files_kept']:,} kept of {stats['files_seen']:,} seen "
                 f"({_mb(stats['bytes_kept'])} kept of {_mb(stats['bytes_seen'])} read)")  # fmt: skip
    if rows is not None and rows != stats["files_kept"]:
        lines.append(f"  WARNING: the dataset has {rows:,} rows but stats.json says {stats['files_kept']:,}")
    lines.append(f"  projects: {stats['projects']:,}")
    lines.append("  split      files        bytes  projects")
    for s in SPLITS:
        lines.append(f"  {s:<6} {stats['files_per_split'][s]:>9,} {_mb(stats['bytes_per_split'][s]):>12} "
                     f"{stats['projects_per_split'][s]:>9,}")  # fmt: skip
    for s in ("valid", "test"):
        if stats["files_per_split"][s] == 0:
            lines.append(
                f"  note: no {s} files (too few projects); try --projects-from-subdirs or more sources"
            )
    lines.append(f"  duplicates removed: {stats['exact_duplicates']:,} exact, {stats['near_duplicates']:,} near, "
                 f"{stats['near_duplicates_of_valid_test_removed_from_train']:,} train near-dups of valid/test")  # fmt: skip
    sec = stats["secrets_scrubbed"]
    kinds = ", ".join(f"{k} {v:,}" for k, v in sec["by_kind"].items()) or "none"
    lines.append(f"  secrets scrubbed: {sec['total']:,} in {sec['files']:,} files ({kinds})")
    lines.append(f"  latin-1 fallbacks: {stats['latin1_fallbacks']:,}")
    dropped = ", ".join(f"{k} {v:,}" for k, v in stats["dropped"].items()) or "none"
    lines.append(f"  dropped: {stats['files_dropped']:,} ({dropped})")
    if stats.get("sources_without_java"):
        lines.append(f"  sources without .java files: {', '.join(stats['sources_without_java'])}")
    for f in stats.get("failed_sources", []):
        lines.append(f"  failed source {f['source']}: {f['reason']}: {f['message']}")
    if "timing_s" in stats:
        lines.append("  time: " + ", ".join(f"{k} {v} s" for k, v in stats["timing_s"].items()))
    return "\n".join(lines)


def count_tokens(
    ds: datasets.Dataset, tok: KaffeeTokenizer, batch_size: int = 512
) -> dict[str, dict[str, int]]:
    """Tokens and characters of every split, text read batch by batch (``kaffee corpus stats --tokenizer``).

    Each file's text is encoded alone, without the path header or ``<eos>`` that training adds.
    """
    out = {s: {"files": 0, "chars": 0, "tokens": 0} for s in SPLITS}
    for batch in ds.select_columns(["text", "split"]).iter(batch_size=batch_size):
        for text, split, ids in zip(
            batch["text"], batch["split"], tok.encode_batch(batch["text"]), strict=True
        ):
            row = out.setdefault(split, {"files": 0, "chars": 0, "tokens": 0})
            row["files"] += 1
            row["chars"] += len(text)
            row["tokens"] += len(ids)
    return out


def render_tokens(counts: dict[str, dict[str, int]], tokenizer: str | os.PathLike[str]) -> str:
    lines = [f"  tokens ({tokenizer}): split     tokens  chars/token"]
    for s, c in counts.items():
        ratio = f"{c['chars'] / c['tokens']:.2f}" if c["tokens"] else "-"
        lines.append(f"  {s:<6} {c['tokens']:>15,} {ratio:>12}")
    return "\n".join(lines)
