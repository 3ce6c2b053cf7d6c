//! CPU kernels on slices.
//!
//! Conventions shared by every kernel here:
//! - inputs are `&[T]` plus the numbers that describe how to walk them
//!   (shape, strides, offsets); outputs are `&mut [T]`, written in full;
//! - work is split across rayon threads in chunks big enough
//!   ([`PAR_CHUNK`] elements) that the split costs less than it gains;
//! - explicit SIMD lives in [`simd`], chosen at run time; the scalar path is
//!   always there and tests run both (see [`simd::with_isa`]).

pub mod simd;
pub mod simd_avx512;

/// Elements per rayon task for memory-bound kernels: large enough that task
/// overhead (~1 µs) is small against the ~10 µs the chunk takes.
pub const PAR_CHUNK: usize = 1 << 15;

/// A raw pointer that may cross threads. Used only where the tasks provably
/// write disjoint elements (each documents why).
#[derive(Clone, Copy)]
pub(crate) struct SendPtr<T>(pub *mut T);
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}

/// A zero-filled `Vec` of `n` elements to hold a kernel's output.
///
/// A large fresh allocation is mapped by the OS on first write, one page
/// fault per 4 KiB page; for a 64 MiB tensor those 16 384 faults cost more
/// than the kernel that fills it (see BENCHMARKS.md). On Linux, buffers of
/// at least one huge page are therefore advised to use transparent huge
/// pages (`MADV_HUGEPAGE`), which cuts the faults 512-fold. The advice
/// changes no contents (the memory reads as zeros either way) and is
/// ignored where THP is disabled.
pub fn zeroed_output<T: Clone + Default>(n: usize) -> Vec<T> {
    let v = vec![T::default(); n];
    advise_huge_pages(&v);
    v
}

#[cfg(target_os = "linux")]
fn advise_huge_pages<T>(v: &[T]) {
    const PAGE: usize = 4096;
    const HUGE_PAGE: usize = 2 << 20;
    const MADV_HUGEPAGE: i32 = 14;
    unsafe extern "C" {
        fn madvise(addr: *mut std::ffi::c_void, len: usize, advice: i32) -> i32;
    }
    let bytes = std::mem::size_of_val(v);
    if bytes < HUGE_PAGE {
        return;
    }
    // madvise takes whole pages: advise the pages lying entirely inside `v`.
    let start = (v.as_ptr() as usize).next_multiple_of(PAGE);
    let end = (v.as_ptr() as usize + bytes) & !(PAGE - 1);
    // SAFETY: the range lies inside `v`'s allocation, which we own; the
    // advice only changes how the kernel backs those pages, never their
    // contents or validity. Failure (e.g. THP unsupported) is harmless.
    unsafe {
        madvise(start as *mut _, end - start, MADV_HUGEPAGE);
    }
}

#[cfg(not(target_os = "linux"))]
fn advise_huge_pages<T>(_: &[T]) {}

/// Views a generic slice as f32 when `T` is f32, so a generic kernel can
/// hand f32 data to its explicit SIMD path.
#[inline(always)]
pub(crate) fn as_f32<T: crate::Float>(x: &[T]) -> Option<&[f32]> {
    (std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>())
        // SAFETY: T is f32, same layout.
        .then(|| unsafe { std::slice::from_raw_parts(x.as_ptr() as *const f32, x.len()) })
}

/// Mutable counterpart of [`as_f32`].
#[inline(always)]
pub(crate) fn as_f32_mut<T: crate::Float>(x: &mut [T]) -> Option<&mut [f32]> {
    (std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>())
        // SAFETY: T is f32, same layout.
        .then(|| unsafe { std::slice::from_raw_parts_mut(x.as_mut_ptr() as *mut f32, x.len()) })
}

/// Merges adjacent dimensions that every operand walks contiguously with
/// respect to each other, and drops size-1 dimensions. Fewer, longer
/// dimensions mean longer inner loops. `strides[j]` is operand j's strides.
pub fn collapse_dims(shape: &[usize], strides: &[&[usize]]) -> (Vec<usize>, Vec<Vec<usize>>) {
    let mut out_shape: Vec<usize> = Vec::with_capacity(shape.len());
    let mut out_strides: Vec<Vec<usize>> = vec![Vec::with_capacity(shape.len()); strides.len()];
    for (d, &size) in shape.iter().enumerate() {
        if size == 1 {
            continue;
        }
        let mergeable = match out_shape.last() {
            Some(_) => out_strides
                .iter()
                .zip(strides)
                .all(|(o, s)| *o.last().unwrap() == s[d] * size),
            None => false,
        };
        if mergeable {
            *out_shape.last_mut().unwrap() *= size;
            for (o, s) in out_strides.iter_mut().zip(strides) {
                *o.last_mut().unwrap() = s[d];
            }
        } else {
            out_shape.push(size);
            for (o, s) in out_strides.iter_mut().zip(strides) {
                o.push(s[d]);
            }
        }
    }
    if out_shape.is_empty() {
        out_shape.push(1);
        for o in out_strides.iter_mut() {
            o.push(0);
        }
    }
    (out_shape, out_strides)
}

/// Offset of row `row` (a flat index over all dims but the last) for an
/// operand with `strides`, in a tensor of `shape`.
#[inline]
pub(crate) fn row_offset(shape: &[usize], strides: &[usize], mut row: usize) -> usize {
    let mut off = 0;
    for d in (0..shape.len() - 1).rev() {
        let i = row % shape[d];
        row /= shape[d];
        off += i * strides[d];
    }
    off
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collapse_merges_contiguous_and_drops_ones() {
        let (s, st) = collapse_dims(&[2, 1, 3, 4], &[&[12, 12, 4, 1], &[0, 0, 4, 1]]);
        assert_eq!(s, vec![2, 12]);
        assert_eq!(st, vec![vec![12, 1], vec![0, 1]]);
    }

    #[test]
    fn zeroed_output_is_zero_small_and_large() {
        for n in [0, 3, (4 << 20) + 5] {
            let v: Vec<f32> = zeroed_output(n);
            assert_eq!(v.len(), n);
            assert!(v.iter().all(|&x| x == 0.0));
        }
    }
}
