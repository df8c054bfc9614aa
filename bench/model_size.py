"""Size of the next default model: parameters, int8 bytes and the CPU cost of candidate GPT shapes.

For each candidate shape (a ``gpt`` preset name, or ``LAYERSxWIDTH`` with 64-wide heads and
a SwiGLU width of 3x, as ``base`` has) a randomly initialised model (the family's own init;
timing does not depend on the weights) is saved with ``save_model_dir(dtype="int8")`` to a
temporary directory, its bytes are measured from the files, and it is loaded the way the
server loads a model directory (``CompletionEngine.from_model_dir``: int8 ``FastGPT`` on
CPU, ``--threads`` threads: by default the server's own ``EngineOptions.threads``, which the
reference replay below runs with). Then, on a warm KV cache of ``--warm`` tokens:

- prefill: encode N new tokens at once (typing adds a few; a new file or a jump encodes many);
- decode: one token at a time (the cost of each token of a suggestion).

Candidates are interleaved (for every workload of every repetition, all of them back to back
in a seeded shuffle) so the load of this shared machine falls on all alike; medians are
reported, cost ratios are medians of ratios within a repetition, with ``uptime`` before and after.

The typing-replay p95 of each candidate is a *prediction*, not a replay: the bundled model's
measured replay p95 (``bench/latency.py``, run here unless ``--reference-p95-ms`` is given)
scaled by the candidate's per-token decode cost over the reference shape's. An untrained
model cannot be replayed (its suggestions, draft acceptance and stop points differ).

The GPU budget columns are a cross-check, not a measurement: tokens a 5-minute-class job
sees at a given MFU (``6 * N`` FLOPs per token, as ``bench/train_throughput.py`` counts),
tokens per parameter against Chinchilla's ~20 (Hoffmann et al. 2022), and the loss change
their fitted ``L(N, D) = E + A/N^a + B/D^b`` predicts against the reference shape (a fit to
natural-language models of 70M-16B parameters: a direction, not a number for Java).

    python -P bench/model_size.py                                   # the default ladder
    python -P bench/model_size.py --shapes base,8x512,8x640 --threads 2 --reference-p95-ms 129.4
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from kaffee.bench.latency import percentile
from kaffee.bench.train_throughput import PEAK_BF16
from kaffee.data.tokenizer import KaffeeTokenizer
from kaffee.errors import KaffeeError
from kaffee.models import checkpoint, default_model_dir, families
from kaffee.models.gpt import PRESETS, GPTConfig
from kaffee.models.lm import LanguageModel
from kaffee.server.engine import CompletionEngine, EngineOptions

REPO = Path(__file__).resolve().parent.parent
DEFAULT_SHAPES = "base,8x512,10x512,8x640,10x640,12x640,12x768"
HEAD_DIM = 64  # head width of LAYERSxWIDTH shapes (base: 512 / 8 heads)
# Hoffmann et al. 2022 ("Training Compute-Optimal Large Language Models"), eq. 10 / approach 3.
CHINCHILLA = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
CHINCHILLA_TOKENS_PER_PARAM = 20.0


@dataclass
class SizeBenchConfig:
    shapes: list[str] = field(default_factory=lambda: DEFAULT_SHAPES.split(","))  # presets or LxC
    tokenizer: Path = REPO / "models" / "default" / "tokenizer.json"  # its vocabulary sets vocab_size
    block_size: int = 1024  # context length of every candidate (the window the KV cache is sized for)
    warm_tokens: int = 512  # tokens already in the KV cache before each timed call
    prefill: list[int] = field(default_factory=lambda: [8, 64, 512])  # new tokens encoded at once
    decode_tokens: int = 16  # tokens decoded one at a time per repetition (per-token cost = time / this)
    reps: int = 7  # timed repetitions (medians reported), after one untimed warm-up repetition
    threads: int = EngineOptions.threads  # torch CPU threads of the engine: the server's default, as replayed
    budget_mb: float = 64.0  # storage budget of the model directory, MB = 10^6 bytes
    p95_budget_ms: float = 60.0  # typing-replay p95 target on this machine
    reference_shape: str = "base"  # the shape of the bundled model the reference p95 was measured on
    reference_p95_ms: float | None = None  # the bundled model's replay p95; None: run bench/latency.py
    reference_model: Path | None = None  # trained model timed as a sanity row (None: skip it)
    replay_file: Path = REPO / "examples" / "Bank.java"  # what bench/latency.py replays
    replay_chars: int = 400  # characters it types (bench/latency.py --chars)
    gpu_minutes: float = 4.5  # training minutes of the GPU job's gpt run (gpu_default_model.sh GPT_MIN)
    mfu: list[float] = field(default_factory=lambda: [0.22, 0.40])  # measured (card) and issue-14 target
    peak_flops: float = PEAK_BF16["H100"]  # dense bf16 peak of the GPU job's card (H100 = H200)
    seed: int = 0  # random init and the interleaving order
    keep_dir: Path | None = None  # keep the saved int8 model directories here (None: a deleted temp dir)

    def __post_init__(self) -> None:
        if not self.shapes:
            raise KaffeeError("no shapes to measure")
        if self.reference_shape not in self.shapes:
            raise KaffeeError(f"the reference shape {self.reference_shape!r} must be one of --shapes")
        if self.reps < 1 or self.decode_tokens < 1 or self.threads < 1:
            raise KaffeeError("--reps, --decode-tokens and --threads must be >= 1")
        if not self.prefill or min(self.prefill) < 1:
            raise KaffeeError("--prefill needs token counts >= 1")
        if (
            self.warm_tokens < 1
            or self.warm_tokens + max(max(self.prefill), self.decode_tokens) > self.block_size
        ):
            raise KaffeeError(
                "--warm plus the longest prefill (and the decoded tokens) must fit --block-size"
            )


@dataclass
class Row:
    name: str  # the shape as given (preset name or LxC), or "bundled" for the reference model
    n_layer: int  # transformer blocks
    n_embd: int  # width
    n_head: int  # attention heads
    intermediate_size: int  # SwiGLU hidden width
    params: int  # parameters (tied embedding counted once)
    int8_bytes: int  # model directory bytes, int8 storage (every file: weights, tokenizer, config, card)
    weight_bytes: int  # of which the safetensors files
    fp16_bytes: int  # 2 bytes per parameter (computed: what fp16 storage, as shipped today, would take)
    prefill_ms: dict[int, float]  # N -> median wall ms to encode N new tokens onto the warm cache
    decode_ms: float  # median wall ms per decoded token
    decode_cpu_ms: float = float(
        "nan"
    )  # median process CPU ms per decoded token (all threads, spin included)
    prefill_all_ms: dict[int, list[float]] = field(default_factory=dict)  # wall ms, every repetition
    decode_all_ms: list[float] = field(default_factory=list)  # wall ms per token, every repetition
    decode_all_cpu_ms: list[float] = field(default_factory=list)  # CPU ms per token, every repetition
    ratio: float = float("nan")  # median over repetitions of decode wall ms / the reference shape's (paired)
    cpu_ratio: float = float("nan")  # the same from CPU time
    predicted_p95_ms: float = float("nan")  # reference replay p95 x ratio (a prediction)

    @property
    def int8_mb(self) -> float:
        return self.int8_bytes / 1e6


def parse_shape(spec: str, vocab_size: int, block_size: int) -> GPTConfig:
    """A gpt preset name or ``LAYERSxWIDTH`` (64-wide heads, SwiGLU 3 x width) as a GPTConfig."""
    if spec in PRESETS:
        preset = {**PRESETS[spec], "block_size": block_size}
        return GPTConfig(vocab_size=vocab_size, **preset)
    m = re.fullmatch(r"(\d+)x(\d+)", spec)
    if not m:
        raise KaffeeError(
            f"shape {spec!r}: a gpt preset ({', '.join(PRESETS)}) or LAYERSxWIDTH such as 8x640"
        )
    n_layer, n_embd = int(m[1]), int(m[2])
    if n_layer < 1 or n_embd < HEAD_DIM or n_embd % HEAD_DIM:
        raise KaffeeError(f"shape {spec!r}: the width must be a positive multiple of {HEAD_DIM}")
    return GPTConfig(
        vocab_size=vocab_size,
        n_layer=n_layer,
        n_head=n_embd // HEAD_DIM,
        n_embd=n_embd,
        intermediate_size=3 * n_embd,
        block_size=block_size,
    )


def count_params(cfg: GPTConfig) -> int:
    """Parameters of a gpt config (tied embedding counted once): embeddings, blocks, final norm.

    A cross-check only: the rows count the built or loaded model's tensors (``tensor_params``)
    and assert that this formula agrees.
    """
    c, i = cfg.n_embd, cfg.intermediate_size
    block = 4 * c * c + 3 * c * i + 2 * c  # q, k, v, o; gate, up, down; two RMSNorm weights
    head = 0 if cfg.tie_embeddings else cfg.vocab_size * c
    return cfg.vocab_size * c + head + cfg.n_layer * block + c


def _dir_bytes(d: Path) -> tuple[int, int]:
    files = [p for p in d.iterdir() if p.is_file()]
    return sum(p.stat().st_size for p in files), sum(
        p.stat().st_size for p in files if p.suffix == ".safetensors"
    )


def tensor_params(model: LanguageModel) -> int:
    """Elements of a model's tensors as saved (a tied embedding once)."""
    return sum(t.numel() for t in families.model_tensors(model).values())


