"""U-Net forward fixture: noisegrad's U-Net vs the PyTorch replica of the DDPM model.

Usage (needs PyTorch + safetensors, and the replica `ref_unet.py`):
    PYTHONPATH=/opt/pt/site python3 scripts/fixtures_unet.py --ref ../shared/reference
Writes tests/fixtures/unet_forward.safetensors.

The replica is imported from where it lives, not copied. Its weights are set
by a closed formula of (parameter index in state_dict order, element index)
that tests/unet_reference.rs recomputes, so the fixture stores only inputs
and outputs (a few KB) instead of the weights.
"""
import argparse, math, os, sys

import torch
from safetensors.torch import save_file

# Small enough to keep the fixture tiny, yet it exercises every block type:
# two levels, a channel change (1x1 skip), attention at 8x8, down- and
# upsampling, skip concatenation. GroupNorm(32) is fixed in the replica.
CONFIG = dict(ch=32, ch_mult=(1, 2), nres=1, attn_res=(8,), dropout=0.1, res=16, in_ch=3)


def formula_weight(param_index, numel, kind, fan_in):
    """The values tests/unet_reference.rs computes: a deterministic sine pattern."""
    j = torch.arange(numel, dtype=torch.float64)
    wave = torch.sin(0.61 * j + 1.7 * param_index)
    if kind == "gain":  # GroupNorm weight
        return 1.0 + 0.1 * wave
    if kind == "bias":
        return 0.05 * wave
    return wave * (1.5 / math.sqrt(fan_in))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ref", required=True, help="folder holding ref_unet.py")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "unet_forward.safetensors"))
    args = ap.parse_args()
    sys.path.insert(0, args.ref)
    import ref_unet
    from ref_unet import UNet

    # The replica builds its time embedding in float32; the same formula in
    # float64 makes the fixture a high-precision reference.
    def embedding_f64(t, dim):
        half = dim // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float64) / (half - 1))
        args = t.double()[:, None] * freqs[None]
        return torch.cat([torch.sin(args), torch.cos(args)], dim=1)

    ref_unet.timestep_embedding = embedding_f64

    torch.manual_seed(0)
    model = UNet(**CONFIG).double().eval()
    sd = model.state_dict()
    with torch.no_grad():
        for i, (name, p) in enumerate(sd.items()):
            kind = "bias" if name.endswith("bias") else ("gain" if p.dim() == 1 else "weight")
            fan_in = p[0].numel() if p.dim() > 1 else 1
            p.copy_(formula_weight(i, p.numel(), kind, fan_in).reshape(p.shape))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 16, 16, generator=g, dtype=torch.float64)
    t = torch.tensor([3.0, 871.0], dtype=torch.float64)
    with torch.no_grad():
        y = model(x, t.long())
    save_file(
        {"x": x.float().contiguous(), "t": t.float(), "y": y.float().contiguous()},
        args.out,
        metadata={"config": repr(CONFIG), "param_order": ",".join(sd.keys()), "computed_in": "float64"},
    )
    print(f"wrote {args.out}: y std {y.std().item():.4f}, {len(sd)} parameter tensors")


if __name__ == "__main__":
    main()
