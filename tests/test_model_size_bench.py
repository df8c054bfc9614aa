"""bench/model_size.py on tiny shapes: sizes measured from the saved int8 files, costs timed, a choice made.

Runs the bench in this process (two repetitions, a few tokens) with a given reference p95,
so no typing replay is started.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from kaffee.errors import KaffeeError
from safetensors import safe_open

BENCH = Path(__file__).resolve().parent.parent / "bench" / "model_size.py"
SHAPES = ["1x64", "2x64", "2x128"]


def _load():
    spec = importlib.util.spec_from_file_location("bench_model_size", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def test_tiny_shapes_are_saved_measured_and_timed(tmp_path, tiny_tokenizer, tiny_model_dir, capsys):
    bench = _load()
    tok = tmp_path / "tokenizer.json"
    tiny_tokenizer.save(tok)
    keep = tmp_path / "keep"
    args = ["--shapes", ",".join(SHAPES), "--reference-shape", "1x64", "--tokenizer", str(tok)]
    args += ["--block-size", "64", "--warm", "16", "--prefill", "2,8", "--decode-tokens", "2", "--reps", "2"]
    args += ["--threads", "1", "--reference-p95-ms", "20", "--reference-model", str(tiny_model_dir)]
    args += ["--p95-budget-ms", "1e9", "--keep-dir", str(keep), "--json", str(tmp_path / "out.json")]
    assert bench.main(args) == 0
    out = capsys.readouterr().out
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary == json.loads((tmp_path / "out.json").read_text())
    rows = {r["name"]: r for r in summary["rows"]}
    assert list(rows) == [*SHAPES, "bundled"]
    for name in SHAPES:  # the table has a row per shape, and the load it ran under
        assert f"\n| {name} | " in out
    assert "load average" in summary["load_before"] and "load average" in out

    sizes = [rows[s]["int8_bytes"] for s in SHAPES]
    params = [rows[s]["params"] for s in SHAPES]
    assert (
        sizes == sorted(sizes) and len(set(sizes)) == 3 and params == sorted(params) and len(set(params)) == 3
    )
    for name in SHAPES:  # bytes come from the saved files, whose matrices are int8
        files = [p for p in (keep / name).iterdir() if p.is_file()]
        assert rows[name]["int8_bytes"] == sum(p.stat().st_size for p in files)
        weights = [p for p in files if p.suffix == ".safetensors"]
        assert rows[name]["weight_bytes"] == sum(p.stat().st_size for p in weights)
        with safe_open(str(weights[0]), framework="pt") as handle:
            dtypes = {handle.get_slice(k).get_dtype() for k in handle.keys()}
        assert "I8" in dtypes
        assert rows[name]["fp16_bytes"] == 2 * rows[name]["params"]

    for r in rows.values():  # timings are positive, predictions scale the reference p95
        assert r["decode_ms"] > 0 and all(v > 0 for v in r["prefill_ms"].values())
        assert len(r["decode_all_ms"]) == 2 and set(r["prefill_ms"]) == {"2", "8"}
        assert r["predicted_p95_ms"] == pytest.approx(20 * r["ratio"])
    assert rows["1x64"]["ratio"] == 1.0
    assert rows["bundled"]["params"] == 2 * 64 * 64 * 4 + 3 * 2 * 64 * 192 + 5 * 64 + 512 * 64  # nano
    # Chinchilla cross-check: a bigger model sees fewer tokens in the same GPU minutes
    tpp = [rows[s]["gpu_budget"]["0.4"]["tokens_per_param"] for s in SHAPES]
    assert tpp == sorted(tpp, reverse=True)
    assert summary["chosen"] == "2x128"  # everything fits the budgets given: the largest wins


def test_choice_respects_both_budgets_and_can_be_none():
    bench = _load()

    def row(name: str, params: int, mb: float, p95: float):
        r = bench.Row(name, 1, 64, 1, 192, params, int(mb * 1e6), 0, 2 * params, {}, 1.0)
        r.predicted_p95_ms = p95
        return r

    rows = [row("a", 10, 30, 40), row("b", 20, 50, 59), row("c", 30, 60, 61), row("d", 40, 70, 30)]
    cfg = bench.SizeBenchConfig(shapes=["a"], reference_shape="a")
    assert bench.choose(rows, cfg).name == "b"  # c is too slow, d too large
    assert bench.choose([rows[2], rows[3]], cfg) is None


def test_shapes_parse_and_bad_ones_are_clear_errors():
    bench = _load()
    base = bench.parse_shape("base", 16384, 1024)
    assert (base.n_layer, base.n_embd, base.n_head, base.intermediate_size) == (6, 8 * 64, 8, 1536)
    assert bench.count_params(base) == 28_842_496  # the bundled model's card
    cfg = bench.parse_shape("8x640", 16384, 1024)
    assert (cfg.n_layer, cfg.n_head, cfg.intermediate_size) == (8, 10, 1920)
    for bad in ("8x600", "big", "0x64"):
        with pytest.raises(KaffeeError):
            bench.parse_shape(bad, 16384, 1024)
    with pytest.raises(KaffeeError, match="fit"):
        bench.SizeBenchConfig(shapes=["base"], warm_tokens=1000)


def test_shared_constants_come_from_the_other_benches(monkeypatch, tmp_path):
    """The bf16 peak is train_throughput's, the replay p95 is latency's own percentile."""
    from kaffee.bench import latency, train_throughput

    bench = _load()
    assert bench.SizeBenchConfig().peak_flops == train_throughput.PEAK_BF16["H100"]
    xs = [float(x) for x in range(1, 21)]
    assert latency.percentile(xs, 95) == 19.0 and latency.percentile([], 50) != latency.percentile([], 50)

    def fake_run(cmd, **_kw):  # bench/latency.py writing its latencies
        Path(cmd[cmd.index("--json") + 1]).write_text(json.dumps({"engine": xs[::-1]}))
        return type("R", (), {"returncode": 0, "stdout": "", "stderr": ""})()

    monkeypatch.setattr(bench.subprocess, "run", fake_run)
    cfg = bench.SizeBenchConfig(shapes=["base"])
    p95, _cmd = bench.reference_replay_p95(cfg, tmp_path)
    assert p95 == latency.ReplayResult("engine", xs, latency.TypingCounts(), 0.0).pct(95)
