//! Launchers for `conv.cu`: 2-D convolution (NCHW, any kernel size, one
//! stride and one padding for both axes, optional bias) as im2col + cuBLAS.
//!
//! Same definition and outputs as [`crate::conv::cpu`]; with K = C·kh·kw
//! rows of the column matrix and P = Ho·Wo output pixels:
//!
//! - forward: per image `Y_n = W · col(X_n)`, W `[O, K]` broadcast over a
//!   batched GEMM (batch stride 0), then `add_bias`;
//! - input gradient: per image `dcol_n = Wᵀ · dY_n` (batched GEMM, W read
//!   transposed in place), then `col2im`, a gather (each input pixel sums
//!   the column entries that read it: no atomics, deterministic);
//! - weight gradient: `dW = Σ_n dY_n · col(X_n)ᵀ` as *one* GEMM per chunk of
//!   images, with inner dimension chunk·P: the columns are laid out
//!   `[K, chunk·P]` and dY is rearranged to `[O, chunk·P]` (the same im2col
//!   kernel with a 1×1 kernel), and successive chunks accumulate (beta = 1);
//! - bias gradient: one block per output channel reduces dY over N, H, W.
//!
//! A 1×1 kernel with stride 1 and no padding needs no im2col in forward and
//! input gradient: each image already is its K×P column matrix, so the
//! whole batch is one batched GEMM.
//!
//! The column buffers are bounded by a workspace limit (256 MiB by
//! default, [`set_workspace_limit`]): the batch is processed in chunks of
//! [`images_per_chunk`] images, so memory does not grow with the batch.
//!
//! Trade-off: an implicit-GEMM convolution on tensor cores (what cuDNN and
//! CUTLASS do) would skip the column buffer and its write + read, and is
//! faster. im2col + cuBLAS is used because every piece is simple enough to
//! check by reading: the data movement is two short kernels with plain
//! index arithmetic and the arithmetic is cuBLAS's, which also gives TF32
//! tensor cores when [`CudaDevice::set_tf32`] is on.

use super::Conv2dGeometry;
use crate::cuda::abi::Arg;
use crate::cuda::{BLOCK, CudaDevice, CudaError, DeviceBuffer, Result, grid_1d, grid_rows};
use crate::elementwise::cuda::{Dense, View};
use crate::gemm::cuda::{MatOperand, MatOut, gemm};
use std::sync::atomic::{AtomicUsize, Ordering};

const MODULE: &str = "conv";

/// Default bound on the column buffers of one convolution call: 256 MiB,
/// large enough that the GEMMs are big (the U-Net's 3×3 layers at 128
/// channels, 32×32, take ~50 images per chunk), small next to an H100.
pub const DEFAULT_WORKSPACE_BYTES: usize = 256 << 20;

static WORKSPACE_BYTES: AtomicUsize = AtomicUsize::new(DEFAULT_WORKSPACE_BYTES);

/// Sets the bound on the column buffers (bytes) for all later convolutions
/// (tests shrink it to exercise chunking); results do not depend on it
/// beyond rounding in the weight gradient's sum over chunks.
pub fn set_workspace_limit(bytes: usize) {
    WORKSPACE_BYTES.store(bytes, Ordering::Relaxed);
}

/// The current bound on the column buffers, in bytes.
pub fn workspace_limit() -> usize {
    WORKSPACE_BYTES.load(Ordering::Relaxed)
}

/// Images per chunk so that `floats_per_image` f32 of workspace per image
/// stay within `limit_bytes`: at least 1 (one image always runs, even
/// over the limit) and at most `batch`.
pub fn images_per_chunk(floats_per_image: usize, batch: usize, limit_bytes: usize) -> usize {
    let per_image = floats_per_image.max(1).saturating_mul(4);
    (limit_bytes / per_image).clamp(1, batch.max(1))
}

/// What the `im2col` / `col2im` kernels need to know about the images and
/// the kernel window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ColShape {
    c: usize,
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    stride: usize,
    pad: usize,
    ho: usize,
    wo: usize,
}

impl ColShape {
    fn of(g: &Conv2dGeometry) -> ColShape {
        ColShape {
            c: g.in_channels,
            h: g.in_h,
            w: g.in_w,
            kh: g.kernel_h,
            kw: g.kernel_w,
            stride: g.stride,
            pad: g.padding,
            ho: g.out_h(),
            wo: g.out_w(),
        }
    }

    /// `[count, c, h, w]` images seen through a 1×1 window (stride 1, no
    /// padding): im2col in the `[K, count·P]` layout is then the transpose
    /// `[count, c, h·w] → [c, count·h·w]`.
    fn pointwise(c: usize, h: usize, w: usize) -> ColShape {
        ColShape {
            c,
            h,
            w,
            kh: 1,
            kw: 1,
            stride: 1,
            pad: 0,
            ho: h,
            wo: w,
        }
    }

