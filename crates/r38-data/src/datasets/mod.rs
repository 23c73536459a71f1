//! Segmentation datasets on their real on-disk layouts, and the ImageNet validation set.
//!
//! [`SegDataset::open`] reads a split of one of the datasets of [`DatasetKind`]; every dataset
//! implements [`SegmentationDataset`]: sample enumeration, image loading (with the crate's
//! [`ImageLoader`], i.e. as Pillow's `convert('RGB')`), label loading as **train ids**
//! (`0..C`, or [`IGNORE_LABEL`] = 255), and encoding of predicted train ids into the id space
//! that the dataset's evaluation server or scripts expect.
//!
//! # Label conventions
//!
//! | kind | label file | raw value → train id | train id → output | classes |
//! |---|---|---|---|---|
//! | [`Voc`](DatasetKind::Voc) | `SegmentationClass/{id}.png`, palette PNG | the palette **index**: `0..=20` kept, 255 (boundary) ignore | identity | 21, background included |
//! | [`VocAug`](DatasetKind::VocAug) | `SegmentationClassAug/{id}.png`, grey (or palette) | as VOC | identity | 21 |
//! | [`Cityscapes`](DatasetKind::Cityscapes) | `*_gtFine_labelIds.png`, grey | cityscapesScripts `labels.py`: the 19 evaluated labels → train ids `0..19`; `ignoreInEval` labels (train id 255) → 255 | train id → label id (255 → 0, `unlabeled`) | 19 |
//! | [`CityscapesTrainIds`](DatasetKind::CityscapesTrainIds) | `*_gtFine_labelTrainIds.png` (made by `createTrainIdLabelImgs`) | identity (`0..19`, 255) | train id → label id | 19 |
//! | [`Ade20k`](DatasetKind::Ade20k) | `annotations/*/ADE_*.png`, grey | 0 ("other") → 255, `k` → `k − 1` | `i` → `i + 1` (255 → 0) | 150 |
//! | [`PascalContext60`](DatasetKind::PascalContext60) | `SegmentationClassContext/{id}.png`, grey | identity, 0 = background is a class | identity | 60 |
//! | [`PascalContext59`](DatasetKind::PascalContext59) | same files | 0 (background) → 255, `k` → `k − 1` | identity (train ids `0..59`) | 59 |
//!
//! In every dataset the raw value 255 is accepted as ignore; any other value that is not
//! listed is an error ([`DatasetError::LabelValue`], naming the file, the value, its first
//! position and its pixel count).
//!
//! PASCAL-Context follows mmsegmentation: its converter writes the 59 most frequent classes as
//! `1..=59` and everything else as 0 (background). `PascalContextDataset` (60 classes) keeps
//! background as class 0; `PascalContextDataset59` uses `reduce_zero_label`, which drops
//! background to ignore and shifts the other classes down by one. There is no evaluation server
//! for Context, so the 59-class output is left in train ids (add 1 to get the converter's
//! values).
//!
//! Label PNGs are read as raw values with the `png` crate (see [`label_png`]): palette PNGs give
//! their indices, 8-bit grey PNGs their values; RGB label PNGs are refused, except for the VOC
//! kinds after [`SegDataset::with_rgb_labels`], which maps each colour of the VOC colour map
//! back to its index (an unknown colour is an error naming the file and the colour).
//!
//! # Layouts
//!
//! See [`DatasetKind`] for each dataset's files and split names, and [`ImageNetVal`] for the
//! ImageNet validation set.

pub mod ade20k;
pub mod cityscapes;
pub mod classes;
pub mod codec;
pub mod error;
pub mod imagenet_val;
pub mod label_png;
mod layout;
pub mod voc;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use image::RgbImage;

use crate::error::DataError;
use crate::image_io::ImageLoader;

