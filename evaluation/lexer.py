"""Java lexical tokens as every evaluation task counts them.

The tokens are those of ``server/java_tokens.py`` -- the lexer the engine uses to decide
where a whole token ends -- so a task's target and an engine's suggestion are cut by one
definition (``Map<String, List<Integer`` is followed by ``>``, as JLS §3.2 says and as
the engine suggests). This module adds what the tasks need on top: a kind per token
(the member after ``.`` apart), line numbers, and whether a token is part of a package
or import declaration. Comments are not tokens; a string, character or text-block
literal is one. Offsets are character offsets into the Python string.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, replace
from functools import lru_cache

from kaffee.server import java_tokens

# Token kinds reported by the token task (docs/architecture.md, "Metrics").
IDENTIFIER = "identifier"
KEYWORD = "keyword"
OPERATOR = "operator/punctuation"
LITERAL = "literal"
MEMBER = "member after ."
KINDS: tuple[str, ...] = (IDENTIFIER, KEYWORD, OPERATOR, LITERAL, MEMBER)
# Categories of the study Kaffee grew from (Böning 2020), reported beside the kinds; a
# token may have one or none. A method call is a member after ``.`` followed by ``(``;
# a type is a name tree-sitter-java parses as a type identifier.
METHOD_CALL = "method call"
TYPE = "type"
CATEGORIES: tuple[str, ...] = (METHOD_CALL, TYPE)

# Words the JLS calls contextual keywords: identifiers unless they stand where the
# grammar makes them keywords. Counted as identifiers (tree-sitter-java does the same
# for ``var``, ``record`` and ``yield`` as names).
_CONTEXTUAL = frozenset({"var", "record", "yield", "sealed", "permits"})


@dataclass(frozen=True)
class JavaToken:
    text: str
    kind: str  # one of KINDS
    start: int  # character offset of the first character
    end: int  # character offset one past the last character
    line: int  # 0-based line of ``start``
    end_line: int  # 0-based line of the last character
    header: bool  # inside a package or import declaration
    category: str | None = None  # one of CATEGORIES, or None


def _kind(t: java_tokens.Lexeme, prev_text: str | None) -> str:
    if t.kind == "literal":
        return LITERAL
    if t.kind == "identifier" or (t.kind == "keyword" and t.text in _CONTEXTUAL):
        return MEMBER if prev_text == "." else IDENTIFIER
    if t.kind == "keyword":
        return KEYWORD
    return OPERATOR


def lex(text: str) -> list[JavaToken]:
    """All Java tokens of ``text`` in order (comments skipped, literals whole)."""
    line_starts = [0] + [i + 1 for i, ch in enumerate(text) if ch == "\n"]

    def line_of(offset: int) -> int:
        return bisect.bisect_right(line_starts, offset) - 1

    out: list[JavaToken] = []
    prev_text: str | None = None
    depth = 0  # brace depth: package and import declarations live at depth 0
    header = False
    for t in java_tokens.lex(text):
        if t.kind == "comment":
            continue
        if depth == 0 and t.kind == "keyword" and t.text in ("package", "import"):
            header = True
        end = t.start + len(t.text)
        out.append(
            JavaToken(t.text, _kind(t, prev_text), t.start, end, line_of(t.start), line_of(end - 1), header)
        )
        if header and t.text == ";":
            header = False
        depth += (t.text == "{") - (t.text == "}") if t.kind == "separator" else 0
        depth = max(depth, 0)
        prev_text = t.text
    return _categorise(text, out)


def _categorise(text: str, tokens: list[JavaToken]) -> list[JavaToken]:
    """Tag method calls (from the tokens) and types (from tree-sitter-java's parse)."""
    names = [i for i, t in enumerate(tokens) if t.kind in (IDENTIFIER, MEMBER)]
    if not names:
        return tokens
    types = _type_identifier_starts(text)
    out = list(tokens)
    for i in names:
        t = tokens[i]
        if t.kind == MEMBER and i + 1 < len(tokens) and tokens[i + 1].text == "(":
            out[i] = replace(t, category=METHOD_CALL)
        elif t.start in types:
            out[i] = replace(t, category=TYPE)
    return out


def _type_identifier_starts(text: str) -> set[int]:
    """Character offsets where tree-sitter-java sees a ``type_identifier``."""
    data = text.encode("utf-8", errors="surrogatepass")
    tree = _parser().parse(data)
    starts: set[int] = set()
    stack = [tree.root_node]
    while stack:
        node = stack.pop()
        if node.type == "type_identifier":
            starts.add(node.start_byte)
        else:
            stack.extend(node.children)
    if len(data) == len(text):
        return starts
    byte_to_char, pos = {}, 0  # non-ASCII text: byte offsets -> character offsets
    for i, ch in enumerate(text):
        byte_to_char[pos] = i
        pos += len(ch.encode("utf-8", errors="surrogatepass"))
    return {byte_to_char[b] for b in starts if b in byte_to_char}


@lru_cache(maxsize=1)
def _parser():
    import tree_sitter_java
    from tree_sitter import Language, Parser

    return Parser(Language(tree_sitter_java.language()))


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
