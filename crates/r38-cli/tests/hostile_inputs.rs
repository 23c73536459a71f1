//! Hostile inputs, round two (issue 14): `.npy` headers, `r38.*` metadata, file-size limits,
//! text from files on the terminal and in Markdown, label maps of more than 255 classes. Every
//! hostile file is built here, small; each case must end in a clear error naming the file (exit
//! 1, no panic, no abort, under 2 GiB of virtual memory), or in the right output. The limits
//! are set with `sh` and `ulimit`, so the file is for Unix.
#![cfg(unix)]

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use r38_model::{BackboneConfig, Classifier, HeadKind, ModelMetadata, Preprocess};
use r38_seg::{HeadConfig, SegmentationNet};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs `r38` under 2 GiB of virtual memory (the bound): an allocation sized by a
/// hostile header fails there instead of succeeding on a large machine.
fn r38(args: &[&str]) -> Output {
    Command::new("sh")
        .args(["-c", "ulimit -v 2097152 && exec \"$0\" \"$@\""])
        .arg(env!("CARGO_BIN_EXE_r38"))
        .args(args)
        .output()
        .expect("the r38 binary runs")
}

/// The command exits with status 1 (not a signal, not a panic) within 30 s and its message
/// contains every needle.
fn fails_with(args: &[&str], needles: &[&str]) -> String {
    let start = std::time::Instant::now();
    let out = r38(args);
    // The bound; every case here takes a fraction of a second.
    assert!(
        start.elapsed().as_secs() < 30,
        "r38 {args:?}: {:?}",
        start.elapsed()
    );
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "r38 {args:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "r38 {args:?}: {stderr}");
    for n in needles {
        assert!(stderr.contains(n), "r38 {args:?}: `{n}` not in:\n{stderr}");
    }
    stderr
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("r38-hostile-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A `.npy` file: `dict` as the header (version 1 or 2), then `data`.
fn npy(version: u8, dict: &str, data: &[u8]) -> Vec<u8> {
    let mut out = b"\x93NUMPY".to_vec();
    out.extend([version, 0]);
    if version == 1 {
        out.extend((dict.len() as u16).to_le_bytes());
    } else {
        out.extend((dict.len() as u32).to_le_bytes());
    }
    out.extend(dict.as_bytes());
    out.extend(data);
    out
}

fn forward_args<'a>(weights: &'a str, input: &'a str, output: &'a str) -> Vec<&'a str> {
    vec![
        "forward",
        "--weights",
        weights,
        "--input",
        input,
        "--output",
        output,
        "--overwrite",
    ]
}

#[test]
fn npy_headers_are_checked_against_the_file() {
    let dir = scratch("npy");
    let out = dir.join("out.npy");
    // The input is read before the weights: a missing weight file is never reached.
    let weights = dir.join("never-read.safetensors");
    let cases: [(&str, Vec<u8>, &str); 6] = [
        (
            // 192 bytes claiming 120 GB.
            "huge.npy",
            npy(
                1,
                "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 3, 100000, 100000), }",
                &[0; 100],
            ),
            "needs 120000000000 data bytes, the file holds 100",
        ),
        (
            // 2^62 * 4 * 4 bytes wraps to 0 in 64 bits.
            "wraps.npy",
            npy(
                1,
                "{'descr': '<f4', 'fortran_order': False, 'shape': (4611686018427387904, 4, 1, 1), }",
                &[],
            ),
            "overflows",
        ),
        (
            "sides.npy",
            npy(
                1,
                "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 3, 4294967296, 4294967296), }",
                &[0; 48],
            ),
            "overflows",
        ),
        (
            // A version-2 header length of 4 GB.
            "v2.npy",
            npy(2, "", &[b' '; 64])
                .into_iter()
                .enumerate()
                .map(|(i, b)| if (8..12).contains(&i) { 0xff } else { b })
                .collect(),
            "header of 4294967295 bytes (limit 10000",
        ),
        (
            // Consistent, but taller than the forward pass accepts.
            "tall.npy",
            npy(
                1,
                "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 3, 8193, 1), }",
                &vec![0; 3 * 8193 * 4],
            ),
            "exceeds the side limit of 8192",
        ),
        (
            "big-endian.npy",
            npy(
                1,
                "{'descr': '>f4', 'fortran_order': False, 'shape': (1, 3, 1, 1), }",
                &[0; 12],
            ),
            "unsupported dtype",
        ),
    ];
    for (name, bytes, needle) in cases {
        let input = dir.join(name);
        std::fs::write(&input, bytes).unwrap();
        let args = forward_args(
            weights.to_str().unwrap(),
            input.to_str().unwrap(),
            out.to_str().unwrap(),
        );
        fails_with(&args, &[name, needle]);
        assert!(!out.exists());
    }
}

