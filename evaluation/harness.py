"""Run systems x tasks on the same held-out positions; cache predictions; write the three reports.

One run = one corpus split, one seed, the same sampled positions for every system.
Every (system, task, position) prediction is appended to ``predictions.jsonl`` in the
output directory as soon as it is made, so an interrupted run picks up where it
stopped. A system that cannot be built, a task that cannot be prepared, or a request
that fails is reported and the rest of the run goes on.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kaffee.errors import KaffeeError
from kaffee.evaluation.cost import cpu_seconds, peak_rss_mb, rss_mb
from kaffee.evaluation.metrics import mean_estimate
from kaffee.evaluation.system_base import RequestFailed, System, SystemSettings, SystemSpec, SystemUnavailable
from kaffee.evaluation.system_registry import MODEL_KINDS, build_system, parse_system_spec
from kaffee.evaluation.task_base import HeldOut, MetricRow, Position, SourceFile, Task
from kaffee.evaluation.tasks import DEFAULT_TASKS, get_task

log = logging.getLogger(__name__)

RESULTS_VERSION = 1
CACHE_FILE = "predictions.jsonl"


@dataclass
class EvalConfig:
    """Everything that decides what a run measures (all of it goes into results.json)."""

    out: str  # output directory (results.json, results.md, report.html, predictions.jsonl)
    systems: list[str] = field(default_factory=list)  # system specs (see system_registry.SPEC_HELP)
    corpus: str | None = None  # corpus directory (datasets save_to_disk + stats.json)
    tasks: list[str] = field(default_factory=lambda: list(DEFAULT_TASKS))  # task names (see tasks.TASKS)
    limit: int | None = None  # positions per task (None = all); same sample for every system
    seed: int = 0  # sampling seed (positions and bootstrap)
    split: str = "test"  # held-out split of the corpus
    device: str = "cpu"  # torch device for model systems
    lsp_timeout: float = 10.0  # seconds per LSP request before it counts as an error
    lsp_start_timeout: float = 60.0  # seconds for an LSP server to answer `initialize`
    lsp_init_options: dict | None = None  # initializationOptions sent to every lsp: system
    codexglue_file: str | None = None  # CodeXGLUE javaCorpus line-completion JSON lines (codexglue-line)
    typing_lines: int = 5  # code lines per typing-replay segment
    project_compare: bool = (
        False  # run each model system also without project context; report the paired gain
    )
    progress: bool = True  # progress bar on stderr

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise KaffeeError(f"--limit must be at least 1 (got {self.limit})")
        if self.typing_lines < 1:
            raise KaffeeError("--typing-lines must be at least 1")
        if self.lsp_timeout <= 0:
            raise KaffeeError("--lsp-timeout must be positive")
        if not self.tasks:
            self.tasks = list(DEFAULT_TASKS)


# -- corpus ---------------------------------------------------------------------------------------------


def _load_dataset(corpus: Path):
    from kaffee.data.corpus import load_corpus

    if not corpus.exists():
        raise KaffeeError(f"corpus directory {corpus} does not exist")
    return load_corpus(corpus)


def _split_rows(ds, split: str, corpus: Path):
    from kaffee.data.corpus import split_of

    try:
        return split_of(ds, split)
    except KaffeeError as exc:
        raise KaffeeError(f"corpus {corpus}: {exc}") from exc


def load_held_out(corpus: str | os.PathLike, split: str = "test") -> HeldOut:
    """The corpus's held-out split as files sorted by (project, path)."""
    path = Path(corpus)
    part = _split_rows(_load_dataset(path), split, path)
    if len(part) == 0:
        raise KaffeeError(f"corpus {path}: the {split!r} split is empty")
    cols = part.column_names
    for needed in ("text", "path"):
        if needed not in cols:
            raise KaffeeError(f"corpus {path} lacks the {needed!r} column")
    texts, paths = part["text"], part["path"]
    projects = part["project"] if "project" in cols else ["?"] * len(texts)
    shas = part["sha256"] if "sha256" in cols else [hashlib.sha256(t.encode()).hexdigest() for t in texts]
    order = sorted(range(len(texts)), key=lambda i: (projects[i], paths[i], shas[i]))
    files = [SourceFile(n, projects[i], paths[i], texts[i], shas[i]) for n, i in enumerate(order)]
    return HeldOut(files)