def save_random(out: Path, cfg: GPTConfig, tokenizer: KaffeeTokenizer, seed: int) -> int:
    """A randomly initialised gpt (the family's init) saved as int8 to ``out``; returns its parameters."""
    torch.manual_seed(seed)
    model = families.wrap("gpt", cfg, families.build_module("gpt", cfg))
    params = tensor_params(model)
    assert params == count_params(cfg), (params, count_params(cfg))
    card = "# untrained: bench/model_size.py timing candidate\n"
    checkpoint.save_model_dir(out, model, tokenizer, card, extra={"untrained": True}, dtype="int8")
    return params


class Timer:
    """One loaded model on a warm cache, timed through the engine's runner."""

    def __init__(self, model_dir: Path, cfg: SizeBenchConfig, ids: list[int]) -> None:
        options = EngineOptions(threads=cfg.threads, workspace_cache=False, project_context=False)
        self.engine = CompletionEngine.from_model_dir(model_dir, options, device="cpu")
        if self.engine.degraded or self.engine.runner is None:
            raise KaffeeError(f"{model_dir} did not load: {self.engine.stats.fallback_reason}")
        self.runner = self.engine.runner
        self.model = self.engine.model
        self.warm = cfg.warm_tokens
        self.ids = ids
        self.state = self.model.new_state()
        self.runner.step(self.state, ids[: self.warm])

    def prefill(self, n: int) -> tuple[float, float]:
        """(wall ms, process CPU ms) to encode ``n`` new tokens at once onto the warm cache."""
        new = self.ids[self.warm : self.warm + n]
        t0, c0 = time.perf_counter(), time.process_time()
        self.runner.step(self.state, new)
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        self.model.crop(self.state, self.warm)
        return dt * 1000.0, dc * 1000.0

    def decode(self, n: int) -> tuple[float, float]:
        """(wall ms, process CPU ms) per token for ``n`` tokens decoded one at a time."""
        t0, c0 = time.perf_counter(), time.process_time()
        for i in range(n):
            self.runner.step(self.state, [self.ids[self.warm + i]])
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        self.model.crop(self.state, self.warm)
        return dt * 1000.0 / n, dc * 1000.0 / n


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "load average: " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def reference_replay_p95(cfg: SizeBenchConfig, model_dir: Path) -> tuple[float, list[str]]:
    """The bundled model's typing-replay p95 from bench/latency.py (engine only, server defaults)."""
    with tempfile.TemporaryDirectory(prefix="kaffee-size-") as tmp:
        out = Path(tmp) / "latencies.json"
        cmd = [sys.executable, "-P", str(REPO / "bench" / "latency.py"), str(cfg.replay_file)]
        cmd += ["--model", str(model_dir), "--chars", str(cfg.replay_chars), "--modes", "engine"]
        cmd += ["--json", str(out)]
        print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0 or not out.is_file():
            raise KaffeeError(f"bench/latency.py failed: {(r.stdout + r.stderr)[-2000:]}")
        xs = sorted(json.loads(out.read_text())["engine"])
    if not xs:
        raise KaffeeError("bench/latency.py answered no requests")
    return percentile(xs, 95), cmd  # the p95 bench/latency.py itself reports


