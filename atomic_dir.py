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

A writer holds a shared ``flock`` on every directory it may leave behind (its tmp directory, the
directory it replaces, its trash directory) until it is done with it; the kernel drops the lock
when the writer dies, however it dies. :func:`recover_dir` only touches leftovers whose lock it
can take exclusively, i.e. that no live process holds. The writer's PID stays in the names for
humans only: in a container the same PID recurs on every run (PID 1 under docker), so it says
nothing about liveness. (Where ``flock`` is not supported, e.g. some NFS mounts, liveness falls
back to the PID.) ``.tmp-`` and ``.trash-`` leftovers are deleted (never restored: they may be
half written or half deleted); an ``.old-`` one is restored when ``final`` is missing,
deleted otherwise.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: liveness by PID only
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old|trash)-(?P<pid>\d+)(?:-[^/]*)?$")
_exchange_fn = None  # resolved lazily: libc's renameat2, or False when there is none
# errors of flock on filesystems that do not support it (then liveness falls back to the PID)
_NO_FLOCK = (errno.EBADF, errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS)
_held: dict[int, int] = {}  # inode -> fd holding our shared lock on a directory we may leave behind


def make_tmp_dir(final: Path) -> Path:
    """A new empty directory next to ``final`` (same filesystem) that :func:`recover_dir` recognises."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    _release_deleted()  # tmp dirs of failed writes, deleted by their callers
    return _locked_mkdtemp(f".{final.name}.tmp-{os.getpid()}-", final.parent)


def replace_dir(tmp: Path, final: Path) -> None:
    """Move the complete directory ``tmp`` to ``final``, replacing any directory there."""
    tmp, final = Path(tmp), Path(final)
    try:
        if not final.exists():
            os.rename(tmp, final)  # an empty directory created meanwhile at final is replaced too
            return
        _lock(final)  # the old directory, soon under a leftover name, is ours until deleted
        if _exchange(tmp, final):
            _discard(tmp, final)  # tmp now holds the old directory
            return
        old = _sibling(final, "old")
        # a kill here leaves the old directory as .NAME.old-PID: recover_dir restores it
        os.rename(final, old)
        os.rename(tmp, final)
        _discard(old, final)
    finally:
        _release_deleted()
        _unlock(final)  # now the new directory (or still the old one when an error stopped us)


def recover_dir(final: Path) -> list[str]:
    """Clean up after writers of ``final`` that were killed; returns what was done (also logged)."""
    final = Path(final)
    done: list[str] = []
    with contextlib.ExitStack() as stack:  # the leftovers stay locked (exclusively) while we act on them
        leftovers = [p for p in _leftovers(final) if stack.enter_context(_dead(p))]
        leftovers.sort(key=lambda p: p.stat().st_mtime, reverse=True)
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
    trash = _locked_mkdtemp(f".{final.name}.trash-{os.getpid()}-", final.parent)
    os.rename(path, trash / "d")
    _rmtree(trash)  # our locks on trash and on the old directory go with _release_deleted


def _rmtree(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _leftovers(final: Path) -> list[Path]:
    if not final.parent.is_dir():
        return []
    found = []
    for entry in os.scandir(final.parent):
        m = _LEFTOVER.match(entry.name)
        if m and m["name"] == final.name:
            found.append(Path(entry.path))
    return found


def _locked_mkdtemp(prefix: str, parent: Path) -> Path:
    """mkdtemp, then a shared lock on the new directory; made again if a concurrent recover_dir deleted it
    in between (it holds its exclusive lock while deleting, so after ours is granted the check is sound)."""
    while True:
        path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
        fd = _lock(path)
        try:
            if fd is None or os.stat(path).st_ino == os.fstat(fd).st_ino:
                return path
        except FileNotFoundError:
            pass
        _unlock_fd(fd)


def _lock(path: Path) -> int | None:
    """Hold a shared flock on the directory ``path`` until :func:`_unlock` (or this process's death)."""
    if fcntl is None:
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
    except OSError:
        os.close(fd)
        return None
    ino = os.fstat(fd).st_ino
    if ino in _held:
        os.close(_held.pop(ino))
    _held[ino] = fd
    return fd


def _unlock(path: Path) -> None:
    try:
        ino = os.stat(path).st_ino
    except OSError:
        return
    _unlock_fd(_held.get(ino))


def _unlock_fd(fd: int | None) -> None:
    if fd is None:
        return
    for ino, held in list(_held.items()):
        if held == fd:
            del _held[ino]
    os.close(fd)


def _release_deleted() -> None:
    """Drop our locks on directories that no longer exist (deleted by us or by a caller)."""
    for fd in list(_held.values()):
        try:
            gone = os.fstat(fd).st_nlink == 0
        except OSError:
            gone = True
        if gone:
            _unlock_fd(fd)


@contextlib.contextmanager
def _dead(path: Path) -> Iterator[bool]:
    """Whether no live process holds ``path`` (its writer died); while True, we hold it exclusively."""
    fd = None
    try:
        try:
            fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0) | os.O_NOFOLLOW)
        except OSError:
            fd = None
        if fd is None or fcntl is None:
            yield not _alive(path)
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False  # a live writer holds it (maybe this process)
            return
        except OSError as exc:
            if exc.errno not in _NO_FLOCK:
                raise
            yield not _alive(path)  # no flock here: the PID is all we have
            return
        yield True
    finally:
        if fd is not None:
            os.close(fd)


def _alive(path: Path) -> bool:
    """Liveness by the PID in the name: only where flock is unavailable (a recurring PID fools it)."""
    pid = int(_LEFTOVER.match(path.name)["pid"])  # type: ignore[index]
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
