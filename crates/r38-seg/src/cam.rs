//! Class activation maps (CAMs) with psa's inference protocol (`infer_cls.py` of
//! `jiwoon-ahn/psa`, the first stage of AffinityNet and of most ResNet-38 weakly-supervised work).
//!
//! For every scale `s` of [1.0, 0.5, 1.5, 2.0] and its horizontal flip:
//!
//! 1. the image is resized to `(round(W·s), round(H·s))` (Python's half-to-even `round`) with
//!    Pillow's bicubic filter, and normalised as psa's `Normalize`: `(v / 255 − mean) / std`
//!    in `f64`, stored as `f32`;
//! 2. the CAM is `ReLU(fc8 · relu7)` at output stride 8 (psa's `forward_cam`);
//! 3. it is upsampled to the image size, bilinearly with `align_corners=False` (PyTorch's
//!    `F.upsample`), flipped back, and masked by the image-level labels.
//!
//! The eight maps are summed, and each class is divided by its maximum + 1e-5. psa keeps the maps
//! of the labelled classes only. Without labels (psa always has them) r38 uses the classes the
//! network predicts: score > 0 (sigmoid > 0.5) on the unscaled image, else the best one.
//!
//! psa's `--out_cam_pred` label map puts a constant background score of 0.2 in front of the
//! normalised CAMs and takes the argmax: 0 is background, `c + 1` the foreground class `c`.
//! Its `--out_la_crf` / `--out_ha_crf` maps ([`crf_scores`]) use the background score
//! `(1 − max_c CAM_c)^α` (α = 4 "low", 32 "high") and refine with the dense CRF.

use crate::crf::{BilateralKernel, CrfConfig, DenseCrf, GaussianKernel};
use crate::error::{SegError, SegResult};
use candle_core::{Device, Tensor};
use r38_data::image::RgbImage;
use r38_data::resample::{resize_rgb8, Filter};
use r38_data::transforms::{IMAGENET_MEAN, IMAGENET_STD};
use r38_model::CamClassifier;

/// psa's VOC classes have no background channel; class `c` is label `c + 1` in label maps.
pub const PSA_BG_THRESHOLD: f32 = 0.2;
/// psa's `--low_alpha` and `--high_alpha`.
pub const PSA_ALPHAS: (f32, f32) = (4.0, 32.0);

/// The multi-scale, flipped CAM protocol.
#[derive(Debug, Clone, PartialEq)]
pub struct CamProtocol {
    /// Image scales, in the order they are run (the sum does not depend on it).
    pub scales: Vec<f64>,
    /// Also run the horizontally flipped image at every scale.
    pub flip: bool,
}

impl CamProtocol {
    /// psa's `infer_cls.py`: scales 1.0, 0.5, 1.5, 2.0, with flips.
    pub fn psa() -> Self {
        Self {
            scales: vec![1.0, 0.5, 1.5, 2.0],
            flip: true,
        }
    }
}

/// CAMs of one image.
#[derive(Debug, Clone)]
pub struct Cams {
    /// Image width.
    pub width: usize,
    /// Image height.
    pub height: usize,
    /// The foreground classes with a map (psa's dict keys), increasing.
    pub classes: Vec<usize>,
    /// Whether `classes` are the given labels (`false`: predicted).
    pub labelled: bool,
    /// Normalised maps, one `H × W` plane per entry of `classes`, row-major.
    pub maps: Vec<f32>,
    /// Image-level scores (before the sigmoid) of every `fc8` class, on the unscaled image.
    pub scores: Vec<f32>,
}

impl Cams {
    /// The map of `class`, if it has one.
    pub fn map(&self, class: usize) -> Option<&[f32]> {
        let plane = self.width * self.height;
        let i = self.classes.iter().position(|&c| c == class)?;
        Some(&self.maps[i * plane..(i + 1) * plane])
    }

