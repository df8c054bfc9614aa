"""Completions per second and latency for N concurrent editors sharing one OpenAI-compatible backend.

Each simulated editor is a thread with its own completion engine (Kaffee's prompt, stop
rules and post-processing, as ``kaffee serve --backend`` has them) asking for the rest of
the line at random mid-line spots of the given Java files, one request after the other
(``--think-ms`` apart). For 1, 4 and 16 editors it prints completions per second, latency
p50/p95 and how many calls the local model had to answer (it should be none). Numbers,
not pass/fail.

    # against a running server (llama.cpp's llama-server, llama_cpp.server, vLLM, ...)
    python bench/remote_concurrency.py --url http://127.0.0.1:8080/v1
    # or let it start llama_cpp.server on a GGUF export (pip install 'kaffee[llama]')
    kaffee export --model models/default --format gguf --out /tmp/default.gguf
    python bench/remote_concurrency.py --gguf /tmp/default.gguf --seconds 20

The engines share one loaded local model (used only if the backend fails), so the
editors' memory is the prompt state alone.
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Level:
    editors: int  # concurrent simulated editors
    latencies_ms: list[float] = field(default_factory=list)  # one per answered request
    empty: int = 0  # answers with no text
    fallbacks: int = 0  # calls the local model answered (backend failed or down)
    seconds: float = 0.0  # wall time of the level


def spots(files: list[Path], n: int, seed: int) -> list[tuple[str, str]]:
    """``n`` (prefix, suffix) pairs: a code line typed up to a random point, the rest of it not yet there."""
    rng = random.Random(seed)
    texts = [p.read_text(encoding="utf-8", errors="replace") for p in files]
    out = []
    while len(out) < n:
        text = rng.choice(texts)
        lines = text.split("\n")
        i = rng.randrange(len(lines))
        line = lines[i]
        body = line.strip()
        if len(body) < 8 or body.startswith(("//", "*", "/*", "import", "package")):
            continue
        line_start = sum(len(x) + 1 for x in lines[:i])
        cut = line_start + len(line) - len(line.lstrip()) + rng.randrange(1, len(body))
        out.append((text[:cut], text[line_start + len(line) :]))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_llama(gguf: Path, threads: int, n_ctx: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    argv = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1"]
    argv += ["--port", str(port), "--n_ctx", str(n_ctx), "--n_threads", str(threads)]
    argv += ["--interrupt_requests", "False"]  # its default cuts a stream short when another request comes
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    for _ in range(600):
        try:
            if httpx.get(url + "/models", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"llama_cpp.server did not start on {gguf}")


def run_level(engines, pool: list[tuple[str, str]], editors: int, seconds: float, think_s: float) -> Level:
    level = Level(editors)
    stop_at = time.monotonic() + seconds
    lock = threading.Lock()

    def editor(k: int) -> None:
        engine = engines[k]
        rng = random.Random(k)
        while time.monotonic() < stop_at:
            prefix, suffix = rng.choice(pool)
            before = engine.remote.stats.fallbacks
            t0 = time.perf_counter()
            result = engine.complete(prefix, suffix, max_lines=1)
            ms = (time.perf_counter() - t0) * 1000
            with lock:
                level.latencies_ms.append(ms)
                level.empty += not result.text
                level.fallbacks += engine.remote.stats.fallbacks - before
            if think_s:
                time.sleep(think_s)

    t0 = time.monotonic()
    threads = [threading.Thread(target=editor, args=(k,)) for k in range(editors)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    level.seconds = time.monotonic() - t0
    return level


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--url", help="base URL of a running OpenAI-compatible server (…/v1)")
    src.add_argument("--gguf", type=Path, help="start llama_cpp.server on this GGUF file for the run")
    ap.add_argument(
        "--remote-model", default=None, help="the model requests name (default: the server's first)"
    )
    ap.add_argument(
        "--model", type=Path, default=None, help="local model dir: tokenizer, window (default bundled)"
    )
    ap.add_argument(
        "--files", type=Path, nargs="*", default=None, help="Java files (default examples/*.java)"
    )
    ap.add_argument("--editors", default="1,4,16", help="concurrency levels (default 1,4,16)")
    ap.add_argument("--seconds", type=float, default=20.0, help="length of each level (default 20)")
    ap.add_argument("--think-ms", type=float, default=0.0, help="pause between an editor's requests")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="llama.cpp threads (--gguf)")
    ap.add_argument("--timeout-ms", type=float, default=60_000, help="backend time-out per request")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    from kaffee.models import default_model_dir
    from kaffee.server.engine import CompletionEngine
    from kaffee.server.options import parse_engine_options
    from kaffee.server.remote import RemoteBackend, parse_backend

    levels = [int(x) for x in args.editors.split(",") if x.strip()]
    files = args.files or sorted((ROOT / "examples").glob("*.java"))
    proc = None
    url = args.url
    if args.gguf is not None:
        proc, url = start_llama(args.gguf, args.threads, 2048)
    try:
        opts = ["workspace_cache=off", "project_context=off", "reuse_previous=off"]
        first = CompletionEngine.from_model_dir(args.model or default_model_dir(), parse_engine_options(opts))
        config = parse_backend(f"openai:{url}", args.remote_model, timeout_ms=args.timeout_ms)
        engines = [first] + [
            CompletionEngine(first.model, parse_engine_options(opts)) for _ in range(max(levels) - 1)
        ]
        for engine in engines:
            engine.remote = RemoteBackend(config, engine.tokenizer)
        pool = spots(files, 400, args.seed)
        run_level(engines, pool[:8], 1, 0.0, 0.0)  # warm: model name, ids-or-text, connections
        for e in engines:
            e.complete(*pool[0], max_lines=1)
        print(
            f"backend {url}; {len(files)} files, {len(pool)} spots; {args.seconds:g} s per level; "
            f"{os.cpu_count()} CPUs here"
        )
        print("| editors | completions | per second | p50 ms | p95 ms | empty | local fallbacks |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for n in levels:
            lv = run_level(engines, pool, n, args.seconds, args.think_ms / 1000)
            lat = np.asarray(lv.latencies_ms)
            print(
                f"| {n} | {len(lat)} | {len(lat) / lv.seconds:.2f} | {np.percentile(lat, 50):.0f} | "
                f"{np.percentile(lat, 95):.0f} | {lv.empty} | {lv.fallbacks} |",
                flush=True,
            )
        text_mode = engines[0].remote.stats.as_text
        print(f"prompts sent as {'text' if text_mode else 'token ids'}")
        for e in engines:
            e.remote.close()
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
