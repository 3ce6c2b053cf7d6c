"""FLOPs of one DDPM CIFAR-10 training step by op family (PyTorch's
FlopCounterMode on the reference U-Net, CPU is fine: FLOPs do not depend on
the device), and the bytes an im2col convolution moves through its column
buffers in one training step at batch 128 (forward, input gradient and
weight gradient each write and read the columns once; 1x1 stride-1
convolutions need none).
Usage: PYTHONPATH=<torch> python3 scripts/flop_breakdown.py --ref ../shared/reference
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

convs = []


def record(mod, inp, out):
    k, s = mod.kernel_size[0], mod.stride[0]
    if not (k == 1 and s == 1):
        convs.append(inp[0].shape[1] * k * k * out.shape[2] * out.shape[3] * 4)


for mod in m.modules():
    if isinstance(mod, torch.nn.Conv2d):
        mod.register_forward_hook(record)
with torch.no_grad():
    m(x[:1], t[:1])
column_bytes = sum(convs)
out = {
    "params": sum(p.numel() for p in m.parameters()),
    "train_gflop_per_img": total / B / 1e9,
    "by_op_gflop_per_img": {k: v / B / 1e9 for k, v in by_op.most_common()},
    "im2col_column_mb_per_img_per_pass": column_bytes / 1e6,
    "im2col_traffic_gb_per_step_b128": column_bytes * 2 * 3 * 128 / 1e9,
}
print(json.dumps(out, indent=1))
