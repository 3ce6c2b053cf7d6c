// Group normalisation with an optional fused SiLU, as `cpu::group_norm`:
// x is [N, C, S] contiguous, C = G groups of cpg channels; group t = n·G + g
// is the contiguous run x[t·M .. (t+1)·M], M = cpg·S. γ, β, dγ, dβ are [C];
// the saved statistics mean, rstd are [N·G].
//
// Both passes give each group its own block (the group is a few KiB to a
// few hundred KiB, so its repeated reads mostly hit L2), with block-level
// sums from common.cuh, so every result is computed in a fixed order.

// dh = ∂L/∂h from dy: dy itself, or dy·silu'(h) = dy·σ(h)·(1 + h·(1 − σ(h)))
// when SiLU followed the affine map (h = a·x + b recomputed from x).
__device__ __forceinline__ float gn_dh(float dy, float xv, float a, float b, int silu) {
    if (!silu) return dy;
    const float h = a * xv + b;
    const float s = sigmoidf(h);
    return dy * s * (1.0f + h * (1.0f - s));
}

// Forward, one block per group t:
//   μ = Σx/M, σ² = Σ(x − μ)²/M (second pass around μ: no cancellation),
//   r = 1/√(σ² + ε), per channel a_c = γ_c·r, b_c = β_c − μ·a_c,
//   h = a_c·x + b_c, y = h or silu(h) = h·σ(h); saves mean[t] = μ, rstd[t] = r.
// Threads stride over the group (coalesced) in each of the three sweeps.
extern "C" __global__ void group_norm_forward(const float* x, const float* gamma,
                                              const float* beta, float* y, float* mean,
                                              float* rstd, int G, int cpg, long long S,
                                              float eps, int silu) {
    __shared__ float scratch[32];
    const long long t = blockIdx.x;
    const long long M = (long long)cpg * S;
    const float* xg = x + t * M;
    float* yg = y + t * M;
    const long long c0 = (t % G) * cpg;
    const float inv_m = 1.0f / (float)M;

    float s = 0.0f;
    for (long long j = threadIdx.x; j < M; j += blockDim.x) s += xg[j];
    const float mu = block_sum(s, scratch) * inv_m;

    float v = 0.0f;
    for (long long j = threadIdx.x; j < M; j += blockDim.x) {
        const float d = xg[j] - mu;
        v += d * d;
    }
    const float var = block_sum(v, scratch) * inv_m;
    const float r = 1.0f / sqrtf(var + eps);

    for (long long j = threadIdx.x; j < M; j += blockDim.x) {
        const long long c = c0 + j / S;
        const float a = gamma[c] * r;
        const float b = beta[c] - mu * a;
        const float h = a * xg[j] + b;
        yg[j] = silu ? h * sigmoidf(h) : h;
    }
    if (threadIdx.x == 0) {
        mean[t] = mu;
        rstd[t] = r;
    }
}

// Backward input gradient, one block per group t (n = t / G), from the saved
// μ, r. For each channel c of the group (in order) the block reduces
//   s1_c = Σ_S dh,   s2_c = r·Σ_S dh·(x − μ)
// and stores them at s1[n·C + c], s2[n·C + c] (summed over n for dβ, dγ by
// `group_norm_param_grads`); every thread accumulates A = Σ_c γ_c·s1_c,
// B = Σ_c γ_c·s2_c (block_sum hands all threads the same value). Then
//   q = −r²·B/M,  k = −r·A/M − q·μ,  dx = r·γ_c·dh + (q·x + k),
// with dh recomputed rather than stored. Threads stride over the channel's
// S values in the sums and over the group's M values for dx.
extern "C" __global__ void group_norm_backward_input(const float* x, const float* dy,
                                                     const float* gamma, const float* beta,
                                                     const float* mean, const float* rstd,
                                                     float* dx, float* s1, float* s2, int G,
                                                     int cpg, long long S, int silu) {
    __shared__ float scratch[32];
    const long long t = blockIdx.x;
    const long long M = (long long)cpg * S;
    const float* xg = x + t * M;
    const float* dyg = dy + t * M;
    float* dxg = dx + t * M;
    const long long c0 = (t % G) * cpg;
    const float mu = mean[t];
    const float r = rstd[t];

    float A = 0.0f, B = 0.0f;
    for (int cl = 0; cl < cpg; ++cl) {
        const long long c = c0 + cl;
        const float a = gamma[c] * r;
        const float b = beta[c] - mu * a;
        const float* xc = xg + cl * S;
        const float* dyc = dyg + cl * S;
        float sd = 0.0f, sdx = 0.0f;
        for (long long j = threadIdx.x; j < S; j += blockDim.x) {
            const float xv = xc[j];
            const float d = gn_dh(dyc[j], xv, a, b, silu);
            sd += d;
            sdx += d * (xv - mu);
        }
        sd = block_sum(sd, scratch);
        sdx = block_sum(sdx, scratch) * r;
        // Row t·cpg + cl of the [N·G·cpg] = [N·C] sums is (n, c).
        if (threadIdx.x == 0) {
            s1[t * cpg + cl] = sd;
            s2[t * cpg + cl] = sdx;
        }
        A += gamma[c] * sd;
        B += gamma[c] * sdx;
    }

    const float inv_m = 1.0f / (float)M;
    const float q = -(r * r * B * inv_m);
    const float k = -(r * A * inv_m) - q * mu;
    for (long long j = threadIdx.x; j < M; j += blockDim.x) {
        const long long c = c0 + j / S;
        const float a = gamma[c] * r;
        const float b = beta[c] - mu * a;
        const float xv = xg[j];
        const float d = gn_dh(dyg[j], xv, a, b, silu);
        dxg[j] = r * gamma[c] * d + (q * xv + k);
    }
}

// dβ_c = Σ_n s1[n·C + c], dγ_c = Σ_n s2[n·C + c]: one block per channel c,
// threads striding over n, block sums in double. Deterministic.
extern "C" __global__ void group_norm_param_grads(const float* s1, const float* s2,
                                                  float* dgamma, float* dbeta, long long N,
                                                  long long C) {
    __shared__ double scratch[32];
    const long long c = blockIdx.x;
    double a = 0.0, b = 0.0;
    for (long long n = threadIdx.x; n < N; n += blockDim.x) {
        a += (double)s2[n * C + c];
        b += (double)s1[n * C + c];
    }
    a = block_sum_d(a, scratch);
    b = block_sum_d(b, scratch);
    if (threadIdx.x == 0) {
        dgamma[c] = (float)a;
        dbeta[c] = (float)b;
    }
}
