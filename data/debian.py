"""Debian source packages through a private apt configuration (DESIGN.md, "Data without the internet").

The ``deb-src`` entries are derived at run time from the machine's own ``deb`` entries
(same URIs, suites, components and keyring), written into a private directory under the
cache, and apt is pointed at it with ``-o Dir::...`` options. The system's apt files are
never edited and no mirror is hard-coded. Downloads land in a per-package cache folder
and are skipped when a previous run completed them (resumable).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

_TARBALL_RE = re.compile(r"\.tar\.(gz|xz|bz2|lzma|zst)$|\.tgz$")
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
_VERSION_RE = re.compile(r"^[A-Za-z0-9.+:~-]+$")


def default_cache_dir() -> Path:
    """$KAFFEE_CACHE_DIR, else $XDG_CACHE_HOME/kaffee, else ~/.cache/kaffee."""
    if os.environ.get("KAFFEE_CACHE_DIR"):
        return Path(os.environ["KAFFEE_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kaffee"


@dataclass
class AptConfig:
    """Where the private apt state lives and which system files it is derived from."""

    cache_dir: Path  # root of the private state: etc/, lists/, apt/, src/
    sources_list: Path = Path("/etc/apt/sources.list")  # the system's one-line deb entries
    sources_parts: Path = Path("/etc/apt/sources.list.d")  # the system's *.list / *.sources files
    timeout_s: float = 600.0  # per apt-get call
    apt_get: str = "apt-get"  # the apt-get binary
    binary: bool = False  # derive `deb` entries and fetch binary packages (.deb) instead of source packages

    @property
    def etc_dir(self) -> Path:
        return self.cache_dir / "etc"

    @property
    def src_dir(self) -> Path:
        return self.cache_dir / ("deb" if self.binary else "src")


class DebianError(Exception):
    """A package that could not be fetched; ``reason`` is a short machine-readable tag."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class DebSrcEntry:
    """One derived deb-src line."""

    uri: str  # archive URI, as in the system's deb entry
    suite: str  # e.g. bookworm, bookworm-security
    components: list[str]  # e.g. ["main"]
    options: dict[str, str] = field(default_factory=dict)  # e.g. {"signed-by": "/usr/share/keyrings/..."}
    kind: str = "deb-src"  # deb-src, or deb for a binary configuration (AptConfig.binary)

    def line(self) -> str:
        opts = " ".join(f"{k}={v}" for k, v in sorted(self.options.items()))
        opts = f"[{opts}] " if opts else ""
        return f"{self.kind} {opts}{self.uri} {self.suite} {' '.join(self.components)}".rstrip()


def parse_one_line(text: str) -> list[DebSrcEntry]:
    """deb-src entries for every ``deb`` line of a one-line-style sources.list."""
    entries = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line.startswith("deb ") and not line.startswith("deb\t"):
            continue
        rest = line[3:].strip()
        options: dict[str, str] = {}
        if rest.startswith("["):
            end = rest.find("]")
            if end < 0:
                continue
            for opt in rest[1:end].split():
                if "=" in opt:
                    key, value = opt.split("=", 1)
                    if key.lower() in ("signed-by", "trusted", "arch"):
                        options[key.lower()] = value
            rest = rest[end + 1 :].strip()
        parts = rest.split()
        if len(parts) < 2:
            continue
        options.pop("arch", None)
        entries.append(DebSrcEntry(parts[0], parts[1], parts[2:], options))
    return entries


def parse_deb822(text: str) -> list[DebSrcEntry]:
    """deb-src entries for every stanza with ``Types: deb`` of a deb822 ``.sources`` file."""
    entries = []
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = None
        for raw in stanza.splitlines():
            if raw.lstrip().startswith("#"):
                continue
            if raw[:1] in (" ", "\t") and key:
                fields[key] += " " + raw.strip()
            elif ":" in raw:
                key, value = raw.split(":", 1)
                key = key.strip().lower()
                fields[key] = value.strip()
        if "deb" not in fields.get("types", "").split():
            continue
        if fields.get("enabled", "yes").lower() == "no":
            continue
        options = {}
        if fields.get("signed-by") and not fields["signed-by"].startswith("-----"):
            options["signed-by"] = fields["signed-by"].split()[0]
        if fields.get("trusted"):
            options["trusted"] = fields["trusted"]
        for uri in fields.get("uris", "").split():
            for suite in fields.get("suites", "").split():
                entries.append(DebSrcEntry(uri, suite, fields.get("components", "").split(), options))
    return entries


