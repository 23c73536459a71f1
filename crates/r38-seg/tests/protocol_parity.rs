//! The test protocol against `tools/seg_protocol_reference.py`: the reduced-width A1 s8
//! segmentation fixture network (`tests/fixtures/a1_s8_seg`) run through the authors' protocol
//! in MXNet + Pillow, results in `tests/fixtures/seg_protocol/`.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use r38_data::image::RgbImage;
use r38_data::load_rgb8;
use r38_model::BackboneConfig;
use r38_seg::sliding_window::{windowed_probabilities, WindowPlan};
use r38_seg::test_time::shift_offsets;
use r38_seg::{
    CanvasLimit, CanvasSize, HeadConfig, ScoreNet, SegmentationNet, StridedProbabilities,
    TestProtocol,
};
use serde::Deserialize;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

#[derive(Deserialize)]
struct NetMeta {
    config: BackboneConfig,
    classes: usize,
    seg_hidden: Option<usize>,
    seg_dilation: usize,
}

#[derive(Deserialize)]
struct Manifest {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    scale: u32,
    canvas: String,
    canvas_size: [u32; 2],
    flip: bool,
    steps: u32,
    scaled: [u32; 2],
    pred_stride: usize,
    offsets: Vec<isize>,
}

fn fixture_net() -> SegmentationNet {
    let dir = fixtures().join("a1_s8_seg");
    let meta: NetMeta =
        serde_json::from_str(&std::fs::read_to_string(dir.join("meta.json")).unwrap()).unwrap();
    let file = r38_model::weights::load(&dir.join("weights.params")).unwrap();
    let head = HeadConfig {
        classes: meta.classes,
        hidden: meta.seg_hidden,
        kernel: 3,
        dilation: meta.seg_dilation,
    };
    r38_model::build_strict(
        "a1_s8_seg/weights.params",
        &file.tensors,
        DType::F32,
        &Device::Cpu,
        |vb| SegmentationNet::new(&meta.config, head, vb),
    )
    .unwrap()
}

