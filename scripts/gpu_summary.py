"""Writes OUT/summary.json from the stage files of scripts/gpu_suite.sh run,
and prints a short verdict table (the device tool returns the end of stdout).

    python3 scripts/gpu_summary.py OUT [gpu|dry-run]

Standard library only. Robust to missing or cut-off stages: every number
it cannot find is null, with a `reason` saying why (the stage was skipped,
timed out, failed, or its output lacked the line). Ratios are noisegrad over
PyTorch for speed (img/s: above 1 means noisegrad is faster) and for memory
(peak GiB: below 1 means noisegrad needs less); per kernel, PyTorch's time
over noisegrad's (above 1: noisegrad faster), as BENCHMARKS.md counts.
"""
import json
import os
import re
import sys


def read(out, name):
    try:
        with open(os.path.join(out, name), encoding="utf-8", errors="replace") as fh:
            return fh.read()
    except OSError:
        return None


def stages(out):
    """stage -> {status, secs, note} from stages.txt."""
    text = read(out, "stages.txt") or ""
    rows = {}
    for line in text.splitlines()[1:]:
        parts = line.split("\t")
        if len(parts) == 4:
            rows[parts[0]] = {"status": parts[1], "secs": int(parts[2]) if parts[2].isdigit() else None, "note": parts[3]}
    return rows


def why_missing(st, stage, what):
    """A reason for a missing number: the stage's status and note, if any."""
    s = st.get(stage)
    if s is None:
        return f"stage {stage} did not run (the suite stopped before it)"
    if s["status"] == "ok":
        return f"stage {stage} ran but printed no {what}"
    return f"stage {stage} {s['status']}: {s['note']}"


def gpu_info(out):
    text = read(out, "gpu.txt") or ""
    m = re.search(r"^query: (.+)$", text, re.M)
    fields = [f.strip() for f in m.group(1).split(",")] if m and m.group(1).strip() else []
    info = dict(zip(["name", "driver", "memory", "compute_cap"], fields)) if fields else {"name": None, "reason": "nvidia-smi found no GPU"}
    lm = re.search(r"^libraries: (\{.*\})$", text, re.M)
    tm = re.search(r"^torch: (\{.*\})$", text, re.M)
    info["libraries"] = json.loads(lm.group(1)) if lm else None
    info["torch"] = json.loads(tm.group(1)) if tm else None
    return info


def sections(text, start):
    """{name: block} for the blocks that begin with a `== START name ...` line
    (the block holds that line and all up to the next one)."""
    return {m.group(1): m.group(0) for m in re.finditer(rf"^== {start} (\S+).*?(?=^== {start} |\Z)", text, re.M | re.S)}


def tests(out, st, mode):
    text = read(out, "tests.log")
    if text is None:
        return {"passed": None, "failed": None, "reason": why_missing(st, "tests", "test output")}
    binaries, passed, failed = [], 0, 0
    for name, body in sections(text, "BINARY").items():
        end = re.search(r"^== END \S+ rc=(\d+) secs=(\d+)", body, re.M)
        rc = int(end.group(1)) if end else None
        p = sum(int(x) for x in re.findall(r"^test result: \w+\. (\d+) passed", body, re.M))
        f = sum(int(x) for x in re.findall(r"^test result: \w+\. \d+ passed; (\d+) failed", body, re.M))
        names = re.findall(r"^test (\S+) \.\.\. FAILED", body, re.M)
        status = "ok" if rc == 0 else "timeout" if rc in (124, 137) else "not finished" if rc is None else "failed"
        if rc not in (0, None) and f == 0:
            f = 1  # the binary crashed or timed out: at least one test did not pass
            if not names:
                running = re.findall(r"^test (\S+) \.\.\. ?$", body, re.M)  # killed before "ok"
                names = [(running[-1] if running else name) + f" ({status})"]
        binaries.append({"name": name, "status": status, "rc": rc, "secs": int(end.group(2)) if end else None,
                         "passed": p, "failed": f, "failed_tests": names})
        passed, failed = passed + p, failed + f
    return {
        "passed": passed,
        "failed": failed,
        # The GPU run sets NOISEGRAD_REQUIRE_GPU=1 (a test without the GPU
        # fails); the dry run's tests choose the emulator themselves.
        "ran_on": "emulator" if mode == "dry-run" else "gpu",
        "skipped_lines": len(re.findall(r": SKIPPED", text)),
        "binaries": binaries,
    }


