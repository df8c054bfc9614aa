"""The completion engine: one object shared by the language server and the evaluation harness.

It answers two questions for a cursor (text before it, text after it): the ranked next
whole Java tokens (:meth:`CompletionEngine.next_tokens`) and the rest of the line or
block (:meth:`CompletionEngine.complete`). No LSP in here.

Speed comes from reuse: a few decode states (one per recently used document, picked by
longest shared prefix) whose KV cache is cropped and extended so a request re-encodes
only what changed; decoding stops at the stop rule; prompt-lookup drafts are verified
several tokens per forward; and while the user types through a suggestion, its rest is
answered without the model. The model is not re-entrant, so one lock guards it.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from kaffee.data.layout import CHARS_PER_TOKEN, REPO_LAYOUT, SUFFIX_TOKENS, file_header
from kaffee.data.tokenizer import KaffeeTokenizer
from kaffee.errors import KaffeeError
from kaffee.models.gpt import GPTModel
from kaffee.models.lm import DecodeState, LanguageModel
from kaffee.models.ngram import NgramConfig, NgramCounts, NgramModel
from kaffee.server.cache import CacheConfig, WorkspaceCache
from kaffee.server.context import (
    PrefixEncoder,
    Prompt,
    block_context,
    build_prompt,
    current_line_prefix,
    current_line_suffix,
    detect_indent,
    snap_to_line,
    window_start,
)
from kaffee.server.decode import Generation, Runner, Vocab, greedy, token_beam
from kaffee.server.documents import sanitize_text
from kaffee.server.fastgpt import QUANTIZE_MODES, FastGPT
from kaffee.server.hints import MemberHints, member_table
from kaffee.server.java_tokens import open_type_arguments, trailing_word
from kaffee.server.postprocess import BlockStop, LineStop, finish_block, finish_line
from kaffee.server.project import ProjectConfig, ProjectIndex, prompt_head
from kaffee.server.remote import RemoteBackend

log = logging.getLogger(__name__)

NATURAL_STOPS = frozenset(("newline", "suffix", "block_end", "dedent", "max_lines", "eos"))


@dataclass
class EngineOptions:
    max_lines: int = 8  # most lines of a block suggestion (1: never suggest blocks)
    deadline_ms: float | None = None  # time budget of a request that brings no deadline (None: unlimited)
    workspace_cache: bool = (
        True  # mix an n-gram cache over the workspace files into the model (see CacheConfig)
    )
    fim: bool = False  # fill-in-the-middle prompt when the model was trained for it (off: it measured worse)
    max_new_tokens: int = 32  # most tokens generated for one line
    max_new_tokens_block: int = 160  # most tokens generated for a block
    context_tokens: int = 1024  # prompt budget in tokens (also capped by the model's window)
    suffix_tokens: int = SUFFIX_TOKENS  # tokens after the cursor in a FIM prompt (re-encoded per request)
    token_healing: bool = True  # back off the prompt's last pre-token and constrain the continuation to it
    speculate: int = 8  # longest prompt-lookup draft verified per forward (0: off)
    beam_width: int = 8  # beam over sub-word pieces for next_tokens
    token_max_pieces: int = 8  # longest whole token, in sub-word pieces, the beam explores
    reuse_previous: bool = True  # answer from the last suggestion while the user types through it
    states: int = 2  # decode states kept (one per recently used document; ~25 MB each for the default model)
    quantize: str = "auto"  # gpt weights: auto (int8 on CPU), none, bf16, int8
    threads: int = 1  # torch CPU threads (0: torch's default); 1 avoids contention with the server
    naive: bool = False  # baseline: `generate` on the full re-encoded context per request, no reuse
    step_delay_ms: float = 0.0  # testing aid: sleep this long before every model call (a slow model)
    cache: CacheConfig = field(default_factory=CacheConfig)  # workspace cache settings
    project_context: bool = (
        True  # put similar code and declarations from the project's other files into the prompt
    )
    project: ProjectConfig = field(default_factory=ProjectConfig)  # project context settings

    def __post_init__(self) -> None:
        if self.max_lines < 1:
            raise KaffeeError(f"max_lines must be >= 1, not {self.max_lines}")
        if self.deadline_ms is not None and self.deadline_ms <= 0:
            raise KaffeeError(f"deadline_ms must be positive, not {self.deadline_ms}")
        if self.max_new_tokens < 1 or self.max_new_tokens_block < 1:
            raise KaffeeError("max_new_tokens must be >= 1")
        if self.quantize not in ("auto", *QUANTIZE_MODES):
            raise KaffeeError(
                f"quantize must be one of auto, {', '.join(QUANTIZE_MODES)}; not {self.quantize!r}"
            )
        if self.states < 1:
            raise KaffeeError("states must be >= 1")


@dataclass
class TokenSuggestion:
    text: str  # a whole Java token, no leading whitespace
    logprob: float  # log-probability of that token at the cursor
    attached: bool = False  # it continues the word ending at the cursor; text includes that word


@dataclass
class Completion:
    text: str  # what to insert at the cursor ("" when there is nothing to suggest)
    stop_reason: (
        str  # newline, suffix, block_end, dedent, max_lines, eos, length, deadline, cancelled, reuse, error
    )
    tokens: int  # tokens generated for it
    elapsed_ms: float  # wall time of the call, lock wait included


@dataclass
class EngineStats:
    requests: int = 0  # calls answered
    reused: int = 0  # complete() answers taken from the previous suggestion
    drafted: int = 0  # prompt-lookup draft tokens proposed
    accepted: int = 0  # draft tokens the model confirmed
    fallback_reason: str | None = None  # why the engine answers from the n-gram model, if it does


@dataclass
class _Pin:
    """A document's project context, kept while the cursor stays near so the KV cache stays valid."""

    line: int  # cursor line it was computed for
    generation: int  # ProjectIndex.generation then (a new workspace invalidates it)
    complete: bool  # the index had nothing pending then
    ids: list[int]  # the prompt head
    hints: MemberHints | None = None  # members of the workspace types of the file's variables


