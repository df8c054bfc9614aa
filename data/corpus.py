"""The corpus pipeline: sources -> decode/filter/scrub/sign (parallel) -> exact dedup -> project split
-> near dedup (valid/test first, so train never keeps a near duplicate of them) -> Arrow dataset.

It streams: kept files are spooled to disk as they come (:mod:`kaffee.data.spool`), only small
per-file facts stay in memory (exact-dedup hash, project id, size; MinHash signatures stay on
disk), the split needs only per-project counts, and the dataset is written batch by batch
(:mod:`kaffee.data.dataset_writer`). So peak memory does not grow with the size of the texts.

The dataset is written to a temporary folder next to ``out`` and swapped into place
(:mod:`kaffee.atomic_dir`), so a build killed at any instant leaves the previous or the new
complete corpus at ``out``; the next build cleans up what a killed one left. See DESIGN.md,
"Corpus directory", for the contract.
"""

from __future__ import annotations

import array
import collections
import datetime
import hashlib
import json
import logging
import multiprocessing as mp
import os
import shutil
import signal
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
from kaffee.atomic_dir import make_tmp_dir, recover_dir, replace_dir
from kaffee.data import debian, dedup, filters, secrets
from kaffee.data.dataset_writer import DatasetWriter, shard_sizes
from kaffee.data.sources import (
    Limits,
    RawFile,
    Source,
    SourceError,
    load_recipe,
    resolve_debian,
    resolve_jdk,
    resolve_path,
)
from kaffee.data.split import SPLITS, SplitConfig, split_projects
from kaffee.data.spool import RowSpool
from kaffee.errors import KaffeeError
from tqdm import tqdm

log = logging.getLogger(__name__)
COLUMNS = ("text", "project", "path", "sha256", "split")
FEATURES = datasets.Features({c: datasets.Value("string") for c in COLUMNS})
STATS_FILE = "stats.json"


@dataclass
class BuildConfig:
    """Everything one ``kaffee corpus build`` needs."""

    sources: list[str]  # SOURCE specs: paths, archives, "jdk", "debian:PKG[=VERSION]"
    out: Path  # corpus directory to create
    recipe: str | None = None  # recipe name (data/recipes/) or path, adding its Debian packages
    seed: int = 0  # seed of the project split
    num_proc: int = 1  # worker processes for decode/filter/scrub/sign
    force: bool = False  # replace an existing corpus at ``out``
    projects_from_subdirs: bool = False  # each top-level folder of a dir/archive source is a project
    cache_dir: Path = field(default_factory=debian.default_cache_dir)  # Debian downloads and apt state
    batch_files: int = 256  # files per unit of parallel work
    batch_rows: int = 1024  # kept rows per Arrow batch, spooled to disk and written out (bounds memory)
    shard_bytes: int = 500_000_000  # text bytes per output Arrow shard (save_to_disk's default 500 MB)
    limits: Limits = field(default_factory=Limits)  # size and expansion bounds of sources
    filters: filters.FilterConfig = field(default_factory=filters.FilterConfig)  # file filters
    minhash: dedup.MinHashConfig = field(default_factory=dedup.MinHashConfig)  # near-dedup parameters
    split: SplitConfig = field(default_factory=SplitConfig)  # split shares (seed copied from ``seed``)
    progress: bool = True  # show tqdm progress bars

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        self.cache_dir = Path(self.cache_dir)
        self.split.seed = self.seed
        self.filters.max_file_bytes = self.limits.max_file_bytes
        if self.num_proc < 1:
            raise KaffeeError(f"--num-proc must be at least 1, got {self.num_proc}")
        try:
            dedup.check_threshold(self.minhash.threshold, self.minhash.num_perm)
        except ValueError as exc:
            raise KaffeeError(f"--near-dup-threshold {exc}") from None
        problem = out_problem(self.out)
        if problem:
            raise KaffeeError(f"--out {self.out}: {problem}")


def out_problem(out: Path) -> str | None:
    """Why a corpus cannot be created at ``out`` (checked before any work), or None."""
    if out.exists() and not out.is_dir():
        return "exists and is not a directory"
    parent = out.parent
    while not parent.exists():  # the nearest existing ancestor must be a writable directory
        if parent.parent == parent:
            break
        parent = parent.parent
    if not parent.is_dir():
        return f"cannot be created: {parent} is not a directory"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot be created: {parent} is not writable"
    return None


