"""Project context for the prompt: similar code from other files, and the declarations in use.

:class:`ProjectIndex` holds the workspace's Java files as overlapping line windows
(RepoCoder / CrossCodeEval's sliding-window retrieval) with an inverted index from
identifier to window, and each file's top-level type outlines (:mod:`outline`). For a
cursor it picks

- the windows of other files most similar to the lines before the cursor (Jaccard
  similarity of identifier sets), and
- the outlines of workspace types named near the cursor (or imported by the file),
  (and :mod:`hints` lists the members of the types of the file's variables),

and renders them as text blocks that the engine places before the file's own window
(:func:`render_blocks`). Files are indexed off the request path (a background thread,
or ``refresh(wait=True)``); updates replace a file's windows incrementally; memory is
bounded by file, window and character caps. Nothing here raises on bad input: a file
that cannot be parsed contributes windows but no outlines.
"""

from __future__ import annotations

import logging
import threading
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import zip_longest

import numpy as np
from kaffee.data.layout import path_header, short_label
from kaffee.errors import KaffeeError
from kaffee.server.java_tokens import identifiers
from kaffee.server.outline import TypeOutline, outline

log = logging.getLogger(__name__)

FORMS = ("auto", "files", "comments", "inline")
_THIS = "\x00this"  # key of the current document's own windows in search results


@dataclass
class ProjectConfig:
    window_lines: int = 20  # lines per retrieval window
    stride: int = 10  # lines between window starts (windows overlap by window_lines - stride)
    query_lines: int = 10  # lines before the cursor's line that, with the line so far, form the query
    snippets: int = 3  # most retrieved windows put into the prompt
    min_similarity: float = 0.1  # Jaccard below this is not worth prompt space
    declarations: bool = True  # outlines of workspace types named near the cursor
    types: int = 3  # most type outlines put into the prompt
    own_outline: bool = (
        True  # the current file's own type outline when the prompt window does not hold it all
    )
    member_hints: bool = True  # after "var.", mix in the members of var's workspace type (MemberHints)
    hint_weight: float = 0.6  # share of the next-piece mass the member hints get right after the dot
    max_hints: int = 400  # members known per cursor at most
    type_lines: int = 60  # lines before the cursor searched for type names
    budget_tokens: int = 384  # prompt tokens reserved for project context (taken from the file window)
    min_window_tokens: int = 512  # the file's own window keeps at least this many (no head for small models)
    # files: each block a separate <eos>-led "file"; comments: one header of // lines the window
    # continues; inline: the blocks as plain code the window continues (one "file", no <eos> between);
    # auto: files for a model trained on repository-level text (its training layout), else comments
    form: str = "auto"
    pin_lines: int = 12  # lines around the cursor whose text never feeds the context (the line being typed)
    refresh_lines: int = 48  # keep a document's context while typing onwards up to this many lines
    max_files: int = 5000  # files indexed at most (more are ignored, with a log line)
    max_file_chars: int = 400_000  # longer files are indexed only up to this many characters
    max_windows: int = 300_000  # windows indexed at most

    def __post_init__(self) -> None:
        if self.form not in FORMS:
            raise KaffeeError(f"project form must be one of {', '.join(FORMS)}; not {self.form!r}")
        if self.window_lines < 1 or not 1 <= self.stride <= self.window_lines:
            raise KaffeeError("project windows need window_lines >= 1 and 1 <= stride <= window_lines")
        if self.budget_tokens < 0 or self.snippets < 0 or self.types < 0:
            raise KaffeeError("project budget_tokens, snippets and types must be >= 0")
        if not 0.0 <= self.hint_weight < 1.0:  # also false for NaN
            raise KaffeeError(f"project hint_weight must be in [0, 1), not {self.hint_weight}")


@dataclass(frozen=True)
class Block:
    """One piece of project context: where it comes from and its text."""

    label: str  # short path of the file it comes from
    text: str  # code (a window of lines, or a type outline)
    kind: str  # "snippet" or "declaration"
    score: float  # similarity (snippets) or nearness rank (declarations); higher is more relevant


