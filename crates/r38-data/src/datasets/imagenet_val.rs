//! The ImageNet-1k (ILSVRC-2012) validation set for classification.
//!
//! Two layouts are read; class indices are the crate's [`crate::imagenet`] order (sorted
//! synsets, `n01440764` = 0):
//!
//! * **class folders**: `ROOT/val/n01440764/*.JPEG`, one folder per synset (the layout of
//!   torchvision's `ImageFolder`); a sub-folder that is not an ImageNet-1k synset is an error;
//! * **flat files + label file**: `ROOT/val/ILSVRC2012_val_00000001.JPEG`, ..., with the labels
//!   in a text file. Each image is looked up by its file stem; an image without an entry is an
//!   error, entries without an image are ignored (so a subset of the images can be used).
//!
//! Label-file formats, detected from the content:
//!
//! | format | lines | example |
//! |---|---|---|
//! | Kaggle `LOC_val_solution.csv` | header `ImageId,PredictionString`, then `id,synset x0 y0 x1 y1 [synset ...]`; the first synset is the label | `ILSVRC2012_val_00008726,n02119789 255 142 454 329` |
//! | `name label` (Caffe's `val.txt`) | the file name (or path, or stem) and the class index `0..1000` in sorted-synset order, or a synset | `ILSVRC2012_val_00000001.JPEG 65` |
//! | MXNet `.lst` | tab-separated `index`, `label`, `path` | `0\t65\tILSVRC2012_val_00000001.JPEG` |
//!
//! Blank lines and `#` comments are skipped. The devkit's
//! `ILSVRC2012_validation_ground_truth.txt` (one number per line) is **not** supported: its ids
//! follow the devkit's `meta.mat` order, not the sorted-synset order.
//!
//! [`ImageNetVal::open`] picks the layout: class folders if `ROOT/val` (or `ROOT` itself when
//! it has no `val/`) holds synset folders, otherwise the first label file found among
//! `LOC_val_solution.csv` and `val.txt` in `ROOT` and in the image directory.
//! Samples are sorted by path.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::error::{DatasetError, Result};
use super::layout::{list_dir, token_stem};
use crate::imagenet::{imagenet_index_of, IMAGENET_NUM_CLASSES};

/// Which layout an [`ImageNetVal`] was read from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ImageNetValLayout {
    /// One folder per synset.
    ClassFolders,
    /// Flat image files with labels from this file.
    LabelFile(PathBuf),
}

/// The ImageNet validation images with their class indices (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageNetVal {
    image_dir: PathBuf,
    layout: ImageNetValLayout,
    samples: Vec<(PathBuf, usize)>,
}

/// Label-file names that [`ImageNetVal::open`] looks for.
const LABEL_FILES: [&str; 2] = ["LOC_val_solution.csv", "val.txt"];

fn is_synset_name(name: &str) -> bool {
    name.len() == 9 && name.starts_with('n') && name[1..].bytes().all(|b| b.is_ascii_digit())
}

fn is_image_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    [".jpeg", ".jpg", ".png"].iter().any(|e| lower.ends_with(e))
}

