//! CUDA against CPU for conv2d, group norm (± fused SiLU) and the ×2
//! nearest upsample, forward and every gradient (see
//! `noisegrad_engine::testing`). Without a GPU they run on
//! the CUDA emulator (or skip where it cannot run).
//!
//! The TF32 switch and the conv workspace limit are process-wide, so the
//! tests here take one lock: a test that turns TF32 on must not overlap one
//! that checks at f32 tolerance.

use noisegrad_engine::testing::randn_f32 as randn;
use noisegrad_engine::testing::{compare_devices, gpu_or_skip};
use noisegrad_engine::{Device, Result, Tensor};
use noisegrad_kernels::conv::cuda::{DEFAULT_WORKSPACE_BYTES, set_workspace_limit};
use noisegrad_kernels::cuda::CudaDevice;
use std::sync::{Mutex, MutexGuard};

/// f32 kernels with TF32 off (the default).
const TOL: f64 = 1e-5;
/// GEMMs on TF32 tensor cores (10-bit mantissa products).
const TF32_TOL: f64 = 1e-3;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// One convolution to check: input `[n, c, h, w]`, `o` output channels, a
/// `k.0 × k.1` kernel, stride, padding.
#[derive(Clone, Copy, Debug)]
struct Conv {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    k: (usize, usize),
    stride: usize,
    padding: usize,
}

impl Conv {
    /// Compares y = conv(x, w) [+ b] and the gradients of x, w [and b].
    fn check(&self, gpu: Device, bias: bool, tol: f64) {
        self.check_with(gpu, bias, tol, |t| t)
    }

    /// [`Self::check`] with the random inputs passed through `prep` first.
    fn check_with(&self, gpu: Device, bias: bool, tol: f64, prep: fn(Tensor) -> Tensor) {
        let x = prep(randn(&[self.n, self.c, self.h, self.w], 1));
        let w = prep(randn(&[self.o, self.c, self.k.0, self.k.1], 2));
        let (stride, padding) = (self.stride, self.padding);
        let name = format!("conv2d {self:?} bias={bias}");
        if bias {
            let b = prep(randn(&[self.o], 3));
            let f = move |t: &[Tensor]| t[0].conv2d(&t[1], Some(&t[2]), stride, padding);
            compare_devices(&name, f, &[x, w, b], &[true; 3], gpu, tol).unwrap();
        } else {
            let f = move |t: &[Tensor]| t[0].conv2d(&t[1], None, stride, padding);
            compare_devices(&name, f, &[x, w], &[true; 2], gpu, tol).unwrap();
        }
    }
}

/// A square-kernel case: input `[n, c, h, w]`, `o` output channels, a k×k
/// kernel, (stride, padding).
fn conv([n, c, h, w]: [usize; 4], o: usize, k: usize, (s, p): (usize, usize)) -> Conv {
    Conv {
        n,
        c,
        h,
        w,
        o,
        k: (k, k),
        stride: s,
        padding: p,
    }
}

#[test]
fn conv2d_matches_cpu() {
    let Some(gpu) = gpu_or_skip("conv2d_matches_cpu") else {
        return;
    };
    let _lock = serial();
    let cases = [
        // The U-Net's shapes: 3×3 stride 1 (Winograd on the CPU), the
        // stride-2 downsample, 1×1 skips.
        conv([4, 16, 16, 16], 32, 3, (1, 1)),
        conv([3, 8, 16, 16], 8, 3, (2, 1)),
        conv([4, 32, 8, 8], 16, 1, (1, 0)),
        conv([2, 3, 28, 28], 16, 3, (1, 1)),
        // Odd sizes, other kernels, strides and paddings.
        conv([2, 5, 7, 9], 6, 3, (1, 1)),
        conv([3, 3, 7, 5], 4, 3, (2, 1)),
        conv([2, 4, 9, 7], 5, 4, (2, 1)),
        conv([2, 4, 10, 8], 3, 4, (2, 1)),
        conv([3, 2, 9, 8], 3, 2, (3, 1)),
        conv([2, 3, 6, 5], 2, 5, (1, 2)),
        conv([2, 6, 5, 7], 4, 1, (2, 0)),
        conv([2, 6, 5, 7], 4, 1, (1, 1)),
        conv([1, 9, 3, 3], 40, 3, (1, 1)),
        Conv {
            k: (4, 3),
            ..conv([2, 3, 9, 7], 4, 0, (2, 1))
        },
    ];
    for case in cases {
        for bias in [false, true] {
            case.check(gpu, bias, TOL);
        }
    }
}

