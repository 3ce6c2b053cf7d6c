// Reductions (sum / max / min) and softmax, log-softmax and their backward.
//
// Every kernel reads a contiguous tensor seen as [outer, r, inner] (the
// reduced axis in the middle); the launchers in reduce.rs pick the kernel:
// - `_rows` kernels (inner == 1): one block per row, threads stride along
//   the row (coalesced), then a block reduction;
// - `_cols` kernels (inner > 1, or very short rows): one thread per output
//   element walking the reduced axis sequentially; neighbouring threads read
//   neighbouring columns, so every load of a warp is coalesced.
// Row and column loops over blocks/threads are grid-stride, so any size fits
// a bounded grid. Indices are `long long` throughout.

// Op codes of `reduce_code` in reduce.rs.
#define RED_SUM 0
#define RED_MAX 1
#define RED_MIN 2

__device__ __forceinline__ float red_init(int op) {
    if (op == RED_SUM) return 0.0f;
    return op == RED_MAX ? __int_as_float(0xff800000) : __int_as_float(0x7f800000);  // -inf / +inf
}

// Same rule as `ReduceOp::combine` on the CPU: NaN propagates through
// max/min (a NaN `a` stays because both comparisons are false).
__device__ __forceinline__ float red_combine(int op, float a, float b) {
    if (op == RED_SUM) return a + b;
    if (op == RED_MAX) return (isnan(b) || b > a) ? b : a;
    return (isnan(b) || b < a) ? b : a;
}

