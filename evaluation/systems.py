"""Systems under test: what answers a task's questions at a cursor.

A system spec on the command line names one of:

- ``gpt:DIR``, ``lstm:DIR``, ``ngram:DIR`` (or ``model:DIR`` for any family): a model
  directory served through the same completion engine the language server uses, with
  engine options as comma-separated variants, e.g. ``gpt:models/default,cache=off,fim=off,ctx=512``;
- ``mft``: the most-frequent-token baseline, counted on the corpus's train split;
- ``lsp:COMMAND``: any language server speaking LSP over stdio (``lsp:kaffee serve --model X``).

Every system answers the same two questions for a :class:`Context` (text before and
after the cursor): the ranked next tokens and the rest of the line. Model systems also
score text (bits per character). A request that fails (time-out, crashed server) raises
:class:`RequestFailed`, which the harness counts as an error and moves on.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shlex
import sys
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from kaffee.errors import KaffeeError
from kaffee.evaluation.lexer import lex

MODEL_KINDS = ("gpt", "lstm", "ngram", "model")
WORKSPACE_ROOT = "/kaffee-eval"  # where held-out files pretend to live (URIs only; nothing is written)
SYSTEM_KINDS = (*MODEL_KINDS, "mft", "lsp")
SPEC_HELP = (
    "a system spec is KIND:DIR[,option=value...] with KIND one of gpt, lstm, ngram, model "
    "(options: cache=on|off, project=on|off, fim=on|off, ctx=TOKENS, label=NAME, or any EngineOptions field), "
    "'mft' (most-frequent-token baseline from the train split), or 'lsp:COMMAND' (a stdio language server)"
)
_TRUE = {"on", "true", "yes", "1"}
_FALSE = {"off", "false", "no", "0"}


class RequestFailed(Exception):
    """One request failed (time-out, server error); counted as an error, the run goes on."""


class SystemUnavailable(KaffeeError):
    """The system cannot answer at all (server does not start, model missing): skip it."""


@dataclass(frozen=True)
class Context:
    """What an editor knows at the cursor."""

    prefix: str  # text before the cursor
    suffix: str = ""  # text after the cursor ("" = hidden / prefix-only)
    project: str = "eval"  # project the file belongs to (workspace)
    path: str = "Main.java"  # path of the file inside its project

    @property
    def text(self) -> str:
        return self.prefix + self.suffix


@dataclass(frozen=True)
class SystemSpec:
    kind: str  # one of SYSTEM_KINDS
    target: str  # model directory, LSP command line, or "" for mft
    options: dict[str, str] = field(default_factory=dict)
    label: str = ""  # name in reports (defaults to the spec text)
    text: str = ""  # the spec as given


def parse_system_spec(spec: str) -> SystemSpec:
    """Parse a ``--system`` value; raises KaffeeError with the accepted forms when it does not parse."""
    raw = spec
    spec = spec.strip()
    if not spec:
        raise KaffeeError(f"empty system spec; {SPEC_HELP}")
    kind, sep, rest = spec.partition(":")
    kind = kind.strip().lower()
    if kind == "lsp":
        if not sep or not rest.strip():
            raise KaffeeError(
                f"system spec {raw!r} names no command: use lsp:COMMAND, e.g. 'lsp:kaffee serve --model DIR'"
            )
        return SystemSpec("lsp", rest.strip(), {}, label=spec, text=spec)
    if kind.startswith("mft"):
        head, _, opts = spec.partition(",")
        if head.strip().lower() not in ("mft", "mft:"):
            raise KaffeeError(f"cannot parse system spec {raw!r}; {SPEC_HELP}")
        options = _parse_options(opts, raw) if opts else {}
        label = options.pop("label", "mft")
        return SystemSpec("mft", "", options, label=label, text=spec)
    if kind not in MODEL_KINDS or not sep:
        raise KaffeeError(f"cannot parse system spec {raw!r}; {SPEC_HELP}")
    target, _, opts = rest.partition(",")
    target = target.strip()
    if not target:
        raise KaffeeError(f"system spec {raw!r} names no model directory; {SPEC_HELP}")
    options = _parse_options(opts, raw) if opts else {}
    label = options.pop("label", spec)
    return SystemSpec(kind, target, options, label=label, text=spec)


def _parse_options(text: str, raw: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        key, eq, value = part.partition("=")
        if not eq or not key.strip():
            raise KaffeeError(f"system spec {raw!r}: option {part!r} is not key=value; {SPEC_HELP}")
        out[key.strip()] = value.strip()
    return out


def _coerce(value: str, default, key: str, raw: str):
    """Turn an option string into the type of the EngineOptions field's default."""
    try:
        if isinstance(default, bool):
            low = value.lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise ValueError("expected on/off")
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float):
            return float(value)
        if default is None and value.lower() in ("none", ""):
            return None
        if default is None:
            try:
                return int(value)
            except ValueError:
                return float(value)
    except ValueError as exc:
        raise KaffeeError(f"system spec {raw!r}: {key}={value!r} is not valid ({exc})") from exc
    return value


