//! Weight files named `hf://OWNER/REPO/PATH/IN/REPO[@REVISION]`, resolved through the
//! Hugging Face Hub's standard cache and, with the default feature `hub`, downloaded with the
//! `hf-hub` crate's synchronous API (ureq; no async runtime).
//!
//! The cache follows `huggingface_hub`'s conventions, so files fetched by Python tools are
//! found and files fetched here are seen by them:
//!
//! * the cache directory is `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
//!   `~/.cache/huggingface/hub`;
//! * a model repository lives in `models--OWNER--REPO/`, `refs/<revision>` holds the commit
//!   hash a branch or tag points to, and `snapshots/<hash>/<path>` is the file;
//! * with `HF_HUB_OFFLINE=1` nothing is downloaded: a file missing from the cache is an error
//!   that names the repository, file, revision and cache directory.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let path = r38_model::hub::resolve("hf://owner/repo/model.safetensors@v1".as_ref())?;
//! let file = r38_model::weights::load(&path)?;
//! # Ok(()) }
//! ```

use std::fmt;
use std::path::{Path, PathBuf};

/// The prefix that marks a Hub file.
pub const SCHEME: &str = "hf://";

/// The revision used when a name gives none.
pub const DEFAULT_REVISION: &str = "main";

/// Why an `hf://` name could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// The name does not have the form `hf://OWNER/REPO/PATH[@REVISION]`.
    #[error("`{name}`: {reason}; expected hf://OWNER/REPO/PATH/IN/REPO[@REVISION]")]
    Malformed {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Offline (`HF_HUB_OFFLINE`) and the file is not in the cache.
    #[error(
        "{file}: not in the Hugging Face cache and HF_HUB_OFFLINE is set, so it cannot be \
         downloaded (repo {repo}, file {path}, revision {revision}; looked in {cache}). \
         Unset HF_HUB_OFFLINE to download it, or fetch it first with \
         `huggingface-cli download {repo} {path} --revision {revision}`",
        repo = file.repo,
        path = file.path,
        revision = file.revision,
        cache = cache.display()
    )]
    NotCached {
        /// The file asked for.
        file: HubFile,
        /// The repository's folder in the cache that was looked at.
        cache: PathBuf,
    },
    /// Not in the cache, and this build cannot download.
    #[error(
        "{file}: not in the Hugging Face cache (looked in {cache}), and this build of r38 \
         has no downloader (cargo feature `hub` is off)",
        cache = cache.display()
    )]
    NoDownloader {
        /// The file asked for.
        file: HubFile,
        /// The repository's folder in the cache that was looked at.
        cache: PathBuf,
    },
    /// The download failed.
    #[error("{file}: download from the Hugging Face Hub failed: {message}")]
    Download {
        /// The file asked for.
        file: HubFile,
        /// hf-hub's error, as text (its types are not part of this crate's API).
        message: String,
    },
}

/// One file in a Hub model repository, at a revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubFile {
    /// `OWNER/REPO`.
    pub repo: String,
    /// The path inside the repository, `/`-separated.
    pub path: String,
    /// Branch, tag or commit hash (default `main`).
    pub revision: String,
}

impl fmt::Display for HubFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME}{}/{}", self.repo, self.path)?;
        if self.revision != DEFAULT_REVISION {
            write!(f, "@{}", self.revision)?;
        }
        Ok(())
    }
}

/// Whether `path` is written as an `hf://` name.
pub fn is_hub_name(path: &Path) -> bool {
    path.to_str().is_some_and(|s| s.starts_with(SCHEME))
}

fn valid_repo_part(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("empty owner or repository name".into());
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(format!(
            "`{s}`: owner and repository names use only letters, digits, `-`, `_` and `.`"
        ));
    }
    if s.contains("--") || s.contains("..") || s.starts_with(['-', '.']) || s.ends_with(['-', '.'])
    {
        return Err(format!(
            "`{s}`: `--` and `..` and a leading or trailing `-` or `.` are not allowed"
        ));
    }
    Ok(())
}