BENCH_LINE = re.compile(r"([\d.]+) img/s, ([\d.]+) ms/step over (\d+) steps .*?peak tensor memory ([\d.]+) GiB")
POOL_LINE = re.compile(r"CUDA pool: peak in use ([\d.]+) GiB, reserved ([\d.]+) GiB, (\d+) driver allocations")


def parse_bench_train(body):
    m, p = BENCH_LINE.search(body), POOL_LINE.search(body)
    if not m:
        return None
    r = {"img_s": float(m.group(1)), "ms_step": float(m.group(2)), "steps": int(m.group(3)), "tensor_peak_gib": float(m.group(4))}
    if p:
        r.update(peak_gib=float(p.group(1)), reserved_gib=float(p.group(2)), driver_allocs=int(p.group(3)))
    else:
        r["peak_gib"] = None
    return r


def noisegrad_train(out, st):
    text = read(out, "bench_train.txt")
    res = {}
    secs = sections(text or "", "MODE")
    for mode in ["fp32", "tf32"]:
        body = secs.get(mode)
        r = parse_bench_train(body) if body else None
        if r:
            res[mode] = r
            continue
        end = re.search(r"^== END \S+ rc=(\d+) secs=(\d+)", body or "", re.M)
        if body is None:
            reason = "skipped: no GPU" if text and text.startswith("skipped: no GPU") else why_missing(st, "bench-train", "result")
        elif end and end.group(1) in ("124", "137"):
            steps = re.search(r"^== MODE \S+ steps=(\d+)", body, re.M)
            n = int(steps.group(1)) if steps else 20
            reason = f"timed out after {end.group(2)} s: fewer than {128 * n / max(int(end.group(2)), 1):.0f} img/s"
        else:
            tail = [l for l in body.strip().splitlines() if not l.startswith("==")][-3:]
            reason = "failed: " + " | ".join(tail)
        res[mode] = {"img_s": None, "peak_gib": None, "reason": reason}
    checks = sections(text or "", "FORMAT")
    if checks:
        r = parse_bench_train(next(iter(checks.values())))
        res["format_check_cpu"] = {"parsed": r is not None, "note": "CPU, tiny preset: checks the output format, not a measurement"}
    return res


def pytorch_train(out, st):
    text = read(out, "pytorch_train.txt")
    rows = [json.loads(l[7:]) for l in (text or "").splitlines() if l.startswith("RESULT {")]
    res = {r["mode"]: r for r in rows}
    check = "SCRIPT CHECK" in (text or "")
    for mode in ["eager_fp32", "eager_tf32", "compiled_bf16"]:
        r = res.get(mode)
        if check:
            res[mode] = {"img_s": None, "peak_gib": None, "reason": "skipped: no GPU"}
        elif r is None:
            if text and text.startswith("skipped: no GPU"):
                reason = "skipped: no GPU"
            elif mode == "compiled_bf16" and "eager_tf32" in res and re.search(r"^== END rc=(124|137)", text, re.M):
                reason = "torch.compile did not finish within the stage's time limit"
            else:
                reason = why_missing(st, "pytorch-train", f"{mode} result")
            res[mode] = {"img_s": None, "peak_gib": None, "reason": reason}
        elif "img_s" not in r:
            res[mode] = {"img_s": None, "peak_gib": None, "reason": r.get("error") or r.get("skipped")}
    if check:
        ok = any(r.get("mode") == "eager_fp32" and "img_s" in r for r in rows)
        res["script_check_cpu"] = {"ran": ok, "note": "CPU, tiny U-Net: checks the script, not a measurement"}
    return res


def ratio(a, b):
    return round(a / b, 3) if a is not None and b else None


def compare(ng, pt):
    out = {}
    for prec, mode in [("fp32", "eager_fp32"), ("tf32", "eager_tf32")]:
        n, p = ng.get(prec, {}), pt.get(mode, {})
        speed, mem = ratio(n.get("img_s"), p.get("img_s")), ratio(n.get("peak_gib"), p.get("peak_gib"))
        row = {"speed_noisegrad_over_pytorch": speed, "peak_noisegrad_over_pytorch": mem,
               "speed_target_met": None if speed is None else speed >= 1.0,
               "memory_target_met": None if mem is None else mem <= 1.0}
        if speed is None or mem is None:
            reasons = [r for r in dict.fromkeys([n.get("reason"), p.get("reason")]) if r]
            row["reason"] = "; ".join(reasons) or "a peak is missing"
        out[prec] = row
    return out