def file_uri(root: str | os.PathLike, project: str, path: str) -> str:
    return (Path(root) / project / path).resolve().as_uri()


class System(ABC):
    """Something that suggests code. Subclasses answer what they can; the rest raise NotImplementedError."""

    label: str = "?"
    #: task capabilities: "next_tokens", "complete", "bits"
    capabilities: frozenset[str] = frozenset({"next_tokens", "complete"})

    def fingerprint(self) -> str:
        """Changes when the system would answer differently (keys the prediction cache)."""
        return self.label

    def begin_file(self, project: str, path: str, workspace: dict[str, str]) -> None:  # noqa: B027
        """Called before the positions of one file; ``workspace`` = the other files of its project."""

    @abstractmethod
    def next_tokens(self, ctx: Context, k: int = 10) -> list[str]:
        """Ranked whole Java tokens that may come next (best first)."""

    @abstractmethod
    def complete(self, ctx: Context) -> str:
        """The suggested rest of the line at the cursor."""

    def bits(self, text: str) -> tuple[float, int]:
        """(bits, characters) the system needs to encode ``text``."""
        raise NotImplementedError

    def health(self) -> str | None:
        """A warning when the answers are no longer what the spec promised (e.g. a fallback model)."""
        return None

    def close(self) -> None:  # noqa: B027
        pass


# -- model directories through the completion engine ---------------------------------------------


