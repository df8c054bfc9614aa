"""The Kaffee language server (pygls 2.x): thin, typed handlers over the completion engine.

Handlers parse the request, hand the model work to a single worker thread (never the
event loop), and format the answer. Documents live in :class:`DocumentStore` (UTF-16
positions, clamped). A newer request for a document supersedes an older one of the
same kind, and ``$/cancelRequest`` stops work between decode steps. Reading, checking
and answering malformed messages is ``server/transport.py``'s (the one adapter to
pygls' internals), so no message takes the server down or goes unanswered.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from kaffee.errors import KaffeeError
from kaffee.server.documents import ENCODINGS, DocumentStore, clamp_position
from kaffee.server.engine import Completion, CompletionEngine, EngineOptions, TokenSuggestion
from kaffee.server.java_tokens import first_token, trailing_word
from kaffee.server.memory import trim_heap
from kaffee.server.settings import ServerSettings, parse_settings
from kaffee.server.transport import DocumentSyncProtocol
from kaffee.server.workspace import SKIP_DIRS, ScanLimits, read_java_file, scan_java_files
from lsprotocol import types
from pygls.exceptions import JsonRpcRequestCancelled
from pygls.lsp.server import LanguageServer
from pygls.uris import to_fs_path

log = logging.getLogger(__name__)

VERSION = "0.1.0"
TRIGGER_CHARACTERS = [".", "@", "(", ":"]  # member access, annotations, arguments, method references
TOKEN_ITEMS = 10  # next-token items in a completion list
LABEL_CHARS = 80  # longer line suggestions are shortened in the list's label
TRIM_AFTER_TOKENS = 256  # give freed memory back to the OS once this many tokens were encoded
KIND = {
    "keyword": types.CompletionItemKind.Keyword,
    "identifier": types.CompletionItemKind.Text,
    "literal": types.CompletionItemKind.Value,
    "operator": types.CompletionItemKind.Operator,
    "separator": types.CompletionItemKind.Operator,
}


@dataclass
class Cursor:
    """A request's document and cursor, resolved (and clamped) on the event loop."""

    uri: str
    offset: int  # code-point offset in the text
    prefix: str  # text before the cursor
    suffix: str  # text after the cursor
    position: types.Position  # the cursor in the client's units (after clamping)
    lead_start: types.Position  # start of the word the cursor ends (== position when none)


