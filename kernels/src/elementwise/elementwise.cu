// Elementwise kernels: fill, strided copy, unary and broadcast binary ops,
// where. One kernel per arity; the op is a runtime code whose `switch` is
// uniform across the grid (every thread takes the same branch), so it costs
// nothing next to the memory traffic these kernels are bound by.
// Op codes mirror `unary_code` / `binary_code` in elementwise.rs.

__device__ __forceinline__ float unary_eval(int op, float x, float p0, float p1) {
    switch (op) {
        case 0: return -x;
        case 1: return expf(x);
        case 2: return logf(x);
        case 3: return sqrtf(x);
        case 4: return x * x;
        case 5: return fabsf(x);
        case 6: return 1.0f / x;
        case 7: return sigmoidf(x);
        case 8: return x * sigmoidf(x);
        case 9: return tanhf(x);
        case 10: return max_nan(x, 0.0f);
        case 11: return x > 0.0f ? 1.0f : (x < 0.0f ? -1.0f : 0.0f);
        case 12: return fmaf(x, p0, p1);
        case 13: return powf(x, p0);
        case 14: return max_nan(x, p0);
        case 15: return min_nan(x, p0);
        case 16: return x >= p0 ? 1.0f : 0.0f;
        default: return __int_as_float(0x7fffffff);
    }
}

__device__ __forceinline__ float binary_eval(int op, float a, float b) {
    switch (op) {
        case 0: return a + b;
        case 1: return a - b;
        case 2: return a * b;
        case 3: return a / b;
        case 4: return max_nan(a, b);
        case 5: return min_nan(a, b);
        case 6: return powf(a, b);
        case 7: return a == b ? 1.0f : 0.0f;
        case 8: return a != b ? 1.0f : 0.0f;
        case 9: return a < b ? 1.0f : 0.0f;
        case 10: return a <= b ? 1.0f : 0.0f;
        case 11: return a > b ? 1.0f : 0.0f;
        case 12: return a >= b ? 1.0f : 0.0f;
        case 13: { float s = sigmoidf(a); return b * s * (1.0f + a * (1.0f - s)); }
        case 14: { float s = sigmoidf(a); return b * s * (1.0f - s); }
        case 15: { float t = tanhf(a); return b * (1.0f - t * t); }
        case 16: return a > 0.0f ? b : 0.0f;
        default: return __int_as_float(0x7fffffff);
    }
}

extern "C" __global__ void fill(float* y, float value, long long n) {
    GRID_STRIDE(i, n) y[i] = value;
}

// y[i] = x[view(i)]: makes any view contiguous.
extern "C" __global__ void copy_strided(const float* x, Strided xs, float* y, long long n) {
    GRID_STRIDE(i, n) y[i] = x[strided_offset(xs, i)];
}

// y[view_y(i)] = x[view_x(i)]: writes into a view (narrow/concat backward).
extern "C" __global__ void copy_into(const float* x, Strided xs, float* y, Strided ys, long long n) {
    GRID_STRIDE(i, n) y[strided_offset(ys, i)] = x[strided_offset(xs, i)];
}

extern "C" __global__ void unary_contig(int op, float p0, float p1, const float* x, float* y, long long n) {
    GRID_STRIDE(i, n) y[i] = unary_eval(op, x[i], p0, p1);
}

extern "C" __global__ void unary_strided(int op, float p0, float p1, const float* x, Strided xs, float* y, long long n) {
    GRID_STRIDE(i, n) y[i] = unary_eval(op, x[strided_offset(xs, i)], p0, p1);
}

extern "C" __global__ void binary_contig(int op, const float* a, const float* b, float* y, long long n) {
    GRID_STRIDE(i, n) y[i] = binary_eval(op, a[i], b[i]);
}

// Broadcasting is expressed by zero strides in `as`/`bs`.
extern "C" __global__ void binary_strided(int op, const float* a, Strided as_, const float* b, Strided bs, float* y, long long n) {
    GRID_STRIDE(i, n) y[i] = binary_eval(op, a[strided_offset(as_, i)], b[strided_offset(bs, i)]);
}

extern "C" __global__ void where_cond(const float* c, Strided cs, const float* a, Strided as_, const float* b, Strided bs, float* y, long long n) {
    GRID_STRIDE(i, n) y[i] = c[strided_offset(cs, i)] != 0.0f ? a[strided_offset(as_, i)] : b[strided_offset(bs, i)];
}
