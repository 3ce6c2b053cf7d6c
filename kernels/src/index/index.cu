// Gather along an axis (index_select) and its adjoint (index_add), on
// contiguous tensors seen as [outer, dim, inner]. Indices are u32.

// y[o, j, i] = x[o, ids[j], i] for y: [outer, nids, inner] (n elements).
// One thread per output element, grid-stride; consecutive threads take
// consecutive i, so reads and writes are coalesced within each row.
extern "C" __global__ void index_select(const float* x, const unsigned* ids, float* y,
                                        long long nids, long long dim, long long inner, long long n) {
    GRID_STRIDE(t, n) {
        long long q = t / inner;
        long long i = t - q * inner;
        long long o = q / nids;
        long long j = q - o * nids;
        y[t] = x[(o * dim + (long long)ids[j]) * inner + i];
    }
}

// y[o, d, i] = Σ_{j : ids[j] = d} src[o, j, i] for y: [outer, dim, inner]
// (n elements), src: [outer, nids, inner]. Deterministic, no atomics: the
// host groups the positions j by id (CSR: the js with id d are
// js[starts[d] .. starts[d + 1]], increasing), and each thread owns one
// output element and adds its sources in increasing j from 0, the CPU's
// order, so repeated ids give the CPU's sums bit for bit. Consecutive
// threads take consecutive i (coalesced).
extern "C" __global__ void index_add_csr(const float* src, const unsigned* starts, const unsigned* js,
                                         float* y, long long nids, long long dim, long long inner,
                                         long long n) {
    GRID_STRIDE(t, n) {
        long long q = t / inner;
        long long i = t - q * inner;
        long long o = q / dim;
        long long d = q - o * dim;
        const float* s = src + o * nids * inner + i;
        float acc = 0.0f;
        for (unsigned u = starts[d]; u < starts[d + 1]; ++u) acc += s[(long long)js[u] * inner];
        y[t] = acc;
    }
}
