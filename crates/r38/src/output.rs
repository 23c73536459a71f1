//! Writing files so that nothing the user made is lost and no half-written file ever carries
//! its final name: [`r38_data::output`]'s exclusive temporaries, for the facade's callers.

use crate::error::{Error, Result};
use std::path::Path;

pub use r38_data::output::{is_temporary, OutputError};

/// Where r38 keeps what it can make again (evaluation caches, the demo's files, toolkits):
/// `$XDG_CACHE_HOME/r38`, else `~/.cache/r38`, else `r38` in the temporary folder.
pub fn cache_root() -> std::path::PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("r38")
}

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
pub fn write_atomically<E: From<Error>>(
    path: &Path,
    write: impl FnOnce(&Path) -> std::result::Result<(), E>,
) -> std::result::Result<(), E> {
    r38_data::output::write_atomically_path(path, |tmp| write(tmp).map_err(Failure::Write)).map_err(
        |f| match f {
            Failure::Write(e) => e,
            Failure::Output(e) => E::from(Error::Output(e)),
        },
    )
}

/// The writer's own error, or the temporary's.
enum Failure<E> {
    Write(E),
    Output(OutputError),
}

impl<E> From<OutputError> for Failure<E> {
    fn from(e: OutputError) -> Self {
        Failure::Output(e)
    }
}

/// [`write_atomically`] for bytes in memory.
pub fn write_bytes_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    Ok(r38_data::output::write_bytes_atomically(path, bytes)?)
}
