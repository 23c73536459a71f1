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

/// Largest IDX body read, 1 GiB (Fashion-MNIST's training images are 47 MB, EMNIST's
/// largest split 547 MB). A header declaring more is refused before anything is inflated.
pub const MAX_IDX_BYTES: usize = 1 << 30;

/// Largest IDX rank (Fashion-MNIST uses 1 and 3).
pub const MAX_IDX_RANK: usize = 8;

/// Reads an unsigned-byte IDX array from `reader` (already decompressed, or a decoder): the
/// header first, then exactly the number of values it declares (at most `max_bytes`), then
/// one more read to check that nothing follows. Memory follows the data actually present,
/// never what the header claims, and a gzip stream is inflated no further than the header
/// allows.
pub fn read_idx_from(mut reader: impl Read, max_bytes: usize) -> Result<IdxArray> {
    let mut magic = [0u8; 4];
    reader
        .read_exact(&mut magic)
        .context("not an IDX file (shorter than its 4-byte magic)")?;
    if magic[0] != 0 || magic[1] != 0 {
        bail!("not an IDX file (bad magic)");
    }
    if magic[2] != 0x08 {
        bail!(
            "IDX value type 0x{:02x} is not supported (only 0x08, unsigned byte)",
            magic[2]
        );
    }
    let rank = magic[3] as usize;
    if rank > MAX_IDX_RANK {
        bail!("IDX rank {rank} exceeds the limit of {MAX_IDX_RANK}");
    }
    let mut dims = Vec::with_capacity(rank);
    for _ in 0..rank {
        let mut b = [0u8; 4];
        reader.read_exact(&mut b).context("IDX header truncated")?;
        dims.push(u32::from_be_bytes(b) as usize);
    }
    let count = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .filter(|&c| c <= max_bytes)
        .with_context(|| {
            format!("IDX dimensions {dims:?} exceed the limit of {max_bytes} bytes")
        })?;
    // Grown as data arrives, so a short file costs only what it holds.
    let mut data = Vec::with_capacity(count.min(1 << 20));
    (&mut reader)
        .take(count as u64)
        .read_to_end(&mut data)
        .context("cannot read the IDX body")?;
    if data.len() != count {
        bail!(
            "IDX body has {} bytes, dimensions {:?} need {}",
            data.len(),
            dims,
            count
        );
    }
    let mut extra = [0u8; 1];
    if reader
        .read(&mut extra)
        .context("cannot read the IDX body")?
        != 0
    {
        bail!("IDX body is longer than dimensions {dims:?} declare ({count} bytes)");
    }
    Ok(IdxArray { dims, data })
}

/// Parses an unsigned-byte IDX file held in memory (already decompressed).
pub fn parse_idx(bytes: &[u8]) -> Result<IdxArray> {
    read_idx_from(bytes, MAX_IDX_BYTES)
}

/// Reads an IDX file; gzip is detected by its magic bytes, not by the name. The stream is
/// inflated only as far as the header allows (at most [`MAX_IDX_BYTES`] values).
pub fn read_idx(path: &Path) -> Result<IdxArray> {
    read_idx_limited(path, MAX_IDX_BYTES)
}

/// [`read_idx`] with another bound on the number of values.
pub fn read_idx_limited(path: &Path, max_bytes: usize) -> Result<IdxArray> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    read_idx_reader(std::io::BufReader::new(file), max_bytes)
        .with_context(|| format!("{}", path.display()))
}

/// Reads a plain or gzip-compressed IDX stream (told apart by the gzip magic), with the bounds
/// of [`read_idx_from`].
pub fn read_idx_reader(mut reader: impl std::io::BufRead, max_bytes: usize) -> Result<IdxArray> {
    let gzip = reader.fill_buf()?.starts_with(&[0x1f, 0x8b]);
    if gzip {
        // One gzip member, as gzip(1) writes it; bytes after it are an error.
        read_idx_from(flate2::bufread::GzDecoder::new(reader), max_bytes)
    } else {
        read_idx_from(reader, max_bytes)
    }
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
        let image_path = find(root, &format!("{}-images-idx3-ubyte", split.prefix()))?;
        let label_path = find(root, &format!("{}-labels-idx1-ubyte", split.prefix()))?;
        let images = read_idx(&image_path)?;
        let labels = read_idx(&label_path)?;
        if let Some(l) = labels.data.iter().find(|&&l| l as usize >= CLASSES.len()) {
            bail!("{}: label {l} out of range 0..10", label_path.display());
        }
        Self::from_arrays(images, labels)
            .with_context(|| format!("{} with {}", image_path.display(), label_path.display()))
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
        for (name, bytes) in [
            ("images-idx3", encode_idx(&[n, 28, 28], &images)),
            ("labels-idx1", encode_idx(&[n], &labels)),
        ] {
            let path = root.join(format!("{split}-{name}-ubyte"));
            r38_data::output::write_bytes_atomically(&path, &bytes)
                .map_err(std::io::Error::other)?;
        }
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
        assert!(parse_idx(&encode_idx(&[1], &[1, 2])).is_err());
        assert!(parse_idx(&[0, 0, 8, 9]).is_err());
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

    /// A 3 MB gzip of zeros claims 3.2 GB; the header is checked before inflating, and the
    /// stream is inflated only as far as the header declares.
    #[test]
    fn gzip_bombs_stop_at_the_header() {
        let dir = tempfile_dir("bomb");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        // Declares 2 labels, then keeps going for 64 MiB.
        gz.write_all(&encode_idx(&[2], &[1, 2])).unwrap();
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..64 {
            gz.write_all(&zeros).unwrap();
        }
        let path = dir.join("t10k-labels-idx1-ubyte.gz");
        std::fs::write(&path, gz.finish().unwrap()).unwrap();
        let e = format!("{:#}", read_idx(&path).unwrap_err());
        assert!(
            e.contains("t10k-labels-idx1-ubyte.gz") && e.contains("longer than"),
            "{e}"
        );
        // Declares 2^32-1 x 2^32-1 values: refused by the limit, nothing inflated.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&[0, 0, 8, 2, 255, 255, 255, 255, 255, 255, 255, 255])
            .unwrap();
        std::fs::write(&path, gz.finish().unwrap()).unwrap();
        let e = format!("{:#}", read_idx(&path).unwrap_err());
        assert!(e.contains("exceed the limit of 1073741824 bytes"), "{e}");
        assert!(format!("{:#}", read_idx_limited(&path, 10).unwrap_err()).contains("limit of 10"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn label_errors_name_the_file() {
        let dir = tempfile_dir("labels");
        std::fs::write(
            dir.join("t10k-images-idx3-ubyte"),
            encode_idx(&[1, 1, 1], &[0]),
        )
        .unwrap();
        std::fs::write(dir.join("t10k-labels-idx1-ubyte"), encode_idx(&[1], &[10])).unwrap();
        let e = format!("{:#}", FashionMnist::load(&dir, Split::Test).unwrap_err());
        assert!(
            e.contains("t10k-labels-idx1-ubyte: label 10 out of range"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn tempfile_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("r38-idx-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
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
