#!/usr/bin/env bash
# The GPU suite: one run that verifies and measures the CUDA device, built
# where Rust is (no GPU needed) and run where the GPU is (no Rust needed).
# docs/gpu-run.md is the manual: the steps, the time limit, what each
# outcome means and how summary.json becomes BENCHMARKS.md's CUDA table.
#
#   scripts/gpu_suite.sh pack            # here: stripped binaries + ref_unet.py into gpu-bin/ (<= 64 MiB)
#   scripts/gpu_suite.sh run             # on the GPU machine, from the repository root
#   scripts/gpu_suite.sh run --dry-run   # without a GPU: the same stages; CUDA tests on the emulator
#
# `run` takes at most GPU_SUITE_LIMIT_S seconds (default 410, under 7 minutes),
# in stages, each under its own `timeout`, verdicts first (GPU_SUITE_STAGES=
# tests,nccl,bench-train,pytorch-train,kernels picks some; discovery always runs):
#   1 gpu.txt                 nvidia-smi, where libcuda/libnvrtc/libcublas are, PyTorch
#   2 tests.log               every CUDA test binary, NOISEGRAD_REQUIRE_GPU=1
#   3 nccl.txt                NCCL smoke test: a one-process `train --device cuda
#                             --dist-backend nccl` against the same run without NCCL
#   4 bench_train.txt         noisegrad bench-train, cifar10, batch 128, fp32 and --tf32
#   5 pytorch_train.txt       the same step in PyTorch: eager fp32, eager TF32, compiled bf16
#   6 bench_cuda_pytorch.txt  per-kernel timings, PyTorch; then bench_cuda.txt, noisegrad's
#   7 summary.json            everything above in one file (scripts/gpu_summary.py)
# plus stages.txt (each stage's status and seconds): 9 files in $OUT
# (default gpu-out/), each written as its stage goes, so a stage that hangs
# leaves the earlier verdicts. Exit status 0 only when every stage that ran
# succeeded and every test passed.
set -uo pipefail
cd "$(dirname "$0")/.."

# The device tool carries at most this much (working tree + carried paths).
CARRY_LIMIT=$((64 * 1024 * 1024))

die() {
  echo "gpu_suite: $*" >&2
  exit 1
}

# Copies the test executables named by cargo's JSON messages on stdin into
# gpu-bin/tests/<target name>: the CUDA test binaries, and the NVRTC one.
copy_test_binaries() {
  python3 -c '
import json, shutil, sys
n = 0
for line in sys.stdin:
    if not line.startswith("{"):
        continue
    m = json.loads(line)
    exe, name = m.get("executable"), m.get("target", {}).get("name", "")
    if exe and m.get("profile", {}).get("test") and (name.startswith("cuda") or name == "nvrtc_compile"):
        shutil.copy(exe, "gpu-bin/tests/" + name)
        n += 1
if n == 0:
    sys.exit("gpu_suite: cargo built no CUDA test binary")
print(f"{n} test binaries")'
}

# Bytes that travel with a device call besides gpu-bin/: tracked files and
# untracked files git does not ignore.
working_tree_bytes() {
  { git ls-files -z; git ls-files -z -o --exclude-standard; } |
    python3 -c '
import os, sys
names = [n for n in sys.stdin.buffer.read().split(b"\0") if n]
print(sum(os.path.getsize(n) for n in names if os.path.isfile(n)))'
}

