"""`typing`: replay a user typing held-out code, token by token, with inline suggestions on.

A segment is a run of consecutive code lines of one file (``typing_lines``, default 5)
that the user writes anew: the file before it is there, the file after it is there,
the segment's later lines are not. The user is ``typing_replay.replay`` (asked at
every token start and after every accepted suggestion; a suggestion that is exactly
what comes next on the line, saving at least one key, is accepted with Tab; indentation
free, Enter a keystroke), the same model the latency benchmark replays over LSP.
Reports keystrokes saved (% of keystrokes), how often a suggestion was accepted, and
request latency p50 / p95 as the caller sees it.
"""

from __future__ import annotations

import time
from typing import Any

from kaffee.evaluation.metrics import percentile_estimate, ratio_estimate
from kaffee.evaluation.system_base import Context, RequestFailed, System
from kaffee.evaluation.task_base import (
    HeldOut,
    MetricRow,
    Position,
    Task,
    TaskOutcome,
    sample_units,
    task_rng,
)
from kaffee.evaluation.typing_replay import ReplayLine, replay


class TypingTask(Task):
    name = "typing"
    summary = "typing replay: keystrokes saved by accepting suggestions, latency p50/p95"
    needs = "complete"
    headline = ("keystrokes_saved", "accepted", "latency_p50", "latency_p95")

    @property
    def lines_per_segment(self) -> int:
        return max(1, int(self.options.get("typing_lines") or 5))

    def positions(self, held: HeldOut | None, seed: int, limit: int | None) -> list[Position]:
        assert held is not None
        out: list[Position] = []
        for fi, first in sample_units(held, task_rng(seed, self.name), limit, "line"):
            lines = held.lines(fi)
            seg = lines[first : first + self.lines_per_segment]
            f = held.files[fi]
            spans = [(ln.tokens[0].start, ln.tokens[-1].end) for ln in seg]
            out.append(
                Position(
                    id=f"{f.sha256[:16]}:{spans[0][0]}:{self.lines_per_segment}",
                    file=fi,
                    data={"spans": spans, "starts": [[t.start for t in ln.tokens] for ln in seg]},
                )
            )
        return out

    def predict(self, system: System, held: HeldOut | None, pos: Position) -> dict[str, Any]:
        assert held is not None
        f = held.files[pos.file]
        text = f.text
        spans = pos.data["spans"]
        end_of_segment = text.find("\n", spans[-1][1])
        suffix = text[end_of_segment:] if end_of_segment >= 0 else ""
        errors = 0
        last_error: RequestFailed | None = None
        latencies: list[float] = []

        def suggest(cursor: int) -> str:
            nonlocal errors, last_error
            ctx = Context(prefix=text[:cursor], suffix=suffix, project=f.project, path=f.path)
            t0 = time.perf_counter()
            try:
                suggestion = system.complete(ctx)
            except RequestFailed as exc:  # one failed request: no suggestion this time
                errors += 1
                last_error = exc
                return ""
            latencies.append((time.perf_counter() - t0) * 1000)
            return suggestion

        lines = [
            ReplayLine(text.rfind("\n", 0, a) + 1, a, b, tuple(starts))
            for (a, b), starts in zip(spans, pos.data["starts"], strict=True)
        ]
        counts = replay(text, lines, suggest)
        if last_error is not None and errors == counts.requests:
            raise last_error
        return {
            "keystrokes": counts.keystrokes,
            "request_errors": errors,
            "saved": counts.saved,
            "accepted": counts.accepted,
            "requests": counts.requests,
            "latency_ms": latencies,
        }

    def aggregate(self, positions: list[Position], outputs: list[dict | None], seed: int) -> TaskOutcome:
        done = [o for o in outputs if o]
        # a failed segment still had to be typed: it counts with nothing saved
        keys = [o["keystrokes"] for o in done] + [
            sum(b - a + 1 for a, b in p.data["spans"])
            for p, o in zip(positions, outputs, strict=True)
            if not o
        ]
        saved = [o["saved"] for o in done] + [0] * (len(keys) - len(done))
        latency = [ms for o in done for ms in o["latency_ms"]]
        rows = [
            MetricRow("keystrokes_saved", ratio_estimate(saved, keys, 100.0, seed)),
            MetricRow(
                "accepted",
                ratio_estimate([o["accepted"] for o in done], [o["requests"] for o in done], 100.0, seed),
            ),
            MetricRow(
                "latency_p50", percentile_estimate(latency, 50, seed), unit="ms", higher_is_better=False
            ),
            MetricRow(
                "latency_p95", percentile_estimate(latency, 95, seed), unit="ms", higher_is_better=False
            ),
        ]
        return TaskOutcome(rows, {"latency_ms": latency})
