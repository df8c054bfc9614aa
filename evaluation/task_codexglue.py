"""`codexglue-line`: CodeXGLUE's javaCorpus line-completion file, scored by CodeXGLUE's rules.

The file is JSON lines ``{"input": "<s> package ... ( final IFigure", "gt": "owner , final Point location )"}``:
code as space-separated Java tokens with literals normalised (``"<STR_LIT>"``,
``<NUM_LIT>``, ``<NUM_LIT:0>``, ``"<STR_LIT:text>"`` with spaces as ``U+0020``).
Our models were trained on ordinary source, so the input is turned back into code
(literals restored as CodeXGLUE's post-processing does, tokens laid out with usual
Java spacing and line breaks), the system completes the line, and its prediction is
re-tokenised with the Java lexer and joined by spaces before CodeXGLUE's scoring
(post-process both sides, ``pred.split() == gt.split()``, ``fuzz.ratio``). The
numbers can then be set beside the published leaderboard (which reports the
mean over the whole file; use no ``--limit`` for that).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path
from typing import Any

from kaffee.errors import KaffeeError
from kaffee.evaluation.lexer import LITERAL, lex
from kaffee.evaluation.metrics import codexglue_line_scores, codexglue_post_process, mean_estimate
from kaffee.evaluation.system_base import Context, System
from kaffee.evaluation.task_base import (
    HeldOut,
    MetricRow,
    Position,
    Task,
    TaskOutcome,
    sample_indices,
    task_rng,
)

_MARKERS = {"<s>", "</s>", "<EOL>", "<pad>"}
_SPECIAL_CHARS = {"U+0020": " ", "U+002C": ","}
_NO_SPACE_BEFORE = {".", ",", ";", ")", "]", "++", "--", "::"}
_NO_SPACE_AFTER = {".", "(", "[", "@", "!", "~", "::"}
_WORD = re.compile(r"^[\w$]")
_SPACED_KEYWORDS = {
    "if",
    "for",
    "while",
    "switch",
    "catch",
    "synchronized",
    "return",
    "try",
    "throw",
    "assert",
}


def restore_literal(token: str) -> str:
    """A normalised literal token back to code (CodeXGLUE's post_process, plus its U+ escapes)."""
    if "_LIT" not in token:
        return token
    out = codexglue_post_process(token)
    for code, ch in _SPECIAL_CHARS.items():
        out = out.replace(code, ch)
    return out


def detokenize(tokenized: str) -> str:
    """Space-separated javaCorpus tokens -> Java source laid out the usual way (approximately)."""
    toks = [restore_literal(t) for t in tokenized.split() if t not in _MARKERS]
    out: list[str] = []
    depth = 0  # brace depth, for indentation
    parens = 0  # inside ( ... ): no line break after ';' (for loops)
    prev = ""
    at_line_start = True
    for tok in toks:
        if tok == "}":
            depth = max(0, depth - 1)
            if not at_line_start:
                out.append("\n")
                at_line_start = True
        if at_line_start:
            out.append("    " * depth)
        elif not (
            tok in _NO_SPACE_BEFORE
            or prev in _NO_SPACE_AFTER
            or (tok in ("(", "[") and _WORD.match(prev) and prev not in _SPACED_KEYWORDS)
        ):
            out.append(" ")
        out.append(tok)
        at_line_start = False
        if tok == "(":
            parens += 1
        elif tok == ")":
            parens = max(0, parens - 1)
        elif tok == "{":
            depth += 1
            out.append("\n")
            at_line_start = True
        elif tok == "}" or (tok == ";" and parens == 0):
            out.append("\n")
            at_line_start = True
        prev = tok
    return "".join(out)


def prediction_tokens(pred: str) -> str:
    """The first line of a prediction in CodeXGLUE's form: Java tokens joined by spaces,
    spaces and commas inside string literals written U+0020 / U+002C as its preprocessing does."""
    out = []
    for tok in lex(pred.split("\n", 1)[0]):
        text = tok.text
        if tok.kind == LITERAL and text[:1] in ("'", '"'):
            text = text.replace(" ", "U+0020").replace(",", "U+002C")
        out.append(text)
    return " ".join(out)


def read_codexglue_file(path: Path) -> list[dict]:
    if not path.is_file():
        raise KaffeeError(
            f"codexglue-line: no file at {path} (give the javaCorpus line-completion test.json)"
        )
    rows = []
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise KaffeeError(f"{path}:{n}: not a JSON line ({exc})") from exc
            if not isinstance(obj, dict) or "input" not in obj or "gt" not in obj:
                raise KaffeeError(
                    f"{path}:{n}: expected an object with 'input' and 'gt' (CodeXGLUE line format)"
                )
            rows.append({"id": obj.get("id", n - 1), "input": str(obj["input"]), "gt": str(obj["gt"])})
    if not rows:
        raise KaffeeError(f"{path} holds no examples")
    return rows


class CodeXGlueLineTask(Task):
    name = "codexglue-line"
    summary = "CodeXGLUE javaCorpus line completion (--codexglue-file): EM and edit similarity"
    needs = "complete"
    uses_corpus = False
    headline = ("em", "edit_sim")

    def positions(self, held: HeldOut | None, seed: int, limit: int | None) -> list[Position]:
        path = self.options.get("codexglue_file")
        if not path:
            raise KaffeeError(
                "codexglue-line needs --codexglue-file PATH (CodeXGLUE javaCorpus line-completion JSON lines)"
            )
        rows = read_codexglue_file(Path(path))
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]
        chosen = sample_indices(task_rng(seed, self.name), len(rows), limit)
        return [Position(id=f"cxg:{digest}:{rows[i]['id']}", file=-1, data=rows[i]) for i in chosen]

    def predict(self, system: System, held: HeldOut | None, pos: Position) -> dict[str, Any]:
        ctx = Context(
            prefix=detokenize(pos.data["input"]),
            suffix="",
            project="codexglue",
            path=f"Example{pos.data['id']}.java",
        )
        t0 = time.perf_counter()
        pred = system.complete(ctx)
        ms = (time.perf_counter() - t0) * 1000
        return {"pred": prediction_tokens(pred), "raw": pred.split("\n", 1)[0], "ms": ms}

    def aggregate(self, positions: list[Position], outputs: list[dict | None], seed: int) -> TaskOutcome:
        em, es = [], []
        for pos, out in zip(positions, outputs, strict=True):
            e, s = codexglue_line_scores((out or {}).get("pred", ""), pos.data["gt"])
            em.append(e)
            es.append(s)
        rows = [
            MetricRow("em", mean_estimate(em, 100.0, seed)),
            MetricRow("edit_sim", mean_estimate(es, 1.0, seed)),
        ]
        latency = [out["ms"] for out in outputs if out and "ms" in out]
        return TaskOutcome(rows, {"latency_ms": latency})
