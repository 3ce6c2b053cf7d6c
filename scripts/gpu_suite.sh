#!/usr/bin/env bash
# The GPU suite: every CUDA test, the CUDA benches and the throughput
# command, built on a machine with Rust (no GPU needed) and run on a machine
# with an NVIDIA GPU (no Rust needed).
#
#   scripts/gpu_suite.sh pack     # here: builds stripped binaries into gpu-bin/
#   scripts/gpu_suite.sh run      # on the GPU machine, from the repository root
#
# `run` writes tests.log, bench_cuda.txt, bench_train.txt and pytorch.json to
# $OUT (default gpu-out/). It sets NOISEGRAD_REQUIRE_GPU=1, so a test that
# cannot find the GPU fails instead of skipping. With the `device` tool:
#   run(command="bash scripts/gpu_suite.sh run", carry=["gpu-bin", ".device/reference"])
# (.device/reference: a copy of ../shared/reference for the PyTorch anchors.)
# A dry run without a GPU: NOISEGRAD_CUDA_EMULATOR=1 scripts/gpu_suite.sh run
# runs the same test binaries on the CUDA emulator (no PyTorch, no benches;
# the variable only tells this script: the tests' gpu_or_skip picks the
# emulator when there is no GPU, and the release binary has no emulator).
set -euo pipefail
cd "$(dirname "$0")/.."

pack() {
  rm -rf gpu-bin && mkdir -p gpu-bin/tests gpu-bin/benches
  # Test binaries whose name says CUDA/NVRTC: all the GPU tests.
  cargo test --workspace --no-run --message-format=json 2>/dev/null |
    python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    exe = m.get("executable")
    name = m.get("target", {}).get("name", "")
    if exe and m.get("profile", {}).get("test") and (name.startswith("cuda") or name == "nvrtc_compile"):
        print(exe)' | while read -r exe; do
      cp "$exe" gpu-bin/tests/
    done
  cargo bench --bench cuda --no-run --message-format=json 2>/dev/null |
    python3 -c '
import json, sys
for line in sys.stdin:
    exe = json.loads(line).get("executable")
    if exe: print(exe)' | while read -r exe; do cp "$exe" gpu-bin/benches/cuda; done
  cargo build --release --bin noisegrad
  cp target/release/noisegrad gpu-bin/
  strip gpu-bin/noisegrad gpu-bin/tests/* gpu-bin/benches/*
  du -sh gpu-bin
  ls gpu-bin/tests
}

# Puts the folders holding libnvrtc and libcublas on LD_LIBRARY_PATH
# (a CUDA toolkit, or the nvidia-* wheels that come with PyTorch).
find_cuda_libs() {
  local dirs=""
  for lib in libnvrtc.so libcublas.so; do
    local hit
    hit=$( (ls /usr/local/cuda/lib64/$lib* 2>/dev/null; find / -xdev -name "$lib*" -path '*lib*' 2>/dev/null) | head -1)
    [ -n "$hit" ] && dirs="$dirs:$(dirname "$hit")"
  done
  export LD_LIBRARY_PATH="${dirs#:}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
}

run() {
  local out="${OUT:-gpu-out}"
  mkdir -p "$out"
  local emulated=0
  [ "${NOISEGRAD_CUDA_EMULATOR:-}" = 1 ] && emulated=1
  if [ $emulated = 0 ]; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
    find_cuda_libs
    export NOISEGRAD_REQUIRE_GPU=1 NOISEGRAD_REQUIRE_NVRTC=1
  fi
  local failed=0
  for t in gpu-bin/tests/*; do
    echo "== $t" | tee -a "$out/tests.log"
    "$t" --test-threads=1 2>&1 | tee -a "$out/tests.log" || failed=1
  done
  if [ $emulated = 1 ]; then
    return $failed
  fi
  for preset in "cifar10 --batch-size 128" "cifar10 --batch-size 128 --tf32"; do
    # shellcheck disable=SC2086
    gpu-bin/noisegrad bench-train --device cuda --preset $preset --steps 20 2>&1 | tee -a "$out/bench_train.txt"
  done
  gpu-bin/benches/cuda --bench 2>&1 | tee "$out/bench_cuda.txt"
  python3 scripts/bench_cuda_pytorch.py > "$out/pytorch.json" || echo "PyTorch kernel timings failed"
  if [ -f .device/reference/pytorch_anchors.py ]; then
    (cd .device/reference && OUT="$OLDPWD/$out" python3 pytorch_anchors.py) | tee "$out/anchors.txt"
  fi
  return $failed
}

case "${1:-}" in
  pack) pack ;;
  run) run ;;
  *) echo "usage: $0 pack|run" >&2; exit 2 ;;
esac