/// A narrowed A1 classifier (or segmentation net) with its metadata, random weights.
fn small_model(classes: usize, seg: bool) -> (BTreeMap<String, Tensor>, ModelMetadata) {
    let config = BackboneConfig::model_a1(8).unwrap().narrowed(32);
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let head = if seg {
        SegmentationNet::new(&config, HeadConfig::one_conv(classes), &vb).unwrap();
        HeadKind::Segmentation {
            classes,
            hidden: None,
            kernel: 3,
        }
    } else {
        Classifier::new(&config, classes, &vb).unwrap();
        HeadKind::Classifier { classes }
    };
    let tensors = varmap
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
        .collect();
    let meta = ModelMetadata {
        arch: r38_model::Arch::A1,
        output_stride: config.output_stride(),
        config,
        preprocess: Preprocess::for_head(&head),
        head,
        head_dilation: seg.then_some(12),
        class_names: None,
        source_file: Some("small.params".into()),
        source_md5: None,
        released: None,
        lineage: None,
        extra: BTreeMap::new(),
    };
    (tensors, meta)
}

fn save(path: &Path, tensors: &BTreeMap<String, Tensor>, map: &BTreeMap<String, String>) {
    r38_model::weights::save_safetensors(path, tensors, map).unwrap();
}

fn small_input(dir: &Path) -> PathBuf {
    let path = dir.join("x.npy");
    Tensor::zeros((1, 3, 16, 16), DType::F32, &Device::Cpu)
        .unwrap()
        .write_npy(&path)
        .unwrap();
    path
}

/// Each field of the `r38.*` metadata, set to what used to panic, abort, run for a minute or
/// pass silently; every one is refused before the network is built, naming the file, the
/// field and the limit, in a short message.
#[test]
fn metadata_is_validated_before_building() {
    let dir = scratch("metadata");
    let (tensors, meta) = small_model(10, false);
    let input = small_input(&dir);
    let out = dir.join("out.npy");
    let good = dir.join("good.safetensors");
    save(&good, &tensors, &meta.to_map());
    let g = good.to_str().unwrap();
    let args = forward_args(g, input.to_str().unwrap(), out.to_str().unwrap());
    let ok = r38(&args);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );

    type Mutation = fn(&mut ModelMetadata);
    let cases: [(&str, Mutation, &[&str]); 14] = [
        (
            "stem",
            |m| m.config.stem.channels = 1 << 62,
            &["stem channels", "65536"],
        ),
        ("crop", |m| m.preprocess.crop = Some(0), &["crop 0", "4096"]),
        (
            "units",
            |m| m.config.levels[0].units = 1_000_000_000,
            &["units", "256"],
        ),
        (
            "million",
            |m| m.config.levels[0].units = 1_000_000,
            &["units", "256"],
        ),
        (
            "width",
            |m| m.config.levels[1].widths[0] = 1 << 40,
            &["width", "65536"],
        ),
        (
            "scale",
            |m| m.preprocess.test_scale = 100_000,
            &["test_scale", "4096"],
        ),
        (
            "dilation",
            |m| m.head_dilation = Some(1_000_000_000),
            &["head_dilation", "64"],
        ),
        (
            "dilation0",
            |m| m.head_dilation = Some(0),
            &["head_dilation"],
        ),
        (
            "dilation63",
            |m| m.head_dilation = Some(1 << 63),
            &["head_dilation"],
        ),
        ("stride", |m| m.output_stride = 3, &["output_stride", "3"]),
        ("std", |m| m.preprocess.std = [0.0; 3], &["std 0"]),
        ("eps", |m| m.config.bn_eps = 1e308, &["bn_eps", "0.1"]),
        ("eps0", |m| m.config.bn_eps = 0.0, &["bn_eps 0"]),
        (
            "classes",
            |m| {
                m.head = HeadKind::Classifier {
                    classes: 1_000_000_000,
                }
            },
            &["classes", "65535"],
        ),
    ];
    for (name, mutate, needles) in cases {
        let mut m = meta.clone();
        mutate(&mut m);
        let file = dir.join(format!("{name}.safetensors"));
        // The tensors stay those of the good file: only the metadata lies.
        save(&file, &tensors, &m.to_map());
        let f = file.to_str().unwrap();
        let args = forward_args(f, input.to_str().unwrap(), out.to_str().unwrap());
        let mut all = vec![f];
        all.extend(needles);
        let stderr = fails_with(&args, &all);
        assert!(
            stderr.len() < 2000,
            "{name}: {} bytes:\n{stderr}",
            stderr.len()
        );
    }

    // A configuration that describes other tensors than the file's: a short list, the rest
    // counted, not a line per tensor.
    let mut m = meta.clone();
    m.config.levels[2].units = 200;
    let file = dir.join("deeper.safetensors");
    save(&file, &tensors, &m.to_map());
    let f = file.to_str().unwrap();
    let args = forward_args(f, input.to_str().unwrap(), out.to_str().unwrap());
    let stderr = fails_with(&args, &[f, "does not describe the file's tensors", "more"]);
    assert!(stderr.lines().count() < 5, "{stderr}");
}

