#!/usr/bin/env bash
# Class consistency of guided samples on CIFAR-10 (README "Conditional diffusion
# and guidance", the CIFAR-10 table): trains a class-conditional `tiny` DDPM for
# a wall-clock budget, a clean classifier (for `score`) and a noise-aware one
# (for classifier guidance), then runs scripts/measure_guidance.sh on them.
# Needs the official CIFAR-10 binary folder in $DATA.
set -euo pipefail
BIN=${BIN:-target/release/noisegrad}
DATA=${DATA:?set DATA to a cifar-10-batches-bin folder}
OUT=${OUT:-runs/guidance-cifar}
BUDGET=${BUDGET:-2400}          # seconds of diffusion training
CLF_STEPS=${CLF_STEPS:-1500}
mkdir -p "$OUT"
echo "== class-conditional tiny DDPM, ${BUDGET}s"
timeout -s INT "$BUDGET" $BIN train --data "$DATA" --class-cond --preset tiny --steps 1000000 \
  --ckpt-every 1000000 --lr 5e-4 --warmup 200 --batch-size 16 --out "$OUT/ddpm" > "$OUT/train.txt" 2>&1 || true
tail -1 "$OUT/ddpm/log.jsonl"
echo "== clean classifier (t = 0), $CLF_STEPS steps"
$BIN train-classifier --data "$DATA" --clean --ch 32 --steps "$CLF_STEPS" --out "$OUT/clean32.safetensors" 2>&1 | tail -2
echo "== noise-aware classifier, $CLF_STEPS steps"
$BIN train-classifier --data "$DATA" --ch 32 --steps "$CLF_STEPS" --out "$OUT/noisy32.safetensors" 2>&1 | tail -12
CK="$OUT/ddpm/checkpoint.safetensors" CLEAN="$OUT/clean32.safetensors" NOISY="$OUT/noisy32.safetensors" \
  OUT="${GRIDS:-docs/guidance-cifar}" BIN="$BIN" bash "$(dirname "$0")/measure_guidance.sh"
