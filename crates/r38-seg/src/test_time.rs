//! Test-time inference: the authors' segmentation test protocol, and its extensions
//! (multi-scale fusion, model averaging, sliding windows).
//!
//! One code path, [`TestProtocol::predict`], serves the CLI, evaluation and library users. Its
//! steps are public too, for callers that need the intermediate results:
//! [`TestProtocol::prepare`] → [`TestProtocol::strided_probabilities`] →
//! [`StridedProbabilities::upsample`], then [`fuse_probabilities`] over scales and
//! [`argmax_labels`].
//!
//! # The authors' single-scale protocol
//!
//! As `issegm/voc.py` (`_val_impl`, `interp_preds_as`) runs it, with `util/transformer.py`
//! `Scale` and `util/util.py` `get_interp_method` (reference §5.2). `s` is the network's output
//! stride (8), `k` the number of test steps.
//!
//! 1. **Scale.** The longer side of the 8-bit RGB image becomes the test scale, unless it
//!    already is (then the image is untouched); the other side is `round(scale * other /
//!    longer)`, half to even. The filter is adaptive ([`r38_data::adaptive_filter`]): Lanczos
//!    ("ANTIALIAS") when both sides shrink, bicubic when both grow, bilinear otherwise.
//! 2. **Normalise.** `v * f32(1/255)`, minus the ImageNet mean, divided by the std, per RGB
//!    channel ([`Normalization`]).
//! 3. **Canvas.** A zero canvas (zero is the mean colour after normalisation) with the image at
//!    its top-left corner. Its size is fixed per dataset: the test scale rounded up to a
//!    multiple of `s`, square (504x504 for VOC and ADE20K at 500, whatever the aspect ratio), or,
//!    for Cityscapes (`ident_size`), the image size rounded up (1024x2048). See [`CanvasSize`].
//! 4. **Shift-and-stitch** (`--test-steps k`, `k` divides `s`; prediction stride `s / k`). The
//!    net runs `k²` times. Run `(iy, ix)` sees the image moved by `(dy, dx)` pixels, `d_i =
//!    (s/k)/2 + i·(s/k) − s/2` ([`shift_offsets`]: `k = 1`: 0; `k = 2`: −2, +2; `k = 4`: −3, −1,
//!    +1, +3): canvas pixel `(r, c)` holds image pixel `(r + dy, c + dx)`, zero where that falls
//!    outside the image, and only inside `[0, h) x [0, w)` (the scaled image's extent) — pixels
//!    pushed past the image extent are dropped ([`shifted_canvas`]). Output cell `(i, j)` of run
//!    `(iy, ix)` goes to cell `(iy + k·i, ix + k·j)` of a map at stride `s / k`. With `k = 1`
//!    this is one plain pass.
//! 5. **Softmax.** The network ends in a softmax; everything after works on probabilities.
//! 6. **Flip.** The **whole canvas**, zero padding included, is mirrored left-right (so the image
//!    sits at the top-right), run, and its probability map mirrored back over the whole output
//!    width; the two are averaged: `0.5 · (p + unflip(p_flipped))`. The average is of
//!    probabilities, not scores, and it is taken per shift, before the interleaving. Note that
//!    un-flipped cell `j` of the mirrored run is centred half a pixel left of cell `j` of the
//!    plain run (`8j + 3` vs `8j + 4` for a cell reading input pixel `8j + 4`); the authors
//!    accept that.
//! 7. **Upsample.** Each class plane, as a Pillow mode-`F` image, is resized with **bicubic** by
//!    the prediction stride, to `(out_h · s/k, out_w · s/k)` = the canvas size; cropped to the
//!    scaled image (top-left `h x w`); and, if the image was rescaled in step 1, resized to the
//!    original size with the adaptive filter chosen from the scaled to the original size.
//! 8. **Labels.** `argmax` over classes (the first class wins a tie).
//!
//! Their code compares only the heights to decide whether to resize back in step 7 (a resize of
//! the width alone would leave a map of the wrong width); we compare both sides, which is the
//! same whenever theirs gives a map of the right size.
//!
//! # Extensions (not in the released code)
//!
//! * **Multi-scale**: the released code asserts a single test scale. Here each scale runs the
//!   whole single-scale protocol to the original resolution, and the probability volumes are
//!   fused by mean or max ([`Fuse`]).
//! * **Model averaging**: several networks with the same classes and output stride; their
//!   probabilities are averaged per canvas ([`crate::score_net::mean_probabilities`]).
//! * **Sliding window** ([`TestProtocol::max_canvas`], [`crate::sliding_window`]): canvases
//!   larger than a budget run as overlapping tiles.

