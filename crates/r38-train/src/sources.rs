//! Training and validation [`Source`]s for the supported datasets, and the validation
//! metrics (mIoU at the score resolution, top-1).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{bail, Context, Result};
use candle_core::{Device, Tensor, D};
use candle_nn::ModuleT;
use r38_data::image::RgbImage;
use r38_data::{ImageLoader, Normalization, SegmentationDataset};
use r38_seg::ConfusionMatrix;

use crate::augment::{ClsAugment, ClsEval, Planar, SegAugment};
use crate::fashion_mnist::FashionMnist;
use crate::loader::{collate, Example, Source, Target};
use crate::loss::subsampled_size;
use crate::rng::Rng;
use crate::scenes::Scenes;

fn planar(img: &RgbImage, norm: &Normalization) -> Planar {
    let (w, h) = img.dimensions();
    Planar {
        width: w as usize,
        height: h as usize,
        data: norm.to_chw(img),
    }
}

fn seg_example(
    img: &RgbImage,
    labels: Vec<u8>,
    augment: &Option<SegAugment>,
    norm: &Normalization,
    rng: &mut Rng,
) -> Result<Example> {
    match augment {
        Some(a) => {
            let ex = a.apply(img, &labels, rng)?;
            Ok(Example {
                image: ex.image,
                target: Target::Mask {
                    labels: ex.labels,
                    height: ex.label_size,
                    width: ex.label_size,
                },
            })
        }
        None => {
            let (w, h) = img.dimensions();
            Ok(Example {
                image: planar(img, norm),
                target: Target::Mask {
                    labels,
                    height: h as usize,
                    width: w as usize,
                },
            })
        }
    }
}

/// Fashion-MNIST for classification: grey 28x28 repeated into 3 channels.
pub struct FashionCls {
    /// The split.
    pub data: Arc<FashionMnist>,
    /// Training augmentation, or `None` for the validation transform.
    pub augment: Option<ClsAugment>,
    /// Validation transform.
    pub eval: ClsEval,
}

impl FashionCls {
    /// Image `i` as RGB.
    pub fn rgb(&self, i: usize) -> RgbImage {
        let g = self.data.image(i);
        let raw: Vec<u8> = g.iter().flat_map(|&v| [v, v, v]).collect();
        RgbImage::from_raw(self.data.width as u32, self.data.height as u32, raw)
            .expect("image size")
    }
}

impl Source for FashionCls {
    fn len(&self) -> usize {
        self.data.len
    }

    fn example(&self, index: usize, rng: &mut Rng) -> Result<Example> {
        let img = self.rgb(index);
        let image = match &self.augment {
            Some(a) => a.apply(&img, rng)?,
            None => self.eval.apply(&img)?,
        };
        Ok(Example {
            image,
            target: Target::Class(u32::from(self.data.labels[index])),
        })
    }
}

/// The fashion scenes for segmentation.
pub struct SceneSeg {
    /// The scenes.
    pub scenes: Scenes,
    /// Training augmentation, or `None`: the whole scene at full label resolution.
    pub augment: Option<SegAugment>,
    /// Normalisation of un-augmented samples.
    pub norm: Normalization,
}

impl Source for SceneSeg {
    fn len(&self) -> usize {
        self.scenes.len()
    }

    fn example(&self, index: usize, rng: &mut Rng) -> Result<Example> {
        let (img, labels) = self.scenes.render(index)?;
        seg_example(&img, labels, &self.augment, &self.norm, rng)
    }
}

/// A segmentation dataset of `r38-data` (VOC, Cityscapes, ADE20K).
pub struct DatasetSeg {
    /// The dataset.
    pub dataset: Arc<dyn SegmentationDataset>,
    /// Training augmentation, or `None` for whole images.
    pub augment: Option<SegAugment>,
    /// Normalisation of un-augmented samples.
    pub norm: Normalization,
}

impl Source for DatasetSeg {
    fn len(&self) -> usize {
        self.dataset.len()
    }

    fn example(&self, index: usize, rng: &mut Rng) -> Result<Example> {
        let sample = self.dataset.sample(index)?;
        let (img, label) = self.dataset.load_pair(&sample)?;
        seg_example(&img, label.data, &self.augment, &self.norm, rng)
    }
}

/// An image-folder classification set: `root/<class>/<image>`, classes in name order.
pub struct ImageFolder {
    /// `(path, class)` pairs, sorted.
    pub samples: Vec<(PathBuf, u32)>,
    /// Class directory names.
    pub classes: Vec<String>,
    /// Training augmentation, or `None` for the validation transform.
    pub augment: Option<ClsAugment>,
    /// Validation transform.
    pub eval: ClsEval,
    loader: ImageLoader,
}

