"""End to end: the bundled model, over LSP, completes a method that only another workspace file declares."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import pytest_asyncio
from kaffee.models import default_model_dir
from lsprotocol import types
from pytest_lsp import LanguageClient
from test_lsp import start, stop  # one way to start the real server and answer its registrations

pytestmark = pytest.mark.asyncio(loop_scope="module")

INVENTORY = """package shop;

import java.util.HashMap;
import java.util.Map;

public class Inventory {
    private final Map<String, Integer> stock = new HashMap<>();

    public void restockShelfQuietly(String sku, int amount) {
        stock.merge(sku, amount, Integer::sum);
    }

    public int countOnShelf(String sku) {
        return stock.getOrDefault(sku, 0);
    }
}
"""
MAIN = """package shop;

public class Main {
    public static void main(String[] args) {
        Inventory inventory = new Inventory();
        inventory.
    }
}
"""
CURSOR = types.Position(line=5, character=len("        inventory."))
MEMBERS = {"restockShelfQuietly", "countOnShelf"}  # names no model can guess without Inventory.java


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shop")
    (root / "src" / "shop").mkdir(parents=True)
    (root / "src" / "shop" / "Inventory.java").write_text(INVENTORY)
    return root


async def start_with(root: Path, project: bool) -> LanguageClient:
    options = {"deadlineMs": 60_000, "workspaceContext": project}
    return await start(default_model_dir(), options, root=root)


async def labels_at_dot(client: LanguageClient, root: Path, until: set[str], wait_s: float) -> list[str]:
    """Completion labels after ``inventory.``, asked again (for at most ``wait_s``) while the
    workspace is still being scanned and indexed in the background."""
    uri = (root / "src" / "shop" / "Main.java").as_uri()
    client.text_document_did_open(
        types.DidOpenTextDocumentParams(
            types.TextDocumentItem(uri=uri, language_id="java", version=1, text=MAIN)
        )
    )
    params = types.CompletionParams(text_document=types.TextDocumentIdentifier(uri), position=CURSOR)
    deadline = time.monotonic() + wait_s
    while True:
        result = await asyncio.wait_for(client.text_document_completion_async(params), 120)
        labels = [item.label for item in result.items]
        if until & set(labels[:5]) or time.monotonic() > deadline:
            return labels
        await asyncio.sleep(0.5)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def with_project(workspace: Path):
    client = await start_with(workspace, project=True)
    yield client
    await stop(client)


async def test_member_declared_in_another_file_is_suggested(with_project: LanguageClient, workspace: Path):
    labels = await labels_at_dot(with_project, workspace, MEMBERS, wait_s=60)
    assert MEMBERS & set(labels[:3]), labels


async def test_without_project_context_the_member_is_not_known(workspace: Path):
    client = await start_with(workspace, project=False)
    try:
        labels = await labels_at_dot(client, workspace, set(), wait_s=0)
    finally:
        await stop(client)
    assert labels, "no completion items at all"
    assert not MEMBERS & set(labels), labels


async def test_a_file_created_on_disk_is_indexed_from_the_watched_files_event(
    with_project: LanguageClient, workspace: Path
):
    assert types.WORKSPACE_DID_CHANGE_WATCHED_FILES in getattr(with_project, "registrations", [])
    ledger = workspace / "src" / "shop" / "Ledger.java"
    ledger.write_text(
        "package shop;\n\npublic class Ledger {\n    public void postEntryTwiceOver(long cents) {}\n}\n"
    )
    with_project.workspace_did_change_watched_files(
        types.DidChangeWatchedFilesParams(
            changes=[types.FileEvent(uri=ledger.as_uri(), type=types.FileChangeType.Created)]
        )
    )
    text = MAIN.replace(
        "Inventory inventory = new Inventory();\n        inventory.",
        "Ledger ledger = new Ledger();\n        ledger.",
    )
    uri = (workspace / "src" / "shop" / "Books.java").as_uri()
    with_project.text_document_did_open(
        types.DidOpenTextDocumentParams(
            types.TextDocumentItem(uri=uri, language_id="java", version=1, text=text)
        )
    )
    pos = types.Position(line=5, character=len("        ledger."))
    params = types.CompletionParams(text_document=types.TextDocumentIdentifier(uri), position=pos)
    deadline = time.monotonic() + 30
    while True:
        result = await asyncio.wait_for(with_project.text_document_completion_async(params), 120)
        labels = [item.label for item in result.items]
        if "postEntryTwiceOver" in labels[:3] or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    assert "postEntryTwiceOver" in labels[:3], labels