# ---------------------------------------------------------------- worker side

_WORKER: dict[str, Any] = {}


def _init_worker(fcfg: filters.FilterConfig, mcfg: dedup.MinHashConfig, in_pool: bool = False) -> None:
    if in_pool:  # Ctrl-C is handled once, by the main process, which then terminates the pool
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    _WORKER["filters"], _WORKER["signer"] = fcfg, dedup.Signer(mcfg)


def process_batch(batch: list[RawFile]) -> list[tuple]:
    """Decode, filter, scrub and sign files. Kept: (project, path, text, sha256, normhash, sig, latin1,
    secrets, nbytes read, nbytes of text as UTF-8); dropped: (project, path, None, reason, nbytes)."""
    fcfg, signer = _WORKER["filters"], _WORKER["signer"]
    out: list[tuple] = []
    for raw in batch:
        if raw.data is None:
            out.append((raw.project, raw.path, None, raw.reason or "unreadable", 0))
            continue
        cleaned = filters.clean(raw.data, fcfg)
        if cleaned.text is None:
            out.append((raw.project, raw.path, None, cleaned.reason, len(raw.data)))
            continue
        text, found = secrets.scrub(cleaned.text)
        encoded = text.encode()
        out.append((raw.project, raw.path, text, hashlib.sha256(encoded).hexdigest(), dedup.normalised_hash(text),
                    signer.signature(text), cleaned.latin1, dict(found), len(raw.data), len(encoded)))  # fmt: skip
    return out


# ---------------------------------------------------------------- main side


@dataclass
class _Collected:
    """The counters of the processing stage; kept files (after exact dedup) go to ``spool``.

    What stays in memory per kept file is small and independent of its text: its 16-byte
    exact-dedup hash, its project id and its size.
    """

    spool: RowSpool  # kept rows and their MinHash signatures, on disk
    seen_norm: set[bytes] = field(default_factory=set)  # exact-dedup hashes of the kept files
    project_ids: dict[str, int] = field(default_factory=dict)  # project -> id, by first appearance
    row_project: array.array = field(default_factory=lambda: array.array("i"))  # project id per kept row
    row_bytes: array.array = field(default_factory=lambda: array.array("q"))  # UTF-8 bytes per kept row
    dropped: collections.Counter[str] = field(default_factory=collections.Counter)
    secrets: collections.Counter[str] = field(default_factory=collections.Counter)
    files_seen: int = 0
    bytes_seen: int = 0
    latin1: int = 0
    files_with_secrets: int = 0

    def add(self, rec: tuple) -> None:
        self.files_seen += 1
        if rec[2] is None:
            self.dropped[rec[3]] += 1
            self.bytes_seen += rec[4]
            return
        project, path, text, sha, norm, sig, latin1, found, nbytes, text_bytes = rec
        self.bytes_seen += nbytes
        self.latin1 += latin1
        if found:
            self.files_with_secrets += 1
            self.secrets.update(found)
        if norm in self.seen_norm:
            self.dropped["exact_duplicate"] += 1
            return
        self.seen_norm.add(norm)
        self.spool.add(text, project, path, sha, sig)
        self.row_project.append(self.project_ids.setdefault(project, len(self.project_ids)))
        self.row_bytes.append(text_bytes)


