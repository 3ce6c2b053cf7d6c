//! The CPU device: storage as a `Vec` per dtype, and each primitive as a
//! call into `noisegrad_kernels::cpu`.
//!
//! Kernel families with their own file (conv, norms, attention, ...) add
//! `impl Storage` / `impl CpuStorage` blocks there, using the dtype
//! dispatch macros exported below ([`map_data`], [`with_data`], [`zip_data`]).

use crate::error::{Error, Result};
use crate::layout::contiguous_strides;
use crate::memory::MemTicket;
use crate::primitive::{MatmulDims, RandKind, split_at_axis};
use crate::{DType, Device, Layout};
use noisegrad_kernels::elementwise::cpu::{self as elementwise, BinaryOp, Strided, UnaryOp};
use noisegrad_kernels::gemm::cpu::{MatRef, batched_gemm};
use noisegrad_kernels::reduce::cpu::{self as reduce, ReduceOp};
use noisegrad_kernels::rng::{Philox, u32_to_open01};
use noisegrad_kernels::{
    copy::cpu as copy, index::cpu as index, optim::cpu as optim, softmax::cpu as softmax,
};
use rayon::prelude::*;

#[derive(Debug)]
pub enum CpuData {
    F32(Vec<f32>),
    F64(Vec<f64>),
}

#[derive(Debug)]
pub struct CpuStorage {
    pub(crate) data: CpuData,
    _mem: MemTicket,
}

/// Runs `$body` with `$v` bound to the typed data, wrapping a `Vec` result
/// in the same dtype.
macro_rules! map_data {
    ($data:expr, $v:ident => $body:expr) => {
        match $data {
            CpuData::F32($v) => CpuData::F32($body),
            CpuData::F64($v) => CpuData::F64($body),
        }
    };
}
#[allow(unused_imports)]
pub(crate) use map_data;

/// Runs `$body` with `$v` bound to the typed data (any result type).
macro_rules! with_data {
    ($data:expr, $v:ident => $body:expr) => {
        match $data {
            CpuData::F32($v) => $body,
            CpuData::F64($v) => $body,
        }
    };
}
#[allow(unused_imports)]
pub(crate) use with_data;

/// Two storages of one dtype, or a dtype error.
macro_rules! zip_data {
    ($op:expr, $a:expr, $b:expr, ($x:ident, $y:ident) => $body:expr) => {
        match ($a, $b) {
            (CpuData::F32($x), CpuData::F32($y)) => CpuData::F32($body),
            (CpuData::F64($x), CpuData::F64($y)) => CpuData::F64($body),
            (a, b) => {
                return Err(Error::DTypeMismatch {
                    op: $op,
                    lhs: a.dtype(),
                    rhs: b.dtype(),
                })
            }
        }
    };
}
#[allow(unused_imports)]
pub(crate) use zip_data;

impl CpuData {
    fn dtype(&self) -> DType {
        match self {
            CpuData::F32(_) => DType::F32,
            CpuData::F64(_) => DType::F64,
        }
    }
    fn len(&self) -> usize {
        with_data!(self, v => v.len())
    }
}

/// A zero-filled Vec (zero-filled allocation is cheap: fresh pages are zero).
pub(crate) fn zeroed<T: Clone + Default>(n: usize) -> Vec<T> {
    noisegrad_kernels::cpu::zeroed_output(n)
}

/// The error for an allocation the system refused: `n` elements of `T`,
/// named by element count (the tensor constructors add the shape).
fn out_of_memory<T>(op: &'static str, n: usize) -> Error {
    let size = std::mem::size_of::<T>();
    Error::OutOfMemory {
        op,
        shape: vec![n],
        dtype: if size == 4 { DType::F32 } else { DType::F64 },
        bytes: n as u128 * size as u128,
        device: Device::Cpu,
    }
}

