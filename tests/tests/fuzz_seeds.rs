//! The committed seeds of the fuzz targets added for issue 14 (`fuzz/seeds/`) are what the
//! targets expect: the metadata seeds pass validation against the targets' reference tensors
//! and build, so fuzzing reaches network construction; the `.npy`, image and list seeds are
//! read. Crash inputs found by fuzzing go under `tests/fixtures/hostile/` and are replayed by
//! the readers' own tests.

use candle_core::{DType, Device, Tensor};
use r38_model::{BackboneConfig, HeadKind, ModelMetadata, Preprocess};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn seeds(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/seeds")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{}", dir.display());
    files
}

/// As `fuzz/fuzz_targets/metadata.rs`'s reference files.
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
    ModelMetadata {
        arch: r38_model::Arch::A1,
        output_stride: 8,
        config: BackboneConfig::model_a1(8).unwrap().narrowed(64),
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

#[test]
fn metadata_seeds_validate_and_build() {
    for path in seeds("metadata") {
        let bytes = std::fs::read(&path).unwrap();
        let (&which, json) = bytes.split_first().unwrap();
        let map: BTreeMap<String, String> = serde_json::from_slice(json).unwrap();
        let meta = ModelMetadata::from_map(&map).unwrap().unwrap();
        let shapes = reference(which).tensor_shapes();
        meta.validate(&shapes)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let tensors: BTreeMap<String, Tensor> = shapes
            .iter()
            .map(|(n, s)| {
                let t = Tensor::zeros(s.as_slice(), DType::F32, &Device::Cpu).unwrap();
                (n.clone(), t)
            })
            .collect();
        let dev = Device::Cpu;
        match meta.head {
            HeadKind::Segmentation {
                classes,
                hidden,
                kernel,
            } => {
                let head = r38_seg::HeadConfig {
                    classes,
                    hidden,
                    kernel,
                    dilation: meta.head_dilation.unwrap_or(12),
                };
                r38_model::build_strict("seed", &tensors, DType::F32, &dev, |vb| {
                    r38_seg::SegmentationNet::new(&meta.config, head, vb)
                })
                .map(drop)
            }
            HeadKind::Classifier { classes } => {
                r38_model::build_strict("seed", &tensors, DType::F32, &dev, |vb| {
                    r38_model::Classifier::new(&meta.config, classes, vb)
                })
                .map(drop)
            }
            HeadKind::Fc8 {
                classes,
                background,
            } => r38_model::build_strict("seed", &tensors, DType::F32, &dev, |vb| {
                r38_model::CamClassifier::new(&meta.config, classes, background, vb)
            })
            .map(drop),
            HeadKind::None => r38_model::build_strict("seed", &tensors, DType::F32, &dev, |vb| {
                r38_model::Backbone::new(&meta.config, vb)
            })
            .map(drop),
        }
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}

#[test]
fn reader_seeds_are_read() {
    for path in seeds("npy") {
        r38_data::npy::read_npy(&path).unwrap_or_else(|e| panic!("{e}"));
    }
    for path in seeds("images") {
        r38_data::load_rgb8(&path).unwrap_or_else(|e| panic!("{e}"));
    }
    for path in seeds("lists") {
        let text = std::fs::read_to_string(&path).unwrap();
        r38_data::datasets::parse_id_list(&text, &path).unwrap_or_else(|e| panic!("{e}"));
    }
}
