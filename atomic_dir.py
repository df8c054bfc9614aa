"""Replace a directory so that a kill at any instant leaves a complete one at its path.

Usage (corpus, model and checkpoint directories)::

    tmp = make_tmp_dir(final)        # .NAME.tmp-PID-XXXX next to final
    write_everything_into(tmp)       # on failure: shutil.rmtree(tmp)
    replace_dir(tmp, final)          # final is now the new directory
    ...
    recover_dir(final)               # at the start of the next run: clean (or restore) leftovers

:func:`replace_dir` swaps ``tmp`` and ``final`` in one atomic ``renameat2(RENAME_EXCHANGE)``
(Linux >= 3.15 on ext4, xfs, btrfs, tmpfs...), so ``final`` always holds the old or the new
complete directory; the old one, now under the temporary name, is then moved to a trash
name and deleted. Where the exchange is not available it falls back to two renames
(``final`` -> ``.NAME.old-PID``, ``tmp`` -> ``final``): a kill between them leaves no
``final`` but the complete old directory under ``.NAME.old-PID``, which
:func:`recover_dir` renames back.

Leftover names carry the PID of their writer: :func:`recover_dir` only touches those of
dead processes. ``.tmp-`` and ``.trash-`` leftovers are deleted (never restored: they may be
half written or half deleted); an ``.old-`` one is restored when ``final`` is missing,
deleted otherwise.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old|trash)-(?P<pid>\d+)(?:-[^/]*)?$")
_exchange_fn = None  # resolved lazily: libc's renameat2, or False when there is none


def make_tmp_dir(final: Path) -> Path:
    """A new empty directory next to ``final`` (same filesystem) that :func:`recover_dir` recognises."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-{os.getpid()}-", dir=final.parent))


def replace_dir(tmp: Path, final: Path) -> None:
    """Move the complete directory ``tmp`` to ``final``, replacing any directory there."""
    tmp, final = Path(tmp), Path(final)
    if not final.exists():
        os.rename(tmp, final)  # an empty directory created meanwhile at final is replaced too
        return
    if _exchange(tmp, final):
        _discard(tmp, final)  # tmp now holds the old directory
        return
    old = _sibling(final, "old")
    os.rename(final, old)  # a kill here leaves the old directory as .NAME.old-PID: recover_dir restores it
    os.rename(tmp, final)
    _discard(old, final)


def recover_dir(final: Path) -> list[str]:
    """Clean up after writers of ``final`` that were killed; returns what was done (also logged)."""
    final = Path(final)
    done: list[str] = []
    leftovers = sorted(_dead_leftovers(final), key=lambda p: p.stat().st_mtime, reverse=True)
    olds = [p for p in leftovers if _LEFTOVER.match(p.name)["kind"] == "old"]  # type: ignore[index]
    if olds and not os.path.lexists(final):
        os.rename(olds[0], final)  # the newest complete old directory goes back into place
        done.append(f"restored {final} from {olds[0].name}")
        leftovers.remove(olds[0])
    for path in leftovers:
        _rmtree(path)
        done.append(f"removed {path.name}")
    for line in done:
        log.warning("%s: %s (left by a killed run)", final, line)
    return done


def _sibling(final: Path, kind: str) -> Path:
    return final.with_name(f".{final.name}.{kind}-{os.getpid()}")


def _discard(path: Path, final: Path) -> None:
    """Delete a replaced directory; renamed first so that a half-deleted tree never looks restorable."""
    trash = Path(tempfile.mkdtemp(prefix=f".{final.name}.trash-{os.getpid()}-", dir=final.parent))
    os.rename(path, trash / "d")
    _rmtree(trash)


def _rmtree(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _dead_leftovers(final: Path) -> list[Path]:
    if not final.parent.is_dir():
        return []
    found = []
    for entry in os.scandir(final.parent):
        m = _LEFTOVER.match(entry.name)
        if m and m["name"] == final.name and not _alive(int(m["pid"])):
            found.append(Path(entry.path))
    return found


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True  # a replace in progress in this process (callers delete their failed tmp dirs)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths; False when the OS or filesystem cannot."""
    global _exchange_fn
    if _exchange_fn is None:
        try:
            _exchange_fn = ctypes.CDLL(None, use_errno=True).renameat2
        except (AttributeError, OSError):
            _exchange_fn = False
    if not _exchange_fn:
        return False
    rc = _exchange_fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))
