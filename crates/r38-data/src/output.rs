//! Writing output files so that no half-written file carries the final name and nothing that
//! someone else planted in the output folder is followed.
//!
//! Every writer goes through a temporary file created exclusively (`O_CREAT | O_EXCL`, so a
//! symlink or file already at its name is never opened) under an unpredictable name
//! `.<name>.XXXXXX.partial` in the target's own folder, then renamed over the target. The
//! temporary is removed on every error. `rename` replaces a symlink at the final name itself,
//! never the file it points to.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use tempfile::NamedTempFile;

/// Why an output file could not be written.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// The path names no file (it ends in `..` or is empty).
    #[error("{}: not a file path", path.display())]
    NotAFile {
        /// The path asked for.
        path: PathBuf,
    },
    /// The temporary could not be created, written, synced or renamed into place.
    #[error("{}: cannot {action}: {source}", path.display())]
    Io {
        /// The final path.
        path: PathBuf,
        /// What failed (`create a temporary file next to it`, `write`, `rename into place`).
        action: &'static str,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path, action: &'static str) -> impl FnOnce(std::io::Error) -> OutputError {
    let path = path.to_path_buf();
    move |source| OutputError::Io {
        path,
        action,
        source,
    }
}

fn temporary(path: &Path) -> Result<NamedTempFile, OutputError> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| OutputError::NotAFile { path: path.into() })?;
    let prefix = format!(".{}.", name.to_string_lossy());
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix).suffix(".partial");
    // The final file gets the usual 0666 & ~umask, not tempfile's private 0600.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o666));
    }
    builder
        .tempfile_in(dir)
        .map_err(io(path, "create a temporary file next to it"))
}

fn finish(tmp: NamedTempFile, path: &Path, sync: bool) -> Result<(), OutputError> {
    if sync {
        tmp.as_file().sync_all().map_err(io(path, "sync"))?;
    }
    // On failure the temporary comes back inside the error and is removed when dropped.
    tmp.persist(path)
        .map_err(|e| io(path, "rename into place")(e.error))?;
    if sync {
        if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            // Best effort: some file systems cannot open a folder for syncing.
            let _ = File::open(dir).and_then(|d| d.sync_all());
        }
    }
    Ok(())
}

/// Writes `path` through `write`, which gets the open temporary file.
///
/// `E` is the caller's error type; it only needs to take an [`OutputError`].
pub fn write_atomically<E: From<OutputError>>(
    path: &Path,
    write: impl FnOnce(&mut File) -> Result<(), E>,
) -> Result<(), E> {
    let mut tmp = temporary(path)?;
    write(tmp.as_file_mut())?;
    tmp.as_file_mut().flush().map_err(io(path, "write"))?;
    Ok(finish(tmp, path, false)?)
}

/// Writes `path` through `write`, which gets the path of the temporary file, for writers that
/// only take a path. The temporary exists (created exclusively) when `write` opens it.
pub fn write_atomically_path<E: From<OutputError>>(
    path: &Path,
    write: impl FnOnce(&Path) -> Result<(), E>,
) -> Result<(), E> {
    let tmp = temporary(path)?;
    write(tmp.path())?;
    Ok(finish(tmp, path, false)?)
}

/// Replaces `path` with `contents` (not synced; see [`write_durably`]).
pub fn write_bytes_atomically(path: &Path, contents: &[u8]) -> Result<(), OutputError> {
    let mut tmp = temporary(path)?;
    tmp.write_all(contents).map_err(io(path, "write"))?;
    finish(tmp, path, false)
}

/// Replaces `path` with `contents`, synced to disk with its folder before this returns (for
/// pointers such as a checkpoint's `latest` that must survive a power cut).
pub fn write_durably(path: &Path, contents: &[u8]) -> Result<(), OutputError> {
    let mut tmp = temporary(path)?;
    tmp.write_all(contents).map_err(io(path, "write"))?;
    finish(tmp, path, true)
}

/// Whether `name` is one of the temporaries this module creates (`.<name>.XXXXXX.partial`),
/// for clean-ups of what a killed process left.
pub fn is_temporary(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(".partial")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leftovers(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| is_temporary(n))
            .collect()
    }

    #[test]
    fn writes_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("a.txt");
        write_atomically::<OutputError>(&out, |f| f.write_all(b"one").map_err(io(&out, "write")))
            .unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"one");
        let failed: Result<(), OutputError> = write_atomically_path(&out, |tmp| {
            std::fs::write(tmp, b"half").unwrap();
            Err(OutputError::NotAFile { path: tmp.into() })
        });
        assert!(failed.is_err());
        assert_eq!(std::fs::read(&out).unwrap(), b"one");
        assert!(leftovers(dir.path()).is_empty());
        write_durably(&out, b"two").unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"two");
        assert!(write_durably(Path::new("/"), b"x").is_err());
    }

    #[cfg(unix)]
    #[test]
    fn planted_symlinks_are_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        // The old predictable temporary names, planted as links to the victim.
        for n in [
            format!(".out.npy.{}.partial", std::process::id()),
            ".out.npy.partial".into(),
        ] {
            std::os::unix::fs::symlink(&victim, dir.path().join(n)).unwrap();
        }
        let out = dir.path().join("out.npy");
        write_atomically_path::<OutputError>(&out, |tmp| {
            std::fs::write(tmp, b"result").map_err(io(&out, "write"))
        })
        .unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert_eq!(std::fs::read(&out).unwrap(), b"result");
        // A link at the final name is replaced, its target untouched.
        let link = dir.path().join("link.png");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        write_durably(&link, b"new").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert!(!std::fs::symlink_metadata(&link).unwrap().is_symlink());
    }
}
