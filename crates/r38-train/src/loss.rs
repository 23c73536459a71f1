//! Spatial softmax cross-entropy with an ignore label, its online-bootstrapping ("OHEM")
//! variant, and the stride-8 label sub-sampling of the authors' segmentation recipe.
//!
//! Both losses take pre-softmax scores `(N, C, h, w)` and labels `(N, h, w)` (any integer or
//! float dtype holding class indices, `ignore_label` for "don't care"), and return a scalar whose
//! candle gradient with respect to the scores is the authors' gradient:
//!
//! * [`softmax_cross_entropy`]: `(softmax - onehot) / #valid` on valid pixels, 0 elsewhere
//!   (MXNet `SoftmaxOutput(multi_output=True, use_ignore=True, normalization='valid')`);
//! * [`ohem_softmax_cross_entropy`]: `(softmax - onehot) / #kept` on the kept pixels only
//!   (the authors' `OhemSoftmax` op); the selection is computed without gradient.

use candle_core::{DType, Device, Result, Tensor};

/// MXNet's and the authors' "don't care" label.
pub const IGNORE_LABEL: u32 = 255;

/// Flattens scores `(N, C, h, w)` to log-probabilities `(N*h*w, C)` and labels to `(N*h*w,)` u32.
fn flatten(scores: &Tensor, labels: &Tensor) -> Result<(Tensor, Tensor)> {
    let (n, c, h, w) = scores.dims4()?;
    let ldims = labels.dims();
    if ldims != [n, h, w] {
        candle_core::bail!(
            "labels have shape {ldims:?}, expected {:?} for scores {:?}",
            [n, h, w],
            scores.dims()
        );
    }
    let logp = candle_nn::ops::log_softmax(scores, 1)?
        .permute((0, 2, 3, 1))?
        .reshape((n * h * w, c))?;
    let labels = labels.flatten_all()?.to_dtype(DType::U32)?;
    Ok((logp, labels))
}

/// `-sum(mask * logp[label]) / max(1, count)` where `mask` is 0/1 per pixel (no gradient).
fn masked_mean_nll(logp: &Tensor, labels: &[u32], mask: &[bool], count: usize) -> Result<Tensor> {
    let device = logp.device();
    let idx: Vec<u32> = labels
        .iter()
        .zip(mask)
        .map(|(&l, &m)| if m { l } else { 0 })
        .collect();
    let m = idx.len();
    let idx = Tensor::from_vec(idx, (m, 1), device)?;
    let weights: Vec<f32> = mask.iter().map(|&k| if k { 1.0 } else { 0.0 }).collect();
    let weights = Tensor::from_vec(weights, (m, 1), device)?.to_dtype(logp.dtype())?;
    let picked = logp.gather(&idx, 1)?;
    let total = picked.mul(&weights)?.sum_all()?;
    total.affine(-1.0 / count.max(1) as f64, 0.0)
}

fn check_labels(labels: &[u32], classes: usize, ignore_label: u32) -> Result<Vec<bool>> {
    labels
        .iter()
        .map(|&l| {
            if l == ignore_label {
                Ok(false)
            } else if (l as usize) < classes {
                Ok(true)
            } else {
                candle_core::bail!("label {l} out of range for {classes} classes")
            }
        })
        .collect()
}

/// Softmax cross-entropy over `(N, C, h, w)` scores, ignoring pixels labelled `ignore_label`,
/// averaged over the valid pixels (0 when there are none).
///
/// Gradient with respect to `scores`: `(softmax - onehot) / max(1, #valid)` on valid pixels,
/// zero on ignored ones, as MXNet's `SoftmaxOutput(multi_output=True, use_ignore=True,
/// normalization='valid')`.
pub fn softmax_cross_entropy(
    scores: &Tensor,
    labels: &Tensor,
    ignore_label: u32,
) -> Result<Tensor> {
    let classes = scores.dim(1)?;
    let (logp, labels) = flatten(scores, labels)?;
    let labels = labels.to_vec1::<u32>()?;
    let valid = check_labels(&labels, classes, ignore_label)?;
    let count = valid.iter().filter(|&&v| v).count();
    masked_mean_nll(&logp, &labels, &valid, count)
}

/// Settings of the online-bootstrapping loss (the authors' `OhemSoftmax`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OhemConfig {
    /// Label of pixels that never contribute (255).
    pub ignore_label: u32,
    /// Keep valid pixels whose true-class probability is at most this (0.6).
    pub thresh: f32,
    /// At least this many pixels are kept when there are more valid pixels (256).
    pub min_kept: usize,
}

impl Default for OhemConfig {
    /// The authors' settings: ignore 255, threshold 0.6, at least 256 kept (margin disabled).
    fn default() -> Self {
        Self {
            ignore_label: IGNORE_LABEL,
            thresh: 0.6,
            min_kept: 256,
        }
    }
}

/// What the bootstrapping selection did on one batch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OhemStats {
    /// Pixels with a label other than `ignore_label`.
    pub valid: usize,
    /// Pixels that contribute to the loss.
    pub kept: usize,
    /// The probability threshold used (`thresh`, raised to the `min_kept`-th smallest true-class
    /// probability when too few pixels qualify); `None` when every valid pixel was kept because
    /// there are at most `min_kept` of them.
    pub threshold: Option<f32>,
}