def _dir_fingerprint(path: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(path.iterdir()) if path.is_dir() else []:
        if p.is_file():
            st = p.stat()
            h.update(f"{p.name}:{st.st_size}:{int(st.st_mtime)}".encode())
    return h.hexdigest()[:16]


class EngineSystem(System):
    """A model directory answered by :class:`kaffee.server.engine.CompletionEngine` (what users get)."""

    capabilities = frozenset({"next_tokens", "complete", "bits"})

    def __init__(self, spec: SystemSpec, device: str = "cpu", engine=None):
        from kaffee.training.checkpoint import read_meta

        self.spec = spec
        self.label = spec.label or spec.text
        self.path = Path(spec.target)
        self.device = device
        meta = read_meta(self.path)  # KaffeeError when missing / not a model dir
        if spec.kind != "model" and meta["family"] != spec.kind:
            raise KaffeeError(
                f"system spec {spec.text!r} says {spec.kind} but {self.path} holds a {meta['family']} model "
                f"(use {meta['family']}:{spec.target} or model:{spec.target})"
            )
        self.family = meta["family"]
        self._model = None
        if engine is not None:
            self.engine = engine
            self.options = getattr(engine, "options", None)
        else:
            from kaffee.server.engine import CompletionEngine
            from kaffee.server.options import parse_engine_options

            self.options = parse_engine_options(spec.options, where=f"system spec {spec.text!r}")
            self.engine = CompletionEngine.from_model_dir(self.path, options=self.options, device=device)
            if self.health():
                raise SystemUnavailable(str(self.health()))
        self._fingerprint = f"{spec.text}@{_dir_fingerprint(self.path)}"
        self._workspace_key: tuple[str, str] | None = None
        self._document_uri: str | None = None

    def fingerprint(self) -> str:
        return self._fingerprint

    def health(self) -> str | None:
        stats = getattr(self.engine, "stats", None)
        reason = getattr(stats, "fallback_reason", None) if getattr(self.engine, "degraded", False) else None
        return f"the engine answers from its n-gram fallback ({reason})" if reason else None

    @property
    def workspace_cache(self) -> bool:
        """The engine uses the project's other files (n-gram cache or project context in the prompt)."""
        return bool(getattr(self.options, "workspace_cache", False)) or bool(
            getattr(self.options, "project_context", False)
        )

    def _settle_cache(self) -> None:
        """Finish the cache's rebuild and the project index now, so answers do not depend on thread timing."""
        settle = getattr(self.engine, "settle", None)
        if self.workspace_cache and settle is not None:
            settle()

    def begin_file(self, project: str, path: str, workspace: dict[str, str]) -> None:
        setter = getattr(self.engine, "set_workspace_files", None)
        if setter is None:
            return
        files = workspace if self.workspace_cache else {}
        key = (project, str(sorted(files)))
        if key != self._workspace_key:
            if self._workspace_key is not None and self._document_uri is not None:
                remove = getattr(self.engine, "remove_document", None)
                if remove is not None:
                    remove(self._document_uri)  # the editor closed the previous file
                self._document_uri = None
            setter({file_uri(WORKSPACE_ROOT, project, p): t for p, t in files.items()})
            self._workspace_key = key
            self._settle_cache()

    def _document(self, ctx: Context) -> None:
        update = getattr(self.engine, "update_document", None)
        if update is None:
            return
        uri = file_uri(WORKSPACE_ROOT, ctx.project, ctx.path)
        if self._document_uri not in (None, uri):
            remove = getattr(self.engine, "remove_document", None)
            if remove is not None:
                remove(self._document_uri)
        self._document_uri = uri
        update(uri, ctx.text)
        self._settle_cache()
        reset = getattr(self.engine, "reset_context", None)
        if reset is not None:
            reset()  # every question gets its own project context: no answer depends on earlier ones

    def next_tokens(self, ctx: Context, k: int = 10) -> list[str]:
        self._document(ctx)
        uri = file_uri(WORKSPACE_ROOT, ctx.project, ctx.path)
        return [s.text for s in self.engine.next_tokens(ctx.prefix, suffix=ctx.suffix, k=k, document=uri)]

    def complete(self, ctx: Context) -> str:
        self._document(ctx)
        uri = file_uri(WORKSPACE_ROOT, ctx.project, ctx.path)
        return self.engine.complete(ctx.prefix, suffix=ctx.suffix, document=uri).text

    @property
    def model(self):
        if self._model is None:
            self._model = getattr(self.engine, "model", None)
            if self._model is None or not hasattr(self._model, "sequence_logprobs"):
                from kaffee.training.checkpoint import load_model

                self._model = load_model(self.path, device=self.device)
        return self._model

    def bits(self, text: str) -> tuple[float, int]:
        return model_bits(self.model, text), len(text)


def model_bits(model, text: str, window: int | None = None) -> float:
    """-sum log2 p(token) of ``text`` under ``model``, every token scored (an EOS starts the file).

    Files longer than the model's context are scored with overlapping windows: each
    window keeps half a window of earlier tokens as context for the tokens it scores.
    """
    tok = model.tokenizer
    ids = [tok.eos_id, *tok.encode(text)]
    if len(ids) < 2:
        return 0.0
    width = max(2, int(window or model.max_context))
    keep = width // 2  # context tokens carried into the next window
    total = 0.0
    scored = 1  # index of the next token still to score
    start = 0
    while scored < len(ids):
        end = min(start + width, len(ids))
        lp = model.sequence_logprobs(ids[start:end])  # lp[i] = log p(ids[start + 1 + i])
        total += -float(lp[scored - start - 1 :].double().sum())
        scored = end
        start = max(0, end - keep)
    return total / math.log(2)


# -- most-frequent-token baseline -------------------------------------------------------------------


class MostFrequentTokenSystem(System):
    """Suggests the corpus's most frequent Java tokens regardless of context (a floor for every metric)."""

    capabilities = frozenset({"next_tokens", "complete"})

    def __init__(self, texts: Iterable[str], max_files: int = 2000, label: str = "mft", note: str = ""):
        counts: Counter[str] = Counter()
        for i, text in enumerate(texts):
            if i >= max_files:
                break
            counts.update(t.text for t in lex(text))
        if not counts:
            raise SystemUnavailable("mft: the train split has no Java tokens to count")
        self.ranked = [t for t, _ in counts.most_common(50)]
        self.label = label
        self._fingerprint = (
            f"{label}:{note}:{hashlib.sha256(json.dumps(self.ranked).encode()).hexdigest()[:16]}"
        )

    def fingerprint(self) -> str:
        return self._fingerprint

    def next_tokens(self, ctx: Context, k: int = 10) -> list[str]:
        return self.ranked[:k]

    def complete(self, ctx: Context) -> str:
        return self.ranked[0]


# -- building systems from specs ---------------------------------------------------------------------


@dataclass
class SystemSettings:
    device: str = "cpu"  # torch device for model systems
    lsp_timeout: float = 10.0  # seconds per LSP request before it counts as an error
    lsp_start_timeout: float = 60.0  # seconds for an LSP server to answer `initialize`
    workspace: str | None = None  # directory used as the LSP workspace root
    lsp_init_options: dict | None = None  # initializationOptions sent to LSP servers


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


def build_system(spec: SystemSpec, settings: SystemSettings, train_texts=None) -> System:
    """Instantiate a parsed spec. ``train_texts(max_files)`` yields train-split texts (for mft)."""
    if spec.kind in MODEL_KINDS:
        return EngineSystem(spec, device=settings.device)
    if spec.kind == "mft":
        if train_texts is None:
            raise KaffeeError("mft needs a corpus with a train split (--corpus)")
        unknown = set(spec.options) - {"max_files"}
        if unknown:
            raise KaffeeError(
                f"system spec {spec.text!r}: unknown option(s) {sorted(unknown)}; mft takes max_files=N"
            )
        max_files = int(_coerce(spec.options.get("max_files", "2000"), 0, "max_files", spec.text))
        return MostFrequentTokenSystem(
            train_texts(max_files), max_files=max_files, label=spec.label, note=f"max_files={max_files}"
        )
    if spec.kind == "lsp":
        from kaffee.evaluation.lsp_system import LspSystem

        return LspSystem(
            spec,
            lsp_argv(spec.target),
            timeout=settings.lsp_timeout,
            start_timeout=settings.lsp_start_timeout,
            workspace=settings.workspace,
            init_options=settings.lsp_init_options,
        )
    raise KaffeeError(f"unknown system kind {spec.kind!r}; {SPEC_HELP}")
