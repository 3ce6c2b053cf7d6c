//! Interpolation between two images through the diffusion (Ho et al. 2020,
//! §4.3 and Fig. 8): encode both to step t, interpolate, decode.
//! Stochastic encoding uses q(x_t|x_0) and decodes with the reverse process;
//! DDIM inversion (Song et al. 2021, §4.3/§5.4) encodes deterministically
//! with the η = 0 ODE, slerps the latents and decodes with DDIM.

use crate::process::q_sample;
use crate::respace::Respaced;
use crate::sample::{SampleOptions, respaced_ddpm_from};
use crate::schedule::Schedule;
use crate::variance::{ReverseModel, Sigma};
use noisegrad_engine::{Error, Philox, Result, Tensor, no_grad};

/// Linear interpolation x̄ = (1 − λ) a + λ b (Ho et al. §4.3).
pub fn lerp(a: &Tensor, b: &Tensor, lambda: f64) -> Result<Tensor> {
    a.mul_scalar(1.0 - lambda)?.add(&b.mul_scalar(lambda)?)
}

/// Spherical interpolation (Shoemake 1985), the natural path between two
/// nearly orthogonal Gaussian latents: slerp(a, b, λ) =
/// sin((1−λ)θ)/sin θ · a + sin(λθ)/sin θ · b, cos θ = ⟨a, b⟩/(‖a‖‖b‖).
/// Falls back to [`lerp`] when a and b are (anti)parallel.
pub fn slerp(a: &Tensor, b: &Tensor, lambda: f64) -> Result<Tensor> {
    let (va, vb) = (a.to_vec_f64(), b.to_vec_f64());
    let dot: f64 = va.iter().zip(&vb).map(|(x, y)| x * y).sum();
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    let cos = (dot / (norm(&va) * norm(&vb))).clamp(-1.0, 1.0);
    let theta = cos.acos();
    if theta.sin().abs() < 1e-8 {
        return lerp(a, b, lambda);
    }
    let (wa, wb) = (
        ((1.0 - lambda) * theta).sin() / theta.sin(),
        (lambda * theta).sin() / theta.sin(),
    );
    a.mul_scalar(wa)?.add(&b.mul_scalar(wb)?)
}

/// λ = 0, 1/(n−1), …, 1.
pub fn lambdas(n: usize) -> Vec<f64> {
    (0..n)
        .map(|i| {
            if n == 1 {
                0.5
            } else {
                i as f64 / (n - 1) as f64
            }
        })
        .collect()
}

/// How the two endpoints are mixed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mix {
    Linear,
    Spherical,
}

fn mix(a: &Tensor, b: &Tensor, n: usize, how: Mix) -> Result<Tensor> {
    let rows = lambdas(n)
        .into_iter()
        .map(|l| match how {
            Mix::Linear => lerp(a, b, l),
            Mix::Spherical => slerp(a, b, l),
        })
        .collect::<Result<Vec<_>>>()?;
    Tensor::concat(&rows.iter().collect::<Vec<_>>(), 0)
}

/// Ho et al. Fig. 8: x_t, x'_t ~ q(·|x_0), x'_0 (one q noise each, shared by
/// every λ), mixed by `how` into `n` latents, each decoded by the reverse
/// process from step t (ancestral DDPM, Σ from `sigma`). a, b: [1, C, H, W].
pub fn interpolate_through_q(
    base: &Schedule,
    sigma: Sigma,
    model: &mut ReverseModel,
    (a, b): (&Tensor, &Tensor),
    t: usize,
    (n, how): (usize, Mix),
    rng: &mut Philox,
) -> Result<Tensor> {
    check_step(base, t)?;
    no_grad(|| {
        let ts = [t];
        let noise = |rng: &mut Philox| Tensor::randn(a.shape(), a.dtype(), a.device(), rng);
        let xa = q_sample(base, a, &ts, &noise(rng)?)?;
        let xb = q_sample(base, b, &ts, &noise(rng)?)?;
        let prefix = Respaced::new(base, (0..=t).collect())?;
        let x = mix(&xa, &xb, n, how)?;
        let opts = SampleOptions::default();
        Ok(respaced_ddpm_from(&prefix, sigma, model, (x, t + 1), rng, &opts, |_| {})?.images)
    })
}

/// The deterministic DDIM move (Song et al. 2021, eq. 12 with σ = 0) between
/// noise levels ᾱ_from and ᾱ_to, in either direction:
/// x_to = √ᾱ_to x̂_0 + √(1 − ᾱ_to) ε̂, x̂_0 = (x − √(1 − ᾱ_from) ε̂)/√ᾱ_from.
pub fn ddim_move(x: &Tensor, eps: &Tensor, ab_from: f64, ab_to: f64) -> Result<Tensor> {
    let x0 = x
        .sub(&eps.mul_scalar((1.0 - ab_from).sqrt())?)?
        .mul_scalar(1.0 / ab_from.sqrt())?;
    x0.mul_scalar(ab_to.sqrt())?
        .add(&eps.mul_scalar((1.0 - ab_to).sqrt())?)
}

