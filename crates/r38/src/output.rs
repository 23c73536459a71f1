//! Writing files so that nothing the user made is lost and no half-written file ever carries
//! its final name.

use crate::error::{Error, Result};
use std::io::Write;
use std::path::Path;

/// Refuse to replace `path` unless `overwrite`.
pub fn check_overwrite(path: &Path, overwrite: bool) -> Result<()> {
    if path.exists() && !overwrite {
        return Err(Error::Invalid(format!(
            "{} exists; pass --overwrite to replace it",
            path.display()
        )));
    }
    Ok(())
}

/// Write `path` through a temporary file in its folder, then rename it into place.
///
/// The temporary is created exclusively under an unpredictable name (never through a link
/// someone planted) and is removed if `write` fails.
pub fn write_atomically<E>(
    path: &Path,
    write: impl FnOnce(&Path) -> std::result::Result<(), E>,
) -> std::result::Result<(), E>
where
    E: From<Error>,
{
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| Error::Invalid(format!("{}: not a file path", path.display())))?;
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{}.", name.to_string_lossy()))
        .suffix(".partial")
        .tempfile_in(dir)
        .map_err(|e| Error::io(path, e))?;
    write(tmp.path())?;
    tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
    Ok(())
}

/// [`write_atomically`] for bytes in memory.
pub fn write_bytes_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomically(path, |tmp| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(tmp)
            .map_err(|e| Error::io(path, e))?;
        f.write_all(bytes).map_err(|e| Error::io(path, e))
    })
}
