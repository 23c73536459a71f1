//! The ADE20K / MIT Scene Parsing (`ADEChallengeData2016`) layout.
//!
//! ```text
//! ROOT/images/{training,validation}/ADE_*.jpg
//! ROOT/annotations/{training,validation}/ADE_*.png      grey, 0 = "other", 1..=150 classes
//! ```
//!
//! `ROOT` may be `ADEChallengeData2016` or its parent. The split names `train` and `val` stand
//! for `training` and `validation`; any other name is used as the directory name. Samples are
//! the `*.jpg` files in sorted order; the id is the file stem (`ADE_val_00000001`).

use std::path::{Path, PathBuf};

use super::classes::ADE20K_CLASSES;
use super::codec::LabelCodec;
use super::error::{DatasetError, Result};
use super::layout::{list_dir, resolve_root, subdirs};
use super::{SegSample, IGNORE_LABEL};

/// Raw 0 → 255 (ignore), raw `k` in `1..=150` → `k - 1`, raw 255 → 255; predictions are
/// written as `i + 1` (void: 0).
pub(crate) fn codec() -> LabelCodec {
    reduce_zero_codec(ADE20K_CLASSES.len(), |t| t + 1, 0)
}

/// mmsegmentation's `reduce_zero_label`: raw 0 → 255, raw `k` in `1..=C` → `k - 1`,
/// raw 255 → 255, everything else invalid.
pub(crate) fn reduce_zero_codec(num_classes: usize, encode: fn(u8) -> u8, void: u8) -> LabelCodec {
    LabelCodec::new(
        num_classes,
        |raw| match raw {
            0 | IGNORE_LABEL => Some(IGNORE_LABEL),
            k if usize::from(k) <= num_classes => Some(k - 1),
            _ => None,
        },
        encode,
        void,
    )
}

/// The directory name of a split.
fn split_dir(split: &str) -> &str {
    match split {
        "train" => "training",
        "val" => "validation",
        other => other,
    }
}

/// Resolves the root and enumerates `images/{split}`.
pub(crate) fn enumerate(root: &Path, split: &str) -> Result<(PathBuf, Vec<SegSample>)> {
    let root = resolve_root(root, "ADE20K", &["", "ADEChallengeData2016"], "images")?;
    let dir = split_dir(split);
    let image_dir = root.join("images").join(dir);
    if !image_dir.is_dir() {
        return Err(DatasetError::SplitNotFound {
            path: image_dir,
            split: split.into(),
            available: subdirs(&root.join("images")),
        });
    }
    let label_dir = root.join("annotations").join(dir);
    let labelled = label_dir.is_dir();
    let samples: Vec<SegSample> = list_dir(&image_dir)?
        .into_iter()
        .filter(|e| !e.is_dir)
        .filter_map(|e| {
            let stem = e.name.strip_suffix(".jpg")?.to_owned();
            Some(SegSample {
                label_path: labelled.then(|| label_dir.join(format!("{stem}.png"))),
                id: stem,
                image_path: e.path,
            })
        })
        .collect();
    if samples.is_empty() {
        return Err(DatasetError::Empty {
            path: image_dir,
            detail: "no *.jpg files".into(),
        });
    }
    Ok((root, samples))
}