#![warn(missing_docs)]

use candle_core::{Device, Tensor};
use r38_data::image::RgbImage;
use r38_data::transforms::scaled_size;
use r38_data::{resize_planes_f32, scale_side, Filter, Interpolation, Normalization, Side};

use crate::error::{SegError, SegResult};
use crate::score_net::{common_geometry, ScoreNet};
use crate::sliding_window::{windowed_probabilities, CanvasLimit, WindowPlan};

/// How the probability volumes of several test scales are combined.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
pub enum Fuse {
    /// Per pixel and class, the mean over scales.
    #[default]
    Mean,
    /// Per pixel and class, the maximum over scales (reported to work better than the mean for
    /// Cityscapes, issue #33 of the authors' repository; not normalised afterwards).
    Max,
}

/// The size of the zero canvas the scaled image is written into (top-left).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
pub enum CanvasSize {
    /// Square, the test scale rounded up to the canvas multiple, whatever the image's aspect
    /// ratio: 504x504 at scale 500 (the authors' VOC and ADE20K setting).
    #[default]
    Square,
    /// The scaled image's height and width, each rounded up to the canvas multiple: 1024x2048
    /// for Cityscapes (the authors' `ident_size`).
    FitImage,
}

/// A test protocol: test scales, flipping, shift-and-stitch, canvas and window settings.
///
/// The presets reproduce the settings of the authors' published numbers: [`TestProtocol::voc`],
/// [`TestProtocol::ade20k`], [`TestProtocol::cityscapes`].
#[derive(Debug, Clone, PartialEq)]
pub struct TestProtocol {
    /// Test scales: the length the longer image side is resized to (the image is unchanged if it
    /// already has it). One scale is the authors' protocol; several are fused with
    /// [`TestProtocol::fuse`].
    pub scales: Vec<u32>,
    /// Also run the horizontally mirrored canvas and average the probabilities.
    pub flip: bool,
    /// Shift-and-stitch steps `k` per axis (`k²` runs at stride `s / k`); must divide the output
    /// stride. 1 is a plain pass.
    pub test_steps: u32,
    /// How the scales are fused (ignored for one scale).
    pub fuse: Fuse,
    /// The canvas shape.
    pub canvas: CanvasSize,
    /// Canvas sides are rounded up to a multiple of this and of the output stride (the authors
    /// use the output stride, 8).
    pub canvas_multiple: u32,
    /// The largest canvas one forward pass may see; larger canvases run as overlapping tiles
    /// (see [`crate::sliding_window`]). `None`: always one pass, as the authors do.
    pub max_canvas: Option<CanvasLimit>,
    /// Minimum overlap of neighbouring tiles in pixels (rounded up to the canvas multiple).
    pub window_overlap: u32,
    /// Filter choice for the image resize and the final probability resize; the authors'
    /// segmentation code always uses [`Interpolation::Adaptive`].
    pub interpolation: Interpolation,
    /// Input normalisation; ImageNet mean/std on `0..1` RGB for the released models.
    pub normalization: Normalization,
}

impl Default for TestProtocol {
    /// [`TestProtocol::voc`].
    fn default() -> Self {
        TestProtocol::voc()
    }
}

impl TestProtocol {
    /// One test scale, no flipping, one step, square canvas, adaptive interpolation, ImageNet
    /// normalisation, no tiling.
    pub fn single_scale(scale: u32) -> Self {
        TestProtocol {
            scales: vec![scale],
            flip: false,
            test_steps: 1,
            fuse: Fuse::Mean,
            canvas: CanvasSize::Square,
            canvas_multiple: 8,
            max_canvas: None,
            window_overlap: 128,
            interpolation: Interpolation::Adaptive,
            normalization: Normalization::default(),
        }
    }

    /// PASCAL VOC 2012 (`--test-scales 500 --test-flipping`): scale 500, canvas 504x504,
    /// flipping.
    pub fn voc() -> Self {
        TestProtocol {
            flip: true,
            ..TestProtocol::single_scale(500)
        }
    }

