//! File-system helpers shared by the dataset readers: root resolution, sorted directory
//! listings and list files.

use std::path::{Path, PathBuf};

use super::error::{io_error, DatasetError, Result};

/// Returns the first of `root/<candidate>` that holds the directory `marker`.
pub(crate) fn resolve_root(
    root: &Path,
    dataset: &str,
    candidates: &[&str],
    marker: &str,
) -> Result<PathBuf> {
    let not_root = |detail: String| DatasetError::RootNotFound {
        path: root.into(),
        dataset: dataset.into(),
        detail,
    };
    if !root.exists() {
        return Err(not_root("the directory does not exist".into()));
    }
    if !root.is_dir() {
        return Err(not_root("not a directory".into()));
    }
    for candidate in candidates {
        let dir = if candidate.is_empty() {
            root.to_path_buf()
        } else {
            root.join(candidate)
        };
        if dir.join(marker).is_dir() {
            return Ok(dir);
        }
    }
    let looked: Vec<String> = candidates
        .iter()
        .map(|c| {
            if c.is_empty() {
                format!("{marker}/")
            } else {
                format!("{c}/{marker}/")
            }
        })
        .collect();
    Err(not_root(format!("found none of {}", looked.join(", "))))
}

/// One entry of a directory listing.
pub(crate) struct Entry {
    pub name: String,
    pub path: PathBuf,
    pub is_dir: bool,
}