/// [`zeroed`] for the buffers whose size comes from the caller (the
/// tensor constructors): an allocation that cannot be satisfied is an
/// [`Error::OutOfMemory`] instead of the process aborting. Still zeroed by
/// the allocator (fresh pages, no memset), like `vec![0.0; n]`.
pub(crate) fn try_zeroed<T: noisegrad_kernels::Float>(
    op: &'static str,
    n: usize,
) -> Result<Vec<T>> {
    let layout = std::alloc::Layout::array::<T>(n).map_err(|_| out_of_memory::<T>(op, n))?;
    if layout.size() == 0 {
        return Ok(Vec::new());
    }
    // SAFETY: the layout has a non-zero size. `T` is f32 or f64, for which
    // all-zero bytes are the value 0.0, so the buffer is initialised.
    let ptr = unsafe { std::alloc::alloc_zeroed(layout) }.cast::<T>();
    if ptr.is_null() {
        return Err(out_of_memory::<T>(op, n));
    }
    // SAFETY: `ptr` comes from the global allocator with the layout of `n`
    // `T`s, all of them initialised; the Vec takes ownership.
    Ok(unsafe { Vec::from_raw_parts(ptr, n, n) })
}

/// `n` copies of `value`, or [`Error::OutOfMemory`].
fn try_filled<T: noisegrad_kernels::Float>(op: &'static str, n: usize, value: T) -> Result<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n)
        .map_err(|_| out_of_memory::<T>(op, n))?;
    v.resize(n, value);
    Ok(v)
}

/// `data` converted to `T`, or [`Error::OutOfMemory`].
fn try_converted<T: noisegrad_kernels::Float>(
    data: &[f64],
    f: impl Fn(f64) -> T,
) -> Result<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(data.len())
        .map_err(|_| out_of_memory::<T>("from_vec", data.len()))?;
    v.extend(data.iter().map(|&x| f(x)));
    Ok(v)
}

/// The elements of `layout` in row-major order, contiguous.
pub(crate) fn gather_contiguous<T: noisegrad_kernels::Float>(v: &[T], layout: &Layout) -> Vec<T> {
    let n = layout.numel();
    if layout.is_contiguous() {
        return v[layout.offset()..layout.offset() + n].to_vec();
    }
    let mut out = zeroed(n);
    copy::copy_strided(
        layout.shape(),
        v,
        layout.offset(),
        layout.strides(),
        &mut out,
        0,
        &contiguous_strides(layout.shape()),
    );
    out
}

/// Borrows the contiguous elements of `layout` without a copy when possible.
pub(crate) fn contiguous_slice<'a, T: noisegrad_kernels::Float>(
    v: &'a [T],
    layout: &Layout,
) -> std::borrow::Cow<'a, [T]> {
    if layout.is_contiguous() {
        std::borrow::Cow::Borrowed(&v[layout.offset()..layout.offset() + layout.numel()])
    } else {
        std::borrow::Cow::Owned(gather_contiguous(v, layout))
    }
}

impl CpuStorage {
    pub fn new(data: CpuData) -> Self {
        let bytes = data.len() * data.dtype().size_in_bytes();
        Self {
            data,
            _mem: MemTicket::new(Device::Cpu, bytes),
        }
    }

    pub fn data(&self) -> &CpuData {
        &self.data
    }

    pub fn data_mut(&mut self) -> &mut CpuData {
        &mut self.data
    }

