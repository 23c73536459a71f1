//! Networks for training: initialisation from a weight file (the authors' ImageNet A1 into a
//! segmentation net in one call), seeded initialisation of the new layers, and the small
//! ResNet-38-family configurations used on Fashion-MNIST.

use std::collections::BTreeMap;

use std::sync::{Arc, Mutex};

use crate::error::{bail, Result};
use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder, VarMap};
use r38_model::{BackboneConfig, Classifier, Downsample, LevelConfig, StemConfig, UnitKind};
use r38_seg::{HeadConfig, SegmentationNet};

use crate::rng::Rng;

/// A network being trained and where its variables live.
pub struct Built<N> {
    /// The network.
    pub net: N,
    /// All its variables (trainable and BN statistics).
    pub varmap: VarMap,
    /// Names of variables that were not in the initial weights (the new layers).
    pub new_vars: Vec<String>,
    /// Names in the initial weights that the network does not use (e.g. `linear1000_*`).
    pub dropped: Vec<String>,
}

/// A VarBuilder backend that creates variables in a [`VarMap`], taking their values from the
/// initial weights when present, and records which names the network asked for.
struct Recording {
    varmap: VarMap,
    init: BTreeMap<String, Tensor>,
    requested: Mutex<Vec<String>>,
}

impl SimpleBackend for Recording {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.requested
            .lock()
            .expect("mutex poisoned")
            .push(name.to_string());
        if let Some(t) = self.init.get(name) {
            if t.shape() != &s {
                candle_core::bail!(
                    "{name}: the weights have shape {:?}, the network needs {:?}",
                    t.dims(),
                    s.dims()
                );
            }
            let mut data = self.varmap.data().lock().expect("VarMap mutex poisoned");
            let var = data
                .entry(name.to_string())
                .or_insert(Var::from_tensor(&t.to_device(dev)?.to_dtype(dtype)?)?);
            return Ok(var.as_tensor().clone());
        }
        self.varmap.get(s, name, h, dtype, dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        match self.init.get(name) {
            Some(t) => self.get(t.shape().clone(), name, Init::Const(0.0), dtype, dev),
            None => candle_core::bail!("no tensor {name}"),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.init.contains_key(name)
    }
}

/// Builds `make(vb)` with its variables taken from `init` where present; every other
/// variable is new, and its random initialisation is redrawn from `seed` (MSRA Gaussian
/// `std = sqrt(2 / fan_in)` for convolution weights, `±1/sqrt(fan_in)` uniform for the
/// classifier's `linear<C>` weight and bias, constants as they are), so that a seeded run is
/// reproducible. Tensors of `init` the network does not use are an error unless
/// `allow_unused(name)` (e.g. the ImageNet classifier when fine-tuning for segmentation);
/// shape mismatches are always errors.
pub fn build<N>(
    init: &BTreeMap<String, Tensor>,
    device: &Device,
    seed: u64,
    allow_unused: impl Fn(&str) -> bool,
    make: impl FnOnce(&VarBuilder) -> candle_core::Result<N>,
) -> Result<Built<N>> {
    let backend = Arc::new(Recording {
        varmap: VarMap::new(),
        init: init.clone(),
        requested: Mutex::new(Vec::new()),
    });
    let boxed: Box<dyn SimpleBackend> = Box::new(Shared(backend.clone()));
    let vb = VarBuilder::from_backend(boxed, DType::F32, device.clone());
    let net = make(&vb)?;
    drop(vb);
    let requested: std::collections::HashSet<String> = backend
        .requested
        .lock()
        .expect("mutex poisoned")
        .iter()
        .cloned()
        .collect();
    let mut dropped = Vec::new();
    let mut unexpected = Vec::new();
    for name in init.keys().filter(|n| !requested.contains(*n)) {
        if allow_unused(name) {
            dropped.push(name.clone());
        } else {
            unexpected.push(name.clone());
        }
    }
    if !unexpected.is_empty() {
        bail!(
            "the initial weights hold {} tensor(s) this network does not use: {}",
            unexpected.len(),
            unexpected.join(", ")
        );
    }
    let varmap = backend.varmap.clone();
    let mut new_vars: Vec<String> = requested
        .into_iter()
        .filter(|n| !init.contains_key(n))
        .collect();
    new_vars.sort();
    {
        let data = varmap.data().lock().expect("VarMap mutex poisoned");
        for name in &new_vars {
            let var = data.get(name).expect("created by the backend");
            if let Some(t) = seeded_init(name, var.dims(), seed)? {
                var.set(&t.to_device(device)?)?;
            }
        }
    }
    Ok(Built {
        net,
        varmap,
        new_vars,
        dropped,
    })
}

struct Shared(Arc<Recording>);

impl SimpleBackend for Shared {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.0.get(s, name, h, dtype, dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.0.get_unchecked(name, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0.contains_tensor(name)
    }
}

/// Seeded redraw of a new variable; `None` keeps its constant initialisation.
fn seeded_init(name: &str, dims: &[usize], seed: u64) -> Result<Option<Tensor>> {
    let mut rng = Rng::derive(seed, name, 0, 0);
    let n: usize = dims.iter().product();
    let linear = name.starts_with("linear") && dims.len() <= 2;
    let data: Vec<f32> = if name == "fc8_weight" && dims.len() == 4 {
        // psa's new classifier: Xavier uniform.
        let b = (6.0 / (dims[0] + dims[1]) as f64).sqrt();
        (0..n).map(|_| rng.range(-b, b) as f32).collect()
    } else if name.ends_with("_weight") && dims.len() == 4 {
        let fan_in = (dims[1] * dims[2] * dims[3]) as f64;
        let std = (2.0 / fan_in).sqrt();
        (0..n).map(|_| (rng.normal() * std) as f32).collect()
    } else if linear && name.ends_with("_weight") {
        let b = 1.0 / (dims[dims.len() - 1] as f64).sqrt();
        (0..n).map(|_| rng.range(-b, b) as f32).collect()
    } else {
        return Ok(None);
    };
    Ok(Some(Tensor::from_vec(data, dims, &Device::Cpu)?))
}

/// Whether `name` belongs to an ImageNet classifier head (`linear1000_*`, `fc*`), which a
/// segmentation net built from classification weights drops.
pub fn is_classifier_tensor(name: &str) -> bool {
    name.starts_with("linear") || name.starts_with("fc")
}

/// The authors' fine-tuning start: a segmentation net whose backbone comes from `init`
/// (e.g. `ilsvrc-cls_rna-a1_cls1000_ep-0001.params`), the classifier (`linear1000_*`) dropped,
/// and `conv6a`, `linear<C>` new (MSRA, bias 0, seeded) unless `init` already has them (a
/// segmentation checkpoint of the same shape).
pub fn segmentation_from(
    init: &BTreeMap<String, Tensor>,
    backbone: &BackboneConfig,
    head: HeadConfig,
    device: &Device,
    seed: u64,
) -> Result<Built<SegmentationNet>> {
    build(init, device, seed, is_classifier_tensor, |vb| {
        SegmentationNet::new(backbone, head, vb)
    })
}

/// A classifier with weights from `init` (may be empty: all new). A new `linear<C>` gets the
/// authors' Torch-style `U(±1/sqrt(fan_in))` weight and bias, drawn from `seed`.
pub fn classifier_from(
    init: &BTreeMap<String, Tensor>,
    backbone: &BackboneConfig,
    classes: usize,
    device: &Device,
    seed: u64,
) -> Result<Built<Classifier>> {
    let mut built = build(
        init,
        device,
        seed,
        |_| false,
        |vb| Classifier::new(backbone, classes, vb),
    )?;
    // Classifier::new draws the bias from U(±1/sqrt(fan_in)) too: redraw it from the seed.
    let name = format!("linear{classes}_bias");
    if built.new_vars.contains(&name) {
        let data = built.varmap.data().lock().expect("VarMap mutex poisoned");
        if let Some(var) = data.get(&name) {
            let b = 1.0 / (backbone.feature_channels() as f64).sqrt();
            let mut rng = Rng::derive(seed, &name, 0, 0);
            let v: Vec<f32> = (0..classes).map(|_| rng.range(-b, b) as f32).collect();
            var.set(&Tensor::from_vec(v, classes, device)?)?;
        }
    }
    built.dropped.sort();
    Ok(built)
}

/// A small ResNet-38-family backbone for Fashion-MNIST, used both for 28x28 classification
/// and, with the same tensors, for the fashion scenes (so a classifier checkpoint initialises
/// the segmentation net exactly as ImageNet A1 initialises the authors' nets): stem, basic
/// levels 2-5 (strided units at levels 3 and 4: output stride 4, 28 -> 7), bottleneck levels
/// 6 and 7 (where segmentation puts its dropout). Widths are those below divided by `divisor`.
pub fn fashion_config(divisor: usize) -> BackboneConfig {
    let d = |w: usize| (w / divisor.max(1)).max(1);
    let level = |level, unit, units, widths: &[usize], downsample| LevelConfig {
        level,
        unit,
        units,
        widths: widths.iter().map(|&w| d(w)).collect(),
        downsample,
        dilate: false,
        dropout: 0.0,
    };
    BackboneConfig {
        stem: StemConfig {
            channels: d(16),
            kernel: 3,
        },
        levels: vec![
            level(2, UnitKind::Basic, 1, &[32, 32], Downsample::None),
            level(3, UnitKind::Basic, 1, &[64, 64], Downsample::StridedUnit),
            level(4, UnitKind::Basic, 2, &[128, 128], Downsample::StridedUnit),
            level(5, UnitKind::Basic, 1, &[128, 256], Downsample::None),
            level(
                6,
                UnitKind::Bottleneck,
                1,
                &[64, 128, 256],
                Downsample::None,
            ),
            level(
                7,
                UnitKind::Bottleneck,
                1,
                &[128, 256, 512],
                Downsample::None,
            ),
        ],
        pool_padding: Default::default(),
        bn_eps: r38_model::config::BN_EPS,
    }
}
