"""Typing replay over LSP: inline-completion latency and keystrokes saved, engine vs naive baseline.

Starts the real ``kaffee serve`` as a subprocess, opens a real Java file with a region
cut out, and types that region back as an editor would (one ``didChange`` per
keystroke), following the user model of ``evaluation/typing_replay.py`` -- the same one
the ``typing`` evaluation task uses: inline completion asked at every token start and
after every accepted suggestion, accepted with one key when it is exactly what comes
next on the line. Run once with the engine and once with the naive baseline
(``generate`` on the full re-encoded context per request, same model) and print both
as a Markdown table, with the server's peak RSS.

    python bench/latency.py path/To.java --model models/default
    python bench/latency.py --corpus runs/corpus --model models/default --chars 3000

Latency is the client's round trip per request (what an editor waits for), measured
after a warm-up request so model loading is not counted. Numbers, not pass/fail.

``--cps N`` types at a human pace instead, without waiting for answers: one
``didChange`` per keystroke on a timer (N characters per second; ``--jitter S`` draws the
gaps from a log-normal with that sigma and the same mean), an inline request sent
after every keystroke that lands on a token start (``--ask token``, the user model
above) or after every keystroke (``--ask key``, as editors with automatic inline
suggestions do), answers collected as they come; nothing is accepted, every character
is typed. It runs the engine once per ``--debounce`` value (the server's ``debounceMs``)
and reports model calls per keystroke (``modelCalls`` from the server's
``kaffee/counters``: engine calls that ran the model, not those answered from the last
suggestion, which are counted apart), how many requests were answered, superseded or
debounced, the model thread's busy time per keystroke (``modelMs``), and the latency of
the answered ones; ``--cancel`` also cancels every unanswered request before each
keystroke, as VS Code does. Repeat values to alternate runs (``--debounce 0,50,0,50``)
so that a change in machine load hits both alike:

    python bench/latency.py examples/Bank.java --cps 8 --debounce 0,50 --chars 400
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import statistics
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from kaffee.errors import KaffeeError
from kaffee.evaluation.cost import peak_rss_mb
from kaffee.evaluation.lexer import lex
from kaffee.evaluation.lsp_client import LspClient, LspDied, LspError, LspTimeout, Pending
from kaffee.evaluation.typing_replay import TypingCounts, lines_of
from kaffee.evaluation.typing_replay import replay as replay_lines


@dataclass
class ReplayConfig:
    model: Path  # model directory served by `kaffee serve`
    text: str  # the Java file
    name: str  # where it came from (for the report)
    start: int  # offset where typing starts
    end: int  # offset where typing stops
    deadline_ms: int = 10_000  # server deadline per request (large: measure the work, not the cut-off)
    max_requests: int | None = None  # stop a run after this many completion requests
    device: str = "cpu"  # server device
    engine_options: list[str] = field(default_factory=list)  # extra --engine-option KEY=VALUE for both runs
    server_log: Path | None = None  # server log file (default: discarded)
    workspace: Path | None = None  # project folder opened as the LSP workspace (project context); None: none
    index_wait_s: float = 0.0  # seconds to let the server index the workspace before typing starts


def percentile(xs: Iterable[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``xs``, nearest rank on ``len - 1`` (NaN when empty).

    Every p50/p95 of this bench, and of ``bench/model_size.py``'s reference replay, is this one.
    """
    xs = sorted(xs)
    if not xs:
        return float("nan")
    return xs[min(len(xs) - 1, int(round(q / 100.0 * (len(xs) - 1))))]


@dataclass
class ReplayResult:
    mode: str  # engine | naive
    latencies_ms: list[float]  # per inline request, client round trip
    counts: TypingCounts  # keystrokes, saved, accepted (typing_replay's user model)
    elapsed_s: float  # wall time of the whole replay
    first_ms: float = 0.0  # the first request after didOpen (model loaded, nothing encoded yet)
    peak_rss_mb: float = 0.0  # the server process's peak resident memory (VmHWM)

    @property
    def saved_pct(self) -> float:
        return 100.0 * self.counts.saved / max(1, self.counts.keystrokes)

    def pct(self, q: float) -> float:
        return percentile(self.latencies_ms, q)


