"""Fuzz ``kaffee serve`` with mutated LSP messages and edit sequences; print what came back.

    python bench/fuzz_lsp.py --model DIR                     # 100,000 messages, seed 1
    python bench/fuzz_lsp.py --model DIR --messages 20000 --seed 7

Messages are written as raw bytes over the server's stdin (framing broken on purpose
too); a thread reads its stdout. Checked: every request with a valid id gets a result
or a JSON-RPC error within ``--deadline`` seconds, the server never dies, and at the
end a clean document gets the same suggestions as from a fresh server (asked through
evaluation/lsp_client.py). tests/test_lsp_fuzz.py runs a short version of the same.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

INIT_OPTIONS = {"workspaceContext": False, "deadlineMs": 30_000}  # deterministic answers to compare
CLEAN_URI = "file:///tmp/kaffee-fuzz/Clean.java"
CLEAN_TEXT = (
    "public class Main {\n    public static void main(String[] args) {\n"
    "        int total = 0;\n        System.out.\n    }\n}\n"
)
CLEAN_CURSOR = {"line": 3, "character": len("        System.out.")}
BASE_TEXT = (
    "package demo;\n\nimport java.util.List;\n\npublic class Shop {\n    private final List<String> items;\n"
    "    public int count() {\n        return items.size();\n    }\n    // caf\u00e9 \U0001f600\n}\n"
)
REQUESTS = ["textDocument/completion", "textDocument/inlineCompletion"]
NOTIFICATIONS = [
    "textDocument/didOpen",
    "textDocument/didChange",
    "textDocument/didClose",
    "$/cancelRequest",
    "workspace/didChangeConfiguration",
    "workspace/didChangeWatchedFiles",
    "$/setTrace",
    "initialized",
]
OTHER_METHODS = [
    "initialize",
    "textDocument/hover",
    "textDocument/definition",
    "workspace/executeCommand",
    "workspace/symbol",
    "kaffee/unknown",
    "$/unknown",
    "",
    "textDocument/",
]
ODD_TEXT = ["\ud800", "\udfff", "\U0001f600", "\x00", "\r\n", "\r", "\ufeff", "é", "\u2028", "\\", '"', "{"]
ODD_INTS = [-1, -(2**31), 2**31 - 1, 2**31, 2**32, 2**63, -(2**63), 10**30, 0]


@dataclass
class Report:
    sent: int = 0  # framed messages written
    requests: int = 0  # of them requests with a valid id, each owed an answer
    answered: int = 0
    results: int = 0
    errors: Counter = field(default_factory=Counter)  # code -> count, answers to our ids
    null_id_errors: Counter = field(default_factory=Counter)  # code -> count, errors with "id": null
    notifications: Counter = field(default_factory=Counter)  # method -> count, sent by the server
    late: list = field(default_factory=list)  # ids answered after the deadline
    missing: list = field(default_factory=list)  # ids never answered
    bad_replies: list = field(default_factory=list)  # answers that break JSON-RPC (no id, tracebacks, ...)
    max_latency_s: float = 0.0
    seconds: float = 0.0
    died: str | None = None
    clean: list | None = None  # (item labels, inline text) for the clean document, fuzzed server
    fresh: list | None = None  # the same from a fresh server

    def summary(self) -> dict:
        return {
            "messages_sent": self.sent,
            "requests_owed_an_answer": self.requests,
            "answered": self.answered,
            "results": self.results,
            "errors_by_code": dict(sorted(self.errors.items())),
            "null_id_errors_by_code": dict(sorted(self.null_id_errors.items())),
            "server_notifications": dict(self.notifications),
            "late": len(self.late),
            "missing": len(self.missing),
            "bad_replies": len(self.bad_replies),
            "max_latency_s": round(self.max_latency_s, 2),
            "seconds": round(self.seconds, 1),
            "died": self.died,
            "clean_matches_fresh": self.clean == self.fresh,
        }


def frame(body: bytes) -> bytes:
    return b"Content-Length: %d\r\n\r\n" % len(body) + body


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj).encode()  # ASCII: lone surrogates travel as "\ud800" escapes


def _valid_id(value: Any) -> bool:
    return isinstance(value, int | str) and not isinstance(value, bool)


def owed_id(msg: Any) -> Any:
    """The id a message must be answered with, or None when it owes nothing (notifications, responses)."""
    if not isinstance(msg, dict) or "id" not in msg or not _valid_id(msg["id"]):
        return None
    if "method" not in msg and ("result" in msg or "error" in msg):
        return None  # a response
    return msg["id"]


class Wire:
    """Raw bytes to a server process's stdin; framed JSON from its stdout, collected on a thread."""

    def __init__(self, argv: list[str]):
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        self.replies: dict[Any, tuple[float, dict]] = {}
        self.others: list[dict] = []
        self.garbage = 0
        self.closed = threading.Event()
        self._cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def send(self, data: bytes) -> None:
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def _read(self) -> None:
        out = self.proc.stdout
        try:
            while True:
                length = None
                while True:
                    line = out.readline()
                    if not line:
                        return
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                    elif line.strip() == b"" and length is not None:
                        break
                    elif not line.lower().startswith(b"content-type:"):
                        self.garbage += 1
                body = out.read(length)
                if len(body) < length:
                    return
                msg = json.loads(body)
                with self._cond:
                    if isinstance(msg, dict) and "method" not in msg and _valid_id(msg.get("id")):
                        self.replies.setdefault(msg["id"], (time.monotonic(), msg))
                    else:
                        self.others.append(msg)
                    self._cond.notify_all()
        finally:
            self.closed.set()
            with self._cond:
                self._cond.notify_all()

    def wait_for(self, ids: list, timeout: float) -> None:
        end = time.monotonic() + timeout
        with self._cond:
            while not all(i in self.replies for i in ids) and not self.closed.is_set():
                left = end - time.monotonic()
                if left <= 0:
                    return
                self._cond.wait(min(left, 0.5))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


