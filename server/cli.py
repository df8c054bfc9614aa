"""``kaffee serve`` (the language server), ``kaffee complete FILE:LINE:COL`` (one-shot suggestions)
and ``kaffee stats`` (the local acceptance statistics the server keeps)."""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import os
import sys
from pathlib import Path

from kaffee.errors import KaffeeError
from kaffee.server.options import parse_engine_options

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def register(subparsers) -> None:
    serve = subparsers.add_parser(
        "serve",
        help="run the language server (LSP over stdio, or TCP)",
        description="Run the Kaffee language server. Logs go to stderr (or --log-file), never stdout. "
        "A message over 64 MiB is answered with an error and skipped.",
    )
    serve.add_argument(
        "--model",
        type=Path,
        default=None,
        help="model directory: a Kaffee model or a Hugging Face causal-LM checkpoint (default: the bundled model)",
    )
    serve.add_argument(
        "--device", default=None, choices=("cpu", "cuda", "auto"), help="where the model runs (default cpu)"
    )
    serve.add_argument("--tcp", action="store_true", help="listen on TCP instead of stdio")
    serve.add_argument(
        "--host",
        default="127.0.0.1",
        help="TCP address to bind (default 127.0.0.1: loopback only; any other needs --allow-remote)",
    )
    serve.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow a --host other than loopback; LSP over TCP has no authentication: anyone who "
        "reaches the port can read and send the code you edit",
    )
    serve.add_argument("--port", type=int, default=2087, help="TCP port (default 2087)")
    serve.add_argument(
        "--log-level", default="info", choices=("debug", "info", "warning", "error"), help="log verbosity"
    )
    serve.add_argument(
        "--log-file", type=Path, default=None, help="append logs to this file instead of stderr"
    )
    serve.add_argument(
        "--engine-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set an EngineOptions field, e.g. speculate=0, quantize=none, naive=true (repeatable)",
    )
    add_backend_arguments(serve)
    serve.set_defaults(func=cmd_serve)

    complete = subparsers.add_parser(
        "complete",
        help="print the suggestions the server would give at FILE:LINE:COL",
        description="Print the next-token list and the line/block suggestion at a spot of a file. "
        "LINE and COL are 1-based, as editors show them (COL counts characters).",
    )
    complete.add_argument("spot", metavar="FILE:LINE:COL", help="e.g. src/Main.java:12:17")
    complete.add_argument(
        "--model",
        type=Path,
        default=None,
        help="model directory: a Kaffee model or a Hugging Face causal-LM checkpoint (default: the bundled model)",
    )
    complete.add_argument(
        "--device", default="cpu", choices=("cpu", "cuda", "auto"), help="where the model runs"
    )
    complete.add_argument("-k", type=int, default=10, help="how many next tokens to list (default 10)")
    complete.add_argument(
        "--max-lines", type=int, default=8, help="longest block suggestion in lines (default 8)"
    )
    complete.add_argument("--json", action="store_true", help="print JSON for scripts")
    complete.add_argument(
        "--workspace",
        type=Path,
        default=None,
        help="project folder whose Java files give context (default: the nearest folder above FILE "
        "holding .git, pom.xml, build.gradle or settings.gradle, else FILE's folder); 'none' for no project",
    )
    complete.add_argument("--log-level", default="warning", choices=("debug", "info", "warning", "error"))
    complete.add_argument(
        "--engine-option", action="append", default=[], metavar="KEY=VALUE", help="set an EngineOptions field"
    )
    add_backend_arguments(complete)
    complete.set_defaults(func=cmd_complete)

    stats = subparsers.add_parser(
        "stats",
        help="print how often suggestions were accepted, per day and per model",
        description="Sum the local statistics file kaffee serve writes (turn it off with the "
        "setting stats=false): suggestions shown and accepted, acceptance rate, characters "
        "accepted and mean latency, per day and per model, for inline and list completions.",
    )
    stats.add_argument(
        "--file",
        type=Path,
        default=None,
        help="statistics file (default $XDG_STATE_HOME/kaffee/stats.jsonl, else ~/.local/state/kaffee/)",
    )
    stats.add_argument("--json", action="store_true", help="print JSON for scripts")
    stats.set_defaults(func=cmd_stats)


def add_backend_arguments(parser) -> None:
    """--backend and its companions, shared by serve and complete."""
    parser.add_argument(
        "--backend",
        default=None,
        metavar="openai:URL",
        help="ask an OpenAI-compatible /v1/completions server (llama.cpp, vLLM, TGI, Ollama) for suggestions, "
        "e.g. openai:http://gpu-box:8080/v1; the local model answers while it is down or slow",
    )
    parser.add_argument(
        "--remote-model", default=None, metavar="NAME", help="the model the backend requests name"
    )
    parser.add_argument(
        "--api-key-env",
        default=None,
        metavar="VAR",
        help="environment variable holding the backend's API key (sent as a bearer token)",
    )
    parser.add_argument(
        "--backend-timeout-ms",
        type=float,
        default=None,
        metavar="MS",
        help="longest wait for the backend's answer before the local model answers "
        "(default 1000 for serve, 10000 for complete)",
    )


