"""Java lexical tokens from tree-sitter-java: the unit every evaluation task counts in.

A token is a leaf of the tree-sitter parse (a real lexer, not a regex guess), except
that a whole string, character or text-block literal is one token, as in the Java
language specification. Comments are not tokens. Offsets are *character* offsets into
the Python string (tree-sitter reports bytes; we convert).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from functools import lru_cache

# Token kinds reported by the token task (DESIGN.md "Metrics").
IDENTIFIER = "identifier"
KEYWORD = "keyword"
OPERATOR = "operator/punctuation"
LITERAL = "literal"
MEMBER = "member after ."
KINDS: tuple[str, ...] = (IDENTIFIER, KEYWORD, OPERATOR, LITERAL, MEMBER)

_COMMENTS = frozenset({"line_comment", "block_comment", "comment"})
# Nodes that are one lexical token even though tree-sitter gives them children.
_WHOLE = frozenset({"string_literal", "character_literal", "text_block"})
_LITERAL_LEAVES = frozenset({"true", "false", "null_literal"})
_IDENTIFIER_LEAVES = frozenset({"identifier", "type_identifier"})
# Declarations whose lines are not "code lines" for the line task.
_HEADER_DECLS = frozenset({"package_declaration", "import_declaration"})


@dataclass(frozen=True)
class JavaToken:
    text: str
    kind: str  # one of KINDS
    start: int  # character offset of the first character
    end: int  # character offset one past the last character
    line: int  # 0-based line of ``start``
    end_line: int  # 0-based line of the last character
    header: bool  # inside a package or import declaration


@lru_cache(maxsize=1)
def _parser():
    import tree_sitter_java
    from tree_sitter import Language, Parser

    return Parser(Language(tree_sitter_java.language()))


def _classify(node_type: str, named: bool, text: str, prev_text: str | None) -> str:
    if node_type in _WHOLE or node_type.endswith("_literal") or node_type in _LITERAL_LEAVES:
        return LITERAL
    if node_type in _IDENTIFIER_LEAVES:
        return MEMBER if prev_text == "." else IDENTIFIER
    if text[:1].isalpha() or text[:1] == "_":
        # anonymous keyword leaves ('public', 'int', 'new') and keyword-like named
        # leaves ('void_type', 'boolean_type', 'this', 'super')
        return KEYWORD
    return OPERATOR


class _Offsets:
    """Byte offset -> character offset, and character offset -> line number."""

    def __init__(self, text: str, data: bytes):
        self.ascii = len(data) == len(text)
        if not self.ascii:
            starts = []
            pos = 0
            for ch in text:
                starts.append(pos)
                pos += len(ch.encode("utf-8"))
            self.byte_starts = starts
        self.line_starts = [0] + [i + 1 for i, ch in enumerate(text) if ch == "\n"]

    def char(self, byte_offset: int) -> int:
        if self.ascii:
            return byte_offset
        return bisect.bisect_left(self.byte_starts, byte_offset)

    def line(self, char_offset: int) -> int:
        return bisect.bisect_right(self.line_starts, char_offset) - 1


def lex(text: str) -> list[JavaToken]:
    """All Java tokens of ``text`` in order (comments skipped, literals whole)."""
    data = text.encode("utf-8", errors="surrogatepass")
    tree = _parser().parse(data)
    offsets = _Offsets(text, data)
    out: list[JavaToken] = []
    prev_text: str | None = None
    cursor = tree.walk()
    header_depth = 0  # >0 while inside a package/import declaration
    header_stack: list[bool] = []
    while True:
        node = cursor.node
        ntype = node.type
        descend = node.child_count > 0 and ntype not in _WHOLE and ntype not in _COMMENTS
        if not descend and ntype not in _COMMENTS and node.end_byte > node.start_byte:
            start, end = offsets.char(node.start_byte), offsets.char(node.end_byte)
            tok_text = text[start:end]
            kind = _classify(ntype, node.is_named, tok_text, prev_text)
            out.append(
                JavaToken(
                    tok_text, kind, start, end, offsets.line(start), offsets.line(end - 1), header_depth > 0
                )
            )
            prev_text = tok_text
        if descend and cursor.goto_first_child():
            is_header = ntype in _HEADER_DECLS
            header_stack.append(is_header)
            header_depth += is_header
            continue
        while not cursor.goto_next_sibling():
            if not cursor.goto_parent():
                return out
            header_depth -= header_stack.pop()


@dataclass(frozen=True)
class CodeLine:
    """A line the line task may cut: its tokens all start and end on it, none in a header."""

    line: int
    tokens: tuple[JavaToken, ...]


def code_lines(tokens: list[JavaToken], min_tokens: int = 2) -> list[CodeLine]:
    """Lines with at least ``min_tokens`` code tokens, none of them multi-line or package/import."""
    by_line: dict[int, list[JavaToken]] = {}
    bad: set[int] = set()
    for t in tokens:
        if t.header or t.end_line != t.line:
            bad.update(range(t.line, t.end_line + 1))
            continue
        by_line.setdefault(t.line, []).append(t)
    return [
        CodeLine(line, tuple(toks))
        for line, toks in sorted(by_line.items())
        if line not in bad and len(toks) >= min_tokens
    ]


def line_bounds(text: str, offset: int) -> tuple[int, int]:
    """(start, end) character offsets of the line holding ``offset`` (end excludes the newline)."""
    start = text.rfind("\n", 0, offset) + 1
    end = text.find("\n", offset)
    if end < 0:
        end = len(text)
    if end > start and text[end - 1] == "\r":
        end -= 1
    return start, end


def spaced(text: str) -> str:
    """Java tokens of a code fragment joined by single spaces (CodeXGLUE's tokenised form)."""
    return " ".join(t.text for t in lex(text))
