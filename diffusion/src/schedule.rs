//! Noise schedules and every table DDPM needs, in f64.
//!
//! Notation (Ho et al. 2020): β_t is the variance added at step t,
//! α_t = 1 − β_t, ᾱ_t = Π_{s≤t} α_s. Steps are indexed 0..T−1 here
//! (paper step t+1), as in the reference implementation.

use std::f64::consts::PI;

/// How β_t is chosen (stored in checkpoints as JSON, e.g.
/// `{"kind":"cosine","s":0.008}`).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum BetaSchedule {
    /// β linear from `start` to `end` (DDPM: 1e-4 → 0.02).
    Linear { start: f64, end: f64 },
    /// Improved DDPM's cosine schedule with offset `s` (0.008), β clipped at 0.999.
    Cosine { s: f64 },
}

impl BetaSchedule {
    /// The DDPM default: linear 1e-4 → 0.02.
    pub const DDPM: BetaSchedule = BetaSchedule::Linear {
        start: 1e-4,
        end: 0.02,
    };

    /// Improved DDPM's cosine schedule, s = 0.008.
    pub const COSINE: BetaSchedule = BetaSchedule::Cosine { s: 0.008 };

    /// `linear` (DDPM) or `cosine` (improved DDPM), as the CLI names them.
    pub fn parse(name: &str) -> noisegrad_engine::Result<BetaSchedule> {
        match name {
            "linear" => Ok(BetaSchedule::DDPM),
            "cosine" => Ok(BetaSchedule::COSINE),
            other => Err(noisegrad_engine::Error::Config(format!(
                "unknown schedule '{other}' (expected linear or cosine)"
            ))),
        }
    }

    pub fn betas(self, steps: usize) -> Vec<f64> {
        match self {
            BetaSchedule::Linear { start, end } => linear_betas(steps, start, end),
            BetaSchedule::Cosine { s } => cosine_betas(steps, s, 0.999),
        }
    }
}

/// β_t = start + (end − start)·t/(T−1), t = 0..T−1 (`numpy.linspace`).
pub fn linear_betas(steps: usize, start: f64, end: f64) -> Vec<f64> {
    if steps == 1 {
        return vec![start];
    }
    (0..steps)
        .map(|t| start + (end - start) * t as f64 / (steps - 1) as f64)
        .collect()
}

/// Cosine schedule (Nichol & Dhariwal 2021, eq. 17):
/// ᾱ(t) = f(t)/f(0), f(t) = cos²(((t/T) + s)/(1 + s) · π/2),
/// β_t = min(1 − ᾱ(t+1)/ᾱ(t), max_beta).
pub fn cosine_betas(steps: usize, s: f64, max_beta: f64) -> Vec<f64> {
    let f = |t: f64| {
        (((t / steps as f64) + s) / (1.0 + s) * PI / 2.0)
            .cos()
            .powi(2)
    };
    (0..steps)
        .map(|t| (1.0 - f(t as f64 + 1.0) / f(t as f64)).min(max_beta))
        .collect()
}

/// Every per-step constant of the forward process and the posterior.
#[derive(Clone, Debug)]
pub struct Schedule {
    pub betas: Vec<f64>,
    /// α_t = 1 − β_t
    pub alphas: Vec<f64>,
    /// ᾱ_t = Π_{s≤t} α_s
    pub alphas_cumprod: Vec<f64>,
    /// ᾱ_{t−1}, with ᾱ_{−1} = 1
    pub alphas_cumprod_prev: Vec<f64>,
    /// √ᾱ_t
    pub sqrt_alphas_cumprod: Vec<f64>,
    /// √(1 − ᾱ_t)
    pub sqrt_one_minus_alphas_cumprod: Vec<f64>,
    /// √(1/ᾱ_t)
    pub sqrt_recip_alphas_cumprod: Vec<f64>,
    /// √(1/ᾱ_t − 1)
    pub sqrt_recipm1_alphas_cumprod: Vec<f64>,
    /// β̃_t = β_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t)
    pub posterior_variance: Vec<f64>,
    /// log β̃_t with β̃_0 replaced by β̃_1 (β̃_0 = 0 would give −∞)
    pub posterior_log_variance_clipped: Vec<f64>,
    /// coefficient of x_0 in μ̃_t: β_t √ᾱ_{t−1} / (1 − ᾱ_t)
    pub posterior_mean_coef1: Vec<f64>,
    /// coefficient of x_t in μ̃_t: (1 − ᾱ_{t−1}) √α_t / (1 − ᾱ_t)
    pub posterior_mean_coef2: Vec<f64>,
}

impl Schedule {
    pub fn new(kind: BetaSchedule, steps: usize) -> Schedule {
        Schedule::from_betas(kind.betas(steps))
    }

    /// The DDPM schedule: T = 1000, linear β 1e-4 → 0.02.
    pub fn ddpm() -> Schedule {
        Schedule::new(BetaSchedule::DDPM, 1000)
    }