def backend_config(args: argparse.Namespace, timeout_ms: float | None = None):
    """The RemoteConfig the flags ask for, or None without --backend (``timeout_ms``: the default wait)."""
    if args.backend is None:
        if args.remote_model or args.api_key_env or args.backend_timeout_ms is not None:
            raise KaffeeError(
                "--remote-model, --api-key-env and --backend-timeout-ms need --backend openai:URL"
            )
        return None
    from kaffee.server.remote import parse_backend

    timeout_ms = args.backend_timeout_ms if args.backend_timeout_ms is not None else timeout_ms
    timeout = {} if timeout_ms is None else {"timeout_ms": timeout_ms}
    return parse_backend(args.backend, args.remote_model, args.api_key_env, **timeout)


def setup_logging(level: str, log_file: Path | None) -> None:
    """Send every log record to stderr or ``log_file``; pygls' chatter only at debug level."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.FileHandler(log_file) if log_file else logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root.addHandler(handler)
    root.setLevel(level.upper())
    if level.lower() != "debug":
        logging.getLogger("pygls").setLevel(logging.WARNING)


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback address (127.0.0.0/8, ::1); names and wildcards are not."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_model_dir(path: Path | None) -> None:
    """A ``--model`` that is not a model directory is an error now, not a silent n-gram later."""
    if path is None:
        return
    from kaffee.models.checkpoint import read_meta

    read_meta(Path(path).expanduser())  # KaffeeError: missing, not a directory, no config.json, foreign


def cmd_serve(args: argparse.Namespace) -> int:
    check_model_dir(args.model)
    if args.tcp and not is_loopback(args.host) and not args.allow_remote:
        raise KaffeeError(
            f"--host {args.host} is not a loopback address: LSP over TCP has no authentication, so anyone "
            "who reaches the port could read and send code; pass --allow-remote if that is what you want"
        )
    remote = backend_config(args)
    setup_logging(args.log_level, args.log_file)
    # The protocol owns the real stdout; anything printed by accident goes to stderr.
    stdout = sys.stdout.buffer
    sys.stdout = sys.stderr
    from kaffee.server.lsp import build_server, prepare_params
    from kaffee.server.transport import serve_stdio, serve_tcp

    # KAFFEE_STEP_DELAY_MS: a testing aid that makes every model call slow (cancellation tests).
    delay = float(os.environ.get("KAFFEE_STEP_DELAY_MS", "0") or 0)
    options = parse_engine_options(args.engine_option, step_delay_ms=delay)
    server = build_server(model_dir=args.model, device=args.device, engine_options=options, remote=remote)
    log = logging.getLogger("kaffee.server")
    if args.tcp:
        if not is_loopback(args.host):
            log.warning(
                "listening on %s:%d, beyond this machine: LSP over TCP has no authentication; anyone who "
                "reaches the port can read and send the code you edit",
                args.host,
                args.port,
            )
        log.info("listening on %s:%d", args.host, args.port)
        code = serve_tcp(server.protocol, args.host, args.port, prepare=prepare_params)
    else:
        code = serve_stdio(server.protocol, sys.stdin.buffer, stdout, prepare=prepare_params)
    log.info("server stopped (exit code %d)", code)
    logging.shutdown()
    os._exit(code)  # stdin reader threads may still block; the protocol is over


def parse_spot(spot: str) -> tuple[Path, int, int]:
    """``FILE:LINE:COL`` (the file name may itself contain colons)."""
    parts = spot.rsplit(":", 2)
    if len(parts) != 3:
        raise KaffeeError(f"expected FILE:LINE:COL, got {spot!r}")
    path, line, col = parts
    try:
        line_n, col_n = int(line), int(col)
    except ValueError as exc:
        raise KaffeeError(f"LINE and COL must be numbers in {spot!r}") from exc
    if line_n < 1 or col_n < 1:
        raise KaffeeError(f"LINE and COL are 1-based, got {line_n}:{col_n}")
    return Path(path), line_n, col_n


def read_source(path: Path) -> str:
    if not path.is_file():
        raise KaffeeError(f"{path} is not a readable file")
    data = path.read_bytes()
    if b"\x00" in data[:8192]:
        raise KaffeeError(f"{path} looks binary (it holds NUL bytes)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        logging.getLogger(__name__).warning("%s is not valid UTF-8; undecodable bytes replaced", path)
        return data.decode("utf-8", errors="replace")


def cursor_offset(text: str, line: int, col: int) -> int:
    """Offset of 1-based LINE:COL (COL in characters), clamped to the line and the file."""
    from kaffee.server.documents import Document

    return Document("file", text).offset_at(line - 1, col - 1, encoding="utf-32")


PROJECT_MARKERS = (".git", "pom.xml", "build.gradle", "build.gradle.kts", "settings.gradle")


def project_root(path: Path) -> Path:
    """The nearest folder above ``path`` that looks like a project root, else ``path``'s folder."""
    here = path.resolve().parent
    for folder in (here, *here.parents):
        if any((folder / m).exists() for m in PROJECT_MARKERS):
            return folder
    return here


