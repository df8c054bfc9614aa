"""Server-side debounce (issue 12, item 4).

A request never waits while the model is idle. One that comes while the model still
works on the previous request of its document waits for that work, up to
``debounceMs``, and, superseded meanwhile, is answered cancelled without reaching the
model. When the user only typed on at the previous request's cursor, that work is kept
(it finishes, its answer is "cancelled", and its suggestion and KV cache serve the next
request); any other edit, a wait past ``debounceMs`` or ``debounceMs`` 0 stop it.

The rule is driven through ``KaffeeLanguageServer.run_model`` and ``on_change`` with jobs
that block on events, so the order of things is fixed and no wall-clock threshold is
asserted; one end-to-end test checks the counters through the real ``kaffee serve``.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from kaffee.server.lsp import KaffeeLanguageServer
from kaffee.server.settings import ServerSettings
from lsprotocol import types
from pygls.exceptions import JsonRpcException, JsonRpcRequestCancelled
from pytest_lsp import LanguageClient
from test_lsp import start, stop  # one way to start the real server and answer its registrations

pytestmark = pytest.mark.asyncio(loop_scope="module")

URI = "file:///tmp/kaffee-debounce/X.java"
TEXT = "class X {\n    int a = \n}\n"
CURSOR = TEXT.index("= ") + 2  # offset of the cursor on line 1
TIMEOUT = 60


class Jobs:
    """Model jobs that block until released; records which ran and whether they were told to stop."""

    def __init__(self) -> None:
        self.ran: list[str] = []
        self.release: dict[str, threading.Event] = {}
        self.cancels: dict[str, threading.Event] = {}
        self.started: dict[str, threading.Event] = {}

    def job(self, name: str, block: bool = True):
        self.release[name] = threading.Event()
        self.started[name] = threading.Event()
        if not block:
            self.release[name].set()

        def run(cancel: threading.Event) -> str:
            self.ran.append(name)
            self.cancels[name] = cancel
            self.started[name].set()
            while not self.release[name].wait(0.01):
                if cancel.is_set():
                    return f"{name} stopped"
            return name

        return run


async def started(jobs: Jobs, name: str) -> None:
    await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(None, jobs.started[name].wait), TIMEOUT)


@pytest.fixture
def ls(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))  # the stats file, never the user's
    server = KaffeeLanguageServer()
    server.settings = replace(server.settings, debounce_ms=10_000)  # long: the waits end by events here
    server.on_open(
        types.DidOpenTextDocumentParams(
            types.TextDocumentItem(uri=URI, language_id="java", version=1, text=TEXT)
        )
    )
    yield server
    server.shutdown_work()


def edit(ls: KaffeeLanguageServer, offset: int, text: str, delete: int = 0, version: int = 2) -> None:
    doc = ls.documents.get(URI)
    start = doc.position_at(offset, ls.encoding)
    end = doc.position_at(offset + delete, ls.encoding)
    rng = types.Range(types.Position(*start), types.Position(*end))
    ls.on_change(
        types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=URI, version=version),
            content_changes=[types.TextDocumentContentChangePartial(range=rng, text=text)],
        )
    )


def request(ls: KaffeeLanguageServer, job, offset: int = CURSOR) -> asyncio.Future:
    return asyncio.ensure_future(ls.run_model(URI, "inline", job, offset))


async def test_a_request_while_the_model_is_idle_does_not_wait(ls) -> None:
    jobs = Jobs()
    assert await request(ls, jobs.job("a", block=False)) == "a"
    edit(ls, CURSOR, "1")
    assert await request(ls, jobs.job("b", block=False), CURSOR + 1) == "b"
    assert jobs.ran == ["a", "b"]
    assert ls.counters["debounce_waits"] == 0


async def test_typing_on_keeps_the_work_and_drops_the_requests_between(ls) -> None:
    """a runs; the user types three characters at its cursor, asking after each: a goes on,
    b and c are dropped while they wait, d runs after a and is answered."""
    jobs = Jobs()
    a = request(ls, jobs.job("a"))
    await started(jobs, "a")
    waiting = []
    for i, name in enumerate("bcd"):
        edit(ls, CURSOR + i, "x", version=2 + i)
        waiting.append(request(ls, jobs.job(name, block=False), CURSOR + i + 1))
        await asyncio.sleep(0)
    assert not jobs.cancels["a"].is_set()  # typing on: the work is kept
    jobs.release["a"].set()
    answers = await asyncio.wait_for(asyncio.gather(a, *waiting, return_exceptions=True), TIMEOUT)
    assert all(isinstance(x, JsonRpcRequestCancelled) for x in answers[:3]), answers
    assert answers[3] == "d"
    assert jobs.ran == ["a", "d"]  # b and c never reached the model
    assert ls.counters["debounced"] == 2 and ls.counters["superseded"] == 1


@pytest.mark.parametrize(
    "change",
    [
        pytest.param((CURSOR - 1, "", 1), id="backspace"),
        pytest.param((3, "x", 0), id="typing elsewhere"),
        pytest.param((CURSOR, "\n", 0), id="enter"),
    ],
)
async def test_any_other_edit_stops_the_work(ls, change) -> None:
    jobs = Jobs()
    a = request(ls, jobs.job("a"))
    await started(jobs, "a")
    offset, text, delete = change
    edit(ls, offset, text, delete)
    assert jobs.cancels["a"].is_set()
    with pytest.raises(JsonRpcRequestCancelled):
        await asyncio.wait_for(a, TIMEOUT)
    assert await request(ls, jobs.job("b", block=False), offset + len(text)) == "b"
    assert ls.counters["debounce_waits"] == 0


async def test_the_wait_ends_after_debounce_ms_and_stops_the_older_work(ls) -> None:
    ls.settings = replace(ls.settings, debounce_ms=50)
    jobs = Jobs()
    a = request(ls, jobs.job("a"))  # never released: only its cancel event ends it
    await started(jobs, "a")
    edit(ls, CURSOR, "x")
    b = request(ls, jobs.job("b", block=False), CURSOR + 1)
    assert await asyncio.wait_for(b, TIMEOUT) == "b"
    assert jobs.cancels["a"].is_set()
    assert ls.counters["debounce_waits"] == 1
    with pytest.raises(JsonRpcRequestCancelled):
        await asyncio.wait_for(a, TIMEOUT)


async def test_debounce_off_stops_the_older_work_at_once(ls) -> None:
    ls.settings = replace(ls.settings, debounce_ms=0)
    jobs = Jobs()
    a = request(ls, jobs.job("a"))
    await started(jobs, "a")
    edit(ls, CURSOR, "x")
    assert jobs.cancels["a"].is_set()
    assert await request(ls, jobs.job("b", block=False), CURSOR + 1) == "b"
    with pytest.raises(JsonRpcRequestCancelled):
        await asyncio.wait_for(a, TIMEOUT)
    assert ls.counters["debounce_waits"] == 0


async def typed_on_while_running(ls, jobs: Jobs) -> tuple[asyncio.Future, asyncio.Future]:
    """Request a (running, blocked), one character typed at its cursor, request b (waiting on a)."""
    a = request(ls, jobs.job("a"))
    await started(jobs, "a")
    edit(ls, CURSOR, "x")
    b = request(ls, jobs.job("b", block=False), CURSOR + 1)
    await asyncio.sleep(0)
    return a, b


async def test_client_cancel_of_kept_work_lets_it_finish_for_the_next_request(ls) -> None:
    """Editors send $/cancelRequest for the request a keystroke made stale: kept work goes on."""
    jobs = Jobs()
    a, b = await typed_on_while_running(ls, jobs)
    a.cancel()  # what pygls does on $/cancelRequest
    await asyncio.sleep(0.05)
    assert not jobs.cancels["a"].is_set()
    jobs.release["a"].set()
    assert await asyncio.wait_for(b, TIMEOUT) == "b"
    assert jobs.ran == ["a", "b"]


async def test_an_edit_elsewhere_stops_the_kept_work_and_drops_the_waiting_request(ls) -> None:
    """Nobody is left to use the older work once the request waiting on it is superseded by an edit."""
    jobs = Jobs()
    a, b = await typed_on_while_running(ls, jobs)
    edit(ls, 3, "y", version=3)  # typing somewhere else
    assert jobs.cancels["a"].is_set()
    answers = await asyncio.wait_for(asyncio.gather(a, b, return_exceptions=True), TIMEOUT)
    assert all(isinstance(x, JsonRpcRequestCancelled) for x in answers), answers
    assert jobs.ran == ["a"]


async def test_kept_work_whose_request_the_client_cancelled_is_still_bounded(ls) -> None:
    """VS Code cancels the stale request before it asks again: the next request still waits
    at most debounceMs for the kept work, then stops it."""
    ls.settings = replace(ls.settings, debounce_ms=50)
    jobs = Jobs()
    a = request(ls, jobs.job("a"))  # never released
    await started(jobs, "a")
    edit(ls, CURSOR, "x")
    a.cancel()  # $/cancelRequest before the next request
    with pytest.raises(asyncio.CancelledError):
        await a
    assert not jobs.cancels["a"].is_set()  # kept for what comes next
    assert await asyncio.wait_for(request(ls, jobs.job("b", block=False), CURSOR + 1), TIMEOUT) == "b"
    assert jobs.cancels["a"].is_set() and ls.counters["debounce_waits"] == 1


@pytest.mark.parametrize("then", ["type on", "type elsewhere"])
async def test_a_client_cancel_before_the_edit_keeps_the_work_until_the_edit_decides(ls, then) -> None:
    """Some editors send $/cancelRequest for the stale request before its didChange."""
    jobs = Jobs()
    a = request(ls, jobs.job("a"))
    await started(jobs, "a")
    a.cancel()
    with pytest.raises(asyncio.CancelledError):
        await a
    assert not jobs.cancels["a"].is_set()
    if then == "type elsewhere":
        edit(ls, 3, "y")
        assert jobs.cancels["a"].is_set()
        return
    edit(ls, CURSOR, "x")
    b = request(ls, jobs.job("b", block=False), CURSOR + 1)
    await asyncio.sleep(0)
    assert not jobs.cancels["a"].is_set()
    jobs.release["a"].set()
    assert await asyncio.wait_for(b, TIMEOUT) == "b"
    assert jobs.ran == ["a", "b"] and ls.counters["debounce_waits"] == 1


async def test_kept_work_whose_request_is_gone_stops_on_enter(ls) -> None:
    jobs = Jobs()
    a = request(ls, jobs.job("a"))
    await started(jobs, "a")
    edit(ls, CURSOR, "x")
    a.cancel()
    with pytest.raises(asyncio.CancelledError):
        await a
    edit(ls, CURSOR + 1, "\n", version=3)
    assert jobs.cancels["a"].is_set()


async def test_client_cancel_of_the_waiting_request_leaves_the_work_for_the_next(ls) -> None:
    jobs = Jobs()
    a, b = await typed_on_while_running(ls, jobs)
    b.cancel()  # $/cancelRequest of the waiting request
    edit(ls, CURSOR + 1, "y", version=3)  # typed on again
    c = request(ls, jobs.job("c", block=False), CURSOR + 2)
    await asyncio.sleep(0)
    assert not jobs.cancels["a"].is_set()
    jobs.release["a"].set()
    assert await asyncio.wait_for(c, TIMEOUT) == "c"
    assert jobs.ran == ["a", "c"]


@pytest.mark.parametrize(
    "other",
    [
        pytest.param((URI, "completion", CURSOR + 1), id="the other kind"),
        pytest.param(("file:///tmp/kaffee-debounce/Y.java", "inline", 0), id="another document"),
    ],
)
async def test_a_request_for_something_else_stops_kept_work(ls, other) -> None:
    """Kept work is for the next inline request of its document; anything else would queue behind it."""
    jobs = Jobs()
    a = request(ls, jobs.job("a"))
    await started(jobs, "a")
    edit(ls, CURSOR, "x")
    uri, kind, offset = other
    b = asyncio.ensure_future(ls.run_model(uri, kind, jobs.job("b", block=False), offset))
    assert await asyncio.wait_for(b, TIMEOUT) == "b"
    assert jobs.cancels["a"].is_set() and ls.counters["debounce_waits"] == 0
    with pytest.raises(JsonRpcRequestCancelled):
        await asyncio.wait_for(a, TIMEOUT)


async def test_a_request_at_another_cursor_stops_the_work(ls) -> None:
    jobs = Jobs()
    a = request(ls, jobs.job("a"))
    await started(jobs, "a")
    assert await request(ls, jobs.job("b", block=False), 3) == "b"  # a click elsewhere, no edit
    assert jobs.cancels["a"].is_set() and ls.counters["debounce_waits"] == 0
    with pytest.raises(JsonRpcRequestCancelled):
        await asyncio.wait_for(a, TIMEOUT)


async def test_completion_work_is_never_kept(ls) -> None:
    """A completion list filters on the client as the user types: no new request would use the work."""
    jobs = Jobs()
    a = asyncio.ensure_future(ls.run_model(URI, "completion", jobs.job("a"), CURSOR))
    await started(jobs, "a")
    edit(ls, CURSOR, "x")
    assert jobs.cancels["a"].is_set()
    with pytest.raises(JsonRpcRequestCancelled):
        await asyncio.wait_for(a, TIMEOUT)


async def test_did_close_stops_kept_work(ls) -> None:
    jobs = Jobs()
    a = request(ls, jobs.job("a"))
    await started(jobs, "a")
    edit(ls, CURSOR, "x")
    assert not jobs.cancels["a"].is_set()
    ls.on_close(types.DidCloseTextDocumentParams(types.TextDocumentIdentifier(URI)))
    assert jobs.cancels["a"].is_set()
    with pytest.raises(JsonRpcRequestCancelled):
        await asyncio.wait_for(a, TIMEOUT)


async def test_an_error_in_kept_work_answers_the_stale_request_cancelled(ls) -> None:
    jobs = Jobs()
    release = threading.Event()
    jobs.started["a"] = threading.Event()

    def failing(cancel: threading.Event) -> str:
        jobs.started["a"].set()
        release.wait(TIMEOUT)
        raise ValueError("the model broke")

    a = request(ls, failing)
    await started(jobs, "a")
    edit(ls, CURSOR, "x")
    b = request(ls, jobs.job("b", block=False), CURSOR + 1)
    await asyncio.sleep(0)
    release.set()
    answers = await asyncio.wait_for(asyncio.gather(a, b, return_exceptions=True), TIMEOUT)
    assert isinstance(answers[0], JsonRpcRequestCancelled), answers
    assert answers[1] == "b"


async def test_a_cleared_device_setting_takes_the_command_lines(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    server = KaffeeLanguageServer(device="auto")
    try:
        server.apply_settings({"device": "cpu", "debounceMs": 0}, initial=True)
        assert server.settings.device == "cpu"
        server.apply_settings({"device": None, "debounceMs": None}, initial=True)
        assert (
            server.settings.device == "auto" and server.settings.debounce_ms == ServerSettings().debounce_ms
        )
    finally:
        server.shutdown_work()


# -- end to end: the counters through the real server -------------------------------------------------
SOURCE = """public class Main {
    public static void main(String[] args) {
        System.out.
    }
}
"""
POSITION = types.Position(line=2, character=len("        System.out."))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(tiny_model_dir: Path):
    client = await start(tiny_model_dir, {"deadlineMs": 30_000})
    yield client
    await stop(client)


async def counters(client: LanguageClient) -> dict[str, int]:
    raw: Any = await asyncio.wait_for(client.protocol.send_request_async("kaffee/counters", None), TIMEOUT)
    plain = {k: getattr(raw, k) for k in raw._fields} if hasattr(raw, "_fields") else dict(raw)
    return {k: int(v) for k, v in plain.items()}


async def test_counters_end_to_end(client: LanguageClient) -> None:
    uri = "file:///tmp/kaffee-debounce/Main.java"
    client.text_document_did_open(
        types.DidOpenTextDocumentParams(
            types.TextDocumentItem(uri=uri, language_id="java", version=1, text=SOURCE)
        )
    )
    params = types.InlineCompletionParams(
        text_document=types.TextDocumentIdentifier(uri),
        position=POSITION,
        context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic),
    )
    before = await counters(client)
    try:
        result = await asyncio.wait_for(client.text_document_inline_completion_async(params), TIMEOUT)
    except JsonRpcException as exc:  # pragma: no cover - a failure message worth reading
        pytest.fail(f"inline completion failed: {exc}")
    after = await counters(client)
    assert result.items and result.items[0].insert_text.strip(), result
    assert after["requests"] - before.get("requests", 0) == 1
    assert after["modelCalls"] - before["modelCalls"] == 1
    assert after.get("debounce_waits", 0) == before.get("debounce_waits", 0)  # the model was idle
    assert after["modelMs"] > before.get("modelMs", 0)  # the model thread's time is counted
    assert after["reusedAnswers"] == before.get("reusedAnswers", 0)  # a fresh position: no reuse
