"""The prompt layout shared by training and serving: path headers and the fill-in-the-middle suffix.

Training text (``training/data.py``) and the engine's prompt (``server/context.py``,
``server/project.py``) both build their pieces here, so a model sees at inference
exactly the shapes it was trained on:

- a file is ``<eos>``-separated from what precedes it and, in the repository layout,
  starts with ``path_header(short_label(path))``;
- a fill-in-the-middle suffix is ``fim_suffix_ids``: the text after the middle, cut at a
  line end to about ``suffix_tokens`` tokens (what an editor's cursor gives the engine).

The layout a model was trained with is recorded in its config.json (``meta["layout"]``);
``REPO_LAYOUT`` there means "files of one project side by side, each under its path".
"""

from __future__ import annotations

from urllib.parse import unquote, urlparse

from kaffee.data.tokenizer import KaffeeTokenizer

REPO_LAYOUT = "repo"  # meta["layout"] of a model trained on repository-level text
SUFFIX_TOKENS = 32  # tokens of text after the cursor in a FIM prompt (engine default and training)
CHARS_PER_TOKEN = 3.5  # rough Java characters per token, to cut text before encoding it


def short_label(key: str, parts: int = 3) -> str:
    """The last ``parts`` components of a file URI or path (what the prompt calls the file)."""
    path = unquote(urlparse(key).path) if "://" in key else key
    pieces = [p for p in path.replace("\\", "/").split("/") if p]
    return "/".join(pieces[-parts:]) if pieces else key


def path_header(label: str) -> str:
    """The line that names a file in a prompt: ``// Path: src/bank/Account.java``."""
    label = label.replace("\n", " ").replace("\r", " ")
    return f"// Path: {label}\n"


def file_header(path: str | None) -> str:
    """The header a file starts with in the repository layout: its path's short label ("" without a path)."""
    return path_header(short_label(path)) if path else ""


def cut_at_line_end(text: str, max_chars: int) -> str:
    """``text`` cut to at most ``max_chars``, at a line end when one is in reach."""
    if len(text) <= max_chars:
        return text
    nl = text.rfind("\n", 0, max_chars)
    return text[: nl + 1] if nl > 0 else text[:max_chars]


def fim_suffix_ids(
    tokenizer: KaffeeTokenizer,
    suffix: str,
    suffix_tokens: int = SUFFIX_TOKENS,
    chars_per_token: float = CHARS_PER_TOKEN,
) -> list[int]:
    """The ids of a FIM suffix: ``suffix`` cut at a line end, then to ``suffix_tokens`` tokens,
    never inside a character (a byte-level token can hold part of one)."""
    if suffix_tokens <= 0:
        return []
    cut = cut_at_line_end(suffix, int(suffix_tokens * chars_per_token * 1.5))
    ids = tokenizer.encode(cut)
    if len(ids) <= suffix_tokens:
        return ids
    ids = ids[:suffix_tokens]
    while ids:
        try:
            tokenizer.decode_bytes(ids).decode("utf-8")
            return ids
        except UnicodeDecodeError:
            ids.pop()
    return ids


def snap_to_line(text: str, pos: int) -> int:
    """The first line start at or after ``pos`` (``pos`` itself when no line break follows)."""
    if pos <= 0:
        return 0
    if pos >= len(text):
        return len(text)
    if text[pos - 1] == "\n":
        return pos
    nl = text.find("\n", pos)
    return pos if nl < 0 else nl + 1


def window_start(prefix_len: int, window_chars: int) -> int:
    """A start offset that keeps the window within ``window_chars`` and moves in quarter steps."""
    if prefix_len <= window_chars:
        return 0
    quantum = max(1, window_chars // 4)
    return -(-(prefix_len - window_chars) // quantum) * quantum  # ceil to a multiple of quantum
