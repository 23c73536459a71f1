//! The ignore-label and bootstrapped (OHEM) losses on a hand-made example whose softmax
//! probabilities are known exactly, and the stride-8 label sub-sampling.

use candle_core::{DType, Device, Tensor, Var};
use r38_train::loss::{subsampled_size, true_class_probabilities};
use r38_train::{
    ohem_select, ohem_softmax_cross_entropy, softmax_cross_entropy, subsample_labels, OhemConfig,
};

/// Per pixel (2x3 map, row-major): class probabilities (3 classes) and label.
/// True-class probabilities: 0.9, 0.5, 0.2, (ignored), 0.7, 0.55.
const PROBS: [[f64; 3]; 6] = [
    [0.9, 0.05, 0.05],
    [0.3, 0.5, 0.2],
    [0.4, 0.4, 0.2],
    [0.2, 0.3, 0.5],
    [0.7, 0.1, 0.2],
    [0.25, 0.55, 0.2],
];
const LABELS: [u32; 6] = [0, 1, 2, 255, 0, 1];

/// Scores with softmax exactly PROBS: log-probabilities, (1, 3, 2, 3).
fn scores() -> Var {
    let mut v = vec![0f32; 18];
    for (i, p) in PROBS.iter().enumerate() {
        for c in 0..3 {
            v[c * 6 + i] = p[c].ln() as f32;
        }
    }
    Var::from_tensor(&Tensor::from_vec(v, (1, 3, 2, 3), &Device::Cpu).unwrap()).unwrap()
}

