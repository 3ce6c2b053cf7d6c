//! The packed, single-threaded GEMM core of the CPU kernels: the
//! convolution (im2col and Winograd) and the flash attention tiles.
//!
//! Why not [`crate::gemm::cpu`] (matrixmultiply): both callers split their
//! work over rayon themselves (tiles, images, weight columns, query and key
//! tiles) and need each product to stay on the calling thread.
//! matrixmultiply's `threading` feature (on in this workspace, for the
//! engine's large `matmul`s) forks products onto its own pool, and rayon
//! workers forking into that pool queue behind each other: the attention
//! tiles ran 30–40% slower through it than single-threaded. A second reason
//! is reuse: the convolution packs its weights once ([`PackedA`]) and shares
//! them with every task, instead of repacking inside each product.
//!
//! The structure is the usual Goto/BLIS one. `C[m×n] (+)= A[m×k]·B[k×n]`:
//! A is packed into MR-tall row panels and B into NR-wide column panels,
//! each laid out `[panel][k][MR or NR]`, so the micro-kernel reads both with
//! unit stride; the micro-kernel keeps one MR×NR tile of C in registers
//! over a KC-deep slice of k and the driver adds the tile into C. Every
//! operand may have any row/column strides (transposes are free).
//!
//! Micro-kernels, chosen at run time: AVX-512F 8×32 (16 zmm accumulators),
//! AVX2+FMA 6×16 (12 ymm accumulators), and a plain-Rust 4×8 fallback used
//! for f64 (gradcheck) and below AVX2 ([`crate::cpu::simd::isa`]).

use crate::Float;
use crate::cpu::simd::{self, Isa};
use std::cell::RefCell;
use std::sync::Mutex;

/// Depth of one k-slice: the slice of A for all M panels (≤ 256 rows × KC)
/// plus one B panel stay in the 1 MiB L2 of the target CPU.
const KC: usize = 256;

/// The largest micro-tile of any kernel (8×32), for the stack tile buffer.
const MAX_TILE: usize = 256;

/// Extra elements to allocate so that a buffer can start on a 64-byte
/// boundary (see [`aligned`]).
pub const ALIGN: usize = 16;

/// The first `len` elements of `buf` from its first 64-byte-aligned
/// address: a 16-lane load of packed B then never straddles two cache
/// lines (a split load costs a second access). `buf` holds `len + ALIGN`.
pub fn aligned<T>(buf: &mut [T], len: usize) -> &mut [T] {
    let off = buf.as_ptr().align_offset(64).min(ALIGN);
    &mut buf[off..off + len]
}

/// A read-only strided matrix: element (i, j) is `data[i·rs + j·cs]`.
#[derive(Clone, Copy, Debug)]
pub struct Mat<'a, T> {
    pub data: &'a [T],
    pub rs: usize,
    pub cs: usize,
}

impl<'a, T> Mat<'a, T> {
    pub fn row_major(data: &'a [T], cols: usize) -> Self {
        Mat {
            data,
            rs: cols,
            cs: 1,
        }
    }

    /// The transpose of a row-major `[rows × cols]` matrix, without a copy.
    pub fn transposed(data: &'a [T], cols: usize) -> Self {
        Mat {
            data,
            rs: 1,
            cs: cols,
        }
    }

    /// The sub-matrix from (i, j) on.
    pub fn at(self, i: usize, j: usize) -> Self {
        Mat {
            data: &self.data[i * self.rs + j * self.cs..],
            ..self
        }
    }

    fn assert_fits(&self, m: usize, n: usize, what: &str) {
        if m > 0 && n > 0 {
            assert!(
                (m - 1) * self.rs + (n - 1) * self.cs < self.data.len(),
                "packed gemm: {what} out of bounds"
            );
        }
    }
}

/// A writable strided matrix given by a raw pointer, so that rayon tasks can
/// each own a disjoint block of one output (callers document why blocks are
/// disjoint).
#[derive(Clone, Copy, Debug)]
pub struct MatPtr<T> {
    pub ptr: *mut T,
    pub rs: usize,
    pub cs: usize,
}

// SAFETY: a MatPtr is only dereferenced inside `gemm_*`, whose callers
// guarantee that concurrent tasks write disjoint elements.
unsafe impl<T: Send> Send for MatPtr<T> {}
unsafe impl<T: Sync> Sync for MatPtr<T> {}

impl<T> MatPtr<T> {
    /// The whole of a row-major `[rows × cols]` buffer.
    pub fn row_major(data: &mut [T], cols: usize) -> Self {
        MatPtr {
            ptr: data.as_mut_ptr(),
            rs: cols,
            cs: 1,
        }
    }

