"""Writes an inpainting example (README "Conditional diffusion and guidance"):
one Fashion-MNIST test image as a 28×28 grayscale PNG and masks (white = keep)
that hide its right half and its centre. Standard library only.

    python3 scripts/make_inpaint_example.py /usr/share/datasets/fashion-mnist INDEX OUTDIR
"""
import gzip
import struct
import sys
import zlib
from pathlib import Path


def png_gray(path, w, h, pixels):
    """A minimal 8-bit grayscale PNG (filter 0 on every row)."""
    raw = b"".join(b"\x00" + bytes(pixels[r * w:(r + 1) * w]) for r in range(h))

    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    Path(path).write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def main():
    root, index, out = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
    data = gzip.open(root / "t10k-images-idx3-ubyte.gz").read()
    n, h, w = struct.unpack(">III", data[4:16])
    assert 0 <= index < n, f"index {index} outside 0..{n}"
    img = data[16 + index * h * w:16 + (index + 1) * h * w]
    out.mkdir(parents=True, exist_ok=True)
    png_gray(out / "image.png", w, h, img)
    right_half = [255 if x < w // 2 else 0 for y in range(h) for x in range(w)]
    png_gray(out / "mask_right_half.png", w, h, right_half)
    centre = [0 if 7 <= x < 21 and 7 <= y < 21 else 255 for y in range(h) for x in range(w)]
    png_gray(out / "mask_centre.png", w, h, centre)


if __name__ == "__main__":
    main()
