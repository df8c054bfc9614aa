"""``kaffee serve`` with an OpenAI-compatible backend (a fake one in-process), over LSP: inline
suggestions come from it; killed, the local model answers within the deadline with one
showMessage; restarted, suggestions come from it again; a superseded request closes its stream."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from fake_openai import FakeOpenAI
from lsprotocol import types
from pytest_lsp import ClientServerConfig, LanguageClient, client_capabilities

pytestmark = pytest.mark.asyncio(loop_scope="function")

SOURCE = """package com.example;

public class Main {
    public static void main(String[] args) {
        int total = 0;
        System.out.
    }
}
"""
CURSOR = types.Position(line=5, character=len("        System.out."))
REMOTE = "fakeRemote(42);"
DEADLINE_MS = 4000


async def start(model_dir: Path, init_options: dict, extra: list[str] | None = None) -> LanguageClient:
    argv = [sys.executable, "-m", "kaffee", "serve", "--model", str(model_dir), "--log-level", "warning"]
    argv += ["--engine-option", "token_healing=off", "--engine-option", "workspace_cache=off", *(extra or [])]
    client = await ClientServerConfig(server_command=argv).start()
    params = types.InitializeParams(
        capabilities=client_capabilities("visual-studio-code"), initialization_options=init_options
    )
    await client.initialize_session(params)
    return client


def open_doc(client: LanguageClient, text: str, name: str = "Main.java") -> str:
    uri = f"file:///tmp/kaffee-remote/{name}"
    item = types.TextDocumentItem(uri=uri, language_id="java", version=1, text=text)
    client.text_document_did_open(types.DidOpenTextDocumentParams(item))
    return uri


def inline_params(uri: str, pos: types.Position) -> types.InlineCompletionParams:
    return types.InlineCompletionParams(
        text_document=types.TextDocumentIdentifier(uri),
        position=pos,
        context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Invoked),
    )


async def inline_text(client: LanguageClient, uri: str, pos: types.Position = CURSOR) -> str:
    result = await asyncio.wait_for(client.text_document_inline_completion_async(inline_params(uri, pos)), 60)
    return result.items[0].insert_text if result and result.items else ""


async def counters(client: LanguageClient) -> dict[str, int]:
    raw: Any = await asyncio.wait_for(client.protocol.send_request_async("kaffee/counters", None), 30)
    return {k: getattr(raw, k) for k in raw._fields} if hasattr(raw, "_fields") else dict(raw)


def backend_messages(client: LanguageClient) -> list[str]:
    return [m.message for m in client.messages if "remote backend" in m.message]


async def test_backend_answers_falls_back_when_killed_and_comes_back(tiny_model_dir: Path) -> None:
    fake = FakeOpenAI().start()
    port = fake.port
    init = {"deadlineMs": DEADLINE_MS, "debounceMs": 0, "backend": f"openai:{fake.url}"}
    client = await start(tiny_model_dir, init)
    try:
        uri = open_doc(client, SOURCE)
        assert await inline_text(client, uri) == REMOTE  # the engine loads, then asks the backend
        body = fake.requests[-1]
        assert body["model"] == "fake-model" and isinstance(body["prompt"], list) and body["stream"]
        completion = await client.text_document_completion_async(
            types.CompletionParams(text_document=types.TextDocumentIdentifier(uri), position=CURSOR)
        )
        labels = [i.label for i in completion.items]
        assert labels[:3] == ["fakeRemote", "fake", "other"], labels  # ranked from its logprobs

        fake.stop()
        t0 = time.monotonic()
        local = await inline_text(client, uri)
        assert time.monotonic() - t0 < DEADLINE_MS / 1000
        assert local != REMOTE
        await inline_text(client, uri)  # still down: no second message
        await asyncio.sleep(0.2)
        messages = backend_messages(client)
        assert len(messages) == 1 and "cannot be reached" in messages[0], messages

        fake = FakeOpenAI(port=port).start()
        deadline = time.monotonic() + 20
        text = ""
        while text != REMOTE and time.monotonic() < deadline:  # probed every 3 s, then remote again
            await asyncio.sleep(0.5)
            text = await inline_text(client, uri)
        assert text == REMOTE
        await asyncio.sleep(0.2)
        messages = backend_messages(client)
        assert len(messages) == 2 and "answers again" in messages[1], messages
        counts = await counters(client)
        assert counts["remoteFallbacks"] >= 2 and counts["remoteAnswered"] >= 3
    finally:
        await client.shutdown_session()
        await client.stop()
        fake.stop()


async def test_superseded_request_closes_the_backend_stream(tiny_model_dir: Path) -> None:
    fake = FakeOpenAI(delay_s=0.4).start()
    init = {"deadlineMs": 30_000, "debounceMs": 0}
    client = await start(tiny_model_dir, init, ["--backend", f"openai:{fake.url}", "--remote-model", "m"])
    try:
        uri = open_doc(client, SOURCE)
        pending = asyncio.ensure_future(
            client.text_document_inline_completion_async(inline_params(uri, CURSOR))
        )
        deadline = time.monotonic() + 60
        while not fake.requests and time.monotonic() < deadline:  # the model loads first
            await asyncio.sleep(0.05)
        assert fake.requests and fake.requests[-1]["model"] == "m"
        await asyncio.sleep(0.1)
        change = types.TextDocumentContentChangeWholeDocument(text=SOURCE.replace("total", "sum"))
        client.text_document_did_change(
            types.DidChangeTextDocumentParams(
                types.VersionedTextDocumentIdentifier(uri=uri, version=2), [change]
            )
        )
        t0 = time.monotonic()
        with pytest.raises(Exception):  # noqa: B017 - the superseded request is answered cancelled
            await asyncio.wait_for(pending, 10)
        while not fake.disconnects and time.monotonic() - t0 < 2:
            await asyncio.sleep(0.02)
        assert fake.disconnects, "the backend never saw the connection close"
        assert fake.disconnects[0] - t0 < 1.0
        counts = await counters(client)
        assert counts["remoteCancelled"] == 1 and counts["remoteFallbacks"] == 0
    finally:
        await client.shutdown_session()
        await client.stop()
        fake.stop()
