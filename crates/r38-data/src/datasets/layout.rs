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

/// Reads the text of a list file; a missing file is [`DatasetError::SplitNotFound`] for
/// `split`, with the `*.txt` stems next to it as the available splits.
pub(crate) fn read_list_text(path: &Path, split: &str) -> Result<String> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(DatasetError::SplitNotFound {
            path: path.into(),
            split: split.into(),
            available: path.parent().map(txt_stems).unwrap_or_default(),
        }),
        Err(e) => Err(io_error(path, e)),
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
pub(crate) fn parse_id_list(text: &str, path: &Path) -> Result<Vec<String>> {
    let mut ids = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let token = line.split_whitespace().next().unwrap_or(line);
        let id = token_stem(token);
        if id.is_empty() {
            return Err(DatasetError::ListFormat {
                path: path.into(),
                line: i + 1,
                detail: format!("no sample id in {line:?}"),
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
    }
}