    /// ADE20K (`--test-scales 500 --test-flipping --test-steps 2`): scale 500, canvas 504x504,
    /// flipping, 2x2 shift-and-stitch (prediction stride 4).
    pub fn ade20k() -> Self {
        TestProtocol {
            test_steps: 2,
            ..TestProtocol::voc()
        }
    }

    /// Cityscapes (`--test-scales 2048 --test-flipping`): the native 1024x2048 image, unscaled,
    /// in one 1024x2048 canvas, flipping. Set [`TestProtocol::max_canvas`] to bound memory.
    pub fn cityscapes() -> Self {
        TestProtocol {
            canvas: CanvasSize::FitImage,
            ..TestProtocol::single_scale(2048)
        }
        .with_flip(true)
    }

    /// This protocol with flipping on or off.
    pub fn with_flip(mut self, flip: bool) -> Self {
        self.flip = flip;
        self
    }

    /// This protocol with other test scales.
    pub fn with_scales(mut self, scales: Vec<u32>) -> Self {
        self.scales = scales;
        self
    }

    /// Checks the settings against a network output stride.
    pub fn validate(&self, output_stride: usize) -> SegResult<()> {
        if self.scales.is_empty() {
            return Err(SegError::Protocol("no test scale".into()));
        }
        if self.scales.contains(&0) {
            return Err(SegError::Protocol("a test scale of 0".into()));
        }
        let k = self.test_steps as usize;
        if k == 0 || !output_stride.is_multiple_of(k) {
            return Err(SegError::Protocol(format!(
                "test steps {} must divide the output stride {output_stride}",
                self.test_steps
            )));
        }
        if self.canvas_multiple == 0 {
            return Err(SegError::Protocol("canvas multiple 0".into()));
        }
        Ok(())
    }

    /// The effective canvas multiple: the least common multiple of
    /// [`TestProtocol::canvas_multiple`] and the output stride.
    pub fn effective_multiple(&self, output_stride: usize) -> usize {
        let m = self.canvas_multiple as usize;
        let (mut a, mut b) = (m, output_stride);
        while b != 0 {
            (a, b) = (b, a % b);
        }
        if a == 0 {
            return m.max(output_stride);
        }
        m / a * output_stride
    }

    /// The canvas `(width, height)` for an image scaled to `scaled = (width, height)` at test
    /// scale `scale`.
    pub fn canvas_size(&self, scale: u32, scaled: (u32, u32), output_stride: usize) -> (u32, u32) {
        let m = self.effective_multiple(output_stride) as u32;
        let up = |v: u32| v.div_ceil(m) * m;
        match self.canvas {
            CanvasSize::Square => {
                let side = up(scale);
                (side.max(up(scaled.0)), side.max(up(scaled.1)))
            }
            CanvasSize::FitImage => (up(scaled.0), up(scaled.1)),
        }
    }

    /// Step 1: the image resized so that its longer side is `scale` (unchanged if it already
    /// is), with [`TestProtocol::interpolation`].
    pub fn scale_image(&self, image: &RgbImage, scale: u32) -> SegResult<RgbImage> {
        Ok(scale_side(image, scale, Side::Longer, self.interpolation)?)
    }

    /// Steps 1-2: the scaled, normalised image.
    pub fn prepare(&self, image: &RgbImage, scale: u32) -> SegResult<ScaledImage> {
        let (w, h) = image.dimensions();
        if w == 0 || h == 0 {
            return Err(SegError::InvalidArgument(format!("empty image {w}x{h}")));
        }
        let size = scaled_size((w, h), scale, Side::Longer);
        let scaled = self.scale_image(image, scale)?;
        debug_assert_eq!(scaled.dimensions(), size);
        Ok(ScaledImage {
            original: (w, h),
            size,
            scale,
            data: self.normalization.to_chw(&scaled),
        })
    }

