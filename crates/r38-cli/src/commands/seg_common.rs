//! What `r38 segment` and `r38 eval` share: the test protocol flags, the model ensemble and
//! the output files.

pub use crate::network::check_overwrite;
use crate::network::{load_with, write_atomically, OverrideArgs};
use anyhow::{bail, Context, Result};
use r38::data::datasets::{DatasetKind, Palette};
use r38::data::image::{Rgb, RgbImage};
use r38::seg::crf::{BilateralKernel, GaussianKernel};
use r38::seg::{CanvasLimit, CrfConfig, Fuse, Prediction, ScoreNet, TestProtocol};
use r38::{HeadChoice, Pretrained};
use std::path::{Path, PathBuf};

/// The segmentation networks to run; several are averaged (the paper's model averaging).
#[derive(Debug, Clone, clap::Args)]
pub struct EnsembleArgs {
    /// Weight file(s); give several to average their probabilities.
    #[arg(long = "weights", required = true)]
    pub weights: Vec<PathBuf>,
    #[command(flatten)]
    pub overrides: OverrideArgs,
}

impl EnsembleArgs {
    pub fn load(&self) -> Result<Vec<Pretrained>> {
        let mut nets: Vec<Pretrained> = Vec::new();
        for w in &self.weights {
            let net = load_with(w, &self.overrides, HeadChoice::Segmentation)?;
            if let Some(first) = nets.first() {
                if ScoreNet::classes(first) != ScoreNet::classes(&net) {
                    bail!(
                        "{}: {} classes, but {} has {}; averaged models must share their classes",
                        w.display(),
                        ScoreNet::classes(&net),
                        self.weights[0].display(),
                        ScoreNet::classes(first)
                    );
                }
            }
            nets.push(net);
        }
        Ok(nets)
    }
}

/// Refuse a dataset whose classes are not the network's.
pub fn check_classes(net: &Pretrained, dataset: DatasetKind) -> Result<()> {
    let (have, want) = (ScoreNet::classes(net), dataset.classes().len());
    if have != want {
        bail!(
            "{}: the network has {have} classes, but --dataset {} has {want}",
            net.file().path.display(),
            dataset.name()
        );
    }
    Ok(())
}

/// The test-time protocol; unset flags take the dataset's published protocol.
#[derive(Debug, Clone, clap::Args)]
pub struct ProtocolArgs {
    /// Test scale: the longer side is resized to it (VOC/ADE20K: 500; Cityscapes: 2048).
    #[arg(long)]
    pub scale: Option<u32>,
    /// Several test scales, comma separated, fused with --fuse.
    #[arg(long, value_delimiter = ',')]
    pub scales: Option<Vec<u32>>,
    /// How several scales are fused: mean or max.
    #[arg(long, value_parser = parse_fuse)]
    pub fuse: Option<Fuse>,
    /// Average with the horizontally flipped input (on by default for the released protocols).
    #[arg(long, overrides_with = "no_flip")]
    pub flip: bool,
    /// Do not average with the flipped input.
    #[arg(long)]
    pub no_flip: bool,
    /// Shift-and-stitch steps per axis (ADE20K uses 2).
    #[arg(long)]
    pub test_steps: Option<u32>,
    /// Largest canvas (pixels) for one forward pass; larger canvases run as overlapping tiles.
    /// `auto` (the default) runs the authors' single pass when it fits in the memory available
    /// now and tiles otherwise; `none` always runs one pass.
    #[arg(long, default_value = "auto", value_parser = parse_max_canvas)]
    pub max_canvas: MaxCanvas,
}

/// `--max-canvas`: a pixel budget, the memory-derived `auto`, or `none`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxCanvas {
    Auto,
    Unlimited,
    Pixels(u64),
}

fn parse_max_canvas(s: &str) -> std::result::Result<MaxCanvas, String> {
    match s {
        "auto" => Ok(MaxCanvas::Auto),
        "none" => Ok(MaxCanvas::Unlimited),
        n => n
            .parse()
            .map(MaxCanvas::Pixels)
            .map_err(|_| format!("`{n}` is not a pixel count, `auto` or `none`")),
    }
}

fn parse_fuse(s: &str) -> std::result::Result<Fuse, String> {
    match s {
        "mean" => Ok(Fuse::Mean),
        "max" => Ok(Fuse::Max),
        other => Err(format!("unknown fusion `{other}` (mean or max)")),
    }
}

