"""PyTorch CPU timings of whole training steps, the counterparts of benches/train_step.rs.

    PYTHONPATH=/opt/pt/site python3 scripts/bench_train_step_pytorch.py --ref ../shared/reference

Uses the PyTorch replica of the DDPM U-Net (ref_unet.py, imported from where
it lives) and its train step (random t, q_sample, MSE, clip 1.0, Adam), as in
pytorch_anchors.py; 2 threads, median of repeats after warm-up.
"""
import argparse, json, statistics, sys, time

import torch
import torch.nn.functional as F


def median_time(fn, warmup, reps):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ref", required=True, help="folder holding ref_unet.py")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    sys.path.insert(0, args.ref)
    from ref_unet import UNet, make_schedule, train_step_fn

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    out = {}

    mlp = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.SiLU(), torch.nn.Linear(512, 512), torch.nn.SiLU(), torch.nn.Linear(512, 10))
    opt = torch.optim.Adam(mlp.parameters(), lr=1e-3)
    x, y = torch.randn(64, 256), torch.randn(64, 10)

    def mlp_step():
        loss = F.mse_loss(mlp(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    out["mlp_256-512-512-10_b64_ms"] = median_time(mlp_step, 20, 200) * 1e3

    for name, kw, batch in [("unet_small_b32", dict(ch=64, ch_mult=(1, 2, 2), nres=1, attn_res=(16,)), 32), ("unet_cifar10_b8", {}, 8)]:
        model = UNet(**kw).train()
        opt = torch.optim.Adam(model.parameters(), lr=2e-4)
        step = train_step_fn(model, opt, make_schedule(), 1000)
        xb = torch.randn(batch, 3, 32, 32).clamp(-1, 1)
        dt = median_time(lambda: step(xb), 2, args.reps)
        out[f"{name}_ms"] = dt * 1e3
        out[f"{name}_img_per_s"] = batch / dt
        print(name, f"{dt * 1e3:.1f} ms/step, {batch / dt:.2f} img/s", flush=True)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