impl HubFile {
    /// Parse `hf://OWNER/REPO/PATH/IN/REPO[@REVISION]`.
    pub fn parse(name: &str) -> Result<Self, HubError> {
        let bad = |reason: &str| HubError::Malformed {
            name: name.into(),
            reason: reason.into(),
        };
        let rest = name
            .strip_prefix(SCHEME)
            .ok_or_else(|| bad("does not start with hf://"))?;
        let (rest, revision) = match rest.rsplit_once('@') {
            Some((r, rev)) => (r, rev),
            None => (rest, DEFAULT_REVISION),
        };
        if revision.is_empty()
            || revision.contains("..")
            || revision.starts_with('/')
            || revision.ends_with('/')
            || revision.chars().any(|c| c.is_whitespace() || c == '\\')
        {
            return Err(bad(&format!("bad revision `{revision}`")));
        }
        let mut parts = rest.splitn(3, '/');
        let owner = parts.next().unwrap_or_default();
        let repo = parts.next().unwrap_or_default();
        let path = parts.next().unwrap_or_default();
        valid_repo_part(owner).map_err(|e| bad(&e))?;
        valid_repo_part(repo).map_err(|e| bad(&e))?;
        if path.is_empty() {
            return Err(bad("no file path after OWNER/REPO"));
        }
        if path.contains('\\')
            || path
                .split('/')
                .any(|seg| seg.is_empty() || seg == "." || seg == "..")
        {
            return Err(bad(&format!(
                "bad file path `{path}` (empty, `.` or `..` components, or `\\`)"
            )));
        }
        Ok(Self {
            repo: format!("{owner}/{repo}"),
            path: path.into(),
            revision: revision.into(),
        })
    }

    /// The repository's folder in a cache: `models--OWNER--REPO`.
    pub fn cache_folder(&self) -> String {
        format!("models--{}", self.repo.replace('/', "--"))
    }

    /// This file's path in `cache` if it is there: `refs/<revision>` gives the commit (a
    /// revision that is itself a 40-digit commit hash is used directly), then
    /// `snapshots/<commit>/<path>`.
    pub fn cached_in(&self, cache: &Path) -> Option<PathBuf> {
        let repo_dir = cache.join(self.cache_folder());
        let commit = match std::fs::read_to_string(repo_dir.join("refs").join(&self.revision)) {
            Ok(c) => c.trim().to_string(),
            Err(_) if is_commit_hash(&self.revision) => self.revision.clone(),
            Err(_) => return None,
        };
        if !is_commit_hash(&commit) {
            return None;
        }
        let mut file = repo_dir.join("snapshots").join(commit);
        file.extend(self.path.split('/'));
        file.is_file().then_some(file)
    }
}

fn is_commit_hash(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn env_path(key: &str) -> Option<PathBuf> {
    std::env::var_os(key)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// The Hub cache directory, as `huggingface_hub` chooses it: `$HF_HUB_CACHE`, else
/// `$HF_HOME/hub`, else `$XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`.
pub fn cache_dir() -> PathBuf {
    env_path("HF_HUB_CACHE").unwrap_or_else(|| hf_home().join("hub"))
}

/// `$HF_HOME`, else `$XDG_CACHE_HOME/huggingface`, else `~/.cache/huggingface`.
pub fn hf_home() -> PathBuf {
    env_path("HF_HOME").unwrap_or_else(|| {
        env_path("XDG_CACHE_HOME")
            .or_else(|| env_path("HOME").map(|h| h.join(".cache")))
            .or_else(|| env_path("USERPROFILE").map(|h| h.join(".cache")))
            .unwrap_or_else(std::env::temp_dir)
            .join("huggingface")
    })
}

/// Whether `HF_HUB_OFFLINE` is set to a true value (`1`, `true`, `yes`, `on`), as
/// `huggingface_hub` reads it.
pub fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "1" | "true" | "yes" | "on"
        )
    })
}

/// A local path for `path`: unchanged unless it is an `hf://` name, which is looked up in the
/// cache and, unless offline, downloaded (with a progress bar on a terminal).
pub fn resolve(path: &Path) -> Result<PathBuf, HubError> {
    if !is_hub_name(path) {
        return Ok(path.to_path_buf());
    }
    let name = path.to_str().unwrap_or_default();
    resolve_file(&HubFile::parse(name)?)
}

/// Resolve one Hub file through [`cache_dir`], honouring [`offline`].
pub fn resolve_file(file: &HubFile) -> Result<PathBuf, HubError> {
    let cache = cache_dir();
    if let Some(found) = file.cached_in(&cache) {
        return Ok(found);
    }
    let repo_dir = cache.join(file.cache_folder());
    if offline() {
        return Err(HubError::NotCached {
            file: file.clone(),
            cache: repo_dir,
        });
    }
    download(file, &cache, repo_dir)
}

