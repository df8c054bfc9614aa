"""Local acceptance statistics: counted in memory, appended to a JSONL file, summed by ``kaffee stats``.

Nothing here leaves the machine: the only file written is :func:`stats_path`
(``$XDG_STATE_HOME/kaffee/stats.jsonl``), and no code text is stored, only counts.
Each line of the file holds the counts added since the previous flush for one
(day, feature, model), so the file stays small and a crash loses at most one flush
interval; readers sum the lines.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

FEATURES = ("inline", "completion")
FLUSH_S = 10.0  # counts wait at most this long in memory before they are appended
MAX_OFFERS = 2000  # shown suggestions remembered for their accept command (oldest forgotten first)
RECORD_VERSION = 1


def stats_path(environ: dict[str, str] | None = None) -> Path:
    """``$XDG_STATE_HOME/kaffee/stats.jsonl``; ``~/.local/state`` when unset or relative (XDG spec)."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_STATE_HOME", "")
    root = Path(base) if base and os.path.isabs(base) else Path.home() / ".local" / "state"
    return root / "kaffee" / "stats.jsonl"


@dataclass
class Counts:
    requests: int = 0  # requests answered
    shown: int = 0  # answers with a suggestion in them
    accepted: int = 0  # suggestions the client ran the accept command for (once per suggestion)
    accepted_chars: int = 0  # characters inserted by those accepts
    latency_ms: float = 0.0  # summed over the requests

    def add(self, other: Counts) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


@dataclass
class _Offer:
    key: tuple[str, str, str]  # (day, feature, model) it was shown under
    chars: int  # longest insert it offered
    taken: int = 0  # characters accepted so far (partial accepts add up to ``chars``)
    accepted: bool = False


class StatsRecorder:
    """Counts per (day, feature, model); a timer thread appends them to ``path``.

    Methods are called on the event loop and only touch memory; file writes happen on
    the flush timer's thread (or a caller's thread for :meth:`flush`).
    """

    def __init__(self, path: Path, flush_s: float = FLUSH_S, clock=time.time):
        self.path = path
        self.flush_s = flush_s
        self._clock = clock
        self._pending: dict[tuple[str, str, str], Counts] = {}
        self._offers: OrderedDict[str, _Offer] = OrderedDict()
        self._lock = threading.Lock()  # pending counts and the timer
        self._write_lock = threading.Lock()  # one writer at a time, lines in order
        self._timer: threading.Timer | None = None
        self.enabled = True

    def _key(self, feature: str, model: str) -> tuple[str, str, str]:
        return (time.strftime("%Y-%m-%d", time.localtime(self._clock())), feature, model)

    def answered(self, feature: str, model: str, latency_ms: float, offered_chars: int) -> str | None:
        """A request answered; with a suggestion (``offered_chars`` > 0) its id for the accept command."""
        if not self.enabled:
            return None
        key = self._key(feature, model)
        offer_id = None
        with self._lock:
            counts = self._pending.setdefault(key, Counts())
            counts.requests += 1
            counts.latency_ms += latency_ms
            if offered_chars > 0:
                counts.shown += 1
                offer_id = uuid.uuid4().hex[:16]
                self._offers[offer_id] = _Offer(key, offered_chars)
                while len(self._offers) > MAX_OFFERS:
                    self._offers.popitem(last=False)
        self._schedule()
        return offer_id

    def accepted(self, offer_id: str, chars: int) -> bool:
        """The client accepted (part of) a suggestion; False for an unknown id (nothing counted)."""
        if not self.enabled:
            return False
        with self._lock:
            offer = self._offers.get(offer_id)
            if offer is None:
                return False
            added = max(0, min(chars, offer.chars - offer.taken))
            counts = self._pending.setdefault(offer.key, Counts())
            if not offer.accepted:
                counts.accepted += 1  # partial accepts of one suggestion count once
                offer.accepted = True
            counts.accepted_chars += added
            offer.taken += added
        self._schedule()
        return True

    def disable(self) -> None:
        """Stop counting and drop what was not written yet."""
        with self._lock:
            self.enabled = False
            self._pending.clear()
            self._offers.clear()
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    def enable(self) -> None:
        self.enabled = True

    def _schedule(self) -> None:
        with self._lock:
            if self._timer is None and self._pending:
                self._timer = threading.Timer(self.flush_s, self.flush)
                self._timer.name = "kaffee-stats"
                self._timer.daemon = True
                self._timer.start()

    def flush(self) -> None:
        """Append the pending counts to the file (never on the event loop: call it from a thread)."""
        with self._lock:
            pending, self._pending = self._pending, {}
            if self._timer is not None and self._timer is not threading.current_thread():
                self._timer.cancel()
            self._timer = None
            if not self.enabled:
                return
        if not pending:
            return
        lines = [
            json.dumps(
                {"v": RECORD_VERSION, "day": day, "feature": feature, "model": model, **asdict(counts)},
                ensure_ascii=False,
            )
            for (day, feature, model), counts in sorted(pending.items())
        ]
        with self._write_lock:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                with open(self.path, "a", encoding="utf-8") as f:
                    f.write("\n".join(lines) + "\n")
            except OSError as exc:
                log.warning("cannot write the statistics to %s: %s", self.path, exc)


