//! Training-time augmentation of the authors' recipes (reference §7).
//!
//! * [`SegAugment`] (`issegm/data.py`): random scale of the longer side, mean-colour padding
//!   labelled 255, random crop, horizontal flip, normalisation and stride-8 label
//!   sub-sampling at offset 4.
//! * [`ClsAugment`] (`iclass/ilsvrc.py`, fb.resnet.torch transforms): Inception random-sized
//!   crop, colour jitter, AlexNet PCA lighting, clip, flip, normalisation; [`ClsEval`] is the
//!   validation transform (shorter side, centre crop).
//!
//! All randomness comes from the [`Rng`] passed in, so a sample's augmentation is fixed by the
//! run's seed, the step and its position in the batch.

use crate::error::{ensure, Result};
use r38_data::image::RgbImage;
use r38_data::{adaptive_filter, resize_u8, Filter, Normalization};

use crate::loss::subsampled_size;
use crate::rng::Rng;

/// Label of padded and ignored pixels.
pub const IGNORE: u8 = 255;

/// A normalised image in planar order (`3 * height * width`).
#[derive(Debug, Clone, PartialEq)]
pub struct Planar {
    /// Width.
    pub width: usize,
    /// Height.
    pub height: usize,
    /// `R` plane, `G` plane, `B` plane.
    pub data: Vec<f32>,
}

fn planar_from_u8(raw: &[u8], width: usize, height: usize, norm: &Normalization) -> Planar {
    let n = width * height;
    let mut data = vec![0f32; 3 * n];
    for p in 0..n {
        for c in 0..3 {
            data[c * n + p] = norm.value(raw[p * 3 + c], c);
        }
    }
    Planar {
        width,
        height,
        data,
    }
}

/// Segmentation augmentation settings; `Default` is the authors' Cityscapes recipe at a
/// 504 crop (with the image's own longer side as the origin size).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SegAugment {
    /// Square crop side (504).
    pub crop: u32,
    /// The longer side is resized to `origin * U(lo, hi)` (0.7, 1.3).
    pub scale_range: (f64, f64),
    /// `origin`: the reference longer side (2048 for Cityscapes); `None` = the image's own.
    pub origin_size: Option<u32>,
    /// Padding colour (the dataset mean, as 8-bit RGB).
    pub mean_rgb: [u8; 3],
    /// Random horizontal flip with probability 0.5.
    pub flip: bool,
    /// Label sub-sampling stride (8: the pixel at offset 4 of every 8x8 cell); 1 keeps all.
    pub label_stride: usize,
    /// Normalisation after the geometry.
    pub norm: Normalization,
}

/// The 8-bit ImageNet mean colour (0.485, 0.456, 0.406 x 255).
pub const MEAN_RGB: [u8; 3] = [124, 116, 104];

impl Default for SegAugment {
    fn default() -> Self {
        Self {
            crop: 504,
            scale_range: (0.7, 1.3),
            origin_size: None,
            mean_rgb: MEAN_RGB,
            flip: true,
            label_stride: 8,
            norm: Normalization::default(),
        }
    }
}

/// One augmented segmentation sample.
#[derive(Debug, Clone, PartialEq)]
pub struct SegExample {
    /// The `crop x crop` normalised image.
    pub image: Planar,
    /// Labels at the label stride (`subsampled_size(crop, stride)` squared, row-major).
    pub labels: Vec<u8>,
    /// Their side.
    pub label_size: usize,
}

impl SegAugment {
    /// Side of the sub-sampled label map (63 for 504 at stride 8).
    pub fn label_size(&self) -> usize {
        if self.label_stride <= 1 {
            self.crop as usize
        } else {
            subsampled_size(self.crop as usize, self.label_stride)
        }
    }