fn labels(dtype: DType) -> Tensor {
    Tensor::from_vec(LABELS.to_vec(), (1, 2, 3), &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

/// (softmax - onehot) / count on the `kept` pixels, laid out as (1, 3, 2, 3).
fn expected_grad(kept: &[usize], count: usize) -> Vec<f64> {
    let mut g = vec![0f64; 18];
    for &i in kept {
        for c in 0..3 {
            let onehot = if LABELS[i] == c as u32 { 1.0 } else { 0.0 };
            g[c * 6 + i] = (PROBS[i][c] - onehot) / count as f64;
        }
    }
    g
}

fn check_grad(grad: &Tensor, expected: &[f64]) {
    let g = grad.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    for (i, (&a, &b)) in g.iter().zip(expected).enumerate() {
        assert!((a as f64 - b).abs() < 1e-6, "element {i}: {a} vs {b}");
    }
}

fn nll(kept: &[usize]) -> f64 {
    -kept
        .iter()
        .map(|&i| PROBS[i][LABELS[i] as usize].ln())
        .sum::<f64>()
        / kept.len() as f64
}

#[test]
fn plain_loss_averages_over_valid_pixels_and_ignores_255() {
    for dtype in [DType::U32, DType::F32, DType::I64] {
        let s = scores();
        let loss = softmax_cross_entropy(s.as_tensor(), &labels(dtype), 255).unwrap();
        let valid = [0, 1, 2, 4, 5];
        let l = loss.to_scalar::<f32>().unwrap() as f64;
        assert!((l - nll(&valid)).abs() < 1e-6, "{l}");
        let grads = loss.backward().unwrap();
        check_grad(grads.get(s.as_tensor()).unwrap(), &expected_grad(&valid, 5));
    }
}

#[test]
fn all_ignored_gives_zero_loss_and_gradient() {
    let s = scores();
    let l = Tensor::full(255u32, (1, 2, 3), &Device::Cpu).unwrap();
    let loss = softmax_cross_entropy(s.as_tensor(), &l, 255).unwrap();
    assert_eq!(loss.to_scalar::<f32>().unwrap(), 0.0);
    let grads = loss.backward().unwrap();
    check_grad(grads.get(s.as_tensor()).unwrap(), &[0.0; 18]);
    let (loss, stats) =
        ohem_softmax_cross_entropy(s.as_tensor(), &l, &OhemConfig::default()).unwrap();
    assert_eq!(loss.to_scalar::<f32>().unwrap(), 0.0);
    assert_eq!((stats.valid, stats.kept), (0, 0));
}

#[test]
fn out_of_range_labels_are_an_error() {
    let s = scores();
    let l = Tensor::from_vec(vec![0u32, 1, 3, 255, 0, 1], (1, 2, 3), &Device::Cpu).unwrap();
    assert!(softmax_cross_entropy(s.as_tensor(), &l, 255).is_err());
    let wrong_shape = Tensor::zeros((1, 3, 2), DType::U32, &Device::Cpu).unwrap();
    assert!(softmax_cross_entropy(s.as_tensor(), &wrong_shape, 255).is_err());
}

fn ohem(min_kept: usize) -> (f64, Vec<f32>, r38_train::OhemStats) {
    let s = scores();
    let cfg = OhemConfig {
        ignore_label: 255,
        thresh: 0.6,
        min_kept,
    };
    let (loss, stats) =
        ohem_softmax_cross_entropy(s.as_tensor(), &labels(DType::U32), &cfg).unwrap();
    let grads = loss.backward().unwrap();
    let g = grads
        .get(s.as_tensor())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    (loss.to_scalar::<f32>().unwrap() as f64, g, stats)
}

#[test]
fn ohem_keeps_pixels_at_or_below_the_threshold() {
    // 3 valid pixels have p <= 0.6 (0.5, 0.2, 0.55): enough for min_kept 2, threshold stays 0.6.
    for min_kept in [0, 2, 3] {
        let (l, g, stats) = ohem(min_kept);
        assert_eq!((stats.valid, stats.kept), (5, 3), "min_kept {min_kept}");
        assert_eq!(stats.threshold, Some(0.6));
        let kept = [1, 2, 5];
        assert!((l - nll(&kept)).abs() < 1e-6);
        check_grad(
            &Tensor::new(g.as_slice(), &Device::Cpu).unwrap(),
            &expected_grad(&kept, 3),
        );
    }
}

#[test]
fn ohem_raises_the_threshold_to_the_min_kept_th_probability() {
    // min_kept 4: the 4th smallest true probability is 0.7 > 0.6, so the threshold becomes 0.7.
    let (l, g, stats) = ohem(4);
    assert_eq!((stats.valid, stats.kept), (5, 4));
    assert!((stats.threshold.unwrap() - 0.7).abs() < 1e-6);
    let kept = [1, 2, 4, 5];
    assert!((l - nll(&kept)).abs() < 1e-6);
    check_grad(
        &Tensor::new(g.as_slice(), &Device::Cpu).unwrap(),
        &expected_grad(&kept, 4),
    );
}

#[test]
fn ohem_keeps_every_valid_pixel_when_there_are_at_most_min_kept() {
    for min_kept in [5, 6, 256] {
        let (l, g, stats) = ohem(min_kept);
        assert_eq!((stats.valid, stats.kept, stats.threshold), (5, 5, None));
        let kept = [0, 1, 2, 4, 5];
        assert!((l - nll(&kept)).abs() < 1e-6);
        check_grad(
            &Tensor::new(g.as_slice(), &Device::Cpu).unwrap(),
            &expected_grad(&kept, 5),
        );
    }
}

#[test]
fn ohem_select_rule_details() {
    let valid = [true, true, true, false, true, true, true];
    let p = [0.9, 0.8, 0.7, 0.0, 0.7, 0.95, 0.65];
    // thresh 0.6: nobody qualifies; min_kept 2 -> threshold = 2nd smallest = 0.7; ties keep 3.
    let cfg = OhemConfig {
        ignore_label: 255,
        thresh: 0.6,
        min_kept: 2,
    };
    let (kept, stats) = ohem_select(&p, &valid, &cfg);
    assert_eq!(kept, [false, false, true, false, true, false, true]);
    assert_eq!(stats.kept, 3);
    assert_eq!(stats.threshold, Some(0.7));
    // The ignored pixel (p 0.0) is never kept, whatever its probability.
    let cfg0 = OhemConfig { min_kept: 0, ..cfg };
    let (kept, stats) = ohem_select(&p, &valid, &cfg0);
    assert_eq!(stats.kept, 0);
    assert!(kept.iter().all(|&k| !k));
    // Authors' defaults.
    assert_eq!(
        OhemConfig::default(),
        OhemConfig {
            ignore_label: 255,
            thresh: 0.6,
            min_kept: 256
        }
    );
}

#[test]
fn true_class_probabilities_report() {
    let s = scores();
    let p = true_class_probabilities(s.as_tensor(), &labels(DType::U32), 255).unwrap();
    let expected = [0.9, 0.5, 0.2, 1.0, 0.7, 0.55];
    for (a, b) in p.iter().zip(expected) {
        assert!((*a as f64 - b).abs() < 1e-6);
    }
}

#[test]
fn labels_are_subsampled_at_offset_4_stride_8() {
    assert_eq!(subsampled_size(504, 8), 63);
    assert_eq!(subsampled_size(500, 8), 62); // numpy [4:500:8]
    assert_eq!(subsampled_size(8, 8), 1);
    assert_eq!(subsampled_size(4, 8), 0);
    let (h, w) = (504usize, 496usize);
    let v: Vec<u32> = (0..2 * h * w).map(|i| i as u32).collect();
    let l = Tensor::from_vec(v, (2, h, w), &Device::Cpu).unwrap();
    let s = subsample_labels(&l, 8).unwrap();
    assert_eq!(s.dims(), &[2, 63, 62]);
    let s = s.to_vec3::<u32>().unwrap();
    for (b, plane) in s.iter().enumerate() {
        for (i, row) in plane.iter().enumerate() {
            for (j, &x) in row.iter().enumerate() {
                let (y, xx) = (4 + 8 * i, 4 + 8 * j);
                assert_eq!(x as usize, (b * h + y) * w + xx);
            }
        }
    }
    // 2-D maps and u8 labels.
    let l = Tensor::from_vec(
        (0..16 * 16).map(|i| (i % 256) as u8).collect::<Vec<u8>>(),
        (16, 16),
        &Device::Cpu,
    )
    .unwrap();
    let s = subsample_labels(&l, 8).unwrap().to_vec2::<u8>().unwrap();
    assert_eq!(s, vec![vec![68u8, 76], vec![196, 204]]);
}
