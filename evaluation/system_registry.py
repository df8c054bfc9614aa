"""The system registry: ``--system`` specs -> systems (as ``tasks.py`` is for tasks).

A spec is ``KIND:TARGET[,option=value...]``; ``SYSTEM_KINDS`` lists every kind with
what it builds, and is the one place ``kaffee eval`` learns what ``--system`` accepts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from kaffee.errors import KaffeeError
from kaffee.evaluation.system_base import System, SystemSettings, SystemSpec

MODEL_KINDS = ("gpt", "lstm", "ngram", "hf", "model")  # hf: a Hugging Face causal-LM directory (models/hf.py)
DIR_KINDS = (*MODEL_KINDS, "bert")  # KIND:DIR specs (bert answers by filling masks, not through the engine)
SYSTEM_KINDS = (*DIR_KINDS, "mft", "lsp", "openai")
SPEC_HELP = (
    "a system spec is KIND:DIR[,option=value...] with KIND one of gpt, lstm, ngram, hf (a Hugging Face "
    "causal-LM directory), model "
    "(options: cache=on|off, project=on|off, fim=on|off, ctx=TOKENS, label=NAME, or any EngineOptions field), "
    "bert:DIR (a masked LM filling mask slots at the cursor; options slots, beam, ahead, max_pieces, right, label), "
    "'mft' (most-frequent-token baseline from the train split), 'lsp:COMMAND' (a stdio language server), "
    "or 'openai:URL[,model=NAME,local=DIR,api_key_env=VAR,timeout_ms=N]' (an OpenAI-compatible completions "
    "server behind Kaffee's prompt and post-processing; local=DIR gives the tokenizer, default the bundled model)"
)


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
    if kind == "openai":
        target, _, opts = rest.partition(",")
        if not sep or not target.strip():
            raise KaffeeError(
                f"system spec {raw!r} names no URL: use openai:URL, e.g. openai:http://gpu:8080/v1"
            )
        options = _parse_options(opts, raw) if opts else {}
        label = options.pop("label", spec)
        return SystemSpec("openai", target.strip(), options, label=label, text=spec)
    if kind.startswith("mft"):
        head, _, opts = spec.partition(",")
        if head.strip().lower() not in ("mft", "mft:"):
            raise KaffeeError(f"cannot parse system spec {raw!r}; {SPEC_HELP}")
        options = _parse_options(opts, raw) if opts else {}
        label = options.pop("label", "mft")
        return SystemSpec("mft", "", options, label=label, text=spec)
    if kind not in DIR_KINDS or not sep:
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


def _engine(spec: SystemSpec, settings: SystemSettings, train_texts) -> System:
    from kaffee.evaluation.systems import EngineSystem

    return EngineSystem(spec, device=settings.device)


def _bert(spec: SystemSpec, settings: SystemSettings, train_texts) -> System:
    from kaffee.evaluation.bert_system import BertSystem

    return BertSystem(spec, device=settings.device)


def _mft(spec: SystemSpec, settings: SystemSettings, train_texts) -> System:
    from kaffee.evaluation.systems import MostFrequentTokenSystem

    if train_texts is None:
        raise KaffeeError("mft needs a corpus with a train split (--corpus)")
    unknown = set(spec.options) - {"max_files"}
    if unknown:
        raise KaffeeError(
            f"system spec {spec.text!r}: unknown option(s) {sorted(unknown)}; mft takes max_files=N"
        )
    raw = spec.options.get("max_files", "2000")
    try:
        max_files = int(raw)
    except ValueError:
        raise KaffeeError(f"system spec {spec.text!r}: max_files={raw!r} is not a whole number") from None
    return MostFrequentTokenSystem(
        train_texts(max_files), max_files=max_files, label=spec.label, note=f"max_files={max_files}"
    )


def _lsp(spec: SystemSpec, settings: SystemSettings, train_texts) -> System:
    from kaffee.evaluation.lsp_system import LspSystem, lsp_argv

    return LspSystem(
        spec,
        lsp_argv(spec.target),
        timeout=settings.lsp_timeout,
        start_timeout=settings.lsp_start_timeout,
        workspace=settings.workspace,
        init_options=settings.lsp_init_options,
    )


def _openai(spec: SystemSpec, settings: SystemSettings, train_texts) -> System:
    from kaffee.evaluation.remote_system import RemoteSystem

    return RemoteSystem(spec, device=settings.device)


# kind -> builder(spec, settings, train_texts); train_texts(max_files) yields train-split texts
Builder = Callable[[SystemSpec, SystemSettings, "Callable[[int], Iterable[str]] | None"], System]
SYSTEM_KINDS: dict[str, Builder] = {
    **{kind: _engine for kind in MODEL_KINDS},
    "bert": _bert,
    "mft": _mft,
    "lsp": _lsp,
    "openai": _openai,
}


def build_system(spec: SystemSpec, settings: SystemSettings, train_texts=None) -> System:
    """Instantiate a parsed spec. ``train_texts(max_files)`` yields train-split texts (for mft)."""
    builder = SYSTEM_KINDS.get(spec.kind)
    if builder is None:
        raise KaffeeError(f"unknown system kind {spec.kind!r}; {SPEC_HELP}")
    return builder(spec, settings, train_texts)