/// DDIM inversion: x_0 → x_t along the ascending grid `grid` (ending at t),
/// each move using ε̂ at the level it leaves (the first at level grid[0]).
pub fn ddim_encode(
    s: &Schedule,
    model: &mut ReverseModel,
    x0: &Tensor,
    grid: &[usize],
) -> Result<Tensor> {
    let n = x0.dim(0)?;
    let mut x = ddim_move(
        x0,
        &model(x0, &vec![grid[0]; n])?.0,
        1.0,
        s.alphas_cumprod[grid[0]],
    )?;
    for w in grid.windows(2) {
        let eps = model(&x, &vec![w[0]; n])?.0;
        x = ddim_move(&x, &eps, s.alphas_cumprod[w[0]], s.alphas_cumprod[w[1]])?;
    }
    Ok(x)
}

/// DDIM decoding (η = 0) of x_t back down the grid to ᾱ = 1.
pub fn ddim_decode(
    s: &Schedule,
    model: &mut ReverseModel,
    xt: &Tensor,
    grid: &[usize],
) -> Result<Tensor> {
    let n = xt.dim(0)?;
    let mut x = xt.clone();
    for (i, &t) in grid.iter().enumerate().rev() {
        let to = if i == 0 {
            1.0
        } else {
            s.alphas_cumprod[grid[i - 1]]
        };
        let eps = model(&x, &vec![t; n])?.0;
        x = ddim_move(&x, &eps, s.alphas_cumprod[t], to)?;
    }
    x.clamp(-1.0, 1.0)
}

/// DDIM-inversion interpolation: encode a and b deterministically to step
/// t on a `k`-step uniform grid, slerp the latents, decode each with DDIM.
pub fn interpolate_ddim(
    s: &Schedule,
    model: &mut ReverseModel,
    a: &Tensor,
    b: &Tensor,
    t: usize,
    k: usize,
    n: usize,
) -> Result<Tensor> {
    check_step(s, t)?;
    no_grad(|| {
        let k = k.clamp(1, t + 1);
        let grid: Vec<usize> = (0..k)
            .map(|i| if k == 1 { t } else { (i * t) / (k - 1) })
            .collect();
        let za = ddim_encode(s, model, a, &grid)?;
        let zb = ddim_encode(s, model, b, &grid)?;
        ddim_decode(s, model, &mix(&za, &zb, n, Mix::Spherical)?, &grid)
    })
}

fn check_step(s: &Schedule, t: usize) -> Result<()> {
    if t >= s.steps() {
        return Err(Error::Config(format!(
            "--t {t} must be below the model's T = {}",
            s.steps()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use noisegrad_engine::{DType, Device};

    fn img(v: &[f64]) -> Tensor {
        Tensor::from_vec(v, &[1, 1, 1, v.len()], DType::F64, Device::Cpu).unwrap()
    }

    #[test]
    fn slerp_keeps_the_norm_of_orthogonal_unit_vectors_and_hits_the_ends() {
        let (a, b) = (img(&[1.0, 0.0]), img(&[0.0, 1.0]));
        for l in lambdas(5) {
            let v = slerp(&a, &b, l).unwrap().to_vec_f64();
            assert!(((v[0] * v[0] + v[1] * v[1]).sqrt() - 1.0).abs() < 1e-12);
        }
        assert!((slerp(&a, &b, 1.0).unwrap().to_vec_f64()[1] - 1.0).abs() < 1e-12);
        assert_eq!(lerp(&a, &b, 0.25).unwrap().to_vec_f64(), vec![0.75, 0.25]);
    }

    /// With the exact ε of a single data point x*, DDIM inversion maps x*
    /// to a latent that decodes back to x*.
    #[test]
    fn ddim_inversion_round_trips_with_the_exact_model() {
        let s = Schedule::ddpm();
        let xstar = img(&[0.3, -0.5, 0.9]);
        let mut oracle = |x: &Tensor, t: &[usize]| {
            let ab = s.alphas_cumprod[t[0]];
            let eps = x
                .sub(&xstar.mul_scalar(ab.sqrt())?)?
                .mul_scalar(1.0 / (1.0 - ab).sqrt())?;
            Ok((eps, None))
        };
        let grid: Vec<usize> = (0..20).map(|i| i * 25).collect();
        let z = ddim_encode(&s, &mut oracle, &xstar, &grid).unwrap();
        let back = ddim_decode(&s, &mut oracle, &z, &grid)
            .unwrap()
            .to_vec_f64();
        for (g, w) in back.iter().zip(xstar.to_vec_f64()) {
            assert!((g - w).abs() < 1e-9, "{back:?}");
        }
        assert!(interpolate_ddim(&s, &mut oracle, &xstar, &xstar, 1000, 5, 3).is_err());
    }
}
