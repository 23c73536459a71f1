//! One-call loading: a weight file (any format, or an `hf://` name) to a ready network that
//! knows its preprocessing, class names, palette and test protocol, as timm's pretrained
//! configs and torchvision's weight enums do.

use crate::error::{Error, Result};
use candle_core::{DType, Device, Tensor, D};
use r38_data::datasets::{voc_colormap, DatasetKind, Palette};
use r38_data::image::RgbImage;
use r38_data::{imagenet_class, ClassifyTransform, Interpolation, Normalization};
use r38_model::lineage::is_head_tensor;
use r38_model::weights::{self, WeightFile};
use r38_model::{
    build_strict, Backbone, CamClassifier, Classifier, HeadKind, ModelMetadata, Overrides,
    PoolPadding,
};
use r38_ops::engine::{with_engine, with_kept_kernels, Engine};
use r38_seg::cam::{infer_cams, CamProtocol, Cams};
use r38_seg::{HeadConfig, Prediction, ScoreNet, SegmentationNet, TestProtocol};
use std::path::Path;

/// Which head to build; [`HeadChoice::File`] takes the file's own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum HeadChoice {
    /// Whatever head the file holds.
    #[default]
    File,
    /// The classifier: logits `(N, C)`; for psa's `fc8` head, its image-level scores.
    Classifier,
    /// The segmentation head: score maps `(N, C, h, w)`.
    Segmentation,
    /// No head: the backbone's `relu7` features (a file's head tensors are left unused).
    Features,
}

/// How to load a file; every field may be left to the file.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Where the network runs.
    pub device: Device,
    /// The convolution path of every pass this model runs (default: the fast CPU engine).
    pub engine: Engine,
    /// The head to build.
    pub head: HeadChoice,
    /// Architecture, output stride and pooling instead of the file's.
    pub overrides: Overrides,
    /// The weights' and activations' float type: `F32` (default), or `F16` / `BF16` to halve
    /// memory and use a GPU's tensor cores. Inputs are converted to it and outputs back to
    /// `f32`. The fast CPU engine is f32-only: on the CPU, `F16` runs candle's generic kernels
    /// (slowly) and `BF16` is refused.
    pub dtype: DType,
    /// Keep each 3x3 convolution's Winograd kernel transforms from its first pass on (fast
    /// engine), for every later pass, scale, flip and image: about 14% off a 224x224 pass and
    /// 18% off a 504x504 one, and Winograd on maps down to 14x14, for memory of 1.8x (F(2x2))
    /// to 4x (F(4x4)) the 3x3 weights (A1 s8 at 504x504: 2.1 GB peak instead of 0.8 GB;
    /// docs/performance.md). Off by default for that memory.
    pub keep_kernels: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            device: Device::Cpu,
            engine: Engine::Fast,
            head: HeadChoice::File,
            overrides: Overrides::default(),
            dtype: DType::F32,
            keep_kernels: false,
        }
    }
}

impl LoadOptions {
    /// The defaults on `device`.
    pub fn on(device: &Device) -> Self {
        LoadOptions {
            device: device.clone(),
            ..LoadOptions::default()
        }
    }
}

/// The network a file holds.
pub enum Network {
    /// Backbone, `bn7`/`relu7`, global pooling and `linear{C}`.
    Classifier(Classifier),
    /// Dilated backbone and the "1 conv" / "2 conv" head.
    Segmentation(SegmentationNet),
    /// The backbone alone.
    Features(Backbone),
    /// psa's multi-label classifier (`fc8` on the stride-8 features): image-level scores
    /// `(N, C)` before the sigmoid, and class activation maps.
    Cam(CamClassifier),
}

impl Network {
    /// The inference forward pass (frozen BN, no dropout).
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Network::Classifier(n) => n.forward_t(x, false),
            Network::Segmentation(n) => n.forward_t(x, false),
            Network::Features(n) => n.forward_t(x, false),
            Network::Cam(n) => n.forward_t(x, false),
        }
    }
}

