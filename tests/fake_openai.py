"""A tiny OpenAI-compatible ``/v1/completions`` server for tests (stdlib http.server in a thread).

Deterministic: every completion is ``reply(prompt_text)`` split into ``pieces``, streamed
one piece per SSE event (or returned whole, with ``logprobs`` when asked). It records
each request, can refuse token-id prompts like ``llama_cpp.server`` (HTTP 500), can be
slow per piece, and notes when a client closes a stream before its end.
"""

from __future__ import annotations

import json
import select
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PIECES = ["fake", "Remote", "(", "42", ");", "\n", "    ", "more"]
LOGPROBS = [  # top log-probs of the first two pieces
    {"fake": -0.1, "other": -2.5, " ": -3.0},
    {"Remote": -0.2, "(": -1.9},
]


def default_reply(prompt: str) -> list[str]:
    return list(PIECES)


class FakeOpenAI:
    """Start with :meth:`start`; ``url`` is the API base (``http://127.0.0.1:PORT/v1``)."""

    def __init__(
        self,
        port: int = 0,
        refuse_ids: bool = False,
        delay_s: float = 0.0,
        reply: Callable[[str], list[str]] = default_reply,
        decode: Callable[[list[int]], str] | None = None,
    ):
        self.port = port
        self.refuse_ids = refuse_ids  # answer a token-id prompt with HTTP 500 (llama_cpp.server does)
        self.delay_s = delay_s  # pause before each streamed piece
        self.reply = reply  # prompt text -> pieces
        self.decode = decode  # token ids -> text, for prompts sent as ids
        self.requests: list[dict] = []  # bodies of POST /v1/completions, in order
        self.disconnects: list[float] = []  # time.monotonic() when a client closed a stream early
        self._server: ThreadingHTTPServer | None = None
        self._connections: set[socket.socket] = set()  # open (keep-alive) connections, closed by stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> FakeOpenAI:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real servers

            def log_message(self, *args) -> None:
                pass

            def setup(self) -> None:
                super().setup()
                fake._connections.add(self.connection)

            def finish(self) -> None:
                fake._connections.discard(self.connection)
                super().finish()

            def _json(self, code: int, obj: dict) -> None:
                body = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                if self.path.rstrip("/") == "/v1/models":
                    self._json(200, {"object": "list", "data": [{"id": "fake-model", "object": "model"}]})
                else:
                    self._json(404, {"error": "not found"})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
                fake.requests.append(body)
                prompt = body.get("prompt")
                if isinstance(prompt, list):
                    if fake.refuse_ids:
                        self._json(500, {"error": {"message": "prompt: Input should be a valid string"}})
                        return
                    prompt = fake.decode(prompt) if fake.decode else ""
                pieces = fake.reply(prompt)[: int(body.get("max_tokens") or 16)]
                if not body.get("stream"):
                    choice = {"text": "".join(pieces), "index": 0, "finish_reason": "length"}
                    if body.get("logprobs"):
                        tops = LOGPROBS + [{p: -0.5} for p in pieces[len(LOGPROBS) :]]
                        choice["logprobs"] = {
                            "tokens": pieces,
                            "token_logprobs": [next(iter(t.values())) for t in tops[: len(pieces)]],
                            "top_logprobs": tops[: len(pieces)],
                        }
                    self._json(200, {"object": "text_completion", "choices": [choice]})
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                try:
                    for i, piece in enumerate(pieces):
                        if fake.delay_s and self._closed_within(fake.delay_s):
                            fake.disconnects.append(time.monotonic())
                            return
                        last = i == len(pieces) - 1
                        choice = {"text": piece, "index": 0, "finish_reason": "length" if last else None}
                        self._chunk(f"data: {json.dumps({'choices': [choice]})}\n\n")
                    self._chunk("data: [DONE]\n\n")
                    self.wfile.write(b"0\r\n\r\n")
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    fake.disconnects.append(time.monotonic())
                    self.close_connection = True

            def _chunk(self, text: str) -> None:
                data = text.encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()

            def _closed_within(self, seconds: float) -> bool:
                """Wait ``seconds``; True as soon as the client closes the connection."""
                sock = self.connection
                end = time.monotonic() + seconds
                while (left := end - time.monotonic()) > 0:
                    readable, _, _ = select.select([sock], [], [], left)
                    if readable:
                        try:
                            if sock.recv(1, socket.MSG_PEEK) == b"":
                                return True
                        except OSError:
                            return True
                        time.sleep(0.01)
                return False

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        server.allow_reuse_address = True
        self.port = server.server_address[1]
        self._server = server
        threading.Thread(target=server.serve_forever, name="fake-openai", daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop listening and drop the socket (connections refused from now on)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        for conn in list(self._connections):  # a killed server drops its keep-alive connections too
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