impl ImageFolder {
    /// Scans `root`.
    pub fn open(root: &Path, augment: Option<ClsAugment>, eval: ClsEval) -> Result<Self> {
        let mut classes: Vec<String> = std::fs::read_dir(root)
            .with_context(|| format!("cannot list {}", root.display()))?
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        classes.sort();
        let mut samples = Vec::new();
        for (c, name) in classes.iter().enumerate() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(root.join(name))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file())
                .collect();
            files.sort();
            samples.extend(files.into_iter().map(|p| (p, c as u32)));
        }
        if samples.is_empty() {
            bail!("{}: no images under class folders", root.display());
        }
        Ok(Self {
            samples,
            classes,
            augment,
            eval,
            loader: ImageLoader::new(),
        })
    }
}

impl Source for ImageFolder {
    fn len(&self) -> usize {
        self.samples.len()
    }

    fn example(&self, index: usize, rng: &mut Rng) -> Result<Example> {
        let (path, class) = &self.samples[index];
        let img = self.loader.load_rgb8(path)?;
        let image = match &self.augment {
            Some(a) => a.apply(&img, rng)?,
            None => self.eval.apply(&img)?,
        };
        Ok(Example {
            image,
            target: Target::Class(*class),
        })
    }
}

/// Top-1 accuracy of `net` (eval mode) over the first `limit` samples of `source`.
pub fn top1(
    net: &dyn ModuleT,
    source: &dyn Source,
    device: &Device,
    batch: usize,
    limit: Option<usize>,
) -> Result<f64> {
    let n = limit.unwrap_or(usize::MAX).min(source.len());
    let mut correct = 0usize;
    let mut rng = Rng::new(0);
    for start in (0..n).step_by(batch.max(1)) {
        let exs = (start..(start + batch).min(n))
            .map(|i| source.example(i, &mut rng))
            .collect::<Result<Vec<_>>>()?;
        let b = collate(start, &exs)?;
        let logits = net.forward_t(&b.images.to_device(device)?, false)?;
        let pred = logits
            .argmax(D::Minus1)?
            .to_device(&Device::Cpu)?
            .to_vec1::<u32>()?;
        let gt = b.targets.to_vec1::<u32>()?;
        correct += pred.iter().zip(&gt).filter(|(p, g)| p == g).count();
    }
    Ok(correct as f64 / n.max(1) as f64)
}

/// Confusion matrix of `net` (eval mode) over the first `limit` samples of an un-augmented
/// segmentation `source`, at the score resolution: the labels are sub-sampled at `stride`
/// (offset `stride / 2`), the training loss's view.
pub fn seg_confusion(
    net: &dyn ModuleT,
    source: &dyn Source,
    device: &Device,
    classes: usize,
    stride: usize,
    limit: Option<usize>,
) -> Result<ConfusionMatrix> {
    let n = limit.unwrap_or(usize::MAX).min(source.len());
    let mut cm = ConfusionMatrix::new(classes, Some(255));
    let mut rng = Rng::new(0);
    for i in 0..n {
        let ex = source.example(i, &mut rng)?;
        let Target::Mask {
            labels,
            height,
            width,
        } = &ex.target
        else {
            bail!("not a segmentation source");
        };
        let x = Tensor::from_vec(
            ex.image.data.clone(),
            (1, 3, ex.image.height, ex.image.width),
            device,
        )?;
        let scores = net.forward_t(&x, false)?;
        let pred = scores
            .argmax(1)?
            .squeeze(0)?
            .to_device(&Device::Cpu)?
            .to_vec2::<u32>()?;
        let (sh, sw) = (
            subsampled_size(*height, stride),
            subsampled_size(*width, stride),
        );
        let (h, w) = (sh.min(pred.len()), sw.min(pred.first().map_or(0, Vec::len)));
        let off = stride / 2;
        let mut gt = Vec::with_capacity(h * w);
        let mut pr = Vec::with_capacity(h * w);
        for (y, row) in pred.iter().enumerate().take(h) {
            for (x, &p) in row.iter().enumerate().take(w) {
                gt.push(labels[(off + y * stride) * width + off + x * stride]);
                pr.push(p);
            }
        }
        cm.accumulate(&gt, &pr)?;
    }
    Ok(cm)
}

/// Held-out evaluation the way a user meets the model: every scene through the segmentation
/// test protocol ([`r38_seg::TestProtocol`]: probabilities upsampled to the full canvas), against
/// every full-resolution label (ignore 255 excluded).
pub fn scene_confusion_full_resolution(
    net: &r38_seg::SegmentationNet,
    scenes: &Scenes,
    protocol: &r38_seg::TestProtocol,
    limit: Option<usize>,
) -> Result<ConfusionMatrix> {
    let n = limit.unwrap_or(usize::MAX).min(scenes.len());
    let mut cm = ConfusionMatrix::new(scenes.num_classes(), Some(255));
    for i in 0..n {
        let (image, labels) = scenes.render(i)?;
        let prediction = protocol.predict(&[net as &dyn r38_seg::ScoreNet], &image)?;
        cm.accumulate(&labels, &prediction.labels)?;
    }
    Ok(cm)
}
