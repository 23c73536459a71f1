//! The demo's models and samples, compiled into the binary so that `r38 demo` works wherever
//! `cargo install` put it, not only in a clone.

use anyhow::{Context, Result};
use std::path::PathBuf;

macro_rules! shipped {
    ($($path:literal),* $(,)?) => {
        &[$(($path, include_bytes!(concat!("../../../", $path)) as &[u8])),*]
    };
}

/// Repository-relative path and contents of every shipped file the demo reads.
const SHIPPED: &[(&str, &[u8])] = shipped![
    "weights/fashion-mnist-classifier.safetensors",
    "weights/fashion-scenes-segmenter.safetensors",
    "samples/fashion-items/00000-ankle-boot.png",
    "samples/fashion-items/00001-pullover.png",
    "samples/fashion-items/00002-trouser.png",
    "samples/fashion-items/00004-shirt.png",
    "samples/fashion-items/00006-coat.png",
    "samples/fashion-items/00008-sandal.png",
    "samples/fashion-items/00009-sneaker.png",
    "samples/fashion-items/00013-dress.png",
    "samples/fashion-items/00018-bag.png",
    "samples/fashion-items/00019-t-shirt-top.png",
    "samples/fashion-scenes/ImageSets/Segmentation/val.txt",
    "samples/fashion-scenes/JPEGImages/scene-00000.png",
    "samples/fashion-scenes/JPEGImages/scene-00001.png",
    "samples/fashion-scenes/JPEGImages/scene-00002.png",
    "samples/fashion-scenes/JPEGImages/scene-00003.png",
    "samples/fashion-scenes/JPEGImages/scene-00004.png",
    "samples/fashion-scenes/JPEGImages/scene-00005.png",
    "samples/fashion-scenes/JPEGImages/scene-00006.png",
    "samples/fashion-scenes/JPEGImages/scene-00007.png",
    "samples/fashion-scenes/SegmentationClass/scene-00000.png",
    "samples/fashion-scenes/SegmentationClass/scene-00001.png",
    "samples/fashion-scenes/SegmentationClass/scene-00002.png",
    "samples/fashion-scenes/SegmentationClass/scene-00003.png",
    "samples/fashion-scenes/SegmentationClass/scene-00004.png",
    "samples/fashion-scenes/SegmentationClass/scene-00005.png",
    "samples/fashion-scenes/SegmentationClass/scene-00006.png",
    "samples/fashion-scenes/SegmentationClass/scene-00007.png",
];

/// A folder holding `weights/` and `samples/` as shipped: written once under the user's cache
/// (`$XDG_CACHE_HOME/r38/demo-<digest>`), then reused.
pub fn shipped_root() -> Result<PathBuf> {
    let mut all = Vec::new();
    for (path, bytes) in SHIPPED {
        all.extend_from_slice(path.as_bytes());
        all.extend_from_slice(bytes);
    }
    let digest = r38::model::weights::md5_hex(&all);
    let root = r38::output::cache_root().join(format!("demo-{}", &digest[..12]));
    for (path, bytes) in SHIPPED {
        let target = root.join(path);
        if std::fs::read(&target).is_ok_and(|b| b == *bytes) {
            continue;
        }
        let dir = target.parent().context("shipped paths have a folder")?;
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{}: cannot create", dir.display()))?;
        r38::output::write_bytes_atomically(&target, bytes)?;
    }
    Ok(root)
}
