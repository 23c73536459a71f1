//! Fashion-MNIST (Xiao, Rasul and Vollgraf, 2017) from its IDX files, as Debian's
//! `dataset-fashion-mnist` installs them (`/usr/share/datasets/fashion-mnist/`,
//! `train-images-idx3-ubyte.gz` etc.). Plain and gzip-compressed files are both read.
//!
//! IDX: a big-endian header `0x00 0x00 <type> <rank>`, `rank` big-endian `u32` dimensions,
//! then the values in row-major order. Only type `0x08` (unsigned byte) is used here.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::{bail, Context, Result};

/// Where Debian's package puts the files.
pub const DEBIAN_ROOT: &str = "/usr/share/datasets/fashion-mnist";

/// The ten class names, by label.
pub const CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// An unsigned-byte IDX array.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxArray {
    /// The dimensions.
    pub dims: Vec<usize>,
    /// The values, row-major.
    pub data: Vec<u8>,
}

/// Parses an unsigned-byte IDX file held in memory (already decompressed).
pub fn parse_idx(bytes: &[u8]) -> Result<IdxArray> {
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 {
        bail!("not an IDX file (bad magic)");
    }
    if bytes[2] != 0x08 {
        bail!(
            "IDX value type 0x{:02x} is not supported (only 0x08, unsigned byte)",
            bytes[2]
        );
    }
    let rank = bytes[3] as usize;
    let header = 4 + 4 * rank;
    if bytes.len() < header {
        bail!("IDX header truncated");
    }
    let dims: Vec<usize> = (0..rank)
        .map(|i| {
            let b = &bytes[4 + 4 * i..8 + 4 * i];
            u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize
        })
        .collect();
    let count = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .context("IDX dimensions overflow")?;
    let body = &bytes[header..];
    if body.len() != count {
        bail!(
            "IDX body has {} bytes, dimensions {:?} need {}",
            body.len(),
            dims,
            count
        );
    }
    Ok(IdxArray {
        dims,
        data: body.to_vec(),
    })
}

/// Reads an IDX file; gzip is detected by its magic bytes, not by the name.
pub fn read_idx(path: &Path) -> Result<IdxArray> {
    let raw = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .with_context(|| format!("{}: bad gzip data", path.display()))?;
        out
    } else {
        raw
    };
    parse_idx(&bytes).with_context(|| format!("{}", path.display()))
}

/// The `train` or `t10k` ("test") split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// 60 000 images.
    Train,
    /// 10 000 images.
    Test,
}

impl Split {
    fn prefix(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "t10k",
        }
    }
}

/// Images and labels of one split.
#[derive(Debug, Clone)]
pub struct FashionMnist {
    /// Number of images.
    pub len: usize,
    /// Rows (28).
    pub height: usize,
    /// Columns (28).
    pub width: usize,
    /// `len * height * width` grey values, 0 = background.
    pub images: Vec<u8>,
    /// `len` labels in `0..10`.
    pub labels: Vec<u8>,
}

fn find(root: &Path, stem: &str) -> Result<PathBuf> {
    for name in [format!("{stem}.gz"), stem.to_string()] {
        let p = root.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!(
        "{}: no {stem}[.gz] (install Debian's dataset-fashion-mnist, files under {DEBIAN_ROOT})",
        root.display()
    )
}

impl FashionMnist {
    /// Loads `root/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`.
    pub fn load(root: &Path, split: Split) -> Result<Self> {
        let images = read_idx(&find(
            root,
            &format!("{}-images-idx3-ubyte", split.prefix()),
        )?)?;
        let labels = read_idx(&find(
            root,
            &format!("{}-labels-idx1-ubyte", split.prefix()),
        )?)?;
        Self::from_arrays(images, labels)
    }

    /// From parsed arrays: images `(N, H, W)` and labels `(N,)` in `0..10`.
    pub fn from_arrays(images: IdxArray, labels: IdxArray) -> Result<Self> {
        if images.dims.len() != 3 || labels.dims.len() != 1 {
            bail!(
                "expected images (N, H, W) and labels (N,), got {:?} and {:?}",
                images.dims,
                labels.dims
            );
        }
        if images.dims[0] != labels.dims[0] {
            bail!("{} images but {} labels", images.dims[0], labels.dims[0]);
        }
        if let Some(l) = labels.data.iter().find(|&&l| l as usize >= CLASSES.len()) {
            bail!("label {l} out of range 0..10");
        }
        Ok(Self {
            len: images.dims[0],
            height: images.dims[1],
            width: images.dims[2],
            images: images.data,
            labels: labels.data,
        })
    }

    /// The grey pixels of image `i`.
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.height * self.width;
        &self.images[i * n..(i + 1) * n]
    }

    /// The first `n` items only (for quick runs).
    pub fn truncated(mut self, n: usize) -> Self {
        let n = n.min(self.len);
        self.len = n;
        self.images.truncate(n * self.height * self.width);
        self.labels.truncate(n);
        self
    }
}

