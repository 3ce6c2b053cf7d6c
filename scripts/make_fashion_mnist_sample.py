"""Writes assets/fashion-mnist-sample/: a class-balanced subset of Fashion-MNIST
(Xiao, Rasul & Vollgraf 2017, MIT licence) as IDX .gz files, the format of the
originals: the first PER_CLASS train images of each class (in file order) and
the first TEST_PER_CLASS test images of each class.

Usage: python3 scripts/make_fashion_mnist_sample.py [/usr/share/datasets/fashion-mnist]
"""
import gzip, struct, sys, os

SRC = sys.argv[1] if len(sys.argv) > 1 else "/usr/share/datasets/fashion-mnist"
DST = os.path.join(os.path.dirname(__file__), "..", "assets", "fashion-mnist-sample")
PER_CLASS, TEST_PER_CLASS = 300, 100


def read(name):
    with gzip.open(os.path.join(SRC, name), "rb") as f:
        return f.read()


def subset(prefix, per_class):
    images, labels = read(f"{prefix}-images-idx3-ubyte.gz"), read(f"{prefix}-labels-idx1-ubyte.gz")
    n, rows, cols = struct.unpack(">III", images[4:16])
    size = rows * cols
    counts, keep = [0] * 10, []
    for i in range(n):
        y = labels[8 + i]
        if counts[y] < per_class:
            counts[y] += 1
            keep.append(i)
    img = struct.pack(">IIII", 0x803, len(keep), rows, cols) + b"".join(
        images[16 + i * size : 16 + (i + 1) * size] for i in keep)
    lab = struct.pack(">II", 0x801, len(keep)) + bytes(labels[8 + i] for i in keep)
    for name, data in ((f"{prefix}-images-idx3-ubyte.gz", img), (f"{prefix}-labels-idx1-ubyte.gz", lab)):
        # mtime=0: the same bytes on every run.
        with open(os.path.join(DST, name), "wb") as f:
            f.write(gzip.compress(data, compresslevel=9, mtime=0))


os.makedirs(DST, exist_ok=True)
subset("train", PER_CLASS)
subset("t10k", TEST_PER_CLASS)