#[cfg(feature = "hub")]
fn download(file: &HubFile, cache: &Path, _repo_dir: PathBuf) -> Result<PathBuf, HubError> {
    use hf_hub::api::sync::ApiBuilder;
    use hf_hub::{Cache, Repo, RepoType};
    let err = |message: String| HubError::Download {
        file: file.clone(),
        message,
    };
    // hf-hub's own `from_env` reads HF_HOME only; pass the directory chosen above instead.
    let token = env_path("HF_TOKEN")
        .and_then(|t| t.to_str().map(str::to_string))
        .or_else(|| {
            std::fs::read_to_string(hf_home().join("token"))
                .ok()
                .map(|t| t.trim().to_string())
        })
        .filter(|t| !t.is_empty());
    let mut builder = ApiBuilder::from_cache(Cache::new(cache.to_path_buf()))
        .with_token(token)
        .with_progress(true)
        .with_user_agent("r38", env!("CARGO_PKG_VERSION"));
    if let Ok(endpoint) = std::env::var("HF_ENDPOINT") {
        builder = builder.with_endpoint(endpoint);
    }
    let api = builder.build().map_err(|e| err(e.to_string()))?;
    let repo = Repo::with_revision(file.repo.clone(), RepoType::Model, file.revision.clone());
    api.repo(repo)
        .download(&file.path)
        .map_err(|e| err(e.to_string()))
}

#[cfg(not(feature = "hub"))]
fn download(file: &HubFile, _cache: &Path, repo_dir: PathBuf) -> Result<PathBuf, HubError> {
    Err(HubError::NoDownloader {
        file: file.clone(),
        cache: repo_dir,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names() {
        let f = HubFile::parse("hf://owner/repo/model.safetensors").unwrap();
        assert_eq!(f.repo, "owner/repo");
        assert_eq!(f.path, "model.safetensors");
        assert_eq!(f.revision, "main");
        assert_eq!(f.to_string(), "hf://owner/repo/model.safetensors");
        assert_eq!(f.cache_folder(), "models--owner--repo");
        let f = HubFile::parse("hf://o.w-n_er/re.po/sub/dir/m.safetensors@v1.0").unwrap();
        assert_eq!(f.repo, "o.w-n_er/re.po");
        assert_eq!(f.path, "sub/dir/m.safetensors");
        assert_eq!(f.revision, "v1.0");
        assert_eq!(
            f.to_string(),
            "hf://o.w-n_er/re.po/sub/dir/m.safetensors@v1.0"
        );
        let f = HubFile::parse("hf://o/r/m@refs/pr/1").unwrap();
        assert_eq!(f.revision, "refs/pr/1");
        for bad in [
            "owner/repo/m",
            "hf://",
            "hf://owner",
            "hf://owner/repo",
            "hf://owner/repo/",
            "hf://owner//m",
            "hf:///repo/m",
            "hf://owner/repo/m@",
            "hf://owner/repo/a//b",
            "hf://owner/repo/../x",
            "hf://ow ner/repo/m",
            "hf://owner/re--po/m",
            "hf://owner/repo/m@a..b",
        ] {
            let e = HubFile::parse(bad).unwrap_err();
            assert!(matches!(e, HubError::Malformed { .. }), "{bad}: {e}");
            assert!(e.to_string().contains("hf://OWNER/REPO"), "{e}");
        }
    }

    #[test]
    fn plain_paths_pass_through() {
        let p = Path::new("weights/model.safetensors");
        assert_eq!(resolve(p).unwrap(), p);
        assert!(!is_hub_name(p));
        assert!(is_hub_name(Path::new("hf://a/b/c")));
    }

    #[test]
    fn cache_lookup() {
        let dir = std::env::temp_dir().join(format!("r38-hub-unit-{}", std::process::id()));
        let repo = dir.join("models--owner--repo");
        let hash = "0123456789abcdef0123456789abcdef01234567";
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::create_dir_all(repo.join("snapshots").join(hash).join("sub")).unwrap();
        // A trailing newline, as hand-written refs have, is tolerated.
        std::fs::write(repo.join("refs/main"), format!("{hash}\n")).unwrap();
        std::fs::write(repo.join("snapshots").join(hash).join("sub/m.bin"), b"x").unwrap();
        let found = HubFile::parse("hf://owner/repo/sub/m.bin")
            .unwrap()
            .cached_in(&dir)
            .unwrap();
        assert!(found.ends_with(format!("snapshots/{hash}/sub/m.bin")));
        let by_hash = HubFile::parse(&format!("hf://owner/repo/sub/m.bin@{hash}")).unwrap();
        assert_eq!(by_hash.cached_in(&dir), Some(found));
        for missing in ["hf://owner/repo/m.bin", "hf://owner/repo/sub/m.bin@v2"] {
            assert_eq!(HubFile::parse(missing).unwrap().cached_in(&dir), None);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
