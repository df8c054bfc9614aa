"""Helpers for the evaluation tests: a fixture corpus, an oracle system and a random one."""

from __future__ import annotations

import json
import random
from pathlib import Path

import datasets
from java_samples import SAMPLES, training_texts
from kaffee.evaluation.lexer import lex
from kaffee.evaluation.system_base import Context, System

# A held-out file with the awkward parts: comments, a text block, non-ASCII, annotations, lambdas.
GREETER = """package com.example.greet;

import java.util.List;
import java.util.function.Function;

/**
 * Greets people — politely.
 */
public class Greeter {
    private static final String HELLO = "Grüß dich, %s!"; // the greeting
    private final char mark = '!';

    @Override
    public String toString() {
        return "Greeter" + mark;
    }

    public List<String> greetAll(List<String> names) {
        Function<String, String> f = n -> String.format(HELLO, n);
        return names.stream().map(f).toList();
    }

    public String banner() {
        String text = \"\"\"
            Welcome
            \"\"\";
        return text.strip() + 0x1F;
    }
}
"""

TEST_FILES = {
    ("bank", "src/Account.java"): SAMPLES["Account.java"],
    ("bank", "src/Main.java"): SAMPLES["Main.java"],
    ("todo", "src/TodoList.java"): SAMPLES["TodoList.java"],
    ("greet", "src/Greeter.java"): GREETER,
}


def make_corpus(out: Path, test: bool = True) -> Path:
    """A corpus directory in the `kaffee corpus build` format (datasets save_to_disk + stats.json)."""
    rows = []
    for i, text in enumerate(training_texts(3)):
        rows.append({"text": text, "project": f"train{i % 3}", "path": f"T{i}.java", "split": "train"})
    rows.append({"text": SAMPLES["Main.java"], "project": "valid", "path": "V.java", "split": "valid"})
    if test:
        for (project, path), text in TEST_FILES.items():
            rows.append({"text": text, "project": project, "path": path, "split": "test"})
    for r in rows:
        r["sha256"] = __import__("hashlib").sha256(r["text"].encode()).hexdigest()
    ds = datasets.Dataset.from_dict(
        {k: [r[k] for r in rows] for k in ("text", "project", "path", "sha256", "split")}
    )
    ds.save_to_disk(str(out))
    (out / "stats.json").write_text(json.dumps({"files_kept": len(rows)}))
    return out


class OracleSystem(System):
    """Knows every held-out file: always suggests exactly what comes next (scores the maximum)."""

    label = "oracle"

    def __init__(self, files: dict[tuple[str, str], str] | None = None):
        self.files = dict(files or TEST_FILES)
        self._tokens = {key: lex(text) for key, text in self.files.items()}

    def _at(self, ctx: Context):
        key = (ctx.project, ctx.path)
        text = self.files[key]
        assert text.startswith(ctx.prefix)
        return text, self._tokens[key], len(ctx.prefix)

    def next_tokens(self, ctx: Context, k: int = 10) -> list[str]:
        if (ctx.project, ctx.path) not in self.files:
            return []
        text, toks, off = self._at(ctx)
        return [next(t.text for t in toks if t.start >= off)]

    def complete(self, ctx: Context) -> str:
        if (ctx.project, ctx.path) not in self.files:
            return ""
        text, toks, off = self._at(ctx)
        end = text.find("\n", off)
        on_line = [t for t in toks if t.end > off and t.end <= end]
        return text[off : on_line[-1].end] if on_line else ""


class RandomSystem(System):
    """Suggests random Java tokens: the floor every real system must beat."""

    label = "random"

    def __init__(self, seed: int = 0):
        self.rng = random.Random(seed)
        self.vocab = sorted({t.text for text in TEST_FILES.values() for t in lex(text)})

    def next_tokens(self, ctx: Context, k: int = 10) -> list[str]:
        return self.rng.sample(self.vocab, k)

    def complete(self, ctx: Context) -> str:
        return " ".join(self.rng.sample(self.vocab, 4))
