"""Times PyTorch CPU scaled_dot_product_attention (forward, and forward +
backward) at the U-Net's shapes and compares with noisegrad's criterion
results for the same shapes (benches/attention.rs).

    cargo bench --bench attention      # writes target/criterion/attention_*/...
    PYTHONPATH=/opt/pt/site python3 scripts/bench_attention_pytorch.py

Both sides use 2 threads. Each PyTorch number is the median of `--reps`
timed calls after warm-up; noisegrad's is criterion's median
(`target/criterion/attention_<pass>/<path>/<preset>/new/estimates.json`).
The ratio is PyTorch time / noisegrad time: >= 1 means noisegrad is at least
as fast. Run both back to back on a quiet machine; timings on a shared box
are noisy.
"""

import argparse
import json
import os
import statistics
import time

import torch
import torch.nn.functional as F

# label, batch, tokens, channels — must match PRESETS in benches/attention.rs.
PRESETS = [("unet", 8, 256, 256), ("small", 32, 256, 128)]
# noisegrad paths reported (criterion function names).
PATHS = ["auto", "flash", "plain", "op"]


def median_seconds(fn, reps, warmup=3):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def torch_times(batch, tokens, channels, reps):
    g = torch.Generator().manual_seed(0)
    q, k, v, dout = (
        torch.randn(batch, tokens, channels, generator=g) for _ in range(4)
    )

    def forward():
        with torch.no_grad():
            F.scaled_dot_product_attention(q, k, v)

    qg, kg, vg = (x.clone().requires_grad_() for x in (q, k, v))

    def forward_backward():
        out = F.scaled_dot_product_attention(qg, kg, vg)
        out.backward(dout)
        for x in (qg, kg, vg):
            x.grad = None

    return {
        "fwd": median_seconds(forward, reps),
        "fwd_bwd": median_seconds(forward_backward, reps),
    }


def noisegrad_time(root, which, path, label):
    est = os.path.join(root, f"attention_{which}", path, label, "new", "estimates.json")
    try:
        with open(est) as f:
            return json.load(f)["median"]["point_estimate"] * 1e-9
    except (OSError, KeyError, ValueError):
        return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--criterion", default="target/criterion")
    args = ap.parse_args()
    torch.set_num_threads(2)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"{'preset':<8}{'pass':<9}{'noisegrad':<11}{'pytorch ms':>11}"
          f"{'noisegrad ms':>14}{'ratio':>8}")
    for label, batch, tokens, channels in PRESETS:
        theirs = torch_times(batch, tokens, channels, args.reps)
        for which, t in theirs.items():
            for path in PATHS:
                if which == "fwd" and path == "op":
                    continue
                ours = noisegrad_time(args.criterion, which, path, label)
                ours_s = f"{ours * 1e3:14.2f}" if ours else f"{'-':>14}"
                ratio = f"{t / ours:8.2f}" if ours else f"{'-':>8}"
                print(f"{label:<8}{which:<9}{path:<11}{t * 1e3:11.2f}{ours_s}{ratio}")


if __name__ == "__main__":
    main()
