"""Reference outputs for conv2d (tests/kernels_conv.rs).

For each case, x, w, b and an upstream gradient dy are drawn in float32; the
reference y = conv2d(x, w, b, stride, padding) and the gradients dx, dw, db
of Σ dy ⊙ y are computed by PyTorch autograd in float64 on those float32
values, then stored as float32 (so the only error in the reference is the
final rounding to f32). Each case also stores `<case>/geometry` =
[N, C, H, W, O, kh, kw, stride, padding] so the test needs no case list.

Run: PYTHONPATH=/opt/pt/site python3 scripts/fixtures_conv.py
"""

import pathlib

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

# name: (N, C, H, W, O, kh, kw, stride, padding)
CASES = {
    "k3_s1_p1": (2, 4, 6, 6, 5, 3, 3, 1, 1),  # U-Net 3×3 (Winograd path)
    "k3_s2_p1": (2, 4, 7, 7, 6, 3, 3, 2, 1),  # U-Net downsample, odd size
    "k1_s1_p0": (2, 6, 5, 5, 4, 1, 1, 1, 0),  # U-Net 1×1 (plain GEMM)
    "k3_s1_p1_5x7": (2, 3, 5, 7, 5, 3, 3, 1, 1),  # non-square, odd sizes
    "k3_s1_p0_c3o5_b1": (1, 3, 6, 6, 5, 3, 3, 1, 0),  # batch 1, no padding
    "k3_s1_p2": (1, 5, 5, 4, 3, 3, 3, 1, 2),  # Winograd with pad 2
    "k5_s1_p2": (2, 3, 6, 6, 4, 5, 5, 1, 2),  # 5×5 (im2col path)
    "k1_s2_p0": (2, 4, 6, 6, 3, 1, 1, 2, 0),  # 1×1 strided (im2col path)
    "k2x3_s2_p1": (1, 3, 6, 8, 4, 2, 3, 2, 1),  # non-square kernel
    "k3_s2_p1_c32": (1, 32, 8, 8, 16, 3, 3, 2, 1),  # K = 288 > one k-slice
    "k3_s1_p1_c260": (1, 260, 4, 4, 4, 3, 3, 1, 1),  # Winograd depth > slice
    "k3_s1_p1_34x34": (2, 2, 34, 34, 3, 3, 3, 1, 1),  # several tile chunks
    "k3_s1_p1_o20": (2, 8, 8, 8, 20, 3, 3, 1, 1),  # full and edge tiles
}


def main():
    torch.manual_seed(20240612)
    tensors = {}
    for name, (n, c, h, w, o, kh, kw, s, p) in CASES.items():
        x32 = torch.randn(n, c, h, w)
        w32 = torch.randn(o, c, kh, kw) * (c * kh * kw) ** -0.5
        b32 = torch.randn(o)
        x, wt, b = [t.double().requires_grad_() for t in (x32, w32, b32)]
        y = F.conv2d(x, wt, b, stride=s, padding=p)
        dy32 = torch.randn(y.shape)
        y.backward(dy32.double())
        values = {
            "geometry": torch.tensor([n, c, h, w, o, kh, kw, s, p], dtype=torch.float32),
            "x": x32,
            "w": w32,
            "b": b32,
            "dy": dy32,
            "y": y.detach(),
            "dx": x.grad,
            "dw": wt.grad,
            "db": b.grad,
        }
        for key, t in values.items():
            tensors[f"{name}/{key}"] = t.float().contiguous()
    out = pathlib.Path(__file__).resolve().parent.parent / "tests/fixtures/conv2d.safetensors"
    save_file(
        tensors,
        str(out),
        metadata={
            "source": "scripts/fixtures_conv.py",
            "reference": "torch.nn.functional.conv2d + autograd in float64, stored as float32",
        },
    )
    print(f"wrote {out} ({out.stat().st_size} bytes, {len(CASES)} cases)")


if __name__ == "__main__":
    main()