def utf16_len(s: str) -> int:
    return len(s.encode("utf-16-le")) // 2


def position(text: str, offset: int) -> dict:
    line = text.count("\n", 0, offset)
    start = text.rfind("\n", 0, offset) + 1
    return {"line": line, "character": utf16_len(text[start:offset])}


def insert(server: LspClient, uri: str, version: int, doc: str, cursor: int, piece: str) -> str:
    """Type ``piece`` at ``cursor``: one didChange to the server; returns the new text."""
    pos = position(doc, cursor)
    change = {"range": {"start": pos, "end": pos}, "text": piece}
    server.notify(
        "textDocument/didChange",
        {"textDocument": {"uri": uri, "version": version}, "contentChanges": [change]},
    )
    return doc[:cursor] + piece + doc[cursor:]


def start_session(
    cfg: ReplayConfig, options: list[str], settings: dict | None = None
) -> tuple[LspClient, Path, str, str]:
    """A started, initialized server with the document (region cut out) open and the model warm.

    Returns the client, the workspace folder, the document's URI and its text. The
    caller closes the client.
    """
    cmd = [sys.executable, "-m", "kaffee", "serve", "--model", str(cfg.model), "--device", cfg.device]
    cmd += ["--log-level", "info"]
    for opt in options:
        cmd += ["--engine-option", opt]
    server = LspClient(cmd, log_file=cfg.server_log)
    server.start()
    folder = cfg.workspace.resolve() if cfg.workspace is not None else Path("/tmp/kaffee-bench")
    uri = (folder / "KaffeeReplay.java").as_uri()  # never written: the editor's unsaved buffer
    doc = cfg.text[: cfg.start] + cfg.text[cfg.end :]
    try:
        server.request(
            "initialize",
            {
                "processId": None,
                "rootUri": folder.as_uri() if cfg.workspace is not None else None,
                "capabilities": {},
                "initializationOptions": {
                    "deadlineMs": cfg.deadline_ms,
                    "device": cfg.device,
                    **(settings or {}),
                },
            },
            timeout=600,
        )
        server.notify("initialized", {})
        server.notify(
            "textDocument/didOpen",
            {"textDocument": {"uri": uri, "languageId": "java", "version": 1, "text": doc}},
        )
        params = {
            "textDocument": {"uri": uri},
            "position": position(doc, cfg.start),
            "context": {"triggerKind": 2},
        }
        server.request("textDocument/inlineCompletion", params, timeout=600)  # warm-up: model load
    except BaseException:
        server.close(timeout=30)
        raise
    return server, folder, uri, doc