impl ImageNetVal {
    /// Detects the layout under `root` (see the module docs) and reads it.
    pub fn open(root: impl AsRef<Path>) -> Result<Self> {
        let root = root.as_ref();
        if !root.is_dir() {
            return Err(DatasetError::RootNotFound {
                path: root.into(),
                dataset: "ImageNet val".into(),
                detail: if root.exists() {
                    "not a directory".into()
                } else {
                    "the directory does not exist".into()
                },
            });
        }
        let image_dir = if root.join("val").is_dir() {
            root.join("val")
        } else {
            root.to_path_buf()
        };
        let entries = list_dir(&image_dir)?;
        if entries.iter().any(|e| e.is_dir && is_synset_name(&e.name)) {
            return Self::from_class_folders(&image_dir);
        }
        let mut looked = Vec::new();
        for dir in [root, image_dir.as_path()] {
            for name in LABEL_FILES {
                let candidate = dir.join(name);
                if candidate.is_file() {
                    return Self::from_label_file(&image_dir, &candidate);
                }
                if !looked.contains(&candidate) {
                    looked.push(candidate);
                }
            }
        }
        Err(DatasetError::RootNotFound {
            path: root.into(),
            dataset: "ImageNet val".into(),
            detail: format!(
                "{} holds no synset folders (n01440764/, ...), and none of {} exists",
                image_dir.display(),
                looked
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        })
    }

    /// Reads `dir/<synset>/*.{JPEG,jpg,png}`.
    pub fn from_class_folders(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let mut samples = Vec::new();
        let entries = list_dir(dir)?;
        for folder in entries.into_iter().filter(|e| e.is_dir) {
            let index = imagenet_index_of(&folder.name).ok_or_else(|| DatasetError::Layout {
                path: folder.path.clone(),
                detail: format!(
                    "folder {:?} is not an ImageNet-1k synset (expected names like n01440764)",
                    folder.name
                ),
            })?;
            for file in list_dir(&folder.path)? {
                if !file.is_dir && is_image_name(&file.name) {
                    samples.push((file.path, index));
                }
            }
        }
        Self::finish(dir, ImageNetValLayout::ClassFolders, samples)
    }

    /// Reads the flat image files of `image_dir` with labels from `label_file` (see the
    /// module docs for the formats).
    pub fn from_label_file(
        image_dir: impl AsRef<Path>,
        label_file: impl AsRef<Path>,
    ) -> Result<Self> {
        let (image_dir, label_file) = (image_dir.as_ref(), label_file.as_ref());
        if !image_dir.is_dir() {
            return Err(DatasetError::RootNotFound {
                path: image_dir.into(),
                dataset: "ImageNet val".into(),
                detail: "the image directory does not exist".into(),
            });
        }
        let text = super::layout::read_list_text(label_file, "val")?;
        let labels = parse_label_file(&text, label_file)?;
        let mut samples = Vec::new();
        for file in list_dir(image_dir)? {
            if file.is_dir || !is_image_name(&file.name) {
                continue;
            }
            let key = token_stem(&file.name);
            let index = labels.get(key).ok_or_else(|| DatasetError::Layout {
                path: file.path.clone(),
                detail: format!(
                    "no entry {key:?} in the label file {}",
                    label_file.display()
                ),
            })?;
            samples.push((file.path, *index));
        }
        Self::finish(
            image_dir,
            ImageNetValLayout::LabelFile(label_file.into()),
            samples,
        )
    }

    fn finish(
        dir: &Path,
        layout: ImageNetValLayout,
        mut samples: Vec<(PathBuf, usize)>,
    ) -> Result<Self> {
        if samples.is_empty() {
            return Err(DatasetError::Empty {
                path: dir.into(),
                detail: "no *.JPEG / *.jpg / *.png images".into(),
            });
        }
        samples.sort();
        Ok(ImageNetVal {
            image_dir: dir.into(),
            layout,
            samples,
        })
    }

    /// `(image path, class index)` pairs, sorted by path.
    pub fn samples(&self) -> &[(PathBuf, usize)] {
        &self.samples
    }

    /// The number of images.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether there are no images (never true for a successfully opened set).
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// The directory of the images (or of the class folders).
    pub fn image_dir(&self) -> &Path {
        &self.image_dir
    }

    /// The layout read.
    pub fn layout(&self) -> &ImageNetValLayout {
        &self.layout
    }
}

/// Parses a label file into `stem -> class index`.
fn parse_label_file(text: &str, path: &Path) -> Result<HashMap<String, usize>> {
    let bad = |line: usize, detail: String| DatasetError::ListFormat {
        path: path.into(),
        line,
        detail,
    };
    let class_of = |token: &str, line: usize| -> Result<usize> {
        if let Ok(i) = token.parse::<usize>() {
            if i < IMAGENET_NUM_CLASSES {
                return Ok(i);
            }
            return Err(bad(line, format!("class index {i} is not below 1000")));
        }
        imagenet_index_of(token).ok_or_else(|| {
            bad(
                line,
                format!("{token:?} is neither a class index 0..1000 nor an ImageNet-1k synset"),
            )
        })
    };
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
        .peekable();
    let csv = lines
        .peek()
        .is_some_and(|(_, l)| l.to_ascii_lowercase().starts_with("imageid") && l.contains(','));
    if csv {
        lines.next();
    }
    let mut map: HashMap<String, usize> = HashMap::new();
    for (n, line) in lines {
        let (name, class) = if csv {
            let (id, prediction) = line.split_once(',').ok_or_else(|| {
                bad(
                    n,
                    format!("expected `ImageId,PredictionString`, got {line:?}"),
                )
            })?;
            let synset = prediction
                .split_whitespace()
                .next()
                .ok_or_else(|| bad(n, format!("no synset in {line:?}")))?;
            (id.trim(), class_of(synset, n)?)
        } else {
            let fields: Vec<&str> = line.split('\t').map(str::trim).collect();
            if fields.len() == 3 && fields[0].parse::<u64>().is_ok() {
                // MXNet .lst: index, label (possibly written as a float), path.
                let label = fields[1];
                let label = label
                    .parse::<f64>()
                    .ok()
                    .filter(|v| v.fract() == 0.0 && *v >= 0.0)
                    .map(|v| format!("{}", v as u64))
                    .unwrap_or_else(|| label.to_owned());
                (fields[2], class_of(&label, n)?)
            } else {
                let tokens: Vec<&str> = line.split_whitespace().collect();
                match tokens[..] {
                    [name, label] => (name, class_of(label, n)?),
                    [_] => {
                        return Err(bad(
                            n,
                            format!(
                                "expected `name label`, got {line:?} (one label per line, as in \
                                 the devkit's ILSVRC2012_validation_ground_truth.txt, is not \
                                 supported: its ids are in devkit order)"
                            ),
                        ))
                    }
                    _ => return Err(bad(n, format!("expected `name label`, got {line:?}"))),
                }
            }
        };
        let key = token_stem(name).to_owned();
        if let Some(old) = map.insert(key.clone(), class) {
            if old != class {
                return Err(bad(
                    n,
                    format!("{key:?} is labelled both {old} and {class}"),
                ));
            }
        }
    }
    if map.is_empty() {
        return Err(DatasetError::Empty {
            path: path.into(),
            detail: "the label file holds no entries".into(),
        });
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_formats() {
        let p = Path::new("l");
        let csv = "ImageId,PredictionString\nILSVRC2012_val_00000002,n01440764 1 2 3 4 n01440764 5 6 7 8\n";
        let m = parse_label_file(csv, p).unwrap();
        assert_eq!(m["ILSVRC2012_val_00000002"], 0);
        let plain = "ILSVRC2012_val_00000001.JPEG 65\nval/ILSVRC2012_val_00000003.JPEG n15075141\n";
        let m = parse_label_file(plain, p).unwrap();
        assert_eq!(
            (m["ILSVRC2012_val_00000001"], m["ILSVRC2012_val_00000003"]),
            (65, 999)
        );
        let lst = "0\t65.000000\tILSVRC2012_val_00000001.JPEG\n";
        assert_eq!(
            parse_label_file(lst, p).unwrap()["ILSVRC2012_val_00000001"],
            65
        );
        for bad in ["x 1000\n", "x n00000000\n", "490\n", "a 1\na 2\n", ""] {
            assert!(parse_label_file(bad, p).is_err(), "{bad:?}");
        }
        assert!(parse_label_file("a 1\na 1\n", p).is_ok());
    }
}
