"""Times PyTorch (CPU, 2 threads) on the cases of benches/norm.rs and
benches/noise.rs and prints a ratio table against criterion's results.

    cargo bench --bench norm && cargo bench --bench noise
    PYTHONPATH=/opt/pt/site python3 scripts/bench_norm_pytorch.py

PyTorch uses 2 threads (rayon's default on the 2-core machine this was
written for); set NG_BENCH_THREADS=1 here and RAYON_NUM_THREADS=1 for the
cargo runs to compare single-threaded (steadier on a shared machine).

ratio = PyTorch time / noisegrad time (> 1: noisegrad is faster), from the
fastest sample on each side ("min": least disturbed by other processes on a
shared machine) and from the medians. Cases missing from target/criterion
are shown as "-".
Backward cases time only the backward call (the forward is redone, untimed,
before each one), like the Rust benches.
"""

import json
import os
import statistics
import time

import torch
import torch.nn.functional as F

torch.set_num_threads(int(os.environ.get("NG_BENCH_THREADS", "2")))
ROOT = os.path.join(os.path.dirname(__file__), "..")
GROUPS, EPS = 32, 1e-6
NORM_CASES = [("32x32x128", [8, 128, 32, 32]), ("16x16x256", [8, 256, 16, 16]),
              ("8x8x256", [8, 256, 8, 8]), ("4x4x256", [8, 256, 4, 4])]
UPSAMPLE_CASES = [("16x16x256", [8, 256, 16, 16]), ("8x8x256", [8, 256, 8, 8]),
                  ("4x4x256", [8, 256, 4, 4])]
NOISE_CASES = [("8x3x32x32", [8, 3, 32, 32]), ("128x3x32x32", [128, 3, 32, 32])]


def time_call(run, setup=None, min_time=0.3, repeats=7):
    """(min, median) seconds per call of run(setup()), setup untimed."""
    def one():
        arg = setup() if setup else None
        t0 = time.perf_counter()
        run(arg)
        return time.perf_counter() - t0
    for _ in range(3):
        one()
    per = one()
    n = max(1, int(min_time / repeats / max(per, 1e-7)))
    samples = [one() for _ in range(n * repeats)]
    return min(samples), statistics.median(samples)


def ours(group, fn, case):
    """(min, median) seconds per iteration from criterion's samples."""
    path = os.path.join(ROOT, "target", "criterion", group, fn, case, "new", "sample.json")
    try:
        with open(path) as f:
            s = json.load(f)
    except FileNotFoundError:
        return None
    per = [t / i * 1e-9 for t, i in zip(s["times"], s["iters"])]
    return min(per), statistics.median(per)


def group_norm_cases():
    for name, shape in NORM_CASES:
        x = torch.randn(shape)
        gamma, beta = torch.randn(shape[1]) + 1, torch.randn(shape[1])
        dy = torch.randn(shape)
        plain = lambda x, g, b: F.group_norm(x, GROUPS, g, b, EPS)
        with_silu = lambda x, g, b: F.silu(F.group_norm(x, GROUPS, g, b, EPS))
        for suffix, f in (("", plain), ("_silu", with_silu), ("_then_silu", with_silu)):
            with torch.no_grad():
                t = time_call(lambda _: f(x, gamma, beta))
            yield "group_norm", f"fwd{suffix}", name, t

            def setup(f=f):
                leaves = [v.detach().requires_grad_(True) for v in (x, gamma, beta)]
                return f(*leaves), leaves
            t = time_call(lambda s: torch.autograd.grad(s[0], s[1], dy), setup)
            yield "group_norm", f"bwd{suffix}", name, t


def upsample_cases():
    for name, shape in UPSAMPLE_CASES:
        x = torch.randn(shape)
        dy = torch.randn([shape[0], shape[1], 2 * shape[2], 2 * shape[3]])
        up = lambda v: F.interpolate(v, scale_factor=2, mode="nearest")
        with torch.no_grad():
            yield "upsample", "fwd", name, time_call(lambda _: up(x))

        def setup():
            leaf = x.detach().requires_grad_(True)
            return up(leaf), leaf
        yield "upsample", "bwd", name, time_call(lambda s: torch.autograd.grad(s[0], s[1], dy), setup)


def noise_cases():
    for name, shape in NOISE_CASES:
        n = shape[0]
        x, eps, eps_pred, z = (torch.randn(shape) for _ in range(4))
        ab = torch.tensor([0.999 - 0.99 * i / n for i in range(n)], dtype=torch.float64)
        col = lambda v: v.to(torch.float32).view(n, 1, 1, 1)
        sa, s1a = col(ab.sqrt()), col((1 - ab).sqrt())
        kx, ke = col(1 / ab.sqrt()), col(((1 - ab) / ab).sqrt())
        c0, c1, sig = 0.1, 0.9, 0.05
        abp = (ab + 0.05).clamp(max=1.0)
        sd = 0.5 * ((1 - abp) / (1 - ab)).sqrt() * (1 - ab / abp).sqrt()
        sabp, dirw, sdc = col(abp.sqrt()), col((1 - abp - sd * sd).clamp(min=0).sqrt()), col(sd)
        with torch.no_grad():
            yield "noise", "q_sample", name, time_call(lambda _: sa * x + s1a * eps)
            yield "noise", "l_simple_fwd", name, time_call(lambda _: F.mse_loss(eps_pred, eps))

            def ddpm(_):
                x0 = (kx * x - ke * eps_pred).clamp(-1, 1)
                return c0 * x0 + c1 * x + sig * z

            def ddim(_):
                x0 = (kx * x - ke * eps_pred).clamp(-1, 1)
                return sabp * x0 + dirw * eps_pred + sdc * z
            yield "noise", "ddpm_clipped_step", name, time_call(ddpm)
            yield "noise", "ddim_step", name, time_call(ddim)

        def fwd_bwd(_):
            p = eps_pred.detach().requires_grad_(True)
            return torch.autograd.grad(F.mse_loss(p, eps), p)
        yield "noise", "l_simple_fwd_bwd", name, time_call(fwd_bwd)


def main():
    rows = []
    for gen in (group_norm_cases(), upsample_cases(), noise_cases()):
        for group, fn, case, t in gen:
            rows.append((group, fn, case, t, ours(group, fn, case)))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; times in µs")
    print(f"{'op':<28} {'case':<12} {'torch min':>10} {'ours min':>10} {'ratio':>6}"
          f" {'torch med':>10} {'ours med':>10} {'ratio':>6}")
    for group, fn, case, t, o in rows:
        cols = [f"{t[0] * 1e6:10.1f}", f"{o[0] * 1e6:10.1f}" if o else f"{'-':>10}",
                f"{t[0] / o[0]:6.2f}" if o else f"{'-':>6}",
                f"{t[1] * 1e6:10.1f}", f"{o[1] * 1e6:10.1f}" if o else f"{'-':>10}",
                f"{t[1] / o[1]:6.2f}" if o else f"{'-':>6}"]
        print(f"{group + '/' + fn:<28} {case:<12} " + " ".join(cols))
    print("\nfusion gain (ours, min): time(group_norm then silu) / time(fused)")
    for name, _ in NORM_CASES:
        for d in ("fwd", "bwd"):
            fused, split = ours("group_norm", f"{d}_silu", name), ours("group_norm", f"{d}_then_silu", name)
            if fused and split:
                print(f"  {d} {name:<10} {split[0] / fused[0]:5.2f}x")


if __name__ == "__main__":
    main()
