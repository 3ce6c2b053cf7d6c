//! Learning-rate schedules.

/// Linear warmup to a constant rate, as in the DDPM reference
/// (`get_warmed_up_lr`): lr(step) = base·min(1, step / warmup), and
/// lr = base when warmup = 0.
///
/// `step` counts the updates already applied (TF's `global_step` before
/// the update), so the first update (step 0) uses lr = 0 and the rate
/// reaches `base` at step = warmup. The reference uses base 2e-4 and
/// warmup 5000 on CIFAR-10.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WarmupSchedule {
    pub base_lr: f64,
    pub warmup_steps: u64,
}

impl WarmupSchedule {
    pub fn new(base_lr: f64, warmup_steps: u64) -> Self {
        Self {
            base_lr,
            warmup_steps,
        }
    }

    /// base·min(1, step / warmup).
    pub fn lr(&self, step: u64) -> f64 {
        if self.warmup_steps == 0 {
            return self.base_lr;
        }
        self.base_lr * (step as f64 / self.warmup_steps as f64).min(1.0)
    }
}