/// The entries of `dir` sorted by name (byte order), hidden entries (`.` first) left out.
/// Names that are not UTF-8 are compared and reported lossily.
pub(crate) fn list_dir(dir: &Path) -> Result<Vec<Entry>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| io_error(dir, e))? {
        let entry = entry.map_err(|e| io_error(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        // Follow symbolic links, as datasets are often assembled from links.
        let is_dir = path.is_dir();
        out.push(Entry { name, path, is_dir });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Names of the sub-directories of `dir` (empty if it cannot be read).
pub(crate) fn subdirs(dir: &Path) -> Vec<String> {
    list_dir(dir)
        .map(|v| v.into_iter().filter(|e| e.is_dir).map(|e| e.name).collect())
        .unwrap_or_default()
}

/// Stems of the `*.txt` files in `dir` (empty if it cannot be read).
pub(crate) fn txt_stems(dir: &Path) -> Vec<String> {
    list_dir(dir)
        .map(|v| {
            v.into_iter()
                .filter(|e| !e.is_dir)
                .filter_map(|e| e.name.strip_suffix(".txt").map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Largest list file read, 64 MiB: the ImageNet training list (1.28M lines) is about 40 MiB;
/// a larger "list" is not one, and is refused before it is read.
pub const MAX_LIST_BYTES: u64 = 64 << 20;

/// Longest sample id, in bytes (a file name on common file systems).
pub const MAX_ID_BYTES: usize = 255;

/// Reads the text of a list file; a missing file is [`DatasetError::SplitNotFound`] for
/// `split`, with the `*.txt` stems next to it as the available splits. Files over
/// [`MAX_LIST_BYTES`] and text that is not UTF-8 are refused, naming the file.
pub(crate) fn read_list_text(path: &Path, split: &str) -> Result<String> {
    use std::io::Read;
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(DatasetError::SplitNotFound {
                path: path.into(),
                split: split.into(),
                available: path.parent().map(txt_stems).unwrap_or_default(),
            })
        }
        Err(e) => return Err(io_error(path, e)),
    };
    // Read one byte past the limit to tell "at the limit" from "over it", whatever the
    // metadata says (a FIFO or /dev/zero has no honest length).
    let mut bytes = Vec::new();
    file.take(MAX_LIST_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| io_error(path, e))?;
    if bytes.len() as u64 > MAX_LIST_BYTES {
        return Err(DatasetError::Layout {
            path: path.into(),
            detail: format!("list file larger than the limit of {MAX_LIST_BYTES} bytes"),
        });
    }
    String::from_utf8(bytes).map_err(|e| DatasetError::Layout {
        path: path.into(),
        detail: format!(
            "list file is not UTF-8 text (byte {})",
            e.utf8_error().valid_up_to()
        ),
    })
}

/// Refuses split names that are not plain names: a split becomes a path component
/// (`ImageSets/Segmentation/{split}.txt`, `leftImg8bit/{split}/`), so `../..` or `/etc` would
/// leave the dataset root.
pub(crate) fn check_split_name(root: &Path, split: &str) -> Result<()> {
    let plain = !split.is_empty()
        && split.len() <= MAX_ID_BYTES
        && split != "."
        && split != ".."
        && !split.starts_with('.')
        && !split
            .chars()
            .any(|c| c == '/' || c == '\\' || c.is_control());
    if plain {
        Ok(())
    } else {
        Err(DatasetError::InvalidArgument(format!(
            "{}: split {:?} is not a plain name (no path separators, no leading dot, at most \
             {MAX_ID_BYTES} bytes)",
            root.display(),
            split.escape_debug().to_string()
        )))
    }
}

/// The stem of a path-like token: its last component without the extension
/// (`/JPEGImages/2007_000032.jpg` gives `2007_000032`).
pub(crate) fn token_stem(token: &str) -> &str {
    let name = token.rsplit(['/', '\\']).next().unwrap_or(token);
    match name.rsplit_once('.') {
        Some((stem, _)) if !stem.is_empty() => stem,
        _ => name,
    }
}

/// Parses a sample-id list: one sample per line, blank lines and lines starting with `#`
/// skipped; the id is the first whitespace-separated token, or its stem when the token is a
/// path (`2007_000032`, `/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png`
/// and `2007_000032 1` all give `2007_000032`).
pub fn parse_id_list(text: &str, path: &Path) -> Result<Vec<String>> {
    let mut ids = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let token = line.split_whitespace().next().unwrap_or(line);
        let id = token_stem(token);
        let detail = if id.is_empty() || id == "." || id == ".." {
            Some(format!("no sample id in {line:?}"))
        } else if id.len() > MAX_ID_BYTES {
            Some(format!("sample id longer than {MAX_ID_BYTES} bytes"))
        } else if id.chars().any(char::is_control) {
            Some(format!(
                "control character in sample id {:?}",
                id.escape_debug().to_string()
            ))
        } else {
            None
        };
        if let Some(detail) = detail {
            return Err(DatasetError::ListFormat {
                path: path.into(),
                line: i + 1,
                detail,
            });
        }
        ids.push(id.to_owned());
    }
    if ids.is_empty() {
        return Err(DatasetError::Empty {
            path: path.into(),
            detail: "the list holds no sample ids".into(),
        });
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stems() {
        assert_eq!(token_stem("2007_000032"), "2007_000032");
        assert_eq!(token_stem("/JPEGImages/2007_000032.jpg"), "2007_000032");
        assert_eq!(token_stem("a\\b\\c.png"), "c");
        assert_eq!(token_stem(".hidden"), ".hidden");
    }

    #[test]
    fn id_lists() {
        let text = "# comment\n2007_000032\n\n/JPEGImages/2007_000033.jpg /Seg/2007_000033.png\n 2007_000034 1\n";
        let ids = parse_id_list(text, Path::new("l.txt")).unwrap();
        assert_eq!(ids, ["2007_000032", "2007_000033", "2007_000034"]);
        assert!(parse_id_list("\n#x\n", Path::new("l.txt")).is_err());
        let e = parse_id_list("a\nb\x1b[2Jc\n", Path::new("l.txt")).unwrap_err();
        assert!(
            e.to_string().starts_with("l.txt:2: control character"),
            "{e}"
        );
        assert!(parse_id_list(&"x".repeat(300), Path::new("l.txt")).is_err());
        assert!(parse_id_list("..\n", Path::new("l.txt")).is_err());
    }

    #[test]
    fn split_names() {
        let root = Path::new("/data/voc");
        for ok in ["train", "val", "train+", "train_aug"] {
            check_split_name(root, ok).unwrap();
        }
        for bad in [
            "", ".", "..", "../../..", "a/b", "/etc", "a\\b", ".hidden", "a\nb",
        ] {
            let e = check_split_name(root, bad).unwrap_err().to_string();
            assert!(
                e.contains("/data/voc") && e.contains("not a plain name"),
                "{e}"
            );
        }
    }
}
