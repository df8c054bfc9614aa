"""Helpers for the corpus tests: realistic, distinct Java files made on the fly (no fixtures on disk)."""

from __future__ import annotations

import random
from pathlib import Path

from kaffee.data.corpus import BuildConfig

WORDS = (
    "account balance order item price total customer invoice payment amount count index value name "
    "list map queue stack node tree graph edge vertex path cost weight buffer stream reader writer "
    "parser token lexer symbol scope frame state event handler listener request response session user "
    "cache entry key hash table bucket slot range bound limit offset length size width height color "
    "shape point line circle matrix vector row column cell grid score level player game board move"
).split()
TYPES = ("int", "long", "String", "double", "boolean", "List<String>", "Map<String, Integer>")


def make_java(seed: int, package: str = "com.example", methods: int = 6) -> str:
    """A plausible Java class whose identifiers depend on ``seed`` (different seeds: not near-duplicates)."""
    rng = random.Random(seed)

    def ident() -> str:
        a, b = rng.sample(WORDS, 2)
        return a + b.capitalize() + str(rng.randrange(100))

    cls = ident().capitalize()
    lines = [f"package {package};", "", "import java.util.*;", "", f"/** {cls} keeps track of things. */",
             f"public class {cls} {{"]  # fmt: skip
    fields = [ident() for _ in range(4)]
    for f in fields:
        lines.append(f"    private {rng.choice(TYPES)} {f};")
    for _ in range(methods):
        m, a, b = ident(), ident(), ident()
        lines += [
            "",
            f"    public int {m}(int {a}, int {b}) {{",
            f"        int {fields[0]}Tmp = {a} * {rng.randrange(2, 99)} + {b};",
            f"        if ({fields[0]}Tmp > {rng.randrange(1000)}) {{",
            f"            return {fields[0]}Tmp - {a} / {rng.randrange(1, 9)};",
            "        }",
            f"        for (int i = 0; i < {b}; i++) {{ {fields[0]}Tmp += i % {rng.randrange(2, 7)}; }}",
            f"        return {fields[0]}Tmp;",
            "    }",
        ]
    lines.append("}")
    return "\n".join(lines) + "\n"


def write_project(root: Path, name: str, n_files: int, seed: int) -> Path:
    """A folder ``root/name`` holding ``n_files`` distinct Java files."""
    folder = root / name / "src" / "main" / "java"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n_files):
        (folder / f"File{i}.java").write_text(make_java(seed * 1000 + i))
    return root / name


def config(sources: list, out: Path, **kw) -> BuildConfig:
    """A quiet, single-process build config for tests."""
    kw.setdefault("num_proc", 1)
    kw.setdefault("progress", False)
    return BuildConfig(sources=[str(s) for s in sources], out=out, **kw)