    /// Steps 3-6: the class probabilities of `nets` (averaged) on the canvas of `image`, with
    /// shift-and-stitch and flipping, at the prediction stride `s / k` (the authors'
    /// `net_preds`).
    pub fn strided_probabilities(
        &self,
        nets: &[&dyn ScoreNet],
        image: &ScaledImage,
    ) -> SegResult<StridedProbabilities> {
        let (classes, stride) = common_geometry(nets)?;
        self.validate(stride)?;
        let k = self.test_steps as usize;
        let pred_stride = stride / k;
        let (w, h) = (image.size.0 as usize, image.size.1 as usize);
        if image.data.len() != 3 * w * h {
            return Err(SegError::InvalidArgument(format!(
                "image data of {} values for a 3x{h}x{w} image",
                image.data.len()
            )));
        }
        let (cw, ch) = self.canvas_size(image.scale, image.size, stride);
        let (cw, ch) = (cw as usize, ch as usize);
        let plan = WindowPlan::for_limit(
            (ch, cw),
            self.max_canvas,
            self.window_overlap as usize,
            self.effective_multiple(stride),
        )?;
        let (lh, lw) = (ch / stride, cw / stride);
        let (ph, pw) = (lh * k, lw * k);
        let offsets = shift_offsets(stride, k)?;
        let device = nets[0].device();
        let run = |canvas: Vec<f32>| -> SegResult<Vec<f32>> {
            let x = Tensor::from_vec(canvas, (1, 3, ch, cw), &Device::Cpu)?.to_device(&device)?;
            windowed_probabilities(nets, &x, &plan)
        };
        let mut fine = vec![0f32; classes * ph * pw];
        for (iy, &dy) in offsets.iter().enumerate() {
            for (ix, &dx) in offsets.iter().enumerate() {
                let canvas = shifted_canvas(&image.data, (w, h), (cw, ch), dy, dx);
                let p = if self.flip {
                    let flipped = flip_horizontal(&canvas, 3, ch, cw);
                    let p = run(canvas)?;
                    let q = flip_horizontal(&run(flipped)?, classes, lh, lw);
                    p.iter().zip(&q).map(|(a, b)| 0.5 * (a + b)).collect()
                } else {
                    run(canvas)?
                };
                interleave(&mut fine, &p, (classes, lh, lw), (iy, ix), k);
            }
        }
        Ok(StridedProbabilities {
            probabilities: Tensor::from_vec(fine, (classes, ph, pw), &Device::Cpu)?,
            stride: pred_stride,
            scaled: image.size,
            original: image.original,
        })
    }

    /// Steps 1-7 at one test scale: the `(C, H, W)` probability volume at the original image
    /// size.
    pub fn predict_scale(
        &self,
        nets: &[&dyn ScoreNet],
        image: &RgbImage,
        scale: u32,
    ) -> SegResult<Tensor> {
        let _span = tracing::debug_span!("test_scale", scale, flip = self.flip).entered();
        let prepared = self.prepare(image, scale)?;
        self.strided_probabilities(nets, &prepared)?
            .upsample(self.interpolation)
    }

    /// The whole protocol: every test scale, fused, and the argmax labels.
    ///
    /// `nets` are averaged (model averaging); they must agree on classes and output stride.
    pub fn predict(&self, nets: &[&dyn ScoreNet], image: &RgbImage) -> SegResult<Prediction> {
        let (_, stride) = common_geometry(nets)?;
        self.validate(stride)?;
        let mut fused: Option<Tensor> = None;
        for &scale in &self.scales {
            let p = self.predict_scale(nets, image, scale)?;
            fused = Some(match fused {
                None => p,
                Some(acc) => fuse_step(self.fuse, acc, &p)?,
            });
        }
        let mut probabilities = fused.expect("at least one scale");
        if self.fuse == Fuse::Mean && self.scales.len() > 1 {
            probabilities = (probabilities / self.scales.len() as f64)?;
        }
        let labels = argmax_labels(&probabilities)?;
        let (width, height) = image.dimensions();
        Ok(Prediction {
            probabilities,
            labels,
            width,
            height,
        })
    }
}

