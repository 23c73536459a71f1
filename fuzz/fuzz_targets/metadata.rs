//! Metadata to network: the input is a JSON object of `__metadata__` strings; it goes through
//! `ModelMetadata::from_map` and `validate` against the tensors of one of three small files,
//! and what passes is built (classifier, segmentation net or backbone) from zero tensors. A
//! configuration that validates describes exactly those small tensors, so building stays
//! within the memory bound whatever the strings say.
#![no_main]

mod common;

use candle_core::{DType, Device, Tensor};
use libfuzzer_sys::fuzz_target;
use r38_model::{BackboneConfig, HeadKind, ModelMetadata, Preprocess};
use std::collections::BTreeMap;

/// The three files the metadata is checked against (narrowed A1 at output stride 8).
fn reference(which: u8) -> ModelMetadata {
    let head = match which % 3 {
        0 => HeadKind::Classifier { classes: 10 },
        1 => HeadKind::Segmentation {
            classes: 21,
            hidden: Some(16),
            kernel: 3,
        },
        _ => HeadKind::None,
    };
    let config = BackboneConfig::model_a1(8).expect("preset").narrowed(64);
    ModelMetadata {
        arch: r38_model::Arch::A1,
        output_stride: 8,
        config,
        preprocess: Preprocess::for_head(&head),
        head,
        head_dilation: Some(12),
        class_names: None,
        source_file: None,
        source_md5: None,
        released: None,
        lineage: None,
        extra: Default::default(),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, json)) = data.split_first() else {
        return;
    };
    common::bounded(data.len(), || {
        let Ok(map) = serde_json::from_slice::<BTreeMap<String, String>>(json) else {
            return;
        };
        let Ok(Some(meta)) = ModelMetadata::from_map(&map) else {
            return;
        };
        let shapes = reference(which).tensor_shapes();
        if meta.validate(&shapes).is_err() {
            return;
        }
        let tensors: BTreeMap<String, Tensor> = shapes
            .iter()
            .map(|(n, s)| (n.clone(), Tensor::zeros(s.as_slice(), DType::F32, &Device::Cpu).unwrap()))
            .collect();
        let dev = Device::Cpu;
        let built = match meta.head {
            HeadKind::Classifier { classes } => r38_model::build_strict("fuzz", &tensors, DType::F32, &dev, |vb| {
                r38_model::Classifier::new(&meta.config, classes, vb)
            })
            .map(drop),
            HeadKind::Segmentation { classes, hidden, kernel } => {
                let head = r38_seg::HeadConfig {
                    classes,
                    hidden,
                    kernel,
                    dilation: meta.head_dilation.unwrap_or(12),
                };
                r38_model::build_strict("fuzz", &tensors, DType::F32, &dev, |vb| {
                    r38_seg::SegmentationNet::new(&meta.config, head, vb)
                })
                .map(drop)
            }
            HeadKind::Fc8 { classes, background } => r38_model::build_strict("fuzz", &tensors, DType::F32, &dev, |vb| {
                r38_model::CamClassifier::new(&meta.config, classes, background, vb)
            })
            .map(drop),
            HeadKind::None => r38_model::build_strict("fuzz", &tensors, DType::F32, &dev, |vb| {
                r38_model::Backbone::new(&meta.config, vb)
            })
            .map(drop),
        };
        // Validation promised a clean build.
        if let Err(e) = built {
            panic!("validated metadata failed to build: {e}");
        }
    });
});