def gpu_budget(params: int, ref_params: int, cfg: SizeBenchConfig) -> dict[str, dict[str, float]]:
    """Per MFU: tokens the GPU job trains on, tokens per parameter, Chinchilla's loss change vs the reference."""
    c = CHINCHILLA

    def loss(n: float, d: float) -> float:
        return c["E"] + c["A"] / n ** c["alpha"] + c["B"] / d ** c["beta"]

    out = {}
    for mfu in cfg.mfu:
        flops = mfu * cfg.peak_flops * cfg.gpu_minutes * 60.0
        tokens, ref_tokens = flops / (6.0 * params), flops / (6.0 * ref_params)
        out[f"{mfu:g}"] = {
            "tokens": tokens,
            "tokens_per_param": tokens / params,
            "chinchilla_dloss": loss(params, tokens) - loss(ref_params, ref_tokens),
            # compute-optimal size at 20 tokens per parameter: C = 6 N (20 N)
            "optimal_params": math.sqrt(flops / (6.0 * CHINCHILLA_TOKENS_PER_PARAM)),
        }
    return out


def measure(cfg: SizeBenchConfig) -> dict:
    tokenizer = KaffeeTokenizer.from_file(cfg.tokenizer)
    vocab = tokenizer.vocab_size
    shapes = {s: parse_shape(s, vocab, cfg.block_size) for s in cfg.shapes}
    rng = random.Random(cfg.seed)
    need = cfg.warm_tokens + max(max(cfg.prefill), cfg.decode_tokens)
    ids = [rng.randrange(vocab) for _ in range(need)]  # what is encoded does not change the cost
    tmp = Path(tempfile.mkdtemp(prefix="kaffee-size-")) if cfg.keep_dir is None else Path(cfg.keep_dir)
    tmp.mkdir(parents=True, exist_ok=True)
    rows: dict[str, Row] = {}
    timers: dict[str, Timer] = {}
    try:
        for name, gcfg in shapes.items():
            print(f"saving {name} ...", file=sys.stderr, flush=True)
            d = tmp / name
            params = save_random(d, gcfg, tokenizer, cfg.seed)
            total, weights = _dir_bytes(d)
            rows[name] = Row(
                name, gcfg.n_layer, gcfg.n_embd, gcfg.n_head, gcfg.intermediate_size, params,
                total, weights, 2 * params, {}, float("nan"),
            )  # fmt: skip
            timers[name] = Timer(d, cfg, ids)
        if cfg.reference_model is not None:
            _meta, gcfg, _tok = checkpoint.read_gpt_dir(Path(cfg.reference_model))
            total, weights = _dir_bytes(Path(cfg.reference_model))
            params = tensor_params(checkpoint.load_model(Path(cfg.reference_model), expect_family="gpt"))
            if params != count_params(gcfg):
                raise KaffeeError(
                    f"{cfg.reference_model}: {params} parameters in its tensors, "
                    f"{count_params(gcfg)} by its config's formula"
                )
            rows["bundled"] = Row(
                "bundled", gcfg.n_layer, gcfg.n_embd, gcfg.n_head, gcfg.intermediate_size, params,
                total, weights, 2 * params, {}, float("nan"),
            )  # fmt: skip
            timers["bundled"] = Timer(Path(cfg.reference_model), cfg, ids)
        order = list(timers)
        load_before = uptime()
        # Interleaved per workload: every candidate runs the same call back to back in a shuffled
        # order, so load that comes and goes lands on all of them; repetition 0 warms up.
        for rep in range(cfg.reps + 1):
            for n in cfg.prefill:
                rng.shuffle(order)
                for name in order:
                    ms, _cpu = timers[name].prefill(n)
                    if rep:
                        rows[name].prefill_all_ms.setdefault(n, []).append(ms)
            rng.shuffle(order)
            for name in order:
                ms, cpu = timers[name].decode(cfg.decode_tokens)
                if rep:
                    rows[name].decode_all_ms.append(ms)
                    rows[name].decode_all_cpu_ms.append(cpu)
        load_after = uptime()
    finally:
        timers.clear()
        if cfg.keep_dir is None:
            shutil.rmtree(tmp, ignore_errors=True)
    ref = rows[cfg.reference_shape]
    for row in rows.values():
        row.prefill_ms = {n: statistics.median(v) for n, v in row.prefill_all_ms.items()}
        row.decode_ms = statistics.median(row.decode_all_ms)
        row.decode_cpu_ms = statistics.median(row.decode_all_cpu_ms)
        # paired: the same repetition's reference cost, measured moments apart under the same load
        row.ratio = statistics.median(
            a / b for a, b in zip(row.decode_all_ms, ref.decode_all_ms, strict=True)
        )
        row.cpu_ratio = statistics.median(
            a / b for a, b in zip(row.decode_all_cpu_ms, ref.decode_all_cpu_ms, strict=True)
        )
    return {"rows": rows, "load_before": load_before, "load_after": load_after, "threads": cfg.threads}