pub use cityscapes::{cityscapes_label_id, cityscapes_train_id};
pub use classes::{
    voc_colormap, CityscapesLabel, ClassInfo, Palette, ADE20K_CLASSES, CITYSCAPES_CLASSES,
    CITYSCAPES_LABELS, FASHION_SCENES_CLASSES, PASCAL_CONTEXT_59_CLASSES,
    PASCAL_CONTEXT_60_CLASSES, VOC_CLASSES,
};
pub use codec::LabelCodec;
pub use error::{DatasetError, FileRole, Result};
pub use imagenet_val::{ImageNetVal, ImageNetValLayout};
pub use label_png::{
    decode_label_png, label_png_dimensions, label_png_dimensions_with, read_label_png,
    read_label_png_with, write_class_png, write_label_png, LabelMap, RgbLookup,
};
pub use layout::{parse_id_list, MAX_ID_BYTES, MAX_LIST_BYTES};

/// The label value that marks pixels to ignore in training and evaluation.
pub const IGNORE_LABEL: u8 = 255;

/// One sample of a segmentation dataset: its id and files.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SegSample {
    /// The sample id: the file stem, e.g. `2007_000033`, `frankfurt_000000_000294`,
    /// `ADE_val_00000001`.
    pub id: String,
    /// The input image.
    pub image_path: PathBuf,
    /// The label PNG, `None` for splits without labels (e.g. VOC `test`).
    pub label_path: Option<PathBuf>,
}

/// How thoroughly [`SegmentationDataset::validate`] checks the files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Validation {
    /// Cheap: every image and label file exists, its header decodes, and label and image sizes
    /// agree; only headers are read.
    Headers,
    /// Full: every image and label is decoded and every label value checked.
    Full,
}

/// The outcome of [`SegmentationDataset::validate`].
#[derive(Debug, Default)]
pub struct ValidationReport {
    /// Samples checked.
    pub samples: usize,
    /// Samples with a label file.
    pub labelled: usize,
    /// The problems found, in sample order.
    pub errors: Vec<DatasetError>,
}

impl ValidationReport {
    /// Whether no problem was found.
    pub fn is_ok(&self) -> bool {
        self.errors.is_empty()
    }

    /// `Ok(self)` without problems, else the first problem.
    pub fn into_result(mut self) -> Result<Self> {
        if self.errors.is_empty() {
            Ok(self)
        } else {
            Err(self.errors.remove(0))
        }
    }
}

/// A segmentation dataset: samples, images, labels as train ids, and the output id space.
///
/// Object safe, so evaluation code can take `&dyn SegmentationDataset`.
pub trait SegmentationDataset: Send + Sync {
    /// A short name for logs, e.g. `voc/val`.
    fn name(&self) -> &str;

    /// The classes, indexed by train id.
    fn classes(&self) -> &[ClassInfo];

    /// The number of classes `C` (train ids are `0..C`).
    fn num_classes(&self) -> usize {
        self.classes().len()
    }

    /// The train id of pixels to ignore: [`IGNORE_LABEL`].
    fn ignore_label(&self) -> u8 {
        IGNORE_LABEL
    }

    /// The number of samples.
    fn len(&self) -> usize;

    /// Whether there are no samples.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sample `index` (`0..len()`); [`DatasetError::IndexOutOfRange`] past the end.
    fn sample(&self, index: usize) -> Result<SegSample>;

    /// Decodes the sample's image into RGB.
    fn load_image(&self, sample: &SegSample) -> Result<RgbImage>;

    /// Reads the sample's label map as train ids (`0..C` or 255). Fails if the sample has no
    /// label, the file is missing or unreadable, or holds a value that is neither a class nor
    /// ignore. The size is not compared with the image; [`SegmentationDataset::load_pair`]
    /// does that.
    fn load_label(&self, sample: &SegSample) -> Result<LabelMap>;

    /// Encodes predicted train ids into the dataset's output id space (see the module docs).
    fn encode_prediction(&self, train_ids: &[u8]) -> Vec<u8>;

    /// A palette indexed by train id for colour PNGs of predictions or labels: the class
    /// colours, and for 255 the dataset's ignore colour (VOC: its whole colour map).
    fn palette(&self) -> Palette {
        let mut p = [[0u8; 3]; 256];
        for (entry, class) in p.iter_mut().zip(self.classes()) {
            *entry = class.color;
        }
        p
    }

