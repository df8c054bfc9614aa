"""Server-side debounce (issue 12, item 4), end to end through ``kaffee serve`` and pytest-lsp.

While the user types faster than ``debounceMs`` (the document's last two edits closer
than that), a request waits on the event loop until ``debounceMs`` after the last edit
and, superseded meanwhile, is answered cancelled without reaching the model; requests
repeated without edits are debounced by their own gaps; the first request after a pause
in typing goes to the model at once. Asserted on the server's ``kaffee/counters``
(``modelCalls``: engine calls that got to the model), not on wall-clock thresholds. The
debounce here is long (1 s) and the steps 150 ms apart, so a busy machine does not
change which request reaches the model. The rule itself (``lsp.debounce_until``) is
also tested directly.
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from kaffee.server.lsp import KaffeeLanguageServer, debounce_until
from lsprotocol import types
from pygls.exceptions import JsonRpcException
from pytest_lsp import ClientServerConfig, LanguageClient, client_capabilities

pytestmark = pytest.mark.asyncio(loop_scope="module")

SOURCE = """public class Main {
    public static void main(String[] args) {
        System.out.
    }
}
"""
CURSOR = types.Position(line=2, character=len("        System.out."))
TIMEOUT = 60
DEBOUNCE_MS = 1000
GAP_S = 0.15  # between the requests of a burst: well under the debounce
BURST = 4


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(tiny_model_dir: Path):
    cmd = [sys.executable, "-m", "kaffee", "serve", "--model", str(tiny_model_dir), "--log-level", "warning"]
    client = await ClientServerConfig(server_command=cmd).start()
    await client.initialize_session(
        types.InitializeParams(
            capabilities=client_capabilities("visual-studio-code"),
            initialization_options={"deadlineMs": 30_000, "debounceMs": DEBOUNCE_MS},
        )
    )
    await inline(client, open_doc(client, "Warm.java"))  # the model is loaded
    yield client
    try:
        await asyncio.wait_for(client.shutdown_session(), 30)
    finally:
        await client.stop()


def open_doc(client: LanguageClient, name: str) -> str:
    uri = f"file:///tmp/kaffee-debounce/{name}"
    client.text_document_did_open(
        types.DidOpenTextDocumentParams(
            types.TextDocumentItem(uri=uri, language_id="java", version=1, text=SOURCE)
        )
    )
    return uri


def inline_params(uri: str) -> types.InlineCompletionParams:
    return types.InlineCompletionParams(
        text_document=types.TextDocumentIdentifier(uri),
        position=CURSOR,
        context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic),
    )


async def inline(client: LanguageClient, uri: str) -> types.InlineCompletionList:
    return await asyncio.wait_for(client.text_document_inline_completion_async(inline_params(uri)), TIMEOUT)


async def counters(client: LanguageClient) -> dict[str, int]:
    raw: Any = await asyncio.wait_for(client.protocol.send_request_async("kaffee/counters", None), TIMEOUT)
    plain = {k: getattr(raw, k) for k in raw._fields} if hasattr(raw, "_fields") else dict(raw)
    return {k: int(v) for k, v in plain.items()}


def delta(after: dict[str, int], before: dict[str, int], key: str) -> int:
    return after.get(key, 0) - before.get(key, 0)


async def burst(client: LanguageClient, uri: str, n: int = BURST) -> list[Any]:
    futures = []
    for i in range(n):
        if i:
            await asyncio.sleep(GAP_S)
        futures.append(asyncio.ensure_future(inline(client, uri)))
    return await asyncio.gather(*futures, return_exceptions=True)


def configure(client: LanguageClient, debounce_ms: int) -> None:
    client.workspace_did_change_configuration(
        types.DidChangeConfigurationParams(settings={"kaffee": {"debounceMs": debounce_ms}})
    )


def is_cancelled(answer: Any) -> bool:
    return isinstance(answer, JsonRpcException) and answer.code == -32800  # RequestCancelled


async def test_debounce_rule() -> None:
    w = 0.05
    inf = float("inf")
    assert debounce_until(0.0, 10.0, 9.99, (0.01, 9.99)) is None  # off
    assert debounce_until(w, 10.0, None, None) is None  # nothing before it
    assert debounce_until(w, 10.0, None, (inf, 9.99)) is None  # the first edit of the document
    assert debounce_until(w, 10.0, 9.0, (0.5, 9.99)) is None  # typed after a pause: at once
    # typing fast: wait until `wait` after the last edit (not after the request)
    assert debounce_until(w, 10.0, 9.97, (0.03, 9.99)) == pytest.approx(9.99 + w)
    assert debounce_until(w, 10.0, None, (0.049, 9.98)) == pytest.approx(9.98 + w)
    assert debounce_until(w, 10.0, 9.9, (0.03, 9.94)) is None  # the last fast edit is `wait` old
    # no edit since the previous request: the gap between requests decides
    assert debounce_until(w, 10.0, 9.98, (0.01, 9.5)) == pytest.approx(10.0 + w)
    assert debounce_until(w, 10.0, 9.9, (0.01, 9.5)) is None
    assert debounce_until(w, 10.0, 9.98, None) == pytest.approx(10.0 + w)


async def test_a_request_that_needs_no_model_does_not_wait(tmp_path, monkeypatch) -> None:
    """While typing fast, a request the engine answers without the model (the user typed on
    through the last suggestion) skips the wait; one that needs the model waits."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))  # the stats file, never the user's
    ls = KaffeeLanguageServer()
    ls.settings = replace(ls.settings, debounce_ms=100)
    try:
        ls._edits["file:///x.java"] = (0.02, time.monotonic())  # two edits 20 ms apart, just now
        answer = await ls.run_model("file:///x.java", "inline", lambda cancel: "free", lambda: True)
        assert answer == "free"
        assert ls.counters["debounce_skipped"] == 1 and ls.counters["debounce_waits"] == 0
        ls._edits["file:///x.java"] = (0.02, time.monotonic())
        answer = await ls.run_model("file:///x.java", "inline", lambda cancel: "model", lambda: False)
        assert answer == "model"
        assert ls.counters["debounce_skipped"] == 1 and ls.counters["debounce_waits"] == 1
    finally:
        ls.shutdown_work()