    /// Augments `image` and its full-resolution `labels` (row-major, same size).
    pub fn apply(&self, image: &RgbImage, labels: &[u8], rng: &mut Rng) -> Result<SegExample> {
        let (w, h) = image.dimensions();
        ensure!(
            labels.len() == (w * h) as usize,
            "label map has {} values for a {w}x{h} image",
            labels.len()
        );
        // 1. Random scale of the longer side: a uniform integer in [origin*lo, origin*hi].
        let origin = f64::from(self.origin_size.unwrap_or(w.max(h)));
        let lo = (origin * self.scale_range.0).round() as i64;
        let hi = (origin * self.scale_range.1).round() as i64;
        let target = rng.int_inclusive(lo, hi).max(1) as f64;
        let s = target / f64::from(w.max(h));
        let nw = ((f64::from(w) * s).round() as u32).max(1);
        let nh = ((f64::from(h) * s).round() as u32).max(1);
        let (img, lab) = if (nw, nh) == (w, h) {
            (image.as_raw().clone(), labels.to_vec())
        } else {
            let filter = adaptive_filter((w, h), (nw, nh));
            (
                resize_u8(image.as_raw(), (w, h), 3, (nw, nh), filter)?,
                resize_u8(labels, (w, h), 1, (nw, nh), Filter::Nearest)?,
            )
        };
        // 2. Pad with the mean colour (labels 255) to at least the crop plus half a label
        //    cell on each side, then a random crop.
        let border = (self.label_stride / 2) as u32;
        let cw = (nw + 2 * border).max(self.crop);
        let ch = (nh + 2 * border).max(self.crop);
        let (ox, oy) = ((cw - nw) / 2, (ch - nh) / 2);
        let x0 = rng.below((cw - self.crop) as usize + 1) as u32;
        let y0 = rng.below((ch - self.crop) as usize + 1) as u32;
        let flip = self.flip && rng.bernoulli(0.5);
        let c = self.crop as usize;
        let mut out = vec![0u8; c * c * 3];
        let mut out_lab = vec![IGNORE; c * c];
        for y in 0..c {
            let sy = (y as u32 + y0) as i64 - oy as i64;
            for x in 0..c {
                let dx = if flip { c - 1 - x } else { x };
                let sx = (x as u32 + x0) as i64 - ox as i64;
                let d = y * c + dx;
                if sy >= 0 && sx >= 0 && (sy as u32) < nh && (sx as u32) < nw {
                    let s = sy as usize * nw as usize + sx as usize;
                    out[d * 3..d * 3 + 3].copy_from_slice(&img[s * 3..s * 3 + 3]);
                    out_lab[d] = lab[s];
                } else {
                    out[d * 3..d * 3 + 3].copy_from_slice(&self.mean_rgb);
                }
            }
        }
        let image = planar_from_u8(&out, c, c, &self.norm);
        let (labels, label_size) = if self.label_stride <= 1 {
            (out_lab, c)
        } else {
            let n = self.label_size();
            let off = self.label_stride / 2;
            let mut sub = Vec::with_capacity(n * n);
            for i in 0..n {
                for j in 0..n {
                    sub.push(
                        out_lab[(off + i * self.label_stride) * c + off + j * self.label_stride],
                    );
                }
            }
            (sub, n)
        };
        Ok(SegExample {
            image,
            labels,
            label_size,
        })
    }
}

/// AlexNet PCA lighting eigenvalues (fb.resnet.torch).
pub const PCA_EIGVAL: [f32; 3] = [0.2175, 0.0188, 0.0045];
/// AlexNet PCA lighting eigenvectors, rows by RGB channel.
pub const PCA_EIGVEC: [[f32; 3]; 3] = [
    [-0.5675, 0.7192, 0.4009],
    [-0.5808, -0.0045, -0.8140],
    [-0.5836, -0.6948, 0.4203],
];

/// Classification augmentation; `Default` is the authors' ImageNet recipe at 224.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClsAugment {
    /// Output side (224).
    pub crop: u32,
    /// Crop area range as a fraction of the image (0.08, 1.0).
    pub area: (f64, f64),
    /// Aspect ratio range (3/4, 4/3).
    pub aspect: (f64, f64),
    /// Brightness, contrast and saturation jitter (0.4 each), applied in random order.
    pub jitter: f32,
    /// PCA lighting standard deviation (0.1).
    pub lighting: f32,
    /// Random horizontal flip.
    pub flip: bool,
    /// Mean/std normalisation after the colour work (on 0..1 values).
    pub norm: Normalization,
    /// Resampling filter of the crop resize (bicubic).
    pub filter: Filter,
}

impl Default for ClsAugment {
    fn default() -> Self {
        Self {
            crop: 224,
            area: (0.08, 1.0),
            aspect: (3.0 / 4.0, 4.0 / 3.0),
            jitter: 0.4,
            lighting: 0.1,
            flip: true,
            norm: Normalization::default(),
            filter: Filter::Bicubic,
        }
    }
}

