// Attention: the non-GEMM steps. The products (S = s·Q Kᵀ, O = P V and the
// five backward products) run on cuBLAS (see attention.rs); these kernels
// do the row softmax and the elementwise steps between them, on score
// matrices stored as `rows` contiguous rows of `n` floats.
//
// Every row index and element index is a long long: a chunk of scores can
// hold more than 2^31 floats.

// Row softmax in place, with the row's log-sum-exp:
//   P_rj = e^{S_rj − max_r} / Σ_j e^{S_rj − max_r},  lse_r = max_r + ln Σ_j e^{S_rj − max_r}
// (S already carries the scale, so lse is exactly the CPU's L_r = ln Σ_j e^{s·(QKᵀ)_rj}).
// Parallelised with one block per row (rows grid-strided over the blocks):
// the block's threads stride over the row three times (max, sum of exps,
// normalised write), reducing with block_max / block_sum. NaN scores are
// skipped by the max (fmaxf), as the CPU's row max does, and turn into NaN
// probabilities through the exp.
extern "C" __global__ void softmax_rows(float* s, float* lse, long long rows, int n) {
    __shared__ float scratch[32];
    for (long long r = blockIdx.x; r < rows; r += gridDim.x) {
        float* row = s + r * (long long)n;
        float mx = __int_as_float(0xff800000);  // -inf
        for (int j = threadIdx.x; j < n; j += blockDim.x) mx = fmaxf(mx, row[j]);
        mx = block_max(mx, scratch);
        float sum = 0.0f;
        for (int j = threadIdx.x; j < n; j += blockDim.x) sum += expf(row[j] - mx);
        sum = block_sum(sum, scratch);
        float inv = 1.0f / sum;
        for (int j = threadIdx.x; j < n; j += blockDim.x) row[j] = expf(row[j] - mx) * inv;
        if (threadIdx.x == 0) lse[r] = mx + logf(sum);
        // The next row's block_max writes `scratch` only after its own
        // __syncthreads, so no barrier is needed here.
    }
}

// Backward: P_rj = e^{S_rj − lse_r} in place (the forward's probabilities,
// rebuilt from recomputed scores and the saved lse, as the CPU does).
// Grid-stride over the rows·n elements.
extern "C" __global__ void exp_minus_lse(float* s, const float* lse, long long rows, int n) {
    long long total = rows * (long long)n;
    GRID_STRIDE(i, total) s[i] = expf(s[i] - lse[i / n]);
}

// Backward: dS_rj = P_rj · (dP_rj − D_r), written over dP (`ds` holds dP on
// entry). Grid-stride over the rows·n elements.
extern "C" __global__ void softmax_grad(const float* p, float* ds, const float* delta, long long rows, int n) {
    long long total = rows * (long long)n;
    GRID_STRIDE(i, total) ds[i] = p[i] * (ds[i] - delta[i / n]);
}

// Backward: D_r = Σ_e dO_re · O_re for the rows of all batch items. O is
// contiguous ([rows, width]); dO is any batched matrix view: row r is item
// b = r / rows_per_item, row i = r % rows_per_item, and element (b, i, e)
// lies at a[b·a_bs + i·a_ld + e] (a_trans = 0) or a[b·a_bs + e·a_ld + i]
// (a_trans = 1: the view is a transposed matrix, as the U-Net's token
// layout makes it). One block per row (grid-strided), threads stride over
// the row, block_sum.
extern "C" __global__ void row_dot(const float* a, long long a_ld, int a_trans, long long a_bs,
                                   const float* o, float* d, long long rows_per_item, long long rows,
                                   int width) {
    __shared__ float scratch[32];
    for (long long r = blockIdx.x; r < rows; r += gridDim.x) {
        long long b = r / rows_per_item, i = r - b * rows_per_item;
        const float* a_item = a + b * a_bs;
        const float* o_row = o + r * (long long)width;
        float acc = 0.0f;
        for (int e = threadIdx.x; e < width; e += blockDim.x) {
            long long at = a_trans ? (long long)e * a_ld + i : i * a_ld + e;
            acc += a_item[at] * o_row[e];
        }
        acc = block_sum(acc, scratch);
        if (threadIdx.x == 0) d[r] = acc;
    }
}
