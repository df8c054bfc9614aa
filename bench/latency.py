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
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from kaffee.errors import KaffeeError
from kaffee.evaluation.cost import peak_rss_mb
from kaffee.evaluation.lexer import lex
from kaffee.evaluation.lsp_client import LspClient, LspDied, LspError, LspTimeout
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
        xs = sorted(self.latencies_ms)
        if not xs:
            return float("nan")
        return xs[min(len(xs) - 1, int(round(q / 100.0 * (len(xs) - 1))))]


def utf16_len(s: str) -> int:
    return len(s.encode("utf-16-le")) // 2


def position(text: str, offset: int) -> dict:
    line = text.count("\n", 0, offset)
    start = text.rfind("\n", 0, offset) + 1
    return {"line": line, "character": utf16_len(text[start:offset])}


def replay(cfg: ReplayConfig, mode: str) -> ReplayResult:
    options = list(cfg.engine_options) + (["naive=true"] if mode == "naive" else [])
    cmd = [sys.executable, "-m", "kaffee", "serve", "--model", str(cfg.model), "--device", cfg.device]
    cmd += ["--log-level", "info"]
    for opt in options:
        cmd += ["--engine-option", opt]
    server = LspClient(cmd, log_file=cfg.server_log)
    server.start()
    folder = cfg.workspace.resolve() if cfg.workspace is not None else Path("/tmp/kaffee-bench")
    uri = (folder / "KaffeeReplay.java").as_uri()  # never written: the editor's unsaved buffer
    text = cfg.text
    doc = text[: cfg.start] + text[cfg.end :]
    region = text[cfg.start : cfg.end]
    lines = lines_of(text, cfg.start, cfg.end, [cfg.start + t.start for t in lex(region)])
    timeout = cfg.deadline_ms / 1000 + 60
    try:
        server.request(
            "initialize",
            {
                "processId": None,
                "rootUri": folder.as_uri() if cfg.workspace is not None else None,
                "capabilities": {},
                "initializationOptions": {"deadlineMs": cfg.deadline_ms, "device": cfg.device},
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
            pos = position(doc, cursor)
            version += 1
            change = {"range": {"start": pos, "end": pos}, "text": piece}
            server.notify(
                "textDocument/didChange",
                {"textDocument": {"uri": uri, "version": version}, "contentChanges": [change]},
            )
            doc = doc[:cursor] + piece + doc[cursor:]

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