/// Batches over the workspace limit are split into chunks (3, 3, 1 here
/// for the im2col GEMMs; the weight gradient's chunks hold its column and
/// dY buffers) and give the same results.
#[test]
fn conv2d_chunks_the_batch_under_a_small_workspace() {
    let Some(gpu) = gpu_or_skip("conv2d_chunks_the_batch_under_a_small_workspace") else {
        return;
    };
    let _lock = serial();
    struct Restore;
    impl Drop for Restore {
        fn drop(&mut self) {
            set_workspace_limit(DEFAULT_WORKSPACE_BYTES);
        }
    }
    let _restore = Restore;
    for case in [
        conv([7, 6, 12, 10], 5, 3, (1, 1)),
        conv([7, 6, 12, 10], 5, 3, (2, 1)),
        conv([7, 6, 12, 10], 5, 4, (2, 1)),
        conv([7, 6, 12, 10], 5, 1, (1, 0)),
    ] {
        let col_floats = case.c * case.k.0 * case.k.1 * {
            let ho = (case.h + 2 * case.padding - case.k.0) / case.stride + 1;
            let wo = (case.w + 2 * case.padding - case.k.1) / case.stride + 1;
            ho * wo
        };
        // Room for three images' columns (plus a little).
        set_workspace_limit(3 * col_floats * 4 + 100);
        case.check(gpu, true, TOL);
        // One image per chunk.
        set_workspace_limit(1);
        case.check(gpu, true, TOL);
        set_workspace_limit(DEFAULT_WORKSPACE_BYTES);
    }
}

#[test]
fn conv2d_non_contiguous_operands() {
    let Some(gpu) = gpu_or_skip("conv2d_non_contiguous_operands") else {
        return;
    };
    let _lock = serial();
    // x as a transposed view [N, C, H, W] of a [N, H, C, W] buffer; w as a
    // permuted view; bias as a strided slice.
    let x = randn(&[2, 9, 6, 11], 4);
    let w = randn(&[3, 3, 6, 5], 5);
    let b = randn(&[10], 6);
    let f = |t: &[Tensor]| {
        let x = t[0].transpose(1, 2)?;
        let w = t[1].permute(&[3, 2, 0, 1])?;
        let b = t[2].narrow(0, 2, 5)?;
        x.conv2d(&w, Some(&b), 1, 1)
    };
    compare_devices("conv2d views", f, &[x, w, b], &[true; 3], gpu, TOL).unwrap();
}

/// `t` rounded to multiples of 2⁻⁶: values below 32 in magnitude then
/// have at most 11 significant bits, so TF32 holds them exactly.
fn tf32_exact(t: Tensor) -> Tensor {
    let v: Vec<f32> = t
        .to_vec_f32()
        .iter()
        .map(|x| (x * 64.0).round() / 64.0)
        .collect();
    Tensor::from_f32(&v, t.shape()).unwrap()
}

/// cuBLAS on TF32 tensor cores agrees to TF32 precision. The inputs are
/// TF32-exact, so only the products with the upstream gradient (random
/// f32 from `compare_devices`) lose precision: about 2.5e-4 of the largest
/// value if cuBLAS rounds operands to TF32, up to ~5e-4 if it truncates.
#[test]
fn conv2d_with_tf32() {
    let Some(gpu) = gpu_or_skip("conv2d_with_tf32") else {
        return;
    };
    let _lock = serial();
    let dev = CudaDevice::get(0).unwrap();
    struct Restore(std::sync::Arc<CudaDevice>);
    impl Drop for Restore {
        fn drop(&mut self) {
            self.0.set_tf32(false);
        }
    }
    let _restore = Restore(dev.clone());
    dev.set_tf32(true);
    conv([4, 32, 16, 16], 32, 3, (1, 1)).check_with(gpu, true, TF32_TOL, tf32_exact);
    conv([4, 32, 16, 16], 64, 3, (2, 1)).check_with(gpu, true, TF32_TOL, tf32_exact);
    conv([4, 64, 8, 8], 32, 1, (1, 0)).check_with(gpu, false, TF32_TOL, tf32_exact);
}

fn check_group_norm(gpu: Device, shape: &[usize], groups: usize, silu: bool, transposed: bool) {
    let x = randn(shape, 7).affine(1.5, 0.7).unwrap();
    let c = shape[1];
    let gamma = randn(&[c], 8).affine(0.3, 1.0).unwrap();
    let beta = randn(&[c], 9).affine(0.2, 0.0).unwrap();
    let name = format!("group_norm {shape:?} groups={groups} silu={silu} transposed={transposed}");
    let f = move |t: &[Tensor]| -> Result<Tensor> {
        // A transposed input swaps dims 1 and 2 back to [N, C, ...].
        let x = if transposed {
            t[0].transpose(1, 2)?
        } else {
            t[0].clone()
        };
        x.group_norm(groups, &t[1], &t[2], 1e-5, silu)
    };
    let x = if transposed {
        x.transpose(1, 2).unwrap().contiguous().unwrap()
    } else {
        x
    };
    compare_devices(&name, f, &[x, gamma, beta], &[true; 3], gpu, TOL).unwrap();
}

