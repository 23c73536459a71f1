//! From a weight file and the user's flags to a runnable network.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use r38_model::weights::{self, WeightFile};
use r38_model::{Arch, Backbone, BackboneConfig, Classifier, HeadKind, ModelMetadata, PoolPadding};
use r38_seg::{HeadConfig, SegmentationNet};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Which head to run, as `--head` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HeadChoice {
    /// Class logits (N, C).
    Cls,
    /// Score maps (N, C, h, w).
    Seg,
    /// Backbone features (relu7).
    None,
}

/// How the network is chosen; every field may be left to the file.
#[derive(Debug, Clone, clap::Args)]
pub struct ModelArgs {
    /// Weight file: MXNet .params, PyTorch .pth (zip) or safetensors; or
    /// hf://OWNER/REPO/FILE[@REVISION] from the Hugging Face Hub (see docs/hub.md).
    #[arg(long)]
    pub weights: std::path::PathBuf,
    /// Architecture: a (max-pool), a1 (strided units), a2 (hybrid). Default: the file's
    /// metadata, else a1.
    #[arg(long)]
    pub arch: Option<Arch>,
    /// Output stride 8, 16 or 32. Default: the file's metadata, else 8 with a segmentation
    /// head and 32 otherwise.
    #[arg(long)]
    pub output_stride: Option<usize>,
    /// Model A's pooling: `same` (pad 1) or `caffe` (pad 0, the published Model A numbers).
    #[arg(long, value_parser = parse_pool_style)]
    pub pool_style: Option<PoolPadding>,
    /// Compute device: cpu, cuda[:N] (feature `cuda`) or metal (feature `metal`).
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

pub fn parse_pool_style(s: &str) -> std::result::Result<PoolPadding, String> {
    match s {
        "same" => Ok(PoolPadding::Same),
        "caffe" => Ok(PoolPadding::Caffe),
        other => Err(format!("unknown pool style `{other}` (same or caffe)")),
    }
}

pub fn device(name: &str) -> Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        "metal" => Device::new_metal(0).context("no Metal device (build with --features metal)"),
        cuda if cuda.starts_with("cuda") => {
            let ordinal = match cuda.strip_prefix("cuda:") {
                Some(n) => n.parse().with_context(|| format!("bad device `{cuda}`"))?,
                None => 0,
            };
            Device::new_cuda(ordinal).context("no CUDA device (build with --features cuda)")
        }
        other => bail!("unknown device `{other}` (cpu, cuda[:N] or metal)"),
    }
}

pub enum Network {
    Classifier(Classifier),
    Segmentation(SegmentationNet),
    Features(Backbone),
}

impl Network {
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Network::Classifier(n) => n.forward_t(x, false),
            Network::Segmentation(n) => n.forward_t(x, false),
            Network::Features(n) => n.forward_t(x, false),
        }
    }
}

/// A network with everything that was decided about it.
pub struct LoadedModel {
    pub network: Network,
    pub metadata: ModelMetadata,
    pub file: WeightFile,
}

/// Tensor shapes by canonical name.
pub fn shapes(file: &WeightFile) -> BTreeMap<String, Vec<usize>> {
    file.tensors
        .iter()
        .map(|(n, t)| (n.clone(), t.dims().to_vec()))
        .collect()
}

fn is_head_tensor(name: &str) -> bool {
    name.starts_with("linear") || name.starts_with("conv6a_")
}

/// Decide architecture and head for `file`: explicit flags first, then the file's own
/// metadata, then the authors' defaults (A1; stride 8 for segmentation, 32 otherwise).
pub fn describe(file: &WeightFile, args: &ModelArgs) -> Result<ModelMetadata> {
    let path = file.path.display();
    let stored =
        ModelMetadata::from_map(&file.metadata).map_err(|e| anyhow::anyhow!("{path}: {e}"))?;
    if let Some(m) = &stored {
        m.validate(&shapes(file))
            .with_context(|| format!("{path}"))?;
    }
    let head = HeadKind::detect(&shapes(file)).with_context(|| format!("{path}"))?;
    let arch = args
        .arch
        .or(stored.as_ref().map(|m| m.arch))
        .or(file.released.map(|r| r.arch))
        .unwrap_or(Arch::A1);
    let default_stride = match (file.released, head) {
        (Some(r), _) => r.output_stride,
        (None, HeadKind::Segmentation { .. }) => 8,
        (None, _) => 32,
    };
    let mut config = match (&stored, args.arch) {
        (Some(m), None) => m.config.clone(),
        _ => {
            let stride = args
                .output_stride
                .or(stored.as_ref().map(|m| m.output_stride))
                .unwrap_or(default_stride);
            BackboneConfig::infer(&shapes(file), arch, stride).with_context(|| format!("{path}"))?
        }
    };
    if let Some(stride) = args.output_stride {
        config
            .set_output_stride(stride)
            .with_context(|| format!("{path}"))?;
    }
    match (args.pool_style, file.released) {
        (Some(style), _) => config.pool_padding = style,
        // The authors' published Model A numbers were measured with pad-0 test-time pooling.
        (None, Some(r)) if r.arch == Arch::A && stored.is_none() => {
            config.pool_padding = PoolPadding::Caffe
        }
        _ => {}
    }
    if matches!(head, HeadKind::Segmentation { .. }) {
        // The released segmentation nets drop out before the last conv of levels 6 and 7.
        config = config.with_dropout(&[(6, 0.3), (7, 0.5)]);
    }
    let source_file = file
        .path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned());
    Ok(ModelMetadata {
        arch,
        output_stride: config.output_stride(),
        // The file's recorded preprocessing (its input size, mean/std), else the authors'.
        preprocess: stored
            .as_ref()
            .map(|m| m.preprocess.clone())
            .unwrap_or_else(|| r38_model::Preprocess::for_head(&head)),
        config,
        head,
        head_dilation: stored.as_ref().and_then(|m| m.head_dilation),
        source_file: stored
            .as_ref()
            .and_then(|m| m.source_file.clone())
            .or(source_file),
        source_md5: stored
            .as_ref()
            .and_then(|m| m.source_md5.clone())
            .or(Some(file.md5.clone())),
        released: stored
            .as_ref()
            .and_then(|m| m.released.clone())
            .or(file.released.map(|r| r.file_name.clone())),
    })
}