class Fuzzer:
    """Seeded generator of mutated LSP traffic: edit sequences on a few documents, requests, junk."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self.next_id = 0
        self.docs: dict[str, int] = {}  # uri -> version
        self.issued: list = []  # ids of recent requests, for cancellations

    # -- pieces -----------------------------------------------------------------------------
    def _id(self) -> Any:
        self.next_id += 1
        n = self.next_id
        return self.rng.choice([n, f"r{n}", -n, n + 2**40])

    def _text(self, size: int = 40) -> str:
        r = self.rng
        parts = []
        for _ in range(r.randint(0, size)):
            x = r.random()
            if x < 0.15:
                parts.append(r.choice(ODD_TEXT))
            elif x < 0.5:
                start = r.randrange(len(BASE_TEXT))
                parts.append(BASE_TEXT[start : start + r.randint(1, 30)])
            else:
                parts.append(
                    r.choice(["System.out.", "return ", "(", ")", "{", "}", ";", "\n", "    ", "x."])
                )
        return "".join(parts)

    def _coord(self) -> Any:
        r = self.rng
        x = r.random()
        if x < 0.75:
            return r.randint(0, 14)
        if x < 0.93:
            return r.choice(ODD_INTS)
        return r.choice([1.5, "3", None, True, [], {}])

    def _position(self) -> Any:
        pos = {"line": self._coord(), "character": self._coord()}
        if self.rng.random() < 0.03:
            pos.pop(self.rng.choice(["line", "character"]))
        return pos

    def _uri(self) -> str:
        if self.docs and self.rng.random() < 0.8:
            return self.rng.choice(sorted(self.docs))
        return f"file:///tmp/kaffee-fuzz/F{self.rng.randint(0, 5)}.java"

    def _junk(self, depth: int = 0) -> Any:
        r = self.rng
        kind = r.randint(0, 7 if depth < 3 else 4)
        if kind == 0:
            return None
        if kind == 1:
            return r.choice(ODD_INTS + [1.5, float("1e300")])
        if kind == 2:
            return r.choice([True, False])
        if kind in (3, 4):
            return self._text(8)
        if kind == 5:
            return [self._junk(depth + 1) for _ in range(r.randint(0, 3))]
        return {self._text(3): self._junk(depth + 1) for _ in range(r.randint(0, 3))}

    # -- well-formed messages -----------------------------------------------------------------
    def _params(self, method: str) -> Any:
        r = self.rng
        if method == "textDocument/didOpen":
            uri = f"file:///tmp/kaffee-fuzz/F{r.randint(0, 5)}.java"
            self.docs[uri] = 1
            text = BASE_TEXT if r.random() < 0.5 else self._text(200)
            return {"textDocument": {"uri": uri, "languageId": "java", "version": 1, "text": text}}
        if method == "textDocument/didChange":
            uri = self._uri()
            self.docs[uri] = self.docs.get(uri, 0) + 1
            changes = []
            for _ in range(r.randint(1, 3)):
                if r.random() < 0.05:
                    changes.append({"text": self._text(100)})
                else:
                    rng = {"start": self._position(), "end": self._position()}
                    changes.append({"range": rng, "text": self._text(6)})
            return {"textDocument": {"uri": uri, "version": self.docs[uri]}, "contentChanges": changes}
        if method == "textDocument/didClose":
            uri = self._uri()
            self.docs.pop(uri, None)
            return {"textDocument": {"uri": uri}}
        if method == "$/cancelRequest":
            return {"id": r.choice(self.issued) if self.issued else 1}
        if method == "workspace/didChangeConfiguration":
            settings = r.choice(
                [
                    {"maxLines": r.choice([1, 3, 0, -1, "x", 10**9])},
                    {"deadlineMs": r.choice([10, 500, 30_000, -5, "soon"])},
                    {"kaffee": {"maxLines": 2}},
                    {"workspaceContext": r.choice([True, "yes"])},
                    {"modelPath": r.choice([None, 7, "/nonexistent/model", ""])},
                    {"device": r.choice(["gpu", 3])},
                    self._junk(),
                ]
            )
            return {"settings": settings}
        if method == "workspace/didChangeWatchedFiles":
            return {"changes": [{"uri": self._uri(), "type": r.choice([1, 2, 3, 9])}]}
        if method == "$/setTrace":
            return {"value": r.choice(["off", "verbose", "nope"])}
        if method in REQUESTS:
            params = {"textDocument": {"uri": self._uri()}, "position": self._position()}
            if method == "textDocument/inlineCompletion":
                params["context"] = {"triggerKind": r.choice([1, 2, 7])}
            return params
        return self._junk()

    def message(self) -> dict:
        r = self.rng
        x = r.random()
        if x < 0.35:
            method = r.choice(REQUESTS)
        elif x < 0.9:
            method = r.choice(NOTIFICATIONS[:3] * 3 + NOTIFICATIONS)
        else:
            method = r.choice(OTHER_METHODS)
        msg: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "params": self._params(method)}
        if method in REQUESTS or method in OTHER_METHODS:
            msg["id"] = self._id()
            self.issued = (self.issued + [msg["id"]])[-20:]
        return msg

    # -- mutations ------------------------------------------------------------------------------
    def mutate(self, msg: dict) -> Any:
        r = self.rng
        m = dict(msg)
        choice = r.randint(0, 13)
        if choice == 0:
            m["method"] = r.choice([42, None, [], {"a": 1}, True, self._text(5)])
        elif choice == 1:
            m.pop("method")
        elif choice == 2:
            m["jsonrpc"] = r.choice(["1.0", 2.0, None, "2.00"])
        elif choice == 3:
            m.pop("jsonrpc")
        elif choice == 4:
            m["id"] = r.choice([1.5, True, None, [1], {"id": 1}, float("nan")])
        elif choice == 5:
            m["id"] = self._id()  # an id on a notification, or a fresh one
        elif choice == 6:
            m.pop("id", None)
        elif choice == 7:
            m["params"] = self._junk()
        elif choice == 8:
            deep = r.choice([50, 900, 5000, 100_000])
            m["params"] = "DEEP"
            return ("deep", m, deep)
        elif choice == 9:
            m["result"] = None
        elif choice == 10:
            return r.choice([[m], [], 7, "text", None])
        elif choice == 11:
            m["method"] = r.choice(REQUESTS + NOTIFICATIONS + OTHER_METHODS)
        else:
            params = m.get("params")
            if isinstance(params, dict) and params:
                key = r.choice(sorted(params))
                params = dict(params)
                params[key] = self._junk() if r.random() < 0.5 else None
                m["params"] = params
        return m

    def body(self, obj: Any) -> bytes:
        if isinstance(obj, tuple) and obj[0] == "deep":
            _, msg, depth = obj
            text = json.dumps(msg)
            return text.replace('"DEEP"', "[" * depth + "]" * depth).encode()
        return _dumps(obj)

    def framed(self) -> tuple[bytes, Any]:
        """One framed message (its framing sometimes broken) and the id it is owed, if any."""
        r = self.rng
        msg = self.message()
        obj = self.mutate(msg) if r.random() < 0.5 else msg
        body = self.body(obj)
        owed = owed_id(obj[1] if isinstance(obj, tuple) else obj)
        x = r.random()
        if x < 0.02:  # not JSON
            body = r.choice([body[: len(body) // 2], b"\xff\xfe" + body, b"{not json", b"", body + b"}"])
            owed = None
        elif x < 0.03:  # invalid UTF-8 inside a string
            body = body.replace(b'"2.0"', b'"2.0\xc3"', 1)
            owed = None
        if x > 0.97:  # noise before the header: skipped
            return r.choice([b"garbage\r\n", b"X-Other: 1\r\n\r\n", b"\r\n", b"noise"]) + frame(body), owed
        if 0.95 < x <= 0.97:  # a length shorter than the body: the rest is noise, then the next header
            cut = r.randint(0, max(0, len(body) - 1))
            return b"Content-Length: %d\r\n\r\n" % cut + body, None
        if 0.93 < x <= 0.95:  # other spellings of the headers
            head = b"content-length:   %d\r\nContent-Type: application/vscode-jsonrpc; charset=utf-8\r\n\r\n"
            return head % len(body) + body, owed
        return frame(body), owed


def _initialize(wire: Wire, init_options: dict) -> None:
    params = {"processId": None, "rootUri": None, "capabilities": {}, "initializationOptions": init_options}
    wire.send(frame(_dumps({"jsonrpc": "2.0", "id": "init", "method": "initialize", "params": params})))
    wire.wait_for(["init"], 120)
    if "init" not in wire.replies:
        raise RuntimeError("the server did not answer initialize")
    wire.send(frame(_dumps({"jsonrpc": "2.0", "method": "initialized", "params": {}})))


def _clean_requests(send) -> None:
    """Open the clean document and ask both questions; ``send(method, params, id)``."""
    doc = {"uri": CLEAN_URI, "languageId": "java", "version": 1, "text": CLEAN_TEXT}
    send("textDocument/didOpen", {"textDocument": doc}, None)
    where = {"textDocument": {"uri": CLEAN_URI}, "position": CLEAN_CURSOR}
    send("textDocument/completion", where, "clean-completion")
    send("textDocument/inlineCompletion", {**where, "context": {"triggerKind": 1}}, "clean-inline")


def _answers(completion: Any, inline: Any) -> list:
    items = [(i["label"], i["textEdit"]["range"], i["textEdit"]["newText"]) for i in completion["items"]]
    return [items, [i["insertText"] for i in inline["items"]]]


def check_reply(msg: dict) -> str | None:
    """What is wrong with an answer, if anything."""
    if "error" in msg:
        err = msg["error"]
        if not isinstance(err, dict) or not isinstance(err.get("code"), int):
            return "malformed error"
        if "data" in err or "Traceback" in json.dumps(err) or 'File \\"' in json.dumps(err):
            return "traceback or data in an error"
    elif "result" not in msg:
        return "neither result nor error"
    return None


def fuzz(
    argv: list[str], messages: int, seed: int, deadline_s: float = 20.0, batch: int = 200, log=None
) -> Report:
    """Send ``messages`` fuzzed messages to a server started with ``argv``; check the answers."""
    report = Report()
    fuzzer = Fuzzer(seed)
    wire = Wire(argv)
    t0 = time.monotonic()
    sent_at: dict[Any, float] = {}
    try:
        _initialize(wire, INIT_OPTIONS)
        while report.sent < messages and wire.proc.poll() is None:
            owed_now = []
            for _ in range(min(batch, messages - report.sent)):
                data, owed = fuzzer.framed()
                if owed is not None and (
                    owed in sent_at or owed in ("init", "clean-completion", "clean-inline")
                ):
                    owed = None  # a repeated id: its answer cannot be told apart
                if owed is not None:
                    sent_at[owed] = time.monotonic()
                    owed_now.append(owed)
                wire.send(data)
                report.sent += 1
            wire.wait_for(owed_now, deadline_s)
            if log is not None and report.sent % 5000 < batch:
                log(f"{report.sent} messages, {time.monotonic() - t0:.0f} s")
        # the clean document, asked after the storm (settings back to the first ones)
        settings = {**INIT_OPTIONS, "maxLines": 8, "modelPath": None, "device": "cpu"}
        reset = {
            "jsonrpc": "2.0",
            "method": "workspace/didChangeConfiguration",
            "params": {"settings": settings},
        }
        wire.send(frame(_dumps(reset)))

        def send(method: str, params: Any, msg_id: Any) -> None:
            msg = {"jsonrpc": "2.0", "method": method, "params": params}
            if msg_id is not None:
                msg["id"] = msg_id
            wire.send(frame(_dumps(msg)))

        _clean_requests(send)
        wire.wait_for(["clean-completion", "clean-inline"], 120)
        got = [wire.replies.get(k, (0, {}))[1].get("result") for k in ("clean-completion", "clean-inline")]
        if all(g is not None for g in got):
            report.clean = _answers(*got)
    except (BrokenPipeError, OSError) as exc:
        report.died = f"writing failed: {exc}"
    finally:
        report.seconds = time.monotonic() - t0
        alive = wire.proc.poll() is None
        wire.stop()
    if not alive and report.died is None:
        report.died = f"exit code {wire.proc.returncode}"
    report.requests = len(sent_at)
    for msg_id, t_sent in sent_at.items():
        if msg_id not in wire.replies:
            report.missing.append(msg_id)
            continue
        t_reply, msg = wire.replies[msg_id]
        report.answered += 1
        latency = t_reply - t_sent
        report.max_latency_s = max(report.max_latency_s, latency)
        if latency > deadline_s:
            report.late.append(msg_id)
        problem = check_reply(msg)
        if problem:
            report.bad_replies.append((msg_id, problem, msg))
        elif "error" in msg:
            report.errors[msg["error"]["code"]] += 1
        else:
            report.results += 1
    for msg in wire.others:
        if isinstance(msg, dict) and "method" in msg:
            report.notifications[msg["method"]] += 1
        elif isinstance(msg, dict) and "error" in msg and "id" in msg and msg["id"] is None:
            problem = check_reply(msg)
            if problem:
                report.bad_replies.append((None, problem, msg))
            else:
                report.null_id_errors[msg["error"]["code"]] += 1
        else:
            report.bad_replies.append((None, "not an answer to a known id", msg))
    if wire.garbage:
        report.bad_replies.append((None, f"{wire.garbage} lines of non-protocol output", None))
    return report


def fresh_answers(argv: list[str]) -> list | None:
    """The clean document's answers from a server that saw nothing else (through the project's client)."""
    from kaffee.evaluation.lsp_client import LspClient

    client = LspClient(argv)
    client.start()
    try:
        params = {
            "processId": None,
            "rootUri": None,
            "capabilities": {},
            "initializationOptions": INIT_OPTIONS,
        }
        client.request("initialize", params, timeout=120)
        client.notify("initialized", {})
        answers: dict[str, Any] = {}

        def send(method: str, params: Any, msg_id: Any) -> None:
            if msg_id is None:
                client.notify(method, params)
            else:
                answers[msg_id] = client.request(method, params, timeout=120)

        _clean_requests(send)
        return _answers(answers["clean-completion"], answers["clean-inline"])
    finally:
        client.close()


def server_argv(model: Path, *extra: str) -> list[str]:
    # fp32 weights: int8 activations are quantized per call, so a reused decode state could shift ties
    return [sys.executable, "-m", "kaffee", "serve", "--model", str(model), "--log-level", "error",
            "--engine-option", "quantize=none", *extra]  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True, help="model directory the server loads")
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--deadline", type=float, default=20.0, help="seconds an answer may take")
    args = ap.parse_args()
    argv = server_argv(args.model)
    report = fuzz(argv, args.messages, args.seed, args.deadline, log=lambda s: print(s, file=sys.stderr))
    report.fresh = fresh_answers(argv)
    print(json.dumps(report.summary(), indent=2))
    for item in report.bad_replies[:10]:
        print("bad reply:", str(item)[:300])
    ok = (
        not (report.missing or report.late or report.bad_replies or report.died)
        and report.clean == report.fresh
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
