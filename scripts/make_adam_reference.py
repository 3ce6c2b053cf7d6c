#!/usr/bin/env python3
"""Writes tests/fixtures/adam_reference.safetensors: torch.optim.Adam/AdamW
and torch.nn.utils.clip_grad_norm_ results on a tiny fixed problem, which
engine/tests/optim.rs compares noisegrad against.

Run from the repo root:
    PYTHONPATH=/opt/pt/site python3 scripts/make_adam_reference.py

Problem: two f32 parameters p [3, 4] and q [5], updated STEPS times with
fixed gradients gp[t], gq[t] (stored in the file). For each optimizer
configuration the file holds the final parameters and moments
(`<cfg>.p`, `<cfg>.q`, `<cfg>.m.p`, `<cfg>.v.p`, ...).
"""
import torch
from safetensors.torch import save_file

STEPS = 5
LR = 0.01
DECAY = 0.1
MAX_NORM = 0.5

torch.manual_seed(0)
p0 = torch.randn(3, 4)
q0 = torch.randn(5)
# Gradients of varied size, so clipping is active on some steps only.
gp = torch.randn(STEPS, 3, 4) * torch.tensor([0.05, 1.0, 0.2, 3.0, 0.01]).view(-1, 1, 1)
gq = torch.randn(STEPS, 5) * torch.tensor([0.05, 1.0, 0.2, 3.0, 0.01]).view(-1, 1)

CONFIGS = {
    "adam": lambda ps: torch.optim.Adam(ps, lr=LR),
    "adam_l2": lambda ps: torch.optim.Adam(ps, lr=LR, weight_decay=DECAY),
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=LR, weight_decay=DECAY),
    # Adam whose gradients are clipped to MAX_NORM before every step.
    "adam_clip": lambda ps: torch.optim.Adam(ps, lr=LR),
}

out = {"p0": p0, "q0": q0, "gp": gp, "gq": gq}
for name, make in CONFIGS.items():
    p = p0.clone().requires_grad_(True)
    q = q0.clone().requires_grad_(True)
    opt = make([p, q])
    norms = []
    for t in range(STEPS):
        p.grad = gp[t].clone()
        q.grad = gq[t].clone()
        if name == "adam_clip":
            norms.append(torch.nn.utils.clip_grad_norm_([p, q], MAX_NORM).item())
        opt.step()
    out[f"{name}.p"] = p.detach().clone()
    out[f"{name}.q"] = q.detach().clone()
    for pname, param in (("p", p), ("q", q)):
        st = opt.state[param]
        out[f"{name}.m.{pname}"] = st["exp_avg"].clone()
        out[f"{name}.v.{pname}"] = st["exp_avg_sq"].clone()
    if norms:
        out[f"{name}.norms"] = torch.tensor(norms, dtype=torch.float64)

# clip_grad_norm_ alone, on step 3's gradients (norm well above MAX_NORM).
p = p0.clone().requires_grad_(True)
q = q0.clone().requires_grad_(True)
p.grad, q.grad = gp[3].clone(), gq[3].clone()
norm = torch.nn.utils.clip_grad_norm_([p, q], MAX_NORM)
out["clip.norm"] = norm.to(torch.float64).reshape(())
out["clip.gp"] = p.grad.clone()
out["clip.gq"] = q.grad.clone()

meta = {
    "torch": torch.__version__,
    "steps": str(STEPS),
    "lr": str(LR),
    "weight_decay": str(DECAY),
    "max_norm": str(MAX_NORM),
    "betas": "0.9,0.999",
    "eps": "1e-8",
}
out = {k: v.contiguous() for k, v in out.items()}
save_file(out, "tests/fixtures/adam_reference.safetensors", metadata=meta)
print("wrote", len(out), "tensors; clip norm", norm.item(), "adam_clip norms", out["adam_clip.norms"].tolist())