/// A local path for a weight file as the user named it: `hf://OWNER/REPO/FILE[@REVISION]` is
/// looked up in the Hugging Face cache and downloaded unless `HF_HUB_OFFLINE` is set; any other
/// path is returned unchanged.
pub fn resolve_weights(path: &Path) -> Result<PathBuf> {
    Ok(r38_model::hub::resolve(path)?)
}

/// Load `args.weights` and build the network `head` asks for (default: the file's own head).
pub fn load(args: &ModelArgs, head: Option<HeadChoice>) -> Result<LoadedModel> {
    let mut file = weights::load(&resolve_weights(&args.weights)?)?;
    let mut metadata = describe(&file, args)?;
    let path = file.path.display().to_string();
    let wanted = head.unwrap_or(match metadata.head {
        HeadKind::Classifier { .. } => HeadChoice::Cls,
        HeadKind::Segmentation { .. } => HeadChoice::Seg,
        HeadKind::None => HeadChoice::None,
    });
    match (wanted, metadata.head) {
        (HeadChoice::None, _) => {
            file.tensors.retain(|n, _| !is_head_tensor(n));
            metadata.head = HeadKind::None;
        }
        (HeadChoice::Cls, HeadKind::Classifier { .. })
        | (HeadChoice::Seg, HeadKind::Segmentation { .. }) => {}
        (want, have) => bail!(
            "{path}: --head {} asked for, but the file holds {}",
            match want {
                HeadChoice::Cls => "cls",
                HeadChoice::Seg => "seg",
                HeadChoice::None => "none",
            },
            match have {
                HeadKind::Classifier { classes } => format!("a {classes}-class classifier head"),
                HeadKind::Segmentation { classes, .. } =>
                    format!("a {classes}-class segmentation head"),
                HeadKind::None => "no head (backbone only)".into(),
            }
        ),
    }
    let device = device(&args.device)?;
    let config = metadata.config.clone();
    let network = match metadata.head {
        HeadKind::Classifier { classes } => Network::Classifier(r38_model::build_strict(
            &path,
            &file.tensors,
            DType::F32,
            &device,
            |vb| Classifier::new(&config, classes, vb),
        )?),
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
            Network::Segmentation(r38_model::build_strict(
                &path,
                &file.tensors,
                DType::F32,
                &device,
                |vb| SegmentationNet::new(&config, head, vb),
            )?)
        }
        HeadKind::None => Network::Features(r38_model::build_strict(
            &path,
            &file.tensors,
            DType::F32,
            &device,
            |vb| Backbone::new(&config, vb),
        )?),
    };
    Ok(LoadedModel {
        network,
        metadata,
        file,
    })
}

/// Refuse to replace a file unless asked to: nothing the user made is lost.
pub fn check_overwrite(path: &Path, overwrite: bool) -> Result<()> {
    if path.exists() && !overwrite {
        bail!("{} exists; pass --overwrite to replace it", path.display());
    }
    Ok(())
}

/// Write through a temporary file and rename, so that no half-written file ever carries the
/// final name; the temporary is created exclusively under an unpredictable name
/// ([`r38_data::output`]), so nothing planted in the output folder is written through.
pub fn write_atomically(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    r38_data::output::write_atomically_path(path, |tmp| {
        // A writer's own error may name only the temporary (candle's `write_npy`): name the
        // output, unless the message already does.
        let name = path.display().to_string();
        write(tmp).map_err(|e| {
            if format!("{e:#}").contains(&name) {
                e
            } else {
                e.context(format!("{name}: cannot write"))
            }
        })
    })
}