@dataclass
class _File:
    digest: int  # hash of the indexed text (an unchanged file is not indexed again)
    label: str
    lines: list[str]
    windows: list[int] = field(default_factory=list)  # global window ids
    types: list[TypeOutline] = field(default_factory=list)


def window_spans(n_lines: int, size: int, stride: int) -> list[tuple[int, int]]:
    """[start, end) line spans of the sliding windows over ``n_lines`` lines (the last one reaches the end)."""
    if n_lines <= 0:
        return []
    spans = [(s, min(s + size, n_lines)) for s in range(0, max(1, n_lines - size + stride), stride)]
    if spans[-1][1] < n_lines:
        spans.append((max(0, n_lines - size), n_lines))
    return spans


def jaccard(a: set[str], b: set[str]) -> float:
    if not a or not b:
        return 0.0
    inter = len(a & b)
    return inter / (len(a) + len(b) - inter)


class ProjectIndex:
    """Windows and outlines of the workspace's files, updated incrementally, searched per cursor."""

    def __init__(self, config: ProjectConfig | None = None):
        self.cfg = config or ProjectConfig()
        self._lock = threading.Lock()  # guards the index structures below
        self._pending_lock = threading.Lock()  # guards _pending and _indexing
        self._drain_lock = threading.Lock()  # one drainer at a time, so updates apply in order
        self._pending: dict[str, str | None] = {}  # key -> new text (None: remove)
        self._indexing = False
        self._files: dict[str, _File] = {}
        self._postings: dict[str, array] = {}  # identifier -> window ids
        self._win_file: list[str | None] = []  # window id -> file key (None: removed)
        self._win_span: list[tuple[int, int]] = []
        self._win_size = array("i")  # distinct identifiers of the window (0 once removed)
        self._dead = 0
        self._types: dict[str, list[tuple[str, TypeOutline]]] = {}  # simple name -> (file key, outline)
        self.generation = 0  # bumped by set_files (a new workspace), read by the engine's pins
        self.indexed = 0  # file updates applied (for tests and logs)

    # -- inputs -----------------------------------------------------------------------------------------
    def set_files(self, files: dict[str, str]) -> None:
        """Replace the whole workspace (key: URI or path)."""
        with self._lock:
            known = list(self._files)
        with self._pending_lock:
            self._pending = dict.fromkeys(known)
            keys = list(files)[: self.cfg.max_files]
            if len(files) > len(keys):
                log.warning("project index: %d files, indexing the first %d", len(files), len(keys))
            self._pending.update({k: files[k] for k in keys})
            self.generation += 1

    def update(self, key: str, text: str) -> None:
        with self._pending_lock:
            new = key not in self._files and key not in self._pending
            if new and len(self._files) + len(self._pending) >= self.cfg.max_files:
                return
            self._pending[key] = text

    def remove(self, key: str) -> None:
        with self._pending_lock:
            self._pending[key] = None

    def refresh(self, wait: bool = False) -> None:
        """Apply pending updates: now when ``wait``, else on a background thread."""
        if wait:
            self._drain()
            return
        with self._pending_lock:
            if not self._pending or self._indexing:
                return
            self._indexing = True
        threading.Thread(target=self._drain_background, name="kaffee-index", daemon=True).start()

    def _drain_background(self) -> None:
        try:
            self._drain()
        except Exception:  # an index is an optimisation: never let it take the server down
            log.exception("indexing the project failed; continuing with what is indexed")
        finally:
            with self._pending_lock:
                self._indexing = False
            if self._pending:
                self.refresh()

    def _drain(self) -> None:
        """Apply pending updates until none are left; waits for a drain running on another thread."""
        with self._drain_lock:
            while True:
                with self._pending_lock:
                    if not self._pending:
                        return
                    key = next(iter(self._pending))
                    text = self._pending.pop(key)
                self._apply(key, text)

    # -- indexing ---------------------------------------------------------------------------------------
    def _apply(self, key: str, text: str | None) -> None:
        entry = None
        if text is not None:
            text = text[: self.cfg.max_file_chars]
            digest = hash(text)
            old = self._files.get(key)
            if old is not None and old.digest == digest:
                return
            lines = text.split("\n")
            spans, sets = self._windows(lines)
            try:
                types = outline(text) if self.cfg.declarations else []
            except RecursionError:  # absurdly deep nesting
                types = []
            entry = _File(digest, short_label(key), lines, types=types)
        with self._lock:
            self._drop(key)
            if entry is not None:
                if len(self._win_file) - self._dead + len(spans) > self.cfg.max_windows:
                    spans, sets = [], []
                for span, words in zip(spans, sets, strict=True):
                    wid = len(self._win_file)
                    self._win_file.append(key)
                    self._win_span.append(span)
                    self._win_size.append(len(words))
                    entry.windows.append(wid)
                    for w in words:
                        post = self._postings.get(w)
                        if post is None:
                            post = self._postings[w] = array("i")
                        post.append(wid)
                for t in entry.types:
                    self._types.setdefault(t.name, []).append((key, t))
                self._files[key] = entry
            self.indexed += 1
            if self._dead > 10_000 and self._dead > len(self._win_file) // 2:
                self._compact()

    def _windows(self, lines: list[str]) -> tuple[list[tuple[int, int]], list[set[str]]]:
        """The window spans of a file's lines and the identifier set of each."""
        spans = window_spans(len(lines), self.cfg.window_lines, self.cfg.stride)
        return spans, [set(identifiers("\n".join(lines[a:b]))) for a, b in spans]

    def _drop(self, key: str) -> None:
        old = self._files.pop(key, None)
        if old is None:
            return
        for wid in old.windows:
            self._win_file[wid] = None
            self._win_size[wid] = 0
        self._dead += len(old.windows)
        for t in old.types:
            kept = [(k, o) for k, o in self._types.get(t.name, []) if k != key]
            if kept:
                self._types[t.name] = kept
            else:
                self._types.pop(t.name, None)

    def _compact(self) -> None:
        """Rebuild the window tables without removed windows (postings only ever grow otherwise)."""
        files = self._files
        self._files, self._postings, self._types = {}, {}, {}
        self._win_file, self._win_span, self._win_size, self._dead = [], [], array("i"), 0
        for key, entry in files.items():
            entry.windows = []
            for (a, b), words in zip(*self._windows(entry.lines), strict=True):
                wid = len(self._win_file)
                self._win_file.append(key)
                self._win_span.append((a, b))
                self._win_size.append(len(words))
                entry.windows.append(wid)
                for w in words:
                    self._postings.setdefault(w, array("i")).append(wid)
            for t in entry.types:
                self._types.setdefault(t.name, []).append((key, t))
            self._files[key] = entry

    # -- queries ----------------------------------------------------------------------------------------
    @property
    def files(self) -> int:
        return len(self._files)

    @property
    def pending(self) -> bool:
        """Updates are waiting to be indexed, or a background drain is still applying one (it pops an
        update before applying it: an empty queue alone does not mean the index is complete)."""
        with self._pending_lock:
            return bool(self._pending) or self._indexing

    def memory_bytes(self) -> int:
        """A rough size of the index structures (texts counted once), for reports."""
        with self._lock:
            text = sum(sum(len(ln) + 50 for ln in f.lines) for f in self._files.values())
            post = sum(p.itemsize * len(p) + 80 for p in self._postings.values())
            wins = len(self._win_file) * 90
            return text + post + wins

    def similar(
        self, query: set[str], exclude: str | None = None, k: int = 3
    ) -> list[tuple[float, str, tuple[int, int]]]:
        """The ``k`` best non-overlapping windows of files other than ``exclude``: (jaccard, key, span)."""
        if not query:
            return []
        with self._lock:
            n = len(self._win_file)
            posts = [self._postings[w] for w in query if w in self._postings]
            if not posts or n == 0:
                return []
            hits = np.concatenate([np.frombuffer(p, dtype=np.int32) for p in posts])
            inter = np.bincount(hits, minlength=n).astype(np.float64)
            sizes = np.frombuffer(self._win_size, dtype=np.int32)[:n].astype(np.float64)
            score = np.where(sizes > 0, inter / np.maximum(len(query) + sizes - inter, 1.0), 0.0)
            top = min(n, 50 * max(1, k))
            cand = np.argpartition(-score, top - 1)[:top] if top < n else np.arange(n)
            order = cand[np.argsort(-score[cand], kind="stable")]
            out: list[tuple[float, str, tuple[int, int]]] = []
            taken: dict[str, list[tuple[int, int]]] = {}
            for wid in order[: 50 * max(1, k)]:
                s = float(score[wid])
                if s < self.cfg.min_similarity or len(out) >= k:
                    break
                key = self._win_file[wid]
                if key is None or key == exclude:
                    continue
                a, b = self._win_span[wid]
                if any(a < y and x < b for x, y in taken.get(key, [])):
                    continue
                taken.setdefault(key, []).append((a, b))
                out.append((s, key, (a, b)))
            return out

    def window_text(self, key: str, span: tuple[int, int]) -> str:
        with self._lock:
            f = self._files.get(key)
            return "" if f is None else "\n".join(f.lines[span[0] : span[1]])

    def label(self, key: str) -> str:
        f = self._files.get(key)
        return f.label if f is not None else short_label(key)

    def declarations(self, names: list[str], exclude: str | None = None) -> list[tuple[str, TypeOutline]]:
        """Outlines of workspace types called ``names`` (in that order), not declared in ``exclude``."""
        out = []
        with self._lock:
            for name in names:
                for key, t in self._types.get(name, []):
                    if key != exclude:
                        out.append((key, t))
                        break
        return out

    # -- one cursor -------------------------------------------------------------------------------------
    def context(self, prefix: str, suffix: str, document: str | None, window_start: int) -> list[Block]:
        """Blocks for a cursor, most relevant first.

        ``window_start`` is where the prompt's own window of the file begins: windows of
        the current file that overlap the prompt (or lie within ``pin_lines`` of the
        cursor, where a pinned context may be reused) are left out.
        """
        cfg = self.cfg
        line_start = prefix.rfind("\n") + 1
        before = prefix[:line_start].split("\n")[:-1]  # whole lines above the cursor's line
        query = set(identifiers("\n".join(before[-cfg.query_lines :]) + "\n" + prefix[line_start:]))
        blocks: list[Block] = []
        if cfg.snippets and query:
            found = self.similar(query, exclude=document, k=cfg.snippets)
            found += self._similar_in_document(query, prefix, suffix, window_start)
            found.sort(key=lambda x: -x[0])
            this_label = short_label(document) if document else "this file"
            for score, key, span in found[: cfg.snippets]:
                if key == _THIS:
                    text, label = _doc_window(prefix, suffix, span), this_label
                else:
                    text, label = self.window_text(key, span), self.label(key)
                if text.strip():
                    blocks.append(Block(label, text, "snippet", score))
        if cfg.declarations and cfg.types:
            own_types = outline(self._far_text(prefix, suffix, window_start))
            own = {t.name for t in own_types}
            if cfg.own_outline and (window_start > 0 or suffix.count("\n") > cfg.pin_lines + 1):
                # the file's own members that the prompt window does not show
                for t in own_types[:1]:
                    label = short_label(document) if document else "this file"
                    blocks.append(Block(label, t.text, "declaration", 2.0))
            near = "\n".join(before[-cfg.type_lines :]) + "\n" + prefix[line_start:]
            names = _type_names(near, prefix, own)
            for rank, (key, t) in enumerate(self.declarations(names, exclude=document)[: cfg.types]):
                blocks.append(Block(self.label(key), t.text, "declaration", 1.0 / (rank + 1)))
        return blocks

    def _far_text(self, prefix: str, suffix: str, window_start: int) -> str:
        """The current file with the lines near the cursor blanked (where a reused pin may still be
        asked), so nothing derived from it can hold the line being typed."""
        lines = (prefix + suffix).split("\n")
        cursor_line = prefix.count("\n")
        lo, hi = max(0, cursor_line - self.cfg.pin_lines - 1), cursor_line + self.cfg.pin_lines + 2
        return "\n".join(lines[:lo] + [""] * (min(hi, len(lines)) - lo) + lines[hi:])

    def _similar_in_document(
        self, query: set[str], prefix: str, suffix: str, window_start: int
    ) -> list[tuple[float, str, tuple[int, int]]]:
        """Windows of the current file far from the cursor (above the prompt window, or well below)."""
        cfg = self.cfg
        text = prefix + suffix
        lines = text.split("\n")
        cursor_line = prefix.count("\n")
        lo = min(prefix.count("\n", 0, window_start), cursor_line - cfg.pin_lines - 1)
        hi = cursor_line + cfg.pin_lines + 1
        best: list[tuple[float, str, tuple[int, int]]] = []
        for a, b in window_spans(len(lines), cfg.window_lines, cfg.stride):
            if a <= hi and lo <= b:
                continue
            s = jaccard(query, set(identifiers("\n".join(lines[a:b]))))
            if s >= cfg.min_similarity:
                best.append((s, _THIS, (a, b)))
        best.sort(key=lambda x: -x[0])
        return best[:1]


