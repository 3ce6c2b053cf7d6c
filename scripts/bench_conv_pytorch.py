"""Times PyTorch CPU conv2d (forward, and backward for input+weight+bias) at
the U-Net's shapes, batch 8, and compares with noisegrad's criterion results.

    cargo bench --bench conv            # writes target/criterion/conv/...
    PYTHONPATH=/opt/pt/site python3 scripts/bench_conv_pytorch.py

Both sides use 2 threads. Each PyTorch number is the median of `--reps`
timed calls after warm-up; noisegrad's number is criterion's median
(`target/criterion/conv/<case>/<pass>/new/estimates.json`). The ratio is
PyTorch time / noisegrad time, so ratio >= 1 means noisegrad is at least as
fast. Run both back to back on a quiet machine: timings on a shared box are
noisy.

On a busy machine, `--cpu-time` instead times PyTorch on one thread in
process CPU time (min of reps), to compare with
`RAYON_NUM_THREADS=1 cargo run --release --example conv_cpu_time`.
"""

import argparse
import json
import os
import statistics
import time

import torch

# name, N, C, H, W, O, k, stride, pad — must match benches/conv.rs.
CASES = [
    ("3x3s1_32x32x128", 8, 128, 32, 32, 128, 3, 1, 1),
    ("3x3s1_16x16x256", 8, 256, 16, 16, 256, 3, 1, 1),
    ("3x3s1_8x8x256", 8, 256, 8, 8, 256, 3, 1, 1),
    ("3x3s1_4x4x256", 8, 256, 4, 4, 256, 3, 1, 1),
    ("3x3s2_32x32x128", 8, 128, 32, 32, 128, 3, 2, 1),
    ("1x1_16x16_128to256", 8, 128, 16, 16, 256, 1, 1, 0),
]


def median_seconds(fn, reps, warmup=3, clock=time.perf_counter, pick=statistics.median):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = clock()
        fn()
        times.append(clock() - t0)
    return pick(times)


def torch_times(case, reps, cpu_time=False):
    _, n, c, h, w, o, k, s, p = case
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, c, h, w, generator=g)
    wt = torch.randn(o, c, k, k, generator=g) * (c * k * k) ** -0.5
    b = torch.randn(o, generator=g)
    with torch.no_grad():
        y = torch.nn.functional.conv2d(x, wt, b, stride=s, padding=p)
    dy = torch.randn_like(y)

    def forward():
        with torch.no_grad():
            torch.nn.functional.conv2d(x, wt, b, stride=s, padding=p)

    def backward():
        torch.ops.aten.convolution_backward(
            dy, x, wt, [o], [s, s], [p, p], [1, 1], False, [0, 0], 1,
            [True, True, True])

    if cpu_time:
        timer = dict(clock=time.process_time, pick=min)
    else:
        timer = {}
    return median_seconds(forward, reps, **timer), median_seconds(backward, reps, **timer)


def noisegrad_time(root, name, which):
    path = os.path.join(root, "conv", name, which, "new", "estimates.json")
    try:
        with open(path) as f:
            return json.load(f)["median"]["point_estimate"] * 1e-9
    except (OSError, KeyError, ValueError):
        return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--criterion", default="target/criterion")
    ap.add_argument("--cpu-time", action="store_true",
                    help="one thread, min process CPU time (compare with the conv_cpu_time example)")
    args = ap.parse_args()
    torch.set_num_threads(1 if args.cpu_time else 2)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    if args.cpu_time:
        print(f"{'case':<22}{'forward':>10}{'backward':>10}  (ms of CPU time, min of {args.reps})")
        for case in CASES:
            fwd, bwd = torch_times(case, args.reps, cpu_time=True)
            print(f"{case[0]:<22}{fwd * 1e3:>10.2f}{bwd * 1e3:>10.2f}")
        return
    print(f"{'case':<22}{'pass':<10}{'pytorch ms':>12}{'noisegrad ms':>14}{'ratio':>8}")
    for case in CASES:
        fwd, bwd = torch_times(case, args.reps)
        for which, t in (("forward", fwd), ("backward", bwd)):
            ours = noisegrad_time(args.criterion, case[0], which)
            ours_s = f"{ours * 1e3:14.2f}" if ours else f"{'-':>14}"
            ratio = f"{t / ours:8.2f}" if ours else f"{'-':>8}"
            print(f"{case[0]:<22}{which:<10}{t * 1e3:12.2f}{ours_s}{ratio}")


if __name__ == "__main__":
    main()
