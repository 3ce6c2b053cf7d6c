// 2-D convolution (NCHW) as im2col + cuBLAS GEMM; the GEMMs are queued by
// conv.rs, these kernels move data around them. Same definition as
// `cpu::conv`: y[n,o,oh,ow] = b[o] + Σ w[o,c,ki,kj]·x[n,c,oh·s+ki−p, ow·s+kj−p]
// with zero padding. K = C·KH·KW (rows of the column matrix), P = Ho·Wo.
//
// Flat indices, image indices and buffer offsets are `long long`. Indices
// inside one image (k < K, p < P, an offset < C·H·W, a padded coordinate
// < H + 2·pad) are `int`: conv.rs checks that K, P, C·H·W, H + 2·pad and
// W + 2·pad fit in an i32, and 32-bit division is several times cheaper
// than 64-bit division, which these index decompositions are made of.

// The column matrices of `count` images of x (x points at the chunk's first
// image, [count, C, H, W] contiguous): col(i)[k, p] with k = (c·KH + ki)·KW + kj,
// p = oh·Wo + ow, holding x[i, c, oh·s + ki − pad, ow·s + kj − pad] or 0 in
// the padding. Two layouts, both written in order (col[e], e the thread's
// flat index, so every store is coalesced):
//   images_first = 1: [count, K, P] (one K×P matrix per image, forward and
//                     input-gradient GEMMs batched over images);
//   images_first = 0: [K, count, P] = [K, count·P] (one wide matrix for the
//                     weight-gradient GEMM, which then sums over the chunk).
// Grid-stride over the count·K·P entries; neighbouring threads take
// neighbouring output pixels, so reads of x are contiguous (stride 1) or
// strided by s.
extern "C" __global__ void im2col(const float* x, float* col, long long count, int images_first,
                                  int C, int H, int W, int KH, int KW, int stride, int pad,
                                  int Ho, int Wo) {
    const long long P = (long long)Ho * Wo;
    const long long K = (long long)C * KH * KW;
    const long long total = count * K * P;
    const int taps = KH * KW;
    GRID_STRIDE(e, total) {
        const long long row = e / P;  // (i, k) or (k, i), as laid out
        const int p = (int)(e - row * P);
        long long i;
        int k;
        if (images_first) {
            i = row / K;
            k = (int)(row - i * K);
        } else {
            const long long kk = row / count;
            i = row - kk * count;
            k = (int)kk;
        }
        const int c = k / taps, tap = k - c * taps;
        const int ki = tap / KW, kj = tap - ki * KW;
        const int oh = p / Wo, ow = p - oh * Wo;
        const int ih = oh * stride + ki - pad;
        const int iw = ow * stride + kj - pad;
        float v = 0.0f;
        if (ih >= 0 && ih < H && iw >= 0 && iw < W) {
            v = x[((i * C + c) * H + ih) * W + iw];
        }
        col[e] = v;
    }
}

// The adjoint of im2col (images_first layout) as a gather: dx[i, c, ih, iw]
// is the sum of the column entries dcol(i)[(c·KH + ki)·KW + kj, oh·Wo + ow]
// that read it, i.e. over the taps with ih = oh·s + ki − pad and
// iw = ow·s + kj − pad for an in-range (oh, ow). One thread per input
// element (grid-stride over count·C·H·W), each looping over the KH·KW taps:
// no atomics, a fixed summation order, so the result is deterministic.
extern "C" __global__ void col2im(const float* dcol, float* dx, long long count,
                                  int C, int H, int W, int KH, int KW, int stride, int pad,
                                  int Ho, int Wo) {
    const long long P = (long long)Ho * Wo;
    const long long K = (long long)C * KH * KW;
    const long long chw = (long long)C * H * W;
    const long long total = count * chw;
    GRID_STRIDE(e, total) {
        const long long i = e / chw;
        const int rem = (int)(e - i * chw);
        const int iw = rem % W;
        const int r = rem / W;
        const int ih = r % H;
        const int c = r / H;
        // Rows (c, 0, 0) .. (c, KH−1, KW−1) of image i's K×P column matrix.
        const float* rows = dcol + i * K * P + (long long)c * KH * KW * P;
        float s = 0.0f;
        for (int ki = 0; ki < KH; ++ki) {
            const int th = ih + pad - ki;  // = oh·s when tap ki of output row oh reads row ih
            if (th < 0 || th % stride != 0) continue;
            const int oh = th / stride;
            if (oh >= Ho) continue;
            for (int kj = 0; kj < KW; ++kj) {
                const int tw = iw + pad - kj;
                if (tw < 0 || tw % stride != 0) continue;
                const int ow = tw / stride;
                if (ow >= Wo) continue;
                s += rows[(long long)(ki * KW + kj) * P + (long long)oh * Wo + ow];
            }
        }
        dx[e] = s;
    }
}

// y[n, o, p] += bias[o] over the whole [N, O, P] output, grid-stride.
extern "C" __global__ void add_bias(float* y, const float* bias, long long O, long long P,
                                    long long total) {
    GRID_STRIDE(e, total) y[e] += bias[(e / P) % O];
}

// db[o] = Σ_{n, p} dy[n, o, p]: one block per output channel o; the block's
// threads stride over the channel's N·P values (contiguous within each
// image's plane, so reads coalesce), accumulate in double and finish with a
// block reduction. Fixed order, so deterministic.
extern "C" __global__ void bias_grad(const float* dy, float* db, long long N, long long O,
                                     long long P) {
    __shared__ double scratch[32];
    const long long o = blockIdx.x;
    const long long np = N * P;
    double s = 0.0;
    for (long long j = threadIdx.x; j < np; j += blockDim.x) {
        const long long n = j / P;
        const long long p = j - n * P;
        s += (double)dy[(n * O + o) * P + p];
    }
    s = block_sum_d(s, scratch);
    if (threadIdx.x == 0) db[o] = (float)s;
}