pack() {
  local ref="${NOISEGRAD_REFERENCE:-}"
  if [ -z "$ref" ]; then
    for d in ../shared/reference /work/shared/reference; do
      [ -f "$d/ref_unet.py" ] && ref="$d" && break
    done
  fi
  [ -n "$ref" ] && [ -f "$ref/ref_unet.py" ] ||
    die "pack: ref_unet.py not found (looked in ../shared/reference, /work/shared/reference); set NOISEGRAD_REFERENCE to its folder"
  rm -rf gpu-bin && mkdir -p gpu-bin/tests gpu-bin/benches gpu-bin/reference || die "pack: cannot make gpu-bin/"
  # `nccl`: the NCCL communicator and its test (libnccl is loaded at run time).
  cargo test --workspace --no-run --features nccl --message-format=json | copy_test_binaries ||
    die "pack: building the test binaries failed"
  cargo bench --bench cuda --no-run --message-format=json |
    python3 -c '
import json, sys
for m in map(json.loads, filter(lambda l: l.startswith("{"), sys.stdin)):
    if m.get("executable") and "bench" in m.get("target", {}).get("kind", []):
        print(m["executable"])' |
    { read -r exe && [ -n "$exe" ] && cp "$exe" gpu-bin/benches/cuda; } || die "pack: building benches/cuda.rs failed"
  cargo build --release --bin noisegrad --features nccl || die "pack: building the noisegrad CLI failed"
  cp target/release/noisegrad gpu-bin/ || die "pack: no target/release/noisegrad"
  cp "$ref/ref_unet.py" gpu-bin/reference/ || die "pack: cannot copy ref_unet.py"
  strip gpu-bin/noisegrad gpu-bin/tests/* gpu-bin/benches/* || die "pack: strip failed"
  {
    echo "commit $(git rev-parse HEAD)$(git diff --quiet HEAD || echo ' (with uncommitted changes)')"
    echo "packed $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -m), $(rustc --version)"
  } > gpu-bin/MANIFEST.txt
  local bin tree total
  bin=$(du -sb gpu-bin | cut -f1)
  tree=$(working_tree_bytes)
  total=$((bin + tree))
  ls -l gpu-bin gpu-bin/tests gpu-bin/benches
  awk -v b="$bin" -v t="$tree" -v l="$CARRY_LIMIT" 'BEGIN {
    m = 1048576
    printf "gpu-bin: %.1f MiB; with the working tree that travels (%.1f MiB): %.1f MiB of the %d MiB a device call carries\n", b / m, t / m, (b + t) / m, l / m
  }'
  [ "$total" -le "$CARRY_LIMIT" ] ||
    die "pack: TOO LARGE: $total bytes > $CARRY_LIMIT; the device tool would refuse the call (see docs/gpu-run.md, 'pack too large')"
}

# ---------------------------------------------------------------- run ---

OUTDIR=""
LIMIT=410
# Seconds kept back at the end for summary.json.
RESERVE=10
FAILED=0

# The seconds a stage may take: its cap, or what is left of the suite's
# limit (less the reserve), whichever is smaller; 0 when nothing is left.
budget() {
  local left=$((LIMIT - RESERVE - SECONDS))
  local b=$1
  [ "$left" -lt "$b" ] && b=$left
  [ "$b" -lt 0 ] && b=0
  echo "$b"
}

# note STAGE STATUS SECS TEXT: one line in stages.txt and on stdout.
note() {
  printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >> "$OUTDIR/stages.txt"
  printf '[%3ss] stage %-20s %-8s %s\n' "$SECONDS" "$1" "$2" "$4"
  case "$2" in ok | skipped) ;; *) FAILED=1 ;; esac
}

# timed SECS FILE CMD...: runs CMD under `timeout SECS`, output appended to
# FILE; sets RC (124 or 137 on timeout) and TOOK (seconds).
timed() {
  local secs=$1 file=$2
  shift 2
  local t0=$SECONDS
  if [ "$secs" -le 0 ]; then
    echo "not run: the suite's $LIMIT s are used up" >> "$file"
    RC=124 TOOK=0
    return
  fi
  timeout -k 5 "$secs" "$@" >> "$file" 2>&1
  RC=$?
  TOOK=$((SECONDS - t0))
}

status_of() {
  case "$1" in
    0) echo ok ;;
    124 | 137) echo timeout ;;
    *) echo failed ;;
  esac
}

# Whether stage $1 is to run: GPU_SUITE_STAGES (comma-separated, e.g.
# "tests,kernels") picks some for a second, shorter run; default all.
wanted() {
  [ -z "${GPU_SUITE_STAGES:-}" ] || [[ ",$GPU_SUITE_STAGES," == *",$1,"* ]]
}

has_torch() {
  timeout 120 python3 -c 'import torch' > /dev/null 2>&1
}

stage_discover() {
  local f="$OUTDIR/gpu.txt" t0=$SECONDS
  {
    echo "== suite: $(cat gpu-bin/MANIFEST.txt 2>/dev/null | tr '\n' ';') mode=$MODE limit=${LIMIT}s"
    echo "== nvidia-smi"
  } >> "$f"
  timed 20 "$f" nvidia-smi
  local q
  q=$(timeout 20 nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader 2>/dev/null | head -1)
  echo "query: $q" >> "$f"
  HAVE_GPU=0
  [ -n "$q" ] && HAVE_GPU=1
  echo "== libraries" >> "$f"
  timed 60 "$f" python3 scripts/gpu_find_libs.py
  local libs_rc=$RC
  local ld
  ld=$(grep '^LD_LIBRARY_PATH=' "$f" | tail -1 | cut -d= -f2-)
  [ -n "$ld" ] && export LD_LIBRARY_PATH="$ld"
  echo "== libnccl" >> "$f"
  find_nccl >> "$f" 2>&1
  echo "== torch" >> "$f"
  timed 60 "$f" python3 -c '
import json, torch
ok = torch.cuda.is_available()
print("torch: " + json.dumps({"version": torch.__version__, "cuda": torch.version.cuda, "cuda_available": ok,
      "device": torch.cuda.get_device_name(0) if ok else None}))'
  local why="GPU: ${q:-none found}; libraries: $([ $libs_rc = 0 ] && echo all load || echo SOME MISSING, see gpu.txt)"
  if [ "$MODE" = gpu ] && { [ $HAVE_GPU = 0 ] || [ $libs_rc != 0 ]; }; then
    note discover failed $((SECONDS - t0)) "$why"
  else
    note discover ok $((SECONDS - t0)) "$why"
  fi
}

# cudarc dlopens `libnccl.so` (and CUDA-versioned names), never
# `libnccl.so.2`, the one name the nvidia-nccl pip wheels and most packages
# ship: a folder holding a libnccl.so link to it goes on LD_LIBRARY_PATH.
# Sets NCCL_LIB (empty when none was found) and, when found,
# NOISEGRAD_REQUIRE_NCCL=1 so that the NCCL test fails instead of skipping.
find_nccl() {
  NCCL_LIB=$(timeout 30 python3 -c '
import glob, importlib.util, os, subprocess
dirs = [d for d in os.environ.get("LD_LIBRARY_PATH", "").split(":") if d]
try:
    out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, timeout=10).stdout
    dirs += [os.path.dirname(l.split("=>")[-1].strip()) for l in out.splitlines() if "libnccl" in l]
except Exception:
    pass
spec = importlib.util.find_spec("nvidia")
for root in (list(spec.submodule_search_locations or []) if spec else []):
    dirs += glob.glob(os.path.join(root, "nccl", "lib")) + glob.glob(os.path.join(root, "*", "lib"))
dirs += ["/usr/lib/x86_64-linux-gnu", "/usr/local/cuda/lib64"] + glob.glob("/usr/local/cuda-*/lib64")
for d in dirs:
    for name in ("libnccl.so", "libnccl.so.2"):
        if os.path.exists(os.path.join(d, name)):
            print(os.path.realpath(os.path.join(d, name)))
            raise SystemExit
' 2>/dev/null)
  if [ -z "$NCCL_LIB" ]; then
    echo "libnccl: not found (the NCCL test skips, the nccl stage fails)"
    return
  fi
  local dir="${TMPDIR:-/tmp}/noisegrad-nccl-lib"
  mkdir -p "$dir" && ln -sf "$NCCL_LIB" "$dir/libnccl.so"
  export LD_LIBRARY_PATH="$dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" NOISEGRAD_REQUIRE_NCCL=1
  echo "libnccl: $NCCL_LIB (linked as $dir/libnccl.so, on LD_LIBRARY_PATH)"
}

