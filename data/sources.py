"""Where Java files come from: directories, git checkouts, archives, the JDK's src.zip, Debian packages.

Every source yields :class:`RawFile` records in a deterministic order. A file that cannot be
used at discovery (too large, unreadable, a symlink loop, an archive member that would
expand without bound) is still yielded, with ``data=None`` and a drop ``reason``, so the
pipeline counts it. A source that cannot be used at all raises :class:`SourceError`; the
builder reports it and goes on with the others.

Hostile trees and archives: a symlink whose target lies outside the source directory is
never read (``symlink_outside_source``); symlinks inside it are followed, and each file and
directory is read once whatever the number of links to it. Archive member names are
normalised to relative POSIX paths (backslashes are separators; drive letters, leading
slashes and ``.`` are dropped, ``..`` is resolved); a name that would climb out of the
archive root, or holds control characters, is skipped (``unsafe_path``) rather than clamped,
since no honest archive needs one.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import shutil
import stat
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from kaffee.data import debian

log = logging.getLogger(__name__)

SKIP_DIRS = frozenset({".git", ".hg", ".svn", ".bzr", "node_modules", "__pycache__"})
ZIP_SUFFIXES = (".zip", ".jar")
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.bz2", ".tbz2", ".tar.lzma")
RECIPES_DIR = Path(__file__).resolve().parent / "recipes"


@dataclass
class Limits:
    """Bounds that keep a hostile or broken input from eating the machine."""

    max_file_bytes: int = 1_000_000  # a .java file larger than this is dropped (too_large) without being read
    max_archive_bytes: int = 16 << 30  # stop expanding one archive after this many uncompressed bytes
    max_ratio: float = 100.0  # expansion ratio above which an archive (member) is treated as a bomb
    ratio_floor_bytes: int = 64 << 20  # the whole-archive ratio check applies only past this many bytes
    member_ratio_floor_bytes: int = 64 << 10  # the per-zip-member ratio check applies only past this size


@dataclass
class RawFile:
    """One discovered .java file (or a file dropped at discovery)."""

    project: str  # project the file belongs to (the unit of the train/valid/test split)
    path: str  # path inside its project's source (posix, relative)
    data: bytes | None  # raw bytes, None when dropped at discovery
    reason: str | None = None  # drop reason when data is None


class SourceError(Exception):
    """A source that cannot be read at all; ``reason`` is a short tag for stats.json."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class Source:
    """A resolved source: something that can list its Java files."""

    spec: str  # as given by the user (path, "jdk", "debian:PKG")
    kind: str  # dir | file | zip | tar | debian
    paths: list[Path]  # the directory, file or archive(s) to read
    project: str  # project name (or prefix when projects come from subdirectories)
    projects_from_subdirs: bool = False  # each top-level folder is its own project "<project>/<folder>"
    limits: Limits = field(default_factory=Limits)  # size and expansion bounds

    def iter_files(self) -> Iterator[RawFile]:
        for path in self.paths:
            if self.kind == "dir":
                yield from _walk_dir(path, self)
            elif self.kind == "file":
                yield _read_file(path, self.project, path.name, self.limits)
            elif archive_kind(path) == "zip":
                yield from _iter_zip(path, self)
            else:
                yield from _iter_tar(path, self)

    def project_for(self, rel: str) -> str:
        if not self.projects_from_subdirs:
            return self.project
        head, sep, _ = rel.partition("/")
        return f"{self.project}/{head}" if sep else self.project


def is_java(name: str) -> bool:
    return name.lower().endswith(".java")


