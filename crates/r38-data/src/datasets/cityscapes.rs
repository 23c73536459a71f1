//! The Cityscapes layout and its label conventions.
//!
//! ```text
//! ROOT/leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png
//! ROOT/gtFine/{split}/{city}/{stem}_gtFine_labelIds.png        (or _gtFine_labelTrainIds.png)
//! ```
//!
//! Samples are enumerated in sorted order (cities by name, then files by name); the sample id
//! is `{stem}`, e.g. `frankfurt_000000_000294`. `ROOT` may also be a parent holding
//! `cityscapes/`.

use std::path::Path;

use super::classes::{CITYSCAPES_CLASSES, CITYSCAPES_LABELS};
use super::codec::LabelCodec;
use super::error::{DatasetError, Result};
use super::layout::{list_dir, resolve_root, subdirs};
use super::{SegSample, IGNORE_LABEL};

const IMAGE_SUFFIX: &str = "_leftImg8bit.png";

/// The train id of a Cityscapes label id (`gtFine_labelIds` value): `0..19` for the evaluated
/// classes, 255 for labels ignored in evaluation (`ignoreInEval`, train id 255); `None` for a
/// value that is not a label id. 255 itself is accepted as ignore.
pub fn cityscapes_train_id(label_id: u8) -> Option<u8> {
    if label_id == IGNORE_LABEL {
        return Some(IGNORE_LABEL);
    }
    let label = CITYSCAPES_LABELS
        .iter()
        .find(|l| l.id == i16::from(label_id))?;
    Some(
        if label.ignore_in_eval || !(0..19).contains(&label.train_id) {
            IGNORE_LABEL
        } else {
            label.train_id as u8
        },
    )
}

/// The label id of a Cityscapes train id `0..19` (the first label with that train id, as
/// cityscapesScripts' `trainId2label`), `None` otherwise.
pub fn cityscapes_label_id(train_id: u8) -> Option<u8> {
    CITYSCAPES_LABELS
        .iter()
        .find(|l| l.train_id == i16::from(train_id) && !l.ignore_in_eval)
        .map(|l| l.id as u8)
}

/// Codec for `*_gtFine_labelIds.png`: label ids to train ids, train ids back to label ids
/// (void: 0, `unlabeled`).
pub(crate) fn label_ids_codec() -> LabelCodec {
    LabelCodec::new(
        CITYSCAPES_CLASSES.len(),
        cityscapes_train_id,
        |t| cityscapes_label_id(t).expect("train ids 0..19 have label ids"),
        0,
    )
}

/// Codec for `*_gtFine_labelTrainIds.png` (already train ids); encoding as for label ids.
pub(crate) fn train_ids_codec() -> LabelCodec {
    LabelCodec::new(
        CITYSCAPES_CLASSES.len(),
        |raw| (raw < 19 || raw == IGNORE_LABEL).then_some(raw),
        |t| cityscapes_label_id(t).expect("train ids 0..19 have label ids"),
        0,
    )
}

/// Resolves the root and enumerates `leftImg8bit/{split}`; `label_suffix` is
/// `_gtFine_labelIds.png` or `_gtFine_labelTrainIds.png`.
pub(crate) fn enumerate(
    root: &Path,
    split: &str,
    label_suffix: &str,
) -> Result<(std::path::PathBuf, Vec<SegSample>)> {
    let root = resolve_root(root, "Cityscapes", &["", "cityscapes"], "leftImg8bit")?;
    let image_dir = root.join("leftImg8bit").join(split);
    if !image_dir.is_dir() {
        return Err(DatasetError::SplitNotFound {
            path: image_dir,
            split: split.into(),
            available: subdirs(&root.join("leftImg8bit")),
        });
    }
    let label_dir = root.join("gtFine").join(split);
    let labelled = label_dir.is_dir();
    let mut samples = Vec::new();
    for city in list_dir(&image_dir)?.into_iter().filter(|e| e.is_dir) {
        for file in list_dir(&city.path)?.into_iter().filter(|e| !e.is_dir) {
            let Some(stem) = file.name.strip_suffix(IMAGE_SUFFIX) else {
                continue;
            };
            samples.push(SegSample {
                id: stem.to_owned(),
                label_path: labelled.then(|| {
                    label_dir
                        .join(&city.name)
                        .join(format!("{stem}{label_suffix}"))
                }),
                image_path: file.path,
            });
        }
    }
    if samples.is_empty() {
        return Err(DatasetError::Empty {
            path: image_dir,
            detail: format!("no {{city}}/*{IMAGE_SUFFIX} files"),
        });
    }
    Ok((root, samples))
}
