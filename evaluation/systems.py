"""Systems that answer in-process: model directories through the completion engine, and mft.

- ``EngineSystem``: a model directory (``gpt:DIR``, ``lstm:DIR``, ``ngram:DIR``, ``model:DIR``)
  served through the same completion engine the language server uses, with engine
  options as comma-separated variants, e.g. ``gpt:models/default,cache=off,fim=off,ctx=512``;
- ``MostFrequentTokenSystem``: the most-frequent-token baseline (``mft``), counted on the
  corpus's train split.

The interface is in ``system_base.py``; ``system_registry.py`` maps spec kinds to these.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from kaffee.errors import KaffeeError
from kaffee.evaluation.cost import model_size
from kaffee.evaluation.lexer import lex
from kaffee.evaluation.system_base import (
    WORKSPACE_ROOT,
    Context,
    System,
    SystemSpec,
    SystemUnavailable,
    file_uri,
)

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
        from kaffee.models.checkpoint import read_meta

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

    def cost(self) -> dict[str, Any]:
        return model_size(self.path)

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
                from kaffee.models.checkpoint import load_model

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
