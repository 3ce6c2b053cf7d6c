#!/usr/bin/env bash
# Latent vs pixel diffusion on the same U-Net preset (README "Latent diffusion",
# BENCHMARKS.md "Latent vs pixel diffusion"). Both diffusion runs train AT THE
# SAME TIME, one thread each, for the same wall-clock budget, so a changing
# machine load falls on both alike; then both sample 64 images (DDIM, 100 steps)
# at the same time. Needs the CIFAR-10 folder in $DATA (official binary files).
set -euo pipefail
BIN=${BIN:-target/release/noisegrad}
DATA=${DATA:?set DATA to a cifar-10-batches-bin folder}
OUT=${OUT:-runs/latent-meas}
PRESET=${PRESET:-tiny}
AE_STEPS=${AE_STEPS:-2000}
BUDGET=${BUDGET:-900}   # seconds of training for each of pixel and latent
export RAYON_NUM_THREADS=1
mkdir -p "$OUT"
echo "== autoencoder ($AE_STEPS steps, f=4, C_z=4)"
$BIN train-autoencoder --data "$DATA" --steps "$AE_STEPS" --test-images 1017 --out "$OUT/ae" 2>&1 | tail -4
echo "== pixel and latent DDPM ($PRESET), ${BUDGET}s each, concurrently, 1 thread each"
common=(--data "$DATA" --preset "$PRESET" --steps 1000000 --ckpt-every 1000000 --lr 1e-3 --warmup 100 --batch-size 16)
timeout -s INT "$BUDGET" $BIN train "${common[@]}" --out "$OUT/pixel" > "$OUT/pixel.txt" 2>&1 &
p1=$!
timeout -s INT "$BUDGET" $BIN train "${common[@]}" --latent "$OUT/ae/checkpoint.safetensors" --out "$OUT/latent" > "$OUT/latent.txt" 2>&1 &
p2=$!
wait $p1 || true; wait $p2 || true
for r in pixel latent; do
  steps=$(tail -1 "$OUT/$r/log.jsonl" | sed 's/.*"step":\([0-9]*\).*/\1/')
  echo "$r: $steps steps in ${BUDGET}s = $(python3 -c "print(f'{$steps*16/$BUDGET:.2f}')") img/s"
done
echo "== sampling 64 images, DDIM 100 steps, concurrently, 1 thread each"
for r in pixel latent; do
  ( s=$(date +%s.%N); $BIN sample --checkpoint "$OUT/$r/checkpoint.safetensors" --sampler ddim --steps 100 --n 64 --out "$OUT/$r-samples.png" > "$OUT/$r-sample.txt" 2>&1;
    e=$(date +%s.%N); python3 -c "print(f'$r: {($e-$s)/64*1000:.1f} ms/image (sampling incl. decode)')" ) &
done
wait