UNITS = {"ps": 1e-9, "ns": 1e-6, "µs": 1e-3, "us": 1e-3, "ms": 1.0, "s": 1e3}
TIME = re.compile(r"time:\s+\[([\d.]+) (\S+) ([\d.]+) (\S+) ([\d.]+) (\S+)\]")


def criterion_times(text):
    """{bench id: median ms} from criterion's report (id on the line before
    `time:` when it is long, else on the same line)."""
    res, last = {}, None
    for line in text.splitlines():
        m = TIME.search(line)
        if m:
            name = line[: m.start()].strip() or last
            if name and m.group(4) in UNITS:
                res[name] = float(m.group(3)) * UNITS[m.group(4)]
            continue
        s = line.strip()
        if s and not line[0].isspace() and not s.startswith(("Benchmarking", "==", "Found", "Warning", "thrpt", "change")):
            last = s
    return res


def kernels(out, st):
    rust = criterion_times(read(out, "bench_cuda.txt") or "")
    py = {}
    for line in (read(out, "bench_cuda_pytorch.txt") or "").splitlines():
        if line.startswith('{"name"'):
            r = json.loads(line)
            py[r["name"]] = r["ms"]
    rows = []
    for name in sorted(set(n.removeprefix("cuda/") for n in rust) | set(py)):
        ng, pt = rust.get("cuda/" + name), py.get(name)
        rows.append({"name": name, "noisegrad_ms": ng, "pytorch_ms": pt, "pytorch_over_noisegrad": ratio(pt, ng)})
    res = {"rows": rows}
    if not rows:
        res["reason"] = "skipped: no GPU" if st.get("kernels", {}).get("status") == "skipped" else why_missing(st, "kernels", "timing")
    return res


def fmt(v, spec):
    width = re.match(r"\d*", spec).group()
    return "-".rjust(int(width or 0)) if v is None else format(v, spec)


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "gpu-out"
    mode = sys.argv[2] if len(sys.argv) > 2 else "gpu"
    st = stages(out)
    manifest = read("gpu-bin", "MANIFEST.txt")
    ng, pt = noisegrad_train(out, st), pytorch_train(out, st)
    summary = {
        "mode": mode,
        "build": manifest.strip().splitlines() if manifest else None,
        "stages": st,
        "total_s": sum(s["secs"] or 0 for s in st.values()),
        "gpu": gpu_info(out),
        "tests": tests(out, st, mode),
        "train_step": {
            "what": "DDPM cifar10 U-Net, batch 128: noisegrad bench-train (20 timed steps) vs the same step in PyTorch",
            "noisegrad": ng,
            "pytorch": pt,
            "ratios": compare(ng, pt),
        },
        "kernels": kernels(out, st),
    }
    with open(os.path.join(out, "summary.json"), "w") as fh:
        json.dump(summary, fh, indent=1)
    t = summary["tests"]
    print(f"\n== summary ({mode}) -> {os.path.join(out, 'summary.json')}")
    print(f"GPU: {summary['gpu'].get('name') or 'none'}, driver {summary['gpu'].get('driver') or '-'}")
    failed = [n for b in t.get("binaries", []) for n in b["failed_tests"]]
    print(f"tests: {t.get('passed')} passed, {t.get('failed')} failed" + (f" ({', '.join(failed[:8])})" if failed else "")
          + (f" [on the {t['ran_on']}]" if t.get("ran_on") else ""))
    print(f"{'train step b128':16s} {'noisegrad img/s':>16s} {'PyTorch img/s':>14s} {'ratio':>6s} {'ng GiB':>7s} {'pt GiB':>7s}")
    for prec, mode_pt in [("fp32", "eager_fp32"), ("tf32", "eager_tf32")]:
        n, p, r = ng[prec], pt[mode_pt], summary["train_step"]["ratios"][prec]
        print(f"{prec:16s} {fmt(n.get('img_s'), '16.1f')} {fmt(p.get('img_s'), '14.1f')} {fmt(r['speed_noisegrad_over_pytorch'], '6.2f')}"
              f" {fmt(n.get('peak_gib'), '7.2f')} {fmt(p.get('peak_gib'), '7.2f')}" + (f"  ({r['reason']})" if r.get("reason") else ""))
    c = pt["compiled_bf16"]
    print(f"{'compiled bf16':16s} {'':16s} {fmt(c.get('img_s'), '14.1f')}" + (f"  ({c['reason']})" if c.get("reason") else ""))
    k = summary["kernels"]
    print(f"kernels: {len(k['rows'])} rows" + (f" ({k['reason']})" if k.get("reason") else ""))


if __name__ == "__main__":
    main()