async def test_isolated_request_goes_to_the_model_at_once(client: LanguageClient) -> None:
    uri = open_doc(client, "Isolated.java")
    before = await counters(client)
    result = await inline(client, uri)
    after = await counters(client)
    assert result.items and result.items[0].insert_text.strip(), result
    assert delta(after, before, "modelCalls") == 1
    assert delta(after, before, "debounce_waits") == 0  # no debounce wait after a pause


def type_char(client: LanguageClient, uri: str, version: int) -> None:
    """One keystroke: a space at the end of the file (the cursor's line is unchanged)."""
    end = types.Position(line=SOURCE.count("\n"), character=0)
    client.text_document_did_change(
        types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=version),
            content_changes=[types.TextDocumentContentChangePartial(range=types.Range(end, end), text=" ")],
        )
    )


async def test_fast_typing_reaches_the_model_only_first_and_last(client: LanguageClient) -> None:
    """A keystroke and an inline request every 150 ms, as editors ask after each keystroke."""
    uri = open_doc(client, "Typing.java")
    before = await counters(client)
    futures = []
    for i in range(BURST):
        if i:
            await asyncio.sleep(GAP_S)
        type_char(client, uri, version=2 + i)
        futures.append(asyncio.ensure_future(inline(client, uri)))
    answers = await asyncio.gather(*futures, return_exceptions=True)
    after = await counters(client)
    # the first edit follows a pause: its request goes at once; the next ones wait until 1 s
    # after their edit, and the middle ones are dropped by the keystroke that follows
    assert delta(after, before, "modelCalls") == 2, (before, after)
    assert delta(after, before, "debounce_waits") == BURST - 1
    assert delta(after, before, "debounced") == BURST - 2
    assert all(is_cancelled(a) for a in answers[1:-1]), answers
    assert isinstance(answers[-1], types.InlineCompletionList) and answers[-1].items, answers[-1]


async def test_typing_after_a_pause_does_not_wait(client: LanguageClient) -> None:
    """Keystrokes further apart than debounceMs: every request goes to the model at once,
    even one that comes right after another request (asked without an edit, e.g. on a
    cursor move): the keystroke before it followed a pause."""
    uri = open_doc(client, "Slow.java")
    before = await counters(client)
    type_char(client, uri, version=2)
    assert (await inline(client, uri)).items
    await asyncio.sleep(DEBOUNCE_MS / 1000 + 0.2)
    assert (await inline(client, uri)).items  # no edit since the last request, which was long ago
    type_char(client, uri, version=3)  # over a second after the previous keystroke
    assert (await inline(client, uri)).items
    after = await counters(client)
    assert delta(after, before, "modelCalls") == 3, (before, after)
    assert delta(after, before, "debounce_waits") == 0


async def test_burst_reaches_the_model_only_first_and_last(client: LanguageClient) -> None:
    uri = open_doc(client, "Burst.java")
    before = await counters(client)
    answers = await burst(client, uri)
    after = await counters(client)
    # the first goes at once (it may finish before the second comes), the middle ones are
    # dropped during their wait, the last is answered after it
    assert delta(after, before, "modelCalls") == 2, (before, after)
    assert delta(after, before, "debounce_waits") == BURST - 1
    assert delta(after, before, "debounced") == BURST - 2
    assert all(is_cancelled(a) for a in answers[1:-1]), answers
    assert isinstance(answers[-1], types.InlineCompletionList) and answers[-1].items, answers[-1]


async def test_without_debounce_every_request_of_a_burst_reaches_the_model(client: LanguageClient) -> None:
    configure(client, 0)
    try:
        uri = open_doc(client, "NoDebounce.java")
        before = await counters(client)
        answers = await burst(client, uri)
        after = await counters(client)
        assert delta(after, before, "modelCalls") == BURST, (before, after)
        assert delta(after, before, "debounce_waits") == 0
        assert isinstance(answers[-1], types.InlineCompletionList) and answers[-1].items, answers[-1]
    finally:
        configure(client, DEBOUNCE_MS)


async def test_cancel_request_during_the_wait(client: LanguageClient) -> None:
    uri = open_doc(client, "Cancel.java")
    before = await counters(client)
    first = asyncio.ensure_future(inline(client, uri))
    await asyncio.sleep(GAP_S)
    waiting = asyncio.ensure_future(
        client.protocol.send_request_async(
            types.TEXT_DOCUMENT_INLINE_COMPLETION, inline_params(uri), msg_id="debounced-1"
        )
    )
    await asyncio.sleep(GAP_S)
    during = await counters(client)  # the event loop answers while the request waits
    assert not waiting.done()
    assert delta(during, before, "debounce_waits") == 1
    client.protocol.notify(types.CANCEL_REQUEST, types.CancelParams(id="debounced-1"))
    answers = await asyncio.wait_for(asyncio.gather(first, waiting, return_exceptions=True), TIMEOUT)
    after = await counters(client)
    assert is_cancelled(answers[1]), answers[1]
    assert delta(after, before, "modelCalls") == 1  # only the first; the cancelled one never ran
    # the server still serves this document
    await asyncio.sleep(DEBOUNCE_MS / 1000)
    assert (await inline(client, uri)).items