# -- reading ------------------------------------------------------------------------------------
def read_records(path: Path) -> tuple[list[dict[str, Any]], int]:
    """The file's records and how many lines were skipped as unreadable."""
    records, bad = [], 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                bad += 1
                continue
            if isinstance(rec, dict) and all(
                isinstance(rec.get(k), str) for k in ("day", "feature", "model")
            ):
                records.append(rec)
            else:
                bad += 1
    return records, bad


def _counts(rec: dict[str, Any]) -> Counts:
    values = {}
    for f in fields(Counts):
        v = rec.get(f.name, 0)
        values[f.name] = v if isinstance(v, int | float) and not isinstance(v, bool) else 0
    return Counts(**values)


def summarize(records: Iterable[dict[str, Any]], by: str) -> list[dict[str, Any]]:
    """Rows summed per (``by`` value, feature), sorted; ``by`` is "day" or "model"."""
    sums: dict[tuple[str, str], Counts] = {}
    for rec in records:
        sums.setdefault((rec[by], rec["feature"]), Counts()).add(_counts(rec))
    return [row(c, **{by: k, "feature": f}) for (k, f), c in sorted(sums.items())]


def row(c: Counts, **labels: str) -> dict[str, Any]:
    return {
        **labels,
        "shown": c.shown,
        "accepted": c.accepted,
        "acceptance_rate": round(c.accepted / c.shown, 4) if c.shown else None,
        "accepted_chars": c.accepted_chars,
        "requests": c.requests,
        "mean_latency_ms": round(c.latency_ms / c.requests, 1) if c.requests else None,
    }


def report(records: list[dict[str, Any]]) -> dict[str, Any]:
    """What ``kaffee stats`` prints: per day, per model, and the totals per feature."""
    total: dict[str, Counts] = {}
    for rec in records:
        total.setdefault(rec["feature"], Counts()).add(_counts(rec))
    return {
        "by_day": summarize(records, "day"),
        "by_model": summarize(records, "model"),
        "total": [row(c, feature=f) for f, c in sorted(total.items())],
    }


def format_report(rep: dict[str, Any]) -> str:
    """Plain-text tables of :func:`report`."""
    out = []
    for title, key in (("per day", "day"), ("per model", "model"), ("total", None)):
        rows = rep["by_" + key] if key else rep["total"]
        out.append(f"{title}:")
        label_w = max([len(key or "")] + [len(r[key]) for r in rows if key]) if key else 0
        head = (f"{key:<{label_w}}  " if key else "") + (
            f"{'feature':<10} {'shown':>7} {'accepted':>8} {'rate':>6} {'chars':>8} {'latency':>9}"
        )
        out.append("  " + head)
        for r in rows:
            rate = f"{100 * r['acceptance_rate']:.0f}%" if r["acceptance_rate"] is not None else "-"
            lat = f"{r['mean_latency_ms']:.0f} ms" if r["mean_latency_ms"] is not None else "-"
            label = f"{r[key]:<{label_w}}  " if key else ""
            out.append(
                f"  {label}{r['feature']:<10} {r['shown']:>7} {r['accepted']:>8} {rate:>6} "
                f"{r['accepted_chars']:>8} {lat:>9}"
            )
        out.append("")
    return "\n".join(out).rstrip() + "\n"
