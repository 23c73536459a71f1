//! psa's classifier checkpoint and CAM protocol against `tools/psa_reference.py` (PyTorch,
//! checked once against psa's own `infer_cls.py`), on the reduced-width fixture
//! `tests/fixtures/psa` whose BN running variances are small enough for the epsilon to matter.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use r38_model::weights::{self, WeightFile};
use r38_model::{Arch, BackboneConfig, CamClassifier, HeadKind, Lineage, Origin};
use r38_seg::{infer_cams, CamProtocol};

const TOLERANCE: f32 = 1e-4;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/psa")
}

fn npy(name: &str) -> Tensor {
    Tensor::read_npy(fixture().join(name)).unwrap()
}

fn values(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// max |a - b| / max |b|.
fn relative_error(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "sizes differ");
    let scale = b
        .iter()
        .fold(0f32, |m, v| m.max(v.abs()))
        .max(f32::MIN_POSITIVE);
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

fn load() -> (WeightFile, Origin) {
    let file = weights::load(&fixture().join("cls.pth")).unwrap();
    let origin = Origin::detect(&file).unwrap();
    (file, origin)
}

fn build(file: &WeightFile, config: &BackboneConfig, classes: usize) -> CamClassifier {
    r38_model::build_strict("cls.pth", &file.tensors, DType::F32, &Device::Cpu, |vb| {
        CamClassifier::new(config, classes, false, vb)
    })
    .unwrap()
}

fn config(file: &WeightFile, origin: &Origin) -> BackboneConfig {
    let shapes = file.shapes();
    let mut config =
        BackboneConfig::infer(&shapes, Arch::A1, origin.default_output_stride()).unwrap();
    config.bn_eps = origin.bn_eps();
    config
}

#[test]
fn psa_classifier_is_recognised() {
    let (file, origin) = load();
    assert_eq!(origin.lineage, Lineage::Psa);
    assert_eq!(
        origin.head,
        HeadKind::Fc8 {
            classes: 20,
            background: false
        }
    );
    assert_eq!(origin.default_output_stride(), 8);
    assert_eq!(origin.bn_eps(), 1e-5);
    assert!(origin.unsupported.is_empty(), "{:?}", origin.unsupported);
    assert_eq!(config(&file, &origin).output_stride(), 8);
}

#[test]
fn relu7_with_pytorch_eps_matches_and_mxnet_eps_does_not() {
    let (file, origin) = load();
    let mut config = config(&file, &origin);
    let x = npy("input.npy");
    let expected = values(&npy("relu7.npy"));
    let net = build(&file, &config, 20);
    let got = values(&net.backbone().forward_t(&x, false).unwrap());
    let err = relative_error(&got, &expected);
    eprintln!("relu7, eps 1e-5: relative error {err:e}");
    assert!(
        err <= TOLERANCE,
        "relu7 with eps 1e-5: relative error {err:e}"
    );
    // The same file run with MXNet's epsilon is measurably off: the fixture can tell them apart.
    config.bn_eps = r38_model::config::BN_EPS;
    let wrong = values(
        &build(&file, &config, 20)
            .backbone()
            .forward_t(&x, false)
            .unwrap(),
    );
    let err_mx = relative_error(&wrong, &expected);
    eprintln!("relu7, eps 1.001e-5: relative error {err_mx:e}");
    assert!(
        err_mx > 10.0 * TOLERANCE,
        "eps 1.001e-5 error only {err_mx:e}"
    );
}

#[test]
fn cams_match_psa_protocol() {
    check_cams_against_psa();
}

/// The GPU's path (candle's convolutions and BN) on the CPU.
#[test]
fn cams_on_the_exact_path_match_psa_protocol() {
    r38_ops::engine::with_engine(r38_ops::engine::Engine::Exact, check_cams_against_psa);
}

fn check_cams_against_psa() {
    let (file, origin) = load();
    let net = build(&file, &config(&file, &origin), 20);
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture().join("meta.json")).unwrap())
            .unwrap();
    let labels: Vec<usize> = serde_json::from_value(meta["labels"].clone()).unwrap();
    let image = r38_data::load_rgb8(fixture().join("image.png")).unwrap();
    let cams = infer_cams(
        &net,
        &image,
        Some(&labels),
        &CamProtocol::psa(),
        &Device::Cpu,
    )
    .unwrap();
    assert_eq!(cams.classes, labels);
    assert!(cams.labelled);

    let scores = values(&npy("scores.npy"));
    let err = relative_error(&cams.scores, &scores);
    assert!(err <= TOLERANCE, "scores: relative error {err:e}");

    let expected = values(&npy("cams.npy"));
    let worst = cams
        .maps
        .iter()
        .zip(&expected)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    // The maps are normalised to a maximum of 1: absolute and relative error coincide.
    eprintln!("scores: relative error {err:e}; labelled CAMs: max |diff| {worst:e}");
    assert!(worst <= TOLERANCE, "CAMs: max |diff| {worst:e}");

    let pred: Vec<u8> = npy("cam_pred.npy")
        .to_dtype(DType::U8)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let got = cams.label_map(r38_seg::cam::PSA_BG_THRESHOLD);
    let agree = got.iter().zip(&pred).filter(|(a, b)| a == b).count();
    // Ties at the 0.2 threshold may flip a pixel or two within the tolerance.
    assert!(
        agree * 1000 >= pred.len() * 999,
        "label map: {agree} of {} pixels agree",
        pred.len()
    );
}

