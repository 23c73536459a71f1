//! `r38 demo`: first contact. Classifies and segments the shipped samples with the two small
//! ResNet-38-family models this project trained (`weights/`), writes label maps, overlays and a
//! report, and says how to do the same with the authors' full-size weights.

use super::seg_common::{overlay, save_png};
use crate::network::{check_overwrite, write_atomically};
use anyhow::{bail, Context, Result};
use r38::data::datasets::{
    write_label_png, DatasetKind, LabelMap, SegDataset, SegmentationDataset,
};
use r38::data::ImageLoader;
use r38::seg::ConfusionMatrix;
use r38::Pretrained;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Run the shipped models on the shipped samples.
#[derive(clap::Args)]
pub struct Args {
    /// Folder with fashion-mnist-classifier.safetensors and fashion-scenes-segmenter.safetensors
    /// (default: the copies compiled into this binary).
    #[arg(long)]
    pub weights_dir: Option<PathBuf>,
    /// Folder with fashion-items/ and fashion-scenes/ (default: the copies compiled into this
    /// binary).
    #[arg(long)]
    pub samples_dir: Option<PathBuf>,
    /// Where to write the outputs.
    #[arg(long, default_value = "r38-demo")]
    pub out_dir: PathBuf,
    /// Replace the outputs of an earlier run.
    #[arg(long)]
    pub overwrite: bool,
    /// Compute device: cpu, cuda[:N] (feature `cuda`) or metal (feature `metal`).
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// The true class of a sample item, from its file name `<index>-<class>.png`.
fn true_class(path: &Path, names: &[String]) -> Option<usize> {
    let stem = path.file_stem()?.to_string_lossy().to_lowercase();
    let tail = stem.split_once('-')?.1.to_string();
    names
        .iter()
        .position(|n| n.to_lowercase().replace(['/', ' '], "-") == tail)
}

pub fn run(args: Args) -> Result<()> {
    let shipped = match (&args.weights_dir, &args.samples_dir) {
        (Some(_), Some(_)) => None,
        _ => Some(crate::assets::shipped_root()?),
    };
    let weights = args
        .weights_dir
        .clone()
        .or_else(|| shipped.as_ref().map(|r| r.join("weights")))
        .context("a weights folder")?;
    let samples = args
        .samples_dir
        .clone()
        .or_else(|| shipped.as_ref().map(|r| r.join("samples")))
        .context("a samples folder")?;
    let out = &args.out_dir;
    std::fs::create_dir_all(out).with_context(|| format!("{}: cannot create", out.display()))?;
    let report_md = out.join("report.md");
    let report_json = out.join("report.json");
    check_overwrite(&report_md, args.overwrite)?;
    check_overwrite(&report_json, args.overwrite)?;
    let loader = ImageLoader::new();
    let device = crate::network::device(&args.device)?;
    let mut md = String::from("# r38 demo\n\n");

    // Classification of the shipped Fashion-MNIST test items.
    let classifier_path = weights.join("fashion-mnist-classifier.safetensors");
    let classifier = Pretrained::load(&classifier_path, &device)?;
    let names = classifier.class_names().to_vec();
    let items_dir = samples.join("fashion-items");
    let mut items: Vec<PathBuf> = std::fs::read_dir(&items_dir)
        .with_context(|| format!("{}: cannot read", items_dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    items.sort();
    if items.is_empty() {
        bail!("{}: no sample items", items_dir.display());
    }
    let _ = writeln!(
        md,
        "## Classification: `{}`\n\n| image | true class | prediction | probability | 2nd | 3rd |\n|---|---|---|---:|---|---|",
        classifier_path.display()
    );
    let mut correct = 0;
    let mut classified = Vec::new();
    for path in &items {
        let image = loader.load_rgb8(path)?;
        let top = classifier
            .classify(&image)
            .with_context(|| format!("{}", path.display()))?;
        let top = &top[..3.min(top.len())];
        let truth = true_class(path, &names);
        correct += usize::from(truth == Some(top[0].index));
        let file = path.file_name().unwrap_or_default().to_string_lossy();
        let name = |i: usize| top.get(i).map_or("", |c| c.name.as_str());
        let _ = writeln!(
            md,
            "| {file} | {} | {} | {:.1}% | {} | {} |",
            truth.map_or("?", |t| names[t].as_str()),
            name(0),
            100.0 * top[0].probability,
            name(1),
            name(2)
        );
        classified.push(serde_json::json!({
            "image": path, "true_class": truth.map(|t| &names[t]), "top": top,
        }));
    }
    let _ = writeln!(md, "\n{correct} of {} correct.\n", items.len());
    println!("classified {} items: {correct} correct", items.len());

    // Segmentation of the shipped fashion scenes, with the protocol the segmenter records.
    let segmenter_path = weights.join("fashion-scenes-segmenter.safetensors");
    let segmenter = Pretrained::load(&segmenter_path, &device)?;
    let scenes = SegDataset::open(
        DatasetKind::FashionScenes,
        samples.join("fashion-scenes"),
        "val",
    )?;
    let protocol = segmenter.test_protocol();
    let palette = segmenter.palette();
    let class_list = DatasetKind::FashionScenes.classes();
    let mut total = ConfusionMatrix::new(class_list.len(), Some(255));
    let _ = writeln!(
        md,
        "## Segmentation: `{}`\n\nTest protocol: single scale {}, {}. Outputs: `<scene>.png` (palette label map), `<scene>_overlay.png`.\n\n| scene | pixel accuracy | classes found |\n|---|---:|---|",
        segmenter_path.display(),
        protocol.scales[0],
        if protocol.flip { "flipping" } else { "no flipping" }
    );
    let mut segmented = Vec::new();
    for i in 0..scenes.len() {
        let sample = scenes.sample(i)?;
        let image = scenes.load_image(&sample)?;
        let truth = scenes.load_label(&sample)?;
        let prediction = segmenter
            .segment_with(&image, &protocol)
            .with_context(|| format!("{}: segmentation", sample.image_path.display()))?;
        let labels: Vec<u8> = prediction.labels.iter().map(|&l| l as u8).collect();
        let label_png = out.join(format!("{}.png", sample.id));
        let overlay_png = out.join(format!("{}_overlay.png", sample.id));
        for p in [&label_png, &overlay_png] {
            check_overwrite(p, args.overwrite)?;
        }
        let map = LabelMap::new(prediction.width, prediction.height, labels.clone())?;
        write_atomically(&label_png, |tmp| {
            Ok(write_label_png(tmp, &map, Some(&palette))?)
        })?;
        save_png(&overlay_png, &overlay(&image, &labels, &palette))?;
        let mut cm = ConfusionMatrix::new(class_list.len(), Some(255));
        cm.accumulate(&truth.data, &labels)?;
        total.accumulate(&truth.data, &labels)?;
        let mut found: Vec<usize> = labels.iter().map(|&l| l as usize).collect();
        found.sort_unstable();
        found.dedup();
        let found: Vec<&str> = found
            .iter()
            .filter(|&&c| c > 0)
            .map(|&c| class_list[c].name)
            .collect();
        let accuracy = cm.report(None).pixel_accuracy;
        let _ = writeln!(
            md,
            "| {} | {:.1}% | {} |",
            sample.id,
            100.0 * accuracy,
            found.join(", ")
        );
        segmented.push(serde_json::json!({
            "scene": sample.id, "labels": label_png, "overlay": overlay_png,
            "pixel_accuracy": accuracy, "classes_found": found,
        }));
    }
    let names_ref: Vec<&str> = class_list.iter().map(|c| c.name).collect();
    let report = total.report(Some(&names_ref));
    let _ = writeln!(
        md,
        "\nAll {} scenes: mIoU {:.3} over the classes present, pixel accuracy {:.1}%.\n",
        scenes.len(),
        report.mean_iou_present.unwrap_or(report.mean_iou),
        100.0 * report.pixel_accuracy
    );
    println!(
        "segmented {} scenes: pixel accuracy {:.1}%, outputs in {}",
        scenes.len(),
        100.0 * report.pixel_accuracy,
        out.display()
    );
    md.push_str(NEXT_STEPS);
    let json = serde_json::json!({
        "classification": {"weights": classifier_path, "items": classified, "correct": correct},
        "segmentation": {"weights": segmenter_path, "scenes": segmented, "metrics": report},
    });
    write_atomically(&report_json, |tmp| {
        Ok(std::fs::write(tmp, serde_json::to_string_pretty(&json)?)?)
    })?;
    write_atomically(&report_md, |tmp| Ok(std::fs::write(tmp, &md)?))?;
    println!("report: {}\n{NEXT_STEPS}", report_md.display());
    Ok(())
}

const NEXT_STEPS: &str = "\
## The same with the authors' full-size weights

    r38 inspect ilsvrc-cls_rna-a1_cls1000_ep-0001.params      # what the file is (MD5-checked)
    r38 classify --weights ilsvrc-cls_rna-a1_cls1000_ep-0001.params photo.jpg
    r38 segment --weights voc_rna-a1_cls21_s8_ep-0001.params --dataset voc --out-dir out photo.jpg
    r38 eval --weights voc_rna-a1_cls21_s8_ep-0001.params --dataset voc --root VOCdevkit/VOC2012

(See README.md for where the files survive; `--weights hf://OWNER/REPO/FILE` reads them from
the Hugging Face Hub. In a program, `r38::Pretrained::load` does what these commands do.)
";