/// Text from a file's metadata is shown, not obeyed: escapes on the terminal, literal text in
/// the model card.
#[test]
fn metadata_text_is_escaped() {
    let dir = scratch("escape");
    let (tensors, mut meta) = small_model(10, false);
    meta.source_file = Some("evil\x1b[2J\x1b]0;owned\x07\n| fake | row |".into());
    meta.source_md5 = Some("<img src=x onerror=alert(1)>`[click](javascript:alert(1))".into());
    meta.released = Some("\u{202e}sretemarap.exe".into());
    let mut map = meta.to_map();
    map.insert(
        "r38.class_names".into(),
        serde_json::to_string(&(0..10).map(|i| format!("c{i}\x1b[31m")).collect::<Vec<_>>())
            .unwrap(),
    );
    let file = dir.join("text.safetensors");
    save(&file, &tensors, &map);
    let f = file.to_str().unwrap();

    let out = r38(&["inspect", f]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        !stdout.contains('\x1b') && !stdout.contains('\x07'),
        "{stdout:?}"
    );
    assert!(!stdout.contains('\u{202e}'), "{stdout:?}");
    assert!(stdout.contains("evil\\u{1b}[2J"), "{stdout}");
    assert!(!stdout.contains("\n| fake"), "{stdout}");

    let out = r38(&["card", f]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let card = String::from_utf8(out.stdout).unwrap();
    assert!(
        !card.contains('\x1b') && !card.contains('\u{202e}'),
        "{card:?}"
    );
    assert!(!card.contains("\n| fake"), "{card}");
    let md5_line = card
        .lines()
        .find(|l| l.starts_with("- source MD5"))
        .unwrap();
    // Inside a code span longer than any backtick run: the HTML and the link stay text.
    assert_eq!(
        md5_line,
        "- source MD5: ``<img src=x onerror=alert(1)>`[click](javascript:alert(1))``"
    );

    // classify prints the file's class names.
    let image = dir.join("photo.png");
    r38_data::image::RgbImage::from_pixel(24, 24, r38_data::image::Rgb([9, 99, 199]))
        .save(&image)
        .unwrap();
    let out = r38(&["classify", "--weights", f, image.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        !stdout.contains('\x1b') && stdout.contains("\\u{1b}[31m"),
        "{stdout:?}"
    );
}

/// More than 255 classes: the label map is a 16-bit PNG holding the true class ids, not the
/// ids modulo 256.
#[test]
fn label_maps_of_many_classes_are_not_truncated() {
    let dir = scratch("classes");
    let (tensors, meta) = small_model(300, true);
    let file = dir.join("many.safetensors");
    save(&file, &tensors, &meta.to_map());
    let image = dir.join("photo.png");
    r38_data::image::RgbImage::from_fn(24, 16, |x, y| {
        r38_data::image::Rgb([(x * 10) as u8, (y * 15) as u8, 77])
    })
    .save(&image)
    .unwrap();
    let out_dir = dir.join("out");
    let out = r38(&[
        "segment",
        "--weights",
        file.to_str().unwrap(),
        image.to_str().unwrap(),
        "--out-dir",
        out_dir.to_str().unwrap(),
        "--scale",
        "32",
        "--no-flip",
        "--save-probs",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let png = std::fs::read(out_dir.join("photo.png")).unwrap();
    let decoder =
        r38_data::image::codecs::png::PngDecoder::new(std::io::Cursor::new(&png)).unwrap();
    use r38_data::image::ImageDecoder;
    assert_eq!(decoder.color_type(), r38_data::image::ColorType::L16);
    let mut raw = vec![0u8; decoder.total_bytes() as usize];
    decoder.read_image(&mut raw).unwrap();
    let ids: Vec<u32> = raw
        .chunks_exact(2)
        .map(|b| u32::from(u16::from_ne_bytes([b[0], b[1]])))
        .collect();
    // The saved probabilities' argmax is what the PNG must hold.
    let probs = r38_data::npy::read_npy(out_dir.join("photo_probs.npy")).unwrap();
    let argmax: Vec<u32> = probs
        .argmax(0)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(ids, argmax);
}

/// Past the file-size limit (`ulimit -f`), a write fails with EFBIG instead of killing the
/// process with SIGXFSZ: exit 1, the output named, no `.partial` file left behind.
#[test]
fn file_size_limit_fails_cleanly() {
    let dir = scratch("fsize");
    let (tensors, meta) = small_model(10, false);
    let weights = dir.join("w.safetensors");
    save(&weights, &tensors, &meta.to_map());
    let input = dir.join("x.npy");
    // 8 images: the features of `--head none` are 8 x 128 x 2 x 2 f32, 16 KiB.
    Tensor::zeros((8, 3, 16, 16), DType::F32, &Device::Cpu)
        .unwrap()
        .write_npy(&input)
        .unwrap();
    let out_dir = dir.join("out");
    std::fs::create_dir_all(&out_dir).unwrap();
    let output = out_dir.join("features.npy");
    // `ulimit -f` counts 1024-byte blocks in bash and 512-byte blocks in some shells; 4 is
    // below 16 KiB either way.
    let script = format!(
        "ulimit -f 4 && exec \"$0\" forward --weights '{}' --head none --input '{}' --output '{}'",
        weights.display(),
        input.display(),
        output.display()
    );
    let out = Command::new("sh")
        .args(["-c", &script, env!("CARGO_BIN_EXE_r38")])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{:?}: {stderr}", out.status);
    assert!(stderr.contains("features.npy"), "{stderr}");
    let left: Vec<_> = std::fs::read_dir(&out_dir).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
}

/// The same limit hit by `segment --save-probs`: the probabilities (21 x 16 x 24 f32, 32 KiB)
/// do not fit, and the error names `_probs.npy`, not a temporary.
#[test]
fn failed_probability_writes_name_the_file() {
    let dir = scratch("probs");
    let (tensors, meta) = small_model(21, true);
    let weights = dir.join("seg.safetensors");
    save(&weights, &tensors, &meta.to_map());
    let image = dir.join("photo.png");
    r38_data::image::RgbImage::from_pixel(24, 16, r38_data::image::Rgb([120, 30, 200]))
        .save(&image)
        .unwrap();
    let out_dir = dir.join("out");
    let script = format!(
        "ulimit -f 4 && exec \"$0\" segment --weights '{}' '{}' --out-dir '{}' --scale 32 \
         --no-flip --save-probs",
        weights.display(),
        image.display(),
        out_dir.display()
    );
    let out = Command::new("sh")
        .args(["-c", &script, env!("CARGO_BIN_EXE_r38")])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{:?}: {stderr}", out.status);
    assert!(stderr.contains("photo_probs.npy: cannot write"), "{stderr}");
    assert!(!stderr.contains(".partial"), "{stderr}");
    let left: Vec<String> = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
