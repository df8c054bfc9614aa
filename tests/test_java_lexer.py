"""One definition of a whole Java token: the lexer agrees with tree-sitter-java's parse.

``server/java_tokens.lex`` cuts the engine's suggestions and (through
``evaluation/lexer.py``) the evaluation's targets. tree-sitter-java is an independent
parser that knows the type context for real, so it is the reference here: every Java
source of the repository (examples/, fixtures, the test samples) and a sample written
to hit the hard cases lex to the same tokens both ways.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from java_samples import SAMPLES
from kaffee.evaluation.lexer import IDENTIFIER, KEYWORD, MEMBER, OPERATOR
from kaffee.evaluation.lexer import lex as eval_lex
from kaffee.server.decode import _classify
from kaffee.server.java_tokens import lex, open_type_arguments

ROOT = Path(__file__).resolve().parent.parent

HARD = """package demo;

import java.util.*;

public sealed interface Shape permits Circle, Square {}
non-sealed class Square implements Shape {}
@interface Marker { String value() default "x"; }

class Generics<K extends Comparable<? super K>, V> {
    private final Map<String, List<Map<K, V>>> nested = new HashMap<>();
    private final Map<String, List<Integer>> twice = new TreeMap<String, List<Integer>>();
    static <T extends Number & Comparable<T>> T max(List<? extends T> xs) { return null; }

    int shifts(int a, int b, long c) {
        int x = a >> 2;
        int y = b >>> 3;
        x >>= 1;
        y >>>= 2;
        boolean lt = a < b, gt = a > b;
        if (a < b && b > c) { x = a << 1; }
        List<String> empty = Collections.<String>emptyList();
        int n = N < M >> 1 ? MIN < Integer.SIZE >>> 1 ? 1 : 2 : 3;
        boolean nonSealed = non-sealed > 0;
        return written(a) < attempted(b) >> 1 ? x : y;
    }

    Class<?>[] types = new Class<?>[] { String.class };
    int[] arr = new int[] { 0x1F, 0b1010, 1_000, 077 };
    double d = 1.5e-3 + .5 + 2f + 3d + 0x1.8p3;
    char ch = '\\n';
    String s = "a \\"quoted\\" string", block = \"\"\"
        text block with "quotes"
        \"\"\";
    Runnable r = () -> System.out.println(this::toString);
    int attempted(int b) { return b; }
    int written(int a) { return a; }
    static final int N = 1, M = 2, MIN = 3;
    int non = 1, sealed = 2;
}
"""


def _tree_sitter_tokens(text: str) -> list[tuple[int, str]]:
    """(character offset, text) of tree-sitter-java's leaves; literals whole, comments out."""
    import tree_sitter_java
    from tree_sitter import Language, Parser

    data = text.encode("utf-8")
    assert len(data) == len(text), "the reference compares ASCII sources only"
    tree = Parser(Language(tree_sitter_java.language())).parse(data)
    whole = {"string_literal", "character_literal", "text_block"}
    comments = {"line_comment", "block_comment"}
    out: list[tuple[int, str]] = []
    stack = [tree.root_node]
    while stack:
        node = stack.pop()
        if node.type in comments:
            continue
        if node.child_count == 0 or node.type in whole:
            if node.end_byte > node.start_byte:
                piece = text[node.start_byte : node.end_byte]
                if piece == "@interface":  # one token in tree-sitter's grammar, two in the JLS
                    out += [(node.start_byte, "@"), (node.start_byte + 1, "interface")]
                else:
                    out.append((node.start_byte, piece))
            continue
        stack.extend(reversed(node.children))
    return out


def _sources() -> dict[str, str]:
    files = sorted((ROOT / "examples").glob("*.java")) + sorted((ROOT / "tests" / "fixtures").rglob("*.java"))
    out = {str(p.relative_to(ROOT)): p.read_text() for p in files}
    out.update({f"java_samples:{name}": text for name, text in SAMPLES.items()})
    out["hard"] = HARD
    return out


@pytest.mark.parametrize("name", sorted(_sources()))
def test_lexer_agrees_with_tree_sitter(name: str) -> None:
    text = _sources()[name]
    assert "ERROR" not in _parse_sexp(text), f"{name} does not parse: the reference would be meaningless"
    ours = [(t.start, t.text) for t in lex(text) if t.kind != "comment"]
    assert ours == _tree_sitter_tokens(text)
    assert [(t.start, t.text) for t in eval_lex(text)] == ours  # the evaluation cuts the same tokens


def _parse_sexp(text: str) -> str:
    import tree_sitter_java
    from tree_sitter import Language, Parser

    tree = Parser(Language(tree_sitter_java.language())).parse(text.encode())
    return str(tree.root_node) if tree.root_node.has_error else ""


def test_the_hard_cases_are_in_the_sample() -> None:
    """The sample must keep the cases the agreement test is there for."""
    texts = [t.text for t in lex(HARD)]
    assert ">>" in texts and ">>>" in texts and ">>=" in texts and ">>>=" in texts  # shifts stay whole
    assert "non-sealed" in texts
    nested = HARD.index("List<Map<K, V>>>") + len("List<Map<K, V")
    assert [t.text for t in lex(HARD) if nested <= t.start < nested + 3] == [">", ">", ">"]


@pytest.mark.parametrize(
    ("prefix", "depth"),
    [
        ("Map<String, List<Integer", 2),
        ("Map<String, List<Integer>", 1),
        ("new HashMap<", 1),
        ("Collections.<", 1),
        ("static <T extends Comparable<T", 2),
        ("if (a < b", 0),  # lower-case name: a comparison
        ("x = a < b && c", 0),
        ("List<String> xs = foo(", 0),
    ],
)
def test_open_type_arguments(prefix: str, depth: int) -> None:
    assert open_type_arguments(prefix) == depth


def test_engine_cuts_nested_generic_closers_as_the_evaluation_does() -> None:
    """At ``Map<String, List<Integer`` the model's ``>>`` piece stands for the token ``>``."""
    cand, finished, _ = _classify(">>();", "", type_depth=2)
    assert cand is not None and cand.text == ">" and finished
    cand, finished, _ = _classify(">> 2;", "", type_depth=0)
    assert cand is not None and cand.text == ">>" and finished
    cand, finished, _ = _classify(">> 1;", "", type_depth=1)  # N < M >> 1: more closers than openers
    assert cand is not None and cand.text == ">>" and finished
    prefix = "Map<String, List<Integer"
    target = [t for t in eval_lex(prefix + ">> m;") if t.start == len(prefix)][0]
    assert target.text == ">"


def test_token_kinds() -> None:
    toks = {
        t.text: t.kind for t in eval_lex("class A { void f(String s) { s.length(); int var = 1 >> 2; } }")
    }
    assert toks["class"] == KEYWORD and toks["A"] == IDENTIFIER and toks["length"] == MEMBER
    assert toks["var"] == IDENTIFIER and toks[">>"] == OPERATOR
    header = [t.header for t in eval_lex("package a.b;\nimport java.util.List;\nclass C {}")]
    assert header == [True] * 5 + [True] * 7 + [False] * 4
