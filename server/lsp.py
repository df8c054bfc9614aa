"""The Kaffee language server (pygls 2.x): thin, typed handlers over the completion engine.

Handlers parse the request, hand the model work to a single worker thread (never the
event loop), and format the answer. Documents live in :class:`DocumentStore` (UTF-16
positions, clamped). A newer request for a document supersedes an older one of the
same kind; a request that comes while the model still works on the previous one waits
for it, up to ``debounceMs`` (superseded meanwhile, it never reaches the model), and that
work goes on when the user only typed on at its cursor, so its suggestion and KV cache
serve the next request; ``$/cancelRequest`` stops work between decode steps. Reading, checking and
answering malformed messages is ``server/transport.py``'s (the one adapter to pygls'
internals), so no message takes the server down or goes unanswered.

The server tells the client how it is doing: ``$/progress`` while the model loads and
the workspace is indexed (when the client advertises ``window.workDoneProgress``), and a
``kaffee/status`` notification (state, model, backend, device, last latency) on every
change of state and at most every few seconds for the latency; the ``kaffee/counters``
request answers the work counters (requests, debounced, superseded, model calls). Every
suggestion carries the ``kaffee.accepted`` command; clients run it on accept, and
``server/stats.py`` counts it into the local statistics file (off with the ``stats``
setting).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import threading
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from kaffee.errors import KaffeeError
from kaffee.server.documents import ENCODINGS, DocumentStore, clamp_position
from kaffee.server.engine import Completion, CompletionEngine, EngineOptions, TokenSuggestion
from kaffee.server.java_tokens import first_token, trailing_word
from kaffee.server.memory import trim_heap
from kaffee.server.remote import RemoteBackend, RemoteConfig, parse_backend
from kaffee.server.settings import ServerSettings, parse_settings
from kaffee.server.stats import StatsRecorder, stats_path
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
STATUS_METHOD = "kaffee/status"
STATUS_INTERVAL_S = 3.0  # a latency-only status update waits at least this long after the last one
COUNTERS_METHOD = "kaffee/counters"  # a request: the server's work counters (benchmarks, tests)
ACCEPT_COMMAND = "kaffee.accepted"  # arguments: [offer id, feature, inserted characters]
FALLBACK_MODEL = "n-gram fallback"  # the model name in the statistics for answers from the fallback


class WorkProgress:
    """One server-initiated ``$/progress`` (create, begin, report, end), through pygls' public API.

    Nothing is sent before the client answered ``window/workDoneProgress/create``; an
    ``end`` that comes first is sent right after the ``begin``. Safe from any thread.
    """

    def __init__(self, ls: KaffeeLanguageServer, title: str, message: str | None = None):
        self._ls = ls
        self._title = title
        self._message = message
        self._token = f"kaffee-{uuid.uuid4().hex[:12]}"
        self._lock = threading.Lock()
        self._created = False
        self._ended: str | None = None  # the end message, once end() was called
        self.enabled = ls.client_supports_progress()
        if self.enabled:
            ls.call_on_loop(self._create)

    def _create(self) -> None:
        try:
            self._ls.work_done_progress.create(self._token, callback=self._on_created)
        except Exception:
            log.debug("could not create a progress token", exc_info=True)
            self.enabled = False

    def _on_created(self, *args: Any) -> None:
        with self._lock:
            self._created = True
            ended = self._ended
        progress = self._ls.work_done_progress
        progress.begin(self._token, types.WorkDoneProgressBegin(title=self._title, message=self._message))
        if ended is not None:
            progress.end(self._token, types.WorkDoneProgressEnd(message=ended or None))

    def report(self, message: str) -> None:
        with self._lock:
            ok = self.enabled and self._created and self._ended is None
        if ok:
            self._ls.work_done_progress.report(self._token, types.WorkDoneProgressReport(message=message))

    def end(self, message: str = "") -> None:
        with self._lock:
            if not self.enabled or self._ended is not None:
                return
            self._ended = message
            created = self._created
        if created:
            self._ls.work_done_progress.end(self._token, types.WorkDoneProgressEnd(message=message or None))


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
        remote: RemoteConfig | None = None,
    ):
        super().__init__(
            "kaffee",
            VERSION,
            protocol_cls=DocumentSyncProtocol,
            text_document_sync_kind=types.TextDocumentSyncKind.Incremental,
        )
        self.cli_model_dir = model_dir  # --model; settings.model_path overrides it
        self.cli_device = device  # --device; settings.device overrides it when given
        self.cli_remote = remote  # --backend; the backend setting overrides it
        self._remote_config: RemoteConfig | None = None  # what the engine's backend was built from
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
        self._inflight: dict[tuple[str, str], _Request] = {}  # the newest request per (uri, kind)
        self._submitted: set[_Request] = set()  # work on the model thread (running or queued), until it ends
        self.model_busy_s = 0.0  # time the model thread spent on request jobs (kaffee/counters' modelMs)
        self.counters: collections.Counter[str] = collections.Counter()  # answered by kaffee/counters
        self.encoding = "utf-16"
        self.shutting_down = False
        self._trimmed_at = 0  # engine.tokens_advanced at the last heap trim
        self._told_degraded = False  # the user was told that suggestions come from the n-gram fallback
        self._loaded_key: tuple[str, str] | None = None  # the last _engine_key a load finished for
        self._loop: asyncio.AbstractEventLoop | None = None
        self.stats = StatsRecorder(stats_path())
        self._status_lock = threading.Lock()
        self._status_sent: dict[str, Any] | None = None
        self._status_sent_at = 0.0
        self._status_timer: threading.Timer | None = None
        self.last_latency_ms: float | None = None

    # -- errors ----------------------------------------------------------------------------------
    def report_server_error(self, error: Exception, source) -> None:
        """Log; never pop up dialogs (pygls' default shows every notification's error to the user)."""
        log.error("error in server (%s): %s", getattr(source, "__name__", source), error)

    def check_engine_health(self) -> None:
        """Tell the user when suggestions start, or stop, coming from the n-gram fallback."""
        engine = self.engine
        remote = getattr(engine, "remote", None)  # an engine stand-in may have none
        notice = remote.take_notice() if remote is not None else None
        if notice is not None:  # the backend went down or came back: once each time
            message, good = notice
            self.send_status()
            self.notify_user(message, types.MessageType.Info if good else types.MessageType.Warning)
        degraded = engine is not None and engine.degraded
        if degraded == self._told_degraded:
            return
        self._told_degraded = degraded
        self.send_status()
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

    # -- status and progress ---------------------------------------------------------------------
    def call_on_loop(self, fn) -> None:
        """Run ``fn`` on the event loop thread (pygls' requests are sent from there)."""
        loop = self._loop
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if loop is None or running is loop:
            fn()
        else:
            loop.call_soon_threadsafe(fn)

    def client_supports_progress(self) -> bool:
        try:
            window = self.client_capabilities.window
        except Exception:  # not initialized
            return False
        return bool(window is not None and window.work_done_progress)

    def status(self) -> dict[str, Any]:
        """The ``kaffee/status`` params: loading, ready, fallback, error or disabled, and what serves."""
        engine = self.engine
        model = self._engine_key[0] if self._engine_key else None
        state, message, backend, device = "ready", None, None, self.settings.device
        if engine is not None:
            m = getattr(engine, "model", None)
            if engine.degraded:
                backend = "ngram"
            elif m is not None:
                q = getattr(m, "quantize", None)
                backend = type(m).__name__ + (f" {q}" if q and q != "none" else "")
            dev = getattr(m, "device", None) if m is not None and not engine.degraded else None
            device = str(dev) if dev is not None else device
            remote = getattr(engine, "remote", None)
            if remote is not None and remote.up:
                backend, device = f"remote {remote.describe()}", "remote"
        if not self.settings.enable:
            state = "disabled"
        elif self.engine_error is not None:
            state, message = "error", self.engine_error
        elif self._engine_key is not None and self._loaded_key != self._engine_key:
            state = "loading"
        elif engine is None:
            state = "loading"
        elif engine.degraded:
            state, message = "fallback", engine.stats.fallback_reason
        latency = round(self.last_latency_ms, 1) if self.last_latency_ms is not None else None
        return {
            "state": state,
            "model": model,
            "backend": backend,
            "device": device,
            "latencyMs": latency,
            "message": message,
        }

    def send_status(self) -> None:
        """Send ``kaffee/status`` now if anything but the latency changed, else at most every few seconds."""
        if self.shutting_down:
            return
        with self._status_lock:
            params = self.status()
            sent = self._status_sent
            if sent == params:
                return
            same_state = sent is not None and {**sent, "latencyMs": None} == {**params, "latencyMs": None}
            wait = self._status_sent_at + STATUS_INTERVAL_S - time.monotonic()
            if same_state and wait > 0:
                if self._status_timer is None:  # one later update carries the newest latency
                    self._status_timer = threading.Timer(wait, self._status_due)
                    self._status_timer.daemon = True
                    self._status_timer.start()
                return
            self._status_sent, self._status_sent_at = params, time.monotonic()
        try:
            self.protocol.notify(STATUS_METHOD, params)
        except Exception:
            log.debug("could not send the status", exc_info=True)

    def _status_due(self) -> None:
        with self._status_lock:
            self._status_timer = None
        self.send_status()

    # -- statistics --------------------------------------------------------------------------------
    def model_label(self) -> str:
        engine = self.engine
        if engine is not None and engine.degraded:
            return FALLBACK_MODEL
        return self._engine_key[0] if self._engine_key else "unknown"

    def answered(self, feature: str, t0: float, offered_chars: int) -> str | None:
        """Count an answer (latency since ``t0``); the id of the suggestion in it, for its command."""
        self.last_latency_ms = (time.perf_counter() - t0) * 1000.0
        self.send_status()
        return self.stats.answered(feature, self.model_label(), self.last_latency_ms, offered_chars)

    # -- settings and the engine ---------------------------------------------------------------------
    def apply_settings(self, raw: Any, initial: bool = False) -> None:
        defaults = ServerSettings(device=self.cli_device or ServerSettings.device)
        settings, problems = parse_settings(raw, defaults if initial else self.settings, defaults)
        for p in problems:
            self.notify_user(p)
        turned_on = settings.workspace_context and not self.settings.workspace_context
        self.settings = settings
        if settings.stats:
            self.stats.enable()
        else:
            self.stats.disable()  # nothing counted is written any more
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
            if self.engine is not None and self.remote_config() != self._remote_config:
                self._worker.submit(self._attach_remote, self.engine)  # between requests, not during one
            self.send_status()  # enable may have changed
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

    def remote_config(self) -> RemoteConfig | None:
        """The backend from the settings, else from ``--backend``; None: the local model only."""
        s = self.settings
        if s.backend is None:
            return self.cli_remote
        try:
            return parse_backend(s.backend, s.remote_model, s.api_key_env)
        except KaffeeError as exc:  # settings checked the form; this is a bad URL or key variable
            self.notify_user(f"backend {s.backend}: {exc}", types.MessageType.Error)
            return self.cli_remote

    def _attach_remote(self, engine: CompletionEngine) -> None:
        """Give ``engine`` the configured backend (on the model thread), closing the one it had."""
        config = self.remote_config()
        old, engine.remote = engine.remote, None
        self._remote_config = config
        if old is not None:
            old.close()
        if config is None:
            return
        try:
            engine.remote = RemoteBackend(config, engine.tokenizer)
        except KaffeeError as exc:
            self.notify_user(f"backend {config.url}: {exc}", types.MessageType.Error)
            return
        log.info("suggestions come from %s (the local model answers when it is down or slow)", config.url)

    def load_engine(self) -> None:
        """(Re)load the engine on the worker thread when the model path or device changed."""
        try:
            path = self.model_dir()
        except KaffeeError as exc:
            self.engine_error = str(exc)
            self.notify_user(f"no model: {exc}", types.MessageType.Error)
            self.send_status()
            return
        key = (str(path), self.settings.device)
        if key == self._engine_key:
            return
        self._engine_key = key
        self.engine_error = None
        self.send_status()  # loading
        progress = WorkProgress(self, "Kaffee: loading the model", path.name)
        self._worker.submit(self._load, path, self.settings.device, key, progress)

    def _load(self, path: Path, device: str, key: tuple[str, str], progress: WorkProgress) -> None:
        try:
            self._load_engine(path, device)
        finally:
            self._loaded_key = key
            progress.end("ready" if self.engine_error is None else "failed")
            self.send_status()

    def _load_engine(self, path: Path, device: str) -> None:
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
        old = self.engine
        if old is not None and old.remote is not None:
            old.remote.close()
        self._attach_remote(engine)
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
        progress = WorkProgress(self, "Kaffee: indexing the workspace", "scanning Java files")
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
            progress.report(f"indexing {len(files)} Java files")
            engine.set_workspace_files(files)
            engine.project.refresh(wait=True)  # index here, on the scan thread
            progress.end(f"{len(files)} Java files indexed")
            log.info(
                "workspace: %d Java files scanned and indexed in %.1f s (index about %.0f MB)",
                len(files),
                time.perf_counter() - t0,
                engine.project.memory_bytes() / 1e6,
            )
        except Exception:
            log.exception("scanning the workspace failed")
        finally:
            progress.end()  # a no-op after the end above

    # -- documents ---------------------------------------------------------------------------------
    def on_open(self, params: types.DidOpenTextDocumentParams) -> None:
        doc = params.text_document
        opened = self.documents.open(doc.uri, doc.text, doc.version)
        if self.engine is not None:
            self.engine.update_document(doc.uri, opened.text)  # the sanitised text, as the store holds it

    def on_change(self, params: types.DidChangeTextDocumentParams) -> None:
        uri = params.text_document.uri
        if uri not in self.documents:
            log.warning("didChange for unknown document %s ignored", uri)
            return
        doc = self.documents.get(uri)
        running = self._work_of(uri)
        for change in params.content_changes:
            if isinstance(change, types.TextDocumentContentChangePartial):
                r = change.range
                start = doc.offset_at(r.start.line, r.start.character, self.encoding)
                end = doc.offset_at(r.end.line, r.end.character, self.encoding)
                for rec in running:
                    rec.typed_on(start, end, change.text)
                doc.apply_change(
                    change.text,
                    (r.start.line, r.start.character),
                    (r.end.line, r.end.character),
                    self.encoding,
                )
            else:
                for rec in running:
                    rec.typed_on(0, -1, change.text)  # the whole text replaced: not typing on
                doc.apply_change(change.text)
        doc.version = params.text_document.version
        for rec in running:
            rec.supersede(keep=self._keeps(rec))  # its answer is stale now
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
        for rec in self._work_of(params.text_document.uri):
            rec.supersede(keep=False)
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
    async def run_model(self, uri: str, kind: str, job, offset: int | None = None):
        """Run ``job(cancel_event)`` on the model thread; a newer request of the same kind supersedes it.

        Debounce (``debounceMs``), which never delays a request while the model is idle: an
        inline request that comes while the model still works on the previous inline request
        of its document, after the user only typed on at that request's cursor (``offset``),
        lets that work finish instead of throwing it away (its answer is stale: the client
        gets "cancelled"; its suggestion and KV cache are left for what comes next) and waits
        for it, up to ``debounceMs``; superseded meanwhile, it is answered cancelled without
        reaching the model, otherwise the engine answers it from the kept suggestion when
        the typed characters begin it, or decodes on a warm cache. Any other edit, a request
        at another cursor, of another kind or document, didClose, a wait past ``debounceMs``
        and ``$/cancelRequest`` of work nobody waits for stop work between decode steps.
        """
        key = (uri, kind)
        self.counters["requests"] += 1
        wait = self.settings.debounce_ms / 1000.0
        loop = asyncio.get_running_loop()
        rec = _Request(key, threading.Event(), offset)
        older = self._inflight.get(key)
        self._inflight[key] = rec
        if older is not None:
            older.supersede(keep=self._keeps(older, offset))
        work = None  # kept work of the previous request of this document and kind, still running
        for other in list(self._submitted):
            if other.key != key:
                if other.stale:  # kept for a request of its own kind and document that did not come
                    other.supersede(keep=False)
            elif other is not older:  # its request is gone (cancelled by the client): this one decides
                other.supersede(keep=self._keeps(other, offset))
            if other.key == key and other.kept and other.future is not None and not other.future.done():
                work = other
        try:
            if work is not None:
                self.counters["debounce_waits"] += 1
                rec.waits_on = work
                kept = asyncio.wrap_future(work.future, loop=loop)
                kept.add_done_callback(_retrieve)  # its outcome is the stale request's, not this one's
                done, _ = await asyncio.wait([kept], timeout=wait)
                if not done:  # the older work takes too long: stop it, this request goes on
                    work.cancel.set()
                if rec.stale:
                    self.counters["debounced"] += 1
                    raise JsonRpcRequestCancelled("superseded by a newer request or an edit while debounced")
            try:
                rec.future = self._worker.submit(self._timed, job, rec.cancel)
            except RuntimeError as exc:  # the worker was shut down
                raise JsonRpcRequestCancelled(f"the server is shutting down ({exc})") from exc
            self._submitted.add(rec)
            rec.future.add_done_callback(lambda _f: _call_soon(loop, self._submitted.discard, rec))
            result = await asyncio.wrap_future(rec.future, loop=loop)
        except asyncio.CancelledError:
            # $/cancelRequest: the answer is not wanted. Editors cancel the request a keystroke made stale,
            # before or after its didChange, so inline work goes on (kept) until an edit or request shows
            # whether it can serve the next request; anything else stops between decode steps.
            rec.supersede(keep=self._keeps(rec))
            raise
        except JsonRpcRequestCancelled:
            raise
        except Exception:
            if rec.stale:  # nobody wants this answer any more, an error included
                raise JsonRpcRequestCancelled("superseded by a newer request or an edit") from None
            raise
        finally:
            if self._inflight.get(key) is rec:
                del self._inflight[key]
        self.check_engine_health()
        engine = self.engine
        if engine is not None and engine.tokens_advanced - self._trimmed_at > TRIM_AFTER_TOKENS:
            self._trimmed_at = engine.tokens_advanced
            self._worker.submit(trim_heap)  # after this answer, before the next request's work
        if rec.stale:
            self.counters["superseded"] += 1
            raise JsonRpcRequestCancelled("superseded by a newer request or an edit")
        return result

    def _keeps(self, rec: _Request, offset: int | None = None) -> bool:
        """Whether superseded work is worth finishing: inline work, debounce on, and (for a
        new request) the new cursor where the typing left the old one's."""
        same_cursor = offset is None or offset == rec.offset
        return self.settings.debounce_ms > 0 and rec.key[1] == "inline" and same_cursor

    def _work_of(self, uri: str) -> list[_Request]:
        """The document's requests in flight and the work still running for it, once each."""
        recs = [r for r in (self._inflight.get((uri, k)) for k in ("completion", "inline")) if r is not None]
        return recs + [r for r in list(self._submitted) if r.key[0] == uri and r not in recs]

    def _timed(self, job, cancel: threading.Event):
        """``job(cancel)`` on the model thread, its time added to ``model_busy_s`` (kaffee/counters' modelMs)."""
        t0 = time.perf_counter()
        try:
            return job(cancel)
        finally:
            self.model_busy_s += time.perf_counter() - t0

    def deadline(self) -> float:
        return time.monotonic() + self.settings.deadline_ms / 1000.0

    def shutdown_work(self) -> None:
        self.shutting_down = True
        for rec in [*self._inflight.values(), *list(self._submitted)]:
            rec.cancel.set()
        self._worker.shutdown(wait=False, cancel_futures=True)


@dataclass(eq=False)
class _Request:
    """A request's model work, for supersession and the debounce (compared by identity)."""

    key: tuple[str, str]  # (document URI, "inline" | "completion")
    cancel: threading.Event  # set: the decode loop stops at its next step
    offset: int | None  # the cursor (characters into the document); typing there keeps the work
    stale: bool = False  # a newer request or an edit came: the answer is not wanted any more
    future: concurrent.futures.Future | None = None  # the job on the model thread, once submitted
    waits_on: _Request | None = None  # the older request whose kept work this one waits for
    _typed_on: bool = True  # every edit since the request was an insertion at its cursor

    def typed_on(self, start: int, end: int, text: str) -> None:
        """Note an edit replacing characters ``start:end`` with ``text`` (end -1: the whole text)."""
        if self.offset is None or start != end or start != self.offset or "\n" in text or "\r" in text:
            self._typed_on = False
        else:
            self.offset += len(text)

    @property
    def kept(self) -> bool:
        """Stale, but its work goes on for the request after it (the user typed on)."""
        return self.stale and not self.cancel.is_set()

    def supersede(self, keep: bool) -> None:
        """A newer request or an edit: the answer is stale; the work stops unless it is worth keeping."""
        self.stale = True
        if not (keep and self._typed_on and not self.cancel.is_set()):
            self.cancel.set()
            if self.waits_on is not None:  # nobody is left to use the older work either
                self.waits_on.supersede(keep=False)


def _retrieve(fut: asyncio.Future) -> None:
    """Read a finished future's exception so asyncio does not log it as never retrieved."""
    if not fut.cancelled():
        fut.exception()


def _call_soon(loop: asyncio.AbstractEventLoop, fn, *args) -> None:
    """``fn(*args)`` on the event loop, from the model thread; nothing once the loop has closed."""
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:
        pass


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


def accept_command(offer: str, feature: str, chars: int) -> types.Command:
    """What the client runs when the user takes a suggestion (a partial accept may send fewer chars)."""
    return types.Command(title="Kaffee: accepted", command=ACCEPT_COMMAND, arguments=[offer, feature, chars])


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
    model_dir: Path | None = None,
    device: str | None = None,
    engine_options: EngineOptions | None = None,
    remote: RemoteConfig | None = None,
) -> KaffeeLanguageServer:
    """A language server with Kaffee's features registered (``remote``: an OpenAI-compatible backend)."""
    server = KaffeeLanguageServer(model_dir, device, engine_options, remote)

    @server.feature(types.INITIALIZE)
    def initialize(ls: KaffeeLanguageServer, params: types.InitializeParams) -> None:
        enc = ls.workspace.position_encoding  # pygls sets the workspace up before this handler
        enc = getattr(enc, "value", enc)
        ls.encoding = enc if enc in ENCODINGS else "utf-16"
        ls._loop = asyncio.get_running_loop()  # progress requests from other threads go through it
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
    async def shutdown(ls: KaffeeLanguageServer, params: None) -> None:
        ls.shutdown_work()
        # the last counts, written on a thread before the answer (``exit`` may end the process at once)
        await asyncio.get_running_loop().run_in_executor(None, ls.stats.flush)

    @server.feature(COUNTERS_METHOD)
    def counters(ls: KaffeeLanguageServer, params: Any) -> dict[str, int]:
        """Requests seen, debounced and superseded, ``modelCalls`` (engine calls that ran the model),
        ``reusedAnswers`` (engine calls answered from the previous suggestion, no model),
        ``modelMs`` (time the model thread spent on request jobs),
        and with a backend how its calls went (``remoteAnswered``, ``remoteFallbacks``, …)."""
        engine = ls.engine
        backend = getattr(engine, "remote", None)
        remote = backend.stats if backend is not None else None
        extra = (
            {}
            if remote is None
            else {
                "remoteAnswered": remote.answered,
                "remoteFallbacks": remote.fallbacks,
                "remoteHealRetries": remote.heal_retries,
                "remoteCancelled": remote.cancelled,
            }
        )
        calls = engine.stats.requests - engine.stats.reused if engine is not None else 0
        reused = engine.stats.reused if engine is not None else 0
        busy = round(ls.model_busy_s * 1000)
        return {**ls.counters, "modelCalls": calls, "reusedAnswers": reused, "modelMs": busy, **extra}

    @server.command(ACCEPT_COMMAND)
    def accepted(ls: KaffeeLanguageServer, *args: Any) -> None:
        """The client accepted (part of) a suggestion: ``[offer id, feature, inserted characters]``."""
        offer = args[0] if args else None
        chars = args[2] if len(args) > 2 else None
        if not isinstance(offer, str):
            log.debug("%s with arguments %.200r ignored", ACCEPT_COMMAND, args)
            return
        n = chars if isinstance(chars, int) and not isinstance(chars, bool) else 0
        if not ls.stats.accepted(offer, max(0, n)):
            log.debug("%s for an unknown suggestion %r ignored", ACCEPT_COMMAND, offer)

    @server.feature(
        types.TEXT_DOCUMENT_COMPLETION, types.CompletionOptions(trigger_characters=TRIGGER_CHARACTERS)
    )
    async def completion(ls: KaffeeLanguageServer, params: types.CompletionParams) -> types.CompletionList:
        cur = ls.cursor(params.text_document.uri, params.position)
        if cur is None or not ls.settings.enable:
            return types.CompletionList(is_incomplete=False, items=[])
        t0 = time.perf_counter()
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

        tokens, line = await ls.run_model(cur.uri, "completion", job, cur.offset)
        items = completion_items(cur, tokens, line)
        inserts = [len(i.text_edit.new_text) if isinstance(i.text_edit, types.TextEdit) else 0 for i in items]
        offer = ls.answered("completion", t0, max(inserts, default=0))
        for item, n in zip(items, inserts, strict=True) if offer is not None else ():
            item.command = accept_command(offer, "completion", n)  # one offer for the whole list
        return types.CompletionList(is_incomplete=False, items=items)

    @server.feature(types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionOptions())
    async def inline_completion(
        ls: KaffeeLanguageServer, params: types.InlineCompletionParams
    ) -> types.InlineCompletionList:
        cur = ls.cursor(params.text_document.uri, params.position)
        if cur is None or not ls.settings.enable:
            return types.InlineCompletionList(items=[])
        t0 = time.perf_counter()
        deadline = ls.deadline()

        def job(cancel: threading.Event) -> Completion | None:
            engine = ls.engine
            if engine is None:
                return None
            return engine.complete(cur.prefix, cur.suffix, deadline=deadline, cancel=cancel, document=cur.uri)

        result = await ls.run_model(cur.uri, "inline", job, cur.offset)
        text = result.text if result is not None else ""
        offer = ls.answered("inline", t0, len(text))
        if not text:
            return types.InlineCompletionList(items=[])
        item = types.InlineCompletionItem(
            insert_text=text,
            range=types.Range(cur.position, cur.position),
            command=accept_command(offer, "inline", len(text)) if offer is not None else None,
        )
        return types.InlineCompletionList(items=[item])

    return server
