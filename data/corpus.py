"""The corpus pipeline: sources -> decode/filter/scrub/sign (parallel) -> exact dedup -> project split
-> near dedup (valid/test first, so train never keeps a near duplicate of them) -> Arrow dataset.

The dataset is written to a temporary folder next to ``out`` and swapped into place
(:mod:`kaffee.atomic_dir`), so a build killed at any instant leaves the previous or the new
complete corpus at ``out``; the next build cleans up what a killed one left. See DESIGN.md,
"Corpus directory", for the contract.
"""

from __future__ import annotations

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
from kaffee.atomic_dir import make_tmp_dir, recover_dir, replace_dir
from kaffee.data import debian, dedup, filters, secrets
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
from kaffee.errors import KaffeeError
from tqdm import tqdm

log = logging.getLogger(__name__)
COLUMNS = ("text", "project", "path", "sha256", "split")
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
    secrets); dropped: (project, path, None, reason, nbytes)."""
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
        sha = hashlib.sha256(text.encode()).hexdigest()
        out.append((raw.project, raw.path, text, sha, dedup.normalised_hash(text), signer.signature(text),
                    cleaned.latin1, dict(found), len(raw.data)))  # fmt: skip
    return out


# ---------------------------------------------------------------- main side


@dataclass
class _Collected:
    """Kept files (after exact dedup) and the counters of the processing stage."""

    texts: list[str] = field(default_factory=list)
    projects: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    shas: list[str] = field(default_factory=list)
    sigs: list[np.ndarray] = field(default_factory=list)
    seen_norm: set[bytes] = field(default_factory=set)
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
        project, path, text, sha, norm, sig, latin1, found, nbytes = rec
        self.bytes_seen += nbytes
        self.latin1 += latin1
        if found:
            self.files_with_secrets += 1
            self.secrets.update(found)
        if norm in self.seen_norm:
            self.dropped["exact_duplicate"] += 1
            return
        self.seen_norm.add(norm)
        self.texts.append(text)
        self.projects.append(project)
        self.paths.append(path)
        self.shas.append(sha)
        self.sigs.append(sig)


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
             per_source: dict[str, int]) -> _Collected:  # fmt: skip
    col = _Collected()
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


def write_atomically(ds: datasets.Dataset, stats: dict[str, Any], out: Path) -> None:
    """save_to_disk into a temporary sibling of ``out``, then swap it into place (kaffee.atomic_dir)."""
    tmp = make_tmp_dir(out)
    try:
        ds.save_to_disk(str(tmp))
        (tmp / STATS_FILE).write_text(json.dumps(stats, indent=2) + "\n")
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _rewrite_stats(stats: dict[str, Any], out: Path) -> None:
    """Replace out/stats.json by rename, so a kill never leaves a truncated one in a complete corpus."""
    tmp = out / f".{STATS_FILE}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(stats, indent=2) + "\n")
    os.replace(tmp, out / STATS_FILE)


def build(cfg: BuildConfig) -> dict[str, Any]:
    """Build the corpus; return its stats (also written to ``out/stats.json``)."""
    t0 = time.time()
    _check_out(cfg)
    failed: list[dict[str, str]] = []
    sources = resolve_sources(cfg, failed)
    t_download = time.time() - t0
    per_source: dict[str, int] = {}
    col = _process(sources, cfg, failed, per_source)
    t_process = time.time() - t0 - t_download
    if not col.texts:
        tried = ", ".join(cfg.sources + ([f"recipe {cfg.recipe}"] if cfg.recipe else []))
        if col.files_seen == 0:
            raise KaffeeError(f"no Java files found in {tried}" + _failures_note(failed))
        raise KaffeeError(f"no usable Java files in {tried}: {col.files_seen} .java files seen, dropped "
                          f"{dict(col.dropped)}" + _failures_note(failed))  # fmt: skip

    # split by project, then near-dedup with valid/test first so train never keeps a near duplicate of them
    files_per_project = collections.Counter(col.projects)
    assign = split_projects(files_per_project, cfg.split)
    splits = [assign[p] for p in col.projects]
    sigs = np.stack(col.sigs)
    order = [i for name in ("test", "valid", "train") for i, s in enumerate(splits) if s == name]
    log.info("near-dedup of %d files", len(order))
    dropped_near = dedup.near_duplicates(
        sigs, tqdm(order, desc="near-dedup", disable=not cfg.progress), cfg.minhash
    )
    near_eval = sum(1 for i, j in dropped_near.items() if splits[i] == "train" and splits[j] != "train")
    col.dropped["near_duplicate"] += len(dropped_near) - near_eval
    col.dropped["near_duplicate_of_valid_test"] += near_eval
    t_dedup = time.time() - t0 - t_download - t_process

    keep = [i for name in SPLITS for i, s in enumerate(splits) if s == name and i not in dropped_near]
    ds = datasets.Dataset.from_dict(
        {
            "text": [col.texts[i] for i in keep],
            "project": [col.projects[i] for i in keep],
            "path": [col.paths[i] for i in keep],
            "sha256": [col.shas[i] for i in keep],
            "split": [splits[i] for i in keep],
        },
        features=datasets.Features({c: datasets.Value("string") for c in COLUMNS}),
    )
    stats = _stats(cfg, col, ds, keep, splits, failed, per_source, len(dropped_near) - near_eval, near_eval)
    stats["timing_s"] = {"download": round(t_download, 1), "process": round(t_process, 1),
                         "dedup_split": round(t_dedup, 1)}  # fmt: skip
    write_atomically(ds, stats, cfg.out)
    stats["timing_s"]["total"] = round(time.time() - t0, 1)
    _rewrite_stats(stats, cfg.out)  # same content plus the total time
    return stats


def _failures_note(failed: list[dict[str, str]]) -> str:
    return ("; failed sources: " + "; ".join(f["message"] for f in failed)) if failed else ""


def _stats(cfg: BuildConfig, col: _Collected, ds: datasets.Dataset, keep: list[int], splits: list[str],
           failed: list[dict[str, str]], per_source: dict[str, int], near: int, near_eval: int) -> dict[str, Any]:  # fmt: skip
    files = collections.Counter(splits[i] for i in keep)
    nbytes: collections.Counter[str] = collections.Counter()
    projects: dict[str, set[str]] = {s: set() for s in SPLITS}
    for i in keep:
        nbytes[splits[i]] += len(col.texts[i].encode())
        projects[splits[i]].add(col.projects[i])
    return {
        "format": "kaffee-corpus/1",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "sources": cfg.sources,
        "recipe": cfg.recipe,
        "seed": cfg.seed,
        "files_seen": col.files_seen,
        "files_kept": len(keep),
        "files_dropped": col.files_seen - len(keep),
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
        "projects": sum(len(p) for p in projects.values()),
        "projects_per_split": {s: len(projects[s]) for s in SPLITS},
        "files_per_split": {s: files[s] for s in SPLITS},
        "bytes_per_split": {s: nbytes[s] for s in SPLITS},
        "failed_sources": failed,
        "files_seen_per_source": per_source,
        "sources_without_java": [s for s, n in per_source.items() if n == 0],
        "config": {
            "limits": asdict(cfg.limits),
            "filters": asdict(cfg.filters),
            "minhash": asdict(cfg.minhash),
            "split": asdict(cfg.split),
        },  # fmt: skip
        "num_rows": ds.num_rows,
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
