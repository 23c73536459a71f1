//! psa's multi-label classification fine-tuning (`train_cls.py` with `network.resnet38_cls`), the
//! first stage of weakly-supervised segmentation: image-level labels, multilabel soft-margin loss
//! on `fc8` of the pooled stride-8 features, and psa's `PolyOptimizer`.
//!
//! What psa's recipe is, exactly:
//!
//! * **Loss**: `F.multilabel_soft_margin_loss` = mean over classes and images of
//!   `y·softplus(−x) + (1 − y)·softplus(x)` ([`multilabel_soft_margin_loss`]).
//! * **Frozen**: `conv1a` and level 2 (`b2`, `b2_1`, `b2_2`), and every BN: statistics, gamma and
//!   beta ([`psa_policy`]; run the net with `BatchNormMode::Frozen`).
//! * **Rates**: base rate on the backbone weights, 10x on `fc8` (the new layer); weight decay
//!   5e-4 on weights (none of the convs has a bias).
//! * **Schedule**: `lr · (1 − step / max_step)^0.9`, step counted from 0 ([`psa_poly_lr`]).
//! * **Momentum**: psa's `PolyOptimizer` calls `torch.optim.SGD(params, lr, weight_decay)`, whose
//!   third positional argument is the momentum: PyTorch SGD with momentum 5e-4 (not 0.9; the 0.9
//!   in its constructor is the poly power). [`psa_sgd`] reproduces this (PyTorch's momentum
//!   form, [`crate::MomentumKind::Torch`]).
//! * **Augmentation**: random longer side in 256..=512 (Pillow bicubic), horizontal flip, colour
//!   jitter, normalisation, then a random 448 crop whose padding is zero after normalisation
//!   ([`PsaAugment`]; the colour jitter, torchvision's `ColorJitter(0.3, 0.3, 0.3, 0.1)`, is not
//!   reproduced).
//! * **Dropout**: psa's `Dropout2d` (channel-wise) twice in each of `b6`/`b7` and on `relu7`;
//!   r38's dropout is element-wise and once per bottleneck, so training runs differ there.
//!
//! [`MultiLabelImages`] is the data source for [`crate::trainer::train`] with
//! [`crate::trainer::Task::MultiLabel`] and a [`r38_model::CamClassifier`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{ensure, Context, Result};
use candle_core::Tensor;
use r38_data::image::RgbImage;
use r38_data::{resize_u8, Filter, ImageLoader, Normalization};

use crate::augment::Planar;
use crate::loader::{Example, Source, Target};
use crate::optimizer::{LrRule, MomentumKind, MultiplierPolicy, SgdConfig};
use crate::rng::Rng;

/// psa's VOC classes: the 20 foreground classes, background excluded.
pub const VOC_FOREGROUND: usize = 20;

/// `F.multilabel_soft_margin_loss(scores, targets)`: scores and 0/1 targets `(N, C)`.
pub fn multilabel_soft_margin_loss(
    scores: &Tensor,
    targets: &Tensor,
) -> candle_core::Result<Tensor> {
    let (n, c) = scores.dims2()?;
    if targets.dims() != [n, c] {
        candle_core::bail!(
            "multi-label targets have shape {:?}, scores {:?}",
            targets.dims(),
            scores.dims()
        );
    }
    // softplus(x) = max(x, 0) + ln(1 + e^-|x|), stable for large |x|.
    let softplus = |x: &Tensor| -> candle_core::Result<Tensor> {
        x.relu()? + ((x.abs()?.neg()?.exp()? + 1.0)?.log()?)
    };
    let pos = targets.mul(&softplus(&scores.neg()?)?)?;
    let neg = targets.affine(-1.0, 1.0)?.mul(&softplus(scores)?)?;
    (pos + neg)?.mean_all()
}

/// psa's learning rate at `step` (0 for the first update): `base · (1 − step / max_step)^0.9`,
/// held at the last value once `step` reaches `max_step`, as `PolyOptimizer` stops updating it.
pub fn psa_poly_lr(base: f64, step: usize, max_step: usize) -> f64 {
    let max_step = max_step.max(1);
    let step = step.min(max_step - 1);
    base * (1.0 - step as f64 / max_step as f64).powf(0.9)
}

/// psa's parameter groups: `fc8` at 10x (weights wd x1), `conv1a`, level 2 and every BN frozen.
pub fn psa_policy() -> MultiplierPolicy {
    MultiplierPolicy::alex()
        .with_new_layers(&["fc8"], LrRule::Alex10)
        .with_frozen(&["conv1a", "res2", "bn"])
}

/// psa's SGD: PyTorch's momentum form with momentum = weight decay = `weight_decay` (5e-4).
pub fn psa_sgd(weight_decay: f64) -> SgdConfig {
    SgdConfig {
        momentum: weight_decay,
        weight_decay,
        rescale_grad: 1.0,
        clip_gradient: None,
        kind: MomentumKind::Torch,
    }
}

