"""The ``lsp:COMMAND`` system: drive any stdio language server like an editor would.

The line and typing tasks ask ``textDocument/inlineCompletion``; the token task asks
``textDocument/completion``. Before each request the document is opened or replaced
(full-text ``didChange``) with the editor's view: text before the cursor plus the
text after it. Positions are UTF-16 columns, LSP's default encoding.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import shlex
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from kaffee.errors import KaffeeError
from kaffee.evaluation.lexer import lex
from kaffee.evaluation.lsp_client import LspClient, LspDied, LspError, LspTimeout
from kaffee.evaluation.system_base import (
    Context,
    RequestFailed,
    System,
    SystemSpec,
    SystemUnavailable,
    file_uri,
)

log = logging.getLogger(__name__)

MAX_RESTARTS = 2  # a server that crashes is restarted this many times, then given up
GIVE_UP_AFTER = 5  # consecutive time-outs before the remaining requests fail at once
_SNIPPET = re.compile(r"\$\{\d+:([^}]*)\}|\$\{\d+\}|\$\d+")


def lsp_argv(command: str) -> list[str]:
    """Split an lsp: command; a leading ``kaffee`` runs this interpreter's ``-m kaffee``."""
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise KaffeeError(f"lsp command {command!r} does not parse: {exc}") from exc
    if not argv:
        raise KaffeeError("lsp: needs a command")
    if argv[0] == "kaffee":
        argv = [sys.executable, "-m", "kaffee", *argv[1:]]
    return argv


