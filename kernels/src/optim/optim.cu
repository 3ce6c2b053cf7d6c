// Optimizer updates (Adam/AdamW, EMA) and the global gradient norm with its
// clip coefficient, computed on the device so that a clipped Adam step
// needs no host round trip.
//
// The updates reproduce kernels/src/cpu/optim.rs operation by operation.
// The CPU rounds every product and sum separately (Rust never contracts
// a·b + c into an FMA), while NVRTC contracts by default; the _rn
// intrinsics below forbid that, so both devices compute the same floats.
#define MUL(a, b) __fmul_rn(a, b)
#define ADD(a, b) __fadd_rn(a, b)
#define SUB(a, b) __fsub_rn(a, b)
#define DIV(a, b) __fdiv_rn(a, b)

// One fused Adam/AdamW step over n elements, in place on p, m, v
// (cpu::optim::adam, same operation order):
//   gi = gs·g + l2·p;  m = b1·m + (1−b1)·gi;  v = b2·v + (1−b2)·gi·gi;
//   p = keep·p − step_size·m / (√v / √(1−β2^t) + eps)
// The gradient scale gs is *scale_ptr when scale_ptr is non-null (the clip
// coefficient clip_finalize wrote earlier on the same stream), otherwise
// scale_val. Grid-stride loop; every element is independent.
extern "C" __global__ void adam_step(float* p, const float* g, float* m, float* v, long long n,
                                     const float* scale_ptr, float scale_val, float l2, float keep,
                                     float b1, float b2, float one_b1, float one_b2,
                                     float step_size, float sqrt_bias2, float eps) {
    const float gs = scale_ptr ? *scale_ptr : scale_val;
    GRID_STRIDE(i, n) {
        float pi = p[i];
        float gi = ADD(MUL(g[i], gs), MUL(l2, pi));
        float mi = ADD(MUL(b1, m[i]), MUL(one_b1, gi));
        float vi = ADD(MUL(b2, v[i]), MUL(MUL(one_b2, gi), gi));
        float denom = ADD(DIV(__fsqrt_rn(vi), sqrt_bias2), eps);
        p[i] = SUB(MUL(pi, keep), DIV(MUL(step_size, mi), denom));
        m[i] = mi;
        v[i] = vi;
    }
}

// ema = d·ema + (1−d)·p over n elements, in place (cpu::optim::ema).
// Grid-stride loop.
extern "C" __global__ void ema_update(float* ema, const float* p, long long n, float d, float one_d) {
    GRID_STRIDE(i, n) ema[i] = ADD(MUL(d, ema[i]), MUL(one_d, p[i]));
}

// Σ x² over n elements, one f64 partial per block: block b writes the sum
// of the elements its threads visit (grid-stride) to partials[b]. Each
// tensor of a global norm writes its own run of partials, and
// clip_finalize adds them all in a fixed order, so the norm is the same
// on every run (no atomics).
extern "C" __global__ void sum_squares_partials(const float* x, long long n, double* partials) {
    __shared__ double scratch[32];
    double acc = 0.0;
    GRID_STRIDE(i, n) {
        double v = (double)x[i];
        acc += v * v;
    }
    acc = block_sum_d(acc, scratch);
    if (threadIdx.x == 0) partials[blockIdx.x] = acc;
}

// One block: s = Σ partials[0..count), ‖g‖ = √s, and the clip coefficient
// c = max_norm / (‖g‖ + 1e-6), kept only when c < 1 (so NaN gives 1 and
// ‖g‖ = ∞ gives 0, exactly as clip_coefficient in engine/src/optim/clip.rs).
// max_norm arrives as the bits of an f64 (launch arguments have no f64).
// Writes state[0] = s and state[1] = ‖g‖ (f64), and *coef = (float)c.
extern "C" __global__ void clip_finalize(const double* partials, long long count,
                                         long long max_norm_bits, double* state, float* coef) {
    __shared__ double scratch[32];
    double acc = 0.0;
    for (long long i = threadIdx.x; i < count; i += blockDim.x) acc += partials[i];
    acc = block_sum_d(acc, scratch);
    if (threadIdx.x == 0) {
        double norm = sqrt(acc);
        double c = __longlong_as_double(max_norm_bits) / (norm + 1e-6);
        state[0] = acc;
        state[1] = norm;
        *coef = (float)(c < 1.0 ? c : 1.0);
    }
}