/// The bootstrapping selection: which pixels to keep, given each pixel's true-class
/// probability and whether it is valid.
///
/// * If `min_kept >= #valid`, every valid pixel is kept.
/// * Otherwise the threshold is `thresh`, raised to the `min_kept`-th smallest true-class
///   probability among the valid pixels if that is larger; valid pixels with probability
///   `<= threshold` are kept (ties may keep more than `min_kept`).
pub fn ohem_select(
    true_prob: &[f32],
    valid: &[bool],
    config: &OhemConfig,
) -> (Vec<bool>, OhemStats) {
    assert_eq!(true_prob.len(), valid.len(), "one probability per pixel");
    let num_valid = valid.iter().filter(|&&v| v).count();
    if config.min_kept >= num_valid {
        let kept = valid.to_vec();
        return (
            kept,
            OhemStats {
                valid: num_valid,
                kept: num_valid,
                threshold: None,
            },
        );
    }
    let mut threshold = config.thresh;
    if config.min_kept > 0 {
        let mut preds: Vec<f32> = true_prob
            .iter()
            .zip(valid)
            .filter(|(_, &v)| v)
            .map(|(&p, _)| p)
            .collect();
        let k = config.min_kept.min(preds.len()) - 1;
        let (_, kth, _) = preds.select_nth_unstable_by(k, f32::total_cmp);
        if *kth > config.thresh {
            threshold = *kth;
        }
    }
    let kept: Vec<bool> = true_prob
        .iter()
        .zip(valid)
        .map(|(&p, &v)| v && p <= threshold)
        .collect();
    let count = kept.iter().filter(|&&k| k).count();
    (
        kept,
        OhemStats {
            valid: num_valid,
            kept: count,
            threshold: Some(threshold),
        },
    )
}

/// Online-bootstrapped softmax cross-entropy (the authors' `OhemSoftmax`, margin disabled):
/// the mean cross-entropy over the pixels [`ohem_select`] keeps.
///
/// The selection is made on the detached probabilities, so candle's gradient with respect to
/// `scores` is `(softmax - onehot) / max(1, #kept)` on the kept pixels and zero elsewhere,
/// exactly the authors' backward. The authors apply it per device batch; to emulate several
/// devices call it once per device chunk. Probabilities are f32 (`exp(log_softmax)`); the
/// authors take them from an f32 cast of a float64 softmax, so only pixels within ~1e-7 of the
/// threshold could be selected differently.
pub fn ohem_softmax_cross_entropy(
    scores: &Tensor,
    labels: &Tensor,
    config: &OhemConfig,
) -> Result<(Tensor, OhemStats)> {
    let classes = scores.dim(1)?;
    let (logp, labels) = flatten(scores, labels)?;
    let labels_v = labels.to_vec1::<u32>()?;
    let valid = check_labels(&labels_v, classes, config.ignore_label)?;
    let safe: Vec<u32> = labels_v
        .iter()
        .zip(&valid)
        .map(|(&l, &v)| if v { l } else { 0 })
        .collect();
    let m = safe.len();
    let idx = Tensor::from_vec(safe, (m, 1), logp.device())?;
    let true_prob = logp
        .detach()
        .gather(&idx, 1)?
        .exp()?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let (kept, stats) = ohem_select(&true_prob, &valid, config);
    let loss = masked_mean_nll(&logp, &labels_v, &kept, stats.kept)?;
    Ok((loss, stats))
}

/// Number of labels the sub-sampling keeps along an axis of `size` pixels: rows
/// `stride/2, stride/2 + stride, ...` below `size` (63 for a 504 crop at stride 8).
pub fn subsampled_size(size: usize, stride: usize) -> usize {
    let offset = stride / 2;
    if size <= offset {
        0
    } else {
        (size - offset).div_ceil(stride)
    }
}

/// The authors' label sub-sampling: `labels[..., s/2::s, s/2::s]` on the last two axes of a
/// `(H, W)` or `(N, H, W)` label map (any dtype), the pixel at offset 4 of every 8x8 cell for
/// stride 8. A 504x504 crop gives 63x63 labels, matching the stride-8 score map.
pub fn subsample_labels(labels: &Tensor, stride: usize) -> Result<Tensor> {
    let rank = labels.rank();
    if rank < 2 {
        candle_core::bail!("labels must have at least 2 dims, got {:?}", labels.dims());
    }
    let device: &Device = labels.device();
    let mut out = labels.clone();
    for axis in [rank - 2, rank - 1] {
        let size = out.dim(axis)?;
        let n = subsampled_size(size, stride);
        let idx: Vec<u32> = (0..n).map(|i| (stride / 2 + i * stride) as u32).collect();
        let idx = Tensor::from_vec(idx, n, device)?;
        out = out.index_select(&idx, axis)?;
    }
    Ok(out)
}

/// Per-pixel true-class probabilities `(N*h*w,)` of `scores` (without gradient); ignored
/// pixels get probability 1. Useful for logging what the bootstrapping sees.
pub fn true_class_probabilities(
    scores: &Tensor,
    labels: &Tensor,
    ignore_label: u32,
) -> Result<Vec<f32>> {
    let (logp, labels) = flatten(&scores.detach(), labels)?;
    let labels = labels.to_vec1::<u32>()?;
    let probs = logp.exp()?.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    Ok(labels
        .iter()
        .zip(probs)
        .map(|(&l, row)| {
            if l == ignore_label {
                1.0
            } else {
                row.get(l as usize).copied().unwrap_or(f32::NAN)
            }
        })
        .collect())
}
