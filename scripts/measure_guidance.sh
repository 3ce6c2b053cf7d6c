#!/usr/bin/env bash
# Class consistency of guided samples (README "Conditional diffusion and guidance").
# Needs: a class-conditional Fashion-MNIST checkpoint ($CK), a clean classifier ($CLEAN)
# and a noise-aware one ($NOISY), e.g.
#   noisegrad train --steps 2000 --out runs/meas/fm
#   noisegrad train-classifier --clean --ch 32 --steps 1500 --out runs/meas/clean32.safetensors
#   noisegrad train-classifier --ch 32 --steps 1500 --out runs/meas/noisy32.safetensors
set -euo pipefail
BIN=${BIN:-target/release/noisegrad}
CK=${CK:-runs/meas/fm/checkpoint.safetensors}
CLEAN=${CLEAN:-runs/meas/clean32.safetensors}
NOISY=${NOISY:-runs/meas/noisy32.safetensors}
OUT=${OUT:-docs/guidance}
N=${N:-100}
mkdir -p "$OUT"
for w in 0 1 3; do
  $BIN sample --checkpoint "$CK" --class all --n "$N" --guidance "$w" --steps 50 --out "$OUT/cfg_w$w.png" | tail -1
  echo "CFG w=$w: $($BIN score --samples "$OUT/cfg_w$w.png" --classifier "$CLEAN" | tail -1)"
done
for s in 0 1 10; do
  $BIN sample --checkpoint "$CK" --uncond --class all --n "$N" --classifier "$NOISY" --classifier-scale "$s" --steps 50 --out "$OUT/clf_s$s.png" | tail -1
  echo "classifier s=$s: $($BIN score --samples "$OUT/clf_s$s.png" --classifier "$CLEAN" | tail -1)"
done