    /// Reads the image and its label and checks that their sizes agree
    /// ([`DatasetError::SizeMismatch`] otherwise).
    fn load_pair(&self, sample: &SegSample) -> Result<(RgbImage, LabelMap)> {
        let image = self.load_image(sample)?;
        let label = self.load_label(sample)?;
        check_sizes(sample, image.dimensions(), label.dimensions())?;
        Ok((image, label))
    }

    /// The image's `(width, height)` from its header only.
    fn image_dimensions(&self, sample: &SegSample) -> Result<(u32, u32)> {
        ImageLoader::default()
            .dimensions(&sample.image_path)
            .map_err(|e| missing(e.into(), FileRole::Image, &sample.id))
    }

    /// The label's `(width, height)` from its header only, `None` without a label.
    fn label_dimensions(&self, sample: &SegSample) -> Result<Option<(u32, u32)>> {
        sample
            .label_path
            .as_ref()
            .map(|p| label_png_dimensions(p).map_err(|e| missing(e, FileRole::Label, &sample.id)))
            .transpose()
    }

    /// Checks every sample (see [`Validation`]) and collects the problems.
    fn validate(&self, level: Validation) -> ValidationReport {
        let mut report = ValidationReport::default();
        for index in 0..self.len() {
            let sample = match self.sample(index) {
                Ok(s) => s,
                Err(e) => {
                    report.errors.push(e);
                    continue;
                }
            };
            report.samples += 1;
            report.labelled += usize::from(sample.label_path.is_some());
            let checked = match (level, sample.label_path.is_some()) {
                (Validation::Headers, _) => self.image_dimensions(&sample).and_then(|image| {
                    match self.label_dimensions(&sample)? {
                        Some(label) => check_sizes(&sample, image, label),
                        None => Ok(()),
                    }
                }),
                (Validation::Full, true) => self.load_pair(&sample).map(drop),
                (Validation::Full, false) => self.load_image(&sample).map(drop),
            };
            if let Err(e) = checked {
                report.errors.push(e);
            }
        }
        report
    }
}

fn check_sizes(sample: &SegSample, image: (u32, u32), label: (u32, u32)) -> Result<()> {
    if image == label {
        return Ok(());
    }
    Err(DatasetError::SizeMismatch {
        label: sample.label_path.clone().unwrap_or_default(),
        image: sample.image_path.clone(),
        label_width: label.0,
        label_height: label.1,
        image_width: image.0,
        image_height: image.1,
    })
}

/// Turns "no such file" into [`DatasetError::MissingFile`] naming the sample.
fn missing(e: DatasetError, role: FileRole, id: &str) -> DatasetError {
    match e {
        DatasetError::Data(DataError::NotFound { path }) => DatasetError::MissingFile {
            path,
            role,
            id: id.into(),
        },
        other => other,
    }
}