def derive_entries(cfg: AptConfig) -> list[DebSrcEntry]:
    """All deb-src entries derived from the machine's deb entries, duplicates removed."""
    entries: list[DebSrcEntry] = []
    if cfg.sources_list.is_file():
        entries += parse_one_line(cfg.sources_list.read_text(errors="replace"))
    if cfg.sources_parts.is_dir():
        for path in sorted(cfg.sources_parts.iterdir()):
            if path.suffix == ".list":
                entries += parse_one_line(path.read_text(errors="replace"))
            elif path.suffix == ".sources":
                entries += parse_deb822(path.read_text(errors="replace"))
    seen, unique = set(), []
    for e in entries:
        e.kind = "deb" if cfg.binary else "deb-src"
        if e.line() not in seen:
            seen.add(e.line())
            unique.append(e)
    return unique


def write_private_config(cfg: AptConfig) -> Path:
    """Write the private sources.list (and an empty parts dir); return the sources.list path."""
    entries = derive_entries(cfg)
    if not entries:
        raise DebianError("no_apt_sources", f"no 'deb' entries found in {cfg.sources_list} or {cfg.sources_parts}")
    (cfg.etc_dir / "sources.list.d").mkdir(parents=True, exist_ok=True)
    (cfg.cache_dir / "lists" / "partial").mkdir(parents=True, exist_ok=True)
    (cfg.cache_dir / "apt" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
    path = cfg.etc_dir / "sources.list"
    path.write_text("# generated by kaffee from the system's deb entries\n" + "".join(e.line() + "\n" for e in entries))
    return path


def apt_args(cfg: AptConfig) -> list[str]:
    """apt-get with every directory redirected into the private cache."""
    c = cfg.cache_dir.resolve()
    return [
        cfg.apt_get,
        "-q",
        "-o", f"Dir::Etc::sourcelist={c / 'etc' / 'sources.list'}",
        "-o", f"Dir::Etc::sourceparts={c / 'etc' / 'sources.list.d'}",
        "-o", f"Dir::State::Lists={c / 'lists'}",
        "-o", f"Dir::Cache={c / 'apt'}",
        "-o", "Debug::NoLocking=1",
        "-o", "APT::Sandbox::User=root",
    ]  # fmt: skip


def _run(cfg: AptConfig, args: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            apt_args(cfg) + args, cwd=cwd, capture_output=True, text=True, timeout=cfg.timeout_s, check=False
        )
    except FileNotFoundError as exc:
        raise DebianError("no_apt", f"{cfg.apt_get} not found: Debian sources need apt") from exc
    except subprocess.TimeoutExpired as exc:
        raise DebianError("timeout", f"apt-get {' '.join(args)} timed out after {cfg.timeout_s:.0f} s") from exc


def _classify(stderr: str) -> str:
    s = stderr.lower()
    if "unable to find a source package" in s or "can not find version" in s or "no source package" in s:
        return "unknown_package"
    if "404" in s and "not found" in s:
        return "mirror_404"
    if any(t in s for t in ("temporary failure resolving", "could not resolve", "network is unreachable",
                            "connection failed", "could not connect", "connection timed out")):  # fmt: skip
        return "no_network"
    return "apt_failed"


def has_lists(cfg: AptConfig) -> bool:
    lists = cfg.cache_dir / "lists"
    suffixes = ("Sources", "Packages", ".lz4", ".gz", ".xz")
    return lists.is_dir() and any(p.name.endswith(suffixes) for p in lists.iterdir())


def update(cfg: AptConfig) -> None:
    """``apt-get update`` on the private config. Without network, cached lists are reused."""
    write_private_config(cfg)
    proc = _run(cfg, ["update"])
    failed = proc.returncode != 0 or re.search(r"^(W|E): (Failed|Some index)", proc.stderr, re.M)
    if failed:
        reason = _classify(proc.stderr + proc.stdout)
        if has_lists(cfg):
            log.warning("apt-get update failed (%s); using the cached package lists", reason)
            return
        detail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise DebianError(reason, f"apt-get update failed ({reason}): {detail}")


def package_dir(cfg: AptConfig, name: str, version: str | None) -> Path:
    return cfg.src_dir / name / (version or "candidate").replace(":", "%3a")


def tarballs(folder: Path) -> list[Path]:
    """The upstream source tarballs of a downloaded package (not the debian/ packaging)."""
    found = [p for p in sorted(folder.iterdir()) if _TARBALL_RE.search(p.name) and ".debian.tar" not in p.name]
    return found


def fetch(cfg: AptConfig, name: str, version: str | None = None) -> list[Path]:
    """Download (or reuse) one source package; return its upstream tarballs.

    Raises DebianError with reason unknown_package, mirror_404, no_network, ... on failure.
    """
    if not _NAME_RE.match(name) or (version is not None and not _VERSION_RE.match(version)):
        raise DebianError("bad_name", f"not a valid Debian source package spec: {name}={version}")
    folder = package_dir(cfg, name, version)
    done = folder / ".complete"
    if done.exists():
        return tarballs(folder)
    folder.mkdir(parents=True, exist_ok=True)
    spec = f"{name}={version}" if version else name
    proc = _run(cfg, ["source", "--download-only", spec], cwd=folder)
    if proc.returncode != 0:
        reason = _classify(proc.stderr + proc.stdout)
        detail = next((ln for ln in proc.stderr.splitlines() if ln.startswith("E:")), proc.stderr.strip()[-300:])
        raise DebianError(reason, f"debian:{spec}: {reason}: {detail}")
    found = tarballs(folder)
    if not found:
        raise DebianError("no_tarball", f"debian:{spec}: downloaded, but no source tarball in {folder}")
    done.write_text(" ".join(p.name for p in found) + "\n")
    return found


def forget(cfg: AptConfig, name: str, version: str | None = None) -> None:
    """Remove a package's cached download (used by the recipe tools for rejected packages)."""
    shutil.rmtree(package_dir(cfg, name, version), ignore_errors=True)


def _read_index(cfg: AptConfig, pattern: str) -> Iterable[str]:
    """The stanzas of every downloaded index file matching ``pattern`` (decompressed by apt's own helper)."""
    helper = "/usr/lib/apt/apt-helper"
    for path in sorted((cfg.cache_dir / "lists").glob(pattern)):
        proc = subprocess.run([helper, "cat-file", str(path)], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            log.warning("could not read %s: %s", path, proc.stderr.strip())
            continue
        yield from (s for s in re.split(r"\n\s*\n", proc.stdout) if s.strip())


def read_sources_index(cfg: AptConfig) -> Iterable[str]:
    """The stanzas of every downloaded Sources index."""
    return _read_index(cfg, "*_Sources*")


# ---- Java shipped in binary packages (AptConfig(binary=True)) ------------------------------------

_SOURCE_ARCHIVE_RE = re.compile(r"(^|/)(src\.zip|[^/]*-(sources?|src)\.(jar|zip))$")


def read_packages_index(cfg: AptConfig) -> Iterable[str]:
    """The stanzas of every downloaded Packages index (a binary configuration's lists)."""
    return _read_index(cfg, "*_Packages*")


def fetch_binary(cfg: AptConfig, name: str, version: str | None = None) -> Path:
    """Download (or reuse) one binary package with ``apt-get download``; return the .deb."""
    if not cfg.binary:
        raise DebianError("bad_config", "fetch_binary needs AptConfig(binary=True)")
    if not _NAME_RE.match(name) or (version is not None and not _VERSION_RE.match(version)):
        raise DebianError("bad_name", f"not a valid Debian binary package spec: {name}={version}")
    folder = package_dir(cfg, name, version)
    done = folder / ".complete"
    if done.exists():
        return folder / done.read_text().strip()
    folder.mkdir(parents=True, exist_ok=True)
    spec = f"{name}={version}" if version else name
    proc = _run(cfg, ["download", spec], cwd=folder)
    debs = sorted(folder.glob("*.deb"))
    if proc.returncode != 0 or not debs:
        reason = _classify(proc.stderr + proc.stdout) if proc.returncode != 0 else "no_deb"
        errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("E:")]
        detail = errors[0] if errors else proc.stderr.strip()[-300:]
        raise DebianError(reason, f"debian-binary:{spec}: {reason}: {detail}")
    done.write_text(debs[0].name + "\n")
    return debs[0]


def extract_java(
    deb: Path, dest: Path, max_file_bytes: int = 1_000_000, max_total_bytes: int = 4 << 30
) -> int:
    """Unpack the .java files of a .deb into ``dest``; return how many were written.

    Plain ``.java`` (and dh_compress'd ``.java.gz``) members keep their path; a sources archive
    (``src.zip``, ``*-sources.jar``, ``*-src.jar``) or a tarball under ``usr/src/`` (bsh-src) is opened
    and its .java members go under ``dest/<archive stem>/``.
    Member names are made safe with ``sources.safe_member_path``; files over ``max_file_bytes`` are skipped.
    The .deb is streamed through ``dpkg-deb --fsys-tarfile`` (nothing else is unpacked).
    """
    import gzip
    import tarfile
    import tempfile
    import zipfile

    from kaffee.data.sources import safe_member_path  # local: sources imports this module

    def put(rel: str | None, data: bytes) -> bool:
        nonlocal total
        if rel is None or len(data) > max_file_bytes or total + len(data) > max_total_bytes:
            return False
        out = dest / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(data)
        total += len(data)
        return True

    total, written = 0, 0
    dest.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tf:
            for m in tf:
                if not m.isfile():
                    continue
                rel = safe_member_path(m.name)
                fh = tf.extractfile(m)
                if rel is None or fh is None:
                    continue
                low = rel.lower()
                if low.endswith(".java") and m.size <= max_file_bytes:
                    written += put(rel, fh.read())
                elif low.endswith(".java.gz") and m.size <= max_file_bytes:
                    try:
                        written += put(rel[:-3], gzip.decompress(fh.read()))
                    except (OSError, EOFError) as exc:
                        log.warning("%s!%s: bad gzip (%s)", deb, rel, exc)
                elif _TARBALL_RE.search(low) and low.startswith("usr/src/"):
                    stem = re.sub(r"\.(tar\.\w+|tgz)$", "", rel.rsplit("/", 1)[-1])
                    try:
                        with tarfile.open(fileobj=fh, mode="r|*") as inner_tf:
                            for im in inner_tf:
                                inner = safe_member_path(im.name) if im.isfile() else None
                                if inner and inner.lower().endswith(".java") and im.size <= max_file_bytes:
                                    data = inner_tf.extractfile(im)
                                    written += put(f"{stem}/{inner}", data.read()) if data else 0
                    except (tarfile.TarError, OSError, EOFError) as exc:
                        log.warning("%s!%s: unreadable tarball (%s)", deb, rel, exc)
                elif _SOURCE_ARCHIVE_RE.search(low):
                    stem = rel.rsplit("/", 1)[-1].rsplit(".", 1)[0]
                    with tempfile.TemporaryFile() as tmp:
                        shutil.copyfileobj(fh, tmp)
                        try:
                            with zipfile.ZipFile(tmp) as zf:
                                for info in zf.infolist():
                                    inner = safe_member_path(info.filename)
                                    small = info.file_size <= max_file_bytes
                                    if inner and inner.lower().endswith(".java") and small:
                                        written += put(f"{stem}/{inner}", zf.read(info))
                        except (zipfile.BadZipFile, OSError, EOFError) as exc:
                            log.warning("%s!%s: unreadable archive (%s)", deb, rel, exc)
    finally:
        if proc.stdout:
            proc.stdout.close()
        if proc.wait() != 0:
            raise DebianError("bad_deb", f"{deb}: dpkg-deb --fsys-tarfile failed (exit {proc.returncode})")
    return written
