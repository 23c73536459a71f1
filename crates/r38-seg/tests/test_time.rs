//! The test protocol on synthetic networks: shift-and-stitch interleaving, flipping, scale
//! fusion, model averaging and sliding windows.

use candle_core::{Device, Tensor};
use r38_data::image::{Rgb, RgbImage};
use r38_data::Normalization;
use r38_seg::sliding_window::{windowed_probabilities, WindowPlan};
use r38_seg::test_time::shift_offsets;
use r38_seg::{
    argmax_labels, fuse_probabilities, CanvasLimit, Fuse, ScoreNet, SegError, TestProtocol,
};

/// Output cell `(i, j)` = the input value at pixel `(s·i + s/2, s·j + s/2)`, per channel; its
/// "probabilities" are those values themselves (no softmax). With the identity normalisation and
/// an image whose R = row, G = column, B = 1, every output cell says which image pixel it saw
/// (B = 0: the zero padding).
struct PositionNet {
    stride: usize,
}

impl ScoreNet for PositionNet {
    fn scores(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (n, c, h, w) = x.dims4()?;
        let s = self.stride;
        x.reshape((n, c, h / s, s, w / s, s))?
            .narrow(3, s / 2, 1)?
            .narrow(5, s / 2, 1)?
            .reshape((n, c, h / s, w / s))
    }
    fn output_stride(&self) -> usize {
        self.stride
    }
    fn classes(&self) -> usize {
        3
    }
    fn probabilities(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.scores(x)
    }
}

/// Spatially constant probabilities chosen by the canvas width.
struct ConstNet {
    by_width: Vec<(usize, Vec<f32>)>,
}

impl ScoreNet for ConstNet {
    fn scores(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (n, _, h, w) = x.dims4()?;
        let p = &self
            .by_width
            .iter()
            .find(|(cw, _)| *cw == w || *cw == 0)
            .expect("a canvas width the test knows")
            .1;
        Tensor::from_vec(p.clone(), (1, p.len(), 1, 1), &Device::Cpu)?
            .broadcast_as((n, p.len(), h / 8, w / 8))?
            .contiguous()
    }
    fn output_stride(&self) -> usize {
        8
    }
    fn classes(&self) -> usize {
        self.by_width[0].1.len()
    }
    fn probabilities(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.scores(x)
    }
}

fn identity_norm() -> Normalization {
    Normalization {
        pixel_scale: 1.0,
        mean: [0.0; 3],
        std: [1.0; 3],
    }
}

fn position_image(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| Rgb([y as u8, x as u8, 1]))
}

