"""Reference outputs for the attention kernel (tests/kernels_attention.rs).

For each case, q, k, v and an upstream gradient g are drawn in float32; the
reference O = softmax(s·Q Kᵀ) V and its gradients dq, dk, dv (of Σ g ⊙ O) are
computed by PyTorch autograd in float64 on those float32 values, then stored
as float32. The float64 result is checked against
torch.nn.functional.scaled_dot_product_attention before it is written.

Run: PYTHONPATH=/opt/pt/site python3 scripts/fixtures_attention.py
"""

import json
import math
import pathlib

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

# name: (batch, q tokens, kv tokens, qk channels, v channels, scale or None,
#        input magnitude)
CASES = {
    "b1_t16_c8": (1, 16, 16, 8, 8, None, 1.0),  # 4×4 feature map
    "b3_t64_c16": (3, 64, 64, 16, 16, None, 1.0),  # 8×8
    "b3_t20_c12": (3, 20, 20, 12, 12, None, 1.0),  # T, C not tile multiples
    "b1_t35_c12": (1, 35, 35, 12, 12, None, 1.0),
    "b2_t35_c24_peaked": (2, 35, 35, 24, 24, None, 3.0),  # large logits
    "b2_t20_c12_scale": (2, 20, 20, 12, 12, 0.3, 1.0),  # explicit scale
    "b2_q20_kv35_cross": (2, 20, 35, 12, 20, None, 1.0),  # M≠N, E≠C
    "b1_t256_c32_unet": (1, 256, 256, 32, 32, None, 1.0),  # 16×16 map
    "b2_t100_c8": (2, 100, 100, 8, 8, None, 1.0),  # several 64-row tiles
}


def attention(q, k, v, scale):
    s = (q @ k.transpose(-1, -2)) * scale
    return torch.softmax(s, dim=-1) @ v


def main():
    torch.manual_seed(20240611)
    tensors, meta = {}, {}
    for name, (b, m, n, c, e, scale, mag) in CASES.items():
        f32 = [
            torch.randn(shape) * mag
            for shape in [(b, m, c), (b, n, c), (b, n, e)]
        ]
        g = torch.randn(b, m, e)
        s = scale if scale is not None else 1.0 / math.sqrt(c)
        q, k, v = [x.double().requires_grad_() for x in f32]
        out = attention(q, k, v, s)
        out.backward(g.double())
        sdpa = F.scaled_dot_product_attention(
            q.detach(), k.detach(), v.detach(), scale=s
        )
        assert torch.allclose(out.detach(), sdpa, atol=1e-12), name
        values = {
            "q": f32[0],
            "k": f32[1],
            "v": f32[2],
            "g": g,
            "out": out.detach(),
            "dq": q.grad,
            "dk": k.grad,
            "dv": v.grad,
        }
        for key, t in values.items():
            tensors[f"{name}.{key}"] = t.float().contiguous()
        meta[f"{name}.scale"] = repr(s)
    meta["cases"] = json.dumps(list(CASES))
    path = pathlib.Path(__file__).resolve().parent.parent / "tests/fixtures/attention.safetensors"
    save_file(tensors, str(path), metadata=meta)
    print(f"wrote {path} ({path.stat().st_size} bytes, {len(CASES)} cases)")


if __name__ == "__main__":
    main()
