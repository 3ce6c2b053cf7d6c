"""PyTorch counterparts of benches/cuda.rs, same shapes, same GPU, same run.

Each op is timed forward and forward+backward of sum(y * w), with a
torch.cuda.synchronize() per run (as the Rust bench does), fp32 and TF32.
Each timing is printed as soon as it is taken, one JSON object per line
({"name": "conv3x3_128ch_32x32/fp32/forward", "ms": ...}, the median), so a
run cut short keeps what it measured; the bench ids are benches/cuda.rs's.
Usage (on the GPU machine): python3 scripts/bench_cuda_pytorch.py > out.jsonl
`--device cpu --batch 2 --matmul 128 --reps 2` is the dry run's check that
the script works (not a measurement).
"""
import argparse
import json
import time

import torch
import torch.nn.functional as F

dev = "cuda"
B = 128
MATMUL = 4096
REPS, WARM = 20, 5


def sync():
    if dev == "cuda":
        torch.cuda.synchronize()


def timeit(fn):
    for _ in range(WARM):
        fn()
    sync()
    times = []
    for _ in range(REPS):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2] * 1e3  # median ms


def leaf(*shape):
    return torch.randn(*shape, device=dev, requires_grad=True)


def emit(name, ms):
    print(json.dumps({"name": name, "ms": ms}), flush=True)


def bench(name, inputs, f):
    w = torch.randn_like(f(*inputs))

    def fwd():
        with torch.no_grad():
            f(*inputs)

    def fwd_bwd():
        (f(*inputs) * w).sum().backward()
        for x in inputs:
            x.grad = None

    emit(f"{name}/forward", timeit(fwd))
    emit(f"{name}/forward+backward", timeit(fwd_bwd))


def attention(q, k, v):
    # The U-Net's single-head attention over 256 tokens of 256 channels.
    return F.scaled_dot_product_attention(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1)).squeeze(1)


def main():
    global dev, B, MATMUL, REPS, WARM
    ap = argparse.ArgumentParser(description="PyTorch twins of benches/cuda.rs")
    ap.add_argument("--device", default=dev)
    ap.add_argument("--batch", type=int, default=B)
    ap.add_argument("--matmul", type=int, default=MATMUL)
    ap.add_argument("--reps", type=int, default=REPS)
    args = ap.parse_args()
    dev, B, MATMUL, REPS, WARM = args.device, args.batch, args.matmul, args.reps, min(WARM, args.reps)
    name = torch.cuda.get_device_name(0) if dev == "cuda" else dev
    print(json.dumps({"device": name, "torch": torch.__version__, "batch": B}), flush=True)
    for mode in ["fp32", "tf32"]:
        torch.backends.cuda.matmul.allow_tf32 = mode == "tf32"
        torch.backends.cudnn.allow_tf32 = mode == "tf32"
        for ch, hw in [(128, 32), (256, 16)]:
            x, wt, b = leaf(B, ch, hw, hw), leaf(ch, ch, 3, 3), leaf(ch)
            bench(f"conv3x3_{ch}ch_{hw}x{hw}/{mode}", [x, wt, b], lambda x, w, b: F.conv2d(x, w, b, padding=1))
        q, k, v = leaf(B, 256, 256), leaf(B, 256, 256), leaf(B, 256, 256)
        bench(f"attention_256tok_256ch/{mode}", [q, k, v], attention)
        a, m = leaf(MATMUL, MATMUL), leaf(MATMUL, MATMUL)
        bench(f"matmul_4096/{mode}", [a, m], torch.matmul)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    x, g, b = leaf(B, 128, 32, 32), leaf(128), leaf(128)
    bench("group_norm_silu_128ch_32x32", [x, g, b], lambda x, g, b: F.silu(F.group_norm(x, 32, g, b, 1e-5)))
    bench("upsample_256ch_16x16", [leaf(B, 256, 16, 16)], lambda x: F.interpolate(x, scale_factor=2, mode="nearest"))


if __name__ == "__main__":
    main()