stage_tests() {
  local f="$OUTDIR/tests.log" t0=$SECONDS
  local cap=${GPU_SUITE_TESTS_S:-120} per=${GPU_SUITE_TEST_BINARY_S:-60}
  # The emulator runs the GPU's work on this machine's CPU: far slower.
  [ "$MODE" = dry-run ] && cap=${GPU_SUITE_TESTS_S:-480} per=${GPU_SUITE_TEST_BINARY_S:-240}
  if [ "$MODE" = gpu ]; then
    export NOISEGRAD_REQUIRE_GPU=1 NOISEGRAD_REQUIRE_NVRTC=1
  else
    # The test binaries choose the emulator themselves when there is no GPU;
    # this makes a missing emulator a failure instead of a skip.
    export NOISEGRAD_REQUIRE_EMULATOR=1
  fi
  local bins=() failed=0 t
  [ -x gpu-bin/tests/nvrtc_compile ] && bins+=(gpu-bin/tests/nvrtc_compile)
  for t in gpu-bin/tests/*; do
    [ "$t" != gpu-bin/tests/nvrtc_compile ] && [ -x "$t" ] && bins+=("$t")
  done
  [ ${#bins[@]} = 0 ] && {
    note tests failed 0 "no test binaries in gpu-bin/tests (run pack first)"
    return
  }
  for t in "${bins[@]}"; do
    local b left=$((cap - (SECONDS - t0)))
    b=$(budget "$per")
    [ "$left" -lt "$b" ] && b=$left
    echo "== BINARY $(basename "$t")" >> "$f"
    # GPU_SUITE_TEST_ARGS: extra libtest arguments, e.g. one test's name.
    # shellcheck disable=SC2086
    timed "$b" "$f" "$t" --test-threads=1 ${GPU_SUITE_TEST_ARGS:-}
    # (A newline first: a test killed mid-line leaves "test name ... " open.)
    printf '\n== END %s rc=%s secs=%s limit=%s\n' "$(basename "$t")" "$RC" "$TOOK" "$b" >> "$f"
    [ "$RC" != 0 ] && failed=$((failed + 1))
  done
  local counts
  counts=$(grep -h '^test result:' "$f" | awk '{p += $4; x += $6} END {printf "%d passed, %d failed", p, x}')
  if [ $failed = 0 ]; then
    note tests ok $((SECONDS - t0)) "$counts in ${#bins[@]} binaries"
  else
    note tests failed $((SECONDS - t0)) "$counts; $failed of ${#bins[@]} binaries failed or timed out (tests.log)"
  fi
}

stage_bench_train() {
  local f="$OUTDIR/bench_train.txt" t0=$SECONDS
  if [ $HAVE_GPU = 0 ]; then
    echo "skipped: no GPU" >> "$f"
    # Not a measurement: checks that the packed CLI runs and that its output
    # still has the form gpu_summary.py reads.
    echo "== FORMAT CHECK (CPU, tiny preset; not a measurement)" >> "$f"
    timed "$(budget 120)" "$f" gpu-bin/noisegrad bench-train --device cpu --preset tiny --batch-size 4 --steps 2 --warmup 1
    echo "== END format-check rc=$RC secs=$TOOK" >> "$f"
    note bench-train skipped $((SECONDS - t0)) "no GPU (format check on the CPU: $(status_of $RC))"
    return
  fi
  local steps=20 rc_all=0 mode
  for mode in fp32 tf32; do
    local flag=""
    [ $mode = tf32 ] && flag=--tf32
    echo "== MODE $mode steps=$steps" >> "$f"
    # shellcheck disable=SC2086
    timed "$(budget 50)" "$f" gpu-bin/noisegrad bench-train --device cuda --preset cifar10 --batch-size 128 --steps $steps $flag
    printf '\n== END %s rc=%s secs=%s\n' "$mode" "$RC" "$TOOK" >> "$f"
    [ "$RC" != 0 ] && rc_all=$RC
    # 20 steps did not fit: a few steps still give TF32 a number.
    [ "$RC" = 124 ] || [ "$RC" = 137 ] && steps=4
  done
  note bench-train "$(status_of $rc_all)" $((SECONDS - t0)) "$(grep -h 'img/s' "$f" | sed 's/ over.*//' | tr '\n' ';')"
}

