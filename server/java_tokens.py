"""A small, forgiving Java lexer: whole-token boundaries, token kinds, bracket balance.

The one definition of a whole Java token in Kaffee: the engine uses it to decide when a
run of sub-word pieces forms one token, the post-processing to count brackets outside
strings and comments, and the evaluation (``evaluation/lexer.py``) to cut its targets.
It never fails: anything it does not know becomes an ``unknown`` token, and unterminated
strings, characters and comments come back with ``complete=False``.

Java's lexical grammar is not context-free in one place, and this lexer follows it
(JLS 17 §3.2): in a type context, ``>>`` and ``>>>`` are two and three ``>`` tokens
(``Map<String, List<Integer>>``). A regex cannot see the type context, so ``lex`` tracks
the ``<`` that may open type arguments (see ``TypeArguments``); tests check it against
tree-sitter-java's parse.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

KEYWORDS = frozenset(
    """abstract assert boolean break byte case catch char class const continue default do double
    else enum extends final finally float for goto if implements import instanceof int interface
    long native new package private protected public return short static strictfp super switch
    synchronized this throw throws transient try void volatile while var record yield sealed permits""".split()
)
LITERAL_WORDS = frozenset(("true", "false", "null"))
OPERATORS = sorted(
    """>>>= <<= >>= >>> ... -> :: ++ -- && || == != <= >= += -= *= /= &= |= ^= %= << >> = > < ! ~ ? : + - * / & | ^ %""".split(),
    key=len,
    reverse=True,
)
SEPARATORS = "(){}[];,.@"
OPENERS = {"(": ")", "[": "]", "{": "}"}
CLOSERS = {v: k for k, v in OPENERS.items()}
WORD_CHARS = re.compile(r"[\w$]")
_WORD = re.compile(r"(?:[^\W\d]|\$)[\w$]*")

# Order matters: comments and literals before operators, text blocks before strings.
_LEXER = re.compile(
    r"""
    (?P<whitespace>\s+)
  | (?P<comment>//[^\r\n]*|/\*(?:.|\n)*?\*/)
  | (?P<open_comment>/\*(?:.|\n)*)
  | (?P<textblock>\"\"\"(?:[^\\]|\\.)*?\"\"\")
  | (?P<open_textblock>\"\"\"(?:.|\n)*)
  | (?P<string>"(?:[^"\\\r\n]|\\.)*")
  | (?P<open_string>"(?:[^"\\\r\n]|\\.)*\\?)
  | (?P<char>'(?:[^'\\\r\n]|\\.)*')
  | (?P<open_char>'(?:[^'\\\r\n]|\\.)*\\?)
  | (?P<number>0[xX][0-9a-fA-F_]*(?:\.[0-9a-fA-F_]*)?(?:[pP][+-]?\d*)?[fFdDlL]?|0[bB][01_]*[lL]?
        |(?:\d[\d_]*(?:\.(?!\.)[\d_]*)?|\.\d[\d_]*)(?:[eE][+-]?\d*)?[fFdDlL]?)
  | (?P<nonsealed>non-sealed(?=\s+(?:class|interface|abstract|static|strictfp|final|public|protected|private|@)))
  | (?P<word>(?:[^\W\d]|\$)[\w$]*)
  | (?P<operator>"""
    + "|".join(re.escape(op) for op in OPERATORS)
    + r""")
  | (?P<separator>[(){}\[\];,.@])
  | (?P<unknown>.)
    """,
    re.VERBOSE | re.DOTALL,
)


@dataclass(frozen=True)
class Lexeme:
    kind: str  # identifier, keyword, literal, operator, separator, comment, whitespace, unknown
    text: str  # exact source text
    start: int  # offset of the first character in the lexed text
    complete: bool = True  # False for an unterminated string, char, text block or comment

    @property
    def end(self) -> int:
        return self.start + len(self.text)


def _lexeme(m: re.Match) -> Lexeme:
    group = m.lastgroup or "unknown"
    text = m.group()
    if group == "nonsealed":
        return Lexeme("keyword", text, m.start())
    if group == "word":
        kind = "keyword" if text in KEYWORDS else "literal" if text in LITERAL_WORDS else "identifier"
        return Lexeme(kind, text, m.start())
    if group in ("string", "char", "number", "textblock"):
        return Lexeme("literal", text, m.start())
    if group in ("open_string", "open_char", "open_textblock"):
        return Lexeme("literal", text, m.start(), complete=False)
    if group == "open_comment":
        return Lexeme("comment", text, m.start(), complete=False)
    return Lexeme(group, text, m.start())


# Tokens that may stand between a ``<`` opening type arguments and its ``>``.
_TYPE_WORDS = frozenset("extends super boolean byte char double float int long short void".split())
_TYPE_PUNCT = frozenset(". , ? & [ ] @".split())
# What may come right before a ``<`` that opens type arguments or type parameters:
# ``List<``, ``Collections.<``, ``public <T>``, ``new <T>``, ``; <T> void f()``.
_OPENS_AFTER = frozenset(
    "public protected private static final abstract synchronized native default strictfp new . ; { }".split()
)


class TypeArguments:
    """Which ``<`` may open type arguments, and so which ``>`` close them (JLS §3.2).

    A ``<`` after a capitalised name (or ``.``, a modifier, a statement boundary) is a
    candidate; it stays one while only type-shaped tokens follow (names, ``.``, ``,``,
    ``?``, ``&``, ``[]``, annotations, ``extends``/``super``, primitive types) and any
    other token shows it was a comparison. Inside candidates each ``>`` is one token.
    """

    def __init__(self) -> None:
        self.depth = 0  # candidate openers not closed yet
        self._prev: Lexeme | None = None

    def _opens(self, t: Lexeme) -> bool:
        prev = self._prev
        if t.text != "<" or t.kind != "operator":
            return False
        if prev is None or prev.text in _OPENS_AFTER:
            return True
        # ``List<`` but not ``written < attempted >>> 1``: type names start upper-case by
        # convention, variables lower-case (the one heuristic here; tests measure it).
        return prev.kind == "identifier" and not prev.text[0].islower()

    def feed(self, t: Lexeme) -> list[Lexeme]:
        """The tokens ``t`` stands for (a ``>>`` closing two openers is two ``>``)."""
        out = [t]
        if t.kind in ("comment", "whitespace"):
            return out
        if self._opens(t):
            self.depth += 1
        elif self.depth and t.kind == "operator" and set(t.text) == {">"}:
            if len(t.text) > self.depth:  # more closers than openers: ``N < M >> 1`` is a shift
                self.depth = 0
            else:
                self.depth -= len(t.text)
                out = [Lexeme("operator", ">", t.start + i) for i in range(len(t.text))]
        elif self.depth and not (
            t.kind == "identifier" or t.text in _TYPE_PUNCT or (t.kind == "keyword" and t.text in _TYPE_WORDS)
        ):
            self.depth = 0  # the candidates were comparisons
        self._prev = out[-1]
        return out


def lex(text: str, skip_whitespace: bool = True) -> list[Lexeme]:
    """All tokens of ``text`` (comments included, whitespace only if asked)."""
    out: list[Lexeme] = []
    types = TypeArguments()
    for m in _LEXER.finditer(text):
        if skip_whitespace and m.lastgroup == "whitespace":
            continue
        out.extend(types.feed(_lexeme(m)))
    return out


def open_type_arguments(text: str) -> int:
    """How many type-argument ``<`` are open at the end of ``text`` (0 outside a type context)."""
    types = TypeArguments()
    for m in _LEXER.finditer(text):
        types.feed(_lexeme(m))
    return types.depth


def first_token(text: str) -> tuple[Lexeme | None, bool]:
    """The first non-whitespace token of ``text``, and whether anything follows it."""
    pos = 0
    while True:
        m = _LEXER.match(text, pos)
        if m is None:
            return None, False
        if m.lastgroup != "whitespace":
            lexeme = _lexeme(m)
            return lexeme, m.end() < len(text)
        pos = m.end()


def identifiers(text: str) -> list[str]:
    """Every identifier-shaped word of ``text`` in order (keywords and true/false/null left out).

    A fast approximation of ``lex`` for bag-of-words uses (retrieval): words inside
    comments and strings count too.
    """
    return [w for w in _WORD.findall(text) if w not in KEYWORDS and w not in LITERAL_WORDS]


def is_word_char(ch: str) -> bool:
    return bool(ch) and WORD_CHARS.match(ch) is not None


def trailing_word(text: str) -> str:
    """The identifier or number characters that end ``text`` (the word the cursor is in)."""
    i = len(text)
    while i > 0 and is_word_char(text[i - 1]):
        i -= 1
    return text[i:]


def extension_chars(token: Lexeme) -> str | None:
    """Characters that, typed right after ``token``, would make it a longer token.

    Returns None when any word character extends it (identifiers, keywords, numbers),
    a (possibly empty) string of operator characters otherwise.
    """
    if token.kind in ("identifier", "keyword") or (token.kind == "literal" and is_word_char(token.text[-1:])):
        return None
    if token.kind == "operator":
        n = len(token.text)
        return "".join(sorted({op[n] for op in OPERATORS if len(op) > n and op.startswith(token.text)}))
    if token.text == ".":
        return "."  # "..." (varargs)
    return ""


def bracket_depth_changes(text: str) -> list[tuple[int, str]]:
    """(offset, bracket) for every bracket of ``text`` outside strings, chars and comments."""
    out = []
    for t in lex(text):
        if t.kind == "separator" and t.text in "()[]{}":
            out.append((t.start, t.text))
    return out


def unclosed_openers(text: str) -> list[str]:
    """The stack of brackets opened in ``text`` and not closed (innermost last)."""
    stack: list[str] = []
    for _, b in bracket_depth_changes(text):
        if b in OPENERS:
            stack.append(b)
        elif stack and stack[-1] == CLOSERS[b]:
            stack.pop()
    return stack
