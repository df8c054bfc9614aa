"""A small synchronous JSON-RPC client for a language server on stdio.

The harness needs blocking requests with a time-out each, a clear error when the
server does not start or dies, and nothing else; a reader thread collects responses
and answers the few requests servers send to clients (configuration, progress,
registrations) so that no server waits on us.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class LspError(Exception):
    """The server answered with a JSON-RPC error."""


class LspTimeout(Exception):
    """No answer within the time-out."""


class LspDied(Exception):
    """The server process is not running (did not start, crashed, or closed its stdout)."""


@dataclass
class Pending:
    """A request sent and not yet waited for (``LspClient.send``); ``received_at`` is set on its answer."""

    rid: int
    method: str
    sent_at: float  # time.perf_counter() when written
    event: threading.Event = field(default_factory=threading.Event)
    slot: list = field(default_factory=list)
    received_at: float | None = None  # time.perf_counter() when the reader thread got the answer


class LspClient:
    """The project's one JSON-RPC client: the harness's lsp: systems and bench/latency.py.

    ``log_file``: append the server's stderr there too (the last lines are kept anyway).
    """

    def __init__(
        self,
        argv: list[str],
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        log_file: Path | None = None,
    ):
        self.argv = argv
        self.cwd = cwd
        self.env = env
        self.log_file = log_file
        self.proc: subprocess.Popen | None = None
        self._next_id = 0
        self._lock = threading.Lock()  # guards writes and the pending table
        self._pending: dict[int, Pending] = {}
        self._stderr: collections.deque[str] = collections.deque(maxlen=40)
        self._closed = threading.Event()
        self.server_capabilities: dict[str, Any] = {}

    # -- process ------------------------------------------------------------------------------
    def start(self) -> None:
        try:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=self.cwd,
                env={**os.environ, **(self.env or {})},
            )
        except (OSError, ValueError) as exc:
            raise LspDied(f"cannot start {' '.join(self.argv)!r}: {exc}") from exc
        threading.Thread(target=self._read_stdout, daemon=True, name="lsp-stdout").start()
        threading.Thread(target=self._read_stderr, daemon=True, name="lsp-stderr").start()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None and not self._closed.is_set()

    def stderr_tail(self, lines: int = 8) -> str:
        return "\n".join(list(self._stderr)[-lines:])

    def death_note(self) -> str:
        code = self.proc.poll() if self.proc else None
        tail = self.stderr_tail()
        what = f"exited with code {code}" if code is not None else "closed its output"
        return f"language server {what}" + (f"; its last output:\n{tail}" if tail else "")

    def close(self, timeout: float = 3.0) -> None:
        if self.proc is None:
            return
        if self.alive():
            try:
                self.request("shutdown", None, timeout=timeout)
                self.notify("exit", None)
            except (LspError, LspTimeout, LspDied):
                pass
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=timeout)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                if stream:
                    stream.close()
            except OSError:
                pass
        self._closed.set()

    # -- messages -----------------------------------------------------------------------------
    def _write(self, message: dict) -> None:
        body = json.dumps(message, ensure_ascii=False).encode("utf-8")
        data = b"Content-Length: %d\r\n\r\n" % len(body) + body
        if not self.alive():
            raise LspDied(self.death_note())
        try:
            assert self.proc is not None and self.proc.stdin is not None
            self.proc.stdin.write(data)
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError, ValueError) as exc:
            raise LspDied(self.death_note()) from exc

    def notify(self, method: str, params: Any) -> None:
        with self._lock:
            self._write({"jsonrpc": "2.0", "method": method, "params": params})

    def request(self, method: str, params: Any, timeout: float = 10.0) -> Any:
        return self.wait(self.send(method, params), timeout)

    def send(self, method: str, params: Any) -> Pending:
        """Write a request and return at once; ``wait`` for its answer later (requests in flight)."""
        with self._lock:
            self._next_id += 1
            pending = Pending(self._next_id, method, time.perf_counter())
            self._pending[pending.rid] = pending
            try:
                self._write({"jsonrpc": "2.0", "id": pending.rid, "method": method, "params": params})
            except LspDied:
                self._pending.pop(pending.rid, None)
                raise
        return pending

    def wait(self, pending: Pending, timeout: float = 10.0) -> Any:
        """The result of a request from ``send``; LspError for an error answer (``$/cancelRequest`` on time-out)."""
        rid, event = pending.rid, pending.event
        deadline = time.monotonic() + timeout
        while not event.wait(timeout=min(0.05, max(0.0, deadline - time.monotonic()))):
            if self._closed.is_set() or not self.alive():
                with self._lock:
                    self._pending.pop(rid, None)
                raise LspDied(self.death_note())
            if time.monotonic() >= deadline:
                with self._lock:
                    self._pending.pop(rid, None)
                try:
                    self.notify("$/cancelRequest", {"id": rid})
                except LspDied:
                    pass
                raise LspTimeout(f"{pending.method} got no answer within {timeout:g} s")
        message = pending.slot[0]
        if "error" in message and message["error"] is not None:
            err = message["error"]
            raise LspError(f"{pending.method} failed: {err.get('message', err)} (code {err.get('code')})")
        return message.get("result")

    # -- reader threads --------------------------------------------------------------------------
    def _read_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        sink = open(self.log_file, "ab") if self.log_file else None  # noqa: SIM115 - closed below
        try:
            for raw in iter(self.proc.stderr.readline, b""):
                if sink is not None:
                    sink.write(raw)
                line = raw.decode("utf-8", errors="replace").rstrip()
                self._stderr.append(line)
                log.debug("lsp stderr: %s", line)
        finally:
            if sink is not None:
                sink.close()

    def _read_stdout(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        out = self.proc.stdout
        try:
            while True:
                length = None
                while True:
                    header = out.readline()
                    if not header:
                        return
                    header = header.strip()
                    if not header:
                        break
                    name, _, value = header.decode("ascii", errors="replace").partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value.strip())
                if length is None:
                    continue
                body = out.read(length)
                if len(body) < length:
                    return
                try:
                    message = json.loads(body)
                except json.JSONDecodeError:
                    log.warning("language server sent invalid JSON: %r", body[:200])
                    continue
                self._dispatch(message)
        finally:
            self._closed.set()

    def _dispatch(self, message: dict) -> None:
        if "method" in message and "id" in message:
            self._answer_server_request(message)
            return
        if "method" in message:
            if message["method"] == "window/logMessage":
                log.debug("lsp log: %s", (message.get("params") or {}).get("message"))
            return
        rid = message.get("id")
        with self._lock:
            entry = self._pending.pop(rid, None)
        if entry is not None:
            entry.received_at = time.perf_counter()
            entry.slot.append(message)
            entry.event.set()

    def _answer_server_request(self, message: dict) -> None:
        method = message["method"]
        params = message.get("params") or {}
        reply: dict[str, Any] = {"jsonrpc": "2.0", "id": message["id"]}
        if method == "workspace/configuration":
            reply["result"] = [None] * len(params.get("items", []))
        elif method in (
            "window/workDoneProgress/create",
            "client/registerCapability",
            "client/unregisterCapability",
            "window/showMessageRequest",
            "workspace/applyEdit",
        ):
            reply["result"] = None
        elif method == "workspace/workspaceFolders":
            reply["result"] = None
        else:
            reply["error"] = {"code": -32601, "message": f"client does not handle {method}"}
        try:
            with self._lock:
                self._write(reply)
        except LspDied:
            pass