class KaffeeLanguageServer(LanguageServer):
    """Owns the documents, the settings, the engine and the one model worker thread."""

    def __init__(
        self,
        model_dir: Path | None = None,
        device: str | None = None,
        engine_options: EngineOptions | None = None,
    ):
        super().__init__(
            "kaffee",
            VERSION,
            protocol_cls=DocumentSyncProtocol,
            text_document_sync_kind=types.TextDocumentSyncKind.Incremental,
        )
        self.cli_model_dir = model_dir  # --model; settings.model_path overrides it
        self.cli_device = device  # --device; settings.device overrides it when given
        self.engine_options = engine_options or EngineOptions()
        self.cli_options = replace(
            self.engine_options
        )  # --engine-option: settings can turn features off, not on
        self.documents = DocumentStore()
        self.settings = ServerSettings(device=device or ServerSettings.device)
        self.engine: CompletionEngine | None = None
        self.engine_error: str | None = None
        self._engine_key: tuple[str, str] | None = None
        self._worker = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="kaffee-model")
        self._inflight: dict[tuple[str, str], threading.Event] = {}
        self.encoding = "utf-16"
        self.shutting_down = False
        self._trimmed_at = 0  # engine.tokens_advanced at the last heap trim
        self._told_degraded = False  # the user was told that suggestions come from the n-gram fallback

    # -- errors ----------------------------------------------------------------------------------
    def report_server_error(self, error: Exception, source) -> None:
        """Log; never pop up dialogs (pygls' default shows every notification's error to the user)."""
        log.error("error in server (%s): %s", getattr(source, "__name__", source), error)

    def check_engine_health(self) -> None:
        """Tell the user when suggestions start, or stop, coming from the n-gram fallback."""
        engine = self.engine
        degraded = engine is not None and engine.degraded
        if degraded == self._told_degraded:
            return
        self._told_degraded = degraded
        if degraded:
            reason = engine.stats.fallback_reason
            self.notify_user(f"{reason}; suggestions come from an n-gram model until the model works again")
        else:
            self.notify_user("the model works again; suggestions come from it", types.MessageType.Info)

    def notify_user(self, message: str, kind: types.MessageType = types.MessageType.Warning) -> None:
        log.warning("%s", message)
        try:
            self.window_show_message(types.ShowMessageParams(type=kind, message=f"Kaffee: {message}"))
        except Exception:
            log.debug("could not show a message", exc_info=True)

    # -- settings and the engine ---------------------------------------------------------------------
    def apply_settings(self, raw: Any, initial: bool = False) -> None:
        base = (
            self.settings if not initial else ServerSettings(device=self.cli_device or ServerSettings.device)
        )
        settings, problems = parse_settings(raw, base)
        for p in problems:
            self.notify_user(p)
        turned_on = settings.workspace_context and not self.settings.workspace_context
        self.settings = settings
        cache = settings.workspace_context and self.cli_options.workspace_cache
        project = settings.workspace_context and self.cli_options.project_context
        self.engine_options = replace(
            self.engine_options, max_lines=settings.max_lines, workspace_cache=cache, project_context=project
        )
        if self.engine is not None:
            self.engine.options.max_lines = settings.max_lines
            self.engine.options.workspace_cache = cache
            self.engine.options.project_context = project
        if not initial:
            self.load_engine()
            if turned_on and self.engine is not None:
                threading.Thread(
                    target=self._scan_workspace, args=(self.engine,), name="kaffee-scan", daemon=True
                ).start()

    def model_dir(self) -> Path:
        if self.settings.model_path:
            return Path(self.settings.model_path).expanduser()
        if self.cli_model_dir is not None:
            return self.cli_model_dir
        from kaffee.models import default_model_dir

        return default_model_dir()

    def load_engine(self) -> None:
        """(Re)load the engine on the worker thread when the model path or device changed."""
        try:
            path = self.model_dir()
        except KaffeeError as exc:
            self.engine_error = str(exc)
            self.notify_user(f"no model: {exc}", types.MessageType.Error)
            return
        key = (str(path), self.settings.device)
        if key == self._engine_key:
            return
        self._engine_key = key
        self._worker.submit(self._load, path, self.settings.device)

    def _load(self, path: Path, device: str) -> None:
        t0 = time.perf_counter()
        try:
            engine = CompletionEngine.from_model_dir(path, replace(self.engine_options), device=device)
        except Exception as exc:  # KaffeeError for a missing or foreign directory; anything else is a bug
            self.engine_error = f"cannot load the model {path}: {exc}"
            self.notify_user(self.engine_error, types.MessageType.Error)
            return
        for uri, doc in list(self.documents.docs.items()):
            engine.update_document(uri, doc.text)
        # settings that changed while the model loaded
        for name in ("max_lines", "workspace_cache", "project_context"):
            setattr(engine.options, name, getattr(self.engine_options, name))
        self.engine, self.engine_error = engine, None
        trim_heap()
        self._told_degraded = engine.degraded
        if engine.degraded:
            self.notify_user(f"{engine.stats.fallback_reason}; suggestions come from an n-gram model")
        log.info(
            "model %s loaded on %s in %.1f s (%s)",
            path,
            device,
            time.perf_counter() - t0,
            type(engine.model).__name__,
        )
        if self.settings.workspace_context:
            threading.Thread(
                target=self._scan_workspace, args=(engine,), name="kaffee-scan", daemon=True
            ).start()

    def _scan_workspace(self, engine: CompletionEngine) -> None:
        try:
            roots = []
            try:
                ws = self.workspace
            except RuntimeError:  # pygls: not initialized
                ws = None
            if ws is not None:
                for folder in ws.folders.values():
                    path = to_fs_path(folder.uri)
                    if path:
                        roots.append(Path(path))
                if not roots and ws.root_path:
                    roots.append(Path(ws.root_path))
            t0 = time.perf_counter()
            files = scan_java_files(roots)
            engine.set_workspace_files(files)
            engine.project.refresh(wait=True)  # index here, on the scan thread
            log.info(
                "workspace: %d Java files scanned and indexed in %.1f s (index about %.0f MB)",
                len(files),
                time.perf_counter() - t0,
                engine.project.memory_bytes() / 1e6,
            )
        except Exception:
            log.exception("scanning the workspace failed")

    # -- documents ---------------------------------------------------------------------------------
    def on_open(self, params: types.DidOpenTextDocumentParams) -> None:
        doc = params.text_document
        self.documents.open(doc.uri, doc.text, doc.version)
        if self.engine is not None:
            self.engine.update_document(doc.uri, doc.text)

    def on_change(self, params: types.DidChangeTextDocumentParams) -> None:
        uri = params.text_document.uri
        if uri not in self.documents:
            log.warning("didChange for unknown document %s ignored", uri)
            return
        doc = self.documents.get(uri)
        for change in params.content_changes:
            if isinstance(change, types.TextDocumentContentChangePartial):
                r = change.range
                doc.apply_change(
                    change.text,
                    (r.start.line, r.start.character),
                    (r.end.line, r.end.character),
                    self.encoding,
                )
            else:
                doc.apply_change(change.text)
        doc.version = params.text_document.version
        for kind in ("completion", "inline"):
            ev = self._inflight.get((uri, kind))
            if ev is not None:
                ev.set()  # its answer is stale now
        if self.engine is not None:
            self.engine.update_document(uri, doc.text)

    def on_watched_files(self, params: types.DidChangeWatchedFilesParams) -> None:
        """Java files created, changed or deleted on disk: update the project index off the event loop."""
        changes = [
            (c.uri, c.type)
            for c in params.changes
            if c.uri.endswith(".java")
            and c.uri not in self.documents  # an open document's text is the editor's
        ]
        engine = self.engine
        if not changes or engine is None or not self.settings.workspace_context:
            return

        def apply() -> None:
            limit = ScanLimits().max_file_bytes
            for uri, kind in changes:
                try:
                    path = to_fs_path(uri)
                    if path and any(p in SKIP_DIRS or p.startswith(".") for p in Path(path).parts[1:-1]):
                        continue  # build output, VCS folders: not scanned either
                    text = (
                        None
                        if kind == types.FileChangeType.Deleted or not path
                        else read_java_file(Path(path), limit)
                    )
                    if text is None:
                        engine.forget_file(uri)
                    else:
                        engine.workspace_file(uri, text)
                except Exception:  # a file that vanished while we read it, a bad URI: skip it
                    log.debug("watched file %s not applied", uri, exc_info=True)

        threading.Thread(target=apply, name="kaffee-watch", daemon=True).start()

    def on_close(self, params: types.DidCloseTextDocumentParams) -> None:
        self.documents.close(params.text_document.uri)
        if self.engine is not None:
            self.engine.remove_document(params.text_document.uri)

    def cursor(self, uri: str, position: types.Position) -> Cursor | None:
        if uri not in self.documents:
            log.warning("request for unknown document %s: answering nothing", uri)
            return None
        doc = self.documents.get(uri)
        offset = doc.offset_at(position.line, position.character, self.encoding)
        prefix = doc.text[:offset]
        lead = trailing_word(prefix[-256:])
        line, col = doc.position_at(offset, self.encoding)
        lline, lcol = doc.position_at(offset - len(lead), self.encoding)
        return Cursor(
            uri, offset, prefix, doc.text[offset:], types.Position(line, col), types.Position(lline, lcol)
        )

    # -- running model work -----------------------------------------------------------------------
    async def run_model(self, uri: str, kind: str, job):
        """Run ``job(cancel_event)`` on the model thread; a newer request of the same kind supersedes it."""
        key = (uri, kind)
        older = self._inflight.get(key)
        if older is not None:
            older.set()
        cancel = threading.Event()
        self._inflight[key] = cancel
        try:
            result = await asyncio.get_running_loop().run_in_executor(self._worker, job, cancel)
        except asyncio.CancelledError:
            cancel.set()  # $/cancelRequest: stop the decode loop too
            raise
        except RuntimeError as exc:  # the worker was shut down
            raise JsonRpcRequestCancelled(f"the server is shutting down ({exc})") from exc
        finally:
            if self._inflight.get(key) is cancel:
                del self._inflight[key]
        self.check_engine_health()
        engine = self.engine
        if engine is not None and engine.tokens_advanced - self._trimmed_at > TRIM_AFTER_TOKENS:
            self._trimmed_at = engine.tokens_advanced
            self._worker.submit(trim_heap)  # after this answer, before the next request's work
        if cancel.is_set():
            raise JsonRpcRequestCancelled("superseded by a newer request or an edit")
        return result

    def deadline(self) -> float:
        return time.monotonic() + self.settings.deadline_ms / 1000.0

    def shutdown_work(self) -> None:
        self.shutting_down = True
        for ev in list(self._inflight.values()):
            ev.set()
        self._worker.shutdown(wait=False, cancel_futures=True)