def archive_kind(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith(ZIP_SUFFIXES):
        return "zip"
    if name.endswith(TAR_SUFFIXES):
        return "tar"
    return None


def archive_stem(path: Path) -> str:
    name = path.name
    for suffix in sorted(ZIP_SUFFIXES + TAR_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


_DRIVE = re.compile(r"^[A-Za-z]:")
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")


def safe_member_path(name: str) -> str | None:
    """An archive member name as a relative POSIX path that stays inside the archive, or None."""
    if _CONTROL_CHARS.search(name):
        return None
    parts: list[str] = []
    for part in _DRIVE.sub("", name.replace("\\", "/")).split("/"):
        if part == "..":
            if not parts:
                return None  # climbs out of the archive root
            parts.pop()
        elif part not in ("", "."):
            parts.append(part)
    return "/".join(parts) or None


def _unsafe(path: Path, name: str, src: Source) -> RawFile:
    log.warning("%s: member name %r leaves the archive root or holds control characters, skipped", path, name)
    base = ascii(name.replace("\\", "/").rsplit("/", 1)[-1])[1:-1]  # even a dropped file keeps no unsafe path
    return RawFile(src.project, base, None, "unsafe_path")


def _inside(path: str, root: str) -> bool:
    return os.path.commonpath([path, root]) == root


def _read_file(path: Path, project: str, rel: str, limits: Limits) -> RawFile:
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            return RawFile(project, rel, None, "not_regular_file")
        if st.st_size > limits.max_file_bytes:
            return RawFile(project, rel, None, "too_large")
        with open(path, "rb") as fh:
            data = fh.read(limits.max_file_bytes + 1)
    except OSError as exc:
        reason = "symlink_loop" if exc.errno == 40 else "unreadable"  # 40 = ELOOP
        log.warning("%s: %s (%s)", path, reason, exc.strerror or exc)
        return RawFile(project, rel, None, reason)
    if len(data) > limits.max_file_bytes:
        return RawFile(project, rel, None, "too_large")
    return RawFile(project, rel, data)


def _walk_dir(root: Path, src: Source) -> Iterator[RawFile]:
    """Depth-first, sorted walk. Symlinks are followed within ``root`` only; every directory and file
    is visited once (a second link to it is skipped silently, so nothing is counted twice)."""
    try:
        root_st = os.stat(root)
    except OSError as exc:
        raise SourceError("unreadable", f"{root}: cannot read directory ({exc.strerror})") from exc
    root_real = os.path.realpath(root)
    visited = {(root_st.st_dev, root_st.st_ino)}
    seen_files: set[tuple[int, int]] = set()
    stack: list[tuple[Path, str]] = [(root, "")]
    while stack:
        folder, rel = stack.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            log.warning("%s: cannot list directory (%s)", folder, exc.strerror)
            yield RawFile(src.project_for(rel), rel or ".", None, "unreadable")
            continue
        subdirs = []
        for entry in entries:
            child_rel = f"{rel}/{entry.name}" if rel else entry.name
            try:
                is_dir = entry.is_dir(follow_symlinks=True)
            except OSError:
                is_dir = False
            if (is_dir and entry.name in SKIP_DIRS) or (not is_dir and not is_java(entry.name)):
                continue
            if entry.is_symlink() and not _inside(os.path.realpath(entry.path), root_real):
                log.warning(
                    "%s: symlink to %s, outside the source, skipped", entry.path, os.path.realpath(entry.path)
                )
                yield RawFile(src.project_for(child_rel), child_rel, None, "symlink_outside_source")
                continue
            try:
                st = os.stat(entry.path)
            except OSError:
                if is_dir:
                    yield RawFile(src.project_for(child_rel), child_rel, None, "unreadable")
                else:  # _read_file tells a symlink loop from an unreadable file
                    yield _read_file(Path(entry.path), src.project_for(child_rel), child_rel, src.limits)
                continue
            key = (st.st_dev, st.st_ino)
            if is_dir:
                if key in visited:
                    if entry.is_symlink():
                        log.warning("%s: symlink loop (or repeated directory), skipped", entry.path)
                        yield RawFile(src.project_for(child_rel), child_rel, None, "symlink_loop")
                    continue
                visited.add(key)
                subdirs.append((Path(entry.path), child_rel))
            elif key not in seen_files:
                seen_files.add(key)
                yield _read_file(Path(entry.path), src.project_for(child_rel), child_rel, src.limits)
        stack.extend(reversed(subdirs))


def _iter_zip(path: Path, src: Source) -> Iterator[RawFile]:
    lim = src.limits
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise SourceError("bad_archive", f"{path}: not a readable zip/jar archive ({exc})") from exc
    total = 0
    with zf:
        for info in zf.infolist():
            if info.is_dir() or not is_java(info.filename):
                continue
            name = safe_member_path(info.filename)
            if name is None:
                yield _unsafe(path, info.filename, src)
                continue
            project = src.project_for(name)
            ratio = info.file_size / max(info.compress_size, 1)
            if info.file_size > lim.member_ratio_floor_bytes and ratio > lim.max_ratio:
                log.warning("%s!%s: expands %.0fx (zip bomb?), skipped", path, name, ratio)
                yield RawFile(project, name, None, "archive_bomb")
                continue
            if info.file_size > lim.max_file_bytes:
                yield RawFile(project, name, None, "too_large")
                continue
            if total + info.file_size > lim.max_archive_bytes:
                log.warning(
                    "%s: more than %d bytes expanded; the rest is skipped", path, lim.max_archive_bytes
                )
                yield RawFile(project, name, None, "archive_bomb")
                return
            try:
                with zf.open(info) as fh:
                    data = fh.read(lim.max_file_bytes + 1)  # never trust the declared size
            except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, RuntimeError) as exc:
                log.warning("%s!%s: unreadable member (%s)", path, name, exc)
                yield RawFile(project, name, None, "unreadable")
                continue
            total += len(data)
            if len(data) > lim.max_file_bytes:
                yield RawFile(project, name, None, "archive_bomb")
                continue
            yield RawFile(project, name, data)


def _iter_tar(path: Path, src: Source) -> Iterator[RawFile]:
    lim = src.limits
    try:
        compressed = max(path.stat().st_size, 1)
        tf = tarfile.open(path, "r|*")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise SourceError("bad_archive", f"{path}: not a readable tar archive ({exc})") from exc
    bound = min(lim.max_archive_bytes, max(lim.ratio_floor_bytes, int(compressed * lim.max_ratio)))
    try:
        with tf:
            for member in tf:
                if tf.offset > bound:  # tf.offset already counts this member's data
                    log.warning("%s: expands beyond %d bytes (%.0fx; archive bomb?), the rest is skipped",
                                path, bound, tf.offset / compressed)  # fmt: skip
                    yield RawFile(src.project_for(member.name), member.name, None, "archive_bomb")
                    return
                if not member.isfile() or not is_java(member.name):
                    continue
                name = safe_member_path(member.name)
                if name is None:
                    yield _unsafe(path, member.name, src)
                    continue
                project = src.project_for(name)
                if member.size > lim.max_file_bytes:
                    yield RawFile(project, name, None, "too_large")
                    continue
                fh = tf.extractfile(member)
                data = fh.read(lim.max_file_bytes + 1) if fh else None
                yield RawFile(project, name, data, None if data is not None else "unreadable")
    except (tarfile.TarError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise SourceError("bad_archive", f"{path}: archive is corrupt or truncated ({exc})") from exc


def find_jdk_src_zip(java_home: str | None = None, jvm_glob: str = "/usr/lib/jvm/*") -> Path | None:
    """The src.zip of an installed JDK: $JAVA_HOME, then `java` on PATH, then /usr/lib/jvm/*."""
    homes: list[Path] = []
    java_home = java_home if java_home is not None else os.environ.get("JAVA_HOME")
    if java_home:
        homes.append(Path(java_home))
    java = shutil.which("java")
    if java:
        homes.append(Path(os.path.realpath(java)).parent.parent)
    homes += [Path(p) for p in sorted(glob.glob(jvm_glob))]
    for home in homes:
        for candidate in (home / "lib" / "src.zip", home / "src.zip"):
            if candidate.is_file():  # follows symlinks; a dangling one is skipped
                return candidate.resolve()
    return None


def resolve_path(spec: str, limits: Limits, projects_from_subdirs: bool = False) -> Source:
    """A directory, git checkout, single .java file or archive given by path."""
    path = Path(spec).expanduser()
    if not path.exists():
        raise SourceError("not_found", f"{spec}: no such file or directory")
    if path.is_dir():
        name = path.resolve().name or "root"
        return Source(spec, "dir", [path], name, projects_from_subdirs, limits)
    if archive_kind(path):
        return Source(
            spec, archive_kind(path) or "zip", [path], archive_stem(path), projects_from_subdirs, limits
        )
    if is_java(path.name):
        return Source(spec, "file", [path], path.resolve().parent.name or "root", False, limits)
    raise SourceError("unsupported", f"{spec}: not a directory, a .java file or a supported archive "
                      f"({', '.join(ZIP_SUFFIXES + TAR_SUFFIXES)})")  # fmt: skip


def resolve_jdk(spec: str, limits: Limits) -> Source:
    src_zip = find_jdk_src_zip()
    if src_zip is None:
        raise SourceError("no_jdk_sources", "no JDK src.zip found ($JAVA_HOME, java on PATH, /usr/lib/jvm/*); "
                          "install one, e.g. `apt-get install openjdk-17-source`, or pass a src.zip path")  # fmt: skip
    log.info("jdk: using %s", src_zip)
    # Each top-level module (java.base, java.desktop, ...) is a project, so the JDK alone can be split.
    return Source(spec, "zip", [src_zip], "openjdk-src", True, limits)


def resolve_debian(name: str, version: str | None, apt: debian.AptConfig, limits: Limits) -> Source:
    """Fetch (or reuse from the cache) a Debian source package; its upstream tarballs are the source."""
    try:
        paths = debian.fetch(apt, name, version)
    except debian.DebianError as exc:
        raise SourceError(exc.reason, str(exc)) from exc
    return Source(f"debian:{name}" + (f"={version}" if version else ""), "tar", paths, name, False, limits)


def load_recipe(name: str) -> list[tuple[str, str | None]]:
    """Packages of a recipe: a file under data/recipes/ or a path. Lines: ``NAME [VERSION]  # comment``."""
    path = Path(name) if ("/" in name or Path(name).is_file()) else RECIPES_DIR / name
    if not path.is_file():
        available = (
            sorted(p.name for p in RECIPES_DIR.iterdir() if p.is_file()) if RECIPES_DIR.is_dir() else []
        )
        raise SourceError(
            "unknown_recipe", f"unknown recipe {name!r}; available: {', '.join(available) or 'none'}"
        )
    packages = []
    for line in path.read_text().splitlines():
        fields = line.split("#", 1)[0].split()
        if fields:
            packages.append((fields[0], fields[1] if len(fields) > 1 else None))
    return packages
