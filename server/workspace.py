"""Reading a workspace's Java files for the engine's cache, within fixed limits."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

SKIP_DIRS = frozenset(
    (".git", ".hg", ".svn", ".idea", ".gradle", "node_modules", "target", "build", "out", ".venv")
)


@dataclass
class ScanLimits:
    max_files: int = 2000  # stop after this many Java files
    max_file_bytes: int = 1_000_000  # skip larger files (generated code, data)
    max_total_bytes: int = 16_000_000  # stop after reading this much


def scan_java_files(roots: list[Path], limits: ScanLimits | None = None) -> dict[str, str]:
    """``{file URI: text}`` of the ``*.java`` files under ``roots``: no symlinks followed, binary skipped."""
    limits = limits or ScanLimits()
    out: dict[str, str] = {}
    total = 0
    for root in roots:
        if not root.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
            dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("."))
            for name in sorted(filenames):
                if not name.endswith(".java"):
                    continue
                path = Path(dirpath) / name
                try:
                    if path.is_symlink() or not path.is_file() or path.stat().st_size > limits.max_file_bytes:
                        continue
                    data = path.read_bytes()
                except OSError as exc:
                    log.debug("skipping %s: %s", path, exc)
                    continue
                if b"\x00" in data[:8192]:
                    continue
                out[path.resolve().as_uri()] = data.decode("utf-8", errors="replace")
                total += len(data)
                if len(out) >= limits.max_files or total >= limits.max_total_bytes:
                    return out
    return out
