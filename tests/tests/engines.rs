//! The fast engine against candle's exact path on the parity fixtures: outputs within 1e-4 of
//! the output's largest magnitude, and segmentation argmax maps agreeing on at least 99.9% of
//! the pixels. The engine is a per-thread scope, so both paths run side by side.

use candle_core::{DType, Tensor};
use r38_model::HeadKind;
use r38_ops::engine::{with_engine, Engine};
use r38_tests::{relative_error, Case};

#[test]
fn fast_engine_matches_the_exact_path_on_every_parity_fixture() {
    for name in ["a1_cls", "a_s16", "a1_s8_seg", "a2_s8_seg"] {
        let case = Case::open(name);
        let file = case.weights("weights.params");
        let exact = with_engine(Engine::Exact, || case.run(&file));
        let fast = with_engine(Engine::Fast, || case.run(&file));
        let err = relative_error(&fast, &exact);
        eprintln!("{name}: fast vs exact relative error {err:e}");
        assert!(err <= 1e-4, "{name}: fast vs exact relative error {err:e}");
        if let HeadKind::Segmentation { .. } = case.head() {
            let labels = |t: &Tensor| {
                let l = t.argmax(1).unwrap().flatten_all().unwrap();
                l.to_dtype(DType::U32).unwrap().to_vec1::<u32>().unwrap()
            };
            let (a, b) = (labels(&fast), labels(&exact));
            let agree = a.iter().zip(&b).filter(|(x, y)| x == y).count() as f64 / a.len() as f64;
            eprintln!(
                "{name}: argmax maps agree on {:.3}% of pixels",
                100.0 * agree
            );
            assert!(agree >= 0.999, "{name}: argmax agreement {agree}");
        }
    }
}
