#!/usr/bin/env bash
# One GPU job (README "How the default model was made"): throughput benchmark, tokenising once,
# then the default `gpt base` model and an LSTM baseline trained on the carried corpus export.
#
#   CARRY=runs/gpu-carry OUT=/some/dir bench/gpu_default_model.sh
#
# CARRY holds train.jsonl.xz, valid.jsonl.xz and tokenizer.json (made by bench/gpu_carry.py).
# Everything the job writes goes to $OUT as results.tar split into parts below 16 MiB
# (transfer limit). The job keeps to JOB_S seconds in all (a device call is killed at 600 s,
# and then nothing comes back): the training minutes are what is left after the benchmark and
# the tokenising, less a reserve for the final evaluations, saving and packing.
# The training text is laid out by repository with line-level FIM (kaffee train's defaults;
# the exports carry project and path). tests/test_gpu_job.py runs this script on the CPU at
# nano scale: PRESET=nano LSTM_PRESET=nano BATCH=2 BLOCK=64 LSTM_BLOCK=64 TPS=... NO_COMPILE=1.
set -euo pipefail
CARRY=${CARRY:-runs/gpu-carry}
OUT=${OUT:?set OUT}
JOB_S=${JOB_S:-540}            # seconds the whole job may take (the device call's limit is 600)
RESERVE_S=${RESERVE_S:-90}     # of them, kept for the final evaluations, saving and packing
HARD_S=${HARD_S:-600}          # where the device kills the call (nothing comes back after it)
GPT_MIN=${GPT_MIN:-4.5}        # wall-clock minutes for the gpt run at most (less if the time left is less)
LSTM_MIN=${LSTM_MIN:-1}        # wall-clock minutes for the lstm baseline at most
PRESET=${PRESET:-base}         # gpt preset of the default model (size: bench/model_size.py, docs/architectures.md)
LSTM_PRESET=${LSTM_PRESET:-small}
LSTM_BLOCK=${LSTM_BLOCK:-}     # tokens per lstm block (default: its preset's)
BATCH=${BATCH:-64}             # blocks per step
BLOCK=${BLOCK:-1024}           # tokens per block (the gpt preset's context)
BENCH_STEPS=${BENCH_STEPS:-15}
PY=${PY:-python}
NPROC=${NPROC:-$(nproc)}       # processes that tokenise the carried text (FIM rewriting is Python)
WORK=$(mktemp -d)

# No install step: make this checkout importable as `kaffee` (the repo root is the package).
mkdir -p "$WORK/pkg" && ln -sfn "$PWD" "$WORK/pkg/kaffee"
export PYTHONPATH="$WORK/pkg${PYTHONPATH:+:$PYTHONPATH}" TOKENIZERS_PARALLELISM=true
mkdir -p "$WORK/res"

# Whatever happens below, send back what exists (logs, finished models) on exit.
pack() {
  $PY - "$WORK" <<'PYEOF' || true
import sys, torch
from pathlib import Path
from kaffee.models import checkpoint
work = Path(sys.argv[1])
# gpt as int8 with a scale per row (what the CPU decoder computes with; half the bytes of fp16,
# docs/architectures.md "Size of the next default model"); the lstm baseline as fp16
for name, dtype in (("gpt", "int8"), ("lstm", torch.float16)):
    try:
        m = checkpoint.load_model(work / name)
        checkpoint.save_model_dir(work / "res" / name, m, m.tokenizer, (work / name / "card.md").read_text(),
                                  extra={k: v for k, v in m.meta.items() if k not in ("family", "config")}, dtype=dtype)
        (work / "res" / name / "metrics.jsonl").write_text((work / name / "metrics.jsonl").read_text())
    except Exception as exc:
        print(f"{name}: not packed ({exc})")
PYEOF
  tar -C "$WORK/res" -cf - . | split -b 15M - "$OUT/results.tar.part-"
}
trap pack EXIT
$PY -c "import torch; print(torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name(0))" | tee "$WORK/res/env.txt"

# 1. throughput of gpt base (tokens/s, MFU)
# If torch.compile fails on this image, measure (and train) without it rather than lose the run.
COMPILE_FLAG=""
[ -z "${NO_COMPILE:-}" ] || COMPILE_FLAG="--no-compile"
if [ -n "${TPS:-}" ]; then
  echo "benchmark skipped: TPS=$TPS given" > "$WORK/res/throughput.txt"
