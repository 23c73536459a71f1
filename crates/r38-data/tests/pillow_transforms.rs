//! The ImageNet test transform against the same protocol computed with PIL + numpy
//! (tools/pillow_fixtures.py `classify_reference`).

mod common;

use candle_core::Device;
use common::*;
use r38_data::{ClassifyTransform, Interpolation};

fn interpolation(name: &str) -> Interpolation {
    match name {
        "adaptive" => Interpolation::Adaptive,
        "bicubic" => Interpolation::default(),
        other => panic!("unknown interpolation {other}"),
    }
}

#[test]
fn classify_transform_matches_pil_numpy() {
    let dir = fixtures();
    let mut checked = 0;
    for row in manifest().iter().filter(|r| r[0] == "classify") {
        let img = r38_data::load_rgb8(dir.join(&row[1])).unwrap();
        let t = ClassifyTransform {
            scale: row[2].parse().unwrap(),
            crop: row[3].parse().unwrap(),
            interpolation: interpolation(&row[4]),
            ..ClassifyTransform::default()
        };
        let got = t.apply(&img, &Device::Cpu).unwrap();
        let (shape, exp) = read_npy_f32(&dir.join(&row[5]));
        assert_eq!(got.dims(), &shape[..], "{}", row[5]);
        let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let max = f32_diff(&got, &exp);
        eprintln!("{}: max |diff| {max:e}", row[5]);
        assert!(max <= 1e-6, "{}: max |diff| {max:e}", row[5]);
        checked += 1;
    }
    assert_eq!(checked, 5);
}

#[test]
fn default_protocol_at_320_matches_pil_numpy() {
    let mut checked = 0;
    for row in manifest().iter().filter(|r| r[0] == "proc_classify") {
        let p = |i: usize| row[i].parse::<u32>().unwrap();
        let (sw, sh) = (p(1), p(2));
        let t = ClassifyTransform {
            scale: p(3),
            crop: p(4),
            interpolation: interpolation(&row[5]),
            ..ClassifyTransform::default()
        };
        let img = procedural_rgb(sw, sh);
        let crop = t.resize_and_crop(&img).unwrap();
        assert_eq!(
            fnv1a64(crop.as_raw()),
            row[6],
            "{sw}x{sh} {}: 8-bit crop",
            row[5]
        );
        let x = t.apply(&img, &Device::Cpu).unwrap();
        assert_eq!(x.dims(), &[1, 3, 320, 320]);
        let v = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(
            fnv1a64(&f32_bytes(&v)),
            row[7],
            "{sw}x{sh} {}: tensor",
            row[5]
        );
        checked += 1;
    }
    assert_eq!(checked, 5);
}

#[test]
fn batch_equals_stacked_singles() {
    let t = ClassifyTransform {
        scale: 24,
        crop: 20,
        ..ClassifyTransform::default()
    };
    let imgs = [procedural_rgb(37, 29), procedural_rgb(20, 31)];
    let b = t.apply_batch(&imgs, &Device::Cpu).unwrap();
    assert_eq!(b.dims(), &[2, 3, 20, 20]);
    for (i, img) in imgs.iter().enumerate() {
        let one = t.apply(img, &Device::Cpu).unwrap();
        let d = (b.get(i).unwrap() - one.squeeze(0).unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(d, 0.0);
    }
    assert!(t.apply_batch(&[], &Device::Cpu).is_err());
}