/// The datasets [`SegDataset`] reads.
///
/// | kind | root (any of) | split → files |
/// |---|---|---|
/// | `Voc` | `VOC2012/`, `VOCdevkit/`, or the parent of `VOCdevkit/` | `ImageSets/Segmentation/{split}.txt` (`train`, `val`, `trainval`, `test`), `JPEGImages/{id}.jpg`, `SegmentationClass/{id}.png` |
/// | `VocAug` | as VOC | `ImageSets/Segmentation/{split}.txt` (e.g. `train_aug`, or mmsegmentation's `trainaug`; the authors' `train+` is 1464 VOC + 9118 SBD ids), `SegmentationClassAug/{id}.png` |
/// | `Cityscapes` | the directory with `leftImg8bit/` and `gtFine/`, or its parent with `cityscapes/` | `leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png`, `gtFine/{split}/{city}/{stem}_gtFine_labelIds.png` (`train`, `val`, `test`) |
/// | `CityscapesTrainIds` | as Cityscapes | labels `..._gtFine_labelTrainIds.png` |
/// | `Ade20k` | `ADEChallengeData2016/` or its parent | `images/{training,validation}/ADE_*.jpg`, `annotations/.../ADE_*.png` (`train` = `training`, `val` = `validation`) |
/// | `PascalContext60`, `PascalContext59` | `VOC2010/`, `VOCdevkit/` or its parent | `ImageSets/SegmentationContext/{train,val}.txt`, `JPEGImages/{id}.jpg`, `SegmentationClassContext/{id}.png` |
///
/// List files hold one sample per line; the id is the first token, or its file stem when it is
/// a path (so DeepLab-style `image label` path pairs work). Blank lines and `#` comments are
/// skipped. List-based datasets keep the list order; Cityscapes and ADE20K are enumerated in
/// sorted file order. Labels are attached when the label directory exists (never for a list
/// called `test`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DatasetKind {
    /// PASCAL VOC 2012 segmentation (21 classes).
    Voc,
    /// PASCAL VOC 2012 with the SBD-augmented labels `SegmentationClassAug` (21 classes).
    VocAug,
    /// Cityscapes fine annotations, label ids (19 classes).
    Cityscapes,
    /// Cityscapes fine annotations stored as train ids (19 classes).
    CityscapesTrainIds,
    /// ADE20K / MIT Scene Parsing (150 classes).
    Ade20k,
    /// PASCAL-Context with background (60 classes; mmsegmentation `PascalContextDataset`).
    PascalContext60,
    /// PASCAL-Context without background (59 classes; `PascalContextDataset59`).
    PascalContext59,
    /// The synthetic fashion scenes (11 classes; VOC layout with PNG images, see
    /// `r38_train::scenes`).
    FashionScenes,
}

impl DatasetKind {
    /// All kinds.
    pub const ALL: [DatasetKind; 8] = [
        DatasetKind::Voc,
        DatasetKind::VocAug,
        DatasetKind::Cityscapes,
        DatasetKind::CityscapesTrainIds,
        DatasetKind::Ade20k,
        DatasetKind::PascalContext60,
        DatasetKind::PascalContext59,
        DatasetKind::FashionScenes,
    ];

    /// The canonical name, accepted by [`str::parse`]: `voc`, `voc-aug`, `cityscapes`,
    /// `cityscapes-trainids`, `ade20k`, `context60`, `context59`.
    pub fn name(self) -> &'static str {
        match self {
            DatasetKind::Voc => "voc",
            DatasetKind::VocAug => "voc-aug",
            DatasetKind::Cityscapes => "cityscapes",
            DatasetKind::CityscapesTrainIds => "cityscapes-trainids",
            DatasetKind::Ade20k => "ade20k",
            DatasetKind::PascalContext60 => "context60",
            DatasetKind::PascalContext59 => "context59",
            DatasetKind::FashionScenes => "fashion-scenes",
        }
    }

    /// The canonical names, comma-separated.
    pub fn known_names() -> String {
        DatasetKind::ALL.map(DatasetKind::name).join(", ")
    }

    /// The classes, indexed by train id.
    pub fn classes(self) -> &'static [ClassInfo] {
        match self {
            DatasetKind::Voc | DatasetKind::VocAug => &VOC_CLASSES,
            DatasetKind::Cityscapes | DatasetKind::CityscapesTrainIds => &CITYSCAPES_CLASSES,
            DatasetKind::Ade20k => &ADE20K_CLASSES,
            DatasetKind::PascalContext60 => &PASCAL_CONTEXT_60_CLASSES,
            DatasetKind::PascalContext59 => &PASCAL_CONTEXT_59_CLASSES,
            DatasetKind::FashionScenes => &FASHION_SCENES_CLASSES,
        }
    }

    /// The label conventions (see the module docs).
    pub fn codec(self) -> LabelCodec {
        match self {
            DatasetKind::Voc | DatasetKind::VocAug => LabelCodec::identity(VOC_CLASSES.len()),
            DatasetKind::Cityscapes => cityscapes::label_ids_codec(),
            DatasetKind::CityscapesTrainIds => cityscapes::train_ids_codec(),
            DatasetKind::Ade20k => ade20k::codec(),
            DatasetKind::PascalContext60 => LabelCodec::identity(PASCAL_CONTEXT_60_CLASSES.len()),
            DatasetKind::PascalContext59 => {
                ade20k::reduce_zero_codec(PASCAL_CONTEXT_59_CLASSES.len(), |t| t, IGNORE_LABEL)
            }
            DatasetKind::FashionScenes => LabelCodec::identity(FASHION_SCENES_CLASSES.len()),
        }
    }

    /// The palette indexed by train id: the VOC colour map for the VOC kinds (255 =
    /// `[224, 224, 192]`), else the class colours with black elsewhere.
    pub fn palette(self) -> Palette {
        match self {
            DatasetKind::Voc | DatasetKind::VocAug => voc_colormap(),
            other => {
                let mut p = [[0u8; 3]; 256];
                for (entry, class) in p.iter_mut().zip(other.classes()) {
                    *entry = class.color;
                }
                p
            }
        }
    }

    fn voc_layout(self) -> Option<&'static voc::VocLayout> {
        match self {
            DatasetKind::Voc => Some(&voc::VOC),
            DatasetKind::VocAug => Some(&voc::VOC_AUG),
            DatasetKind::PascalContext60 | DatasetKind::PascalContext59 => Some(&voc::CONTEXT),
            DatasetKind::FashionScenes => Some(&voc::FASHION_SCENES),
            _ => None,
        }
    }
}