stage_pytorch_train() {
  local f="$OUTDIR/pytorch_train.txt" t0=$SECONDS
  if [ $HAVE_GPU = 0 ]; then
    echo "skipped: no GPU" >> "$f"
    if has_torch; then
      echo "== SCRIPT CHECK (CPU, tiny U-Net; not a measurement)" >> "$f"
      timed "$(budget 120)" "$f" python3 scripts/bench_train_step_pytorch_cuda.py --ref gpu-bin/reference \
        --device cpu --small --batch-size 2 --steps 1 --warmup 1 --deadline 0
      echo "== END script-check rc=$RC secs=$TOOK" >> "$f"
      note pytorch-train skipped $((SECONDS - t0)) "no GPU (script check on the CPU: $(status_of $RC))"
    else
      note pytorch-train skipped $((SECONDS - t0)) "no GPU (and no torch here for a script check)"
    fi
    return
  fi
  local b
  b=$(budget 80)
  timed "$b" "$f" env PYTHONUNBUFFERED=1 python3 scripts/bench_train_step_pytorch_cuda.py --ref gpu-bin/reference \
    --deadline $((b - 5))
  printf '\n== END rc=%s secs=%s limit=%s\n' "$RC" "$TOOK" "$b" >> "$f"
  local st
  st=$(status_of $RC)
  # Killed during torch.compile, after the eager modes were written: the
  # eager numbers stand, and summary.json says compile did not finish.
  [ "$st" = timeout ] && grep -q '"mode": "eager_tf32", "img_s"' "$f" && st=ok
  note pytorch-train "$st" $((SECONDS - t0)) "$(grep -o '"mode": "[a-z0-9_]*", "img_s": [0-9.]*' "$f" | tr -d '"' | tr '\n' ';')"
}

