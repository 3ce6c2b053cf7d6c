//! Launchers for `elementwise.cu`: fill, strided copies, unary/binary/where.
//!
//! Operands are a buffer plus a [`Strided`] view; contiguous operands take
//! the `_contig` kernels, which skip the index arithmetic.

use super::{BinaryOp, UnaryOp};
use crate::cuda::abi::{Arg, Strided};
use crate::cuda::{CudaDevice, CudaError, DeviceBuffer, Result, grid_1d};
use std::marker::PhantomData;

const MODULE: &str = "elementwise";

/// A read-only operand: a buffer seen through a view.
#[derive(Clone, Copy, Debug)]
pub struct View<'a> {
    pub buf: &'a DeviceBuffer,
    pub strided: Strided,
    /// Whether the view is the contiguous run `offset..offset + numel`.
    pub contiguous: bool,
}

impl View<'_> {
    /// Device pointer of the view's first element when contiguous.
    pub fn contiguous_ptr(&self) -> Option<u64> {
        self.contiguous
            .then(|| self.buf.ptr_at(self.strided.offset as usize))
    }
}

/// A view's elements as one contiguous run on the device: the view's own
/// memory when it already is one, otherwise a packed copy kept alive here
/// (the borrow keeps the viewed buffer alive as long as the pointer is used).
pub struct Dense<'a> {
    ptr: u64,
    _packed: Option<DeviceBuffer>,
    _view: PhantomData<&'a DeviceBuffer>,
}

impl<'a> Dense<'a> {
    /// `v` (of `n` elements) as a contiguous run; `op` names the caller in
    /// the error if the view does not hold `n` elements.
    pub fn new(dev: &CudaDevice, v: View<'a>, n: usize, op: &'static str) -> Result<Dense<'a>> {
        let s = &v.strided;
        let numel: usize = s.shape[..s.rank as usize]
            .iter()
            .map(|&d| d as usize)
            .product();
        if numel != n {
            return Err(CudaError::Driver {
                op,
                msg: format!("an operand has {numel} elements where {n} were expected"),
            });
        }
        Ok(match v.contiguous_ptr() {
            Some(ptr) => Dense {
                ptr,
                _packed: None,
                _view: PhantomData,
            },
            None => {
                let packed = contiguous(dev, v, n)?;
                Dense {
                    ptr: packed.ptr(),
                    _packed: Some(packed),
                    _view: PhantomData,
                }
            }
        })
    }

    /// Device address of element 0.
    pub fn ptr(&self) -> u64 {
        self.ptr
    }

    /// Device address of element `i`.
    pub fn ptr_at(&self, i: usize) -> u64 {
        self.ptr + 4 * i as u64
    }
}

/// The op code (see `unary_eval` in elementwise.cu) and its two parameters.
pub fn unary_code(op: UnaryOp) -> (i32, f32, f32) {
    match op {
        UnaryOp::Neg => (0, 0.0, 0.0),
        UnaryOp::Exp => (1, 0.0, 0.0),
        UnaryOp::Log => (2, 0.0, 0.0),
        UnaryOp::Sqrt => (3, 0.0, 0.0),
        UnaryOp::Sqr => (4, 0.0, 0.0),
        UnaryOp::Abs => (5, 0.0, 0.0),
        UnaryOp::Recip => (6, 0.0, 0.0),
        UnaryOp::Sigmoid => (7, 0.0, 0.0),
        UnaryOp::Silu => (8, 0.0, 0.0),
        UnaryOp::Tanh => (9, 0.0, 0.0),
        UnaryOp::Relu => (10, 0.0, 0.0),
        UnaryOp::Sign => (11, 0.0, 0.0),
        UnaryOp::Affine { mul, add } => (12, mul as f32, add as f32),
        UnaryOp::Powf(e) => (13, e as f32, 0.0),
        UnaryOp::MaxScalar(c) => (14, c as f32, 0.0),
        UnaryOp::MinScalar(c) => (15, c as f32, 0.0),
        UnaryOp::GeScalar(c) => (16, c as f32, 0.0),
    }
}

/// The op code of `binary_eval` in elementwise.cu.
pub fn binary_code(op: BinaryOp) -> i32 {
    match op {
        BinaryOp::Add => 0,
        BinaryOp::Sub => 1,
        BinaryOp::Mul => 2,
        BinaryOp::Div => 3,
        BinaryOp::Maximum => 4,
        BinaryOp::Minimum => 5,
        BinaryOp::Pow => 6,
        BinaryOp::Eq => 7,
        BinaryOp::Ne => 8,
        BinaryOp::Lt => 9,
        BinaryOp::Le => 10,
        BinaryOp::Gt => 11,
        BinaryOp::Ge => 12,
        BinaryOp::SiluBackward => 13,
        BinaryOp::SigmoidBackward => 14,
        BinaryOp::TanhBackward => 15,
        BinaryOp::ReluBackward => 16,
    }
}

