//! The diffusion forward process and DDPM/DDIM step kernels: fused q(x_t | x_0) noising and sampler updates.
//!
//! The whole family in this folder:
//! - [`cpu`]: the CPU kernel (SIMD where it pays, rayon across rows);
//! - [`cuda`]: the CUDA launcher for `noise.cu` (the kernel source beside it);
//! - [`reference`]: the equations as plain f64 loops, the oracle of the CPU
//!   kernel's tests;
//! - tests: unit tests inside each file; the PyTorch fixture tests are in the root `tests/` folder.

pub mod cpu;
pub mod cuda;
pub mod reference;

// ---- the problem descriptor, shared by the CPU kernel and the CUDA launcher ----

/// Per-sample scalars of q(x_t | x_0): √ᾱ_t and √(1 − ᾱ_t).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QSampleCoef {
    pub sqrt_alpha_bar: f64,
    pub sqrt_one_minus_alpha_bar: f64,
}

impl QSampleCoef {
    /// The coefficients for cumulative product ᾱ_t.
    pub fn from_alpha_bar(alpha_bar: f64) -> Self {
        Self {
            sqrt_alpha_bar: alpha_bar.sqrt(),
            sqrt_one_minus_alpha_bar: (1.0 - alpha_bar).sqrt(),
        }
    }
}

/// Per-sample scalars of one reverse (denoising) step, in the general form
/// that covers DDPM (both forms) and DDIM:
///
///   x̂_0    = clamp(x0_from_xt·x_t − x0_from_eps·ε_θ, −x0_clip, x0_clip)
///   x_prev = x0_weight·x̂_0 + xt_weight·x_t + eps_weight·ε_θ + sigma·z
///
/// Build it with [`StepCoef::ddpm`], [`StepCoef::ddpm_clipped`] or
/// [`StepCoef::ddim`], which state the equation each one encodes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepCoef {
    pub x0_from_xt: f64,
    pub x0_from_eps: f64,
    /// Bound of the x̂_0 clamp (`f64::INFINITY`: no clamp).
    pub x0_clip: f64,
    pub x0_weight: f64,
    pub xt_weight: f64,
    pub eps_weight: f64,
    pub sigma: f64,
}

impl StepCoef {
    /// DDPM ancestral step in ε form (Ho et al. 2020, Algorithm 2):
    ///
    ///   x_{t−1} = (x_t − β_t/√(1−ᾱ_t)·ε_θ)/√α_t + σ_t·z,   β_t = 1 − α_t.
    pub fn ddpm(alpha: f64, alpha_bar: f64, sigma: f64) -> Self {
        let inv_sqrt_alpha = 1.0 / alpha.sqrt();
        Self {
            x0_from_xt: 0.0,
            x0_from_eps: 0.0,
            x0_clip: f64::INFINITY,
            x0_weight: 0.0,
            xt_weight: inv_sqrt_alpha,
            eps_weight: -(1.0 - alpha) / (1.0 - alpha_bar).sqrt() * inv_sqrt_alpha,
            sigma,
        }
    }

    /// DDPM step through the clipped x̂_0 (what the DDPM reference sampler
    /// does), with the posterior-mean coefficients c0, c1 of
    /// q(x_{t−1} | x_t, x_0) (c0 = β_t√ᾱ_{t−1}/(1−ᾱ_t), c1 = √α_t(1−ᾱ_{t−1})/(1−ᾱ_t)):
    ///
    ///   x̂_0 = clip((x_t − √(1−ᾱ_t)·ε_θ)/√ᾱ_t, −1, 1)
    ///   x_{t−1} = c0·x̂_0 + c1·x_t + σ_t·z.
    pub fn ddpm_clipped(alpha_bar: f64, c0: f64, c1: f64, sigma: f64) -> Self {
        Self {
            x0_from_xt: 1.0 / alpha_bar.sqrt(),
            x0_from_eps: ((1.0 - alpha_bar) / alpha_bar).sqrt(),
            x0_clip: 1.0,
            x0_weight: c0,
            xt_weight: c1,
            eps_weight: 0.0,
            sigma,
        }
    }

    /// DDIM step (Song et al. 2021, eq. 12) from ᾱ_t to ᾱ_prev with
    /// stochasticity η (η = 0: deterministic; η = 1: DDPM-like):
    ///
    ///   x̂_0 = (x_t − √(1−ᾱ_t)·ε_θ)/√ᾱ_t        (clipped to [−1, 1] when `clip`)
    ///   σ = η·√((1−ᾱ_prev)/(1−ᾱ_t))·√(1 − ᾱ_t/ᾱ_prev)
    ///   x_prev = √ᾱ_prev·x̂_0 + √(1−ᾱ_prev−σ²)·ε_θ + σ·z.
    ///
    /// The ε_θ of the direction term is the model's, not one re-derived
    /// from the clipped x̂_0 (as in the DDIM reference code).
    pub fn ddim(alpha_bar: f64, alpha_bar_prev: f64, eta: f64, clip: bool) -> Self {
        let sigma = eta
            * ((1.0 - alpha_bar_prev) / (1.0 - alpha_bar)).sqrt()
            * (1.0 - alpha_bar / alpha_bar_prev).sqrt();
        Self {
            x0_from_xt: 1.0 / alpha_bar.sqrt(),
            x0_from_eps: ((1.0 - alpha_bar) / alpha_bar).sqrt(),
            x0_clip: if clip { 1.0 } else { f64::INFINITY },
            x0_weight: alpha_bar_prev.sqrt(),
            xt_weight: 0.0,
            // Rounding can push 1 − ᾱ_prev − σ² a hair below zero at η = 1.
            eps_weight: (1.0 - alpha_bar_prev - sigma * sigma).max(0.0).sqrt(),
            sigma,
        }
    }

    /// True when every coefficient is a number (the clip bound may be +∞).
    pub fn is_finite(&self) -> bool {
        [
            self.x0_from_xt,
            self.x0_from_eps,
            self.x0_weight,
            self.xt_weight,
            self.eps_weight,
            self.sigma,
        ]
        .iter()
        .all(|v| v.is_finite())
            && !self.x0_clip.is_nan()
    }
}