stage_kernels() {
  local fp="$OUTDIR/bench_cuda_pytorch.txt" fr="$OUTDIR/bench_cuda.txt" t0=$SECONDS
  local crit=(--warm-up-time 0.5 --measurement-time 1 --nresamples 2000 '^cuda/')
  export CRITERION_HOME="${TMPDIR:-/tmp}/noisegrad-criterion"
  if [ $HAVE_GPU = 0 ]; then
    echo "skipped: no GPU" | tee -a "$fp" >> "$fr"
    # Checks that the packed bench runs and takes the flags (it says it skipped).
    echo "== FORMAT CHECK (no GPU: the bench reports that it skipped)" >> "$fr"
    timed "$(budget 60)" "$fr" gpu-bin/benches/cuda --bench "${crit[@]}"
    local bench_rc=$RC
    local check="bench binary: $(status_of $bench_rc)"
    if has_torch; then
      echo "== SCRIPT CHECK (CPU, small shapes; not a measurement)" >> "$fp"
      timed "$(budget 120)" "$fp" python3 scripts/bench_cuda_pytorch.py --device cpu --batch 2 --matmul 64 --reps 2
      check="$check; PyTorch twin on the CPU: $(status_of $RC)"
    fi
    note kernels skipped $((SECONDS - t0)) "no GPU ($check)"
    return
  fi
  # PyTorch first: it is short and bounded; noisegrad's bench gets the rest.
  timed "$(budget 25)" "$fp" env PYTHONUNBUFFERED=1 python3 scripts/bench_cuda_pytorch.py
  local py_rc=$RC
  timed "$(budget 60)" "$fr" gpu-bin/benches/cuda --bench "${crit[@]}"
  local rs_rc=$RC
  local st=ok
  [ $py_rc != 0 ] || [ $rs_rc != 0 ] && st=$(status_of $((rs_rc != 0 ? rs_rc : py_rc)))
  note kernels "$st" $((SECONDS - t0)) "PyTorch: $(status_of $py_rc), noisegrad: $(status_of $rs_rc) ($(grep -c 'time:' "$fr") timings)"
}

