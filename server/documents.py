"""Open documents and LSP positions, with no LSP library in sight (pure, fuzzable).

LSP counts columns in UTF-16 code units by default (``utf-8`` and ``utf-32`` can be
negotiated); Python strings index code points. Every conversion here clamps instead
of failing: a line past the end means the end of the document, a column past the end
of a line means the end of that line, and a column that falls inside a surrogate pair
(the middle of a non-BMP character) means the start of that character.

Text enters sanitised: JSON can carry an unpaired UTF-16 surrogate (``"\\ud800"``), which
Python keeps as a lone code point that no tokenizer accepts; it becomes U+FFFD, which
takes the same room in every encoding, so positions stay in step with the editor's.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, field

from kaffee.errors import KaffeeError

ENCODINGS = ("utf-16", "utf-8", "utf-32")
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_SURROGATE = re.compile("[\ud800-\udfff]")
LSP_UINT_MAX = 2**31 - 1  # LSP's uinteger: positions outside 0..2**31-1 fail the protocol's types


def sanitize_text(text: str) -> str:
    """``text`` with every lone surrogate replaced by U+FFFD (one unit in UTF-16, three bytes in UTF-8)."""
    if text.isascii():
        return text
    return _SURROGATE.sub("\ufffd", text)


def clamp_position(line: int, character: int) -> tuple[int, int]:
    """A position in LSP's uinteger range that :meth:`Document.offset_at` resolves like (line, character)."""
    if line < 0:
        return 0, 0  # before the first line: the start of the document
    return min(line, LSP_UINT_MAX), max(0, min(character, LSP_UINT_MAX))


def char_units(ch: str, encoding: str = "utf-16") -> int:
    """How many code units ``ch`` takes in ``encoding``."""
    cp = ord(ch)
    if encoding == "utf-16":
        return 2 if cp > 0xFFFF else 1
    if encoding == "utf-8":
        return 1 if cp < 0x80 else 2 if cp < 0x800 else 3 if cp < 0x10000 else 4
    return 1


def units_len(text: str, encoding: str = "utf-16") -> int:
    """Length of ``text`` in code units of ``encoding``."""
    if encoding == "utf-32" or text.isascii():
        return len(text)
    if encoding == "utf-16":
        return len(text) + sum(1 for ch in text if ord(ch) > 0xFFFF)
    return len(text.encode("utf-8", errors="surrogatepass"))


def column_to_index(line: str, column: int, encoding: str = "utf-16") -> int:
    """Code-point index in ``line`` of a column in code units; clamped, never inside a character."""
    if column <= 0:
        return 0
    if encoding == "utf-32" or line.isascii():
        return min(column, len(line))
    units = 0
    for i, ch in enumerate(line):
        units += char_units(ch, encoding)
        if units > column:
            return i  # the column falls inside (or right before the end of) this character
        if units == column:
            return i + 1
    return len(line)


@dataclass
class Document:
    """One open text document: its text, version and a lazily built line index."""

    uri: str
    text: str
    version: int | None = None
    _starts: list[int] | None = field(default=None, repr=False)  # offset where each line begins

    def _line_starts(self) -> list[int]:
        if self._starts is None:
            self._starts = [0] + [m.end() for m in _LINE_BREAK.finditer(self.text)]
        return self._starts

    @property
    def line_count(self) -> int:
        return len(self._line_starts())

    def line_span(self, line: int) -> tuple[int, int]:
        """(start, end) offsets of ``line``'s content, without its line break."""
        starts = self._line_starts()
        start = starts[line]
        end = starts[line + 1] if line + 1 < len(starts) else len(self.text)
        while end > start and self.text[end - 1] in "\r\n":
            end -= 1
        return start, end

    def offset_at(self, line: int, column: int, encoding: str = "utf-16") -> int:
        """Offset in ``text`` of an LSP position, clamped to the document."""
        starts = self._line_starts()
        if line < 0:
            return 0
        if line >= len(starts):
            return len(self.text)
        start, end = self.line_span(line)
        return start + column_to_index(self.text[start:end], column, encoding)

    def position_at(self, offset: int, encoding: str = "utf-16") -> tuple[int, int]:
        """LSP (line, column) of an offset in ``text`` (clamped)."""
        offset = max(0, min(offset, len(self.text)))
        starts = self._line_starts()
        line = bisect.bisect_right(starts, offset) - 1
        start, end = self.line_span(line)
        offset = min(offset, end)  # an offset inside a CRLF pair belongs to the line's end
        return line, units_len(self.text[start:offset], encoding)

    def apply_change(
        self,
        text: str,
        start: tuple[int, int] | None = None,
        end: tuple[int, int] | None = None,
        encoding: str = "utf-16",
    ) -> None:
        """Replace the range ``start``..``end`` (LSP positions) with ``text``; no range: the whole text."""
        text = sanitize_text(text)
        if start is None or end is None:
            self.text = text
            self._starts = None
            return
        a = self.offset_at(*start, encoding=encoding)
        b = self.offset_at(*end, encoding=encoding)
        if b < a:
            a, b = b, a
        old = self.text
        self.text = old[:a] + text + old[b:]
        self._shift_line_starts(a, b, text, old)

    def _shift_line_starts(self, a: int, b: int, inserted: str, old: str) -> None:
        """Keep the line index valid after an edit; only a one-line edit is patched in place."""
        starts = self._starts
        if starts is None:
            return
        touches_break = any(c in "\r\n" for c in inserted) or any(c in "\r\n" for c in old[a:b])
        near_cr = (a > 0 and old[a - 1] == "\r") or (b < len(old) and old[b] == "\n")
        if touches_break or near_cr:
            self._starts = None
            return
        delta = len(inserted) - (b - a)
        if delta:
            first = bisect.bisect_right(starts, a)
            starts[first:] = [s + delta for s in starts[first:]]


class DocumentStore:
    """The open documents of one editor session, keyed by URI."""

    def __init__(self) -> None:
        self.docs: dict[str, Document] = {}

    def open(self, uri: str, text: str, version: int | None = None) -> Document:
        doc = Document(uri, sanitize_text(text), version)
        self.docs[uri] = doc
        return doc

    def get(self, uri: str) -> Document:
        doc = self.docs.get(uri)
        if doc is None:
            raise KaffeeError(
                f"unknown document {uri!r}: it was never opened (send textDocument/didOpen first)"
            )
        return doc

    def close(self, uri: str) -> None:
        self.docs.pop(uri, None)

    def __contains__(self, uri: str) -> bool:
        return uri in self.docs
