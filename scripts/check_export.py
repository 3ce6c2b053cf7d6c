"""Checks `noisegrad export` output with PyTorch and diffusers.

Usage (needs torch, diffusers, safetensors):
    PYTHONPATH=/work/pydeps python3 scripts/check_export.py \
        --pytorch model.safetensors --diffusers-dir DIR --ch 16 --ch-mult 1,2 --nres 1 --attn 16 --groups 8
1. loads the PyTorch export into a PyTorch replica of noisegrad's U-Net
   (the DDPM model, same parameter names) with load_state_dict(strict=True);
2. loads DIR (config.json + diffusion_pytorch_model.safetensors from
   `export --format diffusers`) with UNet2DModel.from_pretrained and checks
   that both PyTorch models, holding the same weights under different
   names, give the same output on one input.
"""
import argparse, math

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file

GROUPS = 32


def timestep_embedding(t, dim):
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float64) / (half - 1))
    args = t.double()[:, None] * freqs[None]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


def gn(c):
    return nn.GroupNorm(GROUPS, c, eps=1e-6)


class ResBlock(nn.Module):
    def __init__(self, cin, cout, temb):
        super().__init__()
        self.n1, self.c1 = gn(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.t = nn.Linear(temb, cout)
        self.n2, self.c2 = gn(cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, temb):
        h = self.c1(F.silu(self.n1(x)))
        h = h + self.t(F.silu(temb))[:, :, None, None]
        return self.skip(x) + self.c2(F.silu(self.n2(h)))


class Attn(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.n, self.qkv, self.o = gn(c), nn.Conv2d(c, 3 * c, 1), nn.Conv2d(c, c, 1)

    def forward(self, x):
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.n(x)).reshape(B, 3, C, H * W).unbind(1)
        h = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return x + self.o(h.transpose(1, 2).reshape(B, C, H, W))


class UNet(nn.Module):
    """noisegrad's U-Net (copied from the reference replica), with its padding choice."""

    def __init__(self, ch, ch_mult, nres, attn_res, res, in_ch=3, tf_same=False):
        super().__init__()
        self.ch, self.tf_same, temb = ch, tf_same, ch * 4
        self.temb = nn.Sequential(nn.Linear(ch, temb), nn.SiLU(), nn.Linear(temb, temb))
        self.cin = nn.Conv2d(in_ch, ch, 3, padding=1)
        self.down, chans, c, r = nn.ModuleList(), [ch], ch, res
        for i, m in enumerate(ch_mult):
            for _ in range(nres):
                blk = nn.ModuleList([ResBlock(c, ch * m, temb)])
                c = ch * m
                if r in attn_res:
                    blk.append(Attn(c))
                self.down.append(blk)
                chans.append(c)
            if i != len(ch_mult) - 1:
                self.down.append(nn.ModuleList([nn.Conv2d(c, c, 3, stride=2, padding=0 if tf_same else 1)]))
                chans.append(c)
                r //= 2
        self.mid1, self.mida, self.mid2 = ResBlock(c, c, temb), Attn(c), ResBlock(c, c, temb)
        self.up = nn.ModuleList()
        for i, m in reversed(list(enumerate(ch_mult))):
            for _ in range(nres + 1):
                blk = nn.ModuleList([ResBlock(c + chans.pop(), ch * m, temb)])
                c = ch * m
                if r in attn_res:
                    blk.append(Attn(c))
                self.up.append(blk)
            if i != 0:
                self.up.append(nn.ModuleList([nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c, c, 3, padding=1)]))
                r *= 2
        self.nout, self.cout = gn(c), nn.Conv2d(c, in_ch, 3, padding=1)

    def forward(self, x, t):
        temb = self.temb(timestep_embedding(t, self.ch).to(x.dtype))
        hs = [self.cin(x)]
        for blk in self.down:
            if isinstance(blk[0], ResBlock):
                h = blk[0](hs[-1], temb)
                for a in blk[1:]:
                    h = a(h)
            else:
                h = blk[0](F.pad(hs[-1], (0, 1, 0, 1)) if self.tf_same else hs[-1])
            hs.append(h)
        h = self.mid2(self.mida(self.mid1(hs[-1], temb)), temb)
        for blk in self.up:
            if isinstance(blk[0], ResBlock):
                h = blk[0](torch.cat([h, hs.pop()], 1), temb)
                for a in blk[1:]:
                    h = a(h)
            else:
                h = blk[1](blk[0](h))
        return self.cout(F.silu(self.nout(h)))


def main():
    global GROUPS
    ap = argparse.ArgumentParser()
    ap.add_argument("--pytorch", required=True)
    ap.add_argument("--diffusers-dir")
    ap.add_argument("--ch", type=int, default=16)
    ap.add_argument("--ch-mult", default="1,2")
    ap.add_argument("--nres", type=int, default=1)
    ap.add_argument("--attn", default="16")
    ap.add_argument("--groups", type=int, default=8)
    ap.add_argument("--res", type=int, default=32)
    ap.add_argument("--tf-same", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(1)
    GROUPS = a.groups
    model = UNet(a.ch, [int(m) for m in a.ch_mult.split(",")], a.nres, [int(r) for r in a.attn.split(",")], a.res, tf_same=a.tf_same)
    sd = load_file(a.pytorch)
    model.load_state_dict(sd, strict=True)
    print(f"{a.pytorch}: {len(sd)} tensors load into the U-Net replica with strict=True")
    if a.diffusers_dir:
        from diffusers import UNet2DModel
        dm = UNet2DModel.from_pretrained(a.diffusers_dir).double().eval()
        model = model.double().eval()
        g = torch.Generator().manual_seed(0)
        x = torch.randn(2, 3, a.res, a.res, generator=g, dtype=torch.float64)
        t = torch.tensor([10, 900])
        with torch.no_grad():
            y1, y2 = model(x, t), dm(x, t).sample
        err = (y1 - y2).abs().max().item()
        print(f"{a.diffusers_dir}: UNet2DModel.from_pretrained output vs the replica: max |diff| {err:.2e} (max |y| {y1.abs().max().item():.3f})")
        assert err < 1e-3, err


if __name__ == "__main__":
    main()