/// One class of a classification, most probable first in [`Pretrained::classify`]'s result.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ClassScore {
    /// Index in the network's output.
    pub index: usize,
    /// Softmax probability.
    pub probability: f32,
    /// The class name.
    pub name: String,
}

/// A loaded network with everything known about it.
pub struct Pretrained {
    network: Network,
    metadata: ModelMetadata,
    class_names: Vec<String>,
    file: WeightFile,
    device: Device,
    engine: Engine,
    dtype: DType,
    keep_kernels: bool,
}

impl Pretrained {
    /// Load a weight file (MXNet `.params`, PyTorch `.pth`, safetensors, or
    /// `hf://OWNER/REPO/FILE[@REVISION]`) with its own head and settings.
    pub fn load(weights: impl AsRef<Path>, device: &Device) -> Result<Self> {
        Self::load_with(weights, &LoadOptions::on(device))
    }

    /// [`Pretrained::load`] with explicit options.
    pub fn load_with(weights: impl AsRef<Path>, options: &LoadOptions) -> Result<Self> {
        let requested = weights.as_ref();
        let _span = tracing::info_span!("load", weights = %requested.display()).entered();
        let file = weights::load(&r38_model::hub::resolve(requested)?)?;
        let pretrained = Self::from_file(file, options)?;
        tracing::info!(
            head = ?pretrained.metadata.head,
            arch = %pretrained.metadata.arch,
            output_stride = pretrained.metadata.output_stride,
            "loaded"
        );
        Ok(pretrained)
    }