impl TestProtocol {
    /// The labels of [`TestProtocol::predict`], bit for bit, without its full-resolution
    /// probabilities: each scale's probabilities are kept at the scaled size, and the resize to
    /// the image, the fusion and the argmax run on bands of `band_rows` image rows. Memory is
    /// the labels (2 bytes a pixel) and one band, not `classes x 4` bytes a pixel.
    pub fn predict_labels(
        &self,
        nets: &[&dyn ScoreNet],
        image: &RgbImage,
        band_rows: usize,
    ) -> SegResult<LabelPrediction> {
        let (classes, stride) = common_geometry(nets)?;
        self.validate(stride)?;
        if classes > usize::from(u16::MAX) + 1 {
            return Err(SegError::InvalidArgument(format!(
                "{classes} classes do not fit 16-bit labels"
            )));
        }
        let (width, height) = image.dimensions();
        let (w, h) = (width as usize, height as usize);
        // Per scale: (C planes at the scaled size, the resize from there to the image).
        let mut scaled = Vec::with_capacity(self.scales.len());
        for &scale in &self.scales {
            let _span = tracing::debug_span!("test_scale", scale, flip = self.flip).entered();
            let prepared = self.prepare(image, scale)?;
            let strided = self.strided_probabilities(nets, &prepared)?;
            let planes = strided
                .at_scaled_size()?
                .flatten_from(1)?
                .to_vec2::<f32>()?;
            let filter = self
                .interpolation
                .filter_for(strided.scaled, strided.original);
            let resizer = r38_data::Resizer::new(strided.scaled, strided.original, filter)?;
            scaled.push((planes, resizer));
        }
        let mut labels = Vec::with_capacity(w * h);
        for y0 in (0..h).step_by(band_rows.max(1)) {
            let rows = y0..(y0 + band_rows.max(1)).min(h);
            let mut fused: Option<Tensor> = None;
            for (planes, resizer) in &scaled {
                let mut band = Vec::with_capacity(planes.len() * rows.len() * w);
                for plane in planes {
                    band.extend(resizer.resize_f32_rows(plane, rows.clone())?);
                }
                let band = Tensor::from_vec(band, (planes.len(), rows.len(), w), &Device::Cpu)?;
                fused = Some(match fused {
                    None => band,
                    Some(acc) => fuse_step(self.fuse, acc, &band)?,
                });
            }
            let mut band = fused.expect("at least one scale");
            if self.fuse == Fuse::Mean && self.scales.len() > 1 {
                band = (band / self.scales.len() as f64)?;
            }
            labels.extend(argmax_labels(&band)?.into_iter().map(|l| l as u16));
        }
        Ok(LabelPrediction {
            labels,
            width,
            height,
            classes,
        })
    }
}

/// Rows per band of [`TestProtocol::predict_labels`]: about 32 MiB of probabilities a band.
pub fn label_band_rows(classes: usize, width: u32) -> usize {
    ((32 << 20) / (4 * classes.max(1) * width.max(1) as usize)).max(1)
}

/// The result of [`TestProtocol::predict_labels`]: labels without probabilities.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelPrediction {
    /// Class index per pixel, row-major.
    pub labels: Vec<u16>,
    /// Image width.
    pub width: u32,
    /// Image height.
    pub height: u32,
    /// The networks' class count.
    pub classes: usize,
}

impl LabelPrediction {
    /// The labels as an 8-bit label map; an error for labels above 255.
    pub fn label_map(&self) -> SegResult<r38_data::datasets::LabelMap> {
        label_map_of(&self.labels, self.width, self.height, self.classes)
    }
}

/// An 8-bit label map of `labels`; an error naming the class count for labels above 255.
fn label_map_of<L: Copy + TryInto<u8>>(
    labels: &[L],
    width: u32,
    height: u32,
    classes: usize,
) -> SegResult<r38_data::datasets::LabelMap> {
    let labels = labels
        .iter()
        .map(|&l| l.try_into())
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|_| {
            SegError::InvalidArgument(format!(
                "{classes} classes: labels above 255 do not fit an 8-bit label map"
            ))
        })?;
    r38_data::datasets::LabelMap::new(width, height, labels)
        .map_err(|e| SegError::InvalidArgument(e.to_string()))
}

/// An image after the test-scale resize and normalisation (steps 1-2).
#[derive(Debug, Clone, PartialEq)]
pub struct ScaledImage {
    /// The original `(width, height)`.
    pub original: (u32, u32),
    /// The scaled `(width, height)`.
    pub size: (u32, u32),
    /// The test scale it was resized for.
    pub scale: u32,
    /// Normalised values, planar RGB: `3 x height x width`, row-major.
    pub data: Vec<f32>,
}

/// The probabilities at the prediction stride, before upsampling (the authors' `net_preds`,
/// which `--save-predictions` writes together with the stride and sizes).
#[derive(Debug, Clone)]
pub struct StridedProbabilities {
    /// `(C, out_h · k, out_w · k)`, `f32`, on the CPU; covers the whole canvas.
    pub probabilities: Tensor,
    /// The prediction stride `s / k` in canvas pixels.
    pub stride: usize,
    /// The scaled image `(width, height)` (the part of the canvas that holds the image).
    pub scaled: (u32, u32),
    /// The original image `(width, height)`.
    pub original: (u32, u32),
}

