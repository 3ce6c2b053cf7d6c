"""diffusers interop fixture: a small UNet2DModel in the DDPM CIFAR-10 layout.

Usage (needs torch, diffusers and safetensors):
    PYTHONPATH=/work/pydeps python3 scripts/fixtures_diffusers.py
Writes tests/fixtures/diffusers_unet/{config.json, diffusion_pytorch_model.safetensors,
io.safetensors}: a diffusers model folder (UNet2DModel.from_pretrained reads it)
and the input x, t with the model's output y.

The layout is google/ddpm-cifar10-32's (4 levels, 2 ResBlocks each,
attention at 16x16 only, one head, sin-first embedding with freq_shift 1,
downsample_padding 0, i.e. TF 'SAME' stride-2 convs) with 1/8 of its
channels. The weights are random (every tensor, so every block matters) and
rounded to float16 before use, so they are stored exactly in half the bytes;
the output is computed in float64. diffusers computes its sinusoidal
embedding in float32 whatever the model dtype; the fixture patches in the
same formula (get_timestep_embedding, same arguments) in float64, so it is a
high-precision reference. tests/diffusers_interop.rs compares noisegrad's
forward pass on these weights with y.
"""
import json, math, os

import torch
import diffusers.models.embeddings as emb_mod
from diffusers import UNet2DModel
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "diffusers_unet")

CONFIG = dict(
    sample_size=32,
    in_channels=3,
    out_channels=3,
    block_out_channels=(16, 32, 32, 32),
    layers_per_block=2,
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=None,
    norm_num_groups=8,
    norm_eps=1e-6,
    downsample_padding=0,
    flip_sin_to_cos=False,
    freq_shift=1,
    time_embedding_type="positional",
    act_fn="silu",
    mid_block_scale_factor=1,
    resnet_time_scale_shift="default",
    dropout=0.1,
)


def embedding_f64(timesteps, embedding_dim, flip_sin_to_cos=False, downscale_freq_shift=1, scale=1, max_period=10000):
    """diffusers' get_timestep_embedding, in float64."""
    half = embedding_dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float64) / (half - downscale_freq_shift)
    args = scale * timesteps[:, None].double() * torch.exp(exponent)[None]
    e = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
    if flip_sin_to_cos:
        e = torch.cat([e[:, half:], e[:, :half]], dim=-1)
    return e


def main():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = UNet2DModel(**CONFIG).double().eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g, dtype=torch.float64)
            if name.endswith("bias"):
                v = 0.05 * r
            elif p.dim() == 1:  # GroupNorm gain
                v = 1.0 + 0.1 * r
            else:
                v = r * (1.0 / math.sqrt(p[0].numel()))
            p.copy_(v.half().double())  # exactly representable in float16
    x = torch.randn(2, 3, 32, 32, generator=g, dtype=torch.float64)
    t = torch.tensor([7, 815])
    emb_mod.get_timestep_embedding = embedding_f64
    with torch.no_grad():
        y = model(x, t).sample
    os.makedirs(OUT, exist_ok=True)
    weights = {n: p.detach().half().contiguous() for n, p in model.state_dict().items()}
    save_file(weights, os.path.join(OUT, "diffusion_pytorch_model.safetensors"), metadata={"format": "pt"})
    model.save_config(OUT)
    save_file(
        {"x": x.float().contiguous(), "t": t.float(), "y": y.float().contiguous()},
        os.path.join(OUT, "io.safetensors"),
        metadata={"computed_in": "float64", "diffusers_class": "UNet2DModel"},
    )
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {OUT}: {len(weights)} tensors, {n} parameters, y std {y.std().item():.4f}, max |y| {y.abs().max().item():.4f}")


if __name__ == "__main__":
    main()