def _doc_window(prefix: str, suffix: str, span: tuple[int, int]) -> str:
    return "\n".join((prefix + suffix).split("\n")[span[0] : span[1]])


def _type_names(near: str, prefix: str, own: set[str]) -> list[str]:
    """Capitalised identifiers near the cursor (closest first), then the file's imports."""
    seen: dict[str, None] = {}
    for w in reversed(identifiers(near)):
        if w[:1].isupper() and w not in own and not w.isupper():
            seen.setdefault(w, None)
    for line in prefix.split("\n", 400)[:400]:
        s = line.strip()
        if s.startswith("import ") and not s.startswith("import static") and s.endswith(";"):
            name = s[:-1].rsplit(".", 1)[-1].strip()
            if name != "*" and name not in own:
                seen.setdefault(name, None)
    return list(seen)


def _render(block: Block, form: str) -> str:
    """``files``: a little file headed ``// Path: LABEL``; ``comments``: the same with every line as a ``//`` comment."""
    body = block.text.rstrip()
    if form == "comments":
        return path_header(block.label) + "".join(
            f"// {ln}\n" if ln.strip() else "//\n" for ln in body.split("\n")
        )
    return f"{path_header(block.label)}{body}\n"


def _shorten(block: Block, share: float) -> Block | None:
    """A declaration cut to about ``share`` of its lines (header kept, the rest elided)."""
    lines = block.text.split("\n")
    keep = int(len(lines) * share) - 2
    if keep < 2:
        return None
    text = "\n".join(lines[:keep] + ["    // ...", "}"])
    return Block(block.label, text, block.kind, block.score)