def choose(rows: list[Row], cfg: SizeBenchConfig) -> Row | None:
    """The largest candidate whose predicted p95 and int8 size are within budget (None: none is)."""
    fits = [
        r
        for r in rows
        if r.name != "bundled" and r.predicted_p95_ms <= cfg.p95_budget_ms and r.int8_mb <= cfg.budget_mb
    ]
    return max(fits, key=lambda r: r.params) if fits else None


def report(result: dict, cfg: SizeBenchConfig) -> tuple[str, dict]:
    rows: list[Row] = list(result["rows"].values())
    ref = result["rows"][cfg.reference_shape]
    ref_p95 = result["reference_p95_ms"]
    for r in rows:
        r.predicted_p95_ms = ref_p95 * r.ratio
    chosen = choose(rows, cfg)
    budgets = {r.name: gpu_budget(r.params, ref.params, cfg) for r in rows if r.params}
    pf = " | ".join(f"prefill {n} ms" for n in cfg.prefill)
    lines = [
        f"threads {cfg.threads}; warm cache {cfg.warm_tokens} tokens; medians of {cfg.reps} interleaved "
        f"repetitions; decode = ms per token over {cfg.decode_tokens} tokens",
        f"load before: {result['load_before']}",
        f"load after:  {result['load_after']}",
        f"reference typing-replay p95: {ref_p95:.1f} ms ({result['reference_source']})",
        "",
        f"| shape | layers x width (heads) | params M | int8 dir MB | fp16 MB (computed) | {pf} "
        "| decode ms/token | decode CPU ms/token | cost vs ref (CPU) | predicted replay p95 ms | within budget |",
        "| --- | --- | ---: | ---: | ---: | "
        + " | ".join("---:" for _ in cfg.prefill)
        + " | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        ok = r.name != "bundled" and r.int8_mb <= cfg.budget_mb and r.predicted_p95_ms <= cfg.p95_budget_ms
        why = (
            []
            if ok
            else (["size"] if r.int8_mb > cfg.budget_mb else [])
            + (["p95"] if r.predicted_p95_ms > cfg.p95_budget_ms else [])
        )
        verdict = "–" if r.name == "bundled" else ("yes" if ok else "no: " + ", ".join(why))
        pfs = " | ".join(f"{r.prefill_ms[n]:.1f}" for n in cfg.prefill)
        lines.append(
            f"| {r.name} | {r.n_layer} x {r.n_embd} ({r.n_head}) | {r.params / 1e6:.1f} | {r.int8_mb:.1f} "
            f"| {r.fp16_bytes / 1e6:.1f} | {pfs} | {r.decode_ms:.2f} | {r.decode_cpu_ms:.2f} "
            f"| {r.ratio:.2f} ({r.cpu_ratio:.2f}) | {r.predicted_p95_ms:.0f} "
            f"| {verdict} |"
        )
    lines += [
        "",
        "Wall-clock medians (CPU: process CPU time, every thread's, spin-waits included). Cost vs ref: "
        f"the median over repetitions of decode ms per token over the reference shape's ({cfg.reference_shape}) "
        "in the same repetition (in brackets from CPU time). Predicted p95 = the reference replay p95 x "
        "that ratio: a prediction from per-token costs of untrained models, not a replay of a trained one.",
        "",
        f"GPU budget cross-check ({cfg.gpu_minutes:g} training minutes, 6N FLOPs per token, "
        f"{cfg.peak_flops / 1e12:.1f} TFLOP/s peak; Chinchilla: ~{CHINCHILLA_TOKENS_PER_PARAM:g} tokens per "
        "parameter, loss change from Hoffmann et al. 2022's fit, relative to the reference shape):",
        "",
        "| shape | "
        + " | ".join(f"tokens M @ {100 * m:g} % MFU | tokens/param | Chinchilla dL" for m in cfg.mfu)
        + " |",
        "| --- | " + " | ".join("---: | ---: | ---:" for _ in cfg.mfu) + " |",
    ]
    for r in rows:
        if r.name not in budgets or r.name == "bundled":
            continue
        cells = []
        for m in cfg.mfu:
            b = budgets[r.name][f"{m:g}"]
            cells.append(
                f"{b['tokens'] / 1e6:.0f} | {b['tokens_per_param']:.1f} | {b['chinchilla_dloss']:+.3f}"
            )
        lines.append(f"| {r.name} | " + " | ".join(cells) + " |")
    optimal = {m: budgets[ref.name][f"{m:g}"]["optimal_params"] for m in cfg.mfu}
    lines.append("")
    lines.append(
        "Chinchilla compute-optimal size for this budget (20 tokens/parameter): "
        + ", ".join(f"{optimal[m] / 1e6:.1f}M at {100 * m:g} % MFU" for m in cfg.mfu)
        + "."
    )
    if chosen is None:
        verdict = (
            f"No candidate is within both budgets (predicted p95 <= {cfg.p95_budget_ms:g} ms, int8 "
            f"<= {cfg.budget_mb:g} MB); the smallest predicted p95 is "
            f"{min(r.predicted_p95_ms for r in rows if r.name != 'bundled'):.0f} ms."
        )
    else:
        verdict = (
            f"Chosen: {chosen.name} ({chosen.n_layer} x {chosen.n_embd}, {chosen.params / 1e6:.1f}M parameters, "
            f"{chosen.int8_mb:.1f} MB int8, predicted p95 {chosen.predicted_p95_ms:.0f} ms): the largest "
            f"candidate with predicted p95 <= {cfg.p95_budget_ms:g} ms and int8 <= {cfg.budget_mb:g} MB."
        )
    lines += ["", verdict]
    summary = {
        "bench": "model_size",
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
        "load_before": result["load_before"],
        "load_after": result["load_after"],
        "reference_p95_ms": ref_p95,
        "reference_source": result["reference_source"],
        "chosen": chosen.name if chosen else None,
        "rows": [
            {
                **{k: v for k, v in asdict(r).items() if k not in ("prefill_ms", "prefill_all_ms")},
                "prefill_ms": {str(n): v for n, v in r.prefill_ms.items()},
                "prefill_all_ms": {str(n): v for n, v in r.prefill_all_ms.items()},
                "int8_mb": r.int8_mb,
                "gpu_budget": budgets.get(r.name),
            }
            for r in rows
        ],
    }
    return "\n".join(lines), summary


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    d = SizeBenchConfig()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default=DEFAULT_SHAPES, help=f"comma-separated (default {DEFAULT_SHAPES})")
    ap.add_argument("--tokenizer", type=Path, default=d.tokenizer)
    ap.add_argument("--block-size", type=int, default=d.block_size)
    ap.add_argument("--warm", type=int, default=d.warm_tokens, help="tokens in the KV cache before each call")
    ap.add_argument(
        "--prefill", default=",".join(map(str, d.prefill)), help="new-token counts to encode at once"
    )
    ap.add_argument("--decode-tokens", type=int, default=d.decode_tokens)
    ap.add_argument("--reps", type=int, default=d.reps)
    ap.add_argument("--threads", type=int, default=d.threads)
    ap.add_argument("--budget-mb", type=float, default=d.budget_mb)
    ap.add_argument("--p95-budget-ms", type=float, default=d.p95_budget_ms)
    ap.add_argument("--reference-shape", default=d.reference_shape)
    ap.add_argument("--reference-p95-ms", type=float, default=None, help="skip the replay; use this p95")
    ap.add_argument(
        "--reference-model",
        default="default",
        help="trained model replayed for the reference p95 and timed as a sanity row "
        "('default': the bundled model; 'none': no sanity row, needs --reference-p95-ms)",
    )
    ap.add_argument("--replay-chars", type=int, default=d.replay_chars)
    ap.add_argument("--gpu-minutes", type=float, default=d.gpu_minutes)
    ap.add_argument("--mfu", default=",".join(f"{m:g}" for m in d.mfu), help="comma-separated fractions")
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--keep-dir", type=Path, default=None, help="keep the saved int8 model directories here")
    ap.add_argument("--json", type=Path, default=None, help="also write the JSON summary here")
    args = ap.parse_args(argv)
    try:
        ref_model = (
            None
            if args.reference_model == "none"
            else default_model_dir()
            if args.reference_model == "default"
            else Path(args.reference_model)
        )
        cfg = SizeBenchConfig(
            shapes=[s.strip() for s in args.shapes.split(",") if s.strip()],
            tokenizer=args.tokenizer,
            block_size=args.block_size,
            warm_tokens=args.warm,
            prefill=_ints(args.prefill),
            decode_tokens=args.decode_tokens,
            reps=args.reps,
            threads=args.threads,
            budget_mb=args.budget_mb,
            p95_budget_ms=args.p95_budget_ms,
            reference_shape=args.reference_shape,
            reference_p95_ms=args.reference_p95_ms,
            reference_model=ref_model,
            replay_chars=args.replay_chars,
            gpu_minutes=args.gpu_minutes,
            mfu=[float(m) for m in args.mfu.split(",") if m.strip()],
            seed=args.seed,
            keep_dir=args.keep_dir,
        )
        if cfg.reference_p95_ms is None:
            if ref_model is None:
                raise KaffeeError("--reference-model none needs --reference-p95-ms")
            p95, cmd = reference_replay_p95(cfg, ref_model)
            shown = [
                "python",
                *(os.path.relpath(c, REPO) if c.startswith(str(REPO)) else c for c in cmd[1:-2]),
            ]
            source = "measured: " + " ".join(shown)
        else:
            p95, source = cfg.reference_p95_ms, "given with --reference-p95-ms"
        result = measure(cfg)
        result["reference_p95_ms"], result["reference_source"] = p95, source
    except KaffeeError as exc:
        print(f"model_size: error: {exc}", file=sys.stderr)
        return 1
    table, summary = report(result, cfg)
    print(table)
    print(json.dumps(summary))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
