#!/usr/bin/env python3
"""Times the shapes of `benches/matmul.rs` and `benches/elementwise.rs` in
PyTorch on the CPU, so BENCHMARKS.md can compare like with like.

    PYTHONPATH=/opt/pt/site python3 scripts/bench_pytorch_cpu.py           # time PyTorch
    python3 scripts/bench_pytorch_cpu.py --report                          # Markdown tables

The first form prints a table and writes target/pytorch_cpu_bench.json.
`--report` needs no PyTorch: it joins that JSON with criterion's results
(target/criterion/<group>/<bench>/new/estimates.json, from
`cargo bench --bench matmul --bench elementwise`) into the tables of
BENCHMARKS.md. Run both right after the cargo benches, on the same machine,
with nothing else running.

Every timing is the median of many calls after a warm-up. Results are keyed
by the criterion id `<group>/<bench>` so both sides line up. Keep the case
lists below in sync with the Rust benches.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JSON_PATH = os.path.join(ROOT, "target", "pytorch_cpu_bench.json")
CRITERION_DIR = os.path.join(ROOT, "target", "criterion")
THREADS = 2
F32 = 4

# (name, batch, m, k, n, transposed operand) — as CASES in benches/matmul.rs.
MATMUL_CASES = [
    ("square_512", 1, 512, 512, 512, None),
    ("square_1024", 1, 1024, 1024, 1024, None),
    ("square_1024_At", 1, 1024, 1024, 1024, "A"),
    ("unet_conv_32x32x128", 1, 128, 1152, 8 * 1024, None),
    ("unet_conv_32x32x128_dW", 1, 128, 8 * 1024, 1152, "B"),
    ("unet_conv_32x32x128_dX", 1, 1152, 128, 8 * 1024, "A"),
    ("unet_conv_16x16x256", 1, 256, 2304, 8 * 256, None),
    ("unet_conv_8x8x256", 1, 256, 2304, 8 * 64, None),
    ("unet_conv_4x4x256", 1, 256, 2304, 8 * 16, None),
    ("unet_temb_linear_512", 1, 8, 512, 512, "B"),
    ("unet_attn_qk_16x16x256", 8, 256, 256, 256, "B"),
    ("unet_attn_pv_16x16x256", 8, 256, 256, 256, None),
]

# (label, NCHW shape) — as SIZES in benches/elementwise.rs.
SIZES = [("1M", (8, 128, 32, 32)), ("16M", (128, 128, 32, 32))]

# Elementwise bench names in table order, with a one-line description.
ELEMENTWISE_OPS = [
    ("memcpy_1thread", "copy_from_slice, preallocated (1 thread)"),
    ("copy_2threads", "parallel copy, preallocated"),
    ("alloc_copy", "allocate + copy (`to_vec` / `clone`)"),
    ("permute_nchw_to_nhwc", "NCHW → NHWC, `contiguous()` of a permuted view"),
    ("add", "x + y, same shape"),
    ("mul", "x * y, same shape"),
    ("add_bias_nchw", "x + b, b: [1,C,1,1]"),
    ("add_kernel_prealloc", "x + y into a preallocated output"),
    ("silu", "x·σ(x)"),
    ("exp", "eˣ"),
    ("sum_axes_0_2_3", "Σ over N,H,W (bias grad)"),
    ("sum_axes_2_3", "Σ over H,W"),
    ("sum_axes_2_3_kernel", "Σ over H,W, kernel only, preallocated output"),
    ("softmax_rows_256", "softmax over rows of 256"),
]


def time_median(fn, min_time=1.0, min_reps=10, max_reps=2000):
    """Median seconds per call of `fn`, after a warm-up."""
    for _ in range(3):
        fn()
    samples = []
    start = time.perf_counter()
    while len(samples) < max_reps and (
        len(samples) < min_reps or time.perf_counter() - start < min_time
    ):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def matmul_benches(torch):
    """{id: (seconds, flops)} for every matmul case."""
    out = {}
    for name, batch, m, k, n, transposed in MATMUL_CASES:

        def operand(rows, cols, t):
            if t:  # stored transposed, handed over as a view (as in Rust)
                return torch.randn(batch, cols, rows).transpose(1, 2)
            return torch.randn(batch, rows, cols)

        a = operand(m, k, transposed == "A")
        b = operand(k, n, transposed == "B")
        secs = time_median(lambda: torch.matmul(a, b))
        out[f"matmul_{name}/pytorch"] = (secs, 2 * batch * m * k * n)
    return out


def elementwise_benches(torch):
    """{id: (seconds, bytes)} for every elementwise case."""
    F = torch.nn.functional
    out = {}
    for label, shape in SIZES:
        g = f"elementwise_{label}"
        numel = 1
        for s in shape:
            numel *= s
        x, y = torch.randn(shape), torch.randn(shape)
        bias = torch.randn(1, shape[1], 1, 1)
        flat, dst = torch.randn(numel), torch.empty(numel)
        pre = torch.empty(shape)
        rows = torch.randn(numel // 256, 256)
        cases = {
            "copy_2threads": (lambda: dst.copy_(flat), 2),
            "alloc_copy": (lambda: flat.clone(), 2),
            "permute_nchw_to_nhwc": (lambda: x.permute(0, 2, 3, 1).contiguous(), 2),
            "add": (lambda: torch.add(x, y), 3),
            "mul": (lambda: torch.mul(x, y), 3),
            "add_bias_nchw": (lambda: torch.add(x, bias), 2),
            "add_kernel_prealloc": (lambda: torch.add(x, y, out=pre), 3),
            "silu": (lambda: F.silu(x), 2),
            "exp": (lambda: torch.exp(x), 2),
            "sum_axes_0_2_3": (lambda: x.sum(dim=(0, 2, 3)), 1),
            "sum_axes_2_3": (lambda: x.sum(dim=(2, 3)), 1),
            "softmax_rows_256": (lambda: torch.softmax(rows, dim=1), 2),
        }
        for name, (fn, passes) in cases.items():
            out[f"{g}/{name}"] = (time_median(fn), passes * numel * F32)
    return out


def machine():
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = next(
            (l.split(":", 1)[1].strip() for l in lscpu.splitlines() if l.startswith("Model name")),
            platform.processor(),
        )
    except OSError:
        model = platform.processor()
    return {"cpu": model, "logical_cpus": os.cpu_count()}


def run_pytorch():
    import torch

    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    results = {}
    with torch.no_grad():
        results.update(matmul_benches(torch))
        results.update(elementwise_benches(torch))
    print(f"PyTorch {torch.__version__}, {torch.get_num_threads()} threads, median per call")
    for key, (secs, work) in results.items():
        unit = "GFLOP/s" if key.startswith("matmul") else "GB/s"
        print(f"{key:50s} {secs * 1e3:10.3f} ms {work / secs / 1e9:10.2f} {unit}")
    os.makedirs(os.path.dirname(JSON_PATH), exist_ok=True)
    with open(JSON_PATH, "w") as f:
        json.dump(
            {
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "machine": machine(),
                "time": time.strftime("%Y-%m-%d %H:%M:%S"),
                "results": {k: {"seconds": s, "work": w} for k, (s, w) in results.items()},
            },
            f,
            indent=1,
        )
    print(f"wrote {JSON_PATH}")


def criterion_median(group, bench):
    """criterion's median estimate in seconds, or None if that bench did not run."""
    path = os.path.join(CRITERION_DIR, group, bench, "new", "estimates.json")
    try:
        with open(path) as f:
            return json.load(f)["median"]["point_estimate"] * 1e-9
    except (OSError, KeyError, ValueError):
        return None