impl StridedProbabilities {
    /// Step 7: bicubic upsampling by the stride (Pillow mode `F`), crop to the scaled image,
    /// resize to the original size with `interpolation` if it differs. Returns `(C, H, W)` at the
    /// original size.
    pub fn upsample(&self, interpolation: Interpolation) -> SegResult<Tensor> {
        let crop = self.at_scaled_size()?;
        if self.scaled == self.original {
            return Ok(crop);
        }
        let filter = interpolation.filter_for(self.scaled, self.original);
        Ok(resize_planes_f32(&crop, self.original, filter)?)
    }

    /// The first half of [`StridedProbabilities::upsample`]: `(C, h, w)` at the scaled image's
    /// size, before the resize to the original.
    pub fn at_scaled_size(&self) -> SegResult<Tensor> {
        let dims = self.probabilities.dims();
        if dims.len() != 3 {
            return Err(SegError::InvalidArgument(format!(
                "strided probabilities of shape {dims:?}, expected (C, h, w)"
            )));
        }
        let (ph, pw) = (dims[1], dims[2]);
        let (sw, sh) = self.scaled;
        let canvas = ((pw * self.stride) as u32, (ph * self.stride) as u32);
        if canvas.0 < sw || canvas.1 < sh {
            return Err(SegError::InvalidArgument(format!(
                "a {}x{} map at stride {} does not cover a {sw}x{sh} image",
                pw, ph, self.stride
            )));
        }
        let up = resize_planes_f32(&self.probabilities, canvas, Filter::Bicubic)?;
        Ok(up
            .narrow(1, 0, sh as usize)?
            .narrow(2, 0, sw as usize)?
            .contiguous()?)
    }
}

/// The result of [`TestProtocol::predict`].
#[derive(Debug, Clone)]
pub struct Prediction {
    /// Class probabilities `(C, height, width)`, `f32`, on the CPU (fused over scales: the mean
    /// sums to one per pixel, the max does not).
    pub probabilities: Tensor,
    /// The argmax class per pixel, row-major `height x width`.
    pub labels: Vec<u32>,
    /// Image width.
    pub width: u32,
    /// Image height.
    pub height: u32,
}

impl Prediction {
    /// The labels as an 8-bit label map (what `write_label_png` writes); an error for a
    /// network whose labels exceed 255.
    pub fn label_map(&self) -> SegResult<r38_data::datasets::LabelMap> {
        label_map_of(&self.labels, self.width, self.height, self.classes())
    }

    /// The number of classes.
    pub fn classes(&self) -> usize {
        self.probabilities.dims()[0]
    }

    /// The label at column `x`, row `y`.
    pub fn label(&self, x: u32, y: u32) -> u32 {
        self.labels[y as usize * self.width as usize + x as usize]
    }
}

/// The shift-and-stitch offsets `d_i = (s/k)/2 + i·(s/k) − s/2`, `i = 0..k`, for output stride
/// `s` and `k` test steps: the run with offsets `(dy, dx)` sees image pixel `(r + dy, c + dx)`
/// at canvas pixel `(r, c)`. `[0]` for `k = 1`, `[-2, 2]` for `k = 2` at stride 8.
pub fn shift_offsets(output_stride: usize, steps: usize) -> SegResult<Vec<isize>> {
    if steps == 0 || output_stride == 0 || !output_stride.is_multiple_of(steps) {
        return Err(SegError::Protocol(format!(
            "test steps {steps} must divide the output stride {output_stride}"
        )));
    }
    let ps = (output_stride / steps) as isize;
    let half = (output_stride / 2) as isize;
    Ok((0..steps as isize)
        .map(|i| ps / 2 + i * ps - half)
        .collect())
}

