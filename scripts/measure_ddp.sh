#!/usr/bin/env bash
# Data-parallel scaling on this machine (BENCHMARKS.md "Data-parallel
# training"): one process against `mpirun -np 2`, each process on one thread,
# with the all-reduce after backward (the default) and overlapped with it
# (--overlap). Reports img/s over the steps after the first (which pays
# the allocator's warm-up) and the mean exposed all-reduce time per step from
# log.jsonl. Needs the `--features mpi` release binary; DATA (optional) is a
# cifar-10-batches-bin folder for the cifar10 preset.
set -euo pipefail
BIN=${BIN:-target/release/noisegrad}
OUT=${OUT:-runs/ddp-meas}
export RAYON_NUM_THREADS=1 OMPI_MCA_rmaps_base_oversubscribe=1
mkdir -p "$OUT"

# preset, data flag, global batch, steps
cases=("small||16|12")   # no --data: the embedded Fashion-MNIST sample
if [ -n "${DATA:-}" ]; then cases+=("cifar10|--data $DATA|8|6"); fi

summary() { # run folder, global batch
  python3 - "$1/log.jsonl" "$2" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
batch = int(sys.argv[2])
steady = rows[1:]
secs = rows[-1]["elapsed_s"] - rows[0]["elapsed_s"]
ar = [r.get("allreduce_ms", 0.0) for r in steady]
print(f"{len(steady) * batch / secs:.2f} img/s, all-reduce {sum(ar) / len(ar):.1f} ms/step exposed")
PY
}

for c in "${cases[@]}"; do
  IFS='|' read -r preset data batch steps <<<"$c"
  common=(train --preset "$preset" $data --steps "$steps" --batch-size "$batch"
          --sample-every 1000000 --sample-steps 1 --ckpt-every 1000000 --warmup 2)
  echo "== $preset, global batch $batch, $steps steps"
  rm -rf "$OUT/$preset-1" "$OUT/$preset-2" "$OUT/$preset-2-after"
  # Also under mpirun, so it is bound to a core like each rank (Open MPI
  # binds to cores for 2 ranks or fewer): an unbound process on 1 thread
  # measured 25% slower, which would flatter the scaling.
  mpirun -np 1 $BIN "${common[@]}" --out "$OUT/$preset-1" >/dev/null
  echo "1 process:                 $(summary "$OUT/$preset-1" "$batch")"
  mpirun -np 2 $BIN "${common[@]}" --out "$OUT/$preset-2-after" >/dev/null
  echo "2 processes, after backward: $(summary "$OUT/$preset-2-after" "$batch")"
  mpirun -np 2 $BIN "${common[@]}" --overlap --out "$OUT/$preset-2" >/dev/null
  echo "2 processes, overlapped:     $(summary "$OUT/$preset-2" "$batch")"
done
