"""``kaffee serve`` fed raw bytes: malformed JSON-RPC gets errors and the server keeps serving.

pytest-lsp's client only sends well-formed messages, so these tests frame messages by
hand over the server's stdin (and a TCP socket) and read its stdout.
"""

from __future__ import annotations

import json
import queue
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

SOURCE = "public class Main {\n    public static void main(String[] args) {\n        System.out.\n    }\n}\n"
URI = "file:///tmp/kaffee-raw/Main.java"
TIMEOUT = 60


def frame(body: bytes | str) -> bytes:
    data = body.encode() if isinstance(body, str) else body
    return b"Content-Length: %d\r\n\r\n" % len(data) + data


def message(**fields) -> bytes:
    return frame(json.dumps({"jsonrpc": "2.0", **fields}))


class RawClient:
    """Writes bytes to a stream, parses framed JSON messages from another on a thread."""

    def __init__(self, write, read):
        self._write = write
        self._read = read
        self.inbox: queue.Queue = queue.Queue()
        self.seen: list[dict] = []
        self.garbage: list[bytes] = []  # anything on the wire that is not a header or a framed body
        threading.Thread(target=self._reader, daemon=True).start()

    def _reader(self) -> None:
        while True:
            length = None
            while True:
                line = self._read_line()
                if line is None:
                    self.inbox.put(None)
                    return
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
                elif line in (b"\r\n", b"\n") and length is not None:
                    break
                elif not line.lower().startswith(b"content-type:"):
                    self.garbage.append(line)
            body = self._read_exact(length)
            if body is None:
                self.inbox.put(None)
                return
            self.inbox.put(json.loads(body))

    def _read_line(self) -> bytes | None:
        out = b""
        while not out.endswith(b"\n"):
            ch = self._read(1)
            if not ch:
                return None
            out += ch
        return out

    def _read_exact(self, n: int) -> bytes | None:
        out = b""
        while len(out) < n:
            chunk = self._read(n - len(out))
            if not chunk:
                return None
            out += chunk
        return out

    def send(self, data: bytes) -> None:
        self._write(data)

    def response(self, msg_id, timeout: float = TIMEOUT) -> dict:
        """The response with ``msg_id`` (None: an error response with a null id)."""
        for m in self.seen:
            if "method" not in m and m.get("id") == msg_id:
                self.seen.remove(m)
                return m
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                m = self.inbox.get(timeout=max(0.01, end - time.monotonic()))
            except queue.Empty:
                break
            if m is None:
                raise AssertionError("the server closed its output")
            if "method" not in m and m.get("id") == msg_id:
                return m
            self.seen.append(m)
        raise AssertionError(f"no response with id {msg_id!r} within {timeout} s; seen {self.seen}")


def _initialize(client: RawClient) -> None:
    client.send(
        message(id=1, method="initialize", params={"processId": None, "rootUri": None, "capabilities": {}})
    )
    assert "capabilities" in client.response(1)["result"]
    client.send(message(method="initialized", params={}))
    client.send(
        message(
            method="textDocument/didOpen",
            params={"textDocument": {"uri": URI, "languageId": "java", "version": 1, "text": SOURCE}},
        )
    )


def _completion(msg_id, line=2, character=19, uri=URI) -> bytes:
    params = {"textDocument": {"uri": uri}, "position": {"line": line, "character": character}}
    return message(id=msg_id, method="textDocument/completion", params=params)


@pytest.fixture
def server(tiny_model_dir: Path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "kaffee", "serve", "--model", str(tiny_model_dir), "--log-level", "warning"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )

    def write(data: bytes) -> None:
        proc.stdin.write(data)
        proc.stdin.flush()

    yield proc, RawClient(write, proc.stdout.read1)
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)


def test_malformed_json_rpc_gets_errors_and_the_server_keeps_serving(server) -> None:
    proc, client = server
    _initialize(client)
    # header noise without a Content-Length is skipped
    client.send(b"this is not a header\r\nX-Whatever: 1\r\n\r\n")
    # not JSON at all -> parse error, null id
    client.send(frame(b"{not json!!}"))
    assert client.response(None)["error"]["code"] == -32700
    # invalid UTF-8 -> parse error
    client.send(frame(b"\xff\xfe\xfd\xfc"))
    assert client.response(None)["error"]["code"] == -32700
    # JSON, but not a JSON-RPC object
    client.send(frame(b"[1, 2, 3]"))
    assert client.response(None)["error"]["code"] == -32600
    client.send(frame(json.dumps({"id": 9, "method": "textDocument/completion"})))
    assert client.response(9)["error"]["code"] == -32600
    # well-formed envelope, params of the wrong shape
    client.send(message(id=7, method="textDocument/completion", params={"textDocument": 42}))
    assert client.response(7)["error"]["code"] == -32602
    client.send(_completion(10, line=-1, character=-5))
    assert client.response(10)["error"]["code"] == -32602
    # unknown method
    client.send(message(id=8, method="kaffee/noSuchThing", params={}))
    assert client.response(8)["error"]["code"] == -32601
    # ... and real work still gets done
    client.send(_completion(11))
    result = client.response(11)["result"]
    assert any(item["label"] == "println" for item in result["items"])
    assert proc.poll() is None
    client.send(message(id=12, method="shutdown"))
    assert client.response(12)["result"] is None
    client.send(_completion(13))
    assert client.response(13)["error"]["code"] == -32600  # refused during shutdown
    client.send(message(method="exit"))
    assert proc.wait(30) == 0


def test_closing_stdin_stops_the_server(server) -> None:
    proc, client = server
    _initialize(client)
    proc.stdin.close()
    assert proc.wait(30) == 1  # exit without shutdown: code 1, as LSP says


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_tcp_binds_loopback_and_serves(tiny_model_dir: Path, tmp_path: Path) -> None:
    port = _free_port()
    log_file = tmp_path / "server.log"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kaffee",
            "serve",
            "--model",
            str(tiny_model_dir),
            "--tcp",
            "--port",
            str(port),
            "--log-file",
            str(log_file),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        sock = None
        end = time.monotonic() + TIMEOUT
        while sock is None and time.monotonic() < end:
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=1)
            except OSError:
                time.sleep(0.2)
        assert sock is not None, "the TCP server never accepted a connection"
        with sock:
            sock.settimeout(None)
            client = RawClient(sock.sendall, lambda n: sock.recv(n))
            _initialize(client)
            client.send(_completion(2))
            assert client.response(2)["result"]["items"]
            client.send(message(id=3, method="shutdown"))
            client.response(3)
            client.send(message(method="exit"))
            proc.wait(30)
        assert f"127.0.0.1:{port}" in log_file.read_text()
        out, _ = proc.communicate(timeout=10)
        assert out == b""  # nothing ever goes to stdout
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_stdout_carries_only_protocol_messages(server) -> None:
    proc, client = server
    _initialize(client)
    client.send(_completion(2))
    client.response(2)
    client.send(message(id=3, method="shutdown"))
    client.response(3)
    client.send(message(method="exit"))
    assert proc.wait(30) == 0
    # nothing but framed JSON-RPC messages came out
    assert client.garbage == []
    assert all(isinstance(m, dict) and m.get("jsonrpc") == "2.0" for m in client.seen)