def prompt_head(
    blocks: list[Block], encode: Callable[[str], list[int]], eos_id: int, budget: int, form: str
) -> list[int]:
    """Token ids placed before the file's window: the blocks that fit ``budget``, most relevant last.

    Blocks are taken in turn from the best snippet and the nearest declaration down
    while they fit. ``files`` separates blocks (and the file's window after them) with
    ``<eos>``, as training separates files; ``comments`` is one ``<eos>``-led comment
    header that the file's window continues.
    """
    snippets = [b for b in blocks if b.kind == "snippet"]
    decls = [b for b in blocks if b.kind != "snippet"]
    priority = [b for pair in zip_longest(snippets, decls) for b in pair if b is not None]
    chosen: list[tuple[Block, list[int]]] = []
    used = 1  # the leading <eos>
    for b in priority:
        ids = encode(_render(b, form))
        sep = 1 if form == "files" else 0
        if used + len(ids) + sep > budget and b.kind == "declaration":
            b = _shorten(b, (budget - used - sep) / max(1, len(ids)))
            ids = encode(_render(b, form)) if b is not None else []
        if ids and used + len(ids) + sep <= budget:
            chosen.append((b, ids))
            used += len(ids) + sep
    if not chosen:
        return []
    chosen.sort(key=lambda c: (c[0].kind == "snippet", c[0].score))  # declarations first, best snippet last
    out: list[int] = [] if form == "files" else [eos_id]
    for _, ids in chosen:
        out += ([eos_id] if form == "files" else []) + ids
    return out + [eos_id] if form == "files" else out