    /// The sub-matrix starting at (i, j).
    ///
    /// # Safety
    /// (i, j) must lie inside the allocation.
    pub unsafe fn at(self, i: usize, j: usize) -> Self {
        MatPtr {
            // SAFETY: forwarded contract.
            ptr: unsafe { self.ptr.add(i * self.rs + j * self.cs) },
            ..self
        }
    }
}

/// A raw pointer that rayon tasks may share, each writing its own disjoint
/// elements (every use says why they are disjoint). Access goes through
/// [`SharedPtr::at`], so closures capture the whole (Send + Sync) wrapper.
#[derive(Clone, Copy, Debug)]
pub struct SharedPtr<T>(pub *mut T);

// SAFETY: see the type's documentation; the pointer is only dereferenced
// where tasks write disjoint elements.
unsafe impl<T: Send> Send for SharedPtr<T> {}
unsafe impl<T: Sync> Sync for SharedPtr<T> {}

impl<T> SharedPtr<T> {
    /// The pointer `i` elements on.
    ///
    /// # Safety
    /// `i` must stay inside the allocation.
    #[inline(always)]
    pub unsafe fn at(self, i: usize) -> *mut T {
        // SAFETY: forwarded contract.
        unsafe { self.0.add(i) }
    }
}

/// One micro-kernel: for the mr×nr tile `C[i, j] = c[i·rsc + j]`,
/// `C (+)= Σ_{p<kc} a[p·mr + i] · b[p·nr + j]` over packed panels (`+=`
/// when `add`, `=` otherwise).
#[derive(Clone, Copy)]
pub struct MicroKernel<T> {
    pub mr: usize,
    pub nr: usize,
    pub name: &'static str,
    run: KernelFn<T>,
}

type KernelFn<T> = unsafe fn(usize, *const T, *const T, *mut T, usize, bool);

impl<T> std::fmt::Debug for MicroKernel<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MicroKernel({} {}×{})", self.name, self.mr, self.nr)
    }
}

/// Element types with a convolution GEMM (f32, f64).
pub trait GemmFloat: Float {
    /// The fastest micro-kernel this CPU runs (scalar when forced).
    fn micro_kernel() -> MicroKernel<Self>;
    /// Every micro-kernel this CPU can run, for tests.
    fn available_kernels() -> Vec<MicroKernel<Self>>;
    /// Runs `f` with this thread's reusable packing buffer (packing
    /// buffers are large; allocating them per call costs page faults).
    fn with_scratch<R>(f: impl FnOnce(&mut Vec<Self>) -> R) -> R;
    /// The process-wide pool behind [`Buffer`].
    fn pool() -> &'static Mutex<Vec<Vec<Self>>>;
    /// `out[p·width + j] = src(j)[p]` for j < count and every p < k, with
    /// `out` holding k rows of `width` (see [`transpose_into`]); f32 uses
    /// 8×8 AVX2 register transposes.
    fn transpose_rows<'a>(
        src: impl Fn(usize) -> &'a [Self],
        count: usize,
        width: usize,
        out: &mut [Self],
    ) where
        Self: 'a,
    {
        transpose_into(src, count, width, out)
    }
}

thread_local! {
    static SCRATCH_F32: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static SCRATCH_F64: RefCell<Vec<f64>> = const { RefCell::new(Vec::new()) };
}
static POOL_F32: Mutex<Vec<Vec<f32>>> = Mutex::new(Vec::new());
static POOL_F64: Mutex<Vec<Vec<f64>>> = Mutex::new(Vec::new());

/// Buffers kept for reuse across calls. One Winograd call holds 16 packed
/// weight operands plus its transformed inputs and outputs, so the pool
/// must hold a few dozen; for the U-Net (≤ 256 channels) they total a few
/// tens of MiB, kept for the life of the process.
const POOLED_BUFFERS: usize = 32;

/// A large scratch buffer, taken from a process-wide pool and given back on
/// drop. Fresh allocations of several MiB per call cost page faults and
/// zeroing that show up as 20–30% of a convolution; reusing them does not.
/// The contents are whatever the previous user left: write before reading.
pub struct Buffer<T: GemmFloat> {
    v: Vec<T>,
    len: usize,
}

impl<T: GemmFloat> Buffer<T> {
    pub fn new(len: usize) -> Self {
        let reused = {
            let mut pool = T::pool().lock().unwrap_or_else(|e| e.into_inner());
            let best = (0..pool.len())
                .filter(|&i| pool[i].len() >= len)
                .min_by_key(|&i| pool[i].len());
            best.map(|i| pool.swap_remove(i))
        };
        Buffer {
            v: reused.unwrap_or_else(|| vec![T::ZERO; len]),
            len,
        }
    }
}

impl<T: GemmFloat> std::ops::Deref for Buffer<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.v[..self.len]
    }
}

impl<T: GemmFloat> std::ops::DerefMut for Buffer<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut self.v[..self.len]
    }
}