def replay(cfg: ReplayConfig, mode: str) -> ReplayResult:
    options = list(cfg.engine_options) + (["naive=true"] if mode == "naive" else [])
    text = cfg.text
    region = text[cfg.start : cfg.end]
    lines = lines_of(text, cfg.start, cfg.end, [cfg.start + t.start for t in lex(region)])
    timeout = cfg.deadline_ms / 1000 + 60
    try:
        server, folder, uri, doc = start_session(cfg, options)
    except (LspError, LspTimeout, LspDied) as exc:
        raise KaffeeError(f"{mode}: {exc}") from exc
    try:
        if cfg.index_wait_s:
            time.sleep(cfg.index_wait_s)  # the workspace scan and index build run in the background
        # the first suggestion in a freshly opened file: a second document, nothing of it encoded yet
        fresh_uri = (folder / "KaffeeFresh.java").as_uri()
        fresh = "// another file: no encoded prefix to reuse\n" + doc
        server.notify(
            "textDocument/didOpen",
            {"textDocument": {"uri": fresh_uri, "languageId": "java", "version": 1, "text": fresh}},
        )
        t0 = time.perf_counter()
        fresh_pos = position(fresh, cfg.start + len(fresh) - len(doc))
        server.request(
            "textDocument/inlineCompletion",
            {"textDocument": {"uri": fresh_uri}, "position": fresh_pos, "context": {"triggerKind": 2}},
            timeout=timeout,
        )
        first_ms = (time.perf_counter() - t0) * 1000.0
        version = 1
        latencies: list[float] = []

        def type_text(cursor: int, piece: str) -> None:
            """One keystroke (or an accepted suggestion, or the free indentation) at ``cursor``."""
            nonlocal doc, version
            version += 1
            doc = insert(server, uri, version, doc, cursor, piece)

        def suggest(cursor: int) -> str:
            params = {
                "textDocument": {"uri": uri},
                "position": position(doc, cursor),
                "context": {"triggerKind": 2},
            }
            t0 = time.perf_counter()
            result = server.request("textDocument/inlineCompletion", params, timeout=timeout)
            latencies.append((time.perf_counter() - t0) * 1000.0)
            items = (result or {}).get("items") or []
            return items[0]["insertText"] if items else ""

        t_start = time.monotonic()
        counts = replay_lines(text, lines, suggest, type_text, cfg.max_requests)
        assert server.proc is not None
        return ReplayResult(
            mode, latencies, counts, time.monotonic() - t_start, first_ms, peak_rss_mb(server.proc.pid) or 0.0
        )
    except (LspError, LspTimeout, LspDied) as exc:
        raise KaffeeError(f"{mode}: {exc}") from exc
    finally:
        server.close(timeout=30)


@dataclass
class PacedResult:
    debounce_ms: int
    cancel: bool  # the client cancelled stale requests before each keystroke
    keystrokes: int  # didChange messages for typed characters and Enter (indentation comes free)
    requests: int  # inline requests sent
    answered: int  # answers with a result (not superseded)
    cancelled: int  # answered RequestCancelled: superseded by a newer request or an edit, or debounced
    counters: dict  # the server's kaffee/counters delta over the typing
    latencies_ms: list[float]  # round trip of the answered requests
    elapsed_s: float

    @property
    def model_calls(self) -> int:
        return int(self.counters.get("modelCalls", 0))

    def pct(self, q: float) -> float:
        return percentile(self.latencies_ms, q)


def keystroke_plan(text: str, start: int, end: int, ask: str) -> list[tuple[int, str, bool, bool]]:
    """``(cursor, piece, is_keystroke, ask_after)`` per change, in order, for a user who types everything.

    The lines and token starts are ``typing_replay``'s; indentation is inserted free
    together with the Enter before it (the first line's up front). ``ask``: ``token``
    asks when a keystroke leaves the cursor on a token start, ``key`` after every keystroke.
    """
    region = text[start:end]
    plan: list[tuple[int, str, bool, bool]] = []
    lines = lines_of(text, start, end, [start + t.start for t in lex(region)])
    for n, line in enumerate(lines):
        indent = text[line.indent : line.start]
        starts = set(line.token_starts)
        if n == 0 and indent:
            plan.append((line.indent, indent, False, ask == "key" or line.start in starts))
        for j in range(line.start, line.end):
            plan.append((j, text[j], True, ask == "key" or j + 1 in starts))
        nl = text.find("\n", line.end)
        enter = text[line.end : nl + 1] if nl >= 0 else text[line.end :]
        if enter:
            nxt = lines[n + 1] if n + 1 < len(lines) else None
            more = text[nxt.indent : nxt.start] if nxt is not None else ""
            ask_next = ask == "key" or (nxt is not None and nxt.start in nxt.token_starts)
            plan.append((line.end, enter + more, True, ask_next))
    return plan