#[test]
fn group_norm_matches_cpu() {
    let Some(gpu) = gpu_or_skip("group_norm_matches_cpu") else {
        return;
    };
    let _lock = serial();
    for silu in [false, true] {
        // U-Net-like: 32 groups of 2 channels, 16×16; 4×4 maps with 8
        // channels per group; 32×32 with 4 per group.
        check_group_norm(gpu, &[4, 64, 16, 16], 32, silu, false);
        check_group_norm(gpu, &[2, 256, 4, 4], 32, silu, false);
        check_group_norm(gpu, &[2, 128, 32, 32], 32, silu, false);
        // Odd sizes, one group, one channel per group, no spatial dims.
        check_group_norm(gpu, &[3, 6, 5, 7], 3, silu, false);
        check_group_norm(gpu, &[2, 5, 9], 1, silu, false);
        check_group_norm(gpu, &[2, 6, 3, 3], 6, silu, false);
        check_group_norm(gpu, &[5, 12], 4, silu, false);
        // A non-contiguous input.
        check_group_norm(gpu, &[4, 64, 8, 8], 32, silu, true);
    }
}

#[test]
fn upsample_matches_cpu() {
    let Some(gpu) = gpu_or_skip("upsample_matches_cpu") else {
        return;
    };
    let _lock = serial();
    let f = |t: &[Tensor]| t[0].upsample_nearest2x();
    for shape in [[2, 3, 5, 7], [4, 64, 8, 8], [1, 1, 1, 1], [2, 16, 4, 4]] {
        let name = format!("upsample {shape:?}");
        compare_devices(&name, f, &[randn(&shape, 10)], &[true], gpu, TOL).unwrap();
    }
    // A non-contiguous input: [N, C, H, W] seen through a [N, H, C, W] buffer.
    let g = |t: &[Tensor]| t[0].transpose(1, 2)?.upsample_nearest2x();
    compare_devices(
        "upsample view",
        g,
        &[randn(&[2, 6, 3, 5], 11)],
        &[true],
        gpu,
        TOL,
    )
    .unwrap();
}

/// The U-Net's block: GroupNorm+SiLU → conv 3×3 → upsample → conv 3×3,
/// gradients through the whole chain.
#[test]
fn unet_block_chain_matches_cpu() {
    let Some(gpu) = gpu_or_skip("unet_block_chain_matches_cpu") else {
        return;
    };
    let _lock = serial();
    let f = |t: &[Tensor]| {
        let h = t[0].group_norm(8, &t[1], &t[2], 1e-5, true)?;
        let h = h.conv2d(&t[3], Some(&t[4]), 1, 1)?;
        let h = h.upsample_nearest2x()?;
        h.conv2d(&t[5], None, 1, 1)
    };
    let inputs = [
        randn(&[2, 16, 8, 8], 12),
        randn(&[16], 13).affine(0.2, 1.0).unwrap(),
        randn(&[16], 14).affine(0.2, 0.0).unwrap(),
        randn(&[32, 16, 3, 3], 15).affine(0.1, 0.0).unwrap(),
        randn(&[32], 16),
        randn(&[8, 32, 3, 3], 17).affine(0.1, 0.0).unwrap(),
    ];
    compare_devices("unet block", f, &inputs, &[true; 6], gpu, TOL).unwrap();
}

#[test]
fn tf_same_downsample_matches_cpu() {
    let Some(gpu) = gpu_or_skip("tf_same_downsample_matches_cpu") else {
        return;
    };
    let _g = serial();
    // pad_zeros (0 top/left, 1 bottom/right) then a stride-2 conv with pad 0,
    // forward and the gradients of x, w, b.
    let f = |t: &[Tensor]| {
        t[0].pad_zeros(&[(0, 0), (0, 0), (0, 1), (0, 1)])?
            .conv2d(&t[1], Some(&t[2]), 2, 0)
    };
    let inputs = [
        randn(&[2, 4, 8, 8], 11),
        randn(&[5, 4, 3, 3], 12),
        randn(&[5], 13),
    ];
    compare_devices("tf-same downsample", f, &inputs, &[true; 3], gpu, TOL).unwrap();
}

#[test]
fn mixed_devices_are_refused_naming_the_op() {
    let Some(gpu) = gpu_or_skip("mixed_devices_are_refused_naming_the_op") else {
        return;
    };
    let _lock = serial();
    let x = randn(&[1, 4, 5, 5], 1).to_device(gpu).unwrap();
    let w_cpu = randn(&[2, 4, 3, 3], 2);
    let e = x.conv2d(&w_cpu, None, 1, 1).unwrap_err();
    assert!(
        matches!(
            e,
            noisegrad_engine::Error::DeviceMismatch { op: "conv2d", .. }
        ),
        "{e:?}"
    );
    let (gamma, beta) = (randn(&[4], 3), randn(&[4], 4).to_device(gpu).unwrap());
    let e = x.group_norm(2, &gamma, &beta, 1e-5, false).unwrap_err();
    assert!(
        matches!(e, noisegrad_engine::Error::DeviceMismatch { .. }),
        "{e:?}"
    );
}
