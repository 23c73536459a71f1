//! The authors' six released weight files (reference §4), so that a loaded file can be
//! recognised by its MD5 and its architecture, head and published results reported.
//!
//! The table lives in `crates/r38-model/released.json` (linked from `weights/released.json`)
//! and is compiled in.

use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use crate::config::Arch;

/// The head a released file carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReleasedHead {
    /// BN + ReLU, global average pooling and `linear{C}` (ImageNet classifiers).
    Cls,
    /// The 2-conv segmentation head `conv6a` + `linear{C}`.
    Seg,
}

/// A result the authors published for a released file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PublishedResult {
    /// What is measured, with its unit (`top-1 error %`, `mIoU %`, ...).
    pub metric: String,
    /// The published value.
    pub value: f64,
    /// The evaluation protocol (split, input size, flipping, ...).
    pub protocol: String,
}

/// One of the authors' released weight files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReleasedFile {
    /// The file name as released.
    pub file_name: String,
    /// Lower-case hex MD5 from the authors' `models/checksum.md5`.
    pub md5: String,
    /// The architecture.
    pub arch: Arch,
    /// Output stride the file was trained and evaluated at.
    pub output_stride: usize,
    /// Classification or segmentation head.
    pub head: ReleasedHead,
    /// Number of classes of the head.
    pub classes: usize,
    /// The benchmark the file belongs to.
    pub dataset: String,
    /// What it was trained on.
    pub training_data: String,
    /// The authors' published results for it.
    pub results: Vec<PublishedResult>,
    /// Provenance, availability and caveats.
    pub notes: Vec<String>,
}

#[derive(Deserialize)]
struct Table {
    files: Vec<ReleasedFile>,
}

const RELEASED_JSON: &str = include_str!("../../released.json");

/// All six released files, parsed once from the embedded table.
pub fn released_files() -> &'static [ReleasedFile] {
    static FILES: OnceLock<Vec<ReleasedFile>> = OnceLock::new();
    FILES.get_or_init(|| match serde_json::from_str::<Table>(RELEASED_JSON) {
        Ok(t) => t.files,
        // The table is compiled in and checked by a unit test; an empty list is a safe fallback.
        Err(e) => {
            tracing::error!("released.json is invalid: {e}");
            Vec::new()
        }
    })
}

/// The released file with this MD5 (case-insensitive hex), if any.
pub fn find_by_md5(md5: &str) -> Option<&'static ReleasedFile> {
    let md5 = md5.trim();
    released_files()
        .iter()
        .find(|f| f.md5.eq_ignore_ascii_case(md5))
}

/// The released file with this file name (the last path component is compared).
pub fn find_by_name(name: &str) -> Option<&'static ReleasedFile> {
    let base = std::path::Path::new(name)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or(name);
    released_files().iter().find(|f| f.file_name == base)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_parses_and_is_consistent() {
        let t: Table = serde_json::from_str(RELEASED_JSON).unwrap();
        assert_eq!(t.files.len(), 6);
        let files = released_files();
        assert_eq!(files.len(), 6);
        for f in files {
            assert_eq!(f.md5.len(), 32);
            assert!(f
                .md5
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
            assert!(
                !f.results.is_empty() && !f.notes.is_empty(),
                "{}",
                f.file_name
            );
            // The file name encodes arch, class count and stride.
            let arch = if f.arch == Arch::A {
                "rna-a_"
            } else {
                "rna-a1_"
            };
            assert!(f.file_name.contains(arch), "{}", f.file_name);
            assert!(f.file_name.contains(&format!("cls{}", f.classes)));
            assert_eq!(f.file_name.contains("_s8_"), f.output_stride == 8);
            assert_eq!(f.head == ReleasedHead::Seg, f.output_stride == 8);
            assert_eq!(find_by_name(&f.file_name), Some(f));
        }
    }

    #[test]
    fn md5_lookup() {
        let a1 = find_by_md5("ff21f45d6bf03284100dcbec571edfad").unwrap();
        assert_eq!(a1.file_name, "ilsvrc-cls_rna-a1_cls1000_ep-0001.params");
        assert_eq!(a1.arch, Arch::A1);
        assert_eq!(a1.output_stride, 32);
        assert_eq!(a1.head, ReleasedHead::Cls);
        assert_eq!(a1.results[0].value, 19.54);
        assert_eq!(find_by_md5("FF21F45D6BF03284100DCBEC571EDFAD"), Some(a1));
        let ade = find_by_md5("1faf29850bfa194678f0b8e1cbbffa98").unwrap();
        assert_eq!((ade.classes, ade.head), (150, ReleasedHead::Seg));
        assert_eq!(find_by_md5("d41d8cd98f00b204e9800998ecf8427e"), None);
        assert_eq!(
            find_by_name("/some/dir/voc_rna-a1_cls21_s8_coco_ep-0001.params").map(|f| &f.md5[..]),
            Some("328c0eca0c45b6345ada2f95edce68d4")
        );
        assert_eq!(find_by_name("model.params"), None);
    }
}
