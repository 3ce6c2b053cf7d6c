// Philox4x32-10 random fills, the same stream as kernels/src/rng.rs and
// `CpuStorage::rand`: element e of a fill uses block `first + e / 4` of the
// stream (seed = key), word e % 4 of it.

// One Philox4x32-10 block, as `philox4x32` in rng.rs: c = counter, key
// (k0, k1); the 64-bit products are split with __umulhi / plain multiply.
__device__ __forceinline__ void philox4x32_10(unsigned c[4], unsigned k0, unsigned k1) {
    const unsigned M0 = 0xD2511F53u, M1 = 0xCD9E8D57u, W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;
    for (int round = 0; round < 10; ++round) {
        unsigned hi0 = __umulhi(M0, c[0]), lo0 = M0 * c[0];
        unsigned hi1 = __umulhi(M1, c[2]), lo1 = M1 * c[2];
        unsigned n0 = hi1 ^ c[1] ^ k0;
        unsigned n2 = hi0 ^ c[3] ^ k1;
        c[0] = n0;
        c[1] = lo1;
        c[2] = n2;
        c[3] = lo0;
        k0 += W0;
        k1 += W1;
    }
}

// u32_to_open01 in rng.rs: (x + 0.5) / 2^32 in double, exact.
__device__ __forceinline__ double open01(unsigned x) {
    return ((double)x + 0.5) * (1.0 / 4294967296.0);
}

// y[e] for e < n: uniform (0, 1) (normal == 0) or N(0, 1) by Box–Muller on
// the pairs (u0, u1), (u2, u3) of each block (normal != 0). The math is in
// double, as the CPU's, and rounded to float once at the end, so the values
// equal the CPU's up to the last bit of libm's log/sin/cos.
// One thread per 4-word block (grid-stride over ceil(n / 4) blocks); each
// thread writes its 4 consecutive floats.
extern "C" __global__ void philox_fill(float* y, long long n, unsigned seed_lo, unsigned seed_hi,
                                       unsigned long long first, int normal) {
    long long blocks = (n + 3) / 4;
    GRID_STRIDE(b, blocks) {
        unsigned long long index = first + (unsigned long long)b;
        unsigned c[4] = {(unsigned)index, (unsigned)(index >> 32), 0u, 0u};
        philox4x32_10(c, seed_lo, seed_hi);
        double v[4];
        for (int j = 0; j < 4; ++j) v[j] = open01(c[j]);
        if (normal) {
            const double two_pi = 2.0 * 3.14159265358979323846;
            for (int j = 0; j < 4; j += 2) {
                double r = sqrt(-2.0 * log(v[j]));
                double th = two_pi * v[j + 1];
                v[j] = r * cos(th);
                v[j + 1] = r * sin(th);
            }
        }
        long long e0 = b * 4;
        for (int j = 0; j < 4; ++j)
            if (e0 + j < n) y[e0 + j] = (float)v[j];
    }
}
