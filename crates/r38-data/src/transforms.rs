//! The authors' test-time image transforms: scale one side, centre-crop, normalise.
//!
//! These follow `util/transformer.py` (`Scale`, `CenterCrop`, `ColorScale`, `ColorNormalize`)
//! and their use in `iclass/ilsvrc.py` (ImageNet) and `issegm/voc.py` (segmentation):
//!
//! * **Scale** ([`scale_side`], [`scaled_size`]): nothing happens if the chosen side (shorter
//!   for ImageNet, longer for segmentation) already has the target length. Otherwise that side
//!   becomes `size` and the other `round(size * other / side)`, with numpy's round-half-to-even
//!   on the `f64` quotient; when width and height are equal the width is taken as the chosen
//!   side. The filter comes from [`Interpolation`].
//! * **Centre crop** ([`center_crop`], [`center_crop_offset`]): the offset on each axis is
//!   `ceil((len - crop) / 2)`, so an odd surplus puts the extra pixel on the left/top side of
//!   the cut (the crop sits half a pixel right/down of the exact centre).
//! * **Normalise** ([`Normalization`], [`normalize`]): `u8` to `f32`, times `f32(1/255)` in
//!   `f32`; then, in `f64`, minus the mean and divided by the std; stored as `f32` in RGB
//!   planar order. This is the exact arithmetic of the numpy code (`np.single` scale, then
//!   `float64` mean/std arrays), so results agree to the last bit.

use candle_core::{Device, Tensor};
use image::RgbImage;

use crate::error::{DataError, Result};
use crate::interpolation::Interpolation;
use crate::resample::resize_rgb8;

/// ImageNet mean of R, G, B in `0..1` units (the authors' `rna` networks, and torchvision's).
pub const IMAGENET_MEAN: [f64; 3] = [0.485, 0.456, 0.406];
/// ImageNet standard deviation of R, G, B in `0..1` units.
pub const IMAGENET_STD: [f64; 3] = [0.229, 0.224, 0.225];

/// Which side [`scale_side`] sets to the target length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// The shorter side (ImageNet testing: `Scale(size)`).
    Shorter,
    /// The longer side (segmentation testing: `Scale(size, CUBIC, False)`).
    Longer,
}

fn round_half_even(v: f64) -> f64 {
    v.round_ties_even()
}

/// The size `(width, height)` that the authors' `Scale` gives an image of `src = (width,
/// height)`: `src` itself if the chosen side already equals `size`, else that side set to
/// `size` and the other scaled in proportion (`round(size * other / side)`, half to even).
pub fn scaled_size(src: (u32, u32), size: u32, side: Side) -> (u32, u32) {
    let (w, h) = src;
    let key = match side {
        Side::Shorter => w.min(h),
        Side::Longer => w.max(h),
    };
    if key == size {
        return src;
    }
    let size_f = size as f64;
    if key == w {
        (size, round_half_even(size_f * h as f64 / w as f64) as u32)
    } else {
        (round_half_even(size_f * w as f64 / h as f64) as u32, size)
    }
}

/// The authors' `Scale`: resizes so that the `side` of `img` is `size` (see [`scaled_size`]),
/// with the filter chosen by `interpolation`; returns a copy when nothing changes.
pub fn scale_side(
    img: &RgbImage,
    size: u32,
    side: Side,
    interpolation: Interpolation,
) -> Result<RgbImage> {
    let src = img.dimensions();
    let dst = scaled_size(src, size, side);
    if dst == src {
        return Ok(img.clone());
    }
    resize_rgb8(img, dst, interpolation.filter_for(src, dst))
}

/// The authors' centre-crop offset along an axis of length `len` for a crop of length `crop`:
/// `ceil((len - crop) / 2)`. Fails if `crop > len`.
pub fn center_crop_offset(len: u32, crop: u32) -> Result<u32> {
    if crop > len {
        return Err(DataError::InvalidArgument(format!(
            "cannot crop {crop} pixels from an axis of {len}"
        )));
    }
    Ok((len - crop).div_ceil(2))
}

