"""Smoke run of bench/latency.py's paced typing mode against the real server (tiny model)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_paced_replay_reports_model_calls_and_busy_time(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "paced.json"
    cmd = [sys.executable, "-P", str(ROOT / "bench" / "latency.py"), str(ROOT / "examples" / "Bank.java")]
    cmd += ["--model", str(tiny_model_dir), "--cps", "100", "--ask", "key", "--debounce", "0,50", "--cancel"]
    cmd += ["--chars", "40", "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs = json.loads(out.read_text())
    assert [r["debounce_ms"] for r in runs] == [0, 50] and all(r["client_cancels"] for r in runs)
    for r in runs:
        assert r["keystrokes"] > 0 and r["requests"] == r["counters"]["requests"]
        assert r["counters"]["modelCalls"] + r["counters"]["reusedAnswers"] <= r["requests"]
        assert r["counters"]["modelMs"] >= 0
    assert "| 50 | yes |" in proc.stdout  # the table row of the second run
