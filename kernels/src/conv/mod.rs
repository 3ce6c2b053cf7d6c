//! 2-D convolution (NCHW, cross-correlation with zero padding and one stride), forward and the input, weight and bias gradients.
//!
//! The whole family in this folder:
//! - [`cpu`]: the CPU kernel (SIMD where it pays, rayon across rows);
//! - [`cuda`]: the CUDA launcher for `conv.cu` (the kernel source beside it);
//! - [`reference`]: the definition as plain f64 loops, forward and backward,
//!   the oracle of the CPU kernel's tests;
//! - tests: unit tests inside each file; the PyTorch fixture tests are in the root `tests/` folder.

pub mod cpu;
pub mod cuda;
pub mod reference;

// ---- the problem descriptor, shared by the CPU kernel and the CUDA launcher ----

/// The sizes of one convolution. Stride and padding apply to both axes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dGeometry {
    pub batch: usize,
    pub in_channels: usize,
    pub in_h: usize,
    pub in_w: usize,
    pub out_channels: usize,
    pub kernel_h: usize,
    pub kernel_w: usize,
    pub stride: usize,
    pub padding: usize,
}

impl Conv2dGeometry {
    /// Ho = ⌊(H + 2p − kh) / s⌋ + 1.
    pub fn out_h(&self) -> usize {
        (self.in_h + 2 * self.padding - self.kernel_h) / self.stride + 1
    }

    /// Wo = ⌊(W + 2p − kw) / s⌋ + 1.
    pub fn out_w(&self) -> usize {
        (self.in_w + 2 * self.padding - self.kernel_w) / self.stride + 1
    }

    pub fn input_len(&self) -> usize {
        self.batch * self.in_channels * self.in_h * self.in_w
    }

    pub fn weight_len(&self) -> usize {
        self.out_channels * self.in_channels * self.kernel_h * self.kernel_w
    }

    pub fn output_len(&self) -> usize {
        self.batch * self.out_channels * self.out_h() * self.out_w()
    }

    /// Why these sizes cannot describe a convolution, if they cannot.
    pub fn check(&self) -> Result<(), String> {
        if self.stride == 0 {
            return Err("stride must be ≥ 1".into());
        }
        if self.kernel_h == 0 || self.kernel_w == 0 {
            return Err("kernel sizes must be ≥ 1".into());
        }
        if self.in_h == 0 || self.in_w == 0 {
            return Err("the input's height and width must be ≥ 1".into());
        }
        let padded = |len: usize| self.padding.checked_mul(2).and_then(|p| p.checked_add(len));
        let (Some(ph), Some(pw)) = (padded(self.in_h), padded(self.in_w)) else {
            return Err(format!("padding {} is too large", self.padding));
        };
        if ph < self.kernel_h || pw < self.kernel_w {
            return Err(format!(
                "the {}×{} kernel is larger than the padded {ph}×{pw} input",
                self.kernel_h, self.kernel_w
            ));
        }
        Ok(())
    }

    fn assert_valid(&self) {
        if let Err(e) = self.check() {
            panic!("conv2d: {e}");
        }
    }

    /// Rows of the im2col matrix: C·kh·kw.
    fn col_rows(&self) -> usize {
        self.in_channels * self.kernel_h * self.kernel_w
    }

    fn out_pixels(&self) -> usize {
        self.out_h() * self.out_w()
    }

    /// A 1×1 kernel, stride 1, no padding: the input is its own im2col.
    fn is_pointwise(&self) -> bool {
        self.kernel_h == 1 && self.kernel_w == 1 && self.stride == 1 && self.padding == 0
    }
}
