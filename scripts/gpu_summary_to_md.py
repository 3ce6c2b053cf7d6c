"""Prints BENCHMARKS.md's CUDA tables from a summary.json of scripts/gpu_suite.sh run.

    python3 scripts/gpu_summary_to_md.py gpu-out/summary.json

Standard library only. Three parts, to paste under "## CUDA": the run (GPU,
driver, PyTorch, build, tests), the whole training step against PyTorch in
the same run (img/s and peak GiB, ratios, whether each target is met), and
the per-kernel table (median ms; ratio = PyTorch time / noisegrad time, as
in the CPU tables). A value the run did not produce is a dash with its reason.
"""
import json
import sys


def num(v, spec=".1f"):
    return "–" if v is None else format(v, spec)


def met(v):
    return "–" if v is None else ("**met**" if v else "not met")


def run_lines(s):
    g, t = s["gpu"], s["tests"]
    torch = (g.get("torch") or {}).get("version") or "–"
    build = "; ".join(s.get("build") or []) or "–"
    lines = [
        f"GPU: {g.get('name') or '–'} ({g.get('memory') or '–'}, compute capability {g.get('compute_cap') or '–'}), "
        f"driver {g.get('driver') or '–'}, PyTorch {torch}; suite mode `{s['mode']}`, {s.get('total_s', '–')} s in all.",
        f"Build: {build}.",
        "",
        f"CUDA tests{' (`NOISEGRAD_REQUIRE_GPU=1`)' if t.get('ran_on') == 'gpu' else ''}: "
        f"{num(t.get('passed'), 'd')} passed, {num(t.get('failed'), 'd')} failed"
        + (f", on the {t['ran_on']}" if t.get("ran_on") else "")
        + (f" ({t['reason']})" if t.get("reason") else "")
        + ".",
    ]
    failed = [f"`{b['name']}`: {', '.join(b['failed_tests']) or b['status']}" for b in t.get("binaries", []) if b["failed"]]
    if failed:
        lines.append("Failed: " + "; ".join(failed) + ".")
    return lines


def train_lines(s):
    ts = s["train_step"]
    ng, pt, ratios = ts["noisegrad"], ts["pytorch"], ts["ratios"]
    lines = [
        "| `cifar10` step, batch 128 | noisegrad img/s | PyTorch img/s | speed ratio (≥ 1 target) | noisegrad peak GiB | PyTorch peak GiB | memory ratio (≤ 1 target) |",
        "|---|---|---|---|---|---|---|",
    ]
    notes = []
    for prec, mode, label in [("fp32", "eager_fp32", "fp32 (PyTorch eager)"), ("tf32", "eager_tf32", "TF32 (PyTorch eager)")]:
        n, p, r = ng.get(prec, {}), pt.get(mode, {}), ratios[prec]
        lines.append(
            f"| {label} | {num(n.get('img_s'))} | {num(p.get('img_s'))} | {num(r['speed_noisegrad_over_pytorch'], '.2f')} "
            f"({met(r['speed_target_met'])}) | {num(n.get('peak_gib'), '.2f')} | {num(p.get('peak_gib'), '.2f')} | "
            f"{num(r['peak_noisegrad_over_pytorch'], '.2f')} ({met(r['memory_target_met'])}) |"
        )
        if r.get("reason"):
            notes.append(f"{prec}: {r['reason']}")
    c = pt.get("compiled_bf16", {})
    lines.append(f"| PyTorch `torch.compile` + bf16 autocast | – | {num(c.get('img_s'))} | – | – | {num(c.get('peak_gib'), '.2f')} | – |")
    if c.get("reason"):
        notes.append(f"compiled bf16: {c['reason']}")
    lines += [""] + [f"- {n}" for n in notes]
    return lines


def kernel_lines(s):
    k = s["kernels"]
    if not k["rows"]:
        return [f"Per-kernel table: not measured ({k.get('reason', 'no rows')})."]
    lines = ["| kernel (batch 128) | noisegrad ms | PyTorch ms | ratio |", "|---|---|---|---|"]
    for r in k["rows"]:
        lines.append(f"| {r['name']} | {num(r['noisegrad_ms'], '.3f')} | {num(r['pytorch_ms'], '.3f')} | {num(r['pytorch_over_noisegrad'], '.2f')} |")
    return lines


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else "gpu-out/summary.json"
    with open(path) as fh:
        s = json.load(fh)
    print("\n".join(run_lines(s) + [""] + train_lines(s) + [""] + kernel_lines(s)))


if __name__ == "__main__":
    main()