impl fmt::Display for DatasetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DatasetKind {
    type Err = DatasetError;

    /// Parses a name, case-insensitively and with `_` same as `-`: the canonical names and
    /// `voc2012`, `pascal-voc`, `voc-sbd`, `vocaug`, `sbd`, `ade`, `scene-parsing`,
    /// `pascal-context`, `pascal-context-60`, `context-60`, `pascal-context-59`, `context-59`.
    fn from_str(s: &str) -> Result<Self> {
        let n = s.trim().to_ascii_lowercase().replace('_', "-");
        Ok(match n.as_str() {
            "voc" | "voc2012" | "pascal-voc" => DatasetKind::Voc,
            "voc-aug" | "vocaug" | "voc-sbd" | "sbd" => DatasetKind::VocAug,
            "cityscapes" => DatasetKind::Cityscapes,
            "cityscapes-trainids" => DatasetKind::CityscapesTrainIds,
            "ade20k" | "ade" | "scene-parsing" => DatasetKind::Ade20k,
            "context60" | "context-60" | "pascal-context" | "pascal-context-60" => {
                DatasetKind::PascalContext60
            }
            "context59" | "context-59" | "pascal-context-59" => DatasetKind::PascalContext59,
            "fashion-scenes" | "scenes" => DatasetKind::FashionScenes,
            _ => return Err(DatasetError::UnknownDataset(s.into())),
        })
    }
}

/// A split of one of the datasets of [`DatasetKind`] on disk.
#[derive(Debug, Clone)]
pub struct SegDataset {
    kind: DatasetKind,
    root: PathBuf,
    split: String,
    name: String,
    samples: Vec<SegSample>,
    codec: LabelCodec,
    loader: ImageLoader,
    rgb_lookup: Option<RgbLookup>,
}

impl SegDataset {
    /// Opens split `split` of a dataset under `root` (see [`DatasetKind`] for the layouts).
    /// Only lists and directories are read; files are checked when loaded or by
    /// [`SegmentationDataset::validate`].
    pub fn open(kind: DatasetKind, root: impl AsRef<Path>, split: &str) -> Result<Self> {
        let root = root.as_ref();
        layout::check_split_name(root, split)?;
        let (root, samples) = match kind {
            DatasetKind::Cityscapes => cityscapes::enumerate(root, split, "_gtFine_labelIds.png")?,
            DatasetKind::CityscapesTrainIds => {
                cityscapes::enumerate(root, split, "_gtFine_labelTrainIds.png")?
            }
            DatasetKind::Ade20k => ade20k::enumerate(root, split)?,
            _ => {
                let layout = kind.voc_layout().expect("VOC-style kinds");
                let root = layout.resolve(root)?;
                let list = layout.list_path(&root, split);
                let samples = layout.samples(&root, &list, split)?;
                (root, samples)
            }
        };
        Ok(Self::from_parts(kind, root, split.into(), samples))
    }