fn manifest() -> Manifest {
    let path = fixtures().join("seg_protocol/manifest.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn npy(name: &str) -> Tensor {
    let path = fixtures().join("seg_protocol").join(name);
    r38_data::npy::read_npy(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

fn protocol_for(case: &Case) -> TestProtocol {
    TestProtocol {
        flip: case.flip,
        test_steps: case.steps,
        canvas: match case.canvas.as_str() {
            "square" => CanvasSize::Square,
            "fit" => CanvasSize::FitImage,
            other => panic!("canvas {other}"),
        },
        ..TestProtocol::single_scale(case.scale)
    }
}

fn input(case: &Case) -> RgbImage {
    load_rgb8(
        fixtures()
            .join("seg_protocol")
            .join(format!("{}_input.png", case.name)),
    )
    .unwrap()
}

#[test]
fn protocol_matches_mxnet_reference() {
    check_protocol_against_mxnet();
}

/// The GPU's path (candle's convolutions and BN) on the CPU.
#[test]
fn protocol_on_the_exact_path_matches_mxnet_reference() {
    r38_ops::engine::with_engine(r38_ops::engine::Engine::Exact, check_protocol_against_mxnet);
}

fn check_protocol_against_mxnet() {
    let net = fixture_net();
    let nets: [&dyn ScoreNet; 1] = [&net];
    for case in manifest().cases {
        let protocol = protocol_for(&case);
        let image = input(&case);
        let (w0, h0) = image.dimensions();

        // step 1: the 8-bit resize is byte-identical to Pillow's
        let scaled = protocol.scale_image(&image, case.scale).unwrap();
        assert_eq!(scaled.dimensions(), (case.scaled[0], case.scaled[1]));
        let scaled_png = fixtures()
            .join("seg_protocol")
            .join(format!("{}_scaled.png", case.name));
        if scaled_png.exists() {
            assert!(
                scaled.as_raw() == load_rgb8(&scaled_png).unwrap().as_raw(),
                "{}: scaled image differs from Pillow's",
                case.name
            );
        }
        assert_eq!(
            protocol.canvas_size(case.scale, scaled.dimensions(), 8),
            (case.canvas_size[0], case.canvas_size[1])
        );
        assert_eq!(shift_offsets(8, case.steps as usize).unwrap(), case.offsets);

        // steps 2-6: probabilities at the prediction stride (their net_preds)
        let prepared = protocol.prepare(&image, case.scale).unwrap();
        let strided = protocol.strided_probabilities(&nets, &prepared).unwrap();
        assert_eq!(strided.stride, case.pred_stride);
        let want_net = npy(&format!("{}_net.npy", case.name));
        let net_diff = max_abs_diff(&strided.probabilities, &want_net);

        // step 7 alone, from the reference's own strided map: Pillow bicubic (+ resize back)
        let want = npy(&format!("{}_probs.npy", case.name));
        let from_ref = StridedProbabilities {
            probabilities: want_net.clone(),
            ..strided.clone()
        }
        .upsample(protocol.interpolation)
        .unwrap();
        let upsample_diff = max_abs_diff(&from_ref, &want);

        // the whole protocol
        let pred = protocol.predict(&nets, &image).unwrap();
        assert_eq!((pred.width, pred.height), (w0, h0));
        assert_eq!(pred.probabilities.dims(), &[5, h0 as usize, w0 as usize]);
        let prob_diff = max_abs_diff(&pred.probabilities, &want);
        let want_labels = npy(&format!("{}_labels.npy", case.name))
            .to_dtype(DType::U32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<u32>()
            .unwrap();
        let same = pred
            .labels
            .iter()
            .zip(&want_labels)
            .filter(|(a, b)| a == b)
            .count();
        let agreement = same as f64 / want_labels.len() as f64;
        println!(
            "{}: net-stride max|diff| {net_diff:.3e}, upsample-only {upsample_diff:.3e}, \
             final {prob_diff:.3e}, labels {same}/{} equal",
            case.name,
            want_labels.len()
        );
        assert!(net_diff < 1e-5, "{}: strided probabilities", case.name);
        assert!(upsample_diff < 1e-5, "{}: upsampling vs Pillow", case.name);
        assert!(prob_diff < 1e-4, "{}: final probabilities", case.name);
        assert!(
            agreement >= 0.999,
            "{}: label agreement {agreement}",
            case.name
        );
    }
}

#[test]
fn model_averaging_and_window_as_large_as_canvas_are_exact() {
    let net = fixture_net();
    let case = manifest()
        .cases
        .into_iter()
        .find(|c| c.name == "down_flip_steps2")
        .unwrap();
    let image = input(&case);
    let protocol = protocol_for(&case);
    let single = protocol.predict(&[&net], &image).unwrap();

    // two copies of one network average to the network itself
    let twice = protocol.predict(&[&net, &net], &image).unwrap();
    assert_eq!(
        max_abs_diff(&twice.probabilities, &single.probabilities),
        0.0
    );

    // a window as large as the canvas is the single pass, bit for bit
    for limit in [
        CanvasLimit::Size {
            height: 104,
            width: 104,
        },
        CanvasLimit::Pixels(104 * 104),
    ] {
        let windowed = TestProtocol {
            max_canvas: Some(limit),
            ..protocol.clone()
        }
        .predict(&[&net], &image)
        .unwrap();
        assert_eq!(
            max_abs_diff(&windowed.probabilities, &single.probabilities),
            0.0
        );
    }

    // the tiled code path with one tile covering the canvas is the single pass too
    let x = Tensor::randn(0f32, 1f32, (1, 3, 104, 104), &Device::Cpu).unwrap();
    let one_tile = WindowPlan::new((104, 104), (104, 104), 0, 8).unwrap();
    assert!(one_tile.is_single());
    let a = windowed_probabilities(&[&net], &x, &one_tile).unwrap();
    let b = r38_seg::mean_probabilities(&[&net], &x).unwrap();
    assert_eq!(a, b);

    // real tiles cut the receptive field: close to the single pass, not equal
    let tiled = TestProtocol {
        max_canvas: Some(CanvasLimit::Size {
            height: 64,
            width: 64,
        }),
        window_overlap: 32,
        ..protocol.clone()
    }
    .predict(&[&net], &image)
    .unwrap();
    let diff = max_abs_diff(&tiled.probabilities, &single.probabilities);
    println!("64x64 tiles (overlap 32) vs one 104x104 pass: max|diff| {diff:.3e}");
    assert!(diff > 0.0 && diff < 0.5);
    let sums = tiled.probabilities.sum(0).unwrap();
    let ones = Tensor::ones_like(&sums).unwrap();
    assert!(
        max_abs_diff(&sums, &ones) < 1e-4,
        "tiles keep probabilities normalised"
    );
}