def lsp_position(prefix: str) -> dict[str, int]:
    """LSP position (line, UTF-16 character) of the cursor after ``prefix``."""
    line = prefix.count("\n")
    last = prefix[prefix.rfind("\n") + 1 :]
    return {"line": line, "character": len(last.encode("utf-16-le")) // 2}


def _offset_of(text: str, pos: dict) -> int:
    """Character offset of an LSP position (UTF-16 columns) in ``text``."""
    lines = text.split("\n")
    line = min(max(0, int(pos.get("line", 0))), len(lines) - 1)
    offset = sum(len(x) + 1 for x in lines[:line])
    units = int(pos.get("character", 0))
    count = 0
    for ch in lines[line]:
        if count >= units:
            break
        count += 2 if ord(ch) > 0xFFFF else 1
        offset += 1
    return offset


def strip_snippet(text: str) -> str:
    return _SNIPPET.sub(lambda m: m.group(1) or "", text)


def _insert_text(item: dict, doc: str, cursor: int) -> str:
    """The text an item inserts at the cursor (drops what its range re-types before the cursor)."""
    text = item.get("insertText")
    if isinstance(text, dict):  # StringValue snippet
        text = strip_snippet(str(text.get("value", "")))
    edit = item.get("textEdit")
    if isinstance(edit, dict) and "newText" in edit:
        text = edit["newText"]
    if text is None:
        text = item.get("label", "")
    if item.get("insertTextFormat") == 2:
        text = strip_snippet(str(text))
    text = str(text)
    rng = item.get("range") or (edit.get("range") or edit.get("insert") if isinstance(edit, dict) else None)
    if isinstance(rng, dict) and "start" in rng:
        start = _offset_of(doc, rng["start"])
        if start < cursor:
            typed = doc[start:cursor]
            if text.startswith(typed):
                text = text[len(typed) :]
    return text


class LspSystem(System):
    capabilities = frozenset({"next_tokens", "complete"})

    def __init__(
        self,
        spec: SystemSpec,
        argv: list[str],
        timeout: float = 10.0,
        start_timeout: float = 60.0,
        workspace: str | None = None,
        init_options: dict | None = None,
    ):
        self.spec = spec
        self.label = spec.label or spec.text
        self.argv = argv
        self.timeout = timeout
        self.start_timeout = start_timeout
        self.init_options = init_options
        self._own_workspace = workspace is None
        self.workspace = Path(workspace or tempfile.mkdtemp(prefix="kaffee-eval-ws-"))
        self.client: LspClient | None = None
        self.restarts = 0
        self.timeouts_in_a_row = 0
        self._fresh = True  # the next request is the first since the server started (it may load a model)
        self._open: dict[str, tuple[int, str]] = {}  # uri -> (version, text)
        self._current_uri: str | None = None
        self._start()
        atexit.register(self.close)

    def fingerprint(self) -> str:
        return f"lsp:{' '.join(self.argv[1:] if self.argv[:2] == [self.argv[0], '-m'] else self.argv)}"

    # -- server life ------------------------------------------------------------------------------
    def _start(self) -> None:
        client = LspClient(self.argv, cwd=os.getcwd())
        try:
            client.start()
            result = client.request(
                "initialize",
                {
                    "processId": os.getpid(),
                    "clientInfo": {"name": "kaffee-eval", "version": "0.1.0"},
                    "rootUri": self.workspace.resolve().as_uri(),
                    "rootPath": str(self.workspace.resolve()),
                    "workspaceFolders": [{"uri": self.workspace.resolve().as_uri(), "name": "eval"}],
                    "initializationOptions": self.init_options,
                    "capabilities": {
                        "general": {"positionEncodings": ["utf-16"]},
                        "textDocument": {
                            "synchronization": {"didSave": False, "dynamicRegistration": False},
                            "completion": {
                                "completionItem": {"snippetSupport": False},
                                "contextSupport": True,
                            },
                            "inlineCompletion": {"dynamicRegistration": False},
                        },
                        "workspace": {"workspaceFolders": True, "configuration": True},
                    },
                },
                timeout=self.start_timeout,
            )
            client.notify("initialized", {})
        except (LspDied, LspTimeout, LspError) as exc:
            note = client.stderr_tail()
            client.close(timeout=1.0)
            if client.proc is not None and client.proc.poll() is None:
                client.proc.kill()
            detail = f"{exc}" + (f"\n{note}" if note and note not in str(exc) else "")
            raise SystemUnavailable(f"the language server did not start: {detail}") from exc
        self.client = client
        self.server_capabilities = (result or {}).get("capabilities", {}) if isinstance(result, dict) else {}
        self._open.clear()
        self._current_uri = None
        self._fresh = True

    def _ensure_running(self) -> LspClient:
        if self.client is not None and self.client.alive():
            return self.client
        note = self.client.death_note() if self.client else "not started"
        if self.restarts >= MAX_RESTARTS:
            raise RequestFailed(f"language server is down ({note.splitlines()[0]})")
        self.restarts += 1
        log.warning("%s: %s; restarting it (%d/%d)", self.label, note, self.restarts, MAX_RESTARTS)
        try:
            self._start()
        except SystemUnavailable as exc:
            raise RequestFailed(str(exc)) from exc
        assert self.client is not None
        return self.client

    def process_id(self) -> int | None:
        client = self.client
        return client.proc.pid if client is not None and client.proc is not None and client.alive() else None

    def close(self) -> None:
        if self.client is not None:
            try:
                self.client.close()
            except Exception:  # noqa: BLE001 - closing must never fail the run
                pass
            self.client = None
        if self._own_workspace:
            shutil.rmtree(self.workspace, ignore_errors=True)

    # -- documents ----------------------------------------------------------------------------------
    def _sync(self, client: LspClient, ctx: Context) -> str:
        uri = file_uri(self.workspace, ctx.project, ctx.path)
        text = ctx.text
        if self._current_uri is not None and self._current_uri != uri:
            client.notify("textDocument/didClose", {"textDocument": {"uri": self._current_uri}})
            self._open.pop(self._current_uri, None)
        self._current_uri = uri
        if uri not in self._open:
            client.notify(
                "textDocument/didOpen",
                {"textDocument": {"uri": uri, "languageId": "java", "version": 1, "text": text}},
            )
            self._open[uri] = (1, text)
        elif self._open[uri][1] != text:
            version = self._open[uri][0] + 1
            client.notify(
                "textDocument/didChange",
                {"textDocument": {"uri": uri, "version": version}, "contentChanges": [{"text": text}]},
            )
            self._open[uri] = (version, text)
        return uri

    def _request(self, method: str, ctx: Context, extra: dict) -> Any:
        if self.timeouts_in_a_row >= GIVE_UP_AFTER:
            raise RequestFailed(f"skipped: the server missed {GIVE_UP_AFTER} time-outs in a row")
        client = self._ensure_running()
        timeout = max(self.timeout, self.start_timeout) if self._fresh else self.timeout
        self._fresh = False
        try:
            uri = self._sync(client, ctx)
            result = client.request(
                method,
                {"textDocument": {"uri": uri}, "position": lsp_position(ctx.prefix), **extra},
                timeout=timeout,
            )
        except LspTimeout as exc:
            self.timeouts_in_a_row += 1
            raise RequestFailed(str(exc)) from exc
        except LspDied as exc:
            self._open.clear()
            raise RequestFailed(str(exc).splitlines()[0]) from exc
        except LspError as exc:
            raise RequestFailed(str(exc)) from exc
        self.timeouts_in_a_row = 0
        return result

    # -- questions ------------------------------------------------------------------------------------
    def next_tokens(self, ctx: Context, k: int = 10) -> list[str]:
        """The completion list read as ranked whole tokens.

        Items that insert exactly one Java token come first, in the server's order
        (sortText, then list order); the first tokens of longer items (a whole-line
        item, a call with its parentheses) follow. Duplicates count once.
        """
        if self.server_capabilities and "completionProvider" not in self.server_capabilities:
            raise RequestFailed("the server has no completionProvider")
        result = self._request("textDocument/completion", ctx, {"context": {"triggerKind": 1}})
        items = result.get("items", []) if isinstance(result, dict) else (result or [])
        keyed = [(str(it.get("sortText") or it.get("label", "")), i, it) for i, it in enumerate(items)]
        keyed.sort(key=lambda x: (x[0], x[1]))
        doc, cursor = ctx.text, len(ctx.prefix)
        single: list[str] = []
        longer: list[str] = []
        for _, _, item in keyed:
            text = _insert_text(item, doc, cursor).strip()
            if not text:
                continue
            toks = lex(text)
            if len(toks) == 1 and toks[0].text == text:
                single.append(text)
            else:
                longer.append(toks[0].text if toks else text.split()[0])
        return list(dict.fromkeys(single + longer))[:k]

    def complete(self, ctx: Context) -> str:
        if self.server_capabilities and "inlineCompletionProvider" not in self.server_capabilities:
            raise RequestFailed("the server has no inlineCompletionProvider")
        result = self._request("textDocument/inlineCompletion", ctx, {"context": {"triggerKind": 2}})
        items = result.get("items", []) if isinstance(result, dict) else (result or [])
        if not items:
            return ""
        return _insert_text(items[0], ctx.text, len(ctx.prefix))