# -- formatting answers ---------------------------------------------------------------------------
def completion_items(
    cur: Cursor, tokens: list[TokenSuggestion], line: Completion | None
) -> list[types.CompletionItem]:
    """Next-token items (best first) and, second, the line or block suggestion."""
    lead = trailing_word(cur.prefix[-256:])
    items = []
    for rank, tok in enumerate(tokens):
        lex, _ = first_token(tok.text)
        start = cur.lead_start if tok.attached else cur.position
        items.append(
            types.CompletionItem(
                label=tok.text,
                kind=KIND.get(lex.kind if lex else "", types.CompletionItemKind.Text),
                detail=f"{100 * pow(2.718281828, tok.logprob):.0f}%",
                sort_text=f"{rank:04d}",
                filter_text=tok.text,
                text_edit=types.TextEdit(range=types.Range(start, cur.position), new_text=tok.text),
                insert_text_format=types.InsertTextFormat.PlainText,
            )
        )
    if line is not None and line.text.strip() and (not tokens or line.text.strip() != tokens[0].text):
        attached = bool(lead) and line.text[:1].isalnum()
        new_text = (lead + line.text) if attached else line.text
        first = new_text.strip().split("\n")[0]
        label = (
            first if len(first) <= LABEL_CHARS and "\n" not in new_text.strip() else first[:LABEL_CHARS] + "…"
        )
        items.append(
            types.CompletionItem(
                label=label,
                kind=types.CompletionItemKind.Snippet if "\n" in new_text else types.CompletionItemKind.Text,
                detail="Kaffee: rest of the line" if "\n" not in new_text else "Kaffee: block",
                sort_text="0000~" if tokens else "0000",
                filter_text=new_text.strip(),
                text_edit=types.TextEdit(
                    range=types.Range(cur.lead_start if attached else cur.position, cur.position),
                    new_text=new_text,
                ),
                insert_text_format=types.InsertTextFormat.PlainText,
            )
        )
    return items