// Reduction over the block with `op`; every thread gets the result.
// `scratch` holds 32 floats of shared memory; blockDim.x is a multiple of 32.
// The leading __syncthreads makes back-to-back calls on one scratch safe.
__device__ __forceinline__ float block_reduce(int op, float v, float* scratch) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    for (int o = 16; o > 0; o >>= 1) v = red_combine(op, v, __shfl_xor_sync(0xffffffffu, v, o));
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : red_init(op);
    for (int o = 16; o > 0; o >>= 1) v = red_combine(op, v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

__device__ __forceinline__ long long min_ll(long long a, long long b) { return a < b ? a : b; }

// y[b] = op over x[row * r + k] for k in chunk p of the row, where
// b = row * chunks + p and chunk p is [p * chunk, min(r, (p + 1) * chunk)).
// With chunks == 1 this is a plain row reduction (x: [rows, r], y: [rows]);
// more chunks split long rows over several blocks (y: [rows, chunks], reduced
// again by a second launch). One block per (row, chunk), grid-stride over
// the `nblocks` = rows * chunks of them.
extern "C" __global__ void reduce_rows(int op, const float* x, float* y, long long r,
                                       long long chunk, long long chunks, long long nblocks) {
    __shared__ float scratch[32];
    for (long long b = blockIdx.x; b < nblocks; b += gridDim.x) {
        long long row = b / chunks;
        long long p = b - row * chunks;
        long long k0 = p * chunk;
        long long k1 = min_ll(r, k0 + chunk);
        const float* xr = x + row * r;
        float acc = red_init(op);
        for (long long k = k0 + threadIdx.x; k < k1; k += blockDim.x) acc = red_combine(op, acc, xr[k]);
        acc = block_reduce(op, acc, scratch);
        if (threadIdx.x == 0) y[b] = acc;
    }
}

// y[(o * chunks + p) * inner + i] = op over x[(o * r + k) * inner + i] for k
// in chunk p ([p * chunk, min(r, (p + 1) * chunk))). One thread per output
// element (n = outer * chunks * inner of them), sequential over its chunk;
// consecutive threads take consecutive i, so loads are coalesced.
extern "C" __global__ void reduce_cols(int op, const float* x, float* y, long long r, long long inner,
                                       long long chunk, long long chunks, long long n) {
    GRID_STRIDE(t, n) {
        long long q = t / inner;
        long long i = t - q * inner;
        long long o = q / chunks;
        long long p = q - o * chunks;
        long long k0 = p * chunk;
        long long k1 = min_ll(r, k0 + chunk);
        const float* xc = x + o * r * inner + i;
        float acc = red_init(op);
        for (long long k = k0; k < k1; ++k) acc = red_combine(op, acc, xc[k * inner]);
        y[t] = acc;
    }
}

// Softmax over rows of `dim` (x, y: [rows, dim]), as kernels/src/cpu/softmax.rs:
// m = max x (fmaxf ignores NaN like the CPU's f32::max), s = Σ e^{x-m};
// softmax y = e^{x-m} · (1/s), log-softmax y = x − (m + ln s).
// One block per row (grid-stride over rows), three coalesced passes.
extern "C" __global__ void softmax_rows(const float* x, float* y, long long rows, long long dim, int log_) {
    __shared__ float scratch[32];
    for (long long row = blockIdx.x; row < rows; row += gridDim.x) {
        const float* xr = x + row * dim;
        float* yr = y + row * dim;
        float mx = __int_as_float(0xff800000);
        for (long long k = threadIdx.x; k < dim; k += blockDim.x) mx = fmaxf(mx, xr[k]);
        mx = block_max(mx, scratch);
        float s = 0.0f;
        for (long long k = threadIdx.x; k < dim; k += blockDim.x) s += expf(xr[k] - mx);
        s = block_sum(s, scratch);
        if (log_) {
            float lse = mx + logf(s);
            for (long long k = threadIdx.x; k < dim; k += blockDim.x) yr[k] = xr[k] - lse;
        } else {
            float inv = 1.0f / s;
            for (long long k = threadIdx.x; k < dim; k += blockDim.x) yr[k] = expf(xr[k] - mx) * inv;
        }
    }
}

// Softmax along the middle axis of x: [outer, dim, inner], same formulas as
// softmax_rows. One thread per (o, i) column (n = outer * inner), sequential
// over dim in the CPU's order; consecutive threads read consecutive i.
extern "C" __global__ void softmax_cols(const float* x, float* y, long long dim, long long inner,
                                        long long n, int log_) {
    GRID_STRIDE(t, n) {
        long long o = t / inner;
        long long i = t - o * inner;
        const float* xc = x + o * dim * inner + i;
        float* yc = y + o * dim * inner + i;
        float mx = __int_as_float(0xff800000);
        for (long long j = 0; j < dim; ++j) mx = fmaxf(mx, xc[j * inner]);
        float s = 0.0f;
        for (long long j = 0; j < dim; ++j) s += expf(xc[j * inner] - mx);
        if (log_) {
            float lse = mx + logf(s);
            for (long long j = 0; j < dim; ++j) yc[j * inner] = xc[j * inner] - lse;
        } else {
            float inv = 1.0f / s;
            for (long long j = 0; j < dim; ++j) yc[j * inner] = expf(xc[j * inner] - mx) * inv;
        }
    }
}

// Backward of softmax over rows (y, g, dx: [rows, dim]):
// softmax: s = Σ g·y, dx = y (g − s); log-softmax: s = Σ g, dx = g − e^y s.
// One block per row (grid-stride over rows), two coalesced passes.
extern "C" __global__ void softmax_backward_rows(const float* y, const float* g, float* dx,
                                                 long long rows, long long dim, int log_) {
    __shared__ float scratch[32];
    for (long long row = blockIdx.x; row < rows; row += gridDim.x) {
        const float* yr = y + row * dim;
        const float* gr = g + row * dim;
        float* dr = dx + row * dim;
        float s = 0.0f;
        for (long long k = threadIdx.x; k < dim; k += blockDim.x) s += log_ ? gr[k] : gr[k] * yr[k];
        s = block_sum(s, scratch);
        for (long long k = threadIdx.x; k < dim; k += blockDim.x)
            dr[k] = log_ ? gr[k] - expf(yr[k]) * s : yr[k] * (gr[k] - s);
    }
}

// Backward of softmax along the middle axis of [outer, dim, inner], same
// formulas as softmax_backward_rows; one thread per (o, i) column
// (n = outer * inner), sequential over dim.
extern "C" __global__ void softmax_backward_cols(const float* y, const float* g, float* dx,
                                                 long long dim, long long inner, long long n, int log_) {
    GRID_STRIDE(t, n) {
        long long o = t / inner;
        long long i = t - o * inner;
        long long base = o * dim * inner + i;
        float s = 0.0f;
        for (long long j = 0; j < dim; ++j) {
            long long at = base + j * inner;
            s += log_ ? g[at] : g[at] * y[at];
        }
        for (long long j = 0; j < dim; ++j) {
            long long at = base + j * inner;
            dx[at] = log_ ? g[at] - expf(y[at]) * s : y[at] * (g[at] - s);
        }
    }
}
