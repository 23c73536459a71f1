//! Hostile data files (issue 14): truncated JPEGs, split names that leave the dataset root,
//! unbounded list files, label maps of more than 255 classes, `.npy` files whose headers lie.
//! Every hostile file is built here.

use std::fs;
use std::path::{Path, PathBuf};

use image::{ImageFormat, RgbImage};
use r38_data::datasets::{write_class_png, DatasetKind, SegDataset};
use r38_data::{DataError, ImageLoader};
use tempfile::TempDir;

fn jpeg(dir: &Path, name: &str) -> (PathBuf, Vec<u8>) {
    let path = dir.join(name);
    RgbImage::from_fn(40, 30, |x, y| {
        image::Rgb([(x * 6) as u8, (y * 8) as u8, 90])
    })
    .save_with_format(&path, ImageFormat::Jpeg)
    .unwrap();
    let bytes = fs::read(&path).unwrap();
    (path, bytes)
}

/// Pillow refuses a JPEG cut short ("image file is truncated"); the decoder alone fills the
/// missing rows with grey and says nothing.
#[test]
fn truncated_jpegs_are_refused() {
    let tmp = TempDir::new().unwrap();
    let (full, bytes) = jpeg(tmp.path(), "full.jpg");
    ImageLoader::new().load_rgb8(&full).unwrap();
    // Cut in the entropy-coded data, and just before the end-of-image marker.
    for (name, keep) in [
        ("half.jpg", bytes.len() / 2),
        ("no-eoi.jpg", bytes.len() - 2),
    ] {
        let path = tmp.path().join(name);
        fs::write(&path, &bytes[..keep]).unwrap();
        let e = ImageLoader::new().load_rgb8(&path).unwrap_err();
        assert!(matches!(e, DataError::Truncated { .. }), "{name}: {e:?}");
        let msg = e.to_string();
        assert!(msg.contains(name) && msg.contains("truncated"), "{msg}");
    }
    // Bytes after the end-of-image marker are ignored, as libjpeg ignores them.
    let padded = tmp.path().join("padded.jpg");
    fs::write(&padded, [&bytes[..], b"trailing"].concat()).unwrap();
    ImageLoader::new().load_rgb8(&padded).unwrap();
}

fn voc(tmp: &TempDir) -> PathBuf {
    let root = tmp.path().join("VOCdevkit/VOC2012");
    fs::create_dir_all(root.join("JPEGImages")).unwrap();
    fs::create_dir_all(root.join("SegmentationClass")).unwrap();
    fs::create_dir_all(root.join("ImageSets/Segmentation")).unwrap();
    jpeg(&root.join("JPEGImages"), "a.jpg");
    fs::write(root.join("ImageSets/Segmentation/val.txt"), "a\n").unwrap();
    root
}

/// `--split ../../..` named a list outside the dataset root (`ImageSets/Segmentation/` +
/// `../../../x.txt`).
#[test]
fn split_names_stay_inside_the_root() {
    let tmp = TempDir::new().unwrap();
    let root = voc(&tmp);
    // A list the traversal would reach: VOC2012/../../../escaped.txt.
    fs::write(tmp.path().join("escaped.txt"), "a\n").unwrap();
    SegDataset::open(DatasetKind::Voc, &root, "val").unwrap();
    for split in [
        "../../../../escaped",
        "../../..",
        "/etc/passwd",
        "..",
        "a/b",
        "",
    ] {
        let e = SegDataset::open(DatasetKind::Voc, &root, split).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("not a plain name"), "{split}: {msg}");
        assert!(msg.contains("VOC2012"), "{split}: {msg}");
    }
}

/// A list file is read up to a bound, not to the end of whatever it is (here an endless
/// stream of zeros), and must be text.
#[cfg(unix)]
#[test]
fn list_files_are_bounded() {
    let tmp = TempDir::new().unwrap();
    let root = voc(&tmp);
    let list = root.join("ImageSets/Segmentation/zeros.txt");
    std::os::unix::fs::symlink("/dev/zero", &list).unwrap();
    let e = SegDataset::open(DatasetKind::Voc, &root, "zeros").unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("zeros.txt") && msg.contains("67108864"),
        "{msg}"
    );
    fs::write(
        root.join("ImageSets/Segmentation/binary.txt"),
        b"a\n\xff\xfe\n",
    )
    .unwrap();
    let e = SegDataset::open(DatasetKind::Voc, &root, "binary").unwrap_err();
    assert!(e.to_string().contains("not UTF-8"), "{e}");
}

/// 300 classes: ids above 255 survive in a 16-bit PNG; 21 classes keep the 8-bit palette PNG.
#[test]
fn class_pngs_hold_every_class_id() {
    let tmp = TempDir::new().unwrap();
    let ids: Vec<u32> = (0..12).map(|i| i * 27).collect(); // up to 297
    let wide = tmp.path().join("wide.png");
    write_class_png(&wide, 4, 3, &ids, 300, None).unwrap();
    let img = image::open(&wide).unwrap();
    let luma = img.as_luma16().expect("a 16-bit grey PNG");
    let back: Vec<u32> = luma.pixels().map(|p| u32::from(p.0[0])).collect();
    assert_eq!(back, ids);

    let small: Vec<u32> = (0..12).map(|i| i % 21).collect();
    let narrow = tmp.path().join("narrow.png");
    let palette = r38_data::datasets::voc_colormap();
    write_class_png(&narrow, 4, 3, &small, 21, Some(&palette)).unwrap();
    let map = r38_data::datasets::read_label_png(&narrow).unwrap();
    assert_eq!(map.data, small.iter().map(|&v| v as u8).collect::<Vec<_>>());

    let e = write_class_png(
        tmp.path().join("huge.png"),
        1,
        1,
        &[70_000u32],
        80_000,
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("huge.png") && e.contains("65535"), "{e}");
}

/// The reader refuses a header that claims more than the file holds, before allocating.
#[test]
fn npy_files_are_checked_against_their_length() {
    let tmp = TempDir::new().unwrap();
    let path = tmp.path().join("claims.npy");
    let dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 3, 100000, 100000), }";
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend((dict.len() as u16).to_le_bytes());
    bytes.extend(dict.as_bytes());
    bytes.extend([0u8; 100]);
    fs::write(&path, &bytes).unwrap();
    let e = r38_data::npy::read_npy(&path).unwrap_err().to_string();
    assert!(
        e.contains("claims.npy") && e.contains("120000000000"),
        "{e}"
    );
    let e = r38_data::npy::read_npy(tmp.path().join("absent.npy"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("absent.npy"), "{e}");
}
