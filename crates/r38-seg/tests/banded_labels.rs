//! `TestProtocol::predict_labels` (bands of rows, no full-resolution probabilities) gives the
//! labels of `TestProtocol::predict` bit for bit, for every kind of resize and fusion.

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use r38_data::image::{Rgb, RgbImage};
use r38_model::{Arch, BackboneConfig};
use r38_seg::{Fuse, HeadConfig, ScoreNet, SegmentationNet, TestProtocol};

fn image(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        let v = (x * 37 + y * 91 + (x * y) % 23) as u8;
        Rgb([v, v.wrapping_mul(3), 255 - v])
    })
}

#[test]
fn banded_labels_are_the_labels_of_the_whole_prediction() {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let config = BackboneConfig::preset(Arch::A1, 8).unwrap().narrowed(32);
    let net = SegmentationNet::new(&config, HeadConfig::two_conv(5), &vb).unwrap();
    let nets = [&net as &dyn ScoreNet];
    let protocols = [
        // The image shrinks to the scale (Lanczos back up), enlarges (bicubic back down).
        TestProtocol::single_scale(48),
        TestProtocol::single_scale(160).with_flip(true),
        // Several scales, mean and max, with shift-and-stitch.
        TestProtocol::single_scale(64).with_scales(vec![40, 64, 88]),
        TestProtocol {
            fuse: Fuse::Max,
            test_steps: 2,
            ..TestProtocol::single_scale(64).with_scales(vec![48, 72])
        },
    ];
    for (i, protocol) in protocols.iter().enumerate() {
        for (w, h) in [(97, 61), (45, 70)] {
            let img = image(w, h);
            let whole = protocol.predict(&nets, &img).unwrap();
            for band in [3, 1000] {
                let banded = protocol.predict_labels(&nets, &img, band).unwrap();
                let labels: Vec<u32> = banded.labels.iter().map(|&l| u32::from(l)).collect();
                assert_eq!(
                    labels, whole.labels,
                    "protocol {i}, {w}x{h}, bands of {band}"
                );
                assert_eq!((banded.width, banded.height), (w, h));
            }
        }
    }
}
