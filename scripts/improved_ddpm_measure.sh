#!/bin/bash
# Issue #11 measurement: Fashion-MNIST, tiny U-Net, same steps/seed for all.
cd "$(dirname "$0")/.."
B=${B:-./target/release/noisegrad}
F=/usr/share/datasets/fashion-mnist
O=${O:-runs/improved-ddpm}
COMMON="--data $F --preset tiny --steps 200 --batch-size 16 --lr 1e-3 --warmup 20 --ema 0.99 --seed 0 --ckpt-every 200 --sample-steps 20"
run() { name=$1; shift; echo "== $name: $*"; nice -n 10 $B train $COMMON --out $O/$name "$@" 2>&1 | grep -v '^\s*$' | tail -2; }
run linear_simple --schedule linear
run cosine_simple --schedule cosine
run cosine_hybrid --schedule cosine --variance learned --loss hybrid
run cosine_vlb --schedule cosine --variance learned --loss vlb
run cosine_x0 --schedule cosine --predict x0
run cosine_v --schedule cosine --predict v
for name in linear_simple cosine_simple cosine_hybrid cosine_vlb cosine_x0 cosine_v; do
  echo "== eval $name"; tail -1 $O/$name/log.jsonl
  nice -n 10 $B eval --checkpoint $O/$name/checkpoint.safetensors --data $F --images 8 --batch-size 8 --timesteps 0 2>&1 | tail -1
done
for name in cosine_simple cosine_hybrid; do
  for k in 50 100; do
    echo "== respaced $name K=$k"
    nice -n 10 $B sample --checkpoint $O/$name/checkpoint.safetensors --sampler ddpm --steps $k --n 36 --seed 0 --out $O/${name}_ddpm$k.png 2>&1 | tail -1
    nice -n 10 $B eval --checkpoint $O/$name/checkpoint.safetensors --data $F --images 8 --batch-size 8 --timesteps 0 --respaced $k 2>&1 | tail -1
  done
done
echo "== interpolate"
nice -n 10 $B interpolate --checkpoint $O/cosine_hybrid/checkpoint.safetensors --data $F --a 0 --b 1 --t 500 --n 8 --ddim-steps 50 --out $O/interpolation.png 2>&1 | tail -1
echo "== corrector"
nice -n 10 $B sample --checkpoint $O/cosine_simple/checkpoint.safetensors --sampler ddpm --steps 50 --corrector-steps 1 --snr 0.16 --n 36 --seed 0 --out $O/cosine_simple_ddpm50_pc.png 2>&1 | tail -1
echo DONE