/// Crops `size = (width, height)` out of `img` at the authors' centre offsets
/// ([`center_crop_offset`] on each axis).
pub fn center_crop(img: &RgbImage, size: (u32, u32)) -> Result<RgbImage> {
    let (w, h) = img.dimensions();
    let x0 = center_crop_offset(w, size.0)?;
    let y0 = center_crop_offset(h, size.1)?;
    Ok(image::imageops::crop_imm(img, x0, y0, size.0, size.1).to_image())
}

/// Per-channel normalisation: `((v as f32 * pixel_scale) as f64 - mean[c]) / std[c]`, stored
/// as `f32`.
///
/// The authors' `rn` (plain ResNet) setting, raw 0..255 values minus `[123.68, 116.779,
/// 103.939]` and no std, is `pixel_scale = 1.0`, that mean and `std = [1.0; 3]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Normalization {
    /// Factor applied in `f32` to the 8-bit value first; `f32(1/255)` by default.
    pub pixel_scale: f32,
    /// Mean subtracted, per R, G, B channel, in `f64`.
    pub mean: [f64; 3],
    /// Divisor, per R, G, B channel, in `f64`.
    pub std: [f64; 3],
}

impl Default for Normalization {
    /// The authors' `rna` setting: `1/255`, [`IMAGENET_MEAN`], [`IMAGENET_STD`].
    fn default() -> Self {
        Normalization {
            pixel_scale: (1.0f64 / 255.0) as f32,
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
        }
    }
}

impl Normalization {
    /// The normalised value of the 8-bit sample `v` of channel `c` (`0..3`).
    #[inline]
    pub fn value(&self, v: u8, c: usize) -> f32 {
        let x = f64::from(f32::from(v) * self.pixel_scale);
        ((x - self.mean[c]) / self.std[c]) as f32
    }

    /// All values of `img` normalised, in planar order (`3 * H * W`: R plane, G plane, B
    /// plane).
    pub fn to_chw(&self, img: &RgbImage) -> Vec<f32> {
        let plane = img.width() as usize * img.height() as usize;
        let mut out = vec![0f32; 3 * plane];
        // A lookup table per channel: 256 values, computed with the exact formula.
        let lut: Vec<[f32; 256]> = (0..3)
            .map(|c| std::array::from_fn(|v| self.value(v as u8, c)))
            .collect();
        for (i, p) in img.as_raw().chunks_exact(3).enumerate() {
            for c in 0..3 {
                out[c * plane + i] = lut[c][p[c] as usize];
            }
        }
        out
    }
}

/// Normalises an RGB image into an `f32` tensor of shape `(3, H, W)` on `device`.
pub fn normalize(img: &RgbImage, norm: &Normalization, device: &Device) -> Result<Tensor> {
    let (w, h) = img.dimensions();
    Ok(Tensor::from_vec(
        norm.to_chw(img),
        (3, h as usize, w as usize),
        device,
    )?)
}

/// The authors' ImageNet test transform (reference §5.1): shorter side to `scale`, centre
/// crop `crop x crop`, `/255`, minus `mean`, divided by `std`, RGB.
///
/// `Default` is their published setting: 320, 320, bicubic (`--no-choose-interp-method`),
/// ImageNet mean/std.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClassifyTransform {
    /// Target length of the shorter side.
    pub scale: u32,
    /// Side of the square centre crop.
    pub crop: u32,
    /// Filter choice for the resize.
    pub interpolation: Interpolation,
    /// Per-channel mean (R, G, B) in `0..1` units.
    pub mean: [f64; 3],
    /// Per-channel std (R, G, B) in `0..1` units.
    pub std: [f64; 3],
}

impl Default for ClassifyTransform {
    fn default() -> Self {
        ClassifyTransform {
            scale: 320,
            crop: 320,
            interpolation: Interpolation::default(),
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
        }
    }
}

