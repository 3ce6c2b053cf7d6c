"""FLOPs of one DDPM CIFAR-10 training step by op family (PyTorch's
FlopCounterMode on the reference U-Net, CPU is fine: FLOPs do not depend on
the device). Usage: PYTHONPATH=<torch> python3 scripts/flop_breakdown.py --ref ../shared/reference
"""
import argparse
import collections
import json
import sys

p = argparse.ArgumentParser()
p.add_argument("--ref", default="../shared/reference")
p.add_argument("--batch", type=int, default=8)
args = p.parse_args()
sys.path.insert(0, args.ref)

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402
from ref_unet import UNet  # noqa: E402

torch.manual_seed(0)
m = UNet()
B = args.batch
x = torch.randn(B, 3, 32, 32)
t = torch.randint(0, 1000, (B,))
with FlopCounterMode(display=False) as fc:
    m(x, t).square().mean().backward()
by_op = collections.Counter()
for op, n in fc.get_flop_counts()["Global"].items():
    by_op[str(op).split(".")[1] if "." in str(op) else str(op)] += n
total = sum(by_op.values())
out = {
    "params": sum(p.numel() for p in m.parameters()),
    "train_gflop_per_img": total / B / 1e9,
    "by_op_gflop_per_img": {k: v / B / 1e9 for k, v in by_op.most_common()},
}
print(json.dumps(out, indent=1))
