//! The PASCAL VOC devkit layouts: VOC 2012 segmentation, its SBD-augmented labels
//! (`SegmentationClassAug`) and PASCAL-Context in mmsegmentation's converted layout.
//!
//! ```text
//! ROOT/JPEGImages/{id}.jpg
//! ROOT/<labels>/{id}.png                    SegmentationClass | SegmentationClassAug | SegmentationClassContext
//! ROOT/ImageSets/<lists>/{split}.txt        Segmentation | SegmentationContext
//! ```
//!
//! `ROOT` may be the year directory (`VOCdevkit/VOC2012`) or a parent of it (`VOCdevkit`, or the
//! directory holding `VOCdevkit`); the first of these that holds `JPEGImages/` is used.

use std::path::{Path, PathBuf};

use super::error::Result;
use super::layout::{parse_id_list, read_list_text, resolve_root};
use super::SegSample;

/// Where one VOC-style dataset keeps its files.
pub(crate) struct VocLayout {
    /// Dataset name for messages.
    pub dataset: &'static str,
    /// Year directory name, e.g. `VOC2012`.
    pub year_dir: &'static str,
    /// Directory of the split lists, relative to the root.
    pub lists: &'static str,
    /// Directory of the label PNGs, relative to the root.
    pub labels: &'static str,
    /// Extension of the files in `JPEGImages/` (`jpg`; `png` for the lossless fashion scenes).
    pub image_ext: &'static str,
}

/// PASCAL VOC 2012 with its own labels.
pub(crate) const VOC: VocLayout = VocLayout {
    dataset: "PASCAL VOC 2012",
    year_dir: "VOC2012",
    lists: "ImageSets/Segmentation",
    labels: "SegmentationClass",
    image_ext: "jpg",
};

/// PASCAL VOC 2012 with the SBD-augmented labels.
pub(crate) const VOC_AUG: VocLayout = VocLayout {
    dataset: "PASCAL VOC 2012 + SBD (SegmentationClassAug)",
    year_dir: "VOC2012",
    lists: "ImageSets/Segmentation",
    labels: "SegmentationClassAug",
    image_ext: "jpg",
};

/// PASCAL-Context, as written by mmsegmentation's `tools/dataset_converters/pascal_context.py`.
pub(crate) const CONTEXT: VocLayout = VocLayout {
    dataset: "PASCAL-Context (mmsegmentation layout)",
    year_dir: "VOC2010",
    lists: "ImageSets/SegmentationContext",
    labels: "SegmentationClassContext",
    image_ext: "jpg",
};

/// The fashion scenes written by `cargo xtask train-scenes` (and shipped under `samples/`):
/// VOC's layout with PNG images, in a `FashionScenes/` directory.
pub(crate) const FASHION_SCENES: VocLayout = VocLayout {
    dataset: "fashion scenes",
    year_dir: "FashionScenes",
    lists: "ImageSets/Segmentation",
    labels: "SegmentationClass",
    image_ext: "png",
};

impl VocLayout {
    /// The directory that holds `JPEGImages/`.
    pub fn resolve(&self, root: &Path) -> Result<PathBuf> {
        let nested = format!("VOCdevkit/{}", self.year_dir);
        resolve_root(
            root,
            self.dataset,
            &["", self.year_dir, &nested],
            "JPEGImages",
        )
    }

    /// The list file of a named split.
    pub fn list_path(&self, root: &Path, split: &str) -> PathBuf {
        root.join(self.lists).join(format!("{split}.txt"))
    }

    /// Samples of the list `list` (split name `split`), in list order. Labels are attached
    /// when the label directory exists, except for a split called `test`.
    pub fn samples(&self, root: &Path, list: &Path, split: &str) -> Result<Vec<SegSample>> {
        let text = read_list_text(list, split)?;
        let ids = parse_id_list(&text, list)?;
        let label_dir = root.join(self.labels);
        let labelled = label_dir.is_dir() && split != "test";
        Ok(ids
            .into_iter()
            .map(|id| SegSample {
                image_path: root
                    .join("JPEGImages")
                    .join(format!("{id}.{}", self.image_ext)),
                label_path: labelled.then(|| label_dir.join(format!("{id}.png"))),
                id,
            })
            .collect())
    }
}
