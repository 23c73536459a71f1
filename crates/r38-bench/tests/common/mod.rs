//! Helpers shared by the benchmark crate's tests.

use candle_core::Tensor;

/// max |a - b| / max |b|.
pub fn rel_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    let max_abs = |t: &Tensor| {
        t.abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    max_abs(&(a - b).unwrap()) / max_abs(b).max(1e-30)
}