/// The canvas of one shift-and-stitch run: planar RGB `data` of an image of `size = (width,
/// height)` written into a zero canvas of `canvas = (width, height)` so that canvas pixel `(r,
/// c)` holds image pixel `(r + dy, c + dx)` — for `r < height`, `c < width` only, and zero where
/// the image pixel does not exist.
pub fn shifted_canvas(
    data: &[f32],
    size: (usize, usize),
    canvas: (usize, usize),
    dy: isize,
    dx: isize,
) -> Vec<f32> {
    let (w, h) = size;
    let (cw, ch) = canvas;
    assert!(w <= cw && h <= ch, "the image must fit the canvas");
    assert_eq!(data.len(), 3 * w * h, "planar RGB data");
    let mut out = vec![0f32; 3 * ch * cw];
    // canvas columns c with 0 <= c + dx < w, c < w
    let c0 = (-dx).max(0) as usize;
    let c1 = (w as isize - dx).clamp(0, w as isize) as usize;
    for plane in 0..3 {
        for r in 0..h {
            let sr = r as isize + dy;
            if sr < 0 || sr >= h as isize || c0 >= c1 {
                continue;
            }
            let src = plane * h * w + sr as usize * w;
            let dst = plane * ch * cw + r * cw;
            let s0 = (c0 as isize + dx) as usize;
            out[dst + c0..dst + c1].copy_from_slice(&data[src + s0..src + s0 + (c1 - c0)]);
        }
    }
    out
}

/// Mirrors every row of `planes` row-major `height x width` planes left-right.
pub fn flip_horizontal(data: &[f32], planes: usize, height: usize, width: usize) -> Vec<f32> {
    assert_eq!(data.len(), planes * height * width);
    let mut out = data.to_vec();
    out.chunks_exact_mut(width.max(1))
        .for_each(|row| row.reverse());
    out
}

/// Writes one run's `(C, lh, lw)` map into the fine `(C, lh·k, lw·k)` map at cells `(iy + k·i,
/// ix + k·j)`.
fn interleave(
    fine: &mut [f32],
    run: &[f32],
    (classes, lh, lw): (usize, usize, usize),
    (iy, ix): (usize, usize),
    k: usize,
) {
    let (ph, pw) = (lh * k, lw * k);
    for c in 0..classes {
        for i in 0..lh {
            let dst_row = c * ph * pw + (iy + k * i) * pw;
            let src_row = (c * lh + i) * lw;
            for j in 0..lw {
                fine[dst_row + ix + k * j] = run[src_row + j];
            }
        }
    }
}

fn fuse_step(fuse: Fuse, acc: Tensor, next: &Tensor) -> SegResult<Tensor> {
    if acc.dims() != next.dims() {
        return Err(SegError::InvalidArgument(format!(
            "cannot fuse probability volumes of shapes {:?} and {:?}",
            acc.dims(),
            next.dims()
        )));
    }
    Ok(match fuse {
        Fuse::Mean => (acc + next)?,
        Fuse::Max => acc.maximum(next)?,
    })
}

/// Fuses probability volumes of the same shape (one per scale) by mean or max.
pub fn fuse_probabilities(fuse: Fuse, maps: &[Tensor]) -> SegResult<Tensor> {
    let (first, rest) = maps
        .split_first()
        .ok_or_else(|| SegError::InvalidArgument("nothing to fuse".into()))?;
    let mut acc = first.clone();
    for m in rest {
        acc = fuse_step(fuse, acc, m)?;
    }
    if fuse == Fuse::Mean && maps.len() > 1 {
        acc = (acc / maps.len() as f64)?;
    }
    Ok(acc)
}

/// The argmax over the class axis of a `(C, H, W)` volume, row-major `H x W`; the first class
/// wins a tie (as numpy's `argmax`).
pub fn argmax_labels(probabilities: &Tensor) -> SegResult<Vec<u32>> {
    let dims = probabilities.dims();
    if dims.len() != 3 || dims[0] == 0 {
        return Err(SegError::InvalidArgument(format!(
            "probabilities of shape {dims:?}, expected (C, H, W) with C > 0"
        )));
    }
    let n = dims[1] * dims[2];
    let v = probabilities
        .to_dtype(candle_core::DType::F32)?
        .to_device(&Device::Cpu)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let mut best = v[..n].to_vec();
    let mut labels = vec![0u32; n];
    for c in 1..dims[0] {
        let plane = &v[c * n..(c + 1) * n];
        for ((b, l), &p) in best.iter_mut().zip(labels.iter_mut()).zip(plane) {
            if p > *b {
                *b = p;
                *l = c as u32;
            }
        }
    }
    Ok(labels)
}