def paced_replay(
    cfg: ReplayConfig,
    debounce_ms: int,
    cps: float,
    ask: str = "token",
    jitter: float = 0.0,
    seed: int = 0,
    cancel: bool = False,
) -> PacedResult:
    """Type the region at ``cps`` characters per second without waiting for answers.

    ``cancel``: before each keystroke, send ``$/cancelRequest`` for every request not
    answered yet, as VS Code does for the inline request a keystroke makes stale.
    """
    plan = keystroke_plan(cfg.text, cfg.start, cfg.end, ask)
    rng = random.Random(seed)
    mean_gap = 1.0 / cps
    # log-normal gaps with mean ``mean_gap``: mu = ln(mean) - sigma^2 / 2
    gaps = [
        rng.lognormvariate(math.log(mean_gap) - jitter**2 / 2, jitter) if jitter > 0 else mean_gap
        for _ in plan
    ]
    timeout = cfg.deadline_ms / 1000 + 60
    label = f"debounce {debounce_ms} ms"
    try:
        server, _folder, uri, doc = start_session(cfg, list(cfg.engine_options), {"debounceMs": debounce_ms})
    except (LspError, LspTimeout, LspDied) as exc:
        raise KaffeeError(f"{label}: {exc}") from exc
    try:
        before = server.request("kaffee/counters", None, timeout=timeout) or {}
        pending: list[Pending] = []
        unanswered = 0  # pending[unanswered:] may still be waiting for an answer (--cancel)
        version, keystrokes = 1, 0
        t_start = time.perf_counter()
        due = t_start
        for (cursor, piece, is_key, ask_after), gap in zip(plan, gaps, strict=True):
            if is_key:  # the free indentation of the first line takes no time
                due += gap
                keystrokes += 1
                time.sleep(max(0.0, due - time.perf_counter()))
            if cancel:
                for p in pending[unanswered:]:
                    if not p.event.is_set():
                        server.notify("$/cancelRequest", {"id": p.rid})
                unanswered = len(pending)
            version += 1
            doc = insert(server, uri, version, doc, cursor, piece)
            if ask_after:
                params = {
                    "textDocument": {"uri": uri},
                    "position": position(doc, cursor + len(piece)),
                    "context": {"triggerKind": 2},
                }
                pending.append(server.send("textDocument/inlineCompletion", params))
        latencies, cancelled = [], 0
        for p in pending:
            try:
                server.wait(p, timeout=timeout)
            except LspError:
                if (p.slot[0].get("error") or {}).get("code") != -32800:
                    raise
                cancelled += 1
                continue
            assert p.received_at is not None
            latencies.append((p.received_at - p.sent_at) * 1000.0)
        elapsed = time.perf_counter() - t_start
        after = server.request("kaffee/counters", None, timeout=timeout) or {}
        counters = {k: int(after.get(k, 0)) - int(before.get(k, 0)) for k in after}
        return PacedResult(
            debounce_ms,
            cancel,
            keystrokes,
            len(pending),
            len(latencies),
            cancelled,
            counters,
            latencies,
            elapsed,
        )
    except (LspError, LspTimeout, LspDied) as exc:
        raise KaffeeError(f"{label}: {exc}") from exc
    finally:
        server.close(timeout=30)


