//! Importance sampling of the training timestep for L_vlb (Nichol &
//! Dhariwal 2021, §3.3, eq. 18): p_t ∝ √E[L_t²], each loss reweighted by
//! 1/(T p_t) so the estimate of L_vlb stays unbiased. Uniform until every t
//! has [`HISTORY`] recorded losses; the history is part of the checkpoint.

use noisegrad_engine::{Error, Philox, Result};
use rand::Rng;

/// Losses kept per timestep (improved-diffusion's `history_per_term`).
pub const HISTORY: usize = 10;
/// Uniform probability mixed into p_t (improved-diffusion's `uniform_prob`),
/// so no step's weight 1/(T p_t) can explode.
pub const UNIFORM_MIX: f64 = 0.001;

/// The loss-second-moment sampler.
#[derive(Clone, Debug, PartialEq)]
pub struct LossSecondMomentSampler {
    /// The last ≤ [`HISTORY`] losses of every step, oldest first.
    history: Vec<Vec<f64>>,
}

impl LossSecondMomentSampler {
    pub fn new(steps: usize) -> Self {
        Self {
            history: vec![Vec::with_capacity(HISTORY); steps],
        }
    }

    /// True once every step has a full history (before: uniform sampling).
    pub fn warmed_up(&self) -> bool {
        self.history.iter().all(|h| h.len() == HISTORY)
    }

    /// p_t = (1 − u)·√E[L_t²]/Σ_s √E[L_s²] + u/T with u = [`UNIFORM_MIX`]
    /// (eq. 18 plus the uniform floor); uniform before warm-up.
    pub fn probabilities(&self) -> Vec<f64> {
        let n = self.history.len() as f64;
        if !self.warmed_up() {
            return vec![1.0 / n; self.history.len()];
        }
        let rms: Vec<f64> = self
            .history
            .iter()
            .map(|h| (h.iter().map(|l| l * l).sum::<f64>() / h.len() as f64).sqrt())
            .collect();
        let total: f64 = rms.iter().sum();
        rms.iter()
            .map(|r| (1.0 - UNIFORM_MIX) * r / total + UNIFORM_MIX / n)
            .collect()
    }

    /// Draws `n` steps t ~ p and their weights 1/(T p_t).
    pub fn sample(&self, n: usize, rng: &mut Philox) -> (Vec<usize>, Vec<f64>) {
        let p = self.probabilities();
        let steps = p.len();
        let cdf: Vec<f64> = p
            .iter()
            .scan(0.0, |acc, q| {
                *acc += q;
                Some(*acc)
            })
            .collect();
        let total = *cdf.last().expect("at least one step");
        (0..n)
            .map(|_| {
                // A 53-bit uniform in [0, total); the first step whose CDF exceeds it.
                let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * total;
                let t = cdf.partition_point(|&c| c <= u).min(steps - 1);
                (t, 1.0 / (steps as f64 * p[t]))
            })
            .unzip()
    }

    /// Records the (unweighted) per-sample losses of the steps drawn.
    pub fn update(&mut self, t: &[usize], losses: &[f64]) {
        for (&t, &l) in t.iter().zip(losses) {
            let h = &mut self.history[t];
            if h.len() == HISTORY {
                h.remove(0);
            }
            h.push(l);
        }
    }

    /// The history for a checkpoint, exactly: per step, the f64 bit
    /// patterns of its losses, as JSON.
    pub fn to_json(&self) -> String {
        let bits: Vec<Vec<u64>> = self
            .history
            .iter()
            .map(|h| h.iter().map(|l| l.to_bits()).collect())
            .collect();
        serde_json::to_string(&bits).expect("plain numbers serialise")
    }

    /// Restores [`Self::to_json`]'s output for a run with `steps` timesteps.
    pub fn from_json(s: &str, steps: usize) -> Result<Self> {
        let bad = |m: String| Error::Checkpoint(format!("checkpoint's loss history: {m}"));
        let bits: Vec<Vec<u64>> = serde_json::from_str(s).map_err(|e| bad(e.to_string()))?;
        if bits.len() != steps || bits.iter().any(|h| h.len() > HISTORY) {
            return Err(bad(format!(
                "expected {steps} steps of at most {HISTORY} losses, got {} steps",
                bits.len()
            )));
        }
        Ok(Self {
            history: bits
                .into_iter()
                .map(|h| h.into_iter().map(f64::from_bits).collect())
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_until_warm_then_proportional_to_rms_loss() {
        let mut s = LossSecondMomentSampler::new(4);
        assert_eq!(s.probabilities(), vec![0.25; 4]);
        let (_, w) = s.sample(5, &mut Philox::new(1));
        assert!(w.iter().all(|&w| (w - 1.0).abs() < 1e-12));
        for _ in 0..HISTORY {
            // Step 3's losses are 3 times step 0's: RMS ratio 3.
            s.update(&[0, 1, 2, 3], &[1.0, 1.0, 2.0, 3.0]);
        }
        assert!(s.warmed_up());
        let p = s.probabilities();
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        let want = |r: f64| (1.0 - UNIFORM_MIX) * r / 7.0 + UNIFORM_MIX / 4.0;
        for (t, r) in [1.0, 1.0, 2.0, 3.0].into_iter().enumerate() {
            assert!((p[t] - want(r)).abs() < 1e-15);
        }
        // Frequencies follow p and the weights 1/(T p_t) average to 1.
        let (t, w) = s.sample(20_000, &mut Philox::new(2));
        let freq3 = t.iter().filter(|&&i| i == 3).count() as f64 / 20_000.0;
        assert!((freq3 - p[3]).abs() < 0.015, "{freq3} vs {}", p[3]);
        let mean_w = w.iter().sum::<f64>() / w.len() as f64;
        assert!((mean_w - 1.0).abs() < 0.05, "{mean_w}");
        // The history keeps only the last HISTORY losses and round-trips exactly.
        s.update(&[2], &[0.1f64.sqrt()]);
        let back = LossSecondMomentSampler::from_json(&s.to_json(), 4).unwrap();
        assert_eq!(back, s);
        assert!(LossSecondMomentSampler::from_json(&s.to_json(), 5).is_err());
    }
}
