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


def _ignore_spec(folder: Path):
    """The rules of ``folder/.gitignore`` (None when there is none or it cannot be read)."""
    gi = folder / ".gitignore"
    try:
        if not gi.is_file() or gi.is_symlink():
            return None
        lines = gi.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    import pathspec

    return pathspec.GitIgnoreSpec.from_lines(lines)


def _ignored(path: Path, is_dir: bool, specs: list[tuple[Path, object]]) -> bool:
    """Whether any ``.gitignore`` above ``path`` excludes it (last matching rule of the nearest file wins)."""
    for base, spec in reversed(specs):
        rel = path.relative_to(base).as_posix() + ("/" if is_dir else "")
        result = spec.check_file(rel).include  # True: ignored, False: re-included (!), None: no rule
        if result is not None:
            return bool(result)
    return False


def read_java_file(path: Path, max_bytes: int) -> str | None:
    """Text of a Java file, or None when it is a symlink, too big, binary or unreadable."""
    try:
        if path.is_symlink() or not path.is_file() or path.stat().st_size > max_bytes:
            return None
        data = path.read_bytes()
    except OSError as exc:
        log.debug("skipping %s: %s", path, exc)
        return None
    if b"\x00" in data[:8192]:
        return None
    return data.decode("utf-8", errors="replace")


def scan_java_files(roots: list[Path], limits: ScanLimits | None = None) -> dict[str, str]:
    """``{file URI: text}`` of the ``*.java`` files under ``roots``.

    No symlinks followed, binary and huge files skipped, ``.gitignore`` rules (of the
    root and of every folder below it) respected, stops at the limits.
    """
    limits = limits or ScanLimits()
    out: dict[str, str] = {}
    total = 0
    for root in roots:
        if not root.is_dir():
            continue
        specs_at: dict[Path, list[tuple[Path, object]]] = {}
        for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
            here = Path(dirpath)
            parent_specs = specs_at.get(here.parent, []) if here != root else []
            spec = _ignore_spec(here)
            specs = parent_specs + [(here, spec)] if spec is not None else parent_specs
            specs_at[here] = specs
            dirnames[:] = sorted(
                d
                for d in dirnames
                if d not in SKIP_DIRS and not d.startswith(".") and not _ignored(here / d, True, specs)
            )
            for name in sorted(filenames):
                if not name.endswith(".java"):
                    continue
                path = here / name
                if specs and _ignored(path, False, specs):
                    continue
                text = read_java_file(path, limits.max_file_bytes)
                if text is None:
                    continue
                out[path.resolve().as_uri()] = text
                total += len(text)
                if len(out) >= limits.max_files or total >= limits.max_total_bytes:
                    return out
    return out
