"""``kaffee serve`` end to end through pytest-lsp: both request kinds, settings, bad input.

One server (module scope) answers most tests; tests that need a fresh process (a
shutdown, initialization options, a slow model for cancellation) start their own.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import pytest
import pytest_asyncio
from lsprotocol import types
from pygls.exceptions import JsonRpcException
from pytest_lsp import ClientServerConfig, LanguageClient, client_capabilities

pytestmark = pytest.mark.asyncio(loop_scope="module")

SOURCE = """package com.example.bank;

public class Main {
    public static void main(String[] args) {
        Account account = new Account("alice", 100);
        account.deposit(50);
        System.out.
    }
}
"""
CURSOR = types.Position(line=6, character=len("        System.out."))
REQUEST_TIMEOUT = 60


def server_command(model_dir: Path) -> list[str]:
    return [sys.executable, "-m", "kaffee", "serve", "--model", str(model_dir), "--log-level", "warning"]


async def start(model_dir: Path, init_options=None, env=None, root: Path | None = None) -> LanguageClient:
    config = ClientServerConfig(server_command=server_command(model_dir), server_env=env)
    client = await config.start()

    @client.feature(types.CLIENT_REGISTER_CAPABILITY)
    def register(params: types.RegistrationParams) -> None:  # the server asks to watch *.java files
        client.registrations = [r.method for r in params.registrations]

    params = types.InitializeParams(
        capabilities=client_capabilities("visual-studio-code"),
        initialization_options=init_options,
        root_uri=root.as_uri() if root else None,
    )
    client.init_result = await client.initialize_session(params)
    return client


async def stop(client: LanguageClient) -> None:
    try:
        await asyncio.wait_for(client.shutdown_session(), 30)
    finally:
        await client.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(tiny_model_dir: Path, tmp_path_factory):
    root = tmp_path_factory.mktemp("workspace")
    (root / "src").mkdir()
    (root / "src" / "Account.java").write_text(
        "public class Account { public void deposit(long amount) {} }\n"
    )
    client = await start(tiny_model_dir, {"deadlineMs": 30_000, "device": "cpu"}, root=root)
    yield client
    await stop(client)


def open_doc(client: LanguageClient, name: str, text: str) -> str:
    uri = f"file:///tmp/kaffee-test/{name}"
    client.text_document_did_open(
        types.DidOpenTextDocumentParams(
            types.TextDocumentItem(uri=uri, language_id="java", version=1, text=text)
        )
    )
    return uri


async def complete(client: LanguageClient, uri: str, pos: types.Position) -> types.CompletionList:
    params = types.CompletionParams(text_document=types.TextDocumentIdentifier(uri), position=pos)
    return await asyncio.wait_for(client.text_document_completion_async(params), REQUEST_TIMEOUT)


async def inline(client: LanguageClient, uri: str, pos: types.Position) -> types.InlineCompletionList:
    params = types.InlineCompletionParams(
        text_document=types.TextDocumentIdentifier(uri),
        position=pos,
        context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic),
    )
    return await asyncio.wait_for(client.text_document_inline_completion_async(params), REQUEST_TIMEOUT)


async def test_capabilities_advertise_both_kinds(client: LanguageClient) -> None:
    caps = client.init_result.capabilities
    assert caps.inline_completion_provider is not None
    assert "." in caps.completion_provider.trigger_characters
    assert caps.text_document_sync.change == types.TextDocumentSyncKind.Incremental
    assert caps.position_encoding in (None, types.PositionEncodingKind.Utf16)


async def test_completion_after_dot_lists_whole_tokens_with_utf16_edits(client: LanguageClient) -> None:
    uri = open_doc(client, "Main.java", SOURCE)
    result = await complete(client, uri, CURSOR)
    assert result.items, "no completion items"
    labels = [item.label for item in result.items]
    assert "println" in labels[:3], labels
    for item in result.items:
        assert item.sort_text and item.text_edit is not None
        assert item.text_edit.range.end == CURSOR
        assert item.text_edit.new_text == item.label or item.text_edit.new_text.startswith(
            item.label.rstrip("…")
        )
    assert sorted(result.items, key=lambda i: i.sort_text)[0].label == "println"


async def test_completion_inside_a_word_replaces_the_word(client: LanguageClient) -> None:
    text = SOURCE.replace("System.out.", "System.out.pri")
    uri = open_doc(client, "Word.java", text)
    pos = types.Position(line=6, character=len("        System.out.pri"))
    result = await complete(client, uri, pos)
    println = [i for i in result.items if i.label == "println"]
    assert println, [i.label for i in result.items]
    assert println[0].text_edit.range.start == types.Position(line=6, character=len("        System.out."))


async def test_inline_completion_gives_the_rest_of_the_line(client: LanguageClient) -> None:
    uri = open_doc(client, "Inline.java", SOURCE)
    result = await inline(client, uri, CURSOR)
    assert len(result.items) == 1
    item = result.items[0]
    assert item.insert_text.startswith("println("), item.insert_text
    assert "\n" not in item.insert_text
    assert item.range.start == CURSOR == item.range.end


async def test_inline_completion_of_a_block_stops_before_the_existing_brace(client: LanguageClient) -> None:
    text = "public class Main {\n    public static void main(String[] args) {\n        \n    }\n}\n"
    uri = open_doc(client, "Block.java", text)
    result = await inline(client, uri, types.Position(line=2, character=8))
    assert len(result.items) == 1, "no suggestion in an empty method body"
    body = result.items[0].insert_text
    assert body.strip(), body
    # it must never repeat the "}" below: a closing brace it ends with closes a block it opened
    assert not body.rstrip().endswith("}") or body.count("{") >= body.count("}"), body


async def test_unknown_document_gets_an_empty_answer(client: LanguageClient) -> None:
    uri = "file:///nowhere/Unknown.java"
    assert not (await complete(client, uri, CURSOR)).items
    assert not (await inline(client, uri, CURSOR)).items


async def test_positions_past_the_end_are_clamped(client: LanguageClient) -> None:
    uri = open_doc(client, "Clamp.java", SOURCE)
    end_of_line = types.Position(line=6, character=len("        System.out."))
    end_of_text = types.Position(line=SOURCE.count("\n"), character=0)
    for pos, clamped in (
        (types.Position(line=6, character=10_000), end_of_line),
        (types.Position(line=10_000, character=3), end_of_text),
    ):
        result = await complete(client, uri, pos)
        assert result.items, pos
        assert all(item.text_edit.range.end == clamped for item in result.items), (pos, result.items)
        assert all(item.range.end == clamped for item in (await inline(client, uri, pos)).items)


async def test_surrogate_pairs_around_the_cursor(client: LanguageClient) -> None:
    line = '        String s = "😀😀"; System.out.'
    text = SOURCE.replace("        System.out.", line)
    uri = open_doc(client, "Emoji.java", text)
    end = len(line.encode("utf-16-le")) // 2  # the end of the line in UTF-16 units
    result = await complete(client, uri, types.Position(line=6, character=end))
    assert result.items
    assert all(i.text_edit.range.end == types.Position(line=6, character=end) for i in result.items)
    # a column in the middle of a surrogate pair snaps to the character's start
    mid = len('        String s = "😀'.encode("utf-16-le")) // 2 - 1
    result = await complete(client, uri, types.Position(line=6, character=mid))
    snapped = len('        String s = "'.encode("utf-16-le")) // 2
    assert result.items
    assert all(i.text_edit.range.end == types.Position(line=6, character=snapped) for i in result.items)
    assert isinstance(
        await inline(client, uri, types.Position(line=6, character=mid)), types.InlineCompletionList
    )


async def test_a_5mb_file(client: LanguageClient) -> None:
    filler = "    // " + "x" * 90 + "\n"
    text = SOURCE.replace(
        "public class Main {\n", "public class Main {\n" + filler * (5_000_000 // len(filler))
    )
    uri = open_doc(client, "Huge.java", text)
    line = text[: text.index("System.out.")].count("\n")
    t0 = time.monotonic()
    result = await inline(client, uri, types.Position(line=line, character=len("        System.out.")))
    assert time.monotonic() - t0 < 30
    # an answer, from a context of filler comments (the tiny model then guesses another member)
    assert len(result.items) == 1 and result.items[0].insert_text.strip(), result.items
    assert result.items[0].range.start == types.Position(line=line, character=len("        System.out."))


async def test_binary_content(client: LanguageClient) -> None:
    text = "".join(chr(c) for c in range(0, 0x800, 7)) + "\x00\x01\ufffd\ud7ff" * 100
    uri = open_doc(client, "Binary.java", text)
    for pos in (types.Position(line=0, character=5), types.Position(line=3, character=1_000_000)):
        assert isinstance(await complete(client, uri, pos), types.CompletionList)
        assert isinstance(await inline(client, uri, pos), types.InlineCompletionList)


async def test_a_burst_of_1000_edits(client: LanguageClient) -> None:
    uri = open_doc(client, "Burst.java", SOURCE)
    typed = "println(account);"
    version = 1
    for i in range(1000):
        ch = typed[i % len(typed)]
        col = len("        System.out.") + (i % len(typed))
        if i % len(typed) == 0 and i:
            # delete what was typed so far, then start again
            version += 1
            client.text_document_did_change(
                types.DidChangeTextDocumentParams(
                    text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=version),
                    content_changes=[
                        types.TextDocumentContentChangePartial(
                            range=types.Range(
                                types.Position(6, len("        System.out.")),
                                types.Position(6, col + len(typed)),
                            ),
                            text="",
                        )
                    ],
                )
            )
        version += 1
        client.text_document_did_change(
            types.DidChangeTextDocumentParams(
                text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=version),
                content_changes=[
                    types.TextDocumentContentChangePartial(
                        range=types.Range(types.Position(6, col), types.Position(6, col)), text=ch
                    )
                ],
            )
        )
    expected_len = 1000 % len(typed)
    pos = types.Position(line=6, character=len("        System.out.") + expected_len)
    assert typed[:expected_len] == "println(accoun"
    # the server's copy of the document matches what the edits say: complete the word being typed
    result = await complete(client, uri, pos)
    assert result.items and all(i.text_edit.range.end == pos for i in result.items)
    word_start = types.Position(line=6, character=pos.character - len("accoun"))
    account = [i for i in result.items if i.label == "account"]
    assert account and account[0].text_edit.range.start == word_start, [i.label for i in result.items]
    result = await inline(client, uri, pos)
    assert len(result.items) == 1 and result.items[0].insert_text.startswith("t"), result.items


async def test_settings_change_valid_and_invalid(client: LanguageClient) -> None:
    before = len(client.messages)
    client.workspace_did_change_configuration(
        types.DidChangeConfigurationParams(settings={"kaffee": {"maxLines": 1, "deadlineMs": 20_000}})
    )
    uri = open_doc(client, "Settings.java", "public class A {\n    void f() {\n        \n    }\n}\n")
    result = await inline(client, uri, types.Position(line=2, character=8))
    assert len(result.items) == 1 and result.items[0].insert_text.strip(), result.items
    assert "\n" not in result.items[0].insert_text  # maxLines=1: never a block
    assert len(client.messages) == before
    client.workspace_did_change_configuration(
        types.DidChangeConfigurationParams(settings={"maxLines": "many", "device": "gpu", "colour": "red"})
    )
    await client.wait_for_notification(types.WINDOW_SHOW_MESSAGE)
    await asyncio.sleep(0.2)
    texts = " ".join(m.message for m in client.messages[before:])
    assert "maxLines" in texts and "device" in texts and "colour" in texts
    assert all(m.type == types.MessageType.Warning for m in client.messages[before:])
    # still serving, with defaults for the bad values
    result = await complete(client, open_doc(client, "After.java", SOURCE), CURSOR)
    assert "println" in [i.label for i in result.items]
    client.workspace_did_change_configuration(
        types.DidChangeConfigurationParams(settings={"deadlineMs": 30_000})
    )


async def test_newer_request_supersedes_older(tiny_model_dir: Path) -> None:
    # slow model calls, so the older request is surely still decoding when the newer one arrives
    client = await start(tiny_model_dir, {"deadlineMs": 60_000}, env=_env(KAFFEE_STEP_DELAY_MS="100"))
    try:
        uri = open_doc(client, "Supersede.java", SOURCE)
        first = asyncio.ensure_future(inline(client, uri, CURSOR))
        second = asyncio.ensure_future(inline(client, uri, CURSOR))
        done = await asyncio.gather(first, second, return_exceptions=True)
        assert isinstance(done[0], JsonRpcException) and done[0].code == -32800, done[0]  # RequestCancelled
        assert isinstance(done[1], types.InlineCompletionList), done[1]
        assert done[1].items[0].insert_text.startswith("println("), done[1]
    finally:
        await stop(client)


async def test_request_during_shutdown_gets_an_error(tiny_model_dir: Path) -> None:
    # slow model calls, so the first request is surely still decoding when shutdown arrives
    client = await start(tiny_model_dir, {"deadlineMs": 30_000}, env=_env(KAFFEE_STEP_DELAY_MS="100"))
    try:
        uri = open_doc(client, "Main.java", SOURCE)
        pending = asyncio.ensure_future(inline(client, uri, CURSOR))
        await asyncio.sleep(0.3)
        await asyncio.wait_for(client.shutdown_async(None), 30)
        late = asyncio.ensure_future(inline(client, uri, CURSOR))
        results = await asyncio.gather(pending, late, return_exceptions=True)
        assert isinstance(results[0], JsonRpcException) and results[0].code == -32800, results[0]
        assert isinstance(results[1], JsonRpcException), results[1]
        client.exit(None)
        assert await asyncio.wait_for(client._server.wait(), 30) == 0
    finally:
        await client.stop()


async def test_invalid_initialization_options_warn_and_use_defaults(tiny_model_dir: Path) -> None:
    client = await start(
        tiny_model_dir, {"maxLines": -3, "deadlineMs": "soon", "workspaceContext": "yes", "modelPath": 7}
    )
    try:
        if not client.messages:
            await asyncio.wait_for(client.wait_for_notification(types.WINDOW_SHOW_MESSAGE), 30)
        await asyncio.sleep(0.5)
        texts = " ".join(m.message for m in client.messages)
        for key in ("maxLines", "deadlineMs", "workspaceContext", "modelPath"):
            assert key in texts, texts
        result = await complete(client, open_doc(client, "Main.java", SOURCE), CURSOR)
        assert "println" in [i.label for i in result.items]
    finally:
        await stop(client)


async def test_cancel_request_stops_work_in_progress(tiny_model_dir: Path) -> None:
    client = await start(tiny_model_dir, {"deadlineMs": 60_000}, env=_env(KAFFEE_STEP_DELAY_MS="700"))
    try:
        uri = open_doc(client, "Main.java", SOURCE)
        await inline(
            client, open_doc(client, "Warm.java", "class A {}\n"), types.Position(0, 10)
        )  # model loaded
        params = types.InlineCompletionParams(
            text_document=types.TextDocumentIdentifier(uri),
            position=CURSOR,
            context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Invoked),
        )
        future = asyncio.ensure_future(
            client.protocol.send_request_async(types.TEXT_DOCUMENT_INLINE_COMPLETION, params, msg_id="slow-1")
        )
        await asyncio.sleep(1.0)  # the model thread is now decoding, 700 ms per model call
        t0 = time.monotonic()
        client.protocol.notify(types.CANCEL_REQUEST, types.CancelParams(id="slow-1"))
        with pytest.raises(JsonRpcException) as err:
            await asyncio.wait_for(future, 30)
        assert err.value.code == -32800  # RequestCancelled
        # the worker stops within a decode step, so the next request is not stuck behind it
        client.workspace_did_change_configuration(
            types.DidChangeConfigurationParams(settings={"deadlineMs": 700})
        )
        result = await inline(client, uri, CURSOR)
        assert isinstance(result, types.InlineCompletionList)
        assert time.monotonic() - t0 < 5
    finally:
        await stop(client)


def _env(**extra: str) -> dict[str, str]:
    import os

    return {**os.environ, **extra}
