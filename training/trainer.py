"""The training loop for neural families, on CPU, one GPU or many (DDP via accelerate).

nanoGPT-shaped: one loop, a config dataclass, checkpoints that carry their own config.
Data order is a pure function of the step (training/data.py), the learning rate is a
pure function of the step, and dropout is reseeded per step, so rerunning the command after a
kill continues exactly as the uninterrupted run would.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from kaffee.data.tokenizer import KaffeeTokenizer
from kaffee.errors import KaffeeError
from kaffee.models import checkpoint, families
from kaffee.training.data import BlockSampler
from kaffee.training.optim_state import load_optimizer, save_optimizer

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    batch_size: int = 16  # blocks per micro-batch per process
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 1e-3  # peak learning rate
    min_lr_ratio: float = 0.1  # cosine decays to lr * this
    warmup_steps: int = 100  # linear warm-up
    weight_decay: float = 0.1  # AdamW decoupled weight decay (matrices only)
    grad_clip: float = 1.0  # max global gradient norm (0 = off)
    max_steps: int = 1000  # optimizer steps; also the length of the cosine schedule
    max_minutes: float | None = None  # stop (and save) after this much wall time
    eval_interval: int = 200  # steps between validation passes
    eval_blocks: int = 64  # validation blocks per pass
    save_interval: int = 500  # steps between checkpoints (always one at the end)
    seed: int = 1337  # parameter init, data order, dropout
    compile: bool = True  # torch.compile when a GPU is present
    precision: str = "auto"  # "bf16", "no" or "auto" (bf16 on a capable GPU)
    log_interval: int = 10  # steps between metrics lines
    block_size: int | None = None  # training sequence length; None = the model's context length

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.grad_accum < 1 or self.max_steps < 1:
            raise KaffeeError("batch size, gradient accumulation and max steps must be positive")


@dataclass
class RunState:
    step: int = 0  # optimizer steps done
    tokens: int = 0  # training tokens seen (all processes)
    best_val: float | None = None
    history: list[dict] = field(default_factory=list)  # validation results


def lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def lm_loss(module: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    out = module(x)
    logits = out.logits if hasattr(out, "logits") else out[0]  # (B, T, V)
    return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1))


# (module, inputs (B, T), next-token targets (B, T), batch seed) -> the mean loss training minimises
Loss = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor, int], torch.Tensor]


def causal_loss(module: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int) -> torch.Tensor:
    return lm_loss(module, x, y)


def objective(family: str, model_cfg, tokenizer: KaffeeTokenizer) -> Loss:
    """A family's training loss: next-token cross-entropy, or for an ``mlm`` family (bert) the
    masked-token loss on the inputs, with masks drawn from the batch seed (``models/bert.py: mlm_loss``)."""
    if families.get_family(family).objective != "mlm":
        return causal_loss
    from kaffee.models.bert import mask_id, mlm_loss

    mask, vocab, rate = mask_id(tokenizer), model_cfg.vocab_size, model_cfg.mask_rate
    return lambda module, x, y, seed: mlm_loss(module, x, mask, vocab, rate, seed)


def make_optimizer(module: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    decay = [p for p in module.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in module.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = torch.cuda.is_available()
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95), fused=fused)


@torch.no_grad()
def evaluate(
    module: torch.nn.Module,
    sampler: BlockSampler | None,
    blocks: int,
    batch: int,
    device,
    loss_fn: Loss = causal_loss,
) -> float | None:
    """Mean validation loss (nats/token) over the first ``blocks`` blocks in a fixed order (and fixed masks)."""
    if sampler is None:
        return None
    was_training = module.training
    module.eval()
    n = min(blocks, sampler.n_blocks)
    total, count = 0.0, 0
    for start in range(0, n, batch):
        rows = sampler.rows(list(range(start, min(n, start + batch))))
        t = torch.from_numpy(rows.astype(np.int64)).to(device)
        loss = loss_fn(module, t[:, :-1], t[:, 1:], start)
        total += loss.item() * len(rows)
        count += len(rows)
    module.train(was_training)
    return total / max(1, count)


def _precision(cfg: TrainConfig) -> str:
    if cfg.precision != "auto":
        return cfg.precision
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


class HostBatches:
    """Training batches as int64 tensors, the next one made on a background thread while the model runs.

    Which blocks a batch holds is a pure function of its first block index (``BlockSampler``),
    so prefetching changes nothing but when the work is done. ``pin``: page-locked memory,
    for asynchronous copies to a GPU.
    """

    def __init__(self, sampler: BlockSampler, batch_size: int, pin: bool):
        from concurrent.futures import ThreadPoolExecutor

        self.sampler, self.batch_size, self.pin = sampler, batch_size, pin
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="kaffee-batches")
        self._next: tuple[int, object] | None = None

    def _make(self, first: int) -> tuple[torch.Tensor, torch.Tensor]:
        xb, yb = self.sampler.batch(first, self.batch_size)
        x, y = torch.from_numpy(xb.astype(np.int64)), torch.from_numpy(yb.astype(np.int64))
        return (x.pin_memory(), y.pin_memory()) if self.pin else (x, y)

    def get(self, first: int, prefetch: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if self._next is not None and self._next[0] == first:
            batch = self._next[1].result()
        else:
            batch = self._make(first)
        self._next = (prefetch, self._pool.submit(self._make, prefetch)) if prefetch is not None else None
        return batch

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def train(
    family: str,
    model_cfg,
    tokenizer: KaffeeTokenizer,
    train_stream: np.ndarray,
    valid_stream: np.ndarray | None,
    out: Path,
    cfg: TrainConfig,
    resume: bool = False,
    init_tensors: dict[str, torch.Tensor] | None = None,
    card: Callable[[dict], str] | None = None,
    extra_meta: dict | None = None,
    on_step: Callable[[int, float], None] | None = None,
    spec: dict | None = None,
) -> dict:
    """Train a neural family; writes the model directory ``out`` (with resumable state) and returns a summary.

    ``spec`` (training/run.py: run_spec) is saved with each checkpoint so a later command can tell
    whether it continues this run.
    """
    from accelerate import Accelerator

    # cpu=True lets accelerate form a gloo process group when torchrun starts several CPU workers
    accel = Accelerator(mixed_precision=_precision(cfg), cpu=not torch.cuda.is_available())
    device = accel.device
    torch.manual_seed(cfg.seed)
    module = families.build_module(family, model_cfg)
    loss_fn = objective(family, model_cfg, tokenizer)
    state = RunState()
    opt_state_dir = None
    if resume:
        if not (out / "trainer" / "state.json").is_file():
            raise KaffeeError(f"--resume: {out} has no complete training checkpoint (trainer/state.json)")
        loaded = checkpoint.load_model(out, expect_family=family)
        module.load_state_dict(loaded.module.state_dict())
        saved = json.loads((out / "trainer" / "state.json").read_text())
        state = RunState(**saved["run"])
        opt_state_dir = out / "trainer"
        accel.print(f"resuming {out} at step {state.step}")
    elif init_tensors is not None:
        module.load_state_dict(init_tensors, strict=False)
    module.to(device)
    optimizer = make_optimizer(module, cfg)
    if opt_state_dir is not None:
        load_optimizer(optimizer, opt_state_dir)
    train_module = module
    if cfg.compile and torch.cuda.is_available():
        train_module = torch.compile(module)
    train_module, optimizer = accel.prepare(train_module, optimizer)

    block = min(cfg.block_size or model_cfg.block_size, model_cfg.block_size)
    sampler = BlockSampler(train_stream, block, cfg.seed)
    valid = (
        BlockSampler(valid_stream, block, cfg.seed)
        if valid_stream is not None and len(valid_stream) > block
        else None
    )
    world, rank = accel.num_processes, accel.process_index
    per_step = cfg.batch_size * cfg.grad_accum * world
    loader = HostBatches(sampler, cfg.batch_size, pin=torch.device(device).type == "cuda")
    n_params = sum(p.numel() for p in module.parameters())
    accel.print(
        f"{family}: {n_params / 1e6:.2f}M params, {len(train_stream):,} train tokens, block {block}, "
        f"{per_step * block:,} tokens/step, {world} process(es) on {device}"
    )
    metrics_lines: list[str] = []
    if resume and (out / "metrics.jsonl").is_file():
        metrics_lines = (out / "metrics.jsonl").read_text().splitlines()

    def log_metrics(rec: dict) -> None:
        line = json.dumps(rec)
        metrics_lines.append(line)
        if accel.is_main_process:
            log.debug(line)

    def save() -> None:
        accel.wait_for_everyone()
        if not accel.is_main_process:
            return
        raw = accel.unwrap_model(train_module)
        raw = getattr(raw, "_orig_mod", raw)
        model = families.wrap(family, model_cfg, raw)
        summary = {
            "step": state.step,
            "tokens": state.tokens,
            "val_loss": state.best_val,
            "history": state.history[-5:],
        }
        meta = {**(extra_meta or {}), "training": {**summary, "config": asdict(cfg), "params": n_params}}

        def write_extra(tmp: Path) -> None:
            (tmp / "trainer").mkdir()
            save_optimizer(optimizer, tmp / "trainer")
            (tmp / "trainer" / "state.json").write_text(
                json.dumps({"run": asdict(state), "train_config": asdict(cfg), "spec": spec})
            )
            (tmp / "metrics.jsonl").write_text("\n".join(metrics_lines) + "\n")

        checkpoint.save_model_dir(
            out, model, tokenizer, card(meta) if card else "", extra=meta, also=write_extra
        )
        model.module.train()

    from tqdm.auto import tqdm

    start_time = time.time()
    start_step = state.step
    bar = tqdm(
        total=cfg.max_steps,
        initial=state.step,
        disable=not accel.is_main_process,
        desc=f"train {family}",
        unit="step",
    )
    train_module.train()
    stopped_by_time = False
    t_last, tok_last = time.time(), state.tokens
    while state.step < cfg.max_steps:
        lr = lr_at(state.step, cfg)
        for g in optimizer.param_groups:
            g["lr"] = lr
        torch.manual_seed(cfg.seed * 1_000_003 + state.step)  # dropout identical on resume
        base = state.step * per_step
        loss_sum = 0.0
        try:
            for micro in range(cfg.grad_accum):
                first = base + (micro * world + rank) * cfg.batch_size
                nxt = first + world * cfg.batch_size  # the next micro-batch (this step's or the next step's)
                x, y = loader.get(first, prefetch=nxt)
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                sync = micro == cfg.grad_accum - 1
                ctx = accel.no_sync(train_module) if not sync and world > 1 else contextlib.nullcontext()
                with ctx, accel.autocast():
                    loss = loss_fn(train_module, x, y, cfg.seed * 1_000_003 + first) / cfg.grad_accum
                accel.backward(loss)
                loss_sum += loss.detach().float()
            if cfg.grad_clip:
                accel.clip_grad_norm_(train_module.parameters(), cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        except torch.cuda.OutOfMemoryError as exc:
            raise KaffeeError(
                f"out of GPU memory at batch size {cfg.batch_size} x block {block}; "
                "lower --batch-size and raise --grad-accum to keep the same tokens per step"
            ) from exc
        state.step += 1
        state.tokens += per_step * block
        # reading the loss waits for the GPU: only when it is logged, evaluated or asked for
        # (every step with several processes: the reduce is a collective all of them must join)
        loss_value = None
        if world > 1 or on_step or state.step % cfg.log_interval == 0 or state.step % cfg.eval_interval == 0:
            loss_value = float(accel.reduce(torch.as_tensor(loss_sum, device=device), reduction="mean"))
        if on_step:
            on_step(state.step, loss_value)
        if state.step % cfg.log_interval == 0 or state.step == cfg.max_steps:
            if loss_value is None:
                loss_value = float(loss_sum)
            now = time.time()
            tps = (state.tokens - tok_last) / max(1e-9, now - t_last)
            t_last, tok_last = now, state.tokens
            log_metrics(
                {
                    "step": state.step,
                    "loss": loss_value,
                    "lr": lr,
                    "tokens": state.tokens,
                    "tokens_per_s": tps,
                }
            )
            bar.set_postfix(loss=f"{loss_value:.3f}", tok_s=f"{tps:,.0f}")
        bar.update(1)
        elapsed_min = (time.time() - start_time) / 60
        stopped_by_time = cfg.max_minutes is not None and elapsed_min >= cfg.max_minutes
        last = state.step == cfg.max_steps or stopped_by_time
        if state.step % cfg.eval_interval == 0 or last:
            val = evaluate(
                accel.unwrap_model(train_module), valid, cfg.eval_blocks, cfg.batch_size, device, loss_fn
            )
            if val is not None:
                if loss_value is None:  # the time budget ended this step
                    loss_value = float(loss_sum)
                state.best_val = val if state.best_val is None else min(state.best_val, val)
                rec = {"step": state.step, "val_loss": val, "train_loss": loss_value}
                state.history.append(rec)
                log_metrics(rec)
                accel.print(f"step {state.step}: train {loss_value:.4f}  val {val:.4f}")
        if state.step % cfg.save_interval == 0 or last:
            save()
        if stopped_by_time:
            accel.print(f"time budget of {cfg.max_minutes} min reached at step {state.step}")
            break
    bar.close()
    loader.close()
    accel.wait_for_everyone()
    elapsed = time.time() - start_time
    checksum = float(
        sum(p.detach().double().sum().item() for p in accel.unwrap_model(train_module).parameters())
    )
    return {
        "family": family,
        "steps": state.step,
        "steps_this_run": state.step - start_step,
        "tokens": state.tokens,
        "val_loss": state.history[-1]["val_loss"] if state.history else None,
        "seconds": elapsed,
        "tokens_per_s": (state.step - start_step) * per_step * block / max(elapsed, 1e-9),
        "params": n_params,
        "param_checksum": checksum,
        "rank": rank,
        "world_size": world,
        "stopped_by_time": stopped_by_time,
        "metrics_path": str(out / "metrics.jsonl"),
    }