fn protocol(scale: u32, steps: u32, flip: bool) -> TestProtocol {
    TestProtocol {
        test_steps: steps,
        flip,
        normalization: identity_norm(),
        ..TestProtocol::single_scale(scale)
    }
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

#[test]
fn offsets() {
    assert_eq!(shift_offsets(8, 1).unwrap(), vec![0]);
    assert_eq!(shift_offsets(8, 2).unwrap(), vec![-2, 2]);
    assert_eq!(shift_offsets(8, 4).unwrap(), vec![-3, -1, 1, 3]);
    assert_eq!(shift_offsets(8, 8).unwrap(), (-4..4).collect::<Vec<_>>());
    assert_eq!(shift_offsets(16, 2).unwrap(), vec![-4, 4]);
    assert!(shift_offsets(8, 3).is_err());
    assert!(shift_offsets(8, 0).is_err());
}

/// Fine cell `m` (stride `p = s / k`) sees image row `p·m + p/2` — the runs interleave into a
/// regular grid — wherever that pixel exists and the run's canvas cell lies inside the image
/// extent; elsewhere the padding (B = 0).
#[test]
fn shift_and_stitch_interleaving() {
    let (w, h) = (44usize, 30usize); // canvas 48x48 (square, scale 44)
    let image = position_image(w as u32, h as u32);
    let net = PositionNet { stride: 8 };
    for k in [1usize, 2, 4, 8] {
        let proto = protocol(44, k as u32, false);
        let prepared = proto.prepare(&image, 44).unwrap();
        let sp = proto.strided_probabilities(&[&net], &prepared).unwrap();
        let ps = 8 / k;
        assert_eq!(sp.stride, ps);
        let dims = sp.probabilities.dims().to_vec();
        assert_eq!(dims, vec![3, 6 * k, 6 * k]);
        let (ph, pw) = (dims[1], dims[2]);
        let v = values(&sp.probabilities);
        let offs = shift_offsets(8, k).unwrap();
        for m in 0..ph {
            for n in 0..pw {
                let (r, g, b) = (
                    v[m * pw + n],
                    v[ph * pw + m * pw + n],
                    v[2 * ph * pw + m * pw + n],
                );
                let (row, col) = (ps * m + ps / 2, ps * n + ps / 2);
                // the canvas cell this run read, before the shift
                let (cr, cc) = (8 * (m / k) + 4, 8 * (n / k) + 4);
                let (dy, dx) = (offs[m % k], offs[n % k]);
                assert_eq!(row as isize, cr as isize + dy);
                assert_eq!(col as isize, cc as isize + dx);
                let inside = cr < h && cc < w && row < h && col < w;
                if inside {
                    assert_eq!((r, g, b), (row as f32, col as f32, 1.0), "k {k} ({m},{n})");
                } else {
                    assert_eq!((r, g, b), (0.0, 0.0, 0.0), "k {k} ({m},{n})");
                }
            }
        }
    }
}

/// Flipping mirrors the whole canvas (padding included) and un-mirrors the output over the
/// whole width: un-flipped cell `j` read input column `8j + 3`, so the average is `8j + 3.5`.
#[test]
fn flip_mirrors_the_whole_canvas() {
    let image = position_image(44, 20); // canvas 48x48: 4 columns of padding on the right
    let net = PositionNet { stride: 8 };
    let proto = protocol(44, 1, true);
    let sp = proto
        .strided_probabilities(&[&net], &proto.prepare(&image, 44).unwrap())
        .unwrap();
    let v = values(&sp.probabilities);
    let (ph, pw) = (6, 6);
    for i in 0..ph {
        for j in 0..pw {
            let g = v[ph * pw + i * pw + j];
            let b = v[2 * ph * pw + i * pw + j];
            let (c1, c2) = (8 * j + 4, 8 * j + 3);
            let rows_in = 8 * i + 4 < 20;
            let in1 = rows_in && c1 < 44;
            let in2 = rows_in && c2 < 44;
            let exp_g =
                0.5 * (if in1 { c1 as f32 } else { 0.0 } + if in2 { c2 as f32 } else { 0.0 });
            let exp_b = 0.5 * (in1 as u8 as f32 + in2 as u8 as f32);
            assert_eq!((g, b), (exp_g, exp_b), "cell ({i},{j})");
        }
    }
}

#[test]
fn probability_upsampling_of_a_constant_is_constant_and_labels_follow() {
    let net = ConstNet {
        by_width: vec![(0, vec![0.2, 0.5, 0.3])],
    };
    let image = RgbImage::from_pixel(30, 17, Rgb([9, 9, 9]));
    // rescaled (30 -> 40 -> back to 30x17), flip, 2 steps
    let proto = TestProtocol {
        test_steps: 2,
        ..TestProtocol::single_scale(40)
    };
    let pred = proto.predict(&[&net], &image).unwrap();
    assert_eq!(pred.probabilities.dims(), &[3, 17, 30]);
    for (c, want) in [0.2f32, 0.5, 0.3].iter().enumerate() {
        let plane = values(&pred.probabilities.get(c).unwrap());
        assert!(plane.iter().all(|v| (v - want).abs() < 1e-6));
    }
    assert!(pred.labels.iter().all(|&l| l == 1));
    assert_eq!(pred.classes(), 3);
    assert_eq!(pred.label(29, 16), 1);
}

/// Scale A (canvas 40) says (0.6, 0.4, 0), scale B (canvas 80) says (0, 0.5, 0.5): the mean
/// picks class 1, the max class 0.
#[test]
fn mean_and_max_fusion_over_scales() {
    let net = ConstNet {
        by_width: vec![(40, vec![0.6, 0.4, 0.0]), (80, vec![0.0, 0.5, 0.5])],
    };
    let image = RgbImage::from_pixel(40, 20, Rgb([100, 50, 0]));
    let base = TestProtocol::single_scale(40).with_scales(vec![40, 80]);
    let check = |fuse: Fuse, want: [f32; 3], label: u32| {
        let pred = TestProtocol {
            fuse,
            ..base.clone()
        }
        .predict(&[&net], &image)
        .unwrap();
        assert_eq!(pred.probabilities.dims(), &[3, 20, 40]);
        for (c, w) in want.iter().enumerate() {
            let plane = values(&pred.probabilities.get(c).unwrap());
            assert!(
                plane.iter().all(|v| (v - w).abs() < 1e-6),
                "{fuse:?} class {c}: {} vs {w}",
                plane[0]
            );
        }
        assert!(pred.labels.iter().all(|&l| l == label), "{fuse:?}");
    };
    check(Fuse::Mean, [0.3, 0.45, 0.25], 1);
    check(Fuse::Max, [0.6, 0.5, 0.5], 0);

    // the same through the free function
    let a = Tensor::new(&[[[0.6f32]], [[0.4]], [[0.0]]], &Device::Cpu).unwrap();
    let b = Tensor::new(&[[[0.0f32]], [[0.5]], [[0.5]]], &Device::Cpu).unwrap();
    let mean = fuse_probabilities(Fuse::Mean, &[a.clone(), b.clone()]).unwrap();
    let max = fuse_probabilities(Fuse::Max, &[a.clone(), b]).unwrap();
    assert_eq!(argmax_labels(&mean).unwrap(), vec![1]);
    assert_eq!(argmax_labels(&max).unwrap(), vec![0]);
    assert_eq!(
        values(&fuse_probabilities(Fuse::Max, std::slice::from_ref(&a)).unwrap()),
        values(&a)
    );
    assert!(fuse_probabilities(Fuse::Mean, &[]).is_err());
}

#[test]
fn model_averaging() {
    let a = ConstNet {
        by_width: vec![(0, vec![0.6, 0.4, 0.0])],
    };
    let b = ConstNet {
        by_width: vec![(0, vec![0.0, 0.5, 0.5])],
    };
    let image = RgbImage::from_pixel(24, 16, Rgb([1, 2, 3]));
    let proto = TestProtocol::single_scale(24).with_flip(true);
    let pred = proto.predict(&[&a, &b], &image).unwrap();
    for (c, w) in [0.3f32, 0.45, 0.25].iter().enumerate() {
        let plane = values(&pred.probabilities.get(c).unwrap());
        assert!(plane.iter().all(|v| (v - w).abs() < 1e-6));
    }
    // networks that disagree on classes or stride cannot be averaged
    let four = ConstNet {
        by_width: vec![(0, vec![0.25; 4])],
    };
    assert!(matches!(
        proto.predict(&[&a, &four], &image),
        Err(SegError::Protocol(_))
    ));
    let pos = PositionNet { stride: 16 };
    assert!(matches!(
        proto.predict(&[&a, &pos], &image),
        Err(SegError::Protocol(_))
    ));
    assert!(proto.predict(&[], &image).is_err());
}

#[test]
fn argmax_takes_the_first_of_ties() {
    let t = Tensor::new(&[[[0.5f32, 0.2]], [[0.5, 0.7]], [[0.1, 0.7]]], &Device::Cpu).unwrap();
    assert_eq!(argmax_labels(&t).unwrap(), vec![0, 1]);
}

/// A network without spatial context gives the same result tiled or in one pass: the tiles are
/// stitched at the right places and overlaps are averaged correctly.
#[test]
fn sliding_window_stitches_tiles() {
    let net = PositionNet { stride: 8 };
    let x = Tensor::arange(0f32, (3 * 40 * 56) as f32, &Device::Cpu)
        .unwrap()
        .reshape((1, 3, 40, 56))
        .unwrap();
    let single = windowed_probabilities(&[&net], &x, &WindowPlan::single((40, 56))).unwrap();
    for (tile, overlap) in [((16, 16), 8), ((24, 32), 16), ((40, 8), 0), ((8, 56), 0)] {
        let plan = WindowPlan::new((40, 56), tile, overlap, 8).unwrap();
        assert!(plan.len() > 1);
        let tiled = windowed_probabilities(&[&net], &x, &plan).unwrap();
        assert_eq!(tiled, single, "tile {tile:?}");
    }

    // through the protocol, with flipping and shifts: same labels and probabilities
    let image = position_image(60, 44);
    let proto = protocol(60, 2, true);
    let one = proto.predict(&[&net], &image).unwrap();
    let tiled = TestProtocol {
        max_canvas: Some(CanvasLimit::Pixels(24 * 24)),
        window_overlap: 8,
        ..proto
    }
    .predict(&[&net], &image)
    .unwrap();
    assert_eq!(values(&one.probabilities), values(&tiled.probabilities));
}

#[test]
fn invalid_protocols_are_rejected() {
    let net = PositionNet { stride: 8 };
    let image = position_image(16, 16);
    let bad = [
        TestProtocol {
            test_steps: 3,
            ..TestProtocol::single_scale(16)
        },
        TestProtocol::single_scale(16).with_scales(vec![]),
        TestProtocol::single_scale(0),
        TestProtocol {
            max_canvas: Some(CanvasLimit::Size {
                height: 8,
                width: 8,
            }),
            window_overlap: 8,
            ..TestProtocol::single_scale(16)
        },
    ];
    for p in bad {
        assert!(
            matches!(p.predict(&[&net], &image), Err(SegError::Protocol(_))),
            "{p:?}"
        );
    }
}

#[test]
fn presets_and_canvas_sizes() {
    let voc = TestProtocol::voc();
    assert_eq!(
        (voc.scales.clone(), voc.flip, voc.test_steps),
        (vec![500], true, 1)
    );
    assert_eq!(voc.canvas_size(500, (500, 375), 8), (504, 504));
    assert_eq!(voc.canvas_size(500, (333, 500), 8), (504, 504));
    let ade = TestProtocol::ade20k();
    assert_eq!(
        (ade.scales.clone(), ade.flip, ade.test_steps),
        (vec![500], true, 2)
    );
    let city = TestProtocol::cityscapes();
    assert_eq!(
        (city.scales.clone(), city.flip, city.test_steps),
        (vec![2048], true, 1)
    );
    assert_eq!(city.canvas_size(2048, (2048, 1024), 8), (2048, 1024));
    assert_eq!(city.canvas_size(98, (98, 42), 8), (104, 48));
    assert_eq!(TestProtocol::default(), voc);
    // the canvas follows the output stride when it is coarser than the multiple
    assert_eq!(voc.effective_multiple(8), 8);
    assert_eq!(voc.effective_multiple(32), 32);
    assert_eq!(voc.canvas_size(500, (500, 375), 32), (512, 512));
}
