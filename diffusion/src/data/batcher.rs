//! Training batches: epoch-wise shuffling, [−1, 1] scaling, random
//! horizontal flips — all reproducible from a seed and resumable from a
//! two-number state.

use super::{ImageDataset, TrainData};
use noisegrad_engine::{DType, Device, Philox, Result, Tensor};
use rand::seq::SliceRandom;
use std::sync::Arc;

/// Where a batcher is in its stream: enough to resume exactly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct BatcherState {
    pub epoch: u64,
    /// Index of the next image within this epoch's order.
    pub position: u64,
}

pub struct Batcher {
    data: TrainData,
    batch_size: usize,
    flip: bool,
    seed: u64,
    state: BatcherState,
    order: Vec<usize>,
}

impl Batcher {
    pub fn new(data: Arc<ImageDataset>, batch_size: usize, flip: bool, seed: u64) -> Batcher {
        Batcher::over(TrainData::Images(data), batch_size, flip, seed)
    }

    /// A batcher over images or latents (flips only where they apply).
    pub fn over(data: TrainData, batch_size: usize, flip: bool, seed: u64) -> Batcher {
        let mut b = Batcher {
            flip: flip && data.can_flip(),
            data,
            batch_size: batch_size.max(1),
            seed,
            state: BatcherState::default(),
            order: Vec::new(),
        };
        b.order = b.epoch_order(0);
        b
    }

    /// The permutation of epoch `e`: a Philox stream keyed by the seed,
    /// starting at block e·2³², so each epoch's order is independent of
    /// how many batches were drawn before.
    fn epoch_order(&self, e: u64) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.data.len()).collect();
        let mut rng = Philox::from_state(self.seed, e << 32);
        order.shuffle(&mut rng);
        order
    }

    pub fn state(&self) -> BatcherState {
        self.state
    }

    /// Continues from a saved state.
    pub fn restore(&mut self, state: BatcherState) {
        self.order = self.epoch_order(state.epoch);
        self.state = state;
    }

    /// Whether image number `global` (counted over the whole run) is flipped:
    /// one Philox word per image, from a stream separate from the shuffling.
    fn flipped(&self, global: u64) -> bool {
        let w = Philox::block(self.seed ^ 0x666c_6970, global / 4);
        self.flip && w[(global % 4) as usize] & 1 == 1
    }

    /// The next batch as an f32 CPU tensor [B, C, H, W] (images in [−1, 1]).
    pub fn next_batch(&mut self) -> Result<Tensor> {
        Ok(self.next_batch_labelled()?.0)
    }

    /// The next batch and its class labels (empty when the data has none).
    pub fn next_batch_labelled(&mut self) -> Result<(Tensor, Vec<usize>)> {
        self.next_batch_shard(0, self.batch_size)
    }

    /// The data this batcher draws from.
    pub fn data(&self) -> &TrainData {
        &self.data
    }

    /// Items `start..start + len` of the next batch (a data-parallel rank's
    /// shard), and the labels of the whole batch: the stream advances by a
    /// whole batch, and each item's flip and latent sample depend only on
    /// its place in the run, so the shards of all ranks together are
    /// exactly the one-process batch.
    pub fn next_batch_shard(&mut self, start: usize, len: usize) -> Result<(Tensor, Vec<usize>)> {
        let (c, h, w) = self.data.shape();
        let mut out = Vec::with_capacity(len * c * h * w);
        let mut labels = Vec::with_capacity(self.batch_size);
        for i in 0..self.batch_size {
            if self.state.position as usize >= self.order.len() {
                self.state = BatcherState {
                    epoch: self.state.epoch + 1,
                    position: 0,
                };
                self.order = self.epoch_order(self.state.epoch);
            }
            let global = self.state.epoch * self.data.len() as u64 + self.state.position;
            let index = self.order[self.state.position as usize];
            if let Some(y) = self.data.label(index) {
                labels.push(y);
            }
            if (start..start + len).contains(&i) {
                let flip = self.flipped(global);
                self.data
                    .write_example(index, global, flip, self.seed ^ 0x6c61_7465, &mut out)?;
            }
            self.state.position += 1;
        }
        let x = Tensor::from_vec(&out, &[len, c, h, w], DType::F32, Device::Cpu)?;
        Ok((x, labels))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy(n: usize) -> Arc<ImageDataset> {
        let pixels: Vec<u8> = (0..n * 4).map(|i| (i % 251) as u8).collect();
        Arc::new(ImageDataset {
            pixels,
            labels: vec![0; n],
            channels: 1,
            height: 2,
            width: 2,
            source: "toy".into(),
        })
    }

    #[test]
    fn resume_gives_identical_batches() {
        let mut a = Batcher::new(toy(10), 3, true, 42);
        for _ in 0..5 {
            a.next_batch().unwrap();
        }
        let saved = a.state();
        let want: Vec<Vec<f64>> = (0..4)
            .map(|_| a.next_batch().unwrap().to_vec_f64())
            .collect();
        let mut b = Batcher::new(toy(10), 3, true, 42);
        b.restore(saved);
        let got: Vec<Vec<f64>> = (0..4)
            .map(|_| b.next_batch().unwrap().to_vec_f64())
            .collect();
        assert_eq!(want, got);
    }

    #[test]
    fn shards_of_a_batch_are_the_whole_batch() {
        let mut whole = Batcher::new(toy(10), 4, true, 7);
        let mut halves = [
            Batcher::new(toy(10), 4, true, 7),
            Batcher::new(toy(10), 4, true, 7),
        ];
        for _ in 0..4 {
            let want = whole.next_batch().unwrap().to_vec_f64();
            let got: Vec<f64> = halves
                .iter_mut()
                .enumerate()
                .flat_map(|(r, b)| b.next_batch_shard(2 * r, 2).unwrap().0.to_vec_f64())
                .collect();
            assert_eq!(want, got);
        }
        assert_eq!(whole.state(), halves[1].state());
    }

    #[test]
    fn every_image_once_per_epoch_and_scaled() {
        let mut b = Batcher::new(toy(6), 6, false, 1);
        let v = b.next_batch().unwrap().to_vec_f64();
        assert!(v.iter().all(|&x| (-1.0..=1.0).contains(&x)));
        let mut firsts: Vec<i64> = v
            .chunks(4)
            .map(|c| ((c[0] + 1.0) * 127.5).round() as i64)
            .collect();
        firsts.sort();
        assert_eq!(firsts, vec![0, 4, 8, 12, 16, 20]);
    }
}
