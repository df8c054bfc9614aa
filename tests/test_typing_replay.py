"""The one typing replay (evaluation/typing_replay.py) used by the typing task and bench/latency.py."""

from __future__ import annotations

from kaffee.evaluation.lexer import lex
from kaffee.evaluation.typing_replay import MIN_GAIN, accept, lines_of, replay

TEXT = "class A {\n    int x = 1;\n    // note\n\n    void f() { g(x); }\n}\n"


def _lines(text: str = TEXT):
    start = text.index("    int")
    end = text.index("}\n", text.index("void")) + 2
    return lines_of(text, start, end, [t.start for t in lex(text)]), start, end


def test_typing_without_suggestions_rebuilds_the_text_and_counts_keys() -> None:
    lines, start, end = _lines()
    asked: list[int] = []
    doc = TEXT[:start] + TEXT[end:]
    cursor_log: list[int] = []

    def type_text(cursor: int, piece: str) -> None:
        nonlocal doc
        cursor_log.append(cursor)
        doc = doc[:cursor] + piece + doc[cursor:]

    counts = replay(TEXT, lines, lambda c: asked.append(c) or None, type_text)
    assert doc == TEXT  # every character of the region went in, in order
    assert cursor_log == sorted(cursor_log)
    token_starts = {t.start for t in lex(TEXT) if start <= t.start < end}
    assert set(asked) == token_starts  # asked at every token start and nowhere else (not in the comment)
    typed = sum(len(ln.rstrip()) - (len(ln) - len(ln.lstrip())) + 1 for ln in TEXT[start:end].splitlines())
    assert counts.keystrokes == typed and counts.saved == 0 and counts.accepted == 0


def test_an_exact_suggestion_is_accepted_and_asked_again_after() -> None:
    lines, start, end = _lines()
    at = TEXT.index("int x")
    asked: list[int] = []

    def suggest(cursor: int) -> str:
        asked.append(cursor)
        return "int x = 1;" if cursor == at else "wrong"

    counts = replay(TEXT, lines, suggest)
    assert counts.accepted == 1 and counts.accepted_chars == len("int x = 1;")
    assert counts.saved == len("int x = 1;") - 1
    assert TEXT.index(";", at) + 1 not in asked  # the line ended with the suggestion: Enter next


def test_acceptance_rule() -> None:
    assert accept("foo(x);", "foo(x); // c") == len("foo(x);")
    assert accept("foo(y);", "foo(x);") == 0  # not what the user types
    assert accept("f", "foo") == 0 and MIN_GAIN == 2  # one character saves nothing over Tab
    assert accept("foo\nbar", "foo") == 3  # only the cursor's line counts


def test_max_requests_stops_asking_and_types_the_rest() -> None:
    lines, start, end = _lines()
    counts = replay(TEXT, lines, lambda c: None, max_requests=2)
    assert counts.requests == 2
    assert counts.keystrokes == replay(TEXT, lines, lambda c: None).keystrokes
