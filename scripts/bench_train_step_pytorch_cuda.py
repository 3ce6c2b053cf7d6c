"""PyTorch's side of stage 4 of scripts/gpu_suite.sh: the DDPM training step
that `noisegrad bench-train --device cuda --preset cifar10 --batch-size 128`
times, in PyTorch on the same GPU in the same run.

    python3 scripts/bench_train_step_pytorch_cuda.py --ref gpu-bin/reference --deadline 80

The model is the PyTorch replica of the DDPM U-Net (ref_unet.py, carried in
gpu-bin/reference/ by `gpu_suite.sh pack`; it is not part of this repository).
The step does what noisegrad's Trainer::train_step does: a batch of 128
images from a pool on the host (uploaded each step), random horizontal
flips, ref_unet's train step (random t, q_sample, MSE against the noise,
gradient clipping at 1.0, Adam), an EMA update (decay 0.9999, one
_foreach_lerp_), and the loss read back to the host (noisegrad reads it too,
so each step ends with the GPU idle in both).

Modes, in order, each printed as one `RESULT {json}` line as soon as it is
measured (so a later mode that hangs or is killed leaves the earlier ones):
eager fp32, eager TF32, and torch.compile with bf16 autocast when at least
--compile-needs seconds of the --deadline are left. Peak memory is
torch.cuda.max_memory_allocated() over the timed steps (reset after the
warm-up), the counterpart of noisegrad's "CUDA pool: peak in use".

`--device cpu --small` runs the same code on a tiny U-Net on the CPU: the
dry run's check that this script works, not a measurement.
"""
import argparse
import json
import os
import sys
import time

import torch

EMA_DECAY = 0.9999
T = 1000


def result(**kv):
    print("RESULT " + json.dumps(kv), flush=True)


def make_step(model, ref, pool, batch, device):
    """One training step as noisegrad's Trainer does it; returns the loss as a float."""
    opt = torch.optim.Adam(model.parameters(), lr=2e-4)
    core = ref.train_step_fn(model, opt, ref.make_schedule(T, device), T)
    params = [p for p in model.parameters()]
    ema = [p.detach().clone() for p in params]

    def step():
        idx = torch.randint(0, pool.shape[0], (batch,))
        x0 = pool[idx].to(device, non_blocking=True)
        flip = torch.rand(batch, device=device) < 0.5
        x0 = torch.where(flip[:, None, None, None], x0.flip(3), x0)
        loss = core(x0)
        with torch.no_grad():
            torch._foreach_lerp_(ema, params, 1.0 - EMA_DECAY)
        return loss.item()

    return step


def measure(name, step, batch, steps, warmup, device, autocast=None):
    def run():
        if autocast is None:
            return step()
        with torch.autocast(device, dtype=autocast):
            return step()

    t0 = time.perf_counter()
    for _ in range(warmup):
        run()
    warm_s = time.perf_counter() - t0
    cuda = device == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    loss = float("nan")
    for _ in range(steps):
        loss = run()  # .item() inside: the clock stops when the GPU is done
    secs = time.perf_counter() - t0
    per_step = secs / steps
    result(
        mode=name,
        img_s=batch / per_step,
        ms_step=per_step * 1e3,
        steps=steps,
        warmup_steps=warmup,
        warmup_s=warm_s,
        last_loss=loss,
        peak_gib=torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        reserved_gib=torch.cuda.max_memory_reserved() / 2**30 if cuda else None,
    )


def set_tf32(on):
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ref", required=True, help="folder holding ref_unet.py")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--deadline", type=float, default=80.0, help="seconds this script may take in all")
    ap.add_argument("--compile-needs", type=float, default=45.0, help="seconds left needed to try torch.compile")
    ap.add_argument("--small", action="store_true", help="tiny U-Net (the dry run's check)")
    args = ap.parse_args()
    started = time.perf_counter()
    sys.path.insert(0, os.path.abspath(args.ref))
    import ref_unet as ref

    dev = args.device
    kw = dict(ch=32, ch_mult=(1, 2), nres=1, attn_res=(16,)) if args.small else {}
    torch.manual_seed(0)
    # A host pool of images in [-1, 1], as noisegrad's embedded CIFAR-10 sample.
    pool = (torch.rand(1000, 3, 32, 32) * 2 - 1).pin_memory() if dev == "cuda" else torch.rand(64, 3, 32, 32) * 2 - 1
    info = dict(torch=torch.__version__, device=torch.cuda.get_device_name(0) if dev == "cuda" else dev,
                cudnn_benchmark=torch.backends.cudnn.benchmark, batch_size=args.batch_size)
    info["params"] = sum(p.numel() for p in ref.UNet(**kw).parameters())
    result(mode="info", **info)

    for name, tf32 in [("eager_fp32", False), ("eager_tf32", True)]:
        set_tf32(tf32)
        model = ref.UNet(**kw).to(dev).train()
        try:
            measure(name, make_step(model, ref, pool, args.batch_size, dev), args.batch_size, args.steps, args.warmup, dev)
        except Exception as e:  # noqa: BLE001 (one mode failing must not hide the others)
            result(mode=name, error=repr(e)[:400])
        del model
        if dev == "cuda":
            torch.cuda.empty_cache()

    left = args.deadline - (time.perf_counter() - started)
    if left < args.compile_needs:
        result(mode="compiled_bf16", skipped=f"only {left:.0f} s of the {args.deadline:.0f} s deadline left (needs {args.compile_needs:.0f})")
        return
    set_tf32(True)
    try:
        model = ref.UNet(**kw).to(dev).train()
        compiled = torch.compile(model)
        measure("compiled_bf16", make_step(compiled, ref, pool, args.batch_size, dev), args.batch_size,
                args.steps, args.warmup, dev, autocast=torch.bfloat16)
    except Exception as e:  # noqa: BLE001
        result(mode="compiled_bf16", error=repr(e)[:400])


if __name__ == "__main__":
    main()