    /// psa's `--out_cam_pred`: argmax over a constant background score `threshold` and the maps;
    /// 0 is background, `c + 1` the class `c`.
    pub fn label_map(&self, threshold: f32) -> Vec<u8> {
        let plane = self.width * self.height;
        (0..plane)
            .map(|p| {
                let mut best = (0u8, threshold);
                for (i, &c) in self.classes.iter().enumerate() {
                    let v = self.maps[i * plane + p];
                    // np.argmax keeps the first maximum: only a strictly larger score wins.
                    if v > best.1 {
                        best = ((c + 1) as u8, v);
                    }
                }
                best.0
            })
            .collect()
    }

    /// The maps as a `(K, H, W)` tensor.
    pub fn to_tensor(&self, device: &Device) -> SegResult<Tensor> {
        Ok(Tensor::from_vec(
            self.maps.clone(),
            (self.classes.len(), self.height, self.width),
            device,
        )?)
    }
}

/// Python's `round()` (half to even) of a non-negative size.
fn round_half_even(x: f64) -> usize {
    let r = x.round();
    let r = if (x - x.trunc()).abs() == 0.5 && r % 2.0 != 0.0 {
        r - 1.0
    } else {
        r
    };
    r.max(0.0) as usize
}

/// psa's `Normalize` into planar `(3, H, W)`, optionally flipped left-right.
fn normalize_psa(img: &RgbImage, flip: bool) -> Vec<f32> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let lut: Vec<[f32; 256]> = (0..3)
        .map(|c| {
            std::array::from_fn(|v| {
                ((v as f64 / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]) as f32
            })
        })
        .collect();
    let raw = img.as_raw();
    let mut out = vec![0f32; 3 * w * h];
    for y in 0..h {
        for x in 0..w {
            let sx = if flip { w - 1 - x } else { x };
            let p = &raw[3 * (y * w + sx)..3 * (y * w + sx) + 3];
            for c in 0..3 {
                out[c * w * h + y * w + x] = lut[c][p[c] as usize];
            }
        }
    }
    out
}

/// PyTorch's bilinear interpolation with `align_corners=False` (no anti-aliasing) of `planes`
/// `(K, h, w)` to `(K, out_h, out_w)`, in `f32` as PyTorch computes it on the CPU.
pub fn upsample_bilinear(
    planes: &[f32],
    (h, w): (usize, usize),
    (out_h, out_w): (usize, usize),
) -> Vec<f32> {
    let taps = |inp: usize, out: usize| -> Vec<(usize, usize, f32, f32)> {
        let scale = inp as f32 / out as f32;
        (0..out)
            .map(|d| {
                let src = (scale * (d as f32 + 0.5) - 0.5).max(0.0);
                let i0 = (src as usize).min(inp - 1);
                let i1 = if i0 < inp - 1 { i0 + 1 } else { i0 };
                let l1 = src - i0 as f32;
                (i0, i1, 1.0 - l1, l1)
            })
            .collect()
    };
    let (ty, tx) = (taps(h, out_h), taps(w, out_w));
    let k = planes.len() / (h * w);
    let mut out = vec![0f32; k * out_h * out_w];
    for c in 0..k {
        let src = &planes[c * h * w..(c + 1) * h * w];
        let dst = &mut out[c * out_h * out_w..(c + 1) * out_h * out_w];
        for (oy, &(y0, y1, wy0, wy1)) in ty.iter().enumerate() {
            for (ox, &(x0, x1, wx0, wx1)) in tx.iter().enumerate() {
                dst[oy * out_w + ox] = wy0 * (wx0 * src[y0 * w + x0] + wx1 * src[y0 * w + x1])
                    + wy1 * (wx0 * src[y1 * w + x0] + wx1 * src[y1 * w + x1]);
            }
        }
    }
    out
}