@dataclass
class _Previous:
    prefix: str
    suffix: str
    text: str
    ids: list[int]


class CompletionEngine:
    """Ranked next tokens and line/block suggestions at a cursor, from one language model."""

    def __init__(
        self,
        model: LanguageModel | None,
        options: EngineOptions | None = None,
        fallback: LanguageModel | None = None,
        tokenizer: KaffeeTokenizer | None = None,
    ):
        self.options = options or EngineOptions()
        if self.options.threads > 0:
            torch.set_num_threads(self.options.threads)
        self.neural = model
        self.tokenizer = (
            tokenizer or getattr(model, "tokenizer", None) or getattr(fallback, "tokenizer", None)
        )
        if self.tokenizer is None:
            raise KaffeeError("the engine needs a tokenizer (the model directory's tokenizer.json)")
        self.vocab = Vocab(self.tokenizer)
        self.encoder = PrefixEncoder(self.tokenizer)
        self.cache = WorkspaceCache(self.tokenizer, self.options.cache)
        self.project = ProjectIndex(self.options.project)
        self._pins: dict[str | None, _Pin] = {}
        self._fallback = fallback
        self._ngram: LanguageModel | None = None  # built from the workspace when there is no fallback model
        self._fallback_built_at = -1
        self.stats = EngineStats()
        self._lock = threading.Lock()
        self._states: list[DecodeState] = []
        self._previous: _Previous | None = None
        self.model: LanguageModel | None = None
        if model is not None:
            self.model = self._accelerate(model)
        else:
            self.stats.fallback_reason = "no neural model"
        self._primary = self.model  # the neural model each request tries first (None: there is none)
        self.runner = self._runner(self.model) if self.model is not None else None
        self._primary_runner = self.runner
        self.remote: RemoteBackend | None = None  # an OpenAI-compatible backend asked first (remote.py)

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def from_model_dir(
        cls,
        path: str | Path,
        options: EngineOptions | None = None,
        device: str = "cpu",
        fallback_dir: str | Path | None = None,
    ) -> CompletionEngine:
        """Load a model directory; if that fails, answer from an n-gram model and log why once."""
        from kaffee.models.checkpoint import load_model, read_meta

        path = Path(path)
        device = resolve_device(device)
        fallback = None
        if fallback_dir is not None:
            try:
                fallback = load_model(fallback_dir, device="cpu")
            except Exception as exc:
                log.error("cannot load the fallback model %s: %s", fallback_dir, exc)
        options = options or EngineOptions()
        # a missing or foreign directory is an error, never a silent n-gram; an HF checkpoint
        # that does not load has no Kaffee tokenizer for the n-gram either
        family = read_meta(path)["family"]
        try:
            if family == "gpt" and not options.naive:
                # straight into the fast decoder: no transformers import, no fp32 copy kept
                model = FastGPT.load(path, quantize=_quantize_mode(options.quantize, device), device=device)
            else:
                model = load_model(path, device=device)
        except Exception as exc:
            if family == "hf":
                if isinstance(exc, KaffeeError):
                    raise
                raise KaffeeError(f"cannot load {path}: {exc}") from exc
            reason = f"cannot load {path}: {exc}"
            log.error("%s; answering from an n-gram model instead", reason)
            tokenizer = getattr(fallback, "tokenizer", None) or KaffeeTokenizer.from_file(
                path / "tokenizer.json"
            )
            engine = cls(None, options, fallback=fallback, tokenizer=tokenizer)
            engine.stats.fallback_reason = reason
            return engine
        return cls(model, options, fallback=fallback)

    def _accelerate(self, model: LanguageModel) -> LanguageModel:
        """The fast decoder for gpt models (int8 on CPU unless told otherwise)."""
        if self.options.naive or not isinstance(model, GPTModel):
            return model
        return FastGPT.from_gpt(model, quantize=_quantize_mode(self.options.quantize, model.device.type))

    @property
    def degraded(self) -> bool:
        """True when answers come from the n-gram fallback."""
        return self.stats.fallback_reason is not None

    # -- workspace context ----------------------------------------------------------------------
    def set_workspace_files(self, files: dict[str, str]) -> None:
        """Text of the project's files (key: path or URI), for the workspace cache and the fallback."""
        files = {name: sanitize_text(text) for name, text in files.items()}
        self.cache.set_files(files)
        self.project.set_files(files)
        if self.options.workspace_cache or self.degraded:
            self.cache.refresh()
        if self.options.project_context:
            self.project.refresh()

    def update_document(self, uri: str, text: str) -> None:
        """The current text of an open document (cheap: the cache and the index update in the background)."""
        text = sanitize_text(text)  # a lone surrogate must not reach the tokenizer from any caller
        self.cache.update(uri, text)
        self.project.update(uri, text)

    def remove_document(self, uri: str) -> None:
        """The editor closed ``uri``; the file stays in the project index (see :meth:`forget_file`)."""
        self.cache.remove(uri)

    def workspace_file(self, uri: str, text: str) -> None:
        """A workspace file changed on disk (not open in the editor): re-index it."""
        self.project.update(uri, sanitize_text(text))
        if self.options.project_context:
            self.project.refresh()

    def reset_context(self) -> None:
        """Forget every pinned project context (evaluation: each question gets its own, fresh)."""
        self._pins.clear()

    def forget_file(self, uri: str) -> None:
        """``uri`` was deleted from the workspace."""
        self.cache.remove(uri)
        self.project.remove(uri)
        self._pins.pop(uri, None)

    def settle(self) -> None:
        """Finish pending cache and index work now (evaluation: answers must not depend on thread timing)."""
        if self.options.workspace_cache:
            self.cache.refresh(wait=True)
        if self.options.project_context:
            self.project.refresh(wait=True)

    # -- the two questions -------------------------------------------------------------------
    def next_tokens(
        self,
        prefix: str,
        suffix: str = "",
        k: int = 10,
        deadline: float | None = None,
        cancel: threading.Event | None = None,
        document: str | None = None,
    ) -> list[TokenSuggestion]:
        """The ``k`` most likely whole Java tokens at the cursor, best first.

        A suggestion's text is the token that starts at the cursor; if the cursor ends a
        word and the model continues that word, the suggestion is the whole word and
        ``attached`` is True. ``deadline`` is a ``time.monotonic()`` instant. ``document``
        (its URI) names the file for project context: it is not retrieved from itself.
        """
        deadline = self._deadline(deadline)
        if not self._acquire(cancel, deadline):
            return []
        try:
            self.stats.requests += 1
            return self._with_fallback(
                lambda: self._next_tokens(prefix, suffix, k, deadline, cancel, document), []
            )
        finally:
            self._lock.release()

    def complete(
        self,
        prefix: str,
        suffix: str = "",
        max_lines: int | None = None,
        deadline: float | None = None,
        cancel: threading.Event | None = None,
        document: str | None = None,
    ) -> Completion:
        """The rest of the line, or the body of the block the cursor just opened.

        ``deadline`` is a ``time.monotonic()`` instant; past it, or once ``cancel`` is
        set, decoding stops and the text so far comes back (stop_reason says which).
        """
        t0 = time.perf_counter()
        deadline = self._deadline(deadline)
        if not self._acquire(cancel, deadline):
            reason = "cancelled" if cancel is not None and cancel.is_set() else "deadline"
            return Completion("", reason, 0, (time.perf_counter() - t0) * 1000)
        try:
            self.stats.requests += 1
            text, reason, tokens = self._with_fallback(
                lambda: self._complete(prefix, suffix, max_lines, deadline, cancel, document),
                ("", "error", 0),
            )
        finally:
            self._lock.release()
        return Completion(text, reason, tokens, (time.perf_counter() - t0) * 1000)

    # -- internals -----------------------------------------------------------------------------
    def _deadline(self, deadline: float | None) -> float | None:
        if deadline is None and self.options.deadline_ms is not None:
            return time.monotonic() + self.options.deadline_ms / 1000.0
        return deadline

    def _acquire(self, cancel: threading.Event | None, deadline: float | None) -> bool:
        while not self._lock.acquire(timeout=0.005):
            if cancel is not None and cancel.is_set():
                return False
            if deadline is not None and time.monotonic() > deadline:
                return False
        if cancel is not None and cancel.is_set():
            self._lock.release()
            return False
        return True

    def _with_fallback(self, fn, empty):
        """Run ``fn`` on the neural model; if it raises, answer this request from the n-gram model.

        The next request tries the neural model again, so one bad input costs one answer,
        not the session; ``degraded`` says how the last request was answered.
        """
        if self._primary is None:
            return self._on_fallback(fn, empty)
        was = self.stats.fallback_reason
        if self.model is not self._primary:  # the last request fell back: try the model again
            self.model, self.runner, self._states = self._primary, self._primary_runner, []
            self.stats.fallback_reason = None
        try:
            result = fn()
        except KaffeeError:
            raise
        except Exception as exc:
            self.stats.fallback_reason = f"the model raised {type(exc).__name__}: {exc}"
            if was is None:
                log.exception("the neural model failed; answering from an n-gram model until it works again")
            else:
                log.warning("the neural model failed again (%s)", self.stats.fallback_reason)
            return self._on_fallback(fn, empty)
        if was is not None:
            log.warning("the neural model works again")
        return result

    def _on_fallback(self, fn, empty):
        try:
            self._use_fallback()  # inside: building the n-gram can fail on the same input
            return fn()
        except KaffeeError:
            raise
        except Exception:
            log.exception("the fallback model failed too; answering nothing")
            return empty

    def _use_fallback(self, extra_text: str = "") -> None:
        """Answer from the fallback model (an n-gram over the workspace and open documents) for now."""
        model = self._fallback
        if model is None:
            model = self._ngram
            if model is None or self._fallback_built_at != self.cache.builds or extra_text:
                model = self._ngram = self._build_ngram(extra_text)
                self._fallback_built_at = self.cache.builds
        if self.model is not model:
            self.model, self.runner, self._states = model, self._runner(model), []

    def _build_ngram(self, extra_text: str) -> LanguageModel:
        ids = self.cache.all_ids() + self.tokenizer.encode(extra_text)
        if len(ids) < 2:
            ids = [self.tokenizer.eos_id, self.tokenizer.eos_id]
        cfg = NgramConfig(vocab_size=self.tokenizer.vocab_size, order=6)
        model = NgramModel(cfg, NgramCounts.build(np.asarray(ids), cfg.vocab_size, cfg.order))
        model.tokenizer = self.tokenizer
        model.meta = {"family": "ngram", "built_from": "workspace"}
        return model

    def _runner(self, model: LanguageModel) -> Runner:
        return Runner(model, delay_s=self.options.step_delay_ms / 1000.0)

    def _decode_tail(self, ids: list[int]) -> str:
        """Text of ``ids`` (special tokens dropped), for matching on characters."""
        special = self.tokenizer.special_ids
        return self.tokenizer.decode_bytes(i for i in ids if i not in special).decode(
            "utf-8", errors="ignore"
        )

    def _mixer(self, document: str | None = None):
        """The function that mixes project knowledge into each step's next-token log-probs."""
        if self.degraded:
            return lambda lp, ctx: lp
        base = None
        if self.options.workspace_cache:
            self.cache.refresh()
            base = self.cache.mix
        pin = self._pins.get(document) if self.options.project_context else None
        hints = pin.hints if pin is not None else None
        if hints is None:
            return base or (lambda lp, ctx: lp)
        weight = self.options.project.hint_weight

        def mix(lp: torch.Tensor, ctx: list[int]) -> torch.Tensor:
            if base is not None:
                lp = base(lp, ctx)
            pieces, mass = hints.pieces(ctx, weight)
            if not pieces:
                return lp
            p = lp.double().exp() * (1.0 - mass)  # the rest of the mass stays the model's
            for tok, q in pieces.items():
                if tok < p.shape[0]:
                    p[tok] += q
            return torch.log(torch.clamp(p, min=1e-30)).float()

        return mix

    def _state_for(self, ids: list[int]) -> DecodeState:
        """The cached state sharing the longest prefix with ``ids`` (a new one while there is room)."""
        best, best_common = None, -1
        for st in self._states:
            n, limit = 0, min(len(st.ids), len(ids))
            while n < limit and st.ids[n] == ids[n]:
                n += 1
            if n > best_common:
                best, best_common = st, n
        if best is None or (best_common < min(64, len(ids) // 2) and len(self._states) < self.options.states):
            best = self.model.new_state()
        else:
            self._states.remove(best)
        self._states.append(best)  # most recently used last
        return best

    def _budget(self) -> int:
        room = self.options.max_new_tokens + self.options.speculate + 2
        return max(16, min(self.options.context_tokens, self.model.max_context - room))

    def _project_head(self, prefix: str, suffix: str, document: str | None, budget: int) -> list[int]:
        """Project context ids for this cursor: pinned per document while the cursor stays near."""
        cfg = self.options.project
        line = prefix.count("\n")
        pin = self._pins.get(document)
        index = self.project
        # pending updates, in the background; before the pin check, which keeps an incomplete pin only
        # while updates are pending: an update queued after the last drain must still get drained
        index.refresh()
        if (
            pin is not None
            and pin.generation == index.generation
            and (pin.complete or index.pending)
            and 0 <= line - pin.line <= cfg.refresh_lines  # typing onwards; a move up or far recomputes
        ):
            return pin.ids
        head_budget = min(cfg.budget_tokens, budget - cfg.min_window_tokens)
        if head_budget < 64:  # a small model's window is worth more than a sliver of context
            head_budget = 0
        chars = int(max(64, budget - head_budget) * CHARS_PER_TOKEN)
        start = snap_to_line(prefix, window_start(len(prefix), chars))
        blocks = index.context(prefix, suffix, document, start) if head_budget else []
        form = cfg.form if cfg.form != "auto" else ("files" if self.repo_layout else "comments")
        ids = prompt_head(blocks, self.tokenizer.encode, self.tokenizer.eos_id, head_budget, form)
        hints = None
        if cfg.member_hints:
            # variables declared before the cursor, or after the lines a reused pin may still be asked on
            later = suffix.split("\n")
            later = "\n".join([""] * min(len(later), cfg.pin_lines + 2) + later[cfg.pin_lines + 2 :])
            table = member_table(
                prefix, lambda names: index.declarations(names, exclude=document), cfg.max_hints, later
            )
            if table:
                hints = MemberHints(table, self.tokenizer.encode, self._decode_tail)
        if len(self._pins) >= 32:
            self._pins.pop(next(iter(self._pins)))
        self._pins[document] = _Pin(line, index.generation, not index.pending, ids, hints)
        return ids

    @property
    def repo_layout(self) -> bool:
        """The model was trained on repository-level text (files under path headers, FIM after other files)."""
        return not self.degraded and self.model.meta.get("layout") == REPO_LAYOUT

    def _prompt(self, prefix: str, suffix: str, heal: bool = True, document: str | None = None) -> Prompt:
        fim = self.options.fim and self.model.supports_fim and not self.degraded
        repo = self.repo_layout
        budget = self._budget()
        head: list[int] = []
        if self.options.project_context and (repo or not fim) and not self.degraded and budget >= 128:
            head = self._project_head(prefix, suffix, document, budget)
        return build_prompt(
            self.tokenizer,
            prefix,
            suffix,
            budget_tokens=budget - len(head),
            head=head,
            suffix_tokens=self.options.suffix_tokens,
            fim=fim,
            heal=heal and self.options.token_healing,
            encoder=self.encoder,
            header=file_header(document) if repo else "",
            fim_with_head=repo,
        )

    def _next_tokens(self, prefix, suffix, k, deadline, cancel, document) -> list[TokenSuggestion]:
        if self.degraded and self._fallback is None:
            self._use_fallback(prefix[-20000:])
        prompt = self._prompt(prefix, suffix, document=document)
        type_depth = open_type_arguments(_statement_tail(prefix))
        if self.remote is not None and self.remote.available():
            pieces = self.options.token_max_pieces
            ranked = self.remote.next_tokens(
                prompt, trailing_word(prefix), k, pieces, type_depth, deadline, cancel
            )
            if ranked is not None:  # None: the backend failed or returns no logprobs
                return [TokenSuggestion(c.text, lp, c.attached) for c, lp in ranked]
        state = self._state_for(prompt.ids)
        ranked = token_beam(
            self.runner,
            self.vocab,
            state,
            prompt,
            trailing_word(prefix),
            max(1, k),
            self._mixer(document),
            beam_width=max(self.options.beam_width, k),
            max_pieces=self.options.token_max_pieces,
            deadline=deadline,
            cancel=cancel,
            type_depth=type_depth,
        )
        return [TokenSuggestion(c.text, lp, c.attached) for c, lp in ranked]

    def _complete(self, prefix, suffix, max_lines, deadline, cancel, document) -> tuple[str, str, int]:
        opts = self.options
        reused = self._reuse(prefix, suffix)
        if reused is not None:
            self.stats.reused += 1
            return reused, "reuse", 0
        if self.degraded and self._fallback is None:
            self._use_fallback(prefix[-20000:])
        max_lines = opts.max_lines if max_lines is None else max(1, max_lines)
        block = block_context(prefix, suffix) if max_lines > 1 else None
        style = detect_indent(prefix[-20000:] + suffix[:5000])
        line_suffix = current_line_suffix(suffix)
        stop = BlockStop(block, max_lines, style) if block else LineStop(line_suffix)
        max_new = opts.max_new_tokens_block if block else opts.max_new_tokens
        gen = None
        if self.remote is not None and self.remote.available():  # None back: the local model answers
            gen = self.remote.complete(
                self._prompt(prefix, suffix, document=document), stop, max_new, deadline, cancel
            )
        if gen is None and opts.naive:
            gen = self._naive(prefix, suffix, stop, max_new, document)
        elif gen is None:
            prompt = self._prompt(prefix, suffix, document=document)
            state = self._state_for(prompt.ids)
            previous = self._previous.ids if self._previous is not None else None
            gen = greedy(
                self.runner,
                self.vocab,
                state,
                prompt,
                stop,
                max_new,
                self._mixer(document),
                deadline=deadline,
                cancel=cancel,
                speculate=opts.speculate,
                previous=previous,
            )
            self.stats.drafted += gen.drafted
            self.stats.accepted += gen.accepted
        if block:
            text = finish_block(gen.text, block, suffix, style)
        else:
            text = finish_line(gen.text, line_suffix, current_line_prefix(prefix), style, suffix)
        if gen.reason in NATURAL_STOPS and not block and text:
            self._previous = _Previous(
                prefix, suffix, text, list(self._states[-1].ids) if self._states else []
            )
        elif self._states:
            self._previous = _Previous("", "", "", list(self._states[-1].ids))
        return text, gen.reason, len(gen.ids)

    def _reuse(self, prefix: str, suffix: str) -> str | None:
        """The rest of the previous suggestion when the user typed its beginning."""
        prev = self._previous
        if (
            not self.options.reuse_previous
            or self.options.naive
            or prev is None
            or not prev.text
            or suffix != prev.suffix
        ):
            return None
        if not prefix.startswith(prev.prefix) or len(prefix) == len(prev.prefix):
            return None
        typed = prefix[len(prev.prefix) :]
        if len(typed) >= len(prev.text) or not prev.text.startswith(typed):
            return None
        return prev.text[len(typed) :]

    def _naive(self, prefix: str, suffix: str, stop, max_new: int, document: str | None) -> Generation:
        """The baseline: encode the whole window and call ``generate``, every time, no early stop."""
        model = self.model
        prompt = self._prompt(prefix, suffix, heal=False, document=document)
        eos = self.tokenizer.eos_id
        if isinstance(model, GPTModel):
            x = torch.tensor([prompt.ids], device=model.device)
            with torch.inference_mode():
                out = model.module.generate(
                    input_ids=x,
                    attention_mask=torch.ones_like(x),
                    max_new_tokens=max_new,
                    do_sample=False,
                    pad_token_id=eos,
                    eos_token_id=eos,
                )
            gen = out[0, x.shape[1] :].tolist()
        else:
            gen = []
            for _ in range(max_new):
                tok = int(torch.argmax(model.next_logprobs([prompt.ids + gen])[0]))
                if tok == eos:
                    break
                gen.append(tok)
        ids = [t for t in gen if t not in self.tokenizer.special_ids]
        text = self.tokenizer.decode_bytes(ids).decode("utf-8", errors="ignore")
        cut = stop.feed(text)
        if cut is not None:
            return Generation(text[: cut.at], gen, cut.reason)
        return Generation(text, gen, "eos" if len(ids) < len(gen) else "length")

    @property
    def tokens_advanced(self) -> int:
        """Tokens the model has encoded so far (prompt re-encoding and decoding together)."""
        return self.runner.tokens_advanced if self.runner is not None else 0


def _quantize_mode(option: str, device: str) -> str:
    """``auto`` means int8 on CPU; the int8 kernels exist only on CPU."""
    if option == "auto":
        option = "int8"
    if option == "int8" and not str(device).startswith("cpu"):
        return "none"
    return option


def resolve_device(device: str) -> str:
    """``auto`` picks CUDA when present; anything else must be a device torch knows."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise KaffeeError(f"unknown device {device!r} (use cpu, cuda or auto)") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise KaffeeError(f"device {device!r} was asked for but CUDA is not available")
    return device


def _statement_tail(prefix: str, limit: int = 2000) -> str:
    """The last lines of ``prefix`` (at most ``limit`` characters, from a line start).

    Enough to tell whether the cursor is inside type arguments: a type context never
    spans a statement boundary, so the lexer needs only the last few tokens.
    """
    if len(prefix) <= limit:
        return prefix
    tail = prefix[-limit:]
    return tail[tail.find("\n") + 1 :]
