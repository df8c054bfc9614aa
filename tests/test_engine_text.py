"""The engine's pure text helpers: Java tokens, positions, prompt windows, stop rules, post-processing."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kaffee.server.context import (
    IndentStyle,
    PrefixEncoder,
    block_context,
    build_prompt,
    current_line_suffix,
    detect_indent,
    window_start,
)
from kaffee.server.documents import Document, column_to_index, units_len
from kaffee.server.java_tokens import extension_chars, first_token, lex, trailing_word, unclosed_openers
from kaffee.server.postprocess import BlockStop, LineStop, finish_line, reindent, trim_suffix_overlap
from kaffee.server.settings import ServerSettings, parse_settings

# -- Java tokens -------------------------------------------------------------------------------


def test_lexer_kinds_and_maximal_munch() -> None:
    toks = lex("x >>>= obj.call(\"a)b\", 'c') // done")
    assert [(t.kind, t.text) for t in toks] == [
        ("identifier", "x"),
        ("operator", ">>>="),
        ("identifier", "obj"),
        ("separator", "."),
        ("identifier", "call"),
        ("separator", "("),
        ("literal", '"a)b"'),
        ("separator", ","),
        ("literal", "'c'"),
        ("separator", ")"),
        ("comment", "// done"),
    ]
    assert [t.kind for t in lex("return true null 1.5e3f 0x1FL")] == [
        "keyword",
        "literal",
        "literal",
        "literal",
        "literal",
    ]
    assert not lex('"open string')[0].complete


def test_first_token_and_extensions() -> None:
    tok, more = first_token("  println(")
    assert tok.text == "println" and more
    assert first_token("   ") == (None, False)
    assert extension_chars(first_token(">")[0]) == "=>"
    assert extension_chars(first_token("foo")[0]) is None
    assert extension_chars(first_token(";")[0]) == ""
    assert trailing_word("System.out.pri") == "pri"
    assert trailing_word("foo(") == ""


def test_unclosed_openers_ignore_strings_and_comments() -> None:
    assert unclosed_openers('f(a[1], "(", /* { */ {') == ["(", "{"]


@given(st.text(max_size=200))
def test_lexer_never_fails_and_covers_the_text(text: str) -> None:
    toks = lex(text, skip_whitespace=False)
    assert "".join(t.text for t in toks) == text


# -- positions ------------------------------------------------------------------------------------


def test_utf16_columns_and_surrogate_pairs() -> None:
    line = 'a😀b"é'
    assert units_len(line) == 6
    assert units_len(line, "utf-8") == len(line.encode())
    assert column_to_index(line, 1) == 1
    assert column_to_index(line, 2) == 1  # inside the surrogate pair: the character's start
    assert column_to_index(line, 3) == 2
    assert column_to_index(line, 99) == len(line)
    assert column_to_index(line, 3, "utf-8") == 1  # inside the 4-byte emoji
    assert column_to_index(line, 5, "utf-8") == 2


def test_document_positions_clamp() -> None:
    doc = Document("u", "ab\r\ncd\nef")
    assert doc.line_count == 3
    assert doc.offset_at(0, 99) == 2  # end of line, before the CRLF
    assert doc.offset_at(1, 1) == 5
    assert doc.offset_at(9, 0) == len(doc.text)
    assert doc.position_at(3) == (0, 2)  # inside CRLF: end of the line
    assert doc.position_at(999) == (2, 2)


def test_incremental_changes() -> None:
    doc = Document("u", "line one\nline two\n")
    doc.apply_change("X", (0, 5), (0, 8))
    assert doc.text == "line X\nline two\n"
    doc.apply_change("A\nB", (1, 0), (1, 4))
    assert doc.text == "line X\nA\nB two\n"
    assert doc.offset_at(2, 0) == doc.text.index("B")
    doc.apply_change("", (0, 0), (99, 0))
    assert doc.text == ""


def _ref_offset(text: str, line: int, col: int) -> int:
    """A slow, obviously right UTF-16 position -> offset (same clamping rules)."""
    lines = text.splitlines(keepends=True) or [""]
    if text.endswith(("\n", "\r")):
        lines.append("")
    if line >= len(lines):
        return len(text)
    start = sum(len(x) for x in lines[:line])
    content = lines[line].rstrip("\r\n")
    units = 0
    for i, ch in enumerate(content):
        w = 2 if ord(ch) > 0xFFFF else 1
        if units + w > col:
            return start + i
        units += w
    return start + len(content)


_text = st.text(alphabet=st.sampled_from(list("ab \n\r\té😀{}")), max_size=60)


@settings(max_examples=300, deadline=None)
@given(_text, st.integers(0, 12), st.integers(0, 30))
def test_offsets_match_a_reference(text: str, line: int, col: int) -> None:
    assert Document("u", text).offset_at(line, col) == _ref_offset(text, line, col)


@settings(max_examples=300, deadline=None)
@given(
    _text,
    st.lists(
        st.tuples(st.integers(0, 8), st.integers(0, 20), st.integers(0, 8), st.integers(0, 20), _text),
        max_size=8,
    ),
)
def test_edits_match_a_reference(text: str, edits) -> None:
    doc = Document("u", text)
    ref = text
    for l1, c1, l2, c2, new in edits:
        a, b = _ref_offset(ref, l1, c1), _ref_offset(ref, l2, c2)
        a, b = min(a, b), max(a, b)
        ref = ref[:a] + new + ref[b:]
        doc.apply_change(new, (l1, c1), (l2, c2))
        assert doc.text == ref
        for ln in range(doc.line_count + 1):  # the line index stays right after in-place patches
            assert doc.offset_at(ln, 3) == _ref_offset(ref, ln, 3)


@settings(max_examples=200, deadline=None)
@given(_text, st.integers(0, 70))
def test_position_round_trip(text: str, offset: int) -> None:
    doc = Document("u", text)
    offset = min(offset, len(text))
    if 0 < offset < len(text) and text[offset - 1] == "\r" and text[offset] == "\n":
        offset -= 1  # between CR and LF is not a position
    line, col = doc.position_at(offset)
    assert doc.offset_at(line, col) == offset


# -- prompt windows ---------------------------------------------------------------------------------


def test_window_start_moves_in_steps() -> None:
    starts = {window_start(n, 1000) for n in range(0, 5000)}
    assert 0 in starts and all(s % 250 == 0 for s in starts)
    for n in range(1000, 5000, 37):
        s = window_start(n, 1000)
        assert 750 <= n - s <= 1000


def test_build_prompt_heals_the_last_word_and_fits(tiny_tokenizer) -> None:
    prefix = "public class A {\n    void f() {\n        System.out.pri"
    p = build_prompt(tiny_tokenizer, prefix, "", budget_tokens=200, suffix_tokens=0, fim=False, heal=True)
    assert p.ids[0] == tiny_tokenizer.eos_id and p.heal == b"pri"
    assert tiny_tokenizer.decode_bytes(p.ids[1:]) + p.heal == prefix.encode()
    long = "int x = 1;\n" * 2000 + "x."
    p = build_prompt(tiny_tokenizer, long, "", budget_tokens=100, suffix_tokens=0, fim=False, heal=False)
    assert len(p.ids) <= 100 and p.window_start > 0 and long[p.window_start - 1] == "\n"
    assert p.ids[0] != tiny_tokenizer.eos_id  # the window starts mid-file
    fim = build_prompt(
        tiny_tokenizer, "int x = ", ";\n}\n", budget_tokens=100, suffix_tokens=16, fim=True, heal=True
    )
    t = tiny_tokenizer
    assert (
        fim.fim
        and fim.ids[0] == t.fim_prefix_id
        and fim.ids[-1] == t.fim_middle_id
        and t.fim_suffix_id in fim.ids
    )


def test_block_context_and_indent_detection() -> None:
    ctx = block_context("class A {\n    void f() {\n        ", "\n    }\n}\n")
    assert ctx is not None and ctx.open_indent == "    " and ctx.closer_in_suffix
    assert block_context("class A {\n    int x", "") is None
    assert block_context("    foo();\n    ", "") is None
    assert detect_indent("class A {\n\tint x;\n\tvoid f() {\n\t\ty();\n\t}\n}\n") == IndentStyle(True, 4)
    assert detect_indent("class A {\n  int x;\n  void f() {\n    y();\n  }\n}\n") == IndentStyle(False, 2)
    assert current_line_suffix(");\nfoo") == ");"


# -- stop rules and post-processing -------------------------------------------------------------------


def _first_cut(stop, text: str):
    for i in range(len(text) + 1):
        cut = stop.feed(text[:i])
        if cut is not None:
            return cut, text[:i][: cut.at]
    return None, text


def test_line_stop_at_newline_and_before_a_closer_the_suffix_has() -> None:
    cut, kept = _first_cut(LineStop(""), "foo(bar);\n    baz();")
    assert cut.reason == "newline" and kept == "foo(bar);"
    cut, kept = _first_cut(LineStop(");"), "a, g(b)) + 1;")
    assert cut.reason == "suffix" and kept == "a, g(b)"
    cut, kept = _first_cut(LineStop(""), "a, g(b)) + 1;\n")
    assert kept == "a, g(b)) + 1;"  # nothing after the cursor: the closer is the suggestion's


def test_block_stop_rules() -> None:
    style = IndentStyle(False, 4)
    body = "int x = 1;\n        return x;\n    }\n    void g() {}\n"
    closed = block_context("class A {\n    int f() {\n        ", "\n    }\n}\n")
    cut, kept = _first_cut(BlockStop(closed, 8, style), body)
    assert cut.reason == "block_end" and kept == "int x = 1;\n        return x;"  # the suffix has the "}"
    open_ = block_context("class A {\n    int f() {\n        ", "\n")
    cut, kept = _first_cut(BlockStop(open_, 8, style), body)
    assert kept == "int x = 1;\n        return x;\n    }"  # brackets balance: include the "}"
    cut, kept = _first_cut(BlockStop(open_, 8, style), "a();\n        b();\n    c();\n")
    assert cut.reason == "dedent" and kept == "a();\n        b();"
    cut, kept = _first_cut(BlockStop(open_, 2, style), "a();\n        b();\n        c();\n")
    assert cut.reason == "max_lines" and kept == "a();\n        b();"
    cut, kept = _first_cut(BlockStop(open_, 8, style), 'a("}");\n        // }\n    }')
    assert kept == 'a("}");\n        // }\n    }'  # braces in strings and comments do not count


def test_suffix_overlap_is_trimmed_without_breaking_brackets() -> None:
    assert trim_suffix_overlap("foo();", ";") == "foo()"
    assert trim_suffix_overlap("x);", ");") == "x"
    assert trim_suffix_overlap("foo()", ")") == "foo()"  # that ")" closes the suggestion's own "("
    assert trim_suffix_overlap("a + b", "foo();") == "a + b"
    assert trim_suffix_overlap("x) {", ") {") == "x"
    assert finish_line("bar();   ", "", "", IndentStyle(False, 4)) == "bar();"


def test_reindent_follows_the_file_style() -> None:
    tabs = IndentStyle(True, 4)
    assert reindent("a;\n        b;\n    }", "\t\t", tabs) == "a;\n\t\tb;\n\t}"
    assert reindent("a;\n\t\tb;", "", IndentStyle(False, 4)) == "a;\n        b;"
    assert reindent("    x;", "\t", tabs) == "\tx;"  # first line: completes the cursor line's indent


# -- settings ---------------------------------------------------------------------------------------


def test_settings_parse_and_fall_back_per_field() -> None:
    s, problems = parse_settings(
        {"maxLines": 3, "deadlineMs": 250, "workspaceContext": False, "device": "auto"}
    )
    assert (
        s == ServerSettings(max_lines=3, deadline_ms=250, workspace_context=False, device="auto")
        and not problems
    )
    s, problems = parse_settings({"kaffee": {"maxLines": 0, "deadlineMs": True, "device": "tpu", "x": 1}})
    assert s == ServerSettings()
    assert len(problems) == 4 and any("'x'" in p for p in problems)
    assert parse_settings("nonsense")[0] == ServerSettings() and parse_settings("nonsense")[1]
    assert parse_settings(None) == (ServerSettings(), [])


def test_null_settings_reset_to_the_default_not_the_previous_value() -> None:
    """A client that clears a setting sends null: the default comes back (the CLI's device included)."""
    before, _ = parse_settings({"maxLines": 3, "deadlineMs": 250, "debounceMs": 0, "device": "cpu"})
    defaults = ServerSettings(device="auto")
    after, problems = parse_settings(
        {"maxLines": None, "deadlineMs": None, "debounceMs": None, "device": None}, before, defaults
    )
    assert not problems
    assert (after.max_lines, after.deadline_ms, after.debounce_ms, after.device) == (
        ServerSettings().max_lines,
        ServerSettings().deadline_ms,
        ServerSettings().debounce_ms,
        "auto",
    )
    kept, _ = parse_settings({"enable": False}, before, defaults)  # keys left out keep their value
    assert kept.max_lines == 3 and not kept.enable


@pytest.mark.parametrize("raw", [[], 3, {"modelPath": ""}, {"maxLines": 10**9}, {"deadlineMs": float("nan")}])
def test_settings_never_raise(raw) -> None:
    s, problems = parse_settings(raw)
    assert isinstance(s, ServerSettings) and problems


@settings(max_examples=80, deadline=None)
@given(
    st.lists(
        st.text(alphabet=st.sampled_from(list('ab1 {}();.\n\r\t"é😀')), max_size=400), min_size=1, max_size=6
    )
)
def test_prefix_encoder_equals_plain_encoding(tiny_tokenizer, texts: list[str]) -> None:
    enc = PrefixEncoder(tiny_tokenizer)
    base = "class A {\n    int x = 1;\n" * 200
    for t in texts:
        for text in (base + t, base + t + t, t):
            assert enc.encode(text) == tiny_tokenizer.encode(text)
