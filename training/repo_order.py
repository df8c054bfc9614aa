"""The order of a project's files in repository-level training text: each file after the files it uses.

DeepSeek-Coder (Guo et al. 2024, §2.1) packs the files of a repository into one
sequence in a topological order of their imports, so a model learns to read the
definitions a file depends on before the file. Java names a dependency in two ways:
``import a.b.C;`` (or ``a.b.*``, ``static a.b.C.m``) and, within a package, by the simple
type name alone. Both are found with a few regular expressions over the text: this is
an ordering heuristic (a name in a comment adds an edge; nothing breaks), not a lexer.

Cycles are common (a class and its inner helpers refer to each other); a depth-first
post-order visits dependencies first and simply stops at a file already on the path,
which breaks each cycle at a deterministic edge (files are visited in path order).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import PurePosixPath

_PACKAGE = re.compile(r"^\s*package\s+([\w.]+)\s*;", re.MULTILINE)
_IMPORT = re.compile(r"^\s*import\s+(static\s+)?([\w.]+?)(\.\*)?\s*;", re.MULTILINE)
_TYPE_NAME = re.compile(r"\b[A-Z][A-Za-z0-9_]*\b")


def _stem(path: str) -> str:
    return PurePosixPath(path.replace("\\", "/")).stem


def dependencies(paths: Sequence[str], texts: Sequence[str]) -> list[list[int]]:
    """For each file, the indices of the other files of the project it refers to."""
    packages = []
    for text in texts:
        m = _PACKAGE.search(text, 0, 20_000)
        packages.append(m.group(1) if m else "")
    by_fqn: dict[str, int] = {}
    by_package: dict[str, dict[str, int]] = {}
    for i, path in enumerate(paths):
        stem = _stem(path)
        by_fqn.setdefault(f"{packages[i]}.{stem}" if packages[i] else stem, i)
        by_package.setdefault(packages[i], {}).setdefault(stem, i)
    deps: list[list[int]] = []
    for i, text in enumerate(texts):
        found: dict[int, None] = {}  # insertion-ordered set
        names = set(_TYPE_NAME.findall(text))
        wildcard: list[str] = []
        for static, name, star in _IMPORT.findall(text):
            if star:
                wildcard.append(name)
                continue
            parts = name.split(".")
            # a.b.C, a.b.C.Inner or (static) a.b.C.member: the longest prefix that is a project file
            for k in range(len(parts), 1 if static else 0, -1):
                j = by_fqn.get(".".join(parts[:k]))
                if j is not None:
                    found[j] = None
                    break
        for package in [packages[i], *wildcard]:
            stems = by_package.get(package, {})
            for stem in sorted(names & stems.keys()):  # not a loop over the package: big ones are common
                found[stems[stem]] = None
        found.pop(i, None)
        deps.append(list(found))
    return deps


def dependency_order(paths: Sequence[str], texts: Sequence[str]) -> list[int]:
    """Indices of the files in an order that puts each file after the files it refers to (cycles cut)."""
    deps = dependencies(paths, texts)
    state = [0] * len(paths)  # 0 unseen, 1 on the current path, 2 placed
    out: list[int] = []
    for root in sorted(range(len(paths)), key=lambda i: paths[i]):
        if state[root]:
            continue
        stack = [(root, iter(sorted(deps[root], key=lambda j: paths[j])))]
        state[root] = 1
        while stack:
            node, children = stack[-1]
            for child in children:
                if state[child] == 0:
                    state[child] = 1
                    stack.append((child, iter(sorted(deps[child], key=lambda j: paths[j]))))
                    break
            else:
                stack.pop()
                state[node] = 2
                out.append(node)
    return out