impl<T: GemmFloat> Drop for Buffer<T> {
    fn drop(&mut self) {
        let mut pool = T::pool().lock().unwrap_or_else(|e| e.into_inner());
        pool.push(std::mem::take(&mut self.v));
        if pool.len() > POOLED_BUFFERS {
            // Keep the largest: they serve every smaller request too.
            let smallest = (0..pool.len()).min_by_key(|&i| pool[i].len());
            if let Some(i) = smallest {
                pool.swap_remove(i);
            }
        }
    }
}

/// The f32 micro-kernel for instruction set `isa`.
fn f32_kernel(isa: Isa) -> MicroKernel<f32> {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => MicroKernel {
            mr: 8,
            nr: 32,
            name: "avx512",
            run: x86::kernel_avx512_8x32,
        },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => MicroKernel {
            mr: 6,
            nr: 16,
            name: "avx2",
            run: x86::kernel_avx2_6x16,
        },
        _ => generic_kernel::<f32>(),
    }
}

impl GemmFloat for f32 {
    /// The best kernel for [`simd::isa`], without building the list: it is
    /// asked for on every product (each attention tile packs its own A).
    fn micro_kernel() -> MicroKernel<f32> {
        f32_kernel(simd::isa())
    }

    fn available_kernels() -> Vec<MicroKernel<f32>> {
        let mut ks = Vec::new();
        for isa in [Isa::Avx512, Isa::Avx2, Isa::Scalar] {
            if isa <= simd::isa() {
                ks.push(f32_kernel(isa));
            }
        }
        ks
    }

    fn with_scratch<R>(f: impl FnOnce(&mut Vec<f32>) -> R) -> R {
        SCRATCH_F32.with(|s| f(&mut s.borrow_mut()))
    }

    fn pool() -> &'static Mutex<Vec<Vec<f32>>> {
        &POOL_F32
    }

    fn transpose_rows<'a>(
        src: impl Fn(usize) -> &'a [f32],
        count: usize,
        width: usize,
        out: &mut [f32],
    ) {
        #[cfg(target_arch = "x86_64")]
        if simd::isa() >= Isa::Avx2 {
            // SAFETY: the CPU has AVX2.
            return unsafe { x86::transpose_rows_avx2(src, count, width, out) };
        }
        transpose_into(src, count, width, out)
    }
}

impl GemmFloat for f64 {
    fn micro_kernel() -> MicroKernel<f64> {
        generic_kernel::<f64>()
    }

    fn available_kernels() -> Vec<MicroKernel<f64>> {
        vec![generic_kernel::<f64>()]
    }

    fn with_scratch<R>(f: impl FnOnce(&mut Vec<f64>) -> R) -> R {
        SCRATCH_F64.with(|s| f(&mut s.borrow_mut()))
    }

    fn pool() -> &'static Mutex<Vec<Vec<f64>>> {
        &POOL_F64
    }
}

const GENERIC_MR: usize = 4;
const GENERIC_NR: usize = 8;

fn generic_kernel<T: Float>() -> MicroKernel<T> {
    MicroKernel {
        mr: GENERIC_MR,
        nr: GENERIC_NR,
        name: "generic",
        run: kernel_generic::<T>,
    }
}