# NCCL in a one-process world: every gradient all-reduce, the initial
# broadcast and the loss all-reduce go through NCCL on the GPU (a sum over
# one rank), so the losses must equal those of the same run on the plain
# one-process path. A smoke test of the library and of the device-pointer
# plumbing; several GPUs need `mpirun` and more than one GPU.
stage_nccl() {
  local f="$OUTDIR/nccl.txt" t0=$SECONDS
  if [ $HAVE_GPU = 0 ]; then
    echo "skipped: no GPU (the CUDA emulator cannot stand in for NCCL)" >> "$f"
    note nccl skipped 0 "no GPU (the CUDA emulator cannot stand in for NCCL)"
    return
  fi
  if [ -z "${NCCL_LIB:-}" ]; then
    echo "libnccl not found (see gpu.txt)" >> "$f"
    note nccl failed 0 "libnccl not found on the GPU machine (gpu.txt)"
    return
  fi
  local d="${TMPDIR:-/tmp}/noisegrad-nccl-runs" rc_all=0 run
  rm -rf "$d"
  local args=(train --device cuda --preset tiny --steps 6 --batch-size 8 --dropout 0 --warmup 2
    --ckpt-every 1000 --sample-steps 2)
  for run in single nccl; do
    local extra=()
    [ $run = nccl ] && extra=(--dist-backend nccl)
    echo "== RUN $run" >> "$f"
    timed "$(budget 60)" "$f" gpu-bin/noisegrad "${args[@]}" "${extra[@]}" --out "$d/$run"
    printf '\n== END %s rc=%s secs=%s\n' "$run" "$RC" "$TOOK" >> "$f"
    [ "$RC" != 0 ] && rc_all=$RC
  done
  if [ $rc_all != 0 ]; then
    note nccl "$(status_of $rc_all)" $((SECONDS - t0)) "a train run failed (nccl.txt)"
    return
  fi
  local verdict
  verdict=$(python3 - "$d/single/log.jsonl" "$d/nccl/log.jsonl" <<'PY'
import json, sys
a, b = ([json.loads(l) for l in open(p) if l.strip()] for p in sys.argv[1:3])
if len(a) != len(b) or not a:
    print(f"FAILED: {len(a)} vs {len(b)} logged steps"); sys.exit(1)
worst = max(abs(x["loss"] - y["loss"]) / max(abs(x["loss"]), 1e-12) for x, y in zip(a, b))
ms = [y.get("allreduce_ms") for y in b]
ok = worst <= 1e-4 and all(m is not None for m in ms)
print(f"{'ok' if ok else 'FAILED'}: {len(a)} steps, max relative loss difference {worst:.2e} (limit 1e-4); "
      f"NCCL all-reduce {sum(ms[1:]) / max(len(ms) - 1, 1):.2f} ms/step after the first (queueing time)")
sys.exit(0 if ok else 1)
PY
)
  local rc=$?
  echo "$verdict" >> "$f"
  note nccl "$([ $rc = 0 ] && echo ok || echo failed)" $((SECONDS - t0)) "$verdict"
}

run() {
  MODE=gpu
  [ "${1:-}" = --dry-run ] && MODE=dry-run
  # The old switch (before the emulator became test-only) means the same.
  [ "${NOISEGRAD_CUDA_EMULATOR:-}" = 1 ] && MODE=dry-run
  LIMIT=${GPU_SUITE_LIMIT_S:-410}
  [ "$MODE" = dry-run ] && LIMIT=${GPU_SUITE_LIMIT_S:-720}
  OUTDIR="${OUT:-gpu-out}"
  mkdir -p "$OUTDIR" || die "run: cannot make $OUTDIR"
  [ -x gpu-bin/noisegrad ] || die "run: gpu-bin/noisegrad missing: run '$0 pack' first and carry gpu-bin"
  rm -f "$OUTDIR"/{gpu.txt,tests.log,bench_train.txt,pytorch_train.txt,bench_cuda_pytorch.txt,bench_cuda.txt,nccl.txt,stages.txt,summary.json}
  printf 'stage\tstatus\tsecs\tnote\n' > "$OUTDIR/stages.txt"
  SECONDS=0
  echo "gpu_suite run ($MODE): at most $LIMIT s; results in $OUTDIR"
  HAVE_GPU=0
  stage_discover
  local stage
  for stage in tests nccl bench-train pytorch-train kernels; do
    if wanted "$stage"; then
      "stage_${stage//-/_}"
    else
      note "$stage" skipped 0 "not in GPU_SUITE_STAGES=$GPU_SUITE_STAGES"
    fi
  done
  timeout 30 python3 scripts/gpu_summary.py "$OUTDIR" "$MODE" || {
    echo "gpu_suite: summary.json could not be written; the stage files are in $OUTDIR"
    FAILED=1
  }
  echo "gpu_suite run ($MODE) finished in ${SECONDS} s: $([ $FAILED = 0 ] && echo 'all stages ok' || echo 'SOME STAGES FAILED (stages.txt)')"
  return $FAILED
}

case "${1:-}" in
  pack) pack ;;
  run)
    shift
    run "$@"
    ;;
  *)
    echo "usage: $0 pack | run [--dry-run]" >&2
    exit 2
    ;;
esac
