//! A small, seedable, portable random number generator (SplitMix64) whose whole state is one
//! `u64`, so checkpoints can store it and a resumed run draws exactly the same numbers.
//!
//! Every random decision of a training run (sample order, augmentation, new-layer
//! initialisation) comes from a [`Rng`] derived with [`Rng::derive`] from the run's seed and
//! a purpose tag and counter (epoch, step, sample index): the stream of a step does not depend
//! on how many threads load data or on how often the run was interrupted.

use serde::{Deserialize, Serialize};

/// SplitMix64 (Steele, Lea and Flood, 2014).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rng {
    state: u64,
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Rng {
    /// A generator whose stream is fixed by `seed`.
    pub fn new(seed: u64) -> Self {
        Self { state: mix(seed) }
    }

    /// An independent generator for `(seed, tag, a, b)`, e.g. `(seed, "augment", step, i)`.
    pub fn derive(seed: u64, tag: &str, a: u64, b: u64) -> Self {
        let mut h = mix(seed ^ 0x5851_f42d_4c95_7f2d);
        for byte in tag.bytes() {
            h = mix(h ^ u64::from(byte));
        }
        h = mix(h ^ a.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        h = mix(h ^ b.wrapping_mul(0xc2b2_ae3d_27d4_eb4f));
        Self { state: h }
    }

    /// The state, to store in a checkpoint.
    pub fn state(&self) -> u64 {
        self.state
    }

    /// A generator continuing from a stored state.
    pub fn from_state(state: u64) -> Self {
        Self { state }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.state)
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `[lo, hi)`.
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.uniform()
    }

    /// Uniform integer in `lo..=hi` (`lo` when `hi < lo`).
    pub fn int_inclusive(&mut self, lo: i64, hi: i64) -> i64 {
        if hi <= lo {
            return lo;
        }
        let span = (hi - lo) as u64 + 1;
        lo + (self.next_u64() % span) as i64
    }

    /// Uniform index in `0..n` (0 when `n == 0`).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }

    /// True with probability `p`.
    pub fn bernoulli(&mut self, p: f64) -> bool {
        self.uniform() < p
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform();
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    /// Fisher-Yates shuffle.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }

    /// `0..n` in a random order.
    pub fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut p: Vec<usize> = (0..n).collect();
        self.shuffle(&mut p);
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_reproducible_and_distinct() {
        let a: Vec<u64> = (0..4).map(|_| Rng::new(7).next_u64()).collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        let mut x = Rng::derive(1, "aug", 3, 0);
        let mut y = Rng::derive(1, "aug", 3, 1);
        assert_ne!(x.next_u64(), y.next_u64());
        let mut r = Rng::new(3);
        r.next_u64();
        let mut s = Rng::from_state(r.state());
        assert_eq!(r.next_u64(), s.next_u64());
        let p = Rng::new(5).permutation(10);
        let mut q = p.clone();
        q.sort();
        assert_eq!(q, (0..10).collect::<Vec<_>>());
        let mut r = Rng::new(9);
        let m: f64 = (0..20000).map(|_| r.normal()).sum::<f64>() / 20000.0;
        assert!(m.abs() < 0.05);
        for _ in 0..100 {
            let v = r.int_inclusive(3, 5);
            assert!((3..=5).contains(&v));
        }
    }
}