    /// Build the network of an already read file.
    pub fn from_file(mut file: WeightFile, options: &LoadOptions) -> Result<Self> {
        let mut metadata = ModelMetadata::describe(&file, &options.overrides)?;
        let path = file.path.display().to_string();
        let wanted = match options.head {
            HeadChoice::File => match metadata.head {
                HeadKind::Classifier { .. } | HeadKind::Fc8 { .. } => HeadChoice::Classifier,
                HeadKind::Segmentation { .. } => HeadChoice::Segmentation,
                HeadKind::None => HeadChoice::Features,
            },
            other => other,
        };
        match (wanted, metadata.head) {
            (HeadChoice::Features, _) => {
                file.tensors.retain(|n, _| !is_head_tensor(n));
                metadata.head = HeadKind::None;
            }
            (HeadChoice::Classifier, HeadKind::Classifier { .. } | HeadKind::Fc8 { .. })
            | (HeadChoice::Segmentation, HeadKind::Segmentation { .. }) => {}
            (want, have) => {
                return Err(Error::Head {
                    file: path,
                    message: format!(
                        "{} asked for, but the file holds {}",
                        match want {
                            HeadChoice::Classifier => "a classifier",
                            _ => "a segmentation head",
                        },
                        describe_head(&have)
                    ),
                })
            }
        }
        let device = options.device.clone();
        let dtype = options.dtype;
        if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16) {
            return Err(Error::Invalid(format!(
                "dtype {dtype:?}: the network runs in f32, f16 or bf16"
            )));
        }
        if dtype == DType::BF16 && device.is_cpu() {
            return Err(Error::Invalid(
                "bf16 runs on a GPU only: candle's CPU matrix products have no bf16 (use f16 \
                 or f32 on the CPU)"
                    .into(),
            ));
        }
        let config = metadata.config.clone();
        let build = |f: &dyn Fn(&candle_nn::VarBuilder) -> candle_core::Result<Network>| {
            build_strict(&path, &file.tensors, dtype, &device, f)
        };
        let network = match metadata.head {
            HeadKind::Classifier { classes } => {
                build(&|vb| Classifier::new(&config, classes, vb).map(Network::Classifier))?
            }
            HeadKind::Segmentation {
                classes,
                hidden,
                kernel,
            } => {
                let head = HeadConfig {
                    classes,
                    hidden,
                    kernel,
                    dilation: metadata.head_dilation.unwrap_or(12),
                };
                build(&|vb| SegmentationNet::new(&config, head, vb).map(Network::Segmentation))?
            }
            HeadKind::Fc8 {
                classes,
                background,
            } => {
                build(&|vb| CamClassifier::new(&config, classes, background, vb).map(Network::Cam))?
            }
            HeadKind::None => build(&|vb| Backbone::new(&config, vb).map(Network::Features))?,
        };
        let class_names = class_names(&metadata, file.released);
        Ok(Pretrained {
            network,
            metadata,
            class_names,
            file,
            device,
            engine: options.engine,
            dtype,
            keep_kernels: options.keep_kernels,
        })
    }

    /// What was decided about the network: architecture, head, preprocessing, provenance.
    pub fn metadata(&self) -> &ModelMetadata {
        &self.metadata
    }

    /// The weight file as read (tensors under canonical names, MD5, released-file match).
    pub fn file(&self) -> &WeightFile {
        &self.file
    }

    /// The network.
    pub fn network(&self) -> &Network {
        &self.network
    }

    /// The segmentation network, if the file holds one.
    pub fn segmentation_net(&self) -> Option<&SegmentationNet> {
        match &self.network {
            Network::Segmentation(n) => Some(n),
            _ => None,
        }
    }

    /// psa's multi-label classifier, if the file holds one.
    pub fn cam_classifier(&self) -> Option<&CamClassifier> {
        match &self.network {
            Network::Cam(n) => Some(n),
            _ => None,
        }
    }

    /// Class activation maps with psa's inference protocol (scales 0.5-2.0 with flips), for
    /// `labels` or, without them, the classes the network predicts.
    pub fn cams(&self, image: &RgbImage, labels: Option<&[usize]>) -> Result<Cams> {
        let net = self
            .cam_classifier()
            .ok_or_else(|| self.wrong_head("compute CAMs"))?;
        let _span =
            tracing::debug_span!("cams", width = image.width(), height = image.height()).entered();
        Ok(self.run(|| infer_cams(net, image, labels, &CamProtocol::psa(), &self.device))?)
    }

    /// The device the network runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The convolution engine its passes use.
    pub fn engine(&self) -> Engine {
        self.engine
    }

    /// The float type of its weights and activations.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Class names: the file's own, else those of the benchmark it was released for or whose
    /// class count it has (ImageNet, VOC, Cityscapes, ADE20K, PASCAL-Context), else
    /// `class <i>`.
    pub fn class_names(&self) -> &[String] {
        &self.class_names
    }

    /// Label colours: the benchmark's palette where the class names are a benchmark's, else
    /// the PASCAL VOC colour map.
    pub fn palette(&self) -> Palette {
        benchmark_of(&self.class_names)
            .map(DatasetKind::palette)
            .unwrap_or_else(voc_colormap)
    }

    /// The classification test transform the file records (its input size and normalisation),
    /// else the authors' ImageNet protocol: shorter side 320 (bicubic), centre crop 320.
    pub fn classify_transform(&self) -> ClassifyTransform {
        let p = &self.metadata.preprocess;
        ClassifyTransform {
            scale: p.test_scale,
            crop: p.crop.unwrap_or(p.test_scale),
            mean: p.mean,
            std: p.std,
            interpolation: interpolation(&p.interpolation),
        }
    }

    /// The segmentation test protocol the file records (its test scale, flipping,
    /// shift-and-stitch steps and normalisation) on the authors' square canvas, else the VOC
    /// protocol (longer side 500, flipping).
    pub fn test_protocol(&self) -> TestProtocol {
        self.test_protocol_over(TestProtocol::voc())
    }

    /// Whether the file records its own test protocol: written by `r38 convert` or by training,
    /// or one of the authors' released files.
    pub fn records_protocol(&self) -> bool {
        self.file
            .metadata
            .contains_key(&format!("{}preprocess", r38_model::metadata::PREFIX))
            || self.file.released.is_some()
    }

    /// `base` (a dataset's preset, say) with what the file records laid over it: the file
    /// overrides dataset defaults, and a caller's flags override both.
    pub fn test_protocol_over(&self, base: TestProtocol) -> TestProtocol {
        if !self.records_protocol() {
            return base;
        }
        let p = &self.metadata.preprocess;
        let mut protocol = base
            .with_scales(vec![p.test_scale])
            .with_flip(p.flip.unwrap_or(true));
        if let Some(steps) = p.test_steps {
            protocol.test_steps = steps;
        }
        protocol.normalization = Normalization {
            mean: p.mean,
            std: p.std,
            ..Normalization::default()
        };
        protocol
    }

    /// One forward pass on a normalised `(N, 3, H, W)` batch: logits, score maps or features,
    /// as `f32` on the network's device.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.to_device(&self.device)?.to_dtype(self.dtype)?;
        let y = self.run(|| self.network.forward(&x))?;
        Ok(y.to_dtype(DType::F32)?)
    }

    /// Classify one image with the file's test transform: every class, most probable first.
    pub fn classify(&self, image: &RgbImage) -> Result<Vec<ClassScore>> {
        self.classify_with(image, &self.classify_transform())
    }

    /// Classify one image with another transform.
    pub fn classify_with(
        &self,
        image: &RgbImage,
        transform: &ClassifyTransform,
    ) -> Result<Vec<ClassScore>> {
        if !matches!(self.network, Network::Classifier(_)) {
            return Err(self.wrong_head("classify"));
        }
        let x = transform.apply(image, &self.device)?;
        let logits = self.forward(&x)?;
        let probs: Vec<f32> = candle_nn::ops::softmax(&logits, D::Minus1)?
            .squeeze(0)?
            .to_device(&Device::Cpu)?
            .to_vec1()?;
        let mut order: Vec<usize> = (0..probs.len()).collect();
        order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
        Ok(order
            .into_iter()
            .map(|index| ClassScore {
                index,
                probability: probs[index],
                name: self.class_names[index].clone(),
            })
            .collect())
    }

    /// Segment one image with the file's test protocol ([`Pretrained::test_protocol`]): labels
    /// and class probabilities at the image's size.
    pub fn segment(&self, image: &RgbImage) -> Result<Prediction> {
        self.segment_with(image, &self.test_protocol())
    }

    /// Segment one image with another protocol.
    pub fn segment_with(&self, image: &RgbImage, protocol: &TestProtocol) -> Result<Prediction> {
        if self.segmentation_net().is_none() {
            return Err(self.wrong_head("segment"));
        }
        let _span = tracing::debug_span!("segment", width = image.width(), height = image.height())
            .entered();
        Ok(protocol.predict(&[self as &dyn ScoreNet], image)?)
    }

    /// A pass with this model's engine, its kernels kept if it keeps them.
    fn run<T>(&self, pass: impl FnOnce() -> T) -> T {
        with_engine(self.engine, || {
            if self.keep_kernels {
                with_kept_kernels(pass)
            } else {
                pass()
            }
        })
    }

    fn wrong_head(&self, task: &str) -> Error {
        Error::Head {
            file: self.file.path.display().to_string(),
            message: format!(
                "cannot {task}: the network has {}",
                describe_head(&self.metadata.head)
            ),
        }
    }
}