    /// Rows of the column matrix: K = C·kh·kw.
    fn rows(&self) -> usize {
        self.c * self.kh * self.kw
    }

    /// Columns of one image's column matrix: P = Ho·Wo.
    fn pixels(&self) -> usize {
        self.ho * self.wo
    }

    fn image_len(&self) -> usize {
        self.c * self.h * self.w
    }

    /// A 1×1 kernel, stride 1, no padding: the image is its own column matrix.
    fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.pad == 0
    }

    /// `C, H, W, KH, KW, stride, pad, Ho, Wo` as the kernels' `int`s, after
    /// checking that the per-image sizes the kernels index with `int` (K,
    /// P, C·H·W and the padded height and width) fit in an i32.
    fn args(&self) -> Result<[Arg; 9]> {
        let int = |what: &str, v: Option<usize>| {
            v.and_then(|v| i32::try_from(v).ok())
                .ok_or_else(|| CudaError::Driver {
                    op: "conv2d",
                    msg: format!("{what} does not fit the kernels' 32-bit sizes ({self:?})"),
                })
        };
        let mul = |a: usize, b: usize, c: usize| a.checked_mul(b)?.checked_mul(c);
        let padded = |len: usize| self.pad.checked_mul(2)?.checked_add(len);
        int("C·kh·kw", mul(self.c, self.kh, self.kw))?;
        int("Ho·Wo", self.ho.checked_mul(self.wo))?;
        int("C·H·W", mul(self.c, self.h, self.w))?;
        int("the padded height", padded(self.h))?;
        int("the padded width", padded(self.w))?;
        let arg = |what: &str, v: usize| int(what, Some(v)).map(Arg::I32);
        Ok([
            arg("channels", self.c)?,
            arg("height", self.h)?,
            arg("width", self.w)?,
            arg("kernel height", self.kh)?,
            arg("kernel width", self.kw)?,
            arg("stride", self.stride)?,
            arg("padding", self.pad)?,
            arg("output height", self.ho)?,
            arg("output width", self.wo)?,
        ])
    }
}

/// Writes the column matrices of `count` images starting at `x` into
/// `col`: `[count, K, P]` when `images_first`, else `[K, count·P]`.
fn im2col(
    dev: &CudaDevice,
    s: &ColShape,
    x: u64,
    col: &DeviceBuffer,
    count: usize,
    images_first: bool,
) -> Result<()> {
    let n = count * s.rows() * s.pixels();
    assert!(n <= col.len(), "im2col: column buffer too small");
    let mut args = vec![
        Arg::Ptr(x),
        Arg::Ptr(col.ptr()),
        Arg::I64(count as i64),
        Arg::I32(images_first as i32),
    ];
    args.extend(s.args()?);
    dev.launch(MODULE, "im2col", grid_1d(dev, n), &args)
}

/// dx (`count` images starting at `dx`) from the `[count, K, P]` column
/// gradients in `dcol`.
fn col2im(
    dev: &CudaDevice,
    s: &ColShape,
    dcol: &DeviceBuffer,
    dx: u64,
    count: usize,
) -> Result<()> {
    assert!(
        count * s.rows() * s.pixels() <= dcol.len(),
        "col2im: column buffer too small"
    );
    let n = count * s.image_len();
    let mut args = vec![Arg::Ptr(dcol.ptr()), Arg::Ptr(dx), Arg::I64(count as i64)];
    args.extend(s.args()?);
    dev.launch(MODULE, "col2im", grid_1d(dev, n), &args)
}