elif ! $PY bench/train_throughput.py --family gpt --preset "$PRESET" --batch-size "$BATCH" --steps "$BENCH_STEPS" --warmup 3 \
     $COMPILE_FLAG > "$WORK/res/throughput.txt" 2> "$WORK/res/throughput.err"; then
  tail -5 "$WORK/res/throughput.err"; COMPILE_FLAG="--no-compile"
  $PY bench/train_throughput.py --family gpt --preset "$PRESET" --batch-size "$BATCH" --steps "$BENCH_STEPS" --warmup 2 \
    --no-compile > "$WORK/res/throughput.txt"
fi
cat "$WORK/res/throughput.txt"
[ -n "${TPS:-}" ] || TPS=$(grep '^{' "$WORK/res/throughput.txt" | tail -1 | $PY -c "import json,sys; print(json.loads(sys.stdin.read())['tokens_per_s'])")

# 2. tokenise the training text once, into the cache both runs read (FIM rewriting: $NPROC processes)
TRAIN_DATA=(--corpus "$CARRY/train.jsonl.xz" --tokenizer "$CARRY/tokenizer.json" --fim-rate 0.5 --line-fim-share 0.5
            --num-proc "$NPROC" --data-cache "$WORK/cache")
$PY -m kaffee train --family gpt --preset "$PRESET" "${TRAIN_DATA[@]}" --out "$WORK/gpt" --tokenize-only \
  2>"$WORK/res/tokenize.log" | tee "$WORK/res/tokenize.json"
# the minutes left: the gpt gets what the lstm and the reserve do not need, up to GPT_MIN
# (at least half a minute, less when even that would pass the call's hard limit HARD_S)
GPT_MIN=$($PY -c "floor = max(0.1, min(0.5, ($HARD_S - $SECONDS - $RESERVE_S) / 60)); print(round(min($GPT_MIN, max(floor, ($JOB_S - $SECONDS - $RESERVE_S - 60 * $LSTM_MIN) / 60)), 2))")
echo "after ${SECONDS}s of $JOB_S: gpt gets $GPT_MIN min" | tee -a "$WORK/res/env.txt"

# 3. gpt: size the cosine schedule to the time budget at the measured speed (90 %: eval, saving)
STEPS=$($PY -c "print(max(20, int($TPS * $GPT_MIN * 60 * 0.9 / ($BATCH * $BLOCK))))")
WARMUP=$($PY -c "print(min(100, max(1, $STEPS // 10)))")
echo "gpt: $STEPS steps at $TPS tokens/s" | tee -a "$WORK/res/env.txt"
$PY -m kaffee train --family gpt --preset "$PRESET" "${TRAIN_DATA[@]}" \
  --out "$WORK/gpt" --max-steps "$STEPS" --max-minutes "$GPT_MIN" --batch-size "$BATCH" --block-size "$BLOCK" --lr 1.5e-3 \
  --warmup-steps "$WARMUP" --eval-interval 250 --save-interval 100000 $COMPILE_FLAG 2>"$WORK/res/gpt.log" | tee "$WORK/res/gpt.json"

# 4. lstm baseline on the same token stream (repository layout, line-level FIM; read from the shared cache)
# (cut to the time left; skipped when that is under 0.2 minutes and less than asked)
LEFT_MIN=$($PY -c "print(round(($JOB_S - $SECONDS - $RESERVE_S / 2) / 60, 2))")
LSTM_MIN=$($PY -c "m = min($LSTM_MIN, $LEFT_MIN); print(round(m, 2) if m > 0 and m >= min($LSTM_MIN, 0.2) else 'skip')")
if [ "$LSTM_MIN" != "skip" ]; then
  $PY -m kaffee train --family lstm --preset "$LSTM_PRESET" "${TRAIN_DATA[@]}" \
    --out "$WORK/lstm" --max-steps 100000 --max-minutes "$LSTM_MIN" --batch-size "$BATCH" ${LSTM_BLOCK:+--block-size "$LSTM_BLOCK"} --lr 2e-3 \
    --warmup-steps "$WARMUP" --eval-interval 250 --save-interval 100000 --no-compile 2>"$WORK/res/lstm.log" | tee "$WORK/res/lstm.json"
else
  echo "lstm skipped: $LEFT_MIN min left after ${SECONDS}s" | tee -a "$WORK/res/env.txt"
fi

# 5. ship weights (gpt int8, lstm fp16) without the optimizer state, in parts below 16 MiB
echo "job done; packing results"
