"""`bpc`: bits per character of held-out files (tokenizer-independent, comparable across models).

Each sampled file is scored whole: -sum log2 p over its tokens (an end-of-text token
starts it, so the first token is scored too), divided by its characters. The total is
sum(bits) / sum(characters) over the files, bootstrapped over files. Lower is better.
"""

from __future__ import annotations

import time
from typing import Any

from kaffee.evaluation.metrics import ratio_estimate
from kaffee.evaluation.system_base import System
from kaffee.evaluation.task_base import (
    HeldOut,
    MetricRow,
    Position,
    Task,
    TaskOutcome,
    sample_indices,
    task_rng,
)


class BpcTask(Task):
    name = "bpc"
    summary = "bits per character of held-out files (lower is better)"
    needs = "bits"
    headline = ("bpc",)

    def positions(self, held: HeldOut | None, seed: int, limit: int | None) -> list[Position]:
        assert held is not None
        chosen = sample_indices(task_rng(seed, self.name), len(held.files), limit)
        return [
            Position(id=f"{held.files[i].sha256[:16]}", file=i, data={"chars": len(held.files[i].text)})
            for i in chosen
        ]

    def predict(self, system: System, held: HeldOut | None, pos: Position) -> dict[str, Any]:
        assert held is not None
        t0 = time.perf_counter()
        bits, chars = system.bits(held.files[pos.file].text)
        return {"bits": float(bits), "chars": int(chars), "ms": (time.perf_counter() - t0) * 1000}

    def aggregate(self, positions: list[Position], outputs: list[dict | None], seed: int) -> TaskOutcome:
        done = [o for o in outputs if o]
        est = ratio_estimate([o["bits"] for o in done], [o["chars"] for o in done], 1.0, seed)
        return TaskOutcome([MetricRow("bpc", est, unit="bits/char", higher_is_better=False)])
