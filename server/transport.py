"""The one adapter between the wire and pygls: framing, message guards, lifecycle, answers.

pygls 2 reads messages in ``pygls.io_.run_async``, which trusts the ``Content-Length``,
parses with ``json.loads`` and hands every object it decodes to the protocol; it has no
hook between those steps. Kaffee's guards must sit there, so this module owns the read
loop and talks to pygls through its public names only: ``protocol.structure_message``
and ``protocol.handle_message`` (a checked message goes in), ``protocol.set_writer``
(where answers go), ``protocol.fm`` (which methods exist), ``lsp_method`` with
``protocol_cls`` (replacing built-in document sync). What has no public form is here,
each with its reason:

- the read loop (``serve_stdio``, ``serve_tcp``): size cap, parse and depth guard;
- ``Gate``: JSON-RPC envelope and LSP lifecycle checks, answered with the right code,
  where pygls answers nothing (bad ``method`` or ``jsonrpc``, notification methods with
  an id, requests before ``initialize``) or the wrong code;
- ``GuardedWriter``/``clean_outgoing``: pygls puts Python tracebacks into ``error.data``
  and drops a null ``id``; its own ``_send_response`` is private, so answers are
  filtered where they leave;
- ``DocumentSyncProtocol``: pygls' built-in didOpen/didChange/didClose keep a second
  copy of every document (recomputing all lines per edit); a protocol subclass with the
  same method names is the only way to replace them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import re
import threading
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO, Protocol

from lsprotocol import types
from pygls.io_ import StdoutWriter
from pygls.protocol import LanguageServerProtocol, lsp_method

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # a body over this is read and dropped, answered with -32600
MAX_HEADER_LINE = 8192  # a longer header line is noise
CHUNK = 1024 * 1024
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
SERVER_NOT_INITIALIZED = -32002
FORWARD, DROP = "forward", "drop"


# -- answers ------------------------------------------------------------------------------------
def frame(payload: dict) -> bytes:
    body = json.dumps(payload).encode()  # ASCII: lone surrogates and all become escapes
    return b"Content-Length: %d\r\n\r\n" % len(body) + body


def error_message(msg_id: Any, code: int, message: str) -> dict:
    return {"jsonrpc": "2.0", "id": msg_id, "error": {"code": code, "message": message}}


def clean_outgoing(data: bytes) -> bytes:
    """A framed message as the client should see it: no ``error.data``, internal errors vague, ``id`` kept.

    Cheap for everything but error responses, which are parsed and framed again.
    """
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep or b'"error"' not in body:
        return data
    try:
        msg = json.loads(body)
    except ValueError:
        return data
    err = msg.get("error") if isinstance(msg, dict) and "method" not in msg else None
    if not isinstance(err, dict):
        return data
    if "data" in err or err.get("code") == INTERNAL_ERROR:
        log.error("error answer %s: %s %.2000s", msg.get("id"), err.get("message"), err.get("data") or "")
        err.pop("data", None)
    if err.get("code") == INTERNAL_ERROR:
        err["message"] = "internal error in the Kaffee server (its log has the details)"
    msg.setdefault("id", None)  # lsprotocol omits a null id; JSON-RPC requires it
    return frame(msg)


class GuardedWriter:
    """pygls' writer, behind :func:`clean_outgoing`; other threads' writes hop to the loop if needed."""

    def __init__(self, inner: Any, loop: asyncio.AbstractEventLoop, thread_safe: bool):
        self._inner = inner
        self._loop = loop
        self._thread_safe = thread_safe
        self._loop_thread = threading.get_ident()

    def write(self, data: bytes) -> None:
        data = clean_outgoing(data)
        if self._thread_safe or threading.get_ident() == self._loop_thread:
            self._inner.write(data)
        else:  # asyncio transports are not thread-safe (a notification from the model thread)
            self._loop.call_soon_threadsafe(self._inner.write, data)

    def close(self) -> None:
        self._inner.close()


# -- the gate -------------------------------------------------------------------------------------
@dataclass
class Reply:
    """An error answer in place of handing the message to pygls."""

    id: Any
    code: int
    message: str


def _valid_id(value: Any) -> bool:
    return isinstance(value, int | str) and not isinstance(value, bool)


_REQUEST_TYPES = frozenset(typing.get_args(types.REQUESTS))
_NOTIFICATION_TYPES = frozenset(typing.get_args(types.NOTIFICATIONS))


def _is_notification_method(method: str) -> bool:
    """An LSP method whose messages carry no id, as lsprotocol lists them."""
    return types.METHOD_TO_TYPES.get(method, (None,))[0] in _NOTIFICATION_TYPES


def _is_request_method(method: str) -> bool:
    return types.METHOD_TO_TYPES.get(method, (None,))[0] in _REQUEST_TYPES


class Gate:
    """JSON-RPC 2.0 envelope and LSP lifecycle checks, before pygls sees a message.

    ``check`` returns FORWARD, DROP (a notification nobody should act on) or a
    :class:`Reply`. Requests before ``initialize`` get -32002, a second ``initialize``
    and anything after ``shutdown`` -32600, unregistered methods -32601.
    """

    def __init__(self, known: Callable[[], set[str]]):
        self._known = known
        self.initialized = False
        self.shutting_down = False

    def check(self, data: Any) -> Reply | str:
        if not isinstance(data, dict):
            return Reply(None, INVALID_REQUEST, "a message must be a JSON object (no batches in LSP)")
        has_id = "id" in data
        msg_id = data.get("id")
        method = data.get("method")
        if "method" not in data and ("result" in data or "error" in data):
            return FORWARD if _valid_id(msg_id) and data.get("jsonrpc") == "2.0" else DROP  # a response
        if has_id and not _valid_id(msg_id):
            return Reply(None, INVALID_REQUEST, "the id must be an integer or a string")
        reply_id = msg_id if has_id else None
        if data.get("jsonrpc") != "2.0":
            if not has_id and isinstance(method, str):
                return DROP  # a notification from something else; nothing to answer
            return Reply(reply_id, INVALID_REQUEST, 'not a JSON-RPC 2.0 message ("jsonrpc": "2.0")')
        if not isinstance(method, str):
            return Reply(reply_id, INVALID_REQUEST, "method must be a string")
        if not has_id:
            return self._notification(method)
        return self._request(msg_id, method)

    def _notification(self, method: str) -> str:
        if method == types.EXIT:
            return FORWARD
        if not self.initialized or self.shutting_down or _is_request_method(method):
            return DROP
        if method != types.CANCEL_REQUEST and method not in self._known():
            return DROP
        return FORWARD

    def _request(self, msg_id: Any, method: str) -> Reply | str:
        if method == types.INITIALIZE and self.initialized:
            return Reply(msg_id, INVALID_REQUEST, "initialize was already called")
        if method != types.INITIALIZE and not self.initialized:
            return Reply(msg_id, SERVER_NOT_INITIALIZED, "the server is not initialized yet")
        if self.shutting_down:
            return Reply(msg_id, INVALID_REQUEST, f"the server is shutting down; {method} refused")
        if _is_notification_method(method):
            return Reply(msg_id, INVALID_REQUEST, f"{method} is a notification: it takes no id")
        if method not in self._known():
            return Reply(msg_id, METHOD_NOT_FOUND, f"method not found: {method}")
        return FORWARD

    def forwarded(self, method: Any) -> None:
        """A request reached pygls: follow the lifecycle."""
        if method == types.INITIALIZE:
            self.initialized = True
        elif method == types.SHUTDOWN:
            self.shutting_down = True


# -- parsing --------------------------------------------------------------------------------------
_CONTENT_LENGTH = re.compile(rb"content-length:[ \t]*(\d{1,20})[ \t]*\r?\n?$", re.IGNORECASE)
_JSON_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def shallow_envelope(text: str) -> Any:
    """A JSON text too deeply nested to parse, with every value below the top level as null.

    Enough to read ``id`` and ``method`` and answer; linear, no recursion.
    """
    out, depth, last = [], 0, 0
    for m in _JSON_TOKEN.finditer(text):
        tok = m.group()
        if tok[0] == '"':
            continue
        if tok in "[{":
            depth += 1
            if depth == 2:
                out.append(text[last : m.start()])
        else:
            if depth == 2:
                out.append("null")
                last = m.end()
            depth -= 1
    out.append(text[last:])
    try:
        return json.loads("".join(out))
    except (ValueError, RecursionError):
        return None


@dataclass
class Parsed:
    data: Any = None
    reply: Reply | None = None


def parse_body(body: bytes) -> Parsed:
    try:
        text = body.decode("utf-8")
        return Parsed(json.loads(text))
    except RecursionError:
        envelope = shallow_envelope(text)
        msg_id = envelope.get("id") if isinstance(envelope, dict) else None
        log.warning("message nested too deeply (id %r)", msg_id)
        return Parsed(
            reply=Reply(msg_id if _valid_id(msg_id) else None, INVALID_REQUEST, "JSON nested too deeply")
        )
    except ValueError as exc:  # bad UTF-8, bad JSON, a 5000-digit number
        log.warning("unparseable message: %s", exc)
        return Parsed(reply=Reply(None, PARSE_ERROR, "Parse error"))


# -- the loop -------------------------------------------------------------------------------------
class _Reader(Protocol):
    async def readline(self) -> bytes: ...  # b"" at the end

    async def read(self, n: int) -> bytes: ...  # up to n bytes; b"" at the end


class _PipeReader:
    """A blocking binary stream read on a thread of its own (never the event loop)."""

    def __init__(self, stream: BinaryIO):
        self._stream = stream
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="kaffee-stdin")

    async def readline(self) -> bytes:
        return await asyncio.get_running_loop().run_in_executor(
            self._pool, self._stream.readline, MAX_HEADER_LINE
        )

    async def read(self, n: int) -> bytes:
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._stream.read, n)


class _SocketReader:
    def __init__(self, reader: asyncio.StreamReader):
        self._reader = reader

    async def readline(self) -> bytes:
        try:
            return await self._reader.readline()
        except ValueError:  # over the stream's limit: asyncio dropped it; a noise line
            return b"-\n"

    async def read(self, n: int) -> bytes:
        return await self._reader.read(n)


async def _read_body(reader: _Reader, length: int, keep: bool) -> bytes | None:
    """``length`` bytes (``keep``: returned, else dropped as they come); None at the end of input."""
    chunks, left = [], length
    while left > 0:
        chunk = await reader.read(min(left, CHUNK))
        if not chunk:
            return None
        left -= len(chunk)
        if keep:
            chunks.append(chunk)
    return b"".join(chunks)


async def _read_length(reader: _Reader) -> int | None:
    """Header lines up to the blank line; the Content-Length (None at the end of input)."""
    length, carry = None, b""
    while True:
        line = await reader.readline()
        if not line:
            return None
        if not line.strip():
            if length is not None:
                return length
            continue  # a blank line without a length: noise
        m = _CONTENT_LENGTH.search(carry + line)  # anywhere: finds the header again after noise
        if m:
            length = int(m.group(1))
        # a long noise line comes in pieces; a header may straddle two
        carry = line[-64:] if not line.endswith(b"\n") else b""


class Session:
    """One client connection: reads framed messages, gates them, hands the good ones to pygls."""

    def __init__(
        self,
        protocol: LanguageServerProtocol,
        prepare: Callable[[str, Any], None] | None = None,
        max_bytes: int = MAX_MESSAGE_BYTES,
    ):
        self.protocol = protocol
        self.prepare = prepare
        self.max_bytes = max_bytes
        fm = protocol.fm
        self.gate = Gate(lambda: fm.features.keys() | fm.builtin_features.keys())

    def send(self, reply: Reply) -> None:
        writer = self.protocol.writer
        if writer is not None:
            writer.write(frame(error_message(reply.id, reply.code, reply.message)))

    async def run(self, reader: _Reader) -> int:
        """Serve until ``exit`` (its exit code) or the end of input (1, or 0 after ``shutdown``)."""
        while True:
            length = await _read_length(reader)
            if length is None:
                break
            if length > self.max_bytes:
                log.warning("a message of %d bytes is over the limit; skipped", length)
                mib = self.max_bytes / (1024 * 1024)
                self.send(
                    Reply(None, INVALID_REQUEST, f"message of {length} bytes is over the {mib:g} MiB limit")
                )
                if await _read_body(reader, length, keep=False) is None:
                    break
                continue
            body = await _read_body(reader, length, keep=True)
            if body is None:
                break
            try:
                self.handle(body)
            except SystemExit as exc:  # pygls' exit handler: 0 after shutdown, else 1
                return exc.code if isinstance(exc.code, int) else 1
            except (BrokenPipeError, ConnectionResetError):
                log.error("the connection to the client is lost")
                return 1
            except Exception:
                log.exception("unexpected error while handling a message; still serving")
        return 0 if self.gate.shutting_down else 1

    def handle(self, body: bytes) -> None:
        parsed = parse_body(body)
        if parsed.reply is not None:
            self.send(parsed.reply)
            return
        data = parsed.data
        verdict = self.gate.check(data)
        if isinstance(verdict, Reply):
            log.warning("refused: %s (%.200r)", verdict.message, data)
            self.send(verdict)
            return
        if verdict == DROP:
            log.info("dropped %.200r", data)
            return
        method = data.get("method")
        if self.prepare is not None and isinstance(method, str):
            self.prepare(method, data.get("params"))
        try:
            message = self.protocol.structure_message(data)
        except Exception as exc:  # pygls raises JsonRpcInvalidParams (or InternalError) with the cause
            log.warning("bad params for %s: %s", method, exc.__cause__ or exc)
            if "id" in data and isinstance(method, str):
                self.send(Reply(data["id"], INVALID_PARAMS, f"invalid params for {method}"))
            return
        if "id" in data and isinstance(method, str):
            self.gate.forwarded(method)
        self.protocol.handle_message(message)


def serve_stdio(
    protocol: LanguageServerProtocol,
    stdin: BinaryIO,
    stdout: BinaryIO,
    prepare: Callable[[str, Any], None] | None = None,
) -> int:
    """Serve one client on stdin/stdout; the exit code."""

    async def main() -> int:
        loop = asyncio.get_running_loop()
        protocol.set_writer(GuardedWriter(StdoutWriter(stdout), loop, thread_safe=True))
        return await Session(protocol, prepare).run(_PipeReader(stdin))

    try:
        return asyncio.run(main())
    except BrokenPipeError:
        log.error("the connection to the client is lost")
        return 1


def serve_tcp(
    protocol: LanguageServerProtocol, host: str, port: int, prepare: Callable[[str, Any], None] | None = None
) -> int:
    """Serve the first client that connects to ``host:port`` (later ones are turned away); the exit code."""

    async def main() -> int:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[int] = loop.create_future()
        busy = False

        async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal busy
            if busy:
                log.warning("a second client connected; turned away")
                writer.close()
                return
            busy = True
            protocol.set_writer(GuardedWriter(writer, loop, thread_safe=False))
            try:
                code = await Session(protocol, prepare).run(_SocketReader(reader))
            except (ConnectionError, OSError):
                code = 1
            if not done.done():
                done.set_result(code)

        server = await asyncio.start_server(connection, host, port, limit=MAX_HEADER_LINE)
        log.info("listening on %s", ", ".join(str(s.getsockname()) for s in server.sockets))
        async with server:
            return await done

    return asyncio.run(main())


# -- document sync ------------------------------------------------------------------------------
class DocumentSink(Protocol):
    def on_open(self, params: types.DidOpenTextDocumentParams) -> None: ...

    def on_change(self, params: types.DidChangeTextDocumentParams) -> None: ...

    def on_close(self, params: types.DidCloseTextDocumentParams) -> None: ...


class DocumentSyncProtocol(LanguageServerProtocol):
    """pygls' protocol with document sync handed to the server's own store (``on_open`` …).

    Plain functions, not pygls' generator style, which keeps a future per notification.
    """

    def __init__(self, server: Any, converter: Any):
        super().__init__(server, converter)
        self.sink: DocumentSink = server

    @lsp_method(types.TEXT_DOCUMENT_DID_OPEN)
    def lsp_text_document__did_open(self, params: types.DidOpenTextDocumentParams) -> None:
        self.sink.on_open(params)

    @lsp_method(types.TEXT_DOCUMENT_DID_CHANGE)
    def lsp_text_document__did_change(self, params: types.DidChangeTextDocumentParams) -> None:
        self.sink.on_change(params)

    @lsp_method(types.TEXT_DOCUMENT_DID_CLOSE)
    def lsp_text_document__did_close(self, params: types.DidCloseTextDocumentParams) -> None:
        self.sink.on_close(params)