/// Writes a toy dataset in Fashion-MNIST's file layout under `root`: `train` and `test` 28x28
/// images where class `c` (cycling 0..9) is a bright rectangle whose shape depends on `c`.
/// For tests and smoke runs that need the real reader without the real data.
pub fn write_toy_dataset(root: &Path, train: usize, test: usize) -> std::io::Result<()> {
    std::fs::create_dir_all(root)?;
    for (split, n) in [("train", train), ("t10k", test)] {
        let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
        let mut images = Vec::with_capacity(n * 28 * 28);
        for &c in &labels {
            for y in 0..28usize {
                for x in 0..28usize {
                    let inside =
                        y.abs_diff(14) < 4 + c as usize && x.abs_diff(14) < 13 - c as usize;
                    images.push(if inside { 200 } else { 0 });
                }
            }
        }
        std::fs::write(
            root.join(format!("{split}-images-idx3-ubyte")),
            encode_idx(&[n, 28, 28], &images),
        )?;
        std::fs::write(
            root.join(format!("{split}-labels-idx1-ubyte")),
            encode_idx(&[n], &labels),
        )?;
    }
    Ok(())
}

/// An IDX byte file in memory, as the reader expects (for tests and tools).
pub fn encode_idx(dims: &[usize], data: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 0x08, dims.len() as u8];
    for &d in dims {
        out.extend_from_slice(&(d as u32).to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn reads_plain_and_gzip_idx() {
        let dir = std::env::temp_dir().join(format!("r38-idx-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let imgs: Vec<u8> = (0..2 * 28 * 28).map(|i| (i % 251) as u8).collect();
        std::fs::write(
            dir.join("t10k-images-idx3-ubyte"),
            encode_idx(&[2, 28, 28], &imgs),
        )
        .unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&encode_idx(&[2], &[3, 9])).unwrap();
        std::fs::write(dir.join("t10k-labels-idx1-ubyte.gz"), gz.finish().unwrap()).unwrap();
        let ds = FashionMnist::load(&dir, Split::Test).unwrap();
        assert_eq!((ds.len, ds.height, ds.width), (2, 28, 28));
        assert_eq!(ds.labels, vec![3, 9]);
        assert_eq!(ds.image(1)[0], imgs[784]);
        assert!(FashionMnist::load(&dir, Split::Train).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rejects_malformed_idx() {
        assert!(parse_idx(&[0, 0, 0x08]).is_err());
        assert!(parse_idx(&[0, 0, 0x0d, 1, 0, 0, 0, 1, 0, 0, 0, 0]).is_err());
        assert!(parse_idx(&encode_idx(&[3], &[1, 2])).is_err());
        let bad = FashionMnist::from_arrays(
            IdxArray {
                dims: vec![1, 1, 1],
                data: vec![0],
            },
            IdxArray {
                dims: vec![1],
                data: vec![10],
            },
        );
        assert!(bad.is_err());
    }

    #[test]
    fn debian_files_when_installed() {
        let root = Path::new(DEBIAN_ROOT);
        if !root.join("t10k-labels-idx1-ubyte.gz").exists() {
            return;
        }
        let ds = FashionMnist::load(root, Split::Test).unwrap();
        assert_eq!((ds.len, ds.height, ds.width), (10_000, 28, 28));
        assert!((0..10).all(|c| ds.labels.iter().filter(|&&l| l == c).count() == 1000));
    }
}