/// Run the protocol on `image`. `labels`: the image's foreground classes (indices into `fc8`),
/// or `None` to use the predicted ones.
pub fn infer_cams(
    net: &CamClassifier,
    image: &RgbImage,
    labels: Option<&[usize]>,
    protocol: &CamProtocol,
    device: &Device,
) -> SegResult<Cams> {
    if net.has_background() {
        return Err(SegError::InvalidArgument(
            "this fc8 has a background channel (SEAM): SEAM's CAMs are refined by its pixel \
             correlation module (PCM), which r38 does not implement; psa's protocol needs a \
             foreground-only fc8 (psa or 1-stage-wseg)"
                .into(),
        ));
    }
    let classes = net.classes();
    if let Some(bad) = labels.and_then(|l| l.iter().find(|&&c| c >= classes)) {
        return Err(SegError::InvalidArgument(format!(
            "label {bad} is out of range: fc8 has {classes} classes (0..{classes})"
        )));
    }
    if protocol.scales.is_empty() || protocol.scales.iter().any(|s| s.is_nan() || *s <= 0.0) {
        return Err(SegError::Protocol(format!(
            "CAM scales must be positive, got {:?}",
            protocol.scales
        )));
    }
    let (w, h) = (image.width() as usize, image.height() as usize);
    if w == 0 || h == 0 {
        return Err(SegError::InvalidArgument("empty image".into()));
    }
    let plane = w * h;
    let dtype = net.fc8().dtype();
    let mut total = vec![0f32; classes * plane];
    let mut scores = None;
    for &s in &protocol.scales {
        let size = (
            round_half_even(w as f64 * s).max(1),
            round_half_even(h as f64 * s).max(1),
        );
        let scaled = if size == (w, h) {
            image.clone()
        } else {
            resize_rgb8(image, (size.0 as u32, size.1 as u32), Filter::Bicubic)?
        };
        let flips: &[bool] = if protocol.flip {
            &[false, true]
        } else {
            &[false]
        };
        for &flip in flips {
            let x = Tensor::from_vec(normalize_psa(&scaled, flip), (1, 3, size.1, size.0), device)?
                .to_dtype(dtype)?;
            let (s_scores, cam) = net.scores_and_cams(&x)?;
            if s == 1.0 && !flip {
                scores = Some(host_f32(&s_scores)?);
            }
            let (_, _, ch, cw) = cam.dims4()?;
            let cam = host_f32(&cam)?;
            let up = upsample_bilinear(&cam, (ch, cw), (h, w));
            for c in 0..classes {
                let (src, dst) = (&up[c * plane..], &mut total[c * plane..(c + 1) * plane]);
                for y in 0..h {
                    for x in 0..w {
                        let sx = if flip { w - 1 - x } else { x };
                        dst[y * w + x] += src[y * w + sx];
                    }
                }
            }
        }
    }
    let scores = match scores {
        Some(s) => s,
        None => {
            let x = Tensor::from_vec(normalize_psa(image, false), (1, 3, h, w), device)?
                .to_dtype(dtype)?;
            host_f32(&net.forward_t(&x, false)?)?
        }
    };
    let (chosen, labelled) = match labels {
        Some(l) => {
            let mut l = l.to_vec();
            l.sort_unstable();
            l.dedup();
            (l, true)
        }
        None => (predicted_classes(&scores), false),
    };
    let mut maps = Vec::with_capacity(chosen.len() * plane);
    for &c in &chosen {
        let m = &total[c * plane..(c + 1) * plane];
        let max = m.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let denom = max + 1e-5;
        maps.extend(m.iter().map(|v| v / denom));
    }
    Ok(Cams {
        width: w,
        height: h,
        classes: chosen,
        labelled,
        maps,
        scores,
    })
}

/// Classes with a positive score (sigmoid > 0.5), or the best one when none is.
pub fn predicted_classes(scores: &[f32]) -> Vec<usize> {
    let positive: Vec<usize> = (0..scores.len()).filter(|&c| scores[c] > 0.0).collect();
    if !positive.is_empty() || scores.is_empty() {
        return positive;
    }
    let best = (0..scores.len())
        .max_by(|&a, &b| scores[a].total_cmp(&scores[b]))
        .unwrap_or(0);
    vec![best]
}

/// psa's dense CRF settings (`tool/imutils.crf_inference`): 10 iterations, Gaussian sxy 3
/// compat 3, bilateral sxy 80 srgb 13 compat 10.
pub fn psa_crf() -> CrfConfig {
    CrfConfig {
        iterations: 10,
        gaussian: GaussianKernel {
            sxy: 3.0,
            compat: 3.0,
        },
        bilateral: BilateralKernel {
            sxy: 80.0,
            srgb: 13.0,
            compat: 10.0,
        },
        // pydensecrf's `unary_from_softmax` clip.
        min_probability: 1e-5,
    }
}

