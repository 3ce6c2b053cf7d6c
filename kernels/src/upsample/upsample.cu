// Nearest-neighbour ×2 upsampling of [planes, h, w] maps (planes = N·C, all
// contiguous) and its adjoint, as `cpu::upsample`.

// y[pl, 2i + a, 2j + b] = x[pl, i, j] for a, b ∈ {0, 1}. One thread per
// output element (grid-stride over planes·2h·2w): stores are contiguous,
// and neighbouring threads read the same or the next input value.
extern "C" __global__ void upsample_nearest2x(const float* x, float* y, long long planes,
                                              long long h, long long w) {
    const long long w2 = 2 * w, h2 = 2 * h;
    const long long total = planes * h2 * w2;
    GRID_STRIDE(e, total) {
        const long long ow = e % w2;
        const long long r = e / w2;
        const long long oh = r % h2;
        const long long pl = r / h2;
        y[e] = x[(pl * h + oh / 2) * w + ow / 2];
    }
}

// dx[pl, i, j] = (dy[pl, 2i, 2j] + dy[pl, 2i+1, 2j]) + (dy[pl, 2i, 2j+1] + dy[pl, 2i+1, 2j+1]),
// the sum of the 2×2 block, added in the CPU kernel's order. One thread
// per input-gradient element (grid-stride over planes·h·w); a warp reads
// two runs of 64 contiguous values.
extern "C" __global__ void upsample_nearest2x_backward(const float* dy, float* dx, long long planes,
                                                       long long h, long long w) {
    const long long w2 = 2 * w;
    const long long total = planes * h * w;
    GRID_STRIDE(e, total) {
        const long long j = e % w;
        const long long r = e / w;
        const long long i = r % h;
        const long long pl = r / h;
        const float* top = dy + (pl * 2 * h + 2 * i) * w2 + 2 * j;
        const float* bottom = top + w2;
        dx[e] = (top[0] + bottom[0]) + (top[1] + bottom[1]);
    }
}