def cmd_complete(args: argparse.Namespace) -> int:
    setup_logging(args.log_level, None)
    path, line, col = parse_spot(args.spot)
    check_model_dir(args.model)
    options = parse_engine_options(args.engine_option, max_lines=max(1, args.max_lines))
    text = read_source(path)
    n_lines = text.count("\n") + (0 if text.endswith("\n") else 1)
    if line > max(1, n_lines):
        raise KaffeeError(f"{path} has {n_lines} lines; there is no line {line}")
    offset = cursor_offset(text, line, col)
    from kaffee.server.engine import CompletionEngine

    model_dir = args.model
    if model_dir is None:
        from kaffee.models import default_model_dir

        model_dir = default_model_dir()
    engine = CompletionEngine.from_model_dir(model_dir, options, device=args.device)
    remote = backend_config(args, timeout_ms=10_000)  # one cold question, nobody typing: wait longer
    if remote is not None:
        from kaffee.server.remote import RemoteBackend

        engine.remote = RemoteBackend(remote, engine.tokenizer)
    uri = path.resolve().as_uri()
    root = project_root(path) if args.workspace is None else args.workspace
    if str(root) != "none":
        from kaffee.server.workspace import scan_java_files

        if not root.is_dir():
            raise KaffeeError(f"--workspace {root} is not a directory")
        engine.set_workspace_files(scan_java_files([root]))
    engine.update_document(uri, text)
    engine.settle()
    prefix, suffix = text[:offset], text[offset:]
    tokens = engine.next_tokens(prefix, suffix, k=max(1, args.k), document=uri)
    completion = engine.complete(prefix, suffix, document=uri)
    if args.json:
        out = {
            "file": str(path),
            "line": line,
            "column": col,
            "model": str(model_dir),
            "degraded": engine.stats.fallback_reason,
            "backend": remote.url if remote is not None else None,
            "backend_down": engine.remote.down_reason if engine.remote is not None else None,
            "tokens": [
                {"text": t.text, "logprob": round(t.logprob, 4), "attached": t.attached} for t in tokens
            ],
            "completion": {
                "text": completion.text,
                "stop_reason": completion.stop_reason,
                "tokens": completion.tokens,
                "elapsed_ms": round(completion.elapsed_ms, 1),
            },
        }
        print(json.dumps(out, indent=2, ensure_ascii=False))
        return 0
    served = f"model {model_dir}{', n-gram fallback' if engine.degraded else ''}"
    if engine.remote is not None:
        down = engine.remote.down_reason
        served = f"backend {remote.url}" + (f" down: {down}; local {served}" if down else f", local {served}")
    print(f"{path}:{line}:{col}  ({served})")
    print("next tokens:")
    for i, t in enumerate(tokens, 1):
        note = "  (completes the word at the cursor)" if t.attached else ""
        print(f"  {i:2d}. {t.text!r:30} p={pow(2.718281828, t.logprob):.3f}{note}")
    if not tokens:
        print("  (none)")
    kind = "block" if "\n" in completion.text else "line"
    print(f"{kind} ({completion.stop_reason}, {completion.tokens} tokens, {completion.elapsed_ms:.0f} ms):")
    if completion.text:
        for ln in completion.text.split("\n"):
            print(f"  | {ln}")
    else:
        print("  (nothing to suggest)")
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    from kaffee.server.stats import format_report, read_records, report, stats_path

    path = args.file if args.file is not None else stats_path()
    if path.is_dir():
        raise KaffeeError(f"{path} is a directory, not a statistics file")
    records, bad = read_records(path) if path.exists() else ([], 0)
    rep = report(records)
    if bad:
        logging.getLogger(__name__).warning("%s: %d unreadable lines skipped", path, bad)
    if args.json:
        print(json.dumps({"file": str(path), **rep}, indent=2))
    elif not records:
        print(f"no statistics in {path} yet (kaffee serve writes them as suggestions are shown and accepted)")
    else:
        print(f"statistics from {path}")
        print(format_report(rep), end="")
    return 0