    pub fn dtype(&self) -> DType {
        self.data.dtype()
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn zeros(dtype: DType, n: usize) -> Result<Self> {
        Ok(Self::new(match dtype {
            DType::F32 => CpuData::F32(try_zeroed("zeros", n)?),
            DType::F64 => CpuData::F64(try_zeroed("zeros", n)?),
        }))
    }

    pub fn full(dtype: DType, n: usize, value: f64) -> Result<Self> {
        Ok(Self::new(match dtype {
            DType::F32 => CpuData::F32(try_filled("full", n, value as f32)?),
            DType::F64 => CpuData::F64(try_filled("full", n, value)?),
        }))
    }

    pub fn from_f64(dtype: DType, data: &[f64]) -> Result<Self> {
        Ok(Self::new(match dtype {
            DType::F32 => CpuData::F32(try_converted(data, |v| v as f32)?),
            DType::F64 => CpuData::F64(try_converted(data, |v| v)?),
        }))
    }

    /// Fills from Philox blocks reserved on `rng`: element `i` depends only
    /// on (seed, first block, i), so the fill is parallel and reproducible.
    pub fn rand(dtype: DType, n: usize, kind: RandKind, rng: &mut Philox) -> Result<Self> {
        let mut vals = try_zeroed::<f64>("rand", n)?;
        let seed = rng.seed();
        let first = rng.reserve_blocks(n.div_ceil(4) as u64);
        vals.par_chunks_mut(4).enumerate().for_each(|(b, out)| {
            let w = Philox::block(seed, first + b as u64);
            let u = w.map(u32_to_open01);
            match kind {
                RandKind::Uniform => out.copy_from_slice(&u[..out.len()]),
                RandKind::Normal => {
                    // Box–Muller: two uniforms → two independent N(0,1).
                    let bm = |u1: f64, u2: f64| {
                        let r = (-2.0 * u1.ln()).sqrt();
                        let th = 2.0 * std::f64::consts::PI * u2;
                        [r * th.cos(), r * th.sin()]
                    };
                    let [a, b2] = bm(u[0], u[1]);
                    let [c, d] = bm(u[2], u[3]);
                    out.copy_from_slice(&[a, b2, c, d][..out.len()]);
                }
            }
        });
        Self::from_f64(dtype, &vals)
    }

    pub fn to_f64_vec(&self, layout: &Layout) -> Vec<f64> {
        with_data!(&self.data, v => gather_contiguous(v, layout).into_iter().map(|x| x.to_f64_lossless()).collect())
    }

    pub fn to_dtype(&self, layout: &Layout, dtype: DType) -> Result<Self> {
        if dtype == self.dtype() {
            return Ok(self.contiguous(layout));
        }
        Self::from_f64(dtype, &self.to_f64_vec(layout))
    }

    pub fn contiguous(&self, layout: &Layout) -> Self {
        Self::new(map_data!(&self.data, v => gather_contiguous(v, layout)))
    }

    pub fn copy_from(&mut self, dst: &Layout, src: &CpuStorage, src_layout: &Layout) -> Result<()> {
        if dst.shape() != src_layout.shape() {
            return Err(crate::error::shape_err(
                "copy",
                dst.shape(),
                src_layout.shape(),
                "shapes differ",
            ));
        }
        match (&mut self.data, &src.data) {
            (CpuData::F32(d), CpuData::F32(s)) => copy::copy_strided(
                dst.shape(),
                s,
                src_layout.offset(),
                src_layout.strides(),
                d,
                dst.offset(),
                dst.strides(),
            ),
            (CpuData::F64(d), CpuData::F64(s)) => copy::copy_strided(
                dst.shape(),
                s,
                src_layout.offset(),
                src_layout.strides(),
                d,
                dst.offset(),
                dst.strides(),
            ),
            (d, s) => {
                return Err(Error::DTypeMismatch {
                    op: "copy",
                    lhs: d.dtype(),
                    rhs: s.dtype(),
                });
            }
        }
        Ok(())
    }

    pub fn unary(&self, layout: &Layout, op: UnaryOp) -> Self {
        Self::new(map_data!(&self.data, v => {
            let x = contiguous_slice(v, layout);
            let mut out = zeroed(x.len());
            elementwise::unary(op, &x, &mut out);
            out
        }))
    }

    pub fn binary(&self, l: &Layout, rhs: &CpuStorage, r: &Layout, op: BinaryOp) -> Result<Self> {
        let data = zip_data!("binary", &self.data, &rhs.data, (a, b) => {
            let mut out = zeroed(l.numel());
            elementwise::binary(
                op,
                l.shape(),
                Strided { data: a, offset: l.offset(), strides: l.strides() },
                Strided { data: b, offset: r.offset(), strides: r.strides() },
                &mut out,
            );
            out
        });
        Ok(Self::new(data))
    }

    pub fn where_cond(
        &self,
        c: &Layout,
        a: &CpuStorage,
        al: &Layout,
        b: &CpuStorage,
        bl: &Layout,
    ) -> Result<Self> {
        let data = match (&self.data, &a.data, &b.data) {
            (CpuData::F32(cv), CpuData::F32(av), CpuData::F32(bv)) => {
                CpuData::F32(where_typed(c, cv, al, av, bl, bv))
            }
            (CpuData::F64(cv), CpuData::F64(av), CpuData::F64(bv)) => {
                CpuData::F64(where_typed(c, cv, al, av, bl, bv))
            }
            _ => {
                return Err(Error::DTypeMismatch {
                    op: "where",
                    lhs: a.dtype(),
                    rhs: b.dtype(),
                });
            }
        };
        Ok(Self::new(data))
    }

    /// Reduces over `axes` (sorted, unique) one contiguous run of axes at a
    /// time, from the last run to the first, with the block kernel.
    pub fn reduce(&self, layout: &Layout, op: ReduceOp, axes: &[usize]) -> Self {
        let runs = crate::layout::reduce_runs(layout.shape(), axes);
        Self::new(map_data!(&self.data, v => {
            let mut cur = contiguous_slice(v, layout);
            for &(outer, r, inner) in &runs {
                let mut out = zeroed(outer * inner);
                reduce::reduce(op, &cur, outer, r, inner, &mut out);
                cur = std::borrow::Cow::Owned(out);
            }
            cur.into_owned()
        }))
    }

    pub fn matmul(&self, l: &Layout, rhs: &CpuStorage, r: &Layout, d: &MatmulDims) -> Result<Self> {
        let data =
            zip_data!("matmul", &self.data, &rhs.data, (a, b) => matmul_typed(a, l, b, r, d));
        Ok(Self::new(data))
    }

    pub fn softmax(&self, layout: &Layout, axis: usize, log: bool) -> Self {
        let (outer, dim, inner) = split_at_axis(layout.shape(), axis);
        Self::new(map_data!(&self.data, v => {
            let x = contiguous_slice(v, layout);
            let mut out = zeroed(x.len());
            softmax::softmax(&x, outer, dim, inner, log, &mut out);
            out
        }))
    }

    pub fn softmax_backward(
        &self,
        yl: &Layout,
        g: &CpuStorage,
        gl: &Layout,
        axis: usize,
        log: bool,
    ) -> Self {
        let (outer, dim, inner) = split_at_axis(yl.shape(), axis);
        Self::new(match (&self.data, &g.data) {
            (CpuData::F32(y), CpuData::F32(gv)) => CpuData::F32(softmax_bwd_typed(
                (y, yl),
                (gv, gl),
                [outer, dim, inner],
                log,
            )),
            (CpuData::F64(y), CpuData::F64(gv)) => CpuData::F64(softmax_bwd_typed(
                (y, yl),
                (gv, gl),
                [outer, dim, inner],
                log,
            )),
            _ => unreachable!("softmax backward: the tape keeps dtypes equal"),
        })
    }

    pub fn index_select(&self, layout: &Layout, axis: usize, ids: &[usize]) -> Self {
        let (outer, dim, inner) = split_at_axis(layout.shape(), axis);
        Self::new(map_data!(&self.data, v => {
            let x = contiguous_slice(v, layout);
            let mut out = zeroed(outer * ids.len() * inner);
            index::index_select(&x, outer, dim, inner, ids, &mut out);
            out
        }))
    }

    pub fn index_add_zeros(
        &self,
        src_layout: &Layout,
        shape: &[usize],
        axis: usize,
        ids: &[usize],
    ) -> Self {
        let (outer, dim, inner) = split_at_axis(shape, axis);
        Self::new(map_data!(&self.data, v => {
            let src = contiguous_slice(v, src_layout);
            let mut acc = zeroed(outer * dim * inner);
            index::index_add(&mut acc, outer, dim, inner, ids, &src);
            acc
        }))
    }

    pub fn sum_squares(&self, layout: &Layout) -> f64 {
        with_data!(&self.data, v => reduce::sum_squares_f64(&contiguous_slice(v, layout)))
    }

    pub fn adam_step(
        &mut self,
        g: &CpuStorage,
        m: &mut CpuStorage,
        v: &mut CpuStorage,
        s: optim::AdamStep,
        scale: f64,
    ) -> Result<()> {
        match (&mut self.data, &g.data, &mut m.data, &mut v.data) {
            (CpuData::F32(p), CpuData::F32(g), CpuData::F32(m), CpuData::F32(v)) => {
                optim::adam(p, g, m, v, s, scale)
            }
            (CpuData::F64(p), CpuData::F64(g), CpuData::F64(m), CpuData::F64(v)) => {
                optim::adam(p, g, m, v, s, scale)
            }
            _ => {
                return Err(Error::BadArgument {
                    op: "adam",
                    msg: "parameter, gradient and moments must share a dtype".into(),
                });
            }
        }
        Ok(())
    }

    pub fn ema_update(&mut self, p: &CpuStorage, decay: f64) -> Result<()> {
        match (&mut self.data, &p.data) {
            (CpuData::F32(e), CpuData::F32(p)) => optim::ema(e, p, decay),
            (CpuData::F64(e), CpuData::F64(p)) => optim::ema(e, p, decay),
            (e, p) => {
                return Err(Error::DTypeMismatch {
                    op: "ema",
                    lhs: e.dtype(),
                    rhs: p.dtype(),
                });
            }
        }
        Ok(())
    }
}

/// f64 conversion for host read-back.
trait ToF64Lossless {
    fn to_f64_lossless(self) -> f64;
}
impl<T: noisegrad_kernels::Float> ToF64Lossless for T {
    fn to_f64_lossless(self) -> f64 {
        self.to_f64()
    }
}

fn where_typed<T: noisegrad_kernels::Float>(
    c: &Layout,
    cv: &[T],
    al: &Layout,
    av: &[T],
    bl: &Layout,
    bv: &[T],
) -> Vec<T> {
    let mut out = zeroed(c.numel());
    elementwise::where_cond(
        c.shape(),
        Strided {
            data: cv,
            offset: c.offset(),
            strides: c.strides(),
        },
        Strided {
            data: av,
            offset: al.offset(),
            strides: al.strides(),
        },
        Strided {
            data: bv,
            offset: bl.offset(),
            strides: bl.strides(),
        },
        &mut out,
    );
    out
}

/// Softmax backward of y (with its layout) and g over the `[outer, dim,
/// inner]` view of the softmax axis.
fn softmax_bwd_typed<T: noisegrad_kernels::Float>(
    (y, yl): (&[T], &Layout),
    (g, gl): (&[T], &Layout),
    [outer, dim, inner]: [usize; 3],
    log: bool,
) -> Vec<T> {
    let (y, g) = (contiguous_slice(y, yl), contiguous_slice(g, gl));
    let mut out = zeroed(y.len());
    softmax::softmax_backward(&y, &g, outer, dim, inner, log, &mut out);
    out
}

/// Batched product over layouts already broadcast to `[batch.., m, k]` and
/// `[batch.., k, n]`: any strides work (transposes are free), batch offsets
/// are enumerated from the batch strides.
fn matmul_typed<T: noisegrad_kernels::gemm::cpu::Gemm>(
    a: &[T],
    l: &Layout,
    b: &[T],
    r: &Layout,
    d: &MatmulDims,
) -> Vec<T> {
    let nb = d.batch.len();
    let batch_offsets = |lay: &Layout| -> Vec<usize> {
        let count: usize = d.batch.iter().product();
        (0..count)
            .map(|mut i| {
                let mut off = lay.offset();
                for ax in (0..nb).rev() {
                    off += (i % d.batch[ax]) * lay.strides()[ax];
                    i /= d.batch[ax];
                }
                off
            })
            .collect()
    };
    let (ao, bo) = (batch_offsets(l), batch_offsets(r));
    let (ls, rs) = (l.strides(), r.strides());
    let mut out = zeroed(ao.len() * d.m * d.n);
    batched_gemm(
        (d.m, d.k, d.n),
        T::ONE,
        (
            MatRef {
                data: a,
                rs: ls[nb],
                cs: ls[nb + 1],
            },
            &ao,
        ),
        (
            MatRef {
                data: b,
                rs: rs[nb],
                cs: rs[nb + 1],
            },
            &bo,
        ),
        T::ZERO,
        &mut out,
    );
    out
}