/// A new buffer of `n` copies of `value`.
pub fn fill(dev: &CudaDevice, n: usize, value: f32) -> Result<DeviceBuffer> {
    let y = dev.alloc(n)?;
    dev.launch(
        MODULE,
        "fill",
        grid_1d(dev, n),
        &[Arg::Ptr(y.ptr()), Arg::F32(value), Arg::I64(n as i64)],
    )?;
    Ok(y)
}

/// The `n` elements of `x`, contiguous.
pub fn contiguous(dev: &CudaDevice, x: View, n: usize) -> Result<DeviceBuffer> {
    let y = dev.alloc(n)?;
    match x.contiguous_ptr() {
        Some(p) if n > 0 => copy_d2d(dev, p, y.ptr(), n)?,
        Some(_) => {}
        None => dev.launch(
            MODULE,
            "copy_strided",
            grid_1d(dev, n),
            &[
                Arg::Ptr(x.buf.ptr()),
                Arg::Strided(x.strided),
                Arg::Ptr(y.ptr()),
                Arg::I64(n as i64),
            ],
        )?,
    }
    Ok(y)
}

/// Queues a device-to-device copy of `n` f32.
pub fn copy_d2d(dev: &CudaDevice, src: u64, dst: u64, n: usize) -> Result<()> {
    dev.copy_d2d(src, dst, n * 4)
}

/// Writes the `n` elements of view `x` into view `y` of `dst` (same shape).
pub fn copy_into(
    dev: &CudaDevice,
    x: View,
    dst: &DeviceBuffer,
    y: Strided,
    n: usize,
) -> Result<()> {
    dev.launch(
        MODULE,
        "copy_into",
        grid_1d(dev, n),
        &[
            Arg::Ptr(x.buf.ptr()),
            Arg::Strided(x.strided),
            Arg::Ptr(dst.ptr()),
            Arg::Strided(y),
            Arg::I64(n as i64),
        ],
    )
}

/// y = op(x) over the `n` elements of `x`.
pub fn unary(dev: &CudaDevice, op: UnaryOp, x: View, n: usize) -> Result<DeviceBuffer> {
    let (code, p0, p1) = unary_code(op);
    let y = dev.alloc(n)?;
    let head = [Arg::I32(code), Arg::F32(p0), Arg::F32(p1)];
    let args: Vec<Arg> = match x.contiguous_ptr() {
        Some(p) => [
            &head[..],
            &[Arg::Ptr(p), Arg::Ptr(y.ptr()), Arg::I64(n as i64)],
        ]
        .concat(),
        None => [
            &head[..],
            &[
                Arg::Ptr(x.buf.ptr()),
                Arg::Strided(x.strided),
                Arg::Ptr(y.ptr()),
                Arg::I64(n as i64),
            ],
        ]
        .concat(),
    };
    let name = if x.contiguous {
        "unary_contig"
    } else {
        "unary_strided"
    };
    dev.launch(MODULE, name, grid_1d(dev, n), &args)?;
    Ok(y)
}

/// y = op(a, b) over `n` elements; the views are already broadcast to one
/// shape (zero strides on broadcast dims).
pub fn binary(dev: &CudaDevice, op: BinaryOp, a: View, b: View, n: usize) -> Result<DeviceBuffer> {
    let y = dev.alloc(n)?;
    let code = Arg::I32(binary_code(op));
    let len = Arg::I64(n as i64);
    match (a.contiguous_ptr(), b.contiguous_ptr()) {
        (Some(pa), Some(pb)) => dev.launch(
            MODULE,
            "binary_contig",
            grid_1d(dev, n),
            &[code, Arg::Ptr(pa), Arg::Ptr(pb), Arg::Ptr(y.ptr()), len],
        )?,
        _ => dev.launch(
            MODULE,
            "binary_strided",
            grid_1d(dev, n),
            &[
                code,
                Arg::Ptr(a.buf.ptr()),
                Arg::Strided(a.strided),
                Arg::Ptr(b.buf.ptr()),
                Arg::Strided(b.strided),
                Arg::Ptr(y.ptr()),
                len,
            ],
        )?,
    }
    Ok(y)
}

/// y = c ≠ 0 ? a : b over `n` elements of three same-shape views.
pub fn where_cond(dev: &CudaDevice, c: View, a: View, b: View, n: usize) -> Result<DeviceBuffer> {
    let y = dev.alloc(n)?;
    dev.launch(
        MODULE,
        "where_cond",
        grid_1d(dev, n),
        &[
            Arg::Ptr(c.buf.ptr()),
            Arg::Strided(c.strided),
            Arg::Ptr(a.buf.ptr()),
            Arg::Strided(a.strided),
            Arg::Ptr(b.buf.ptr()),
            Arg::Strided(b.strided),
            Arg::Ptr(y.ptr()),
            Arg::I64(n as i64),
        ],
    )?;
    Ok(y)
}