/// A loaded segmentation network runs the test protocol with its own engine.
impl ScoreNet for Pretrained {
    fn scores(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match &self.network {
            Network::Segmentation(n) => self.run(|| n.scores(x)),
            _ => candle_core::bail!("{}: not a segmentation network", self.file.path.display()),
        }
    }

    fn output_stride(&self) -> usize {
        self.metadata.output_stride
    }

    fn classes(&self) -> usize {
        self.metadata.head.classes().unwrap_or(0)
    }

    fn device(&self) -> Device {
        self.device.clone()
    }
}

fn describe_head(head: &HeadKind) -> String {
    match head {
        HeadKind::Classifier { classes } => format!("a {classes}-class classifier head"),
        HeadKind::Segmentation { classes, .. } => format!("a {classes}-class segmentation head"),
        HeadKind::Fc8 { classes, .. } => format!(
            "a {classes}-class fc8 head (psa's multi-label classifier: `r38 cam`, \
             `Pretrained::cams`)"
        ),
        HeadKind::None => "no head (backbone only)".into(),
    }
}

fn interpolation(name: &str) -> Interpolation {
    match name {
        "adaptive" => Interpolation::from_choose_interp(true),
        _ => Interpolation::default(),
    }
}

/// The benchmarks whose class lists a network may carry, by class count.
const BENCHMARKS: [DatasetKind; 4] = [
    DatasetKind::Voc,
    DatasetKind::CityscapesTrainIds,
    DatasetKind::Ade20k,
    DatasetKind::PascalContext59,
];