def paced_report(cfg: ReplayConfig, results: list[PacedResult], cps: float, ask: str, jitter: float) -> str:
    pace = f"{cps:g} chars/s" + (f", log-normal gaps sigma {jitter:g}" if jitter else ", even gaps")
    lines = [
        f"paced typing of {cfg.name} (chars {cfg.start}-{cfg.end}), model {cfg.model}, {pace}, "
        f"inline request after every {'keystroke' if ask == 'key' else 'token start'}; "
        f"{platform.machine()} python {platform.python_version()}",
        "",
        "| debounce ms | client cancels | keystrokes | model calls | calls per keystroke | model ms per keystroke "
        "| from last suggestion | answered | cancelled (debounced) | p50 ms | p95 ms | max ms |",
        "| ---: | :---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        mx = max(r.latencies_ms) if r.latencies_ms else float("nan")
        lines.append(
            f"| {r.debounce_ms} | {'yes' if r.cancel else 'no'} | {r.keystrokes} | {r.model_calls} "
            f"| {r.model_calls / max(1, r.keystrokes):.3f} | {r.counters.get('modelMs', 0) / max(1, r.keystrokes):.1f} "
            f"| {r.counters.get('reusedAnswers', 0)} | {r.answered} "
            f"| {r.cancelled} ({r.counters.get('debounced', 0)}) "
            f"| {r.pct(50):.1f} | {r.pct(95):.1f} | {mx:.1f} |"
        )
    return "\n".join(lines)


def pick_file(args: argparse.Namespace) -> tuple[str, str]:
    if args.file is not None:
        data = args.file.read_bytes()
        return data.decode("utf-8", errors="replace"), str(args.file)
    if args.corpus is None:
        raise KaffeeError("give a Java FILE or --corpus DIR (its test split is used)")
    from datasets import load_from_disk

    ds = load_from_disk(str(args.corpus))
    test = ds.filter(lambda r: r["split"] == "test")
    if len(test) == 0:
        raise KaffeeError(f"{args.corpus} has no test split")
    candidates = [
        r for r in test.select(range(min(len(test), 2000))) if 4000 <= len(r["text"]) <= 40000
    ] or list(test)
    row = candidates[args.seed % len(candidates)]
    return row["text"], f"{args.corpus}:{row['project']}/{row['path']}"


def choose_region(text: str, start_frac: float, chars: int) -> tuple[int, int]:
    """Start at a line start ``start_frac`` into the file; type ``chars`` characters up to a line end."""
    start = text.rfind("\n", 0, int(len(text) * start_frac)) + 1
    end = min(len(text), start + chars)
    nl = text.rfind("\n", start, end)
    return start, (nl + 1 if nl > start else end)


def report(cfg: ReplayConfig, results: list[ReplayResult]) -> str:
    lines = [
        f"typing replay of {cfg.name} (chars {cfg.start}-{cfg.end}), model {cfg.model}, {platform.machine()} "
        f"{platform.processor() or ''} python {platform.python_version()}",
        "",
        f"workspace: {cfg.workspace or 'none'}",
        "",
        "| mode | requests | p50 ms | p95 ms | mean ms | max ms | first in a fresh file ms "
        "| server peak RSS MB | keystrokes saved | accepted |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        mean = statistics.fmean(r.latencies_ms) if r.latencies_ms else float("nan")
        mx = max(r.latencies_ms) if r.latencies_ms else float("nan")
        lines.append(
            f"| {r.mode} | {len(r.latencies_ms)} | {r.pct(50):.1f} | {r.pct(95):.1f} | {mean:.1f} | {mx:.1f} "
            f"| {r.first_ms:.0f} | {r.peak_rss_mb:.0f} "
            f"| {r.saved_pct:.1f}% of {r.counts.keystrokes} keys "
            f"| {r.counts.accepted} ({r.counts.accepted_chars} chars) |"
        )
    by = {r.mode: r for r in results}
    if "engine" in by and "naive" in by and by["engine"].latencies_ms:
        e, n = by["engine"], by["naive"]
        lines += [
            "",
            f"speed-up over naive: p50 {n.pct(50) / e.pct(50):.1f}x, p95 {n.pct(95) / e.pct(95):.1f}x",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "file", nargs="?", type=Path, help="Java file to replay (default: one from --corpus's test split)"
    )
    p.add_argument(
        "--corpus", type=Path, help="corpus directory; a test-split file is replayed when no FILE is given"
    )
    p.add_argument("--seed", type=int, default=0, help="which test-split file to pick")
    p.add_argument("--model", type=Path, default=None, help="model directory (default: the bundled model)")
    p.add_argument(
        "--start-frac", type=float, default=0.4, help="where typing starts, as a fraction of the file"
    )
    p.add_argument("--chars", type=int, default=2000, help="how many characters to type")
    p.add_argument("--modes", default="engine,naive", help="comma-separated: engine, naive")
    p.add_argument("--max-requests", type=int, default=None, help="cap on requests per mode (naive is slow)")
    p.add_argument("--naive-max-requests", type=int, default=150, help="cap for the naive mode (default 150)")
    p.add_argument("--deadline-ms", type=int, default=10_000, help="server deadline per request")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    p.add_argument(
        "--engine-option", action="append", default=[], metavar="KEY=VALUE", help="passed to kaffee serve"
    )
    p.add_argument("--server-log", type=Path, default=None, help="append the server's log here")
    p.add_argument("--json", type=Path, default=None, help="also write the raw latencies here")
    p.add_argument(
        "--workspace",
        type=Path,
        default=None,
        help="project folder to open as the workspace (project context)",
    )
    p.add_argument(
        "--index-wait",
        type=float,
        default=0.0,
        metavar="S",
        help="seconds to let the server index the workspace",
    )
    p.add_argument(
        "--cps",
        type=float,
        default=None,
        help="type at this many characters per second without waiting for answers (paced mode)",
    )
    p.add_argument(
        "--cancel",
        action="store_true",
        help="paced mode: $/cancelRequest for every unanswered request before each keystroke (as VS Code does)",
    )
    p.add_argument(
        "--ask",
        choices=("token", "key"),
        default="token",
        help="paced mode: an inline request after each token start (default) or each keystroke",
    )
    p.add_argument(
        "--jitter",
        type=float,
        default=0.0,
        metavar="SIGMA",
        help="paced mode: log-normal keystroke gaps with this sigma (0: even gaps)",
    )
    p.add_argument(
        "--debounce",
        default="0,50",
        help="paced mode: comma-separated debounceMs values, one run each (default 0,50)",
    )
    args = p.parse_args(argv)
    try:
        model = args.model
        if model is None:
            from kaffee.models import default_model_dir

            model = default_model_dir()
        text, name = pick_file(args)
        start, end = choose_region(text, args.start_frac, args.chars)
        cfg = ReplayConfig(
            model,
            text,
            name,
            start,
            end,
            args.deadline_ms,
            args.max_requests,
            args.device,
            args.engine_option,
            args.server_log,
            args.workspace,
            args.index_wait,
        )
        if args.cps is not None:
            if args.cps <= 0 or args.jitter < 0:
                raise KaffeeError("--cps must be positive and --jitter not negative")
            try:
                debounces = [int(d) for d in args.debounce.split(",") if d.strip()]
            except ValueError as exc:
                raise KaffeeError(f"--debounce takes comma-separated milliseconds: {exc}") from exc
            paced = []
            for d in debounces:
                print(f"typing at {args.cps:g} chars/s with debounce {d} ms ...", file=sys.stderr, flush=True)
                paced.append(paced_replay(cfg, d, args.cps, args.ask, args.jitter, args.seed, args.cancel))
            print(paced_report(cfg, paced, args.cps, args.ask, args.jitter))
            if args.json:
                args.json.write_text(
                    json.dumps(
                        [  # one entry per run, in order (a debounce value may be repeated)
                            {
                                "debounce_ms": r.debounce_ms,
                                "client_cancels": r.cancel,
                                "keystrokes": r.keystrokes,
                                "requests": r.requests,
                                "counters": r.counters,
                                "latencies_ms": r.latencies_ms,
                            }
                            for r in paced
                        ]
                    )
                )
            return 0
        results = []
        for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
            if mode not in ("engine", "naive"):
                raise KaffeeError(f"unknown mode {mode!r}: use engine and/or naive")
            run_cfg = cfg
            if mode == "naive" and args.naive_max_requests:
                run_cfg = ReplayConfig(
                    **{
                        **cfg.__dict__,
                        "max_requests": min(args.naive_max_requests, args.max_requests or 10**9),
                    }
                )
            print(f"replaying with {mode} ...", file=sys.stderr, flush=True)
            results.append(replay(run_cfg, mode))
    except KaffeeError as exc:
        print(f"latency: error: {exc}", file=sys.stderr)
        return 1
    print(report(cfg, results))
    if args.json:
        args.json.write_text(json.dumps({r.mode: r.latencies_ms for r in results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