def resolve_sources(cfg: BuildConfig, failed: list[dict[str, str]]) -> list[Source]:
    """Turn SOURCE specs (and the recipe) into Sources; failures are recorded, not raised."""
    specs = list(cfg.sources)
    if cfg.recipe:
        try:
            specs += [f"debian:{n}" + (f"={v}" if v else "") for n, v in load_recipe(cfg.recipe)]
        except SourceError as exc:
            raise KaffeeError(str(exc)) from exc
    apt = debian.AptConfig(cfg.cache_dir / "debian")
    apt_error: debian.DebianError | None = None
    if any(s.startswith("debian:") for s in specs):
        try:
            debian.update(apt)
        except debian.DebianError as exc:
            apt_error = exc
            log.error("%s: Debian packages are skipped", exc)
    resolved = []
    debian_specs = [s for s in specs if s.startswith("debian:")]
    bar = tqdm(
        total=len(debian_specs), desc="download", unit="pkg", disable=not cfg.progress or not debian_specs
    )
    for spec in specs:
        try:
            if spec == "jdk":
                resolved.append(resolve_jdk(spec, cfg.limits))
            elif spec.startswith("debian:"):
                bar.update(1)
                if apt_error is not None:
                    raise SourceError(apt_error.reason, f"{spec}: {apt_error}")
                name, _, version = spec[len("debian:") :].partition("=")
                resolved.append(resolve_debian(name, version or None, apt, cfg.limits))
            else:
                resolved.append(resolve_path(spec, cfg.limits, cfg.projects_from_subdirs))
        except SourceError as exc:
            log.warning("source %s skipped: %s", spec, exc)
            failed.append({"source": spec, "reason": exc.reason, "message": str(exc)})
    bar.close()
    return resolved


def _raw_batches(sources: list[Source], cfg: BuildConfig, failed: list[dict[str, str]],
                 per_source: dict[str, int]) -> Iterator[list[RawFile]]:  # fmt: skip
    batch: list[RawFile] = []
    for src in sources:
        per_source[src.spec] = 0
        try:
            for raw in src.iter_files():
                per_source[src.spec] += 1
                batch.append(raw)
                if len(batch) >= cfg.batch_files:
                    yield batch
                    batch = []
        except SourceError as exc:
            log.warning("source %s stopped: %s", src.spec, exc)
            failed.append({"source": src.spec, "reason": exc.reason, "message": str(exc)})
        if per_source[src.spec] == 0:
            log.warning("source %s: no .java files found", src.spec)
    if batch:
        yield batch


def _process(sources: list[Source], cfg: BuildConfig, failed: list[dict[str, str]],
             per_source: dict[str, int], spool: RowSpool) -> _Collected:  # fmt: skip
    col = _Collected(spool)
    bar = tqdm(desc="process", unit="file", disable=not cfg.progress, smoothing=0.05)
    batches = _raw_batches(sources, cfg, failed, per_source)
    if cfg.num_proc == 1:
        _init_worker(cfg.filters, cfg.minhash)
        for batch in batches:
            for rec in process_batch(batch):
                col.add(rec)
            bar.update(len(batch))
    else:
        with mp.get_context("fork" if os.name == "posix" else "spawn").Pool(
            cfg.num_proc, initializer=_init_worker, initargs=(cfg.filters, cfg.minhash, True)
        ) as pool:
            pending: collections.deque = collections.deque()
            for batch in batches:  # a bounded window keeps raw data from piling up in memory
                pending.append(pool.apply_async(process_batch, (batch,)))
                while len(pending) >= cfg.num_proc * 3 or (pending and pending[0].ready()):
                    recs = pending.popleft().get()
                    for rec in recs:
                        col.add(rec)
                    bar.update(len(recs))
            while pending:
                recs = pending.popleft().get()
                for rec in recs:
                    col.add(rec)
                bar.update(len(recs))
    bar.close()
    return col


def _check_out(cfg: BuildConfig) -> None:
    out = cfg.out
    recover_dir(out)  # leftovers of killed builds: deleted, or the previous corpus put back at --out
    if out.exists():
        if not cfg.force:
            raise KaffeeError(f"{out} already exists; pass --force to replace it")
        if not out.is_dir() or (any(out.iterdir()) and not (out / STATS_FILE).exists()):
            raise KaffeeError(f"refusing to replace {out}: it is not a corpus directory (no {STATS_FILE})")


def _rewrite_stats(stats: dict[str, Any], out: Path) -> None:
    """Replace out/stats.json by rename, so a kill never leaves a truncated one in a complete corpus."""
    tmp = out / f".{STATS_FILE}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(stats, indent=2) + "\n")
    os.replace(tmp, out / STATS_FILE)


