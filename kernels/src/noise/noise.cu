// Fused noise-schedule kernels for diffusion (kernels/src/cpu/noise.rs):
// forward noising, the L_simple loss with its gradient, and the reverse
// step. Tensors are contiguous `[N, per-sample...]`: element i belongs to
// sample i / per, whose scalars come from a small per-sample table.
//
// The CPU rounds every product and sum separately (Rust never contracts
// a·b + c into an FMA), while NVRTC contracts by default; the _rn
// intrinsics below forbid that, so both devices compute the same floats.
#define MUL(a, b) __fmul_rn(a, b)
#define ADD(a, b) __fadd_rn(a, b)
#define SUB(a, b) __fsub_rn(a, b)

// x_t = √ᾱ·x_0 + √(1−ᾱ)·ε with coefs[2k] = √ᾱ and coefs[2k+1] = √(1−ᾱ) of
// sample k. Grid-stride loop over the n elements.
extern "C" __global__ void q_sample(const float* x0, const float* eps, const float* coefs,
                                    long long per, long long n, float* out) {
    GRID_STRIDE(i, n) {
        long long k = i / per;
        out[i] = ADD(MUL(coefs[2 * k], x0[i]), MUL(coefs[2 * k + 1], eps[i]));
    }
}

// Σ (pred − eps)² over n elements, one f64 partial per block (written to
// partials[blockIdx.x]), and, when grad is non-null, grad = scale·(pred − eps)
// in the same pass (scale = 2/numel). Grid-stride loop, block_sum_d.
// The squares are summed in f64 (the CPU sums f32 lanes, then f64 chunks:
// the two agree to f32 rounding of the partial sums).
extern "C" __global__ void l_simple_partials(const float* pred, const float* eps, long long n,
                                             float scale, float* grad, double* partials) {
    __shared__ double scratch[32];
    double acc = 0.0;
    GRID_STRIDE(i, n) {
        float d = SUB(pred[i], eps[i]);
        acc += (double)d * (double)d;
        if (grad) grad[i] = MUL(scale, d);
    }
    acc = block_sum_d(acc, scratch);
    if (threadIdx.x == 0) partials[blockIdx.x] = acc;
}

// One block: loss[0] = (float)(Σ partials[0..count) / n), the mean the
// CPU computes in f64 and then stores in f32.
extern "C" __global__ void l_simple_finalize(const double* partials, long long count, long long n,
                                             float* loss) {
    __shared__ double scratch[32];
    double acc = 0.0;
    for (long long i = threadIdx.x; i < count; i += blockDim.x) acc += partials[i];
    acc = block_sum_d(acc, scratch);
    if (threadIdx.x == 0) loss[0] = (float)(acc / (double)n);
}

// One reverse step (cpu::noise::denoise_step); sample k's scalars are
// coefs[8k .. 8k+8) = x0_from_xt, x0_from_eps, −x0_clip, x0_clip,
// x0_weight, xt_weight, eps_weight, sigma:
//   x̂_0 = clamp(kx·x_t − ke·ε, lo, hi)   (selects, so NaN stays NaN)
//   out = w0·x̂_0 + wx·x_t + we·ε (+ σ·z when z is non-null)
// Grid-stride loop over the n elements.
extern "C" __global__ void denoise_step(const float* x, const float* eps, const float* z,
                                        const float* coefs, long long per, long long n,
                                        float* out) {
    GRID_STRIDE(i, n) {
        const float* c = coefs + 8 * (i / per);
        float xv = x[i], ev = eps[i];
        float x0 = SUB(MUL(c[0], xv), MUL(c[1], ev));
        x0 = x0 < c[2] ? c[2] : x0;
        x0 = x0 > c[3] ? c[3] : x0;
        float r = ADD(ADD(MUL(c[4], x0), MUL(c[5], xv)), MUL(c[6], ev));
        if (z) r = ADD(r, MUL(c[7], z[i]));
        out[i] = r;
    }
}