    /// Opens a VOC-style dataset (`Voc`, `VocAug`, `PascalContext60/59`) with the sample ids
    /// taken from `list_file` instead of a named split (e.g. the authors' `train+` list); the
    /// split name is the list's file stem.
    pub fn open_list(
        kind: DatasetKind,
        root: impl AsRef<Path>,
        list_file: impl AsRef<Path>,
    ) -> Result<Self> {
        let list = list_file.as_ref();
        let layout = kind.voc_layout().ok_or_else(|| {
            DatasetError::InvalidArgument(format!(
                "{kind}: list files are supported for voc, voc-aug, context60 and context59 only"
            ))
        })?;
        let root = layout.resolve(root.as_ref())?;
        let split = list
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let samples = layout.samples(&root, list, &split)?;
        Ok(Self::from_parts(kind, root, split, samples))
    }

    fn from_parts(
        kind: DatasetKind,
        root: PathBuf,
        split: String,
        samples: Vec<SegSample>,
    ) -> Self {
        SegDataset {
            kind,
            root,
            name: format!("{kind}/{split}"),
            split,
            samples,
            codec: kind.codec(),
            loader: ImageLoader::default(),
            rgb_lookup: None,
        }
    }

    /// Uses `loader` to decode images (pixel limit, 16-bit grey policy).
    pub fn with_loader(mut self, loader: ImageLoader) -> Self {
        self.loader = loader;
        self
    }

    /// VOC kinds only: also accept RGB label PNGs (e.g. labels re-saved without their
    /// palette), mapping each colour of the VOC colour map (`0..=20`, and `[224, 224, 192]`
    /// for 255) to its index. Any other colour is [`DatasetError::UnknownColor`]. Other kinds
    /// fail with [`DatasetError::InvalidArgument`] (their palettes are not one-to-one).
    pub fn with_rgb_labels(mut self, enable: bool) -> Result<Self> {
        if !enable {
            self.rgb_lookup = None;
            return Ok(self);
        }
        if !matches!(self.kind, DatasetKind::Voc | DatasetKind::VocAug) {
            return Err(DatasetError::InvalidArgument(format!(
                "{}: RGB label PNGs are supported for the VOC datasets only",
                self.kind
            )));
        }
        let map = voc_colormap();
        let pairs: Vec<([u8; 3], u8)> = (0..VOC_CLASSES.len() as u8)
            .chain([IGNORE_LABEL])
            .map(|i| (map[usize::from(i)], i))
            .collect();
        self.rgb_lookup = Some(RgbLookup::new("PASCAL VOC", &pairs)?);
        Ok(self)
    }

    /// The dataset kind.
    pub fn kind(&self) -> DatasetKind {
        self.kind
    }

    /// The resolved root (the directory holding `JPEGImages/`, `leftImg8bit/` or `images/`).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The split name (or the list file's stem).
    pub fn split(&self) -> &str {
        &self.split
    }

    /// All samples in order.
    pub fn samples(&self) -> &[SegSample] {
        &self.samples
    }

    /// The label conventions in force.
    pub fn codec(&self) -> &LabelCodec {
        &self.codec
    }

    /// The image loader in force.
    pub fn loader(&self) -> &ImageLoader {
        &self.loader
    }
}

impl SegmentationDataset for SegDataset {
    fn name(&self) -> &str {
        &self.name
    }

    fn classes(&self) -> &[ClassInfo] {
        self.kind.classes()
    }

    fn len(&self) -> usize {
        self.samples.len()
    }