def fmt_time(s):
    if s is None:
        return "–"
    return f"{s * 1e3:.3f} ms" if s >= 1e-3 else f"{s * 1e6:.1f} µs"


def fmt_rate(work, s, scale=1e9):
    return "–" if s is None else f"{work / s / scale:.1f}"


def fmt_ratio(num, den):
    return "–" if num is None or den is None else f"{num / den:.2f}"


def report():
    try:
        with open(JSON_PATH) as f:
            pt = json.load(f)
    except OSError:
        sys.exit(f"{JSON_PATH} missing: run this script with PyTorch first")
    res = {k: v["seconds"] for k, v in pt["results"].items()}
    print(f"PyTorch {pt['torch']} with {pt['threads']} threads, timed {pt['time']}.\n")

    print("| GEMM | batch×m×k×n | noisegrad | GFLOP/s | raw sgemm | GFLOP/s | noisegrad / sgemm time | PyTorch | GFLOP/s | PyTorch / noisegrad time |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, batch, m, k, n, transposed in MATMUL_CASES:
        g = f"matmul_{name}"
        flops = 2 * batch * m * k * n
        ours, raw, torch_s = criterion_median(g, "noisegrad"), criterion_median(g, "raw_sgemm"), res.get(f"{g}/pytorch")
        dims = f"{batch}×{m}×{k}×{n}" + (f" ({transposed}ᵀ view)" if transposed else "")
        print(
            f"| {name} | {dims} | {fmt_time(ours)} | {fmt_rate(flops, ours)} | {fmt_time(raw)} | {fmt_rate(flops, raw)} "
            f"| {fmt_ratio(ours, raw)} | {fmt_time(torch_s)} | {fmt_rate(flops, torch_s)} | {fmt_ratio(torch_s, ours)} |"
        )

    for label, shape in SIZES:
        g = f"elementwise_{label}"
        numel = 1
        for s in shape:
            numel *= s
        print(f"\n**{label} elements** (activation {list(shape)}; GB/s = (bytes read + written) / time)\n")
        print("| op | what | noisegrad | GB/s | PyTorch | GB/s | PyTorch / noisegrad time |")
        print("|---|---|---|---|---|---|---|")
        for name, what in ELEMENTWISE_OPS:
            ours = criterion_median(g, name)
            theirs = res.get(f"{g}/{name}")
            work = pt["results"].get(f"{g}/{name}", {}).get("work") or bytes_of(name, numel)
            print(
                f"| {name} | {what} | {fmt_time(ours)} | {fmt_rate(work, ours)} | {fmt_time(theirs)} "
                f"| {fmt_rate(work, theirs)} | {fmt_ratio(theirs, ours)} |"
            )


def bytes_of(name, numel):
    passes = {
        "add": 3,
        "mul": 3,
        "add_kernel_prealloc": 3,
        "sum_axes_0_2_3": 1,
        "sum_axes_2_3": 1,
        "sum_axes_2_3_kernel": 1,
    }
    return passes.get(name, 2) * numel * F32


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--report", action="store_true", help="print Markdown tables from saved results")
    if ap.parse_args().report:
        report()
    else:
        run_pytorch()
