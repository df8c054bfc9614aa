"""The language server's pure parts: answer formatting, the document store, workspace scanning."""

from __future__ import annotations

import os
from pathlib import Path

from kaffee.server.documents import DocumentStore
from kaffee.server.engine import Completion, TokenSuggestion
from kaffee.server.lsp import Cursor, completion_items
from kaffee.server.workspace import ScanLimits, scan_java_files
from lsprotocol import types


def _cursor(prefix: str, suffix: str = "") -> Cursor:
    store = DocumentStore()
    doc = store.open("file:///a.java", prefix + suffix)
    offset = len(prefix)
    line, col = doc.position_at(offset)
    word = len(prefix) - len(prefix.rstrip("abcdefghijklmnopqrstuvwxyz"))
    lline, lcol = doc.position_at(offset - word)
    return Cursor(
        "file:///a.java", offset, prefix, suffix, types.Position(line, col), types.Position(lline, lcol)
    )


def test_items_replace_the_word_at_the_cursor_in_utf16() -> None:
    cur = _cursor('String s = "😀"; System.out.pri', "\n")
    items = completion_items(
        cur,
        [TokenSuggestion("println", -0.1, attached=True), TokenSuggestion("(", -3.0)],
        Completion("ntln(s);", "newline", 4, 1.0),
    )
    first = items[0]
    assert first.label == "println" and first.sort_text == "0000"
    col = len('String s = "😀"; System.out.'.encode("utf-16-le")) // 2
    assert first.text_edit.range.start == types.Position(0, col)
    assert first.text_edit.range.end == types.Position(0, col + 3)
    assert items[1].text_edit.range.start == items[1].text_edit.range.end  # "(" is inserted at the cursor
    line = [i for i in items if i.detail and "line" in i.detail][0]
    assert line.text_edit.new_text == "println(s);" and line.label == "println(s);"
    # an editor orders by sort_text: the best token, then the line, then the other tokens
    assert [i.label for i in sorted(items, key=lambda i: i.sort_text)] == ["println", "println(s);", "("]


def test_block_items_are_marked_and_shortened() -> None:
    cur = _cursor("void f() {\n    ")
    items = completion_items(cur, [], Completion("int x = 1;\n    return x;", "block_end", 9, 2.0))
    assert (
        len(items) == 1 and items[0].label.endswith("…") and items[0].kind == types.CompletionItemKind.Snippet
    )


def test_workspace_scan_is_bounded_and_safe(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "A.java").write_text("class A {}\n")
    (tmp_path / "src" / "Blob.java").write_bytes(b"\x00\x01binary")
    (tmp_path / "src" / "Latin.java").write_bytes(b'class L { String s = "\xe9"; }\n')
    (tmp_path / "target").mkdir()
    (tmp_path / "target" / "Gen.java").write_text("class Gen {}\n")
    os.symlink(tmp_path, tmp_path / "src" / "loop")  # a symlink loop is not followed
    files = scan_java_files([tmp_path, tmp_path / "missing"])
    names = sorted(Path(u).name for u in files)
    assert names == ["A.java", "Latin.java"]
    assert "\ufffd" in next(t for u, t in files.items() if u.endswith("Latin.java"))
    assert len(scan_java_files([tmp_path], ScanLimits(max_files=1))) == 1
