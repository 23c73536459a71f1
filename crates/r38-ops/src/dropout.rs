//! Dropout whose masks come from a seedable stream, so a seeded training run (and its resume)
//! is bit-reproducible. candle's own CPU dropout draws from an unseedable thread RNG.
//!
//! The stream belongs to the thread, because a unit's `forward_t(x, train)` has no room for a
//! generator (and two trainings in one process must not share it); the trainer reseeds it
//! before every micro-batch from (seed, step, micro-batch), which makes each mask a function of
//! where it is drawn, not of what ran before.

use candle_core::{Result, Tensor};
use std::cell::Cell;

thread_local! {
    static STREAM: Cell<Option<u64>> = const { Cell::new(None) };
}

/// Restart this thread's mask stream from `seed`.
pub fn seed(seed: u64) {
    STREAM.with(|s| s.set(Some(seed)));
}

/// SplitMix64: one 64-bit draw and the next state.
fn splitmix(state: u64) -> (u64, u64) {
    let next = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = next;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31), next)
}

/// Inverted dropout: each value is zeroed with probability `p` and the rest scaled by
/// `1 / (1 - p)`, so inference needs no rescaling. Unseeded, the stream starts from the clock.
pub fn dropout(x: &Tensor, p: f32) -> Result<Tensor> {
    if !(0.0..1.0).contains(&p) {
        candle_core::bail!("dropout rate {p} is not in [0, 1)");
    }
    if p == 0.0 {
        return Ok(x.clone());
    }
    let n = x.elem_count();
    let keep = 1.0 / (1.0 - p);
    // Drawn on the host, so that a CPU and a GPU run draw the same masks; sent as one byte per
    // value (a quarter of an f32 mask's upload) and scaled where it lands.
    let mut mask = Vec::with_capacity(n);
    let mut state = STREAM.with(Cell::get).unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    });
    for _ in 0..n {
        let (r, next) = splitmix(state);
        state = next;
        // The top 24 bits as a uniform in [0, 1).
        let u = (r >> 40) as f32 / (1u64 << 24) as f32;
        mask.push(u8::from(u >= p));
    }
    STREAM.with(|s| s.set(Some(state)));
    let mask = Tensor::from_vec(mask, x.shape(), x.device())?
        .to_dtype(x.dtype())?
        .affine(f64::from(keep), 0.0)?;
    x * mask
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn seeded_masks_repeat_and_keep_the_expectation() {
        let x = Tensor::ones((4, 8, 16, 16), candle_core::DType::F32, &Device::Cpu).unwrap();
        seed(7);
        let a: Vec<f32> = dropout(&x, 0.3)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let b: Vec<f32> = dropout(&x, 0.3)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        seed(7);
        let c: Vec<f32> = dropout(&x, 0.3)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(a, c, "same seed, same mask");
        assert_ne!(a, b, "the stream moves on");
        let zeros = a.iter().filter(|&&v| v == 0.0).count() as f64 / a.len() as f64;
        assert!((zeros - 0.3).abs() < 0.02, "dropped fraction {zeros}");
        let mean = a.iter().map(|&v| f64::from(v)).sum::<f64>() / a.len() as f64;
        assert!((mean - 1.0).abs() < 0.03, "mean {mean}");
    }

    #[test]
    fn rates_outside_the_unit_interval_are_errors() {
        let x = Tensor::ones(3, candle_core::DType::F32, &Device::Cpu).unwrap();
        assert!(dropout(&x, 1.0).is_err());
        assert!(dropout(&x, -0.1).is_err());
        assert_eq!(
            dropout(&x, 0.0).unwrap().to_vec1::<f32>().unwrap(),
            vec![1.0; 3]
        );
    }
}