def prepare_params(method: str, params: Any) -> None:
    """Raw params, fixed before pygls types them: didChange positions outside LSP's range are clamped.

    lsprotocol rejects a negative or >= 2**31 coordinate, which would drop the whole edit
    and leave our text different from the editor's; clamped, it lands where
    ``Document.offset_at`` puts any out-of-range position.
    """
    if method != types.TEXT_DOCUMENT_DID_CHANGE or not isinstance(params, dict):
        return
    changes = params.get("contentChanges")
    for change in changes if isinstance(changes, list) else []:
        rng = change.get("range") if isinstance(change, dict) else None
        for pos in (rng.get("start"), rng.get("end")) if isinstance(rng, dict) else ():
            if isinstance(pos, dict) and all(
                isinstance(pos.get(k), int) and not isinstance(pos.get(k), bool)
                for k in ("line", "character")
            ):
                pos["line"], pos["character"] = clamp_position(pos["line"], pos["character"])


def build_server(
    model_dir: Path | None = None, device: str | None = None, engine_options: EngineOptions | None = None
) -> KaffeeLanguageServer:
    """A language server with Kaffee's features registered."""
    server = KaffeeLanguageServer(model_dir, device, engine_options)

    @server.feature(types.INITIALIZE)
    def initialize(ls: KaffeeLanguageServer, params: types.InitializeParams) -> None:
        enc = ls.workspace.position_encoding  # pygls sets the workspace up before this handler
        enc = getattr(enc, "value", enc)
        ls.encoding = enc if enc in ENCODINGS else "utf-16"
        ls.apply_settings(params.initialization_options, initial=True)

    @server.feature(types.INITIALIZED)
    def initialized(ls: KaffeeLanguageServer, params: types.InitializedParams) -> None:
        ls.load_engine()
        caps = ls.client_capabilities.workspace
        watched = caps.did_change_watched_files if caps is not None else None
        if watched is not None and watched.dynamic_registration:
            options = types.DidChangeWatchedFilesRegistrationOptions(
                watchers=[types.FileSystemWatcher(glob_pattern="**/*.java")]
            )
            ls.client_register_capability(
                types.RegistrationParams(
                    registrations=[
                        types.Registration(
                            id="kaffee-java-files",
                            method=types.WORKSPACE_DID_CHANGE_WATCHED_FILES,
                            register_options=options,
                        )
                    ]
                )
            )

    @server.feature(types.WORKSPACE_DID_CHANGE_WATCHED_FILES)
    def did_change_watched_files(ls: KaffeeLanguageServer, params: types.DidChangeWatchedFilesParams) -> None:
        ls.on_watched_files(params)

    @server.feature(types.WORKSPACE_DID_CHANGE_CONFIGURATION)
    def did_change_configuration(
        ls: KaffeeLanguageServer, params: types.DidChangeConfigurationParams
    ) -> None:
        ls.apply_settings(params.settings)

    @server.feature(types.SHUTDOWN)
    def shutdown(ls: KaffeeLanguageServer, params: None) -> None:
        ls.shutdown_work()

    @server.feature(
        types.TEXT_DOCUMENT_COMPLETION, types.CompletionOptions(trigger_characters=TRIGGER_CHARACTERS)
    )
    async def completion(ls: KaffeeLanguageServer, params: types.CompletionParams) -> types.CompletionList:
        cur = ls.cursor(params.text_document.uri, params.position)
        if cur is None:
            return types.CompletionList(is_incomplete=False, items=[])
        deadline = ls.deadline()

        def job(cancel: threading.Event):
            engine = ls.engine
            if engine is None:
                return [], None
            tokens = engine.next_tokens(
                cur.prefix, cur.suffix, k=TOKEN_ITEMS, deadline=deadline, cancel=cancel, document=cur.uri
            )
            line = engine.complete(cur.prefix, cur.suffix, deadline=deadline, cancel=cancel, document=cur.uri)
            return tokens, line

        tokens, line = await ls.run_model(cur.uri, "completion", job)
        return types.CompletionList(is_incomplete=False, items=completion_items(cur, tokens, line))

    @server.feature(types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionOptions())
    async def inline_completion(
        ls: KaffeeLanguageServer, params: types.InlineCompletionParams
    ) -> types.InlineCompletionList:
        cur = ls.cursor(params.text_document.uri, params.position)
        if cur is None:
            return types.InlineCompletionList(items=[])
        deadline = ls.deadline()

        def job(cancel: threading.Event) -> Completion | None:
            engine = ls.engine
            if engine is None:
                return None
            return engine.complete(cur.prefix, cur.suffix, deadline=deadline, cancel=cancel, document=cur.uri)

        result = await ls.run_model(cur.uri, "inline", job)
        if result is None or not result.text:
            return types.InlineCompletionList(items=[])
        item = types.InlineCompletionItem(
            insert_text=result.text, range=types.Range(cur.position, cur.position)
        )
        return types.InlineCompletionList(items=[item])

    return server
