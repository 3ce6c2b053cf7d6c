//! Classification losses, composed from differentiable ops (log-softmax,
//! a constant one-hot mask, sums), so their backward comes from theirs.

use crate::Tensor;
use crate::error::{Result, bad_arg};

impl Tensor {
    /// Per-row log-likelihoods log p(y_i | x_i) = log_softmax(x_i)[y_i] for
    /// logits [N, K] and labels y ∈ 0..K: shape [N].
    pub fn log_prob_of(&self, labels: &[usize]) -> Result<Tensor> {
        let (n, k) = match self.shape() {
            &[n, k] => (n, k),
            s => {
                return Err(bad_arg(
                    "log_prob_of",
                    format!("logits must be [N, K], got shape {s:?}"),
                ));
            }
        };
        if labels.len() != n {
            return Err(bad_arg(
                "log_prob_of",
                format!("{} labels for {n} rows of logits", labels.len()),
            ));
        }
        if let Some(&bad) = labels.iter().find(|&&y| y >= k) {
            return Err(bad_arg(
                "log_prob_of",
                format!("label {bad} out of range for {k} classes"),
            ));
        }
        let mut onehot = vec![0f64; n * k];
        for (i, &y) in labels.iter().enumerate() {
            onehot[i * k + y] = 1.0;
        }
        let mask = Tensor::from_vec(&onehot, &[n, k], self.dtype(), self.device())?;
        self.log_softmax(1)?.mul(&mask)?.sum(&[1], false)
    }

    /// Cross-entropy −(1/N) Σ_i log softmax(x_i)[y_i] (mean over the batch).
    pub fn cross_entropy(&self, labels: &[usize]) -> Result<Tensor> {
        self.log_prob_of(labels)?.mean_all()?.neg()
    }
}
