//! Respaced diffusion (Nichol & Dhariwal 2021, §4): a model trained with T
//! steps sampled (or evaluated) on a K-step subsequence S of 0..T−1, with
//! β recomputed from ᾱ on S so the marginals q(x_{S_i}|x_0) are unchanged.

use crate::schedule::Schedule;
use noisegrad_engine::{Error, Result};

/// How the K steps are chosen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Spacing {
    /// improved-diffusion's `space_timesteps`: 0..T−1 cut into equal
    /// sections, section i contributing `counts[i]` evenly strided steps
    /// (its first and last step included). One section of K is uniform.
    Sections(Vec<usize>),
    /// t_i = round((i/(K−1))²·(T−1)), bumped to stay strictly increasing:
    /// dense where the image's fine detail is decided.
    Quadratic(usize),
}

impl Spacing {
    /// `uniform`, `quadratic`, or comma-separated section counts
    /// (`10,15,20`), for K steps in total (sections give their own K).
    pub fn parse(name: &str, k: usize) -> Result<Spacing> {
        match name {
            "uniform" => Ok(Spacing::Sections(vec![k])),
            "quadratic" => Ok(Spacing::Quadratic(k)),
            list => list
                .split(',')
                .map(|c| c.trim().parse::<usize>())
                .collect::<std::result::Result<Vec<_>, _>>()
                .map(Spacing::Sections)
                .map_err(|_| {
                    Error::Config(format!(
                        "spacing must be uniform, quadratic or section counts like 10,15,20; got '{name}'"
                    ))
                }),
        }
    }
}

/// The ascending steps of `spacing` within 0..T−1; an error when it asks
/// for more steps than there are.
pub fn space_timesteps(total: usize, spacing: &Spacing) -> Result<Vec<usize>> {
    let too_many = |k: usize, size: usize| {
        Err(Error::Config(format!(
            "cannot take {k} steps from {size} diffusion steps (--steps must be ≤ T = {total})"
        )))
    };
    match spacing {
        Spacing::Quadratic(k) => {
            let k = *k;
            if k == 0 || k > total {
                return too_many(k, total);
            }
            let mut out: Vec<usize> = Vec::with_capacity(k);
            for i in 0..k {
                let f = if k == 1 {
                    0.0
                } else {
                    i as f64 / (k - 1) as f64
                };
                let t = (f * f * (total - 1) as f64).round() as usize;
                // Strictly increasing, and leave room for the steps still to come.
                let t = out.last().map_or(t, |&p| t.max(p + 1)).min(total - (k - i));
                out.push(t);
            }
            Ok(out)
        }
        Spacing::Sections(counts) => {
            if counts.is_empty() || counts.contains(&0) {
                return Err(Error::Config(format!(
                    "section counts must be positive, got {counts:?}"
                )));
            }
            let (per, extra) = (total / counts.len(), total % counts.len());
            let mut out = Vec::new();
            let mut start = 0;
            for (i, &count) in counts.iter().enumerate() {
                let size = per + usize::from(i < extra);
                if count > size {
                    return too_many(count, size);
                }
                let stride = if count <= 1 {
                    1.0
                } else {
                    (size - 1) as f64 / (count - 1) as f64
                };
                // Python's round (half to even), as in improved-diffusion.
                out.extend(
                    (0..count).map(|j| start + (j as f64 * stride).round_ties_even() as usize),
                );
                start += size;
            }
            Ok(out)
        }
    }
}

/// β'_i = 1 − ᾱ_{S_i}/ᾱ_{S_{i−1}} (improved-diffusion's `respace`), computed
/// as 1 − Π_{S_{i−1} < s ≤ S_i}(1 − β_s) accumulated by b ← b + β_s − bβ_s:
/// the same number without the cancellation of a ratio, and exactly β_s
/// for a gap of one step (so S = 0..T−1 gives the original schedule back).
pub fn respaced_betas(betas: &[f64], steps: &[usize]) -> Vec<f64> {
    let mut prev: Option<usize> = None;
    steps
        .iter()
        .map(|&t| {
            let from = prev.map_or(0, |p| p + 1);
            prev = Some(t);
            betas[from..=t]
                .iter()
                .fold(0.0, |b, &beta| b + beta - b * beta)
        })
        .collect()
}

