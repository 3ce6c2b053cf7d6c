//! Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11).
//!
//! Why a counter-based generator: its whole state is `(key, counter)`, so a
//! checkpoint stores two integers and a resumed run continues the exact
//! stream; and block `i` of the stream can be computed independently, so the
//! CPU and (later) CUDA kernels produce the same numbers for the same seed.
//!
//! [`Philox`] implements `rand_core`'s generator traits, so `rand`'s
//! adapters (shuffling, ranges) work on it directly.

use std::convert::Infallible;

const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

/// One Philox4x32-10 block: 4 random words for `counter` under `key`.
#[inline]
pub fn philox4x32(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let (mut c, mut k) = (counter, key);
    for _ in 0..10 {
        let p0 = (M0 as u64) * (c[0] as u64);
        let p1 = (M1 as u64) * (c[2] as u64);
        c = [
            ((p1 >> 32) as u32) ^ c[1] ^ k[0],
            p1 as u32,
            ((p0 >> 32) as u32) ^ c[3] ^ k[1],
            p0 as u32,
        ];
        k = [k[0].wrapping_add(W0), k[1].wrapping_add(W1)];
    }
    c
}

/// Maps a random word to a uniform float in the open interval (0, 1).
#[inline]
pub fn u32_to_open01(x: u32) -> f64 {
    (x as f64 + 0.5) * (1.0 / 4_294_967_296.0)
}

/// A seeded Philox stream. `offset` counts 4-word blocks already used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Philox {
    seed: u64,
    offset: u64,
    buf: [u32; 4],
    used: usize,
}

impl Philox {
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            offset: 0,
            buf: [0; 4],
            used: 4,
        }
    }

    /// Restores a stream saved with [`Philox::state`].
    pub fn from_state(seed: u64, offset: u64) -> Self {
        Self::new(seed).with_offset(offset)
    }

    fn with_offset(mut self, offset: u64) -> Self {
        self.offset = offset;
        self
    }

    /// `(seed, offset)`: enough to restore the stream exactly. Words left
    /// in a partially used block are discarded on save, which is why the
    /// bulk fills below always start on a block boundary.
    pub fn state(&self) -> (u64, u64) {
        (self.seed, self.offset)
    }

    fn key(&self) -> [u32; 2] {
        [self.seed as u32, (self.seed >> 32) as u32]
    }

    /// Reserves `blocks` consecutive counter blocks and returns the first;
    /// a kernel then computes block `first + i` on its own (in parallel).
    pub fn reserve_blocks(&mut self, blocks: u64) -> u64 {
        self.used = 4;
        let first = self.offset;
        self.offset += blocks;
        first
    }

    /// The 4 words of block `index` of this stream (independent of position).
    #[inline]
    pub fn block(seed: u64, index: u64) -> [u32; 4] {
        philox4x32(
            [index as u32, (index >> 32) as u32, 0, 0],
            [seed as u32, (seed >> 32) as u32],
        )
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    fn next_word(&mut self) -> u32 {
        if self.used == 4 {
            self.buf = philox4x32(
                [self.offset as u32, (self.offset >> 32) as u32, 0, 0],
                self.key(),
            );
            self.offset += 1;
            self.used = 0;
        }
        let w = self.buf[self.used];
        self.used += 1;
        w
    }
}

impl rand_core::TryRng for Philox {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        Ok(self.next_word())
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        let lo = self.next_word() as u64;
        Ok(lo | ((self.next_word() as u64) << 32))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        for chunk in dst.chunks_mut(4) {
            let w = self.next_word().to_le_bytes();
            chunk.copy_from_slice(&w[..chunk.len()]);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_random123_known_answer() {
        // Known-answer vectors of Random123's kat_vectors for philox4x32_10.
        assert_eq!(
            philox4x32([0, 0, 0, 0], [0, 0]),
            [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]
        );
        assert_eq!(
            philox4x32([0xffffffff; 4], [0xffffffff, 0xffffffff]),
            [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]
        );
    }

    #[test]
    fn state_round_trip_continues_stream() {
        let mut a = Philox::new(7);
        a.reserve_blocks(3);
        let (s, o) = a.state();
        let mut b = Philox::from_state(s, o);
        for _ in 0..10 {
            assert_eq!(a.next_word(), b.next_word());
        }
    }
}
