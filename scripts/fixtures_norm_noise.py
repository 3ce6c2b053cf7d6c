"""Reference fixtures for group norm (+SiLU), nearest x2 upsampling and the
diffusion noise-schedule ops, computed with PyTorch in float64.

Inputs are stored as float32 (the values the f32 kernels see, exactly), the
reference outputs and gradients as float64 computed from those same values,
so one file checks both the f32 and the f64 paths.

Run from the repository root:
    PYTHONPATH=/opt/pt/site python3 scripts/fixtures_norm_noise.py
"""

import math
import os

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures")


def f32(t):
    return t.to(torch.float32).contiguous()


def f64(t):
    return t.to(torch.float64).contiguous()


def group_norm_fixtures(gen):
    # (shape, groups, eps, input offset): odd sizes, non-square maps, C not a
    # multiple of 8, batch 1, G = 1, G = C, a 1-D map and a real U-Net group
    # count; a large offset exercises the variance's stability.
    cases = [
        ([2, 6, 5, 3], 3, 1e-5, 0.0),
        ([1, 12, 4, 7], 1, 1e-6, 3.0),
        ([2, 10, 3, 3], 10, 1e-6, 0.0),
        ([1, 64, 8, 8], 32, 1e-6, 0.0),
        ([3, 5, 9], 5, 1e-5, -2.0),
        ([2, 16, 2, 5], 4, 1e-6, 40.0),
    ]
    tensors, meta = {}, {}
    for i, (shape, groups, eps, offset) in enumerate(cases):
        c = shape[1]
        x = f32(torch.randn(shape, generator=gen) * 1.5 + offset)
        gamma = f32(1.0 + 0.5 * torch.randn(c, generator=gen))
        beta = f32(0.5 * torch.randn(c, generator=gen))
        dy = f32(torch.randn(shape, generator=gen))
        name = f"c{i}"
        meta[name] = f"groups={groups};eps={eps!r}"
        tensors.update({f"{name}.x": x, f"{name}.gamma": gamma, f"{name}.beta": beta, f"{name}.dy": dy})
        for silu in (False, True):
            xd, gd, bd = (f64(t).requires_grad_(True) for t in (x, gamma, beta))
            y = F.group_norm(xd, groups, gd, bd, eps)
            if silu:
                y = F.silu(y)
            dx, dg, db = torch.autograd.grad(y, (xd, gd, bd), f64(dy))
            out = f"{name}.silu{int(silu)}"
            tensors.update({
                f"{out}.y": y.detach(), f"{out}.dx": dx, f"{out}.dgamma": dg, f"{out}.dbeta": db,
            })
    meta["cases"] = str(len(cases))
    save_file(tensors, os.path.join(OUT, "group_norm.safetensors"), metadata=meta)


def upsample_fixtures(gen):
    shapes = [[2, 3, 4, 5], [1, 5, 3, 7], [2, 16, 4, 4], [1, 1, 1, 1]]
    tensors = {}
    for i, shape in enumerate(shapes):
        x = f32(torch.randn(shape, generator=gen))
        xd = f64(x).requires_grad_(True)
        y = F.interpolate(xd, scale_factor=2, mode="nearest")
        dy = f32(torch.randn(y.shape, generator=gen))
        (dx,) = torch.autograd.grad(y, (xd,), f64(dy))
        tensors.update({f"c{i}.x": x, f"c{i}.dy": dy, f"c{i}.y": y.detach(), f"c{i}.dx": dx})
    save_file(tensors, os.path.join(OUT, "upsample.safetensors"), metadata={"cases": str(len(shapes))})


def noise_fixtures(gen):
    """DDPM linear schedule (T = 1000, β from 1e-4 to 0.02) at per-sample t."""
    T = 1000
    betas = torch.linspace(1e-4, 0.02, T, dtype=torch.float64)
    alphas = 1.0 - betas
    alpha_bar = torch.cumprod(alphas, 0)
    alpha_bar_prev = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bar[:-1]])
    t = torch.tensor([0, 10, 500, 999])
    n = len(t)
    shape = [n, 3, 5, 6]
    view = [n, 1, 1, 1]

    a, ab, abp = alphas[t], alpha_bar[t], alpha_bar_prev[t]
    beta = betas[t]
    # Posterior q(x_{t-1} | x_t, x_0): variance β̃ and mean coefficients.
    post_var = beta * (1.0 - abp) / (1.0 - ab)
    sigma = post_var.sqrt()
    c0 = beta * abp.sqrt() / (1.0 - ab)
    c1 = (1.0 - abp) * a.sqrt() / (1.0 - ab)
    # DDIM jumps 250 steps (to ᾱ = 1 past the start).
    t_ddim_prev = t - 250
    ab_ddim_prev = torch.where(t_ddim_prev >= 0, alpha_bar[t_ddim_prev.clamp(min=0)],
                               torch.ones(n, dtype=torch.float64))

    x0 = f32(torch.rand(shape, generator=gen) * 2 - 1)
    eps = f32(torch.randn(shape, generator=gen))
    eps_pred = f32(torch.randn(shape, generator=gen))
    x_t = f32(torch.randn(shape, generator=gen) * 1.5)
    z = f32(torch.randn(shape, generator=gen))
    X0, E, EP, XT, Z = (f64(v) for v in (x0, eps, eps_pred, x_t, z))
    v = lambda s: s.view(view)

    q = v(ab.sqrt()) * X0 + v((1 - ab).sqrt()) * E

    ep = EP.clone().requires_grad_(True)
    loss = ((ep - E) ** 2).mean()
    (dloss,) = torch.autograd.grad(loss, (ep,))

    ddpm = (XT - v(beta / (1 - ab).sqrt()) * EP) / v(a.sqrt()) + v(sigma) * Z

    x0_hat = ((XT - v((1 - ab).sqrt()) * EP) / v(ab.sqrt())).clamp(-1, 1)
    ddpm_clipped = v(c0) * x0_hat + v(c1) * XT + v(sigma) * Z

    def ddim(eta, clip):
        x0h = (XT - v((1 - ab).sqrt()) * EP) / v(ab.sqrt())
        if clip:
            x0h = x0h.clamp(-1, 1)
        p = ab_ddim_prev
        s = eta * ((1 - p) / (1 - ab)).sqrt() * (1 - ab / p).sqrt()
        return v(p.sqrt()) * x0h + v((1 - p - s * s).clamp(min=0).sqrt()) * EP + v(s) * Z

    tensors = {
        "alpha": a, "alpha_bar": ab, "alpha_bar_prev": abp, "sigma": sigma,
        "post_c0": c0, "post_c1": c1, "ddim_alpha_bar_prev": ab_ddim_prev,
        "x0": x0, "eps": eps, "eps_pred": eps_pred, "x_t": x_t, "z": z,
        "q_sample": q, "l_simple": loss.detach().reshape([]), "l_simple_grad": dloss,
        "ddpm": ddpm, "ddpm_clipped": ddpm_clipped,
        "ddim_eta0_clip": ddim(0.0, True), "ddim_eta0": ddim(0.0, False),
        "ddim_eta1": ddim(1.0, False), "ddim_eta05_clip": ddim(0.5, True),
    }
    tensors = {k: val.contiguous() for k, val in tensors.items()}
    save_file(tensors, os.path.join(OUT, "noise_ops.safetensors"))


def main():
    os.makedirs(OUT, exist_ok=True)
    gen = torch.Generator().manual_seed(20240611)
    group_norm_fixtures(gen)
    upsample_fixtures(gen)
    noise_fixtures(gen)


if __name__ == "__main__":
    main()