/// A schedule on a subsequence of the original steps: `schedule` has K
/// steps, and step i of it is step `timesteps[i]` of the original (what the
/// model is conditioned on).
#[derive(Clone, Debug)]
pub struct Respaced {
    pub schedule: Schedule,
    pub timesteps: Vec<usize>,
}

impl Respaced {
    pub fn new(base: &Schedule, timesteps: Vec<usize>) -> Result<Respaced> {
        let ok = !timesteps.is_empty()
            && timesteps.windows(2).all(|w| w[0] < w[1])
            && timesteps.last().is_some_and(|&t| t < base.steps());
        if !ok {
            return Err(Error::Config(format!(
                "respaced steps must be increasing and below T = {}",
                base.steps()
            )));
        }
        Ok(Respaced {
            schedule: Schedule::from_betas(respaced_betas(&base.betas, &timesteps)),
            timesteps,
        })
    }

    /// `spacing` applied to `base`.
    pub fn spaced(base: &Schedule, spacing: &Spacing) -> Result<Respaced> {
        Respaced::new(base, space_timesteps(base.steps(), spacing)?)
    }

    /// The original steps of respaced steps `t`.
    pub fn original(&self, t: &[usize]) -> Vec<usize> {
        t.iter().map(|&i| self.timesteps[i]).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::BetaSchedule;

    #[test]
    fn full_respacing_is_the_original_schedule_exactly() {
        for kind in [BetaSchedule::DDPM, BetaSchedule::COSINE] {
            let s = Schedule::new(kind, 1000);
            let r = Respaced::spaced(&s, &Spacing::Sections(vec![1000])).unwrap();
            assert_eq!(r.timesteps, (0..1000).collect::<Vec<_>>());
            assert_eq!(r.schedule.betas, s.betas);
            assert_eq!(r.schedule.alphas_cumprod, s.alphas_cumprod);
            assert_eq!(r.schedule.posterior_variance, s.posterior_variance);
        }
    }

    #[test]
    fn respaced_marginals_match_and_ends_are_kept() {
        let s = Schedule::new(BetaSchedule::COSINE, 1000);
        for spacing in [
            Spacing::Sections(vec![50]),
            Spacing::Quadratic(100),
            Spacing::Sections(vec![10, 15, 20]),
        ] {
            let r = Respaced::spaced(&s, &spacing).unwrap();
            assert_eq!(r.timesteps[0], 0);
            assert!(r.timesteps.windows(2).all(|w| w[0] < w[1]));
            for (i, &t) in r.timesteps.iter().enumerate() {
                let (a, b) = (r.schedule.alphas_cumprod[i], s.alphas_cumprod[t]);
                assert!((a - b).abs() < 1e-12 * b.max(1e-3), "{spacing:?} {t}");
            }
        }
        let uni = space_timesteps(1000, &Spacing::Sections(vec![50])).unwrap();
        assert_eq!((uni.len(), uni[1], *uni.last().unwrap()), (50, 20, 999));
        let q = space_timesteps(1000, &Spacing::Quadratic(100)).unwrap();
        assert_eq!((q.len(), *q.last().unwrap()), (100, 999));
        // improved-diffusion: space_timesteps(300, [10, 15, 20]) ends sections at 99, 199, 299.
        let sec = space_timesteps(300, &Spacing::Sections(vec![10, 15, 20])).unwrap();
        assert_eq!(
            (sec.len(), sec[9], sec[10], sec[24], sec[44]),
            (45, 99, 100, 199, 299)
        );
    }

    #[test]
    fn too_many_steps_is_an_error() {
        let e = space_timesteps(100, &Spacing::Sections(vec![101])).unwrap_err();
        assert!(e.to_string().contains("--steps must be ≤ T = 100"), "{e}");
        assert!(space_timesteps(100, &Spacing::Quadratic(101)).is_err());
        assert!(Spacing::parse("cubic", 10).is_err());
        assert_eq!(
            Spacing::parse("3,4", 0).unwrap(),
            Spacing::Sections(vec![3, 4])
        );
    }
}
