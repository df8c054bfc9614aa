"""Hostile input against ``kaffee serve`` (issue 15): every request answered, nothing kills or degrades it.

Raw bytes over the server's stdin, as in test_lsp_raw.py; the few pure pieces (the
writer filter, the engine's per-request fallback, the degrade/recover messages) are
tested in-process.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
from java_samples import MAIN
from kaffee.server.documents import Document, DocumentStore, clamp_position, sanitize_text
from kaffee.server.engine import CompletionEngine, EngineOptions
from test_lsp_raw import URI, RawClient, frame, message

SOURCE = "public class Main {\n    public static void main(String[] args) {\n        \n    }\n}\n"
CLEAN_URI = "file:///tmp/kaffee-hard/Clean.java"
BAD_URI = "file:///tmp/kaffee-hard/Bad.java"


def _start(model_dir: Path, *extra: str):
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kaffee",
            "serve",
            "--model",
            str(model_dir),
            "--log-level",
            "warning",
            *extra,
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )

    def write(data: bytes) -> None:
        proc.stdin.write(data)
        proc.stdin.flush()

    return proc, RawClient(write, proc.stdout.read1)


@pytest.fixture
def server(tiny_model_dir: Path):
    proc, client = _start(tiny_model_dir)
    yield proc, client
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)


def _initialize(client: RawClient, options: dict | None = None) -> None:
    params = {"processId": None, "rootUri": None, "capabilities": {}, "initializationOptions": options}
    client.send(message(id="init", method="initialize", params=params))
    assert "capabilities" in client.response("init")["result"]
    client.send(message(method="initialized", params={}))


def _open(client: RawClient, uri: str, text: str) -> None:
    doc = {"uri": uri, "languageId": "java", "version": 1, "text": text}
    client.send(message(method="textDocument/didOpen", params={"textDocument": doc}))


def _labels(client: RawClient, msg_id, uri: str, line: int, character: int) -> list[str]:
    params = {"textDocument": {"uri": uri}, "position": {"line": line, "character": character}}
    client.send(message(id=msg_id, method="textDocument/completion", params=params))
    return [item["label"] for item in client.response(msg_id)["result"]["items"]]


def _error(client: RawClient, msg_id) -> dict:
    reply = client.response(msg_id)
    assert "result" not in reply and "id" in reply, reply  # strict clients need "id", even when null
    return reply["error"]


def test_requests_before_initialize_get_server_not_initialized(server) -> None:
    proc, client = server
    client.send(message(id=1, method="textDocument/completion", params={}))
    assert _error(client, 1)["code"] == -32002
    client.send(message(id=2, method="shutdown"))
    assert _error(client, 2)["code"] == -32002
    _open(client, URI, SOURCE)  # a notification before initialize: dropped
    _initialize(client)
    client.send(message(id=3, method="initialize", params={"capabilities": {}}))
    assert _error(client, 3)["code"] == -32600  # only once
    assert _labels(client, 4, URI, 2, 8) == []  # the early didOpen was dropped: an unknown document
    assert proc.poll() is None


def test_every_message_with_an_id_gets_the_right_answer(server) -> None:
    proc, client = server
    _initialize(client)
    deep = 100_000
    cases = [
        (json.dumps({"jsonrpc": "2.0", "id": 10, "method": 42}), 10, -32600),
        (json.dumps({"jsonrpc": "2.0", "id": 11, "method": None}), 11, -32600),
        (json.dumps({"jsonrpc": "1.0", "id": 12, "method": "shutdown"}), 12, -32600),
        (json.dumps({"jsonrpc": "2.0", "id": 13}), 13, -32600),
        (
            json.dumps({"jsonrpc": "2.0", "id": 14, "method": "textDocument/didClose", "params": {}}),
            14,
            -32600,
        ),
        (
            json.dumps({"jsonrpc": "2.0", "id": 15, "method": "$/cancelRequest", "params": {"id": 1}}),
            15,
            -32600,
        ),
        (json.dumps({"jsonrpc": "2.0", "id": 16, "method": "kaffee/noSuchThing"}), 16, -32601),
        # an LSP method the server does not implement, with params of the wrong shape: not found, not bad params
        (json.dumps({"jsonrpc": "2.0", "id": 17, "method": "textDocument/hover", "params": 3}), 17, -32601),
        (
            json.dumps({"jsonrpc": "2.0", "id": 18, "method": "textDocument/completion", "params": 3}),
            18,
            -32602,
        ),
        (
            '{"jsonrpc": "2.0", "id": 19, "method": "textDocument/completion", "params": '
            + "[" * deep
            + "]" * deep
            + "}",
            19,
            -32600,
        ),
        (json.dumps({"jsonrpc": "2.0", "id": "twenty", "method": "exit", "params": None}), "twenty", -32600),
    ]
    for body, msg_id, code in cases:
        client.send(frame(body))
        error = _error(client, msg_id)
        assert error["code"] == code, (body[:120], error)
        assert "data" not in error, error
    # ids of the wrong type: an Invalid Request with a null id
    for bad_id in (1.5, True, [1], {"a": 1}, None):
        client.send(frame(json.dumps({"jsonrpc": "2.0", "id": bad_id, "method": "shutdown"})))
        reply = client.response(None)
        assert "id" in reply and reply["error"]["code"] == -32600, (bad_id, reply)
    # not JSON: a parse error whose "id" is there and null
    client.send(frame(b"{not json"))
    reply = client.response(None)
    assert "id" in reply and reply["error"]["code"] == -32700
    # a request method sent as a notification, a notification with a bad envelope: no answer, no harm
    client.send(message(method="textDocument/completion", params={}))
    client.send(frame(json.dumps({"method": "textDocument/didOpen", "params": {}})))
    _open(client, URI, SOURCE.replace("        \n", "        System.out.\n"))
    assert "println" in _labels(client, 30, URI, 2, 19)
    assert proc.poll() is None


def test_a_huge_content_length_is_answered_and_skipped(server) -> None:
    proc, client = server
    _initialize(client)
    # over the cap by one byte: read and dropped, then the stream is in step again
    limit = 64 * 1024 * 1024
    client.send(b"Content-Length: %d\r\n\r\n" % (limit + 1) + b" " * (limit + 1))
    reply = client.response(None)
    assert "id" in reply and reply["error"]["code"] == -32600 and "64 MiB" in reply["error"]["message"]
    _open(client, URI, SOURCE.replace("        \n", "        System.out.\n"))
    assert "println" in _labels(client, 2, URI, 2, 19)
    # a terabyte: answered at once, never allocated
    client.send(b"Content-Length: 1000000000000\r\n\r\n{}")
    reply = client.response(None)
    assert reply["error"]["code"] == -32600
    assert proc.poll() is None
    proc.stdin.close()
    assert proc.wait(30) == 1  # the end of input without shutdown, not a crash


def test_a_lone_surrogate_degrades_nothing(tiny_model_dir: Path) -> None:
    proc, client = _start(tiny_model_dir, "--engine-option", "quantize=none")
    try:
        _initialize(client, {"workspaceContext": False, "deadlineMs": 60_000})
        clean = SOURCE.replace("        \n", "        System.out.\n")
        _open(client, CLEAN_URI, clean)
        before = _labels(client, 1, CLEAN_URI, 2, 19)
        assert "println" in before
        # json.dumps writes the unpaired surrogate as the escape "\ud800"
        bad = clean.replace("System.out.", 'String s = "\ud800"; System.out.')
        assert "\\ud800" in json.dumps(bad)
        _open(client, BAD_URI, bad)
        assert _labels(client, 2, BAD_URI, 2, len('        String s = "\ud800"; System.out.'))
        client.send(message(method="textDocument/didClose", params={"textDocument": {"uri": BAD_URI}}))
        assert _labels(client, 3, CLEAN_URI, 2, 19) == before
        shown = [m for m in client.seen if m.get("method") == "window/showMessage"]
        assert not shown, shown  # nothing degraded, nothing to tell
    finally:
        proc.kill()
        proc.wait(10)


def test_did_change_with_out_of_range_coordinates_is_clamped_and_applied(server) -> None:
    proc, client = server
    _initialize(client)
    _open(client, URI, SOURCE)

    def change(start: tuple[int, int], end: tuple[int, int], text: str, version: int) -> None:
        rng = {
            "start": {"line": start[0], "character": start[1]},
            "end": {"line": end[0], "character": end[1]},
        }
        client.send(
            message(
                method="textDocument/didChange",
                params={
                    "textDocument": {"uri": URI, "version": version},
                    "contentChanges": [{"range": rng, "text": text}],
                },
            )
        )

    change((-1, -7), (-1, 3), "\n", 2)  # a negative line is the start of the document
    change((3, 8), (3, 2**32), "System.out.", 3)  # past 2**31: the end of the line
    doc = Document(URI, SOURCE)
    doc.apply_change("\n", (-1, -7), (-1, 3))
    doc.apply_change("System.out.", (3, 8), (3, 2**32))
    assert doc.text.split("\n")[3] == "        System.out."
    params = {"textDocument": {"uri": URI}, "position": {"line": 3, "character": 19}}
    client.send(message(id=5, method="textDocument/completion", params=params))
    items = client.response(5)["result"]["items"]
    assert "println" in [i["label"] for i in items]
    assert all(i["textEdit"]["range"]["end"] == {"line": 3, "character": 19} for i in items)


# -- in-process pieces -------------------------------------------------------------------------
def test_sanitize_and_clamp_are_what_the_store_applies() -> None:
    assert sanitize_text("a\ud800b\udfffc😀") == "a\ufffdb\ufffdc😀"
    assert sanitize_text("plain") == "plain"
    store = DocumentStore()
    doc = store.open("u", "x\udc00y")
    assert doc.text == "x\ufffdy"
    doc.apply_change("\ud83d", (0, 1), (0, 1))
    assert doc.text == "x\ufffd\ufffdy" and doc.text.encode("utf-8")
    for line, character in [(-1, 5), (2**40, 3), (4, -2), (4, 2**31), (0, 0)]:
        cl, cc = clamp_position(line, character)
        assert 0 <= cl < 2**31 and 0 <= cc < 2**31
        text = "ab\ncd\nef"
        d = Document("u", text)
        assert d.offset_at(cl, cc) == d.offset_at(line, character), (line, character)


def test_the_fallback_is_per_request_and_recovers(tiny_model_dir: Path, caplog) -> None:
    eng = CompletionEngine.from_model_dir(
        tiny_model_dir, EngineOptions(workspace_cache=False, reuse_previous=False)
    )
    neural = eng.model
    prefix = MAIN[: MAIN.index("System.out.") + len("System.out.")]
    healthy = eng.next_tokens(prefix, k=3)
    real = neural.advance_all

    def boom(*args, **kwargs):
        raise RuntimeError("simulated kernel failure")

    neural.advance_all = boom
    neural.advance = boom
    with caplog.at_level(logging.ERROR):
        assert eng.next_tokens(prefix + " ", k=3)  # answered, from the n-gram model
    assert eng.degraded and "simulated kernel failure" in eng.stats.fallback_reason
    neural.advance_all = real
    del neural.advance
    assert eng.next_tokens(prefix, k=3) == healthy  # the next request tries the model again
    assert not eng.degraded and eng.model is neural


def test_the_server_tells_the_user_when_it_degrades_and_recovers(tiny_model_dir: Path) -> None:
    from kaffee.server.lsp import KaffeeLanguageServer

    ls = KaffeeLanguageServer(tiny_model_dir)
    shown: list[str] = []
    ls.notify_user = lambda text, kind=None: shown.append(text)  # type: ignore[method-assign]

    class Stats:
        fallback_reason: str | None = None

    class Engine:
        stats = Stats()

        @property
        def degraded(self) -> bool:
            return self.stats.fallback_reason is not None

    eng = Engine()
    ls.engine = eng  # type: ignore[assignment]
    ls.check_engine_health()
    assert shown == []
    eng.stats.fallback_reason = "the model raised TypeError: bad"
    ls.check_engine_health()
    ls.check_engine_health()
    assert len(shown) == 1 and "n-gram" in shown[0] and "TypeError" in shown[0]
    eng.stats.fallback_reason = None
    ls.check_engine_health()
    assert len(shown) == 2 and "again" in shown[1]


def test_error_replies_never_carry_tracebacks() -> None:
    from kaffee.server.transport import clean_outgoing

    body = json.dumps(
        {
            "jsonrpc": "2.0",
            "id": 3,
            "error": {
                "code": -32603,
                "message": "FileNotFoundError: /home/me/secret/x.py",
                "data": {"traceback": ['  File "/home/me/kaffee/server/lsp.py", line 1\n']},
            },
        }
    )
    out = clean_outgoing(b"Content-Length: %d\r\n\r\n%s" % (len(body), body.encode()))
    head, _, rest = out.partition(b"\r\n\r\n")
    assert int(head.split(b":")[1]) == len(rest)
    reply = json.loads(rest)
    assert reply["id"] == 3 and "data" not in reply["error"] and "/home" not in rest.decode()
    null_id = json.dumps({"jsonrpc": "2.0", "error": {"code": -32700, "message": "Parse error"}}).encode()
    reply = json.loads(
        clean_outgoing(b"Content-Length: %d\r\n\r\n" % len(null_id) + null_id).split(b"\r\n\r\n")[1]
    )
    assert "id" in reply and reply["id"] is None
    result = b'Content-Length: 40\r\n\r\n{"jsonrpc": "2.0", "id": 1, "result": 1}'
    assert clean_outgoing(result) == result