    pub fn from_betas(betas: Vec<f64>) -> Schedule {
        let alphas: Vec<f64> = betas.iter().map(|b| 1.0 - b).collect();
        let alphas_cumprod: Vec<f64> = alphas
            .iter()
            .scan(1.0, |acc, a| {
                *acc *= a;
                Some(*acc)
            })
            .collect();
        let alphas_cumprod_prev: Vec<f64> = std::iter::once(1.0)
            .chain(alphas_cumprod.iter().copied())
            .take(betas.len())
            .collect();
        let map = |f: &dyn Fn(usize) -> f64| (0..betas.len()).map(f).collect::<Vec<f64>>();
        let posterior_variance =
            map(&|t| posterior_variance(betas[t], alphas_cumprod[t], alphas_cumprod_prev[t]));
        let posterior_log_variance_clipped = map(&|t| {
            let v = if t == 0 && betas.len() > 1 {
                posterior_variance[1]
            } else {
                posterior_variance[t]
            };
            v.ln()
        });
        Schedule {
            sqrt_alphas_cumprod: map(&|t| alphas_cumprod[t].sqrt()),
            sqrt_one_minus_alphas_cumprod: map(&|t| (1.0 - alphas_cumprod[t]).sqrt()),
            sqrt_recip_alphas_cumprod: map(&|t| (1.0 / alphas_cumprod[t]).sqrt()),
            sqrt_recipm1_alphas_cumprod: map(&|t| (1.0 / alphas_cumprod[t] - 1.0).sqrt()),
            posterior_mean_coef1: map(&|t| {
                betas[t] * alphas_cumprod_prev[t].sqrt() / (1.0 - alphas_cumprod[t])
            }),
            posterior_mean_coef2: map(&|t| {
                (1.0 - alphas_cumprod_prev[t]) * alphas[t].sqrt() / (1.0 - alphas_cumprod[t])
            }),
            posterior_variance,
            posterior_log_variance_clipped,
            betas,
            alphas,
            alphas_cumprod,
            alphas_cumprod_prev,
        }
    }

    /// Number of diffusion steps T.
    pub fn steps(&self) -> usize {
        self.betas.len()
    }
}

/// β̃_t = β_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t): the variance of q(x_{t−1} | x_t, x_0).
pub fn posterior_variance(beta_t: f64, alpha_bar_t: f64, alpha_bar_prev: f64) -> f64 {
    beta_t * (1.0 - alpha_bar_prev) / (1.0 - alpha_bar_t)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Independent computation of ᾱ in f64 by repeated multiplication in a
    /// different order (from the end), to check the scan.
    #[test]
    fn tables_match_direct_formulas() {
        let s = Schedule::ddpm();
        assert_eq!(s.steps(), 1000);
        assert!((s.betas[0] - 1e-4).abs() < 1e-15 && (s.betas[999] - 0.02).abs() < 1e-15);
        let direct: f64 = (0..1000)
            .map(|t| 1.0 - (1e-4 + (0.02 - 1e-4) * t as f64 / 999.0))
            .product();
        assert!((s.alphas_cumprod[999] - direct).abs() < 1e-15);
        // Known value of the DDPM schedule: ᾱ_999 ≈ 4.04e-5.
        assert!(
            (s.alphas_cumprod[999] - 4.035e-5).abs() < 1e-7,
            "{}",
            s.alphas_cumprod[999]
        );
        for t in [0, 1, 500, 999] {
            let ab = s.alphas_cumprod[t];
            let prev = if t == 0 { 1.0 } else { s.alphas_cumprod[t - 1] };
            assert!((s.sqrt_alphas_cumprod[t].powi(2) - ab).abs() < 1e-14);
            assert!((s.sqrt_one_minus_alphas_cumprod[t].powi(2) + ab - 1.0).abs() < 1e-14);
            let var = s.betas[t] * (1.0 - prev) / (1.0 - ab);
            assert!((s.posterior_variance[t] - var).abs() < 1e-18);
            // μ̃ coefficients: for x_0 = x_t = 1 the posterior mean must equal
            // the value from the Gaussian product formula.
            let c1 = s.betas[t] * prev.sqrt() / (1.0 - ab);
            let c2 = (1.0 - prev) * (1.0 - s.betas[t]).sqrt() / (1.0 - ab);
            assert!(
                (s.posterior_mean_coef1[t] - c1).abs() < 1e-15
                    && (s.posterior_mean_coef2[t] - c2).abs() < 1e-15
            );
        }
        assert_eq!(s.posterior_variance[0], 0.0);
        assert_eq!(
            s.posterior_log_variance_clipped[0],
            s.posterior_variance[1].ln()
        );
    }

    #[test]
    fn cosine_schedule_is_clipped_and_monotone() {
        let b = cosine_betas(1000, 0.008, 0.999);
        assert!(b.iter().all(|&x| x > 0.0 && x <= 0.999));
        assert_eq!(b[999], 0.999);
        let s = Schedule::from_betas(b);
        assert!(s.alphas_cumprod.windows(2).all(|w| w[1] < w[0]));
    }
}
