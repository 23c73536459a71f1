//! Tiny networks and synthetic data shared by the training-run tests.
#![allow(dead_code)] // each test binary uses its own part

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use candle_core::Device;
use candle_nn::VarMap;
use r38_data::Normalization;
use r38_seg::HeadConfig;
use r38_train::augment::SegAugment;
use r38_train::fashion_mnist::FashionMnist;
use r38_train::loader::Source;
use r38_train::model::{fashion_config, segmentation_from};
use r38_train::scenes::{SceneConfig, Scenes};
use r38_train::sources::SceneSeg;
use r38_train::trainer::{Task, TrainConfig};
use r38_train::{LrSchedule, MultiplierPolicy, OhemConfig, SgdConfig};

pub fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("r38-train-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// Ten "classes" of rectangles of different sizes and intensities.
pub fn toy_items(n: usize) -> Arc<FashionMnist> {
    let mut images = Vec::with_capacity(n * 784);
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let c = (i % 10) as u8;
        labels.push(c);
        for y in 0..28usize {
            for x in 0..28usize {
                let inside = y.abs_diff(14) < 4 + c as usize && x.abs_diff(14) < 13 - c as usize;
                images.push(if inside { 120 + c * 13 } else { 0 });
            }
        }
    }
    Arc::new(FashionMnist {
        len: n,
        height: 28,
        width: 28,
        images,
        labels,
    })
}

pub fn scenes(len: usize, seed: u64) -> Scenes {
    let cfg = SceneConfig {
        size: (40, 40),
        max_items: 2,
        scale: (0.8, 1.2),
        ..SceneConfig::default()
    };
    Scenes::new(toy_items(30), cfg, seed, len)
}

pub fn seg_source() -> Arc<dyn Source> {
    Arc::new(SceneSeg {
        scenes: scenes(12, 1),
        augment: Some(SegAugment {
            crop: 32,
            scale_range: (0.9, 1.1),
            label_stride: 4,
            ..SegAugment::default()
        }),
        norm: Normalization::default(),
    })
}

pub fn seg_config(out: PathBuf, steps: usize, resume: bool) -> TrainConfig {
    TrainConfig {
        task: Task::Segmentation {
            ohem: Some(OhemConfig {
                min_kept: 8,
                ..OhemConfig::default()
            }),
        },
        steps,
        batch_size: 2,
        accumulate: 2,
        seed: 11,
        workers: 2,
        prefetch: 2,
        checkpoint_every: 2,
        keep_checkpoints: 2,
        validate_every: 4,
        out_dir: out,
        schedule: LrSchedule::Fixed { base: 0.01 },
        sgd: SgdConfig::segmentation(1),
        policy: MultiplierPolicy::alex(),
        resume,
        recompute: false,
        run: serde_json::json!({"test": true}),
        model_metadata: BTreeMap::new(),
    }
}

pub fn tiny_seg_net() -> r38_train::model::Built<r38_seg::SegmentationNet> {
    // The authors' dropout: the resume test also checks that its masks are reproduced.
    tiny_seg_net_with_dropout(0.3, 0.5)
}

pub fn tiny_seg_net_with_dropout(
    level6: f32,
    level7: f32,
) -> r38_train::model::Built<r38_seg::SegmentationNet> {
    let cfg = fashion_config(16).with_dropout(&[(6, level6), (7, level7)]);
    let head = HeadConfig {
        classes: 11,
        hidden: Some(8),
        kernel: 3,
        dilation: 1,
    };
    segmentation_from(&BTreeMap::new(), &cfg, head, &Device::Cpu, 5).unwrap()
}

pub type Weights = BTreeMap<String, Vec<f32>>;

pub fn weights(varmap: &VarMap) -> Weights {
    varmap
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(n, v)| {
            let t = v.as_tensor().flatten_all().unwrap();
            (n.clone(), t.to_vec1::<f32>().unwrap())
        })
        .collect()
}

/// Largest difference relative to the tensor's largest magnitude (at least 1).
pub fn max_relative_difference(a: &Weights, b: &Weights) -> f32 {
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    a.iter()
        .map(|(n, x)| {
            let y = &b[n];
            let scale = x.iter().fold(1f32, |m, v| m.max(v.abs()));
            x.iter().zip(y).fold(0f32, |m, (p, q)| m.max((p - q).abs())) / scale
        })
        .fold(0.0, f32::max)
}