/// `y = conv(x, w) + bias`: x `[N, C, H, W]`, w `[O, C, kh, kw]`, bias
/// `[O]` (any views); returns y `[N, O, Ho, Wo]`, contiguous.
pub fn forward(
    dev: &CudaDevice,
    g: &Conv2dGeometry,
    x: View,
    w: View,
    bias: Option<View>,
) -> Result<DeviceBuffer> {
    let s = ColShape::of(g);
    let (k, p, o, batch) = (s.rows(), s.pixels(), g.out_channels, g.batch);
    let y = dev.alloc(g.output_len())?;
    if y.is_empty() {
        return Ok(y);
    }
    if k == 0 {
        // No input channels: the sum is empty (cuBLAS is not asked for k = 0).
        y.memset_zero(dev)?;
    } else {
        let x = Dense::new(dev, x, g.input_len(), "conv2d")?;
        let w = Dense::new(dev, w, g.weight_len(), "conv2d")?;
        let wa = MatOperand {
            ptr: w.ptr(),
            ld: k,
            trans: false,
            batch_stride: 0,
        };
        // Y_n = W · B_n for `count` images from n0, B_n being K×P matrices
        // `batch_stride` apart.
        let run = |b: u64, batch_stride: usize, n0: usize, count: usize| {
            let cols = MatOperand {
                ptr: b,
                ld: p,
                trans: false,
                batch_stride,
            };
            let out = MatOut {
                ptr: y.ptr_at(n0 * o * p),
                ld: p,
                batch_stride: o * p,
            };
            gemm(dev, (o, p, k), wa, cols, out, count, (1.0, 0.0))
        };
        if s.is_pointwise() {
            run(x.ptr(), k * p, 0, batch)?;
        } else {
            let chunk = images_per_chunk(k * p, batch, workspace_limit());
            let col = dev.alloc(chunk * k * p)?;
            for n0 in (0..batch).step_by(chunk) {
                let count = chunk.min(batch - n0);
                im2col(dev, &s, x.ptr_at(n0 * s.image_len()), &col, count, true)?;
                run(col.ptr(), k * p, n0, count)?;
            }
        }
    }
    if let Some(b) = bias {
        let b = Dense::new(dev, b, o, "conv2d")?;
        let n = y.len();
        dev.launch(
            MODULE,
            "add_bias",
            grid_1d(dev, n),
            &[
                Arg::Ptr(y.ptr()),
                Arg::Ptr(b.ptr()),
                Arg::I64(o as i64),
                Arg::I64(p as i64),
                Arg::I64(n as i64),
            ],
        )?;
    }
    Ok(y)
}

/// ∂L/∂x `[N, C, H, W]` (contiguous) from dy `[N, O, Ho, Wo]` and w.
pub fn backward_input(
    dev: &CudaDevice,
    g: &Conv2dGeometry,
    dy: View,
    w: View,
) -> Result<DeviceBuffer> {
    let s = ColShape::of(g);
    let (k, p, o, batch) = (s.rows(), s.pixels(), g.out_channels, g.batch);
    let dx = dev.alloc(g.input_len())?;
    if dx.is_empty() {
        return Ok(dx);
    }
    if o == 0 {
        // No output channels: nothing flows back (and no k = 0 GEMM).
        dx.memset_zero(dev)?;
        return Ok(dx);
    }
    let dy = Dense::new(dev, dy, g.output_len(), "conv2d_backward")?;
    let w = Dense::new(dev, w, g.weight_len(), "conv2d_backward")?;
    // Wᵀ (K×O), read in place from the O×K weights.
    let wt = MatOperand {
        ptr: w.ptr(),
        ld: k,
        trans: true,
        batch_stride: 0,
    };
    // dcol_n = Wᵀ · dY_n for `count` images from n0, into K×P matrices at `out`.
    let run = |n0: usize, count: usize, out: u64| {
        let dy_n = MatOperand {
            ptr: dy.ptr_at(n0 * o * p),
            ld: p,
            trans: false,
            batch_stride: o * p,
        };
        let c = MatOut {
            ptr: out,
            ld: p,
            batch_stride: k * p,
        };
        gemm(dev, (k, p, o), wt, dy_n, c, count, (1.0, 0.0))
    };
    if s.is_pointwise() {
        run(0, batch, dx.ptr())?;
    } else {
        let chunk = images_per_chunk(k * p, batch, workspace_limit());
        let dcol = dev.alloc(chunk * k * p)?;
        for n0 in (0..batch).step_by(chunk) {
            let count = chunk.min(batch - n0);
            run(n0, count, dcol.ptr())?;
            col2im(dev, &s, &dcol, dx.ptr_at(n0 * s.image_len()), count)?;
        }
    }
    Ok(dx)
}

/// ∂L/∂w `[O, C, kh, kw]` (contiguous) = Σ over the batch, from x and dy.
pub fn backward_weight(
    dev: &CudaDevice,
    g: &Conv2dGeometry,
    x: View,
    dy: View,
) -> Result<DeviceBuffer> {
    let s = ColShape::of(g);
    let (k, p, o, batch) = (s.rows(), s.pixels(), g.out_channels, g.batch);
    let dw = dev.alloc(g.weight_len())?;
    if dw.is_empty() {
        return Ok(dw);
    }
    if batch == 0 {
        dw.memset_zero(dev)?;
        return Ok(dw);
    }
    let x = Dense::new(dev, x, g.input_len(), "conv2d_backward")?;
    let dy = Dense::new(dev, dy, g.output_len(), "conv2d_backward")?;
    // dY of a chunk, [count, O, Ho, Wo], rearranged to [O, count·P].
    let dy_shape = ColShape::pointwise(o, s.ho, s.wo);
    let chunk = images_per_chunk((k + o) * p, batch, workspace_limit());
    let cols = dev.alloc(chunk * k * p)?;
    let dyt = dev.alloc(chunk * o * p)?;
    for (i, n0) in (0..batch).step_by(chunk).enumerate() {
        let count = chunk.min(batch - n0);
        im2col(dev, &s, x.ptr_at(n0 * s.image_len()), &cols, count, false)?;
        im2col(dev, &dy_shape, dy.ptr_at(n0 * o * p), &dyt, count, false)?;
        // dW (O×K) (+)= dYt (O × count·P) · colsᵀ (count·P × K).
        let wide = count * p;
        let a = MatOperand {
            ptr: dyt.ptr(),
            ld: wide,
            trans: false,
            batch_stride: 0,
        };
        let b = MatOperand {
            ptr: cols.ptr(),
            ld: wide,
            trans: true,
            batch_stride: 0,
        };
        let c = MatOut {
            ptr: dw.ptr(),
            ld: k,
            batch_stride: 0,
        };
        let beta = if i == 0 { 0.0 } else { 1.0 };
        gemm(dev, (o, k, wide), a, b, c, 1, (1.0, beta))?;
    }
    Ok(dw)
}