impl ClassifyTransform {
    /// The normalisation part: `1/255`, `mean`, `std`.
    pub fn normalization(&self) -> Normalization {
        Normalization {
            mean: self.mean,
            std: self.std,
            ..Normalization::default()
        }
    }

    /// The geometric part: scale the shorter side, then centre-crop; returns the 8-bit crop.
    pub fn resize_and_crop(&self, img: &RgbImage) -> Result<RgbImage> {
        if self.crop > self.scale {
            return Err(DataError::InvalidArgument(format!(
                "crop {} is larger than the scaled shorter side {}",
                self.crop, self.scale
            )));
        }
        let scaled = scale_side(img, self.scale, Side::Shorter, self.interpolation)?;
        center_crop(&scaled, (self.crop, self.crop))
    }

    /// The whole transform: an `f32` tensor of shape `(1, 3, crop, crop)` on `device`.
    pub fn apply(&self, img: &RgbImage, device: &Device) -> Result<Tensor> {
        let crop = self.resize_and_crop(img)?;
        Ok(normalize(&crop, &self.normalization(), device)?.unsqueeze(0)?)
    }

    /// The transform of several images stacked into `(N, 3, crop, crop)`.
    pub fn apply_batch(&self, imgs: &[RgbImage], device: &Device) -> Result<Tensor> {
        if imgs.is_empty() {
            return Err(DataError::InvalidArgument("empty batch".into()));
        }
        let norm = self.normalization();
        let mut data = Vec::with_capacity(imgs.len() * 3 * (self.crop as usize).pow(2));
        for img in imgs {
            data.extend(norm.to_chw(&self.resize_and_crop(img)?));
        }
        let c = self.crop as usize;
        Ok(Tensor::from_vec(data, (imgs.len(), 3, c, c), device)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaled_sizes() {
        assert_eq!(scaled_size((500, 375), 320, Side::Shorter), (427, 320));
        assert_eq!(scaled_size((375, 500), 320, Side::Shorter), (320, 427));
        assert_eq!(scaled_size((320, 480), 320, Side::Shorter), (320, 480));
        assert_eq!(scaled_size((500, 375), 500, Side::Longer), (500, 375));
        assert_eq!(scaled_size((2048, 1024), 1024, Side::Longer), (1024, 512));
        // 320 * 5 / 2 = 800 exactly; 3 * 7 / 2 = 10.5 rounds to even 10
        assert_eq!(scaled_size((2, 5), 320, Side::Shorter), (320, 800));
        assert_eq!(scaled_size((2, 7), 3, Side::Shorter), (3, 10));
        assert_eq!(scaled_size((2, 9), 3, Side::Shorter), (3, 14)); // 13.5 -> 14
        assert_eq!(scaled_size((10, 10), 4, Side::Shorter), (4, 4));
    }

    #[test]
    fn crop_offsets() {
        assert_eq!(center_crop_offset(427, 320).unwrap(), 54); // 53.5 -> 54
        assert_eq!(center_crop_offset(480, 320).unwrap(), 80);
        assert_eq!(center_crop_offset(320, 320).unwrap(), 0);
        assert_eq!(center_crop_offset(321, 320).unwrap(), 1);
        assert!(center_crop_offset(300, 320).is_err());
    }

    #[test]
    fn normalization_formula() {
        let n = Normalization::default();
        let expected = ((f32::from(128u8) * (1.0f64 / 255.0) as f32) as f64 - 0.456) / 0.224;
        assert_eq!(n.value(128, 1), expected as f32);
        let img = RgbImage::from_fn(2, 1, |x, _| image::Rgb([x as u8, 10, 255]));
        let v = n.to_chw(&img);
        assert_eq!(v.len(), 6);
        assert_eq!(v[1], n.value(1, 0));
        assert_eq!(v[2], n.value(10, 1));
        assert_eq!(v[5], n.value(255, 2));
    }
}