/// psa's training augmentation (`RandomResizeLong`, flip, normalise, `RandomCrop`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PsaAugment {
    /// Range of the longer side, inclusive (256, 512).
    pub long_side: (u32, u32),
    /// Square crop side (448).
    pub crop: u32,
    /// Random horizontal flip.
    pub flip: bool,
    /// Normalisation (ImageNet mean/std on 0..1 values).
    pub norm: Normalization,
}

impl Default for PsaAugment {
    fn default() -> Self {
        Self {
            long_side: (256, 512),
            crop: 448,
            flip: true,
            norm: Normalization::default(),
        }
    }
}

/// Where a crop window and the image overlap: `(container offset, image offset, length)` along one
/// axis, as psa's `RandomCrop` draws it: a random image offset when the image is larger than the
/// crop, else a random placement of the whole image in the (zero) container.
pub fn psa_crop_axis(len: u32, crop: u32, rng: &mut Rng) -> (u32, u32, u32) {
    let n = len.min(crop);
    if len > crop {
        (0, rng.below((len - crop) as usize + 1) as u32, n)
    } else {
        (rng.below((crop - len) as usize + 1) as u32, 0, n)
    }
}

impl PsaAugment {
    /// The long-side size: `(round(w · L / h), L)` or `(L, round(h · L / w))`, as psa's
    /// `RandomResizeLong` (Python's `round` of an exact product; ties are vanishingly rare and
    /// go half to even).
    pub fn resized(w: u32, h: u32, long: u32) -> (u32, u32) {
        let r = |x: f64| {
            let f = x.floor();
            let up = x - f > 0.5 || (x - f == 0.5 && f % 2.0 == 1.0);
            (if up { f + 1.0 } else { f }).max(1.0) as u32
        };
        if w < h {
            (r(f64::from(w) * f64::from(long) / f64::from(h)), long)
        } else {
            (long, r(f64::from(h) * f64::from(long) / f64::from(w)))
        }
    }

    /// One training sample: a normalised `crop × crop` planar image.
    pub fn apply(&self, image: &RgbImage, rng: &mut Rng) -> Result<Planar> {
        let (w, h) = image.dimensions();
        ensure!(w > 0 && h > 0, "empty image");
        let (lo, hi) = self.long_side;
        ensure!(lo >= 1 && lo <= hi, "bad long-side range {lo}..={hi}");
        let long = rng.int_inclusive(i64::from(lo), i64::from(hi)) as u32;
        let (rw, rh) = Self::resized(w, h, long);
        let raw = resize_u8(image.as_raw(), (w, h), 3, (rw, rh), Filter::Bicubic)?;
        let flip = self.flip && rng.bernoulli(0.5);
        let c = self.crop as usize;
        // psa draws the columns first, then the rows.
        let (cx, ix, nx) = psa_crop_axis(rw, self.crop, rng);
        let (cy, iy, ny) = psa_crop_axis(rh, self.crop, rng);
        let plane = c * c;
        let mut data = vec![0f32; 3 * plane];
        for y in 0..ny as usize {
            for x in 0..nx as usize {
                let sx = ix as usize + x;
                let sx = if flip { rw as usize - 1 - sx } else { sx };
                let s = ((iy as usize + y) * rw as usize + sx) * 3;
                let d = (cy as usize + y) * c + cx as usize + x;
                for ch in 0..3 {
                    data[ch * plane + d] = self.norm.value(raw[s + ch], ch);
                }
            }
        }
        Ok(Planar {
            width: c,
            height: c,
            data,
        })
    }
}

/// A multi-label training set: image files with their label vectors, augmented as psa does.
pub struct MultiLabelImages {
    /// `(image file, label vector)`; a label counts when it is above 1e-5 (psa's test).
    pub items: Vec<(PathBuf, Vec<f32>)>,
    /// The augmentation.
    pub augment: PsaAugment,
    /// Image decoding (pixel limit).
    pub loader: ImageLoader,
}

impl MultiLabelImages {
    /// psa's training list: VOC image names, their images under `images` (`<name>.jpg`) and their
    /// labels from a `cls_labels.npy` table. A name missing from the table is an error.
    pub fn from_cls_labels(
        images: &Path,
        names: &[String],
        table: &BTreeMap<String, Vec<f32>>,
        augment: PsaAugment,
    ) -> Result<Self> {
        let items = names
            .iter()
            .map(|n| {
                let labels = table
                    .get(n)
                    .with_context(|| format!("no labels for `{n}` in the labels file"))?;
                Ok((images.join(format!("{n}.jpg")), labels.clone()))
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            items,
            augment,
            loader: ImageLoader::new(),
        })
    }

