"""`token`: predict each whole Java token of held-out files from the text before it.

The cursor sits just before a token (its leading whitespace typed); the rest of that
line is not there yet, the lines after it are. A suggestion counts only when it is the
whole token (every sub-word piece right). Top-1, top-5 and MRR@10, by token kind.
"""

from __future__ import annotations

import time
from typing import Any

from kaffee.evaluation.lexer import CATEGORIES, KINDS
from kaffee.evaluation.metrics import mean_estimate, reciprocal_rank, top_k_hit
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

K = 10  # suggestions asked for (MRR@10)


class TokenTask(Task):
    name = "token"
    summary = "next whole Java token: top-1, top-5, MRR@10, by kind"
    needs = "next_tokens"
    headline = ("top1", "top5", "mrr10")

    def positions(self, held: HeldOut | None, seed: int, limit: int | None) -> list[Position]:
        assert held is not None
        out: list[Position] = []
        for fi, ti in sample_units(held, task_rng(seed, self.name), limit, "token"):
            tok = held.tokens(fi)[ti]
            f = held.files[fi]
            out.append(
                Position(
                    id=f"{f.sha256[:16]}:{tok.start}",
                    file=fi,
                    data={
                        "offset": tok.start,
                        "target": tok.text,
                        "kind": tok.kind,
                        "category": tok.category,
                    },
                )
            )
        return out

    def predict(self, system: System, held: HeldOut | None, pos: Position) -> dict[str, Any]:
        assert held is not None
        ctx = editor_context(held.files[pos.file], pos.data["offset"])
        t0 = time.perf_counter()
        ranked = system.next_tokens(ctx, k=K)
        ms = (time.perf_counter() - t0) * 1000
        return {"ranked": [str(t) for t in ranked[:K]], "ms": ms}

    item_scale = {"top1": 100.0, "top5": 100.0, "mrr10": 100.0}

    def shown(self, pos, output):
        ranked = output["ranked"]
        return " · ".join(ranked[:5]), bool(top_k_hit(pos.data["target"], ranked, 1))

    @staticmethod
    def scores_of(target: str, ranked: list[str]) -> dict[str, float]:
        return {
            "top1": top_k_hit(target, ranked, 1),
            "top5": top_k_hit(target, ranked, 5),
            "mrr10": reciprocal_rank(target, ranked, K),
        }

    def item_scores(self, positions: list[Position], outputs: list[dict | None]) -> dict[str, list[float]]:
        out: dict[str, list[float]] = {m: [] for m in self.headline}
        for pos, o in zip(positions, outputs, strict=True):
            for m, v in self.scores_of(pos.data["target"], o["ranked"] if o else []).items():
                out[m].append(v)
        return out

    def aggregate(self, positions: list[Position], outputs: list[dict | None], seed: int) -> TaskOutcome:
        items = []
        for pos, out in zip(positions, outputs, strict=True):
            ranked = out["ranked"] if out else []
            items.append(
                (pos.data["kind"], pos.data.get("category"), self.scores_of(pos.data["target"], ranked))
            )
        rows: list[MetricRow] = []
        for metric in self.headline:
            rows.append(MetricRow(metric, mean_estimate([s[metric] for _, _, s in items], 100.0, seed)))
            for kind in KINDS:
                vals = [s[metric] for k, _, s in items if k == kind]
                if vals:
                    rows.append(MetricRow(metric, mean_estimate(vals, 100.0, seed), slice=f"kind={kind}"))
            for cat in CATEGORIES:  # the study's categories, beside the kinds
                vals = [s[metric] for _, c, s in items if c == cat]
                if vals:
                    rows.append(MetricRow(metric, mean_estimate(vals, 100.0, seed), slice=f"category={cat}"))
        latency = [out["ms"] for out in outputs if out and "ms" in out]
        return TaskOutcome(rows, {"latency_ms": latency})