#[test]
fn cams_of_predicted_classes() {
    let (file, origin) = load();
    let net = build(&file, &config(&file, &origin), 20);
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture().join("meta.json")).unwrap())
            .unwrap();
    let predicted: Vec<usize> = serde_json::from_value(meta["predicted"].clone()).unwrap();
    let image = r38_data::load_rgb8(fixture().join("image.png")).unwrap();
    let cams = infer_cams(&net, &image, None, &CamProtocol::psa(), &Device::Cpu).unwrap();
    assert_eq!(cams.classes, predicted);
    assert!(!cams.labelled);
    let expected = values(&npy("cams_predicted.npy"));
    let worst = cams
        .maps
        .iter()
        .zip(&expected)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    eprintln!("predicted-class CAMs: max |diff| {worst:e}");
    assert!(worst <= TOLERANCE, "CAMs: max |diff| {worst:e}");
}

#[test]
fn seam_fc8_is_refused_with_a_reason() {
    let (file, origin) = load();
    let config = config(&file, &origin);
    let net = r38_model::build_strict("cls.pth", &file.tensors, DType::F32, &Device::Cpu, |vb| {
        CamClassifier::new(&config, 20, true, vb)
    })
    .unwrap();
    let image = r38_data::load_rgb8(fixture().join("image.png")).unwrap();
    let err = infer_cams(&net, &image, None, &CamProtocol::psa(), &Device::Cpu).unwrap_err();
    assert!(err.to_string().contains("PCM"), "{err}");
    let err = infer_cams(
        &build(&file, &config, 20),
        &image,
        Some(&[20]),
        &CamProtocol::psa(),
        &Device::Cpu,
    )
    .unwrap_err();
    assert!(err.to_string().contains("out of range"), "{err}");
}

#[test]
fn seam_and_one_stage_wseg_checkpoints_load_without_flags() {
    let x = npy("input.npy");
    for (file, lineage, relu7) in [
        ("seam.pth", Lineage::Seam, "seam_relu7.npy"),
        ("wseg.pth", Lineage::OneStageWseg, "wseg_relu7.npy"),
    ] {
        let weights = weights::load(&fixture().join(file)).unwrap();
        let origin = Origin::detect(&weights).unwrap();
        assert_eq!(origin.lineage, lineage, "{file}");
        assert_eq!(
            origin.unsupported.len(),
            1,
            "{file}: {:?}",
            origin.unsupported
        );
        let config = config(&weights, &origin);
        assert_eq!((config.output_stride(), config.bn_eps), (8, 1e-5), "{file}");
        let features = match origin.head {
            HeadKind::Fc8 {
                classes,
                background,
            } => {
                assert_eq!((classes, background, lineage), (21, true, Lineage::Seam));
                let net = r38_model::build_strict(
                    file,
                    &weights.tensors,
                    DType::F32,
                    &Device::Cpu,
                    |vb| CamClassifier::new(&config, classes, background, vb),
                )
                .unwrap();
                net.backbone().forward_t(&x, false).unwrap()
            }
            HeadKind::None => {
                assert_eq!(lineage, Lineage::OneStageWseg);
                r38_model::build_strict(file, &weights.tensors, DType::F32, &Device::Cpu, |vb| {
                    r38_model::Backbone::new(&config, vb)?.forward_t(&x, false)
                })
                .unwrap()
            }
            other => panic!("{file}: head {other:?}"),
        };
        let err = relative_error(&values(&features), &values(&npy(relu7)));
        eprintln!("{file}: relu7 relative error {err:e}");
        assert!(err <= TOLERANCE, "{file}: relu7 relative error {err:e}");
    }
}
