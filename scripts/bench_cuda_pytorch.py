"""PyTorch counterparts of benches/cuda.rs, same shapes, same GPU, same run.

Each op is timed forward and forward+backward of sum(y * w), with a
torch.cuda.synchronize() per run (as the Rust bench does), fp32 and TF32.
Usage (on the GPU machine): python3 scripts/bench_cuda_pytorch.py > out.json
"""
import json
import time

import torch
import torch.nn.functional as F

dev = "cuda"
B = 128


def timeit(fn, reps=20, warm=5):
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2] * 1e3  # median ms


def leaf(*shape):
    return torch.randn(*shape, device=dev, requires_grad=True)


def bench(name, inputs, f, out):
    w = torch.randn_like(f(*inputs))

    def fwd():
        with torch.no_grad():
            f(*inputs)

    def fwd_bwd():
        (f(*inputs) * w).sum().backward()
        for x in inputs:
            x.grad = None

    out[f"{name}/forward_ms"] = timeit(fwd)
    out[f"{name}/forward+backward_ms"] = timeit(fwd_bwd)


def attention(q, k, v):
    # The U-Net's single-head attention over 256 tokens of 256 channels.
    return F.scaled_dot_product_attention(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1)).squeeze(1)


def main():
    out = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    for mode in ["fp32", "tf32"]:
        torch.backends.cuda.matmul.allow_tf32 = mode == "tf32"
        torch.backends.cudnn.allow_tf32 = mode == "tf32"
        for ch, hw in [(128, 32), (256, 16)]:
            x, wt, b = leaf(B, ch, hw, hw), leaf(ch, ch, 3, 3), leaf(ch)
            bench(f"conv3x3_{ch}ch_{hw}x{hw}/{mode}", [x, wt, b], lambda x, w, b: F.conv2d(x, w, b, padding=1), out)
        q, k, v = leaf(B, 256, 256), leaf(B, 256, 256), leaf(B, 256, 256)
        bench(f"attention_256tok_256ch/{mode}", [q, k, v], attention, out)
        a, m = leaf(4096, 4096), leaf(4096, 4096)
        bench(f"matmul_4096/{mode}", [a, m], torch.matmul, out)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    x, g, b = leaf(B, 128, 32, 32), leaf(128), leaf(128)
    bench("group_norm_silu_128ch_32x32", [x, g, b], lambda x, g, b: F.silu(F.group_norm(x, 32, g, b, 1e-5)), out)
    bench("upsample_256ch_16x16", [leaf(B, 256, 16, 16)], lambda x: F.interpolate(x, scale_factor=2, mode="nearest"), out)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