/// psa's `_crf_with_alpha`: scores `[(1 − max CAM)^α, CAM_1, …]` refined by the dense CRF on the
/// image; returns `(K + 1)` planes, background first, then `cams.classes` in order (psa's dict
/// keys 0 and `c + 1`).
pub fn crf_scores(cams: &Cams, image: &RgbImage, alpha: f32) -> SegResult<Vec<f32>> {
    let plane = cams.width * cams.height;
    if (image.width() as usize, image.height() as usize) != (cams.width, cams.height) {
        return Err(SegError::InvalidArgument(
            "image and CAMs differ in size".into(),
        ));
    }
    let k = cams.classes.len();
    let mut scores = vec![0f32; (k + 1) * plane];
    for (p, bg) in scores[..plane].iter_mut().enumerate() {
        let max = (0..k)
            .map(|i| cams.maps[i * plane + p])
            .fold(f32::NEG_INFINITY, f32::max);
        *bg = if k == 0 { 1.0 } else { (1.0 - max).powf(alpha) };
    }
    scores[plane..].copy_from_slice(&cams.maps);
    let crf = DenseCrf::for_image(psa_crf(), image)?;
    crf.infer(&scores, k + 1)
}

/// A heat map of `map` (values in 0..1) over `image`: jet colours, blended half and half.
pub fn overlay(image: &RgbImage, map: &[f32]) -> RgbImage {
    let mut out = image.clone();
    for (i, px) in out.pixels_mut().enumerate() {
        let v = map.get(i).copied().unwrap_or(0.0).clamp(0.0, 1.0);
        let jet = jet(v);
        for (v, j) in px.0.iter_mut().zip(jet) {
            *v = ((*v as f32 + j as f32) / 2.0).round() as u8;
        }
    }
    out
}

/// The jet colour map (blue → cyan → yellow → red).
fn jet(v: f32) -> [u8; 3] {
    let f = |x: f32| (1.5 - (4.0 * v - x).abs()).clamp(0.0, 1.0);
    [
        (f(3.0) * 255.0).round() as u8,
        (f(2.0) * 255.0).round() as u8,
        (f(1.0) * 255.0).round() as u8,
    ]
}

/// A network output as `f32` values on the host, whatever the weights' dtype.
fn host_f32(t: &Tensor) -> candle_core::Result<Vec<f32>> {
    t.flatten_all()?
        .to_dtype(candle_core::DType::F32)?
        .to_vec1::<f32>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_round() {
        assert_eq!(round_half_even(187.5), 188);
        assert_eq!(round_half_even(186.5), 186);
        assert_eq!(round_half_even(22.5), 22);
        assert_eq!(round_half_even(67.5), 68);
        assert_eq!(round_half_even(33.6), 34);
    }

    #[test]
    fn bilinear_matches_pytorch_on_a_ramp() {
        // F.interpolate(torch.tensor([[[[0., 1.]]]]), (1, 4), mode="bilinear",
        // align_corners=False) = [0, 0.25, 0.75, 1].
        let up = upsample_bilinear(&[0.0, 1.0], (1, 2), (1, 4));
        assert_eq!(up, vec![0.0, 0.25, 0.75, 1.0]);
    }

    #[test]
    fn label_map_keeps_background_below_threshold() {
        let cams = Cams {
            width: 3,
            height: 1,
            classes: vec![4, 9],
            labelled: true,
            maps: vec![0.1, 0.9, 0.5, 0.15, 0.3, 0.5],
            scores: vec![],
        };
        assert_eq!(cams.label_map(0.2), vec![0, 5, 5]);
        assert_eq!(cams.map(9), Some(&[0.15, 0.3, 0.5][..]));
        assert_eq!(predicted_classes(&[-1.0, 2.0, 0.5]), vec![1, 2]);
        assert_eq!(predicted_classes(&[-1.0, -0.5]), vec![1]);
    }
}