/// ∂L/∂bias `[O]` = Σ_{n,oh,ow} dy[n, o, oh, ow].
pub fn backward_bias(dev: &CudaDevice, g: &Conv2dGeometry, dy: View) -> Result<DeviceBuffer> {
    let (o, p, batch) = (g.out_channels, g.out_h() * g.out_w(), g.batch);
    let db = dev.alloc(o)?;
    if db.is_empty() {
        return Ok(db);
    }
    if batch == 0 {
        db.memset_zero(dev)?;
        return Ok(db);
    }
    let dy = Dense::new(dev, dy, g.output_len(), "conv2d_backward")?;
    dev.launch(
        MODULE,
        "bias_grad",
        grid_rows(o, BLOCK, 0),
        &[
            Arg::Ptr(dy.ptr()),
            Arg::Ptr(db.ptr()),
            Arg::I64(batch as i64),
            Arg::I64(o as i64),
            Arg::I64(p as i64),
        ],
    )?;
    Ok(db)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_stay_within_the_workspace_and_the_batch() {
        // 3×3 conv, 128 channels, 32×32: K·P = 1152·1024 floats = 4.5 MiB.
        let per_image = 1152 * 1024;
        assert_eq!(
            images_per_chunk(per_image, 128, DEFAULT_WORKSPACE_BYTES),
            56
        );
        for (per, batch, limit) in [
            (per_image, 128, DEFAULT_WORKSPACE_BYTES),
            (27 * 1024, 128, DEFAULT_WORKSPACE_BYTES),
            (1000, 7, 4000 * 3),
            (1000, 7, 4000 * 3 + 3999),
        ] {
            let c = images_per_chunk(per, batch, limit);
            assert!(c >= 1 && c <= batch, "{per} {batch} {limit} -> {c}");
            assert!(c * per * 4 <= limit, "{per} {batch} {limit} -> {c}");
            assert!(c == batch || (c + 1) * per * 4 > limit);
        }
        // The whole batch when it fits; one image even over the limit.
        assert_eq!(
            images_per_chunk(27 * 1024, 128, DEFAULT_WORKSPACE_BYTES),
            128
        );
        assert_eq!(images_per_chunk(1 << 30, 4, 1024), 1);
        // Degenerate sizes do not divide by zero.
        assert_eq!(images_per_chunk(0, 5, 1024), 5);
        assert_eq!(images_per_chunk(100, 0, 1024), 1);
    }

    #[test]
    fn column_shapes_follow_the_geometry() {
        let g = Conv2dGeometry {
            batch: 3,
            in_channels: 5,
            in_h: 9,
            in_w: 7,
            out_channels: 4,
            kernel_h: 4,
            kernel_w: 3,
            stride: 2,
            padding: 1,
        };
        let s = ColShape::of(&g);
        assert_eq!(s.rows(), 5 * 4 * 3);
        assert_eq!((s.ho, s.wo), (4, 4));
        assert_eq!(s.pixels(), 16);
        assert_eq!(s.image_len(), 5 * 9 * 7);
        assert!(!s.is_pointwise());
        let t = ColShape::pointwise(4, s.ho, s.wo);
        assert!(t.is_pointwise());
        assert_eq!((t.rows(), t.pixels()), (4, 16));
        for too_big in [
            ColShape { c: 1 << 31, ..s },
            ColShape { c: 1 << 27, ..s },
            ColShape {
                h: 1 << 16,
                w: 1 << 16,
                ..s
            },
            ColShape { pad: 1 << 30, ..s },
        ] {
            assert!(too_big.args().is_err(), "{too_big:?}");
        }
        assert!(s.args().is_ok());
    }
}