    fn sample(&self, index: usize) -> Result<SegSample> {
        self.samples
            .get(index)
            .cloned()
            .ok_or(DatasetError::IndexOutOfRange {
                index,
                len: self.samples.len(),
            })
    }

    fn load_image(&self, sample: &SegSample) -> Result<RgbImage> {
        self.loader
            .load_rgb8(&sample.image_path)
            .map_err(|e| missing(e.into(), FileRole::Image, &sample.id))
    }

    fn load_label(&self, sample: &SegSample) -> Result<LabelMap> {
        let path = sample.label_path.as_ref().ok_or_else(|| {
            DatasetError::InvalidArgument(format!(
                "sample {:?} of {} has no label file",
                sample.id, self.name
            ))
        })?;
        let raw = read_label_png_with(path, self.rgb_lookup.as_ref())
            .map_err(|e| missing(e, FileRole::Label, &sample.id))?;
        self.codec.decode_map(raw, path)
    }

    fn encode_prediction(&self, train_ids: &[u8]) -> Vec<u8> {
        self.codec.encode_slice(train_ids)
    }

    fn palette(&self) -> Palette {
        self.kind.palette()
    }

    fn image_dimensions(&self, sample: &SegSample) -> Result<(u32, u32)> {
        self.loader
            .dimensions(&sample.image_path)
            .map_err(|e| missing(e.into(), FileRole::Image, &sample.id))
    }

    fn label_dimensions(&self, sample: &SegSample) -> Result<Option<(u32, u32)>> {
        let rgb = self.rgb_lookup.is_some();
        sample
            .label_path
            .as_ref()
            .map(|p| {
                label_png_dimensions_with(p, rgb)
                    .map_err(|e| missing(e, FileRole::Label, &sample.id))
            })
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_names_round_trip() {
        for kind in DatasetKind::ALL {
            assert_eq!(kind.name().parse::<DatasetKind>().unwrap(), kind);
            assert_eq!(kind.classes().len(), kind.codec().num_classes());
        }
        assert_eq!(
            "Pascal_Context_59".parse::<DatasetKind>().unwrap(),
            DatasetKind::PascalContext59
        );
        let err = "coco".parse::<DatasetKind>().unwrap_err().to_string();
        assert!(err.contains("coco") && err.contains("cityscapes"), "{err}");
    }

    #[test]
    fn class_tables() {
        assert_eq!(VOC_CLASSES.len(), 21);
        assert_eq!(CITYSCAPES_CLASSES.len(), 19);
        assert_eq!(ADE20K_CLASSES.len(), 150);
        assert_eq!(PASCAL_CONTEXT_60_CLASSES.len(), 60);
        assert_eq!(
            PASCAL_CONTEXT_59_CLASSES[..],
            PASCAL_CONTEXT_60_CLASSES[1..]
        );
        let voc = voc_colormap();
        for (i, c) in VOC_CLASSES.iter().enumerate() {
            assert_eq!(c.color, voc[i], "{}", c.name);
        }
        assert_eq!(voc[255], [224, 224, 192]);
        assert_eq!(ADE20K_CLASSES[0].name, "wall");
        assert_eq!(ADE20K_CLASSES[149].name, "flag");
    }

    #[test]
    fn cityscapes_ids() {
        assert_eq!(cityscapes_train_id(7), Some(0));
        assert_eq!(cityscapes_train_id(26), Some(13));
        assert_eq!(cityscapes_train_id(33), Some(18));
        assert_eq!(cityscapes_train_id(0), Some(255));
        assert_eq!(cityscapes_train_id(9), Some(255));
        assert_eq!(cityscapes_train_id(34), None);
        for t in 0..19u8 {
            let id = cityscapes_label_id(t).unwrap();
            assert_eq!(cityscapes_train_id(id), Some(t));
        }
        assert_eq!(cityscapes_label_id(19), None);
        let c = DatasetKind::Cityscapes.codec();
        assert_eq!(c.encode(255), 0);
        assert_eq!(c.valid_values(), "0..=33, 255");
    }
}
