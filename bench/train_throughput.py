"""Training throughput per family and preset: tokens/s, and on a GPU the model FLOPs utilisation.

MFU = 6 * N * tokens/s / peak bf16 FLOP/s (N = parameters; the PaLM appendix-B estimate
without the attention term). Prints one JSON line per configuration and a Markdown table.

    python bench/train_throughput.py                       # CPU: every family, nano+small
    python bench/train_throughput.py --family gpt --preset base --batch-size 64 --steps 30
    python bench/train_throughput.py --host-data 1024 --batch-size 64 --steps 50   # the data loader alone
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from kaffee.models import families
from kaffee.training.trainer import TrainConfig, lm_loss, make_optimizer

# Dense bf16 peak FLOP/s from the vendors' datasheets (no sparsity).
PEAK_BF16 = {"H100": 989.4e12, "H200": 989.4e12, "A100": 312e12, "L4": 121e12}


def peak_flops() -> float | None:
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(0)
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def measure(
    family: str, preset: str, vocab: int, batch: int, steps: int, warmup: int, compile_: bool
) -> dict:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cfg = families.make_config(family, preset, vocab)
    torch.manual_seed(0)
    module = families.build_module(family, cfg).to(device).train()
    n_params = sum(p.numel() for p in module.parameters())
    opt = make_optimizer(module, TrainConfig())
    run = torch.compile(module) if compile_ and device == "cuda" else module
    block = cfg.block_size
    x = torch.randint(0, vocab, (batch, block + 1), device=device)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32

    def step() -> float:
        with torch.autocast(device_type=device, dtype=dtype, enabled=device == "cuda"):
            loss = lm_loss(run, x[:, :-1], x[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    for _ in range(warmup):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = step()
    float(loss)
    if device == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    tps = steps * batch * block / dt
    peak = peak_flops()
    return {
        "family": family,
        "preset": preset,
        "params": n_params,
        "batch": batch,
        "block": block,
        "device": torch.cuda.get_device_name(0) if device == "cuda" else f"cpu x{torch.get_num_threads()}",
        "tokens_per_s": round(tps),
        "mfu": round(6 * n_params * tps / peak, 4) if peak else None,
    }


def measure_host_data(batch: int, block: int, vocab: int, steps: int, tokens: int = 100_000_000) -> dict:
    """Host-side loading alone: the trainer's HostBatches over a uint16 stream, prefetching as in training.

    The GPU must never wait for it: compare its tokens/s with the model's.
    """
    from kaffee.training.data import BlockSampler
    from kaffee.training.trainer import HostBatches

    stream = np.random.default_rng(0).integers(0, vocab, size=tokens, dtype=np.uint16)
    loader = HostBatches(BlockSampler(stream, block, 0), batch, pin=torch.cuda.is_available())
    loader.get(0, prefetch=batch)
    t0 = time.perf_counter()
    for i in range(1, steps + 1):
        loader.get(i * batch, prefetch=(i + 1) * batch)
    dt = time.perf_counter() - t0
    loader.close()
    return {
        "bench": "host_data",
        "batch": batch,
        "block": block,
        "tokens_per_s": round(steps * batch * block / dt),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", action="append", help="gpt / lstm (default both)")
    ap.add_argument("--preset", action="append", help="nano / small / base (default nano, small)")
    ap.add_argument("--vocab", type=int, default=16384)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument(
        "--host-data", type=int, default=None, metavar="BLOCK", help="measure host-side data loading only"
    )
    args = ap.parse_args()
    if args.host_data:
        print(json.dumps(measure_host_data(args.batch_size, args.host_data, args.vocab, max(args.steps, 20))))
        return
    rows = []
    for fam in args.family or ["gpt", "lstm"]:
        for preset in args.preset or ["nano", "small"]:
            r = measure(
                fam, preset, args.vocab, args.batch_size, args.steps, args.warmup, not args.no_compile
            )
            print(json.dumps(r), flush=True)
            rows.append(r)
    print(
        "\n| family | preset | params | device | batch x block | tokens/s | MFU |\n|---|---|---|---|---|---|---|"
    )
    for r in rows:
        mfu = f"{100 * r['mfu']:.1f} %" if r["mfu"] is not None else "n/a"
        print(
            f"| {r['family']} | {r['preset']} | {r['params'] / 1e6:.1f}M | {r['device']} | {r['batch']} x {r['block']} | {r['tokens_per_s']:,} | {mfu} |"
        )


if __name__ == "__main__":
    main()