/// The Inception crop box `(x, y, w, h)`: 10 tries at a random area and aspect ratio, else the
/// central square of the shorter side.
pub fn random_sized_box(
    w: u32,
    h: u32,
    area: (f64, f64),
    aspect: (f64, f64),
    rng: &mut Rng,
) -> (u32, u32, u32, u32) {
    let total = f64::from(w) * f64::from(h);
    for _ in 0..10 {
        let a = total * rng.range(area.0, area.1);
        let r = rng.range(aspect.0, aspect.1);
        let (mut cw, mut ch) = ((a * r).sqrt().round() as u32, (a / r).sqrt().round() as u32);
        if rng.bernoulli(0.5) {
            std::mem::swap(&mut cw, &mut ch);
        }
        if cw >= 1 && ch >= 1 && cw <= w && ch <= h {
            let x = rng.below((w - cw) as usize + 1) as u32;
            let y = rng.below((h - ch) as usize + 1) as u32;
            return (x, y, cw, ch);
        }
    }
    let s = w.min(h);
    ((w - s) / 2, (h - s) / 2, s, s)
}

fn crop_raw(raw: &[u8], w: u32, (x, y, cw, ch): (u32, u32, u32, u32)) -> Vec<u8> {
    let mut out = Vec::with_capacity((cw * ch * 3) as usize);
    for row in y..y + ch {
        let s = ((row * w + x) * 3) as usize;
        out.extend_from_slice(&raw[s..s + (cw * 3) as usize]);
    }
    out
}

fn grey(p: &[f32]) -> f32 {
    0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2]
}

impl ClsAugment {
    /// Augments one image into a normalised `crop x crop` planar image.
    pub fn apply(&self, image: &RgbImage, rng: &mut Rng) -> Result<Planar> {
        let (w, h) = image.dimensions();
        let bx = random_sized_box(w, h, self.area, self.aspect, rng);
        let cropped = crop_raw(image.as_raw(), w, bx);
        let c = self.crop;
        let raw = if (bx.2, bx.3) == (c, c) {
            cropped
        } else {
            resize_u8(&cropped, (bx.2, bx.3), 3, (c, c), self.filter)?
        };
        let n = (c * c) as usize;
        let mut px: Vec<f32> = raw.iter().map(|&v| f32::from(v) / 255.0).collect();
        // Colour jitter: brightness, contrast, saturation in random order.
        if self.jitter > 0.0 {
            let mut order = [0usize, 1, 2];
            rng.shuffle(&mut order);
            for op in order {
                let alpha = 1.0 + rng.range(-f64::from(self.jitter), f64::from(self.jitter)) as f32;
                match op {
                    0 => px.iter_mut().for_each(|v| *v *= alpha),
                    1 => {
                        let mean = px.chunks(3).map(grey).sum::<f32>() / n as f32;
                        px.iter_mut()
                            .for_each(|v| *v = *v * alpha + mean * (1.0 - alpha));
                    }
                    _ => px.chunks_mut(3).for_each(|p| {
                        let g = grey(p);
                        p.iter_mut()
                            .for_each(|v| *v = *v * alpha + g * (1.0 - alpha));
                    }),
                }
            }
        }
        if self.lighting > 0.0 {
            let alpha: [f32; 3] = std::array::from_fn(|_| rng.normal() as f32 * self.lighting);
            let rgb: [f32; 3] = std::array::from_fn(|ch| {
                (0..3)
                    .map(|k| PCA_EIGVEC[ch][k] * alpha[k] * PCA_EIGVAL[k])
                    .sum()
            });
            px.chunks_mut(3)
                .for_each(|p| p.iter_mut().zip(rgb).for_each(|(v, d)| *v += d));
        }
        let flip = self.flip && rng.bernoulli(0.5);
        let cu = c as usize;
        let mut data = vec![0f32; 3 * n];
        for y in 0..cu {
            for x in 0..cu {
                let s = y * cu + if flip { cu - 1 - x } else { x };
                for ch in 0..3 {
                    let v = f64::from(px[s * 3 + ch].clamp(0.0, 1.0));
                    data[ch * n + y * cu + x] =
                        ((v - self.norm.mean[ch]) / self.norm.std[ch]) as f32;
                }
            }
        }
        Ok(Planar {
            width: cu,
            height: cu,
            data,
        })
    }
}

/// Validation transform: shorter side to `resize` (bicubic), centre `crop`, normalise
/// (`norm.pixel_scale` applies to the 8-bit values).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClsEval {
    /// Shorter side before the crop (256 for 224); equal to `crop` for no resize.
    pub resize: u32,
    /// Centre crop side.
    pub crop: u32,
    /// Normalisation.
    pub norm: Normalization,
}

