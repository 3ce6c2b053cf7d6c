#!/usr/bin/env python3
"""safetensors interoperability with PyTorch, both directions.

Write the fixture that engine/tests/io.rs reads (run from the repo root):
    PYTHONPATH=/opt/pt/site python3 scripts/make_safetensors_fixture.py

Check that PyTorch reads a file noisegrad wrote (manual, not in CI):
    NOISEGRAD_TORCH_CHECK=/tmp/ng.safetensors \
        cargo test -p noisegrad-engine --test io -- --ignored write_file_for_pytorch
    PYTHONPATH=/opt/pt/site python3 scripts/make_safetensors_fixture.py --check /tmp/ng.safetensors
"""
import sys

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

FIXTURE = "tests/fixtures/torch_written.safetensors"


def expected():
    """The tensors of both files: arange-based, so every value is known."""
    return {
        "arange": torch.arange(6, dtype=torch.float32).reshape(2, 3),
        "scaled": torch.arange(4, dtype=torch.float32) * 0.25 - 0.5,
        "double": torch.arange(3, dtype=torch.float64) / 3.0,
        "scalar": torch.tensor(3.5, dtype=torch.float32),
        "down.0.conv.weight": torch.arange(8, dtype=torch.float32).reshape(2, 2, 2, 1) - 4.0,
    }


METADATA = {"format": "pt", "producer": "scripts/make_safetensors_fixture.py"}


def half_precision():
    """Only in the fixture (noisegrad writes f32/f64): loaded widened to f32.
    6e-8 is an f16 subnormal (2^-24 ≈ 5.96e-8)."""
    return {
        "half": torch.tensor([-1.0, 0.5, 65504.0, 6e-8], dtype=torch.float16),
        "bhalf": torch.tensor([-1.0, 0.5, 3.0e38, 1.0 / 3.0], dtype=torch.bfloat16),
    }


def write_fixture():
    save_file({**expected(), **half_precision()}, FIXTURE, metadata=METADATA)
    for name, t in half_precision().items():
        print(name, [float(x) for x in t.float()])
    print("wrote", FIXTURE)


def check(path):
    loaded = load_file(path)
    want = expected()
    assert set(loaded) == set(want), f"names differ: {sorted(loaded)} vs {sorted(want)}"
    for name, t in want.items():
        got = loaded[name]
        assert got.dtype == t.dtype, f"{name}: dtype {got.dtype} vs {t.dtype}"
        assert got.shape == t.shape, f"{name}: shape {tuple(got.shape)} vs {tuple(t.shape)}"
        assert torch.equal(got, t), f"{name}: values differ\n{got}\n{t}"
    with safe_open(path, framework="pt") as f:
        meta = f.metadata()
    assert meta == {"writer": "noisegrad", "note": "interop check"}, meta
    print(f"OK: PyTorch read {len(loaded)} tensors and metadata {meta} from {path}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--check":
        check(sys.argv[2])
    elif len(sys.argv) == 1:
        write_fixture()
    else:
        sys.exit(__doc__)