impl ProtocolArgs {
    /// The dataset's published protocol, then what the (first) file records, then the flags.
    pub fn protocol(&self, dataset: Option<DatasetKind>, net: &Pretrained) -> TestProtocol {
        let mut p = r38::evaluation::dataset_protocol(dataset.unwrap_or(DatasetKind::Voc), net);
        if let Some(s) = self.scale {
            p.scales = vec![s];
        }
        if let Some(s) = &self.scales {
            p.scales = s.clone();
        }
        if let Some(f) = self.fuse {
            p.fuse = f;
        }
        if self.flip {
            p.flip = true;
        }
        if self.no_flip {
            p.flip = false;
        }
        if let Some(k) = self.test_steps {
            p.test_steps = k;
        }
        p.max_canvas = match self.max_canvas {
            MaxCanvas::Pixels(m) => Some(CanvasLimit::Pixels(m)),
            MaxCanvas::Unlimited => None,
            // Tiles only where one pass would not fit: the authors' protocol whenever possible.
            MaxCanvas::Auto => p.max_canvas,
        };
        p
    }
}

/// Dense CRF post-processing (the paper's VOC test submission); off unless --crf is given.
/// The parameter defaults are [`CrfConfig::default`] (pydensecrf's README values).
#[derive(Debug, Clone, clap::Args)]
pub struct CrfArgs {
    /// Refine the full-resolution probabilities with a fully connected CRF before the argmax
    /// (saved probabilities are then the CRF's marginals).
    #[arg(long)]
    pub crf: bool,
    /// CRF mean-field iterations.
    #[arg(long, requires = "crf", default_value_t = CrfConfig::default().iterations)]
    pub crf_iterations: usize,
    /// CRF smoothness kernel: position standard deviation (pixels).
    #[arg(long, requires = "crf", default_value_t = CrfConfig::default().gaussian.sxy)]
    pub crf_gaussian_sxy: f32,
    /// CRF smoothness kernel: Potts weight (0 turns it off).
    #[arg(long, requires = "crf", default_value_t = CrfConfig::default().gaussian.compat)]
    pub crf_gaussian_compat: f32,
    /// CRF appearance kernel: position standard deviation (pixels).
    #[arg(long, requires = "crf", default_value_t = CrfConfig::default().bilateral.sxy)]
    pub crf_bilateral_sxy: f32,
    /// CRF appearance kernel: colour standard deviation (8-bit RGB levels).
    #[arg(long, requires = "crf", default_value_t = CrfConfig::default().bilateral.srgb)]
    pub crf_bilateral_srgb: f32,
    /// CRF appearance kernel: Potts weight (0 turns it off).
    #[arg(long, requires = "crf", default_value_t = CrfConfig::default().bilateral.compat)]
    pub crf_bilateral_compat: f32,
}

impl CrfArgs {
    /// The CRF settings, or `None` without --crf; invalid values are refused up front.
    pub fn config(&self) -> Result<Option<CrfConfig>> {
        if !self.crf {
            return Ok(None);
        }
        let c = CrfConfig {
            iterations: self.crf_iterations,
            gaussian: GaussianKernel {
                sxy: self.crf_gaussian_sxy,
                compat: self.crf_gaussian_compat,
            },
            bilateral: BilateralKernel {
                sxy: self.crf_bilateral_sxy,
                srgb: self.crf_bilateral_srgb,
                compat: self.crf_bilateral_compat,
            },
            ..CrfConfig::default()
        };
        c.validate()?;
        Ok(Some(c))
    }
}

/// Replace the prediction's probabilities by the CRF's marginals and its labels by their
/// argmax; without a CRF, leave it as it is.
pub fn apply_crf(
    crf: Option<&CrfConfig>,
    image: &RgbImage,
    prediction: &mut Prediction,
) -> Result<()> {
    if let Some(config) = crf {
        r38::seg::crf::refine_prediction(config, image, prediction)?;
    }
    Ok(())
}

pub fn as_score_nets(nets: &[Pretrained]) -> Vec<&dyn ScoreNet> {
    nets.iter().map(|n| n as &dyn ScoreNet).collect()
}

/// A colour overlay: half image, half class colour.
pub fn overlay(image: &RgbImage, labels: &[u8], palette: &Palette) -> RgbImage {
    let mut out = image.clone();
    overlay_in_place(&mut out, labels, palette);
    out
}

/// [`overlay`] into the image itself (no second image of its size).
pub fn overlay_in_place(image: &mut RgbImage, labels: &[u8], palette: &Palette) {
    for (pixel, &label) in image.pixels_mut().zip(labels) {
        let c = palette[label as usize];
        let Rgb(p) = *pixel;
        *pixel = Rgb([0, 1, 2].map(|i| ((p[i] as u16 + c[i] as u16) / 2) as u8));
    }
}

pub fn save_png(path: &Path, image: &RgbImage) -> Result<()> {
    write_atomically(path, |tmp| {
        image
            .save_with_format(tmp, r38::data::image::ImageFormat::Png)
            .with_context(|| format!("{}: cannot write", path.display()))
    })
}