impl ClsEval {
    /// The normalised centre crop.
    pub fn apply(&self, image: &RgbImage) -> Result<Planar> {
        let (w, h) = image.dimensions();
        let s = f64::from(self.resize) / f64::from(w.min(h));
        let (nw, nh) = (
            ((f64::from(w) * s).round() as u32).max(self.crop),
            ((f64::from(h) * s).round() as u32).max(self.crop),
        );
        let raw = if (nw, nh) == (w, h) {
            image.as_raw().clone()
        } else {
            resize_u8(image.as_raw(), (w, h), 3, (nw, nh), Filter::Bicubic)?
        };
        let bx = (
            (nw - self.crop) / 2,
            (nh - self.crop) / 2,
            self.crop,
            self.crop,
        );
        let c = self.crop as usize;
        Ok(planar_from_u8(&crop_raw(&raw, nw, bx), c, c, &self.norm))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_image(w: u32, h: u32) -> (RgbImage, Vec<u8>) {
        let img = RgbImage::from_fn(w, h, |x, y| {
            r38_data::image::Rgb([(x * 7) as u8, (y * 5) as u8, 90])
        });
        let labels = (0..w * h).map(|i| ((i % w) * 3 / w) as u8).collect();
        (img, labels)
    }

    #[test]
    fn seg_crop_pads_with_ignore_and_subsamples() {
        let (img, labels) = test_image(40, 30);
        let aug = SegAugment {
            crop: 64,
            ..SegAugment::default()
        };
        assert_eq!(aug.label_size(), 8);
        let mut seen_flip_difference = false;
        for seed in 0..8 {
            let ex = aug.apply(&img, &labels, &mut Rng::new(seed)).unwrap();
            assert_eq!(ex.image.data.len(), 3 * 64 * 64);
            assert_eq!(ex.labels.len(), 64);
            assert_eq!(ex.label_size, 8);
            // The image (at most 52 px after scaling) cannot fill a 64 crop: padding is 255.
            assert!(ex.labels.contains(&IGNORE));
            assert!(ex.labels.iter().all(|&l| l < 3 || l == IGNORE));
            let again = aug.apply(&img, &labels, &mut Rng::new(seed)).unwrap();
            assert_eq!(ex, again);
            seen_flip_difference |=
                ex != aug.apply(&img, &labels, &mut Rng::new(seed + 100)).unwrap();
        }
        assert!(seen_flip_difference);
    }

    #[test]
    fn seg_identity_geometry_keeps_labels() {
        let (img, labels) = test_image(16, 16);
        let aug = SegAugment {
            crop: 16,
            scale_range: (1.0, 1.0),
            flip: false,
            label_stride: 1,
            ..SegAugment::default()
        };
        let ex = aug.apply(&img, &labels, &mut Rng::new(1)).unwrap();
        // Crop 16 of a 24 canvas (border 4): the image sits at offset 4.
        let valid = ex.labels.iter().filter(|&&l| l != IGNORE).count();
        assert!(valid > 0 && valid <= 256);
        let mean = Normalization::default();
        let first = ex.image.data[0];
        assert!(
            (first - mean.value(MEAN_RGB[0], 0)).abs() < 1e-6
                || (first - mean.value(img.get_pixel(0, 0)[0], 0)).abs() < 1e-6
        );
    }

    #[test]
    fn cls_augment_shapes_and_determinism() {
        let (img, _) = test_image(50, 40);
        let aug = ClsAugment {
            crop: 24,
            ..ClsAugment::default()
        };
        let a = aug.apply(&img, &mut Rng::new(4)).unwrap();
        assert_eq!(a.data.len(), 3 * 24 * 24);
        assert_eq!(a, aug.apply(&img, &mut Rng::new(4)).unwrap());
        assert_ne!(a, aug.apply(&img, &mut Rng::new(5)).unwrap());
        for seed in 0..50 {
            let (x, y, w, h) =
                random_sized_box(50, 40, (0.08, 1.0), (0.75, 4.0 / 3.0), &mut Rng::new(seed));
            assert!(x + w <= 50 && y + h <= 40 && w > 0 && h > 0);
        }
        let eval = ClsEval {
            resize: 28,
            crop: 24,
            norm: Normalization::default(),
        };
        assert_eq!(eval.apply(&img).unwrap().data.len(), 3 * 24 * 24);
    }
}
