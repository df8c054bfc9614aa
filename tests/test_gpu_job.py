"""The GPU job script (bench/gpu_default_model.sh) end to end on the CPU at nano scale.

A GPU is lent rarely and briefly, so the one script that trains the next default model must
not fail for the first time on the GPU: this runs it with a tiny carry, nano presets and a
given throughput (no benchmark), and checks what comes back in $OUT.
"""

from __future__ import annotations

import io
import json
import lzma
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from kaffee.data.layout import REPO_LAYOUT
from kaffee.models import checkpoint
from safetensors import safe_open

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "gpu_default_model.sh"


def _carry(d: Path, java_samples: dict[str, str], tok) -> Path:
    d.mkdir()
    rows = [
        {"project": f"p{k}", "path": f"src/p{k}/{name}", "text": text}
        for k in range(6)
        for name, text in java_samples.items()
    ]
    for split, part in (("train", rows[:-3]), ("valid", rows[-3:])):
        with lzma.open(d / f"{split}.jsonl.xz", "wt", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in part)
    tok.save(d / "tokenizer.json")
    return d


def _env(carry: Path, out: Path, **settings: str) -> dict[str, str]:
    """The job's environment at nano scale on the CPU, with ``settings`` on top."""
    return {
        **os.environ,
        "CARRY": str(carry),
        "OUT": str(out),
        "PY": sys.executable,
        "PRESET": "nano",
        "LSTM_PRESET": "nano",
        "BATCH": "2",
        "BLOCK": "64",
        "TPS": "200",  # tokens/s: sizes the schedule to 20 steps without running the benchmark
        "NO_COMPILE": "1",
        **settings,
    }


@pytest.mark.skipif(sys.platform == "win32", reason="a bash script")
def test_gpu_job_runs_at_nano_scale_on_cpu(tmp_path, java_samples, tiny_tokenizer):
    carry = _carry(tmp_path / "carry", java_samples, tiny_tokenizer)
    out = tmp_path / "out"
    out.mkdir()
    env = _env(carry, out, GPT_MIN="0.2", LSTM_MIN="0.1", LSTM_BLOCK="64")
    r = subprocess.run(["bash", str(SCRIPT)], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    parts = sorted(out.glob("results.tar.part-*"))
    assert parts and all(p.stat().st_size < 16 * 2**20 for p in parts)
    res = tmp_path / "res"
    with tarfile.open(fileobj=io.BytesIO(b"".join(p.read_bytes() for p in parts))) as tar:
        tar.extractall(res, filter="data")
    gpt = checkpoint.load_model(res / "gpt")
    stored = {}
    for f in (res / "gpt").glob("*.safetensors"):
        with safe_open(str(f), framework="pt") as handle:
            stored.update({k: handle.get_slice(k).get_dtype() for k in handle.keys()})
    assert stored["model.embed_tokens.weight"] == "I8"  # the gpt ships as int8 with per-row scales
    assert "model.embed_tokens.weight" + checkpoint.INT8_SCALE in stored
    assert gpt.family == "gpt" and gpt.meta["layout"] == REPO_LAYOUT and gpt.meta["line_fim_share"] == 0.5
    assert gpt.supports_fim
    lstm = checkpoint.load_model(res / "lstm")
    assert lstm.family == "lstm" and lstm.meta["fim_rate"] == 0.5  # the gpt's stream, from the shared cache
    summary = json.loads((res / "gpt.json").read_text().strip().splitlines()[-1])
    assert summary["val_loss"] is not None


@pytest.mark.skipif(sys.platform == "win32", reason="a bash script")
def test_gpu_job_keeps_to_its_time_budget(tmp_path, java_samples, tiny_tokenizer):
    """With no time left after tokenising, the gpt still trains (half a minute at least, capped by
    GPT_MIN) and the lstm is skipped rather than the call running past its limit."""
    carry = _carry(tmp_path / "carry", java_samples, tiny_tokenizer)
    out = tmp_path / "out"
    out.mkdir()
    env = _env(carry, out, GPT_MIN="0.1", JOB_S="1")  # JOB_S: already spent when the job starts
    r = subprocess.run(["bash", str(SCRIPT)], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "gpt gets 0.1 min" in r.stdout and "lstm skipped" in r.stdout
    res = tmp_path / "res"
    parts = b"".join(p.read_bytes() for p in sorted(out.glob("results.tar.part-*")))
    with tarfile.open(fileobj=io.BytesIO(parts)) as tar:
        tar.extractall(res, filter="data")
    assert checkpoint.load_model(res / "gpt").family == "gpt" and not (res / "lstm").exists()
    assert json.loads((res / "tokenize.json").read_text().splitlines()[-1])["train_tokens"] > 0