def build(cfg: BuildConfig) -> dict[str, Any]:
    """Build the corpus; return its stats (also written to ``out/stats.json``).

    Everything is written into a temporary sibling of ``out`` (kept rows spooled to disk as they
    come, then the dataset shards), which is swapped into place at the end (kaffee.atomic_dir).
    """
    t0 = time.time()
    _check_out(cfg)
    failed: list[dict[str, str]] = []
    sources = resolve_sources(cfg, failed)
    timing = {"download": time.time() - t0}
    tmp = make_tmp_dir(cfg.out)
    try:
        stats = _build_into(tmp, cfg, sources, failed, timing)
        (tmp / STATS_FILE).write_text(json.dumps(stats, indent=2) + "\n")
        replace_dir(tmp, cfg.out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    stats["timing_s"]["total"] = round(time.time() - t0, 1)
    _rewrite_stats(stats, cfg.out)  # same content plus the total time
    return stats


def _build_into(tmp: Path, cfg: BuildConfig, sources: list[Source], failed: list[dict[str, str]],
                timing: dict[str, float]) -> dict[str, Any]:  # fmt: skip
    t = time.time()
    spool = RowSpool(tmp / ".spool", cfg.minhash.num_perm, batch_rows=cfg.batch_rows)
    per_source: dict[str, int] = {}
    try:
        col = _process(sources, cfg, failed, per_source, spool)
    finally:
        spool.close()
    timing["process"] = time.time() - t
    if spool.num_rows == 0:
        tried = ", ".join(cfg.sources + ([f"recipe {cfg.recipe}"] if cfg.recipe else []))
        if col.files_seen == 0:
            raise KaffeeError(f"no Java files found in {tried}" + _failures_note(failed))
        raise KaffeeError(f"no usable Java files in {tried}: {col.files_seen} .java files seen, dropped "
                          f"{dict(col.dropped)}" + _failures_note(failed))  # fmt: skip

    # split by project, then near-dedup with valid/test first so train never keeps a near duplicate of them
    t = time.time()
    row_project = np.frombuffer(col.row_project, dtype=np.int32)
    projects = list(col.project_ids)
    assign = split_projects(dict(zip(projects, np.bincount(row_project).tolist(), strict=True)), cfg.split)
    row_split = np.array([SPLITS.index(assign[p]) for p in projects], np.int8)[row_project]
    order = np.concatenate(
        [np.flatnonzero(row_split == SPLITS.index(name)) for name in ("test", "valid", "train")]
    )
    log.info("near-dedup of %d files", len(order))
    dropped_near = dedup.near_duplicates(spool.signatures(), order, cfg.minhash, progress=cfg.progress)
    train = SPLITS.index("train")
    near_eval = sum(1 for i, j in dropped_near.items() if row_split[i] == train and row_split[j] != train)
    col.dropped["near_duplicate"] += len(dropped_near) - near_eval
    col.dropped["near_duplicate_of_valid_test"] += near_eval
    keep = np.ones(spool.num_rows, bool)
    keep[list(dropped_near)] = False
    timing["dedup_split"] = time.time() - t

    t = time.time()
    _write_rows(tmp, spool, keep, row_split, np.frombuffer(col.row_bytes, dtype=np.int64), cfg)
    shutil.rmtree(spool.root)
    timing["write"] = time.time() - t
    stats = _stats(cfg, col, keep, row_split, row_project, failed, per_source, len(dropped_near) - near_eval,
                   near_eval)  # fmt: skip
    stats["timing_s"] = {k: round(v, 1) for k, v in timing.items()}
    return stats


def _write_rows(out: Path, spool: RowSpool, keep: np.ndarray, row_split: np.ndarray, row_bytes: np.ndarray,
                cfg: BuildConfig) -> None:  # fmt: skip
    """The kept rows as a dataset in ``out``: train, then valid, then test, each in the order the files came."""
    sizes = shard_sizes(int(keep.sum()), int(row_bytes[keep].sum()), cfg.shard_bytes)
    writer = DatasetWriter(out, FEATURES, sizes)
    fingerprint = hashlib.blake2b(digest_size=8)  # of the content, so the same corpus gets the same one
    bar = tqdm(total=sum(sizes), desc="write", unit="file", disable=not cfg.progress)
    for code, name in enumerate(SPLITS):
        wanted = keep & (row_split == code)
        if not wanted.any():
            continue
        start = 0
        for batch in spool.batches():  # one pass over the spool per split
            mask = wanted[start : start + batch.num_rows]
            start += batch.num_rows
            if mask.any():
                rows = batch.filter(pa.array(mask))
                rows = rows.append_column("split", pa.array([name] * rows.num_rows, pa.string()))
                writer.write(rows)
                for column in ("project", "path", "sha256", "split"):
                    fingerprint.update("\0".join(rows.column(column).to_pylist()).encode() + b"\1")
                bar.update(rows.num_rows)
    bar.close()
    writer.close(fingerprint.hexdigest())


def _failures_note(failed: list[dict[str, str]]) -> str:
    return ("; failed sources: " + "; ".join(f["message"] for f in failed)) if failed else ""


def _stats(cfg: BuildConfig, col: _Collected, keep: np.ndarray, row_split: np.ndarray, row_project: np.ndarray,
           failed: list[dict[str, str]], per_source: dict[str, int], near: int, near_eval: int) -> dict[str, Any]:  # fmt: skip
    row_bytes = np.frombuffer(col.row_bytes, dtype=np.int64)
    files, nbytes, projects = {}, {}, {}
    for code, name in enumerate(SPLITS):
        rows = keep & (row_split == code)
        files[name], nbytes[name] = int(rows.sum()), int(row_bytes[rows].sum())
        projects[name] = len(np.unique(row_project[rows]))
    return {
        "format": "kaffee-corpus/1",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "sources": cfg.sources,
        "recipe": cfg.recipe,
        "seed": cfg.seed,
        "files_seen": col.files_seen,
        "files_kept": sum(files.values()),
        "files_dropped": col.files_seen - sum(files.values()),
        "dropped": {k: v for k, v in sorted(col.dropped.items()) if v},
        "bytes_seen": col.bytes_seen,
        "bytes_kept": sum(nbytes.values()),
        "latin1_fallbacks": col.latin1,
        "secrets_scrubbed": {
            "total": sum(col.secrets.values()),
            "files": col.files_with_secrets,
            "by_kind": dict(sorted(col.secrets.items())),
        },  # fmt: skip
        "exact_duplicates": col.dropped["exact_duplicate"],
        "near_duplicates": near,
        "near_duplicates_of_valid_test_removed_from_train": near_eval,
        "projects": sum(projects.values()),
        "projects_per_split": projects,
        "files_per_split": files,
        "bytes_per_split": nbytes,
        "failed_sources": failed,
        "files_seen_per_source": per_source,
        "sources_without_java": [s for s, n in per_source.items() if n == 0],
        "config": {
            "limits": asdict(cfg.limits),
            "filters": asdict(cfg.filters),
            "minhash": asdict(cfg.minhash),
            "split": asdict(cfg.split),
        },  # fmt: skip
        "num_rows": sum(files.values()),
    }


# ---------------------------------------------------------------- readers (training and evaluation use these)


def load_stats(path: str | os.PathLike[str]) -> dict[str, Any]:
    stats_file = Path(path) / STATS_FILE
    if not stats_file.is_file():
        raise KaffeeError(
            f"{path} is not a corpus directory (no {STATS_FILE}); build one with `kaffee corpus build`"
        )
    return json.loads(stats_file.read_text())


def load_corpus(path: str | os.PathLike[str]) -> datasets.Dataset:
    """The corpus dataset written by ``kaffee corpus build`` (columns text, project, path, sha256, split)."""
    load_stats(path)
    try:
        ds = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError, OSError) as exc:
        raise KaffeeError(f"{path}: cannot load the corpus dataset ({exc})") from exc
    if not isinstance(ds, datasets.Dataset) or not set(COLUMNS) <= set(ds.column_names):
        raise KaffeeError(
            f"{path}: not a kaffee corpus (expected a dataset with columns {', '.join(COLUMNS)})"
        )
    return ds


def split_of(ds: datasets.Dataset, name: str) -> datasets.Dataset:
    """The rows of one split; KaffeeError when the split is unknown or empty."""
    if name not in SPLITS:
        raise KaffeeError(f"unknown split {name!r}; choose one of {', '.join(SPLITS)}")
    idx = [i for i, s in enumerate(ds["split"]) if s == name]
    if not idx:
        raise KaffeeError(f"the corpus has no {name!r} files (too few projects to split?); "
                          "build it from more projects (e.g. --projects-from-subdirs)")  # fmt: skip
    return ds.select(idx)