def train_texts(corpus: str | os.PathLike) -> Callable[[int], Iterator[str]]:
    """``gen(max_files)``: up to ``max_files`` train-split texts spread evenly over the split (for mft)."""

    def gen(max_files: int) -> Iterator[str]:
        path = Path(corpus)
        part = _split_rows(_load_dataset(path), "train", path)
        n = len(part)
        if n == 0:
            return
        step = max(1, n // max(1, max_files))
        for i in range(0, n, step)[:max_files]:
            yield part[i]["text"]

    return gen


# -- prediction cache -----------------------------------------------------------------------------------------


class PredictionCache:
    """Append-only JSON lines of finished predictions; a torn last line (killed run) is ignored."""

    def __init__(self, path: Path):
        self.path = path
        self.data: dict[str, dict] = {}
        if path.is_file():
            with path.open(encoding="utf-8") as fh:
                for line in fh:
                    try:
                        rec = json.loads(line)
                        self.data[rec["k"]] = rec["o"]
                    except (json.JSONDecodeError, KeyError, TypeError):
                        continue
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = path.open("a", encoding="utf-8")
        if path.stat().st_size and not path.read_bytes().endswith(b"\n"):
            self._fh.write("\n")  # torn line from a killed run: start clean

    def get(self, key: str) -> dict | None:
        return self.data.get(key)

    def put(self, key: str, out: dict) -> None:
        self.data[key] = out
        self._fh.write(json.dumps({"k": key, "o": out}, ensure_ascii=False) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


# -- running ----------------------------------------------------------------------------------------------


def _num(x: float | None) -> float | None:
    if x is None or (isinstance(x, float) and (math.isnan(x) or math.isinf(x))):
        return None
    return round(float(x), 4)


@dataclass
class Problem:
    where: str  # system label, task name or "corpus"
    message: str


class Evaluation:
    """One run; ``run()`` returns the results dict (also written to ``out``)."""

    def __init__(self, config: EvalConfig, systems: Sequence[System] | None = None):
        self.config = config
        self.out = Path(config.out)
        self.prebuilt = list(systems or [])  # already-built systems (tests, API users)
        self.problems: list[Problem] = []
        self.notes: list[str] = []
        self.rows: list[dict[str, Any]] = []
        self.distributions: dict[str, dict[str, dict[str, list[float]]]] = {}
        self.examples: dict[str, dict[str, list[dict[str, Any]]]] = {}  # system -> task -> a few predictions
        self.system_info: list[dict[str, Any]] = []
        self._load_cost: dict[str, float] = {}  # load time / memory of the system being built
        self.sizes: dict[str, int] = {}
        self.item_scores: dict[tuple[str, str], dict[str, list[float]]] = {}  # (label, task) -> per-position
        self.pairs: list[tuple[str, str]] = []  # (with project, without project) labels to compare
        self.gains: list[dict[str, Any]] = []

    def _problem(self, where: str, message: str) -> None:
        log.error("%s: %s", where, message)
        self.problems.append(Problem(where, message))

    # -- preparation ------------------------------------------------------------------------------------
    def _tasks(self) -> list[Task]:
        tasks: list[Task] = []
        seen = set()
        for name in self.config.tasks:
            try:
                task = get_task(
                    name, codexglue_file=self.config.codexglue_file, typing_lines=self.config.typing_lines
                )
            except KaffeeError as exc:
                self._problem(f"task {name}", str(exc))
                continue
            if task.name not in seen:
                seen.add(task.name)
                tasks.append(task)
        return tasks

    def _positions(self, tasks: list[Task], held: HeldOut | None) -> dict[str, list[Position]]:
        out = {}
        for task in tasks:
            if task.uses_corpus and held is None:
                if not self.config.corpus:
                    self._problem(f"task {task.name}", "needs a corpus (--corpus DIR with a test split)")
                continue  # else the corpus problem is already reported
            try:
                positions = task.positions(held, self.config.seed, self.config.limit)
            except KaffeeError as exc:
                self._problem(f"task {task.name}", str(exc))
                continue
            if not positions:
                self._problem(
                    f"task {task.name}", f"the {self.config.split} split has no positions for this task"
                )
                continue
            out[task.name] = positions
            self.sizes[task.name] = len(positions)
            log.info("task %s: %d positions (seed %d)", task.name, len(positions), self.config.seed)
            if self.config.limit is None and len(positions) > 20_000:
                log.warning(
                    "task %s has %d positions; --limit N makes a quicker run", task.name, len(positions)
                )
        return out

    def _systems(self) -> Iterator[tuple[str, System | None]]:
        """(spec text, system) pairs, built one at a time so only one model is in memory."""
        for system in self.prebuilt:
            yield system.label, system
        settings = SystemSettings(
            device=self.config.device,
            lsp_timeout=self.config.lsp_timeout,
            lsp_start_timeout=self.config.lsp_start_timeout,
            lsp_init_options=self.config.lsp_init_options,
        )
        for text in self.config.systems if not self.prebuilt else []:
            try:
                specs = [parse_system_spec(text)]
            except KaffeeError as exc:
                self._problem(f"system {text}", str(exc))
                self.system_info.append({"system": text, "spec": text, "status": f"failed: {exc}"})
                yield text, None
                continue
            if self.config.project_compare and specs[0].kind in MODEL_KINDS:
                specs.append(without_project(specs[0]))
                self.pairs.append((specs[0].label, specs[1].label))
            for spec in specs:
                try:
                    train = train_texts(self.config.corpus) if self.config.corpus else None
                    log.info("loading system %s", spec.label)
                    rss0, t0 = rss_mb(), time.perf_counter()
                    system = build_system(spec, settings, train_texts=train)
                    load_s, rss1 = time.perf_counter() - t0, rss_mb()
                    self._load_cost = {"load_s": round(load_s, 2)}
                    if system.process_id() is None and rss0 is not None and rss1 is not None:
                        self._load_cost["memory_mb"] = round(rss1 - rss0, 1)  # what loading it added here
                    yield spec.text, system
                except KaffeeError as exc:
                    self._problem(f"system {spec.text}", str(exc))
                    self.system_info.append(
                        {"system": spec.label, "spec": spec.text, "status": f"failed: {exc}"}
                    )
                    yield spec.text, None

    # -- the run ------------------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        cfg = self.config
        held: HeldOut | None = None
        if cfg.corpus:
            try:
                held = load_held_out(cfg.corpus, cfg.split)
            except KaffeeError as exc:
                self._problem("corpus", str(exc))
        if not self.prebuilt and not cfg.systems:
            raise KaffeeError("give at least one --system")
        tasks = self._tasks()
        positions = self._positions(tasks, held)
        tasks = [t for t in tasks if t.name in positions]
        if not tasks:
            msgs = "; ".join(f"{p.where}: {p.message}" for p in self.problems) or "no task to run"
            raise KaffeeError(f"nothing to evaluate: {msgs}")
        self.held = held
        self.out.mkdir(parents=True, exist_ok=True)
        cache = PredictionCache(self.out / CACHE_FILE)
        labels: set[str] = set()
        try:
            for spec_text, system in self._systems():
                if system is None:
                    continue
                label = system.label
                while label in labels:
                    label += "'"
                labels.add(label)
                cost = {**system.cost(), **self._load_cost, "cpu_ms": {}}
                self._load_cost = {}
                self.system_info.append(
                    {
                        "system": label,
                        "spec": spec_text,
                        "fingerprint": system.fingerprint(),
                        "status": "ok",
                        "cost": cost,
                    }
                )
                try:
                    for task in tasks:
                        if task.needs not in system.capabilities:
                            self.notes.append(f"{label} does not do {task.name} (needs {task.needs})")
                            continue
                        self._run_task(system, label, task, positions[task.name], cache)
                except SystemUnavailable as exc:
                    self._problem(f"system {label}", str(exc))
                    self.system_info[-1]["status"] = f"failed: {exc}"
                finally:
                    pid = system.process_id()
                    if pid is not None:  # a server: its own peak, whatever this process holds
                        peak = peak_rss_mb(pid)
                        if peak is not None:
                            cost["memory_mb"] = round(peak, 1)
                    try:
                        system.close()
                    except Exception as exc:  # noqa: BLE001 - a failing close must not lose results
                        log.warning("%s: close failed: %s", label, exc)
        finally:
            cache.close()
        self._project_gains(tasks, positions)
        results = self.results()
        from kaffee.evaluation.report import write_reports

        write_reports(results, self.out)
        return results

    def _run_task(
        self, system: System, label: str, task: Task, positions: list[Position], cache: PredictionCache
    ) -> None:
        prefix = f"{system.fingerprint()}|{task.name}|"
        errors: dict[str, str] = {}
        todo = [p for p in positions if cache.get(prefix + p.id) is None]
        bar = None
        if self.config.progress:
            from tqdm import tqdm

            bar = tqdm(
                total=len(positions),
                initial=len(positions) - len(todo),
                desc=f"{label[:40]} · {task.name}",
                unit="pos",
                file=sys.stderr,
                dynamic_ncols=True,
                leave=False,
            )
        current = None
        held = self.held
        pid = system.process_id()
        cpu0 = cpu_seconds(pid)
        try:
            for pos in todo:
                if held is not None and pos.file >= 0 and pos.file != current:
                    f = held.files[pos.file]
                    system.begin_file(f.project, f.path, held.workspace(pos.file))
                    current = pos.file
                try:
                    out = task.predict(system, held, pos)
                except RequestFailed as exc:
                    errors[pos.id] = str(exc)
                except Exception as exc:  # noqa: BLE001 - a failing system must not end the run
                    if not errors:
                        log.exception("%s · %s: request failed at %s", label, task.name, pos.id)
                    errors[pos.id] = f"{type(exc).__name__}: {exc}"
                else:
                    cache.put(prefix + pos.id, out)
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
        cpu1 = cpu_seconds(system.process_id() if pid is not None else None)
        made = len(todo) - len(errors)
        if made > 0 and cpu0 is not None and cpu1 is not None and cpu1 >= cpu0 and self.system_info:
            cost = self.system_info[-1].setdefault("cost", {}).setdefault("cpu_ms", {})
            cost[task.name] = round((cpu1 - cpu0) * 1000 / made, 3)  # CPU of the answering process
        warning = system.health()
        if warning:
            self.notes.append(f"{label} · {task.name}: {warning}")
        outputs = [cache.get(prefix + p.id) for p in positions]
        request_errors = sum(int((o or {}).get("request_errors", 0)) for o in outputs)
        if errors:
            first = next(iter(errors.values()))
            self.notes.append(
                f"{label} · {task.name}: {len(errors)} of {len(positions)} positions failed (first: {first})"
            )
        outcome = task.aggregate(positions, outputs, self.config.seed)
        scores = task.item_scores(positions, outputs)
        self.item_scores[(label, task.name)] = scores
        outcome.rows.extend(self._project_rows(task, positions, scores, outcome.rows))
        shown = task.examples(getattr(self, "held", None), positions, outputs)
        if shown:
            self.examples.setdefault(label, {})[task.name] = shown
        for row in outcome.rows:
            est = row.estimate
            self.rows.append(
                {
                    "system": label,
                    "task": task.name,
                    "metric": row.metric,
                    "slice": row.slice,
                    "value": _num(est.value),
                    "ci95": [_num(est.low), _num(est.high)],
                    "n": est.n,
                    "errors": len(errors) + request_errors if row.slice == "all" else None,
                    "unit": row.unit,
                    "higher_is_better": row.higher_is_better,
                    "corpus": self.config.corpus if task.uses_corpus else self.config.codexglue_file,
                    "split": self.config.split if task.uses_corpus else "codexglue",
                    "seed": self.config.seed,
                }
            )
        dists = {k: [round(float(v), 3) for v in vals] for k, vals in outcome.distributions.items()}
        self.distributions.setdefault(label, {})[task.name] = dists

    def _project_rows(
        self, task: Task, positions: list[Position], scores: dict[str, list[float]], pooled: list[MetricRow]
    ) -> list[MetricRow]:
        """The per-position headline scores (``item_scores``) averaged per held-out project:
        rows with slice ``project=NAME``, in the unit and direction of the pooled row."""
        held = getattr(self, "held", None)
        if held is None or not scores:
            return []
        kind = {r.metric: (r.unit, r.higher_is_better) for r in pooled if r.slice == "all"}
        groups: dict[str, list[int]] = {}
        for i, p in enumerate(positions):
            if p.file >= 0:
                groups.setdefault(held.files[p.file].project, []).append(i)
        rows = []
        for metric, values in scores.items():
            if metric not in kind:
                continue
            unit, higher = kind[metric]
            scale = task.item_scale.get(metric, 1.0)
            for project in sorted(groups):
                est = mean_estimate([values[i] for i in groups[project]], scale, self.config.seed)
                rows.append(MetricRow(metric, est, f"project={project}", unit, higher))
        return rows

    def _project_gains(self, tasks: list[Task], positions: dict[str, list[Position]]) -> None:
        """Paired gain of project context (with - without, same positions), pooled and per project."""
        held = getattr(self, "held", None)
        for with_label, without_label in self.pairs:
            for task in tasks:
                a = self.item_scores.get((with_label, task.name))
                b = self.item_scores.get((without_label, task.name))
                if not a or not b:
                    continue
                pos = positions[task.name]
                projects = [
                    held.files[p.file].project if held is not None and p.file >= 0 else "?" for p in pos
                ]
                groups = {"all": list(range(len(pos)))}
                for i, proj in enumerate(projects):
                    groups.setdefault(f"project={proj}", []).append(i)
                for metric in a:
                    scale = task.item_scale.get(metric, 1.0)
                    for slice_name, idx in groups.items():
                        with_v = [a[metric][i] for i in idx]
                        without_v = [b[metric][i] for i in idx]
                        gain = mean_estimate(
                            [x - y for x, y in zip(with_v, without_v, strict=True)], scale, self.config.seed
                        )
                        self.gains.append(
                            {
                                "system": with_label,
                                "without": without_label,
                                "task": task.name,
                                "metric": metric,
                                "slice": slice_name,
                                "n": len(idx),
                                "with": _num(scale * sum(with_v) / len(idx)),
                                "without_value": _num(scale * sum(without_v) / len(idx)),
                                "gain": _num(gain.value),
                                "ci95": [_num(gain.low), _num(gain.high)],
                            }
                        )

    def results(self) -> dict[str, Any]:
        cfg = self.config
        held = getattr(self, "held", None)
        corpus_info = None
        if held is not None:
            h = hashlib.sha256("\n".join(f.sha256 for f in held.files).encode()).hexdigest()[:16]
            corpus_info = {
                "path": cfg.corpus,
                "split": cfg.split,
                "files": len(held.files),
                "projects": len({f.project for f in held.files}),
                "characters": sum(len(f.text) for f in held.files),
                "fingerprint": h,
            }
        return {
            "kaffee_eval": RESULTS_VERSION,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "config": asdict(cfg),
            "corpus": corpus_info,
            "seed": cfg.seed,
            "positions": self.sizes,
            "systems": self.system_info,
            "results": self.rows,
            "project_gain": self.gains,
            "distributions": self.distributions,
            "examples": self.examples,
            "problems": [asdict(p) for p in self.problems],
            "notes": self.notes,
        }


def without_project(spec: SystemSpec) -> SystemSpec:
    """The same model system with project context and the workspace cache off (the baseline of a pair)."""
    options = {**spec.options, "project": "off", "cache": "off"}
    suffix = ",project=off,cache=off"
    return SystemSpec(
        spec.kind, spec.target, options, label=f"{spec.label} [no project]", text=spec.text + suffix
    )


def run_evaluation(config: EvalConfig, systems: Sequence[System] | None = None) -> dict[str, Any]:
    """Run ``config`` (or the given, already-built ``systems``) and write the reports; returns results."""
    return Evaluation(config, systems).run()