fn class_names(
    metadata: &ModelMetadata,
    released: Option<&r38_model::weights::released::ReleasedFile>,
) -> Vec<String> {
    let classes = metadata.head.classes().unwrap_or(0);
    if let Some(names) = &metadata.class_names {
        return names.clone();
    }
    if classes == 1000 {
        return (0..classes)
            .map(|i| imagenet_class(i).map_or_else(|| format!("class {i}"), |c| c.name().into()))
            .collect();
    }
    let segmentation = matches!(metadata.head, HeadKind::Segmentation { .. });
    let benchmark = BENCHMARKS
        .into_iter()
        .filter(|_| segmentation || released.is_some())
        .find(|k| k.classes().len() == classes);
    match benchmark {
        Some(kind) => kind.classes().iter().map(|c| c.name.to_string()).collect(),
        None => (0..classes).map(|i| format!("class {i}")).collect(),
    }
}

fn benchmark_of(names: &[String]) -> Option<DatasetKind> {
    let shipped = [DatasetKind::FashionScenes];
    BENCHMARKS.into_iter().chain(shipped).find(|k| {
        k.classes().len() == names.len() && k.classes().iter().zip(names).all(|(c, n)| c.name == n)
    })
}

/// Model A's pooling, as `--pool-style` names it: `same` (pad 1) or `caffe` (pad 0).
pub fn parse_pool_style(s: &str) -> std::result::Result<PoolPadding, String> {
    match s {
        "same" => Ok(PoolPadding::Same),
        "caffe" => Ok(PoolPadding::Caffe),
        other => Err(format!("unknown pool style `{other}` (same or caffe)")),
    }
}

/// A float type as `--dtype` names it: `f32`, `f16` or `bf16` (see [`LoadOptions::dtype`]).
pub fn parse_dtype(s: &str) -> std::result::Result<DType, String> {
    match s {
        "f32" => Ok(DType::F32),
        "f16" => Ok(DType::F16),
        "bf16" => Ok(DType::BF16),
        other => Err(format!("unknown dtype `{other}` (f32, f16 or bf16)")),
    }
}

/// A device by name: `cpu`, `cuda[:N]` (feature `cuda`) or `metal` (feature `metal`).
pub fn device(name: &str) -> Result<Device> {
    let unavailable = |what: &str, e: candle_core::Error| {
        Error::Invalid(format!(
            "no {what} device ({e}); build with --features {what}"
        ))
    };
    match name {
        "cpu" => Ok(Device::Cpu),
        "metal" => Device::new_metal(0).map_err(|e| unavailable("metal", e)),
        cuda if cuda.starts_with("cuda") => {
            let ordinal = match cuda.strip_prefix("cuda:") {
                Some(n) => n
                    .parse()
                    .map_err(|_| Error::Invalid(format!("bad device `{cuda}` (cuda:N)")))?,
                None => 0,
            };
            Device::new_cuda(ordinal).map_err(|e| unavailable("cuda", e))
        }
        other => Err(Error::Invalid(format!(
            "unknown device `{other}` (cpu, cuda[:N] or metal)"
        ))),
    }
}
