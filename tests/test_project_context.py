"""Project context: declaration outlines, window retrieval, the index's updates, the prompt head, pins."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from kaffee.errors import KaffeeError
from kaffee.server.engine import CompletionEngine, EngineOptions
from kaffee.server.hints import MemberHints, member_table
from kaffee.server.options import parse_engine_options
from kaffee.server.outline import outline
from kaffee.server.project import (
    Block,
    ProjectConfig,
    ProjectIndex,
    jaccard,
    prompt_head,
    short_label,
    window_spans,
)
from kaffee.server.workspace import ScanLimits, scan_java_files

ACCOUNT = """package bank;

import java.math.BigDecimal;

/** An account. */
public class Account {
    private final String owner;
    private BigDecimal balance = BigDecimal.ZERO;

    public Account(String owner) {
        this.owner = owner;
    }

    @Override
    public String toString() { return owner; }

    public void depositFunds(BigDecimal amount) {
        balance = balance.add(amount);
    }

    enum Kind { CHECKING, SAVINGS }
}
"""


def test_outline_keeps_signatures_and_drops_bodies():
    (t,) = outline(ACCOUNT)
    assert t.name == "Account"
    lines = t.text.split("\n")
    assert lines[0] == "public class Account {"
    assert "    private final String owner;" in lines
    assert "    private BigDecimal balance;" in lines  # initialiser dropped
    assert "    public Account(String owner);" in lines
    assert "    public void depositFunds(BigDecimal amount);" in lines
    assert "    public String toString();" in lines  # annotation dropped
    assert "        CHECKING, SAVINGS;" in lines  # nested enum rendered inside
    assert "balance.add" not in t.text and "this.owner" not in t.text
    assert lines[-1] == "}"


def test_outline_of_broken_or_empty_code_never_raises():
    assert outline("") == []
    broken = outline("public class Half { public void run( { int x = ; }")
    assert all(isinstance(t.text, str) for t in broken)
    names = [t.name for t in outline("interface Shape { double area(); }\nrecord Point(int x, int y) {}\n")]
    assert names == ["Shape", "Point"]


def test_window_spans_cover_every_line_with_overlap():
    assert window_spans(0, 20, 10) == []
    assert window_spans(5, 20, 10) == [(0, 5)]
    spans = window_spans(45, 20, 10)
    assert spans[0] == (0, 20) and spans[-1][1] == 45
    covered = set()
    for a, b in spans:
        assert b - a <= 20
        covered |= set(range(a, b))
    assert covered == set(range(45))


def test_jaccard_and_labels():
    assert jaccard({"a", "b"}, {"b", "c"}) == pytest.approx(1 / 3)
    assert jaccard(set(), {"a"}) == 0.0
    assert short_label("file:///home/u/proj/src/bank/Account.java") == "src/bank/Account.java"
    assert short_label("file:///x/My%20File.java", parts=1) == "My File.java"


def _index(files: dict[str, str], **cfg) -> ProjectIndex:
    idx = ProjectIndex(ProjectConfig(**cfg))
    idx.set_files(files)
    idx.refresh(wait=True)
    return idx


def test_retrieval_ranks_the_window_sharing_the_most_identifiers_first():
    files = {
        "a/Shipping.java": "class Shipping {\n  void ship(Parcel parcel, Courier courier) {\n"
        "    courier.pickUp(parcel);\n    parcel.markShipped();\n  }\n}\n",
        "a/Other.java": "class Other {\n  int add(int x, int y) { return x + y; }\n}\n",
        "a/Mixed.java": "class Mixed {\n  Parcel parcel;\n  int x;\n}\n",
    }
    idx = _index(files, min_similarity=0.0)
    found = idx.similar({"parcel", "courier", "pickUp", "Parcel", "Courier"}, k=3)
    assert [key for _, key, _ in found][0] == "a/Shipping.java"
    scores = [s for s, _, _ in found]
    assert scores == sorted(scores, reverse=True)
    assert all(
        key != "a/Shipping.java" for _, key, _ in idx.similar({"parcel", "Parcel"}, exclude="a/Shipping.java")
    )


def test_index_updates_incrementally_and_bounds_its_files():
    idx = _index({"A.java": "class A { int alpha; }\n", "B.java": "class B { int beta; }\n"})
    assert idx.files == 2
    assert idx.similar({"gamma"}) == []
    idx.update("A.java", "class A { int gamma; }\n")
    assert idx.pending
    idx.refresh(wait=True)
    assert not idx.pending
    assert [k for _, k, _ in idx.similar({"gamma", "A"})] == ["A.java"]
    assert idx.similar({"alpha"}) == []  # the old text's windows are gone
    idx.remove("B.java")
    idx.refresh(wait=True)
    assert idx.files == 1 and idx.declarations(["B"]) == []
    small = _index({f"F{i}.java": f"class F{i} {{}}\n" for i in range(10)}, max_files=4)
    assert small.files == 4
    small.update("New.java", "class New {}\n")  # over the cap: ignored, not an error
    small.refresh(wait=True)
    assert small.files == 4


def test_index_compacts_removed_windows():
    idx = _index({f"F{i}.java": "class F { int token; }\n" * 30 for i in range(20)}, window_lines=2, stride=1)
    for round_ in range(40):  # many rewrites: dead windows pile up until compaction
        for i in range(20):
            idx.update(f"F{i}.java", f"class F {{ int token{round_}; }}\n" * 30)
        idx.refresh(wait=True)
    assert len(idx._win_file) < 20 * 30 * 10  # not 40 rounds' worth
    assert [k for _, k, _ in idx.similar({"token39", "F"}, k=1)]


def test_declarations_of_types_named_near_the_cursor():
    idx = _index({"file:///p/src/Account.java": ACCOUNT, "file:///p/src/Unused.java": "class Unused {}\n"})
    prefix = "class Teller {\n  void pay(Account target) {\n    target."
    blocks = idx.context(prefix, "\n  }\n}\n", "file:///p/src/Teller.java", 0)
    decls = [b for b in blocks if b.kind == "declaration"]
    assert len(decls) == 1 and "depositFunds(BigDecimal amount)" in decls[0].text
    assert decls[0].label == "p/src/Account.java"


def test_current_document_is_not_retrieved_near_the_cursor():
    body = "\n".join(f"    int value{i} = compute(value{i - 1});" for i in range(1, 80))
    text = "class Long {\n  void run() {\n" + body + "\n  }\n}\n"
    cut = text.index("int value40")
    idx = _index({}, min_similarity=0.0, snippets=3, pin_lines=5)
    blocks = idx.context(text[:cut], text[cut:], "doc", 0)
    cursor_line = text[:cut].count("\n")
    for b in blocks:
        assert f"value{cursor_line - 2}" not in b.text  # the cursor's own line never leaks back in


def test_prompt_head_fits_the_budget_and_puts_the_best_snippet_last():
    def encode(text: str) -> list[int]:
        return [ord(c) for c in text]

    blocks = [
        Block("a/Best.java", "best()", "snippet", 0.9),
        Block("a/Second.java", "second()", "snippet", 0.5),
        Block("a/Type.java", "class Type {}", "declaration", 1.0),
    ]
    head = prompt_head(blocks, encode, 0, 10_000, "files")
    text = "".join("|" if i == 0 else chr(i) for i in head)
    assert text.startswith("|// Path: a/Type.java") and text.endswith("best()\n|")
    assert text.index("second()") < text.index("best()")
    assert head.count(0) == 4  # one <eos> before each block, one before the file's window
    small = prompt_head(blocks, encode, 0, 40, "files")
    assert 0 < len(small) <= 40
    assert prompt_head(blocks, encode, 0, 5, "files") == []
    comments = "".join(chr(i) for i in prompt_head(blocks, encode, 0, 10_000, "comments")[1:])
    assert all(line.startswith("//") for line in comments.strip("\n").split("\n"))


def test_engine_pins_the_head_while_typing_on_a_line(tiny_model_dir: Path):
    eng = CompletionEngine.from_model_dir(
        tiny_model_dir,
        EngineOptions(workspace_cache=False, project=ProjectConfig(min_similarity=0.0, min_window_tokens=64)),
    )
    eng.set_workspace_files(
        {"file:///w/Account.java": "class Account {\n  void depositFunds(long amount) {}\n}\n"}
    )
    eng.settle()
    prefix = "class Teller {\n  void pay(Account target, long amount) {\n    target."
    eng.complete(prefix, "\n  }\n}\n", document="file:///w/Teller.java")
    pin = eng._pins["file:///w/Teller.java"]
    assert pin.ids and eng.tokenizer.decode(pin.ids).count("// Path:") >= 1
    eng.complete(prefix + "depos", "\n  }\n}\n", document="file:///w/Teller.java")
    assert eng._pins["file:///w/Teller.java"] is pin  # same line: same head, the KV cache stays valid
    far = prefix + "\n" * 60 + "    "
    eng.complete(far, "\n  }\n}\n", document="file:///w/Teller.java")
    assert eng._pins["file:///w/Teller.java"] is not pin  # moved far: recomputed
    eng.set_workspace_files({})
    eng.complete(far, "\n  }\n}\n", document="file:///w/Teller.java")
    assert eng._pins["file:///w/Teller.java"].ids == []  # a new workspace invalidates it too


def test_engine_without_project_context_builds_no_head(tiny_model_dir: Path):
    eng = CompletionEngine.from_model_dir(
        tiny_model_dir, EngineOptions(workspace_cache=False, project_context=False)
    )
    eng.set_workspace_files({"file:///w/Account.java": ACCOUNT})
    eng.complete("class T {\n  Account a;\n  void f() {\n    a.", "", document="file:///w/T.java")
    assert eng._pins == {}


def test_one_option_parser_for_nested_fields_and_aliases():
    opts = parse_engine_options(["project=off", "cache.max_weight=0.5", "project.form=comments", "ctx=512"])
    assert opts.project_context is False and opts.context_tokens == 512
    assert opts.cache.max_weight == 0.5 and opts.project.form == "comments"
    assert parse_engine_options({"deadline_ms": "none"}).deadline_ms is None
    with pytest.raises(KaffeeError, match="project.budget_tokens"):
        parse_engine_options(["project.nope=1"])
    with pytest.raises(KaffeeError, match="not a valid int"):
        parse_engine_options(["speculate=lots"])
    with pytest.raises(KaffeeError, match="form"):
        parse_engine_options(["project.form=poetry"])
    with pytest.raises(KaffeeError, match="unknown option 'max_weight'"):
        parse_engine_options(["max_weight=0.5"])  # a nested field needs its section


def test_scan_respects_gitignore_and_skips_symlink_loops(tmp_path: Path):
    (tmp_path / ".gitignore").write_text("generated/\n*.gen.java\n!Keep.gen.java\n")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "A.java").write_text("class A {}")
    (tmp_path / "src" / "B.gen.java").write_text("class B {}")
    (tmp_path / "src" / "Keep.gen.java").write_text("class Keep {}")
    (tmp_path / "generated").mkdir()
    (tmp_path / "generated" / "G.java").write_text("class G {}")
    (tmp_path / "src" / "sub").mkdir()
    (tmp_path / "src" / "sub" / ".gitignore").write_text("Local.java\n")
    (tmp_path / "src" / "sub" / "Local.java").write_text("class Local {}")
    (tmp_path / "src" / "sub" / "Kept.java").write_text("class Kept {}")
    (tmp_path / "src" / "Bin.java").write_bytes(b"\x00\x01binary")
    os.symlink(tmp_path, tmp_path / "src" / "loop")
    files = scan_java_files([tmp_path])
    names = sorted(Path(u).name for u in files)
    assert names == ["A.java", "Keep.gen.java", "Kept.java"]
    assert len(scan_java_files([tmp_path], ScanLimits(max_files=1))) == 1


def test_member_table_types_the_variables_of_the_file():
    idx = _index({"file:///p/Account.java": ACCOUNT})
    text = "class T {\n  private Account primary;\n  void f(Account other, int n) {\n    List<Account> all;\n"
    table = member_table(text, idx.declarations, 100)
    assert table["primary"] == table["other"] == table["Account"]
    assert {"depositFunds", "toString"} <= set(table["primary"])
    assert "owner" not in table["primary"]  # private members are not offered to other classes
    assert "n" not in table and "all" not in table  # int and List<Account> are not workspace types
    assert sum(len(v) for v in member_table(text, idx.declarations, 3).values()) == 3


def test_member_hints_follow_the_text_not_the_token_split():
    table = {"inventory": ("restockShelf", "restockAll", "count")}
    tok = {"re": 1, "stock": 2, "Shelf": 3, "All": 4, "count": 5}

    def encode(text: str) -> list[int]:
        for piece, i in tok.items():
            if text.startswith(piece):
                return [i]
        return [99]

    hints = MemberHints(table, encode, lambda ids: "".join(ids))  # "ids" are text pieces here
    pieces, mass = hints.pieces(["    inventory", "."], weight=0.6)
    assert mass == pytest.approx(0.6 * 3 / 4) and set(pieces) == {1, 5}
    assert pieces[1] == pytest.approx(2 * pieces[5])  # two members start with "re"
    pieces, mass = hints.pieces(["inventory", ".", "restock"], weight=0.6)
    assert set(pieces) == {3, 4} and mass == pytest.approx(0.9)
    assert hints.pieces(["inventory", ".", "count"], weight=0.6) == ({}, 0.0)  # complete: the model decides
    assert hints.pieces(["other", "."], weight=0.6) == ({}, 0.0)
    assert hints.pieces(["inventory", ".", "zzz"], weight=0.6) == ({}, 0.0)
    assert hints.pieces(["a.", "inventory", "."], weight=0.6) == ({}, 0.0)  # a qualified receiver
    assert hints.pieces(['s = "', "inventory", "."], weight=0.6) == ({}, 0.0)  # inside a string
    assert hints.pieces(["// see ", "inventory", "."], weight=0.6) == ({}, 0.0)  # inside a comment


def test_member_table_prefers_the_declaration_before_the_cursor():
    idx = _index(
        {"A.java": "class Alpha { void alphaOnly() {} }\n", "B.java": "class Beta { void betaOnly() {} }\n"}
    )
    table = member_table("void f(Alpha m) {\n  m.", idx.declarations, 100, after="\n}\nBeta m;\n")
    assert table["m"] == ("alphaOnly",)


def test_settle_waits_for_a_background_drain():
    for _ in range(5):
        idx = ProjectIndex()
        idx.set_files({f"F{i}.java": f"class F{i} {{ int v{i}; }}\n" * 50 for i in range(60)})
        idx.refresh()  # a background drain starts
        idx.refresh(wait=True)  # must not return before every file is in
        assert idx.files == 60 and not idx.pending
    capped = ProjectIndex(ProjectConfig(max_files=3))
    for i in range(10):
        capped.update(f"N{i}.java", "class N {}\n")  # pending ones count against the cap too
    capped.refresh(wait=True)
    assert capped.files == 3


def test_fitted_cache_weight_trusts_long_matches_and_an_unsure_model(tiny_tokenizer):
    from kaffee.server.cache import CacheConfig, WorkspaceCache

    cache = WorkspaceCache(tiny_tokenizer, CacheConfig())
    w = cache.fitted_weight
    assert 0.0 < w(3, 5, 1.0) < w(6, 5, 1.0) < 1.0  # a longer matched history counts more
    assert w(6, 5, 0.5) < w(6, 5, 4.0)  # the more unsure the model, the more the cache speaks
    assert w(1, 100, 0.1) < 0.01  # a unigram match with a confident model: almost nothing
    with pytest.raises(KaffeeError, match="mixture"):
        CacheConfig(mixture="average")
    with pytest.raises(KaffeeError, match="fitted"):
        CacheConfig(fitted=(0.0, 1.0))