    /// Labels from segmentation label PNGs (VOC layout): `(image file, label PNG)` pairs.
    pub fn from_segmentation(
        pairs: &[(PathBuf, PathBuf)],
        classes: usize,
        augment: PsaAugment,
    ) -> Result<Self> {
        let items = pairs
            .iter()
            .map(|(image, label)| {
                let map = r38_data::datasets::read_label_png(label)
                    .with_context(|| format!("{}: label map", label.display()))?;
                Ok((image.clone(), labels_from_segmentation(&map.data, classes)))
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            items,
            augment,
            loader: ImageLoader::new(),
        })
    }
}

impl Source for MultiLabelImages {
    fn len(&self) -> usize {
        self.items.len()
    }

    fn example(&self, index: usize, rng: &mut Rng) -> Result<Example> {
        let (path, labels) = self
            .items
            .get(index)
            .with_context(|| format!("sample {index} of {}", self.items.len()))?;
        let image = self.loader.load_rgb8(path)?;
        let image = self
            .augment
            .apply(&image, rng)
            .with_context(|| format!("{}: augmentation", path.display()))?;
        Ok(Example {
            image,
            target: Target::Labels(labels.iter().map(|&v| u8::from(v > 1e-5)).collect()),
        })
    }
}

/// Image-level labels from a segmentation label map (VOC: 0 background, 1..=20 the classes, 255
/// ignored): the classes present, as psa's 20-vector (class `c` is label `c + 1`).
pub fn labels_from_segmentation(labels: &[u8], classes: usize) -> Vec<f32> {
    let mut present = vec![0f32; classes];
    for &l in labels {
        let l = l as usize;
        if (1..=classes).contains(&l) {
            present[l - 1] = 1.0;
        }
    }
    present
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn soft_margin_loss_by_hand() {
        let x = Tensor::new(&[[2f32, -1.0], [0.0, 3.0]], &Device::Cpu).unwrap();
        let y = Tensor::new(&[[1f32, 0.0], [1.0, 0.0]], &Device::Cpu).unwrap();
        let sp = |v: f64| (1.0 + v.exp()).ln();
        let expected = (sp(-2.0) + sp(-1.0) + sp(0.0) + sp(3.0)) / 4.0;
        let got = multilabel_soft_margin_loss(&x, &y)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(
            (f64::from(got) - expected).abs() < 1e-6,
            "{got} vs {expected}"
        );
        let big = Tensor::new(&[[200f32]], &Device::Cpu).unwrap();
        let zero = Tensor::new(&[[0f32]], &Device::Cpu).unwrap();
        let l = multilabel_soft_margin_loss(&big, &zero).unwrap();
        assert_eq!(l.to_scalar::<f32>().unwrap(), 200.0);
    }

    #[test]
    fn poly_and_policy() {
        assert_eq!(psa_poly_lr(0.1, 0, 100), 0.1);
        assert!((psa_poly_lr(0.1, 50, 100) - 0.1 * 0.5f64.powf(0.9)).abs() < 1e-15);
        let p = psa_policy();
        assert_eq!(p.multipliers("fc8_weight").unwrap().lr, 10.0);
        assert_eq!(p.multipliers("res4a_branch2a_weight").unwrap().lr, 1.0);
        assert_eq!(p.multipliers("res2b1_branch2a_weight").unwrap().lr, 0.0);
        assert_eq!(p.multipliers("conv1a_weight").unwrap().lr, 0.0);
        assert_eq!(p.multipliers("bn5a_branch2a_gamma").unwrap().lr, 0.0);
        assert_eq!(p.multipliers("bn7_beta").unwrap().lr, 0.0);
    }

    #[test]
    fn resize_long_and_crop() {
        assert_eq!(PsaAugment::resized(500, 375, 256), (256, 192));
        assert_eq!(PsaAugment::resized(375, 500, 300), (225, 300));
        let img = RgbImage::from_fn(60, 40, |x, y| r38_data::image::Rgb([x as u8, y as u8, 7]));
        let aug = PsaAugment {
            long_side: (30, 30),
            crop: 24,
            flip: false,
            norm: Normalization::default(),
        };
        let mut rng = Rng::new(3);
        let out = aug.apply(&img, &mut rng).unwrap();
        assert_eq!((out.width, out.height), (24, 24));
        // 30x20 resized: rows 20 < 24, so 4 rows of the container stay zero.
        let zero_rows = (0..24)
            .filter(|y| (0..24).all(|x| out.data[y * 24 + x] == 0.0))
            .count();
        assert_eq!(zero_rows, 4);
        assert_eq!(
            labels_from_segmentation(&[0, 255, 3, 3, 20], 20)
                .iter()
                .enumerate()
                .filter(|(_, v)| **v == 1.0)
                .map(|(i, _)| i)
                .collect::<Vec<_>>(),
            vec![2, 19]
        );
    }
}
