"""`line`: complete the rest of a code line (CodeXGLUE line-level, on our own held-out files).

A random code line (not a comment, package or import line; at least two tokens), the
cursor at a random token boundary inside it; target = the rest of the line up to its
last code token. Asked twice: with the rest of the file after the line present, as in
an editor, and with it hidden (prefix-only, CodeXGLUE's setting). Exact match is
``pred.split() == target.split()``; edit similarity is ``fuzz.ratio`` (0..100) with the prediction stripped.
"""

from __future__ import annotations

import time
from typing import Any

from kaffee.evaluation.metrics import edit_similarity, exact_match, mean_estimate
from kaffee.evaluation.system_base import System
from kaffee.evaluation.task_base import (
    HeldOut,
    MetricRow,
    Position,
    Task,
    TaskOutcome,
    editor_context,
    sample_units,
    task_rng,
)

PREFIX_ONLY = "prefix-only"  # suffix of metric names for the hidden-suffix setting


def first_line(text: str) -> str:
    return text.split("\n", 1)[0]


CONTEXT_EDGES = (256, 512, 1024, 2048, 4096, 8192, 16384, 32768)  # characters before the cursor
CONTEXT_BUCKETS = (
    "<256",
    "256-512",
    "512-1k",
    "1k-2k",
    "2k-4k",
    "4k-8k",
    "8k-16k",
    "16k-32k",
    ">=32k",
)


def context_bucket(chars: int) -> str:
    """Log2 bucket of the prefix length in characters (one of CONTEXT_BUCKETS)."""
    for edge, name in zip(CONTEXT_EDGES, CONTEXT_BUCKETS, strict=False):
        if chars < edge:
            return name
    return CONTEXT_BUCKETS[-1]


class LineTask(Task):
    name = "line"
    summary = "rest of a code line: exact match and edit similarity, with and without the suffix"
    needs = "complete"
    headline = ("em", "edit_sim", f"em@{PREFIX_ONLY}", f"edit_sim@{PREFIX_ONLY}")

    def positions(self, held: HeldOut | None, seed: int, limit: int | None) -> list[Position]:
        assert held is not None
        rng = task_rng(seed, self.name)
        chosen = sample_units(held, rng, limit, "line")
        cuts = rng.random(len(chosen))  # where in each line the cursor goes
        out: list[Position] = []
        for (fi, li), u in zip(chosen, cuts, strict=True):
            line = held.lines(fi)[li]
            toks = line.tokens
            j = 1 + int(u * (len(toks) - 1))  # boundary before token j, 1 <= j <= len-1
            f = held.files[fi]
            start = toks[j].start
            target = f.text[start : toks[-1].end]
            out.append(
                Position(
                    id=f"{f.sha256[:16]}:{start}",
                    file=fi,
                    data={"offset": start, "target": target, "line": line.line},
                )
            )
        return out

    def predict(self, system: System, held: HeldOut | None, pos: Position) -> dict[str, Any]:
        assert held is not None
        f = held.files[pos.file]
        out: dict[str, Any] = {}
        for key, hide in (("", False), (f"@{PREFIX_ONLY}", True)):
            ctx = editor_context(f, pos.data["offset"], hide_suffix=hide)
            if hide and "pred" in out and ctx.suffix == editor_context(f, pos.data["offset"]).suffix:
                out[f"pred{key}"], out[f"ms{key}"] = out["pred"], out["ms"]  # no suffix anyway: same question
                continue
            t0 = time.perf_counter()
            pred = system.complete(ctx)
            out[f"ms{key}"] = (time.perf_counter() - t0) * 1000
            out[f"pred{key}"] = first_line(pred)
        return out

    item_scale = {"em": 100.0, f"em@{PREFIX_ONLY}": 100.0}

    def shown(self, pos, output):
        return output["pred"], bool(exact_match(output["pred"], pos.data["target"]))

    def item_scores(self, positions: list[Position], outputs: list[dict | None]) -> dict[str, list[float]]:
        scores: dict[str, list[float]] = {m: [] for m in self.headline}
        for pos, out in zip(positions, outputs, strict=True):
            target = pos.data["target"]
            for setting in ("", f"@{PREFIX_ONLY}"):
                pred = (out or {}).get(f"pred{setting}", "")
                scores[f"em{setting}"].append(exact_match(pred, target))
                scores[f"edit_sim{setting}"].append(edit_similarity(pred, target))
        return scores

    def aggregate(self, positions: list[Position], outputs: list[dict | None], seed: int) -> TaskOutcome:
        scores = self.item_scores(positions, outputs)
        buckets = [context_bucket(pos.data["offset"]) for pos in positions]
        rows: list[MetricRow] = []
        for metric in self.headline:
            scale = 100.0 if metric.startswith("em") else 1.0
            rows.append(MetricRow(metric, mean_estimate(scores[metric], scale, seed)))
            for b in CONTEXT_BUCKETS:
                vals = [v for v, bb in zip(scores[metric], buckets, strict=True) if bb == b]
                if vals:
                    rows.append(MetricRow(metric, mean_estimate(vals, scale, seed), slice=f"context={b}"))
        latency = [out["ms"] for out in outputs if out and "ms" in out]
        return TaskOutcome(rows, {"latency_ms": latency})
