"""What the model reads: the prompt window, token healing, and facts about the cursor.

The window is the text before the cursor, trimmed from the cursor outwards to a token
budget. Its start is quantised (it moves in steps of a quarter window, always to a line
start), so consecutive requests share the beginning of their prompt and the model's
cached state can be reused (only the changed tail is re-encoded).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from kaffee.data.layout import CHARS_PER_TOKEN, fim_suffix_ids, snap_to_line, window_start
from kaffee.data.tokenizer import KaffeeTokenizer
from kaffee.server.java_tokens import lex


@dataclass
class Prompt:
    ids: list[int]  # token ids the model reads, healed tail removed
    heal: bytes  # bytes backed off the end of the prefix: the continuation must start with them
    window_start: int  # offset in the prefix where the window begins
    fim: bool  # the prompt is prefix-suffix-middle (fill-in-the-middle)


@dataclass(frozen=True)
class IndentStyle:
    tabs: bool  # the file indents with tabs
    width: int  # columns per level (a tab counts as this many)

    @property
    def unit(self) -> str:
        return "\t" if self.tabs else " " * self.width


@dataclass(frozen=True)
class BlockContext:
    """The cursor sits on a fresh line right after a line that opens a block with ``{``."""

    open_indent: str  # leading whitespace of the line holding the "{"
    line_prefix: str  # what is already on the cursor's line before it (whitespace only)
    closer_in_suffix: bool  # the text after the cursor already closes the block


def last_pretoken_bytes(tokenizer: KaffeeTokenizer, text: str) -> int:
    """Byte length of the tokenizer's last pre-token in ``text`` (BPE never merges across one)."""
    tail = text[-200:]
    pieces = tokenizer.tk.pre_tokenizer.pre_tokenize_str(tail)
    return len(pieces[-1][0]) if pieces else 0  # byte-level: one character per byte


class PrefixEncoder:
    """Encodes windows, reusing the ids of the lines a window shares with the previous one.

    The tokenizer's pre-tokenizer always splits at a line break and BPE never merges
    across a split, so ``encode(a + b) == encode(a) + encode(b)`` when ``a`` ends with
    a newline: only the lines after the cached head are encoded again.
    """

    def __init__(self, tokenizer: KaffeeTokenizer):
        self.tokenizer = tokenizer
        self._head = ""  # text of the cached head (ends with a newline)
        self._ids: list[int] = []  # its ids

    def encode(self, text: str) -> list[int]:
        if not getattr(self.tokenizer, "splits_at_newline", True):  # GPT-2's split (models/hf.py)
            return self.tokenizer.encode(text)
        head = self._head
        if head and text.startswith(head):
            ids = self._ids + self.tokenizer.encode(text[len(head) :])
        else:
            ids = self.tokenizer.encode(text)
        cut = text.rfind("\n", 0, max(0, len(text) - 200)) + 1  # keep the last lines out of the head
        if cut > len(head) + 2000 or not text.startswith(head) or not head:
            if cut > 0:
                self._head, self._ids = text[:cut], self.tokenizer.encode(text[:cut])
            else:
                self._head, self._ids = "", []
        return ids


def build_prompt(
    tokenizer: KaffeeTokenizer,
    prefix: str,
    suffix: str,
    budget_tokens: int,
    suffix_tokens: int,
    fim: bool,
    heal: bool,
    chars_per_token: float = CHARS_PER_TOKEN,
    encoder: PrefixEncoder | None = None,
    head: list[int] | None = None,
    header: str = "",
    fim_with_head: bool = False,
) -> Prompt:
    """Encode the window before the cursor (and the suffix for FIM), backing off the last pre-token.

    ``head`` (project context, already separated from what follows) goes first; the
    window then starts without the end-of-text token a file start otherwise gets.
    ``header`` (the file's path header of the repository layout) starts the window when
    the window starts at the file's start, as it starts every file in training.
    ``fim_with_head`` keeps ``head`` before a FIM prompt (models trained on repository
    text, where a FIM document follows other files of its project).
    """
    use_fim = fim and suffix_tokens > 0 and bool(suffix.strip())
    suffix_ids: list[int] = []
    if use_fim:
        suffix_ids = fim_suffix_ids(tokenizer, suffix, suffix_tokens, chars_per_token)
        budget_tokens -= len(suffix_ids) + 3
    header_ids = tokenizer.encode(header) if header else []
    budget_tokens -= len(header_ids)
    budget_tokens = max(8, budget_tokens)
    window_chars = max(64, int(budget_tokens * chars_per_token))
    start = snap_to_line(prefix, window_start(len(prefix), window_chars))
    while True:
        ids = encoder.encode(prefix[start:]) if encoder is not None else tokenizer.encode(prefix[start:])
        if len(ids) + 1 <= budget_tokens:
            break
        step = max(1, window_chars // 4)
        nxt = snap_to_line(prefix, start + step)
        if nxt >= len(prefix) - step or nxt <= start:  # one giant line: keep its last tokens
            ids = ids[-(budget_tokens - 1) :]
            break
        start = nxt
    healed = b""
    if heal and ids:
        want = last_pretoken_bytes(tokenizer, prefix[max(start, len(prefix) - 200) :])
        table = tokenizer.id_to_bytes
        n, got = 0, 0
        while got < want and n < len(ids) and ids[-1 - n] not in tokenizer.special_ids:
            got += len(table[ids[-1 - n]])
            n += 1
        if n and got == want:
            healed = b"".join(table[i] for i in ids[len(ids) - n :])
            ids = ids[: len(ids) - n]
    if header_ids and (start == 0 or use_fim):
        # the file's path header where training puts it: at the file start, and first in every FIM prefix
        ids = header_ids + ids
    if use_fim:
        ids = tokenizer.fim_ids(ids, suffix_ids)
        if head and fim_with_head:
            ids = list(head) + ids
    elif head:
        ids = list(head) + ids
    elif start == 0 or not ids:
        ids = [tokenizer.eos_id] + ids  # training puts an end-of-text token before every file
    return Prompt(ids=ids, heal=healed, window_start=start, fim=use_fim)


def current_line_prefix(prefix: str) -> str:
    return prefix[prefix.rfind("\n") + 1 :]


def current_line_suffix(suffix: str) -> str:
    """The rest of the cursor's line after the cursor (no line break)."""
    end = len(suffix)
    for ch in ("\n", "\r"):
        i = suffix.find(ch, 0, end)
        if i >= 0:
            end = i
    return suffix[:end]


def leading_ws(line: str) -> str:
    return line[: len(line) - len(line.lstrip(" \t"))]


def block_context(prefix: str, suffix: str) -> BlockContext | None:
    """Block mode applies when the cursor is on an empty line right after a line ending in ``{``."""
    line_prefix = current_line_prefix(prefix)
    if line_prefix.strip() or current_line_suffix(suffix).strip():
        return None
    before = prefix[: len(prefix) - len(line_prefix)].rstrip()
    if not before.endswith("{"):
        return None
    open_line = before[before.rfind("\n") + 1 :]
    open_indent = leading_ws(open_line)
    return BlockContext(
        open_indent=open_indent,
        line_prefix=line_prefix,
        closer_in_suffix=suffix.lstrip().startswith("}") or block_closed_in(suffix, open_indent),
    )


def block_closed_in(suffix: str, open_indent: str, max_chars: int = 20_000) -> bool:
    """Whether ``suffix`` already closes the block just opened: the first ``}`` that balances it
    starts a line indented like the opening line (the cursor is at the top of an existing body).

    A ``}`` at another indentation is taken to close an enclosing block, so a new method
    typed above others in a class is still completed with its own ``}``.
    """
    text = suffix[:max_chars]
    depth = 1
    for t in lex(text):
        if t.kind != "separator" or t.text not in "{}":
            continue
        depth += 1 if t.text == "{" else -1
        if depth == 0:
            line_start = text.rfind("\n", 0, t.start) + 1
            return text[line_start : t.start] == open_indent
    return False


def detect_indent(text: str, default_width: int = 4) -> IndentStyle:
    """Tabs or spaces, and the width of one level, from the lines of ``text``."""
    tabs = spaces = 0
    deltas: Counter[int] = Counter()
    prev = 0
    for line in text.splitlines()[:4000]:
        if not line.strip():
            continue
        if line.startswith("\t"):
            tabs += 1
            continue
        width = len(line) - len(line.lstrip(" "))
        if width:
            spaces += 1
        if width > prev and width - prev in (2, 3, 4, 8):
            deltas[width - prev] += 1
        prev = width
    width = deltas.most_common(1)[0][0] if deltas else default_width
    return IndentStyle(tabs=tabs > spaces, width=width)


def indent_columns(ws: str, width: int) -> int:
    cols = 0
    for ch in ws:
        cols = (cols // width + 1) * width if ch == "\t" else cols + 1
    return cols


def render_indent(cols: int, style: IndentStyle) -> str:
    if style.tabs:
        return "\t" * (cols // style.width) + " " * (cols % style.width)
    return " " * cols