/// Plain-Rust 4×8 kernel (the compiler vectorises it with baseline SSE2).
unsafe fn kernel_generic<T: Float>(
    kc: usize,
    a: *const T,
    b: *const T,
    c: *mut T,
    rsc: usize,
    add: bool,
) {
    let mut acc = [[T::ZERO; GENERIC_NR]; GENERIC_MR];
    // SAFETY: the caller passes panels of kc·MR and kc·NR elements and a
    // tile of MR rows (stride rsc) of NR elements.
    unsafe {
        let a = std::slice::from_raw_parts(a, kc * GENERIC_MR);
        let b = std::slice::from_raw_parts(b, kc * GENERIC_NR);
        for (ap, bp) in a.chunks_exact(GENERIC_MR).zip(b.chunks_exact(GENERIC_NR)) {
            for (row, &ai) in acc.iter_mut().zip(ap) {
                for (cv, &bj) in row.iter_mut().zip(bp) {
                    *cv = ai.mul_add(bj, *cv);
                }
            }
        }
        for (i, row) in acc.iter().enumerate() {
            let out = std::slice::from_raw_parts_mut(c.add(i * rsc), GENERIC_NR);
            for (o, &v) in out.iter_mut().zip(row) {
                *o = if add { *o + v } else { v };
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use std::arch::x86_64::*;

    /// 8×32 tile in 16 zmm registers: per k step two 16-lane loads of B
    /// and eight broadcasts of A feed 16 FMAs.
    ///
    /// # Safety
    /// AVX-512F must be available; panels and tile as in [`super::MicroKernel`].
    #[target_feature(enable = "avx512f")]
    pub unsafe fn kernel_avx512_8x32(
        kc: usize,
        a: *const f32,
        b: *const f32,
        c: *mut f32,
        rsc: usize,
        add: bool,
    ) {
        let mut acc = [[_mm512_setzero_ps(); 2]; 8];
        // SAFETY: a holds kc·8 and b kc·32 elements; c has 8 rows (stride
        // rsc) of 32 elements.
        unsafe {
            for p in 0..kc {
                let b0 = _mm512_loadu_ps(b.add(p * 32));
                let b1 = _mm512_loadu_ps(b.add(p * 32 + 16));
                let ap = a.add(p * 8);
                for (i, row) in acc.iter_mut().enumerate() {
                    let ai = _mm512_set1_ps(*ap.add(i));
                    row[0] = _mm512_fmadd_ps(ai, b0, row[0]);
                    row[1] = _mm512_fmadd_ps(ai, b1, row[1]);
                }
            }
            for (i, row) in acc.iter().enumerate() {
                let (c0, c1) = (c.add(i * rsc), c.add(i * rsc + 16));
                let (mut v0, mut v1) = (row[0], row[1]);
                if add {
                    v0 = _mm512_add_ps(v0, _mm512_loadu_ps(c0));
                    v1 = _mm512_add_ps(v1, _mm512_loadu_ps(c1));
                }
                _mm512_storeu_ps(c0, v0);
                _mm512_storeu_ps(c1, v1);
            }
        }
    }

    /// Transposes 8 rows of 8: `out[q][i] = r[i][q]` (unpack, shuffle, then
    /// swap 128-bit halves).
    #[inline(always)]
    pub fn transpose8x8(r: [__m256; 8]) -> [__m256; 8] {
        // SAFETY: only called from AVX2 functions.
        unsafe {
            let t: [__m256; 8] = std::array::from_fn(|i| {
                let (a, b) = (r[2 * (i / 2)], r[2 * (i / 2) + 1]);
                if i % 2 == 0 {
                    _mm256_unpacklo_ps(a, b)
                } else {
                    _mm256_unpackhi_ps(a, b)
                }
            });
            let s = [
                _mm256_shuffle_ps::<0x44>(t[0], t[2]),
                _mm256_shuffle_ps::<0xEE>(t[0], t[2]),
                _mm256_shuffle_ps::<0x44>(t[1], t[3]),
                _mm256_shuffle_ps::<0xEE>(t[1], t[3]),
                _mm256_shuffle_ps::<0x44>(t[4], t[6]),
                _mm256_shuffle_ps::<0xEE>(t[4], t[6]),
                _mm256_shuffle_ps::<0x44>(t[5], t[7]),
                _mm256_shuffle_ps::<0xEE>(t[5], t[7]),
            ];
            std::array::from_fn(|q| {
                if q < 4 {
                    _mm256_permute2f128_ps::<0x20>(s[q], s[q + 4])
                } else {
                    _mm256_permute2f128_ps::<0x31>(s[q - 4], s[q])
                }
            })
        }
    }

    /// [`super::transpose_into`] for f32 in 8×8 blocks: 8 row loads, the
    /// classic unpack/shuffle/permute register transpose, 8 stores; the
    /// ragged edges go element by element.
    ///
    /// # Safety
    /// AVX2 must be available; `src(j)` must be at least k long for every
    /// j < count, with `out` holding k rows of `width` ≥ count.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn transpose_rows_avx2<'a>(
        src: impl Fn(usize) -> &'a [f32],
        count: usize,
        width: usize,
        out: &mut [f32],
    ) {
        let k = out.len() / width;
        let (kb, cb) = (k / 8 * 8, count / 8 * 8);
        for j0 in (0..cb).step_by(8) {
            let rows: [&[f32]; 8] = std::array::from_fn(|jj| &src(j0 + jj)[..k]);
            for p0 in (0..kb).step_by(8) {
                // SAFETY: p0 + 8 ≤ k for every row; out row p0 + q has
                // j0 + 8 ≤ count ≤ width elements.
                unsafe {
                    let r: [__m256; 8] =
                        std::array::from_fn(|jj| _mm256_loadu_ps(rows[jj].as_ptr().add(p0)));
                    for (q, col) in transpose8x8(r).into_iter().enumerate() {
                        _mm256_storeu_ps(out.as_mut_ptr().add((p0 + q) * width + j0), col);
                    }
                }
            }
            for p in kb..k {
                for (jj, row) in rows.iter().enumerate() {
                    out[p * width + j0 + jj] = row[p];
                }
            }
        }
        for j in cb..count {
            for (p, &v) in src(j)[..k].iter().enumerate() {
                out[p * width + j] = v;
            }
        }
    }

    /// 6×16 tile in 12 ymm registers (the classic AVX2 shape: 12
    /// accumulators, 2 loads of B and one broadcast leave 1 register spare).
    ///
    /// # Safety
    /// AVX2 and FMA must be available; panels and tile as in [`super::MicroKernel`].
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn kernel_avx2_6x16(
        kc: usize,
        a: *const f32,
        b: *const f32,
        c: *mut f32,
        rsc: usize,
        add: bool,
    ) {
        let mut acc = [[_mm256_setzero_ps(); 2]; 6];
        // SAFETY: a holds kc·6 and b kc·16 elements; c has 6 rows (stride
        // rsc) of 16 elements.
        unsafe {
            for p in 0..kc {
                let b0 = _mm256_loadu_ps(b.add(p * 16));
                let b1 = _mm256_loadu_ps(b.add(p * 16 + 8));
                let ap = a.add(p * 6);
                for (i, row) in acc.iter_mut().enumerate() {
                    let ai = _mm256_broadcast_ss(&*ap.add(i));
                    row[0] = _mm256_fmadd_ps(ai, b0, row[0]);
                    row[1] = _mm256_fmadd_ps(ai, b1, row[1]);
                }
            }
            for (i, row) in acc.iter().enumerate() {
                let (c0, c1) = (c.add(i * rsc), c.add(i * rsc + 8));
                let (mut v0, mut v1) = (row[0], row[1]);
                if add {
                    v0 = _mm256_add_ps(v0, _mm256_loadu_ps(c0));
                    v1 = _mm256_add_ps(v1, _mm256_loadu_ps(c1));
                }
                _mm256_storeu_ps(c0, v0);
                _mm256_storeu_ps(c1, v1);
            }
        }
    }
}

/// Packs rows `[0, m)` × cols `[0, k)` of `a` as `[panel][k][mr]` (the last
/// panel zero-padded); `dst` holds `ceil(m/mr)·k·mr` elements.
pub fn pack_a_into<T: GemmFloat>(a: Mat<T>, m: usize, k: usize, mr: usize, dst: &mut [T]) {
    a.assert_fits(m, k, "A");
    if k == 0 {
        return;
    }
    for (panel, out) in dst.chunks_exact_mut(k * mr).enumerate() {
        let i0 = panel * mr;
        let rows = mr.min(m - i0);
        if a.cs == 1 {
            // Row-major source: each row of the panel is contiguous.
            T::transpose_rows(|i| &a.data[(i0 + i) * a.rs..][..k], rows, mr, out);
        } else {
            for p in 0..k {
                for i in 0..rows {
                    out[p * mr + i] = a.data[(i0 + i) * a.rs + p * a.cs];
                }
            }
        }
        if rows < mr {
            for p in 0..k {
                out[p * mr + rows..(p + 1) * mr].fill(T::ZERO);
            }
        }
    }
}

/// `out[p·width + j] = src(j)[p]` for j < count and every p: the
/// transposition inside packing a row-major A or a column-major B. Working
/// on 8 rows of `out` at a time keeps the written block in L1 while the
/// sources are read contiguously.
#[inline(always)]
pub fn transpose_into<'a, T: Float + 'a>(
    src: impl Fn(usize) -> &'a [T],
    count: usize,
    width: usize,
    out: &mut [T],
) {
    const BLOCK: usize = 8;
    for (block, rows) in out.chunks_mut(BLOCK * width).enumerate() {
        let (p0, n) = (block * BLOCK, rows.len() / width);
        for j in 0..count {
            for (q, &v) in src(j)[p0..p0 + n].iter().enumerate() {
                rows[q * width + j] = v;
            }
        }
    }
}

/// Packs rows `[0, k)` × cols `[0, n)` of `b` as `[panel][k][nr]` (the last
/// panel zero-padded); `dst` holds `ceil(n/nr)·k·nr` elements.
pub fn pack_b_into<T: GemmFloat>(b: Mat<T>, k: usize, n: usize, nr: usize, dst: &mut [T]) {
    b.assert_fits(k, n, "B");
    if k == 0 {
        return;
    }
    for (panel, out) in dst.chunks_exact_mut(k * nr).enumerate() {
        let j0 = panel * nr;
        let cols = nr.min(n - j0);
        if b.cs == 1 && cols == nr {
            match nr {
                32 => pack_b_panel::<T, 32>(b, j0, out),
                16 => pack_b_panel::<T, 16>(b, j0, out),
                8 => pack_b_panel::<T, 8>(b, j0, out),
                _ => pack_b_panel_any(b, j0, cols, nr, out),
            }
        } else if b.cs == 1 {
            pack_b_panel_any(b, j0, cols, nr, out);
        } else {
            if b.rs == 1 {
                // Transposed source: each column of B is contiguous.
                T::transpose_rows(|j| &b.data[(j0 + j) * b.cs..][..k], cols, nr, out);
            } else {
                for j in 0..cols {
                    for p in 0..k {
                        out[p * nr + j] = b.data[p * b.rs + (j0 + j) * b.cs];
                    }
                }
            }
            if cols < nr {
                for p in 0..k {
                    out[p * nr + cols..(p + 1) * nr].fill(T::ZERO);
                }
            }
        }
    }
}

/// One full NR-wide panel of a row-major B; a fixed NR turns each row into
/// a few vector moves instead of a `memcpy` call.
fn pack_b_panel<T: Float, const NR: usize>(b: Mat<T>, j0: usize, out: &mut [T]) {
    for (p, o) in out.chunks_exact_mut(NR).enumerate() {
        let src: &[T; NR] = b.data[p * b.rs + j0..][..NR]
            .try_into()
            .expect("NR elements");
        let dst: &mut [T; NR] = o.try_into().expect("NR elements");
        *dst = *src;
    }
}

/// A (possibly partial, zero-padded) panel of a row-major B.
fn pack_b_panel_any<T: Float>(b: Mat<T>, j0: usize, cols: usize, nr: usize, out: &mut [T]) {
    for (p, o) in out.chunks_exact_mut(nr).enumerate() {
        o[..cols].copy_from_slice(&b.data[p * b.rs + j0..][..cols]);
        o[cols..].fill(T::ZERO);
    }
}

/// A matrix packed once as the left operand of many products (the
/// convolution weights, shared by every task of one call).
pub struct PackedA<T: GemmFloat> {
    data: Buffer<T>,
    m: usize,
    k: usize,
    kernel: MicroKernel<T>,
}

impl<T: GemmFloat> PackedA<T> {
    pub fn new(a: Mat<T>, m: usize, k: usize) -> Self {
        Self::with_kernel(T::micro_kernel(), a, m, k)
    }

    pub fn with_kernel(kernel: MicroKernel<T>, a: Mat<T>, m: usize, k: usize) -> Self {
        let mut data = Buffer::new(m.div_ceil(kernel.mr) * k * kernel.mr);
        pack_a_into(a, m, k, kernel.mr, &mut data);
        PackedA { data, m, k, kernel }
    }

    /// An m×k operand whose packed elements the caller writes itself
    /// through [`PackedA::packed_index`] (every element, padding rows
    /// included: the buffer is reused, not zeroed).
    pub fn for_filling(m: usize, k: usize) -> Self {
        let kernel = T::micro_kernel();
        let data = Buffer::new(m.div_ceil(kernel.mr) * k * kernel.mr);
        PackedA { data, m, k, kernel }
    }

    /// Where element (i, p) lives in the packed buffer; rows m..ceil(m/mr)·mr
    /// are padding (must be zero).
    #[inline(always)]
    pub fn packed_index(&self, i: usize, p: usize) -> usize {
        let mr = self.kernel.mr;
        (i / mr) * self.k * mr + p * mr + i % mr
    }

    pub fn packed_mut(&mut self) -> &mut [T] {
        &mut self.data
    }

    /// Multiplies the packed operand by `alpha`, so products give α·A·B
    /// (the zero padding stays zero).
    pub fn scale(&mut self, alpha: T) {
        self.data.iter_mut().for_each(|v| *v *= alpha);
    }

    /// Rows per A panel of the micro-kernel in use.
    pub fn mr(&self) -> usize {
        self.kernel.mr
    }

    /// Columns per B panel the micro-kernel expects (see [`pack_b_into`]).
    pub fn nr(&self) -> usize {
        self.kernel.nr
    }

    /// `C[m×n] = A·B` (or `C += A·B` with `accumulate`), B packed here
    /// into this thread's scratch buffer.
    ///
    /// # Safety
    /// `c` must address an m×n matrix inside one allocation that no other
    /// thread reads or writes during the call.
    pub unsafe fn gemm(&self, b: Mat<T>, n: usize, c: MatPtr<T>, accumulate: bool) {
        let nr = self.kernel.nr;
        b.assert_fits(self.k, n, "B");
        let pack = |p0: usize, kc: usize, j0: usize, cols: usize, out: &mut [T]| {
            let sub = Mat {
                data: &b.data[p0 * b.rs + j0 * b.cs..],
                ..b
            };
            pack_b_into(sub, kc, cols, nr, out);
        };
        // SAFETY: forwarded contract.
        unsafe { self.gemm_packing(n, pack, c, accumulate) }
    }

    /// `C (+)= A·B` where B (k×n) is packed on demand, one slice at a time:
    /// `pack(p0, kc, j0, cols, out)` writes rows `[p0, p0 + kc)` × columns
    /// `[j0, j0 + cols)` of B into `out` (kc×nr, row-major, columns past
    /// `cols` zero). Packing a slice right before it is used keeps it in
    /// L1 (the convolution packs image patches this way, without an im2col
    /// buffer).
    ///
    /// # Safety
    /// As [`PackedA::gemm`].
    pub unsafe fn gemm_packing(
        &self,
        n: usize,
        mut pack: impl FnMut(usize, usize, usize, usize, &mut [T]),
        c: MatPtr<T>,
        accumulate: bool,
    ) {
        let (k, nr) = (self.k, self.kernel.nr);
        if self.m == 0 || n == 0 {
            return;
        }
        if k == 0 {
            // SAFETY: forwarded contract.
            return unsafe { self.fill_zero_unless(accumulate, n, c) };
        }
        T::with_scratch(|scratch| {
            if scratch.len() < KC * nr + ALIGN {
                scratch.resize(KC * nr + ALIGN, T::ZERO);
            }
            let slice_buf = aligned(scratch, KC * nr);
            let mut tile = [T::ZERO; MAX_TILE];
            for p0 in (0..k).step_by(KC) {
                let kc = KC.min(k - p0);
                for j0 in (0..n).step_by(nr) {
                    let cols = nr.min(n - j0);
                    let b_slice = &mut slice_buf[..kc * nr];
                    pack(p0, kc, j0, cols, b_slice);
                    let add = accumulate || p0 > 0;
                    // SAFETY: forwarded contract.
                    unsafe { self.slice_pass((p0, kc), (b_slice, j0, cols), c, add, &mut tile) };
                }
            }
        })
    }

    /// `C (+)= A·B` with B already packed for this kernel (`[panel][k][nr]`).
    ///
    /// # Safety
    /// As [`PackedA::gemm`]; `bp` holds `ceil(n/nr)·k·nr` elements.
    pub unsafe fn gemm_packed(&self, bp: &[T], n: usize, c: MatPtr<T>, accumulate: bool) {
        let (k, nr) = (self.k, self.kernel.nr);
        assert!(
            bp.len() >= n.div_ceil(nr) * k * nr,
            "packed gemm: packed B too short"
        );
        if self.m == 0 || n == 0 {
            return;
        }
        if k == 0 {
            // SAFETY: forwarded contract.
            return unsafe { self.fill_zero_unless(accumulate, n, c) };
        }
        let mut tile = [T::ZERO; MAX_TILE];
        for p0 in (0..k).step_by(KC) {
            let kc = KC.min(k - p0);
            for (jp, j0) in (0..n).step_by(nr).enumerate() {
                let cols = nr.min(n - j0);
                let b_slice = &bp[jp * k * nr + p0 * nr..][..kc * nr];
                let add = accumulate || p0 > 0;
                // SAFETY: forwarded contract.
                unsafe { self.slice_pass((p0, kc), (b_slice, j0, cols), c, add, &mut tile) };
            }
        }
    }

    /// C = 0 for an empty inner dimension (a no-op when accumulating).
    ///
    /// # Safety
    /// As [`PackedA::gemm`].
    unsafe fn fill_zero_unless(&self, accumulate: bool, n: usize, c: MatPtr<T>) {
        if accumulate {
            return;
        }
        for i in 0..self.m {
            for j in 0..n {
                // SAFETY: (i, j) is inside the m×n matrix.
                unsafe { *c.ptr.add(i * c.rs + j * c.cs) = T::ZERO };
            }
        }
    }

    /// Columns `[j0, j0 + cols)` of C (+)= A[:, p0..p0+kc] · B slice, for
    /// every row panel of A.
    ///
    /// # Safety
    /// As [`PackedA::gemm`]; `b_slice` holds kc·nr packed elements.
    #[inline(always)]
    unsafe fn slice_pass(
        &self,
        (p0, kc): (usize, usize),
        (b_slice, j0, cols): (&[T], usize, usize),
        c: MatPtr<T>,
        add: bool,
        tile: &mut [T; MAX_TILE],
    ) {
        let MicroKernel { mr, nr, run, .. } = self.kernel;
        let (m, k) = (self.m, self.k);
        for (ip, i0) in (0..m).step_by(mr).enumerate() {
            let rows = mr.min(m - i0);
            let a_panel = &self.data[ip * k * mr + p0 * mr..][..kc * mr];
            let (ap, bp) = (a_panel.as_ptr(), b_slice.as_ptr());
            // SAFETY: the panels hold kc·mr and kc·nr elements; the kernel
            // suits this CPU. A full tile with unit column stride is
            // updated in place; an edge tile goes through `tile` (mr·nr ≤
            // MAX_TILE) and only its inside part is merged into C (rows ×
            // cols at (i0, j0) lie inside C).
            unsafe {
                let ct = c.at(i0, j0);
                if rows == mr && cols == nr && c.cs == 1 {
                    run(kc, ap, bp, ct.ptr, c.rs, add);
                } else {
                    run(kc, ap, bp, tile.as_mut_ptr(), nr, false);
                    merge_tile(tile, nr, rows, cols, ct, add);
                }
            }
        }
    }
}

/// Writes (or adds) the top-left rows×cols of an mr×nr tile into C.
///
/// # Safety
/// `c` addresses a rows×cols block no other thread touches.
#[inline(always)]
unsafe fn merge_tile<T: Float>(
    tile: &[T],
    nr: usize,
    rows: usize,
    cols: usize,
    c: MatPtr<T>,
    add: bool,
) {
    for (i, t) in tile.chunks_exact(nr).take(rows).enumerate() {
        // SAFETY: forwarded contract.
        unsafe {
            let row = c.ptr.add(i * c.rs);
            if c.cs == 1 {
                let dst = std::slice::from_raw_parts_mut(row, cols);
                if add {
                    for (d, &v) in dst.iter_mut().zip(t) {
                        *d += v;
                    }
                } else {
                    dst.copy_from_slice(&t[..cols]);
                }
            } else {
                for (j, &v) in t[..cols].iter().enumerate() {
                    let d = row.add(j * c.cs);
                    *d = if add { *d + v } else { v };
                }
            }
        }
    }
}

/// `C = A·B` (or `C += A·B`) for a contiguous row-major m×n `c`, packing
/// both operands (convenient for one-off products and tests).
pub fn gemm<T: GemmFloat>(
    m: usize,
    k: usize,
    n: usize,
    a: Mat<T>,
    b: Mat<T>,
    c: &mut [T],
    accumulate: bool,
) {
    gemm_with_kernel(T::micro_kernel(), (m, k, n), a, b, c, accumulate);
}

/// [`gemm`] with an explicit micro-kernel (tests run every kernel).
pub fn gemm_with_kernel<T: GemmFloat>(
    kernel: MicroKernel<T>,
    (m, k, n): (usize, usize, usize),
    a: Mat<T>,
    b: Mat<T>,
    c: &mut [T],
    accumulate: bool,
) {
    assert_eq!(c.len(), m * n, "packed gemm: C must be m×n");
    b.assert_fits(k, n, "B");
    let pa = PackedA::with_kernel(kernel, a, m, k);
    // SAFETY: c is an exclusively borrowed m×n row-major matrix.
    unsafe { pa.gemm(b, n, MatPtr::row_major(c, n), accumulate) };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(m: usize, k: usize, n: usize, a: Mat<f64>, b: Mat<f64>) -> Vec<f64> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                for p in 0..k {
                    c[i * n + j] += a.data[i * a.rs + p * a.cs] * b.data[p * b.rs + j * b.cs];
                }
            }
        }
        c
    }

    fn values(n: usize, seed: u64) -> Vec<f64> {
        crate::test_data::uniform(n, seed)
    }

    /// Every kernel, odd sizes (edge panels), k > KC (several slices),
    /// transposed operands and accumulation.
    #[test]
    fn every_kernel_matches_naive_product() {
        for &(m, k, n) in &[
            (1, 1, 1),
            (5, 3, 7),
            (13, 300, 37),
            (33, 513, 65),
            (8, 0, 4),
        ] {
            let a64 = values(m * k, 1);
            let b64 = values(k * n, 2);
            let c0 = values(m * n, 3);
            for transpose in [false, true] {
                let (a, b) = if transpose {
                    (Mat::transposed(&a64, m), Mat::transposed(&b64, k))
                } else {
                    (Mat::row_major(&a64, k), Mat::row_major(&b64, n))
                };
                let want = naive(m, k, n, a, b);
                let a32: Vec<f32> = a64.iter().map(|&v| v as f32).collect();
                let b32: Vec<f32> = b64.iter().map(|&v| v as f32).collect();
                let (a32m, b32m) = (
                    Mat {
                        data: &a32[..],
                        rs: a.rs,
                        cs: a.cs,
                    },
                    Mat {
                        data: &b32[..],
                        rs: b.rs,
                        cs: b.cs,
                    },
                );
                for kern in f32::available_kernels() {
                    let mut c: Vec<f32> = c0.iter().map(|&v| v as f32).collect();
                    gemm_with_kernel(kern, (m, k, n), a32m, b32m, &mut c, true);
                    for i in 0..m * n {
                        let w = want[i] + c0[i];
                        assert!(
                            (c[i] as f64 - w).abs() <= 1e-4 * (1.0 + w.abs()),
                            "{kern:?} {m}x{k}x{n} t={transpose} at {i}: {} vs {w}",
                            c[i]
                        );
                    }
                }
                let mut c = vec![7.0; m * n];
                gemm(m, k, n, a, b, &mut c, false);
                for i in 0..m * n {
                    assert!((c[i] - want[i]).abs() <= 1e-12 * (1.0 + want[i].abs()));
                }
            }
        }
    }
}
