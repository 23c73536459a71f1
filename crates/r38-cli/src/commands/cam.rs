//! `r38 cam`: class activation maps with psa's protocol (`infer_cls.py`), in psa's formats.

use crate::network::{check_overwrite, load, write_atomically, ModelArgs};
use anyhow::{bail, Context, Result};
use r38_data::datasets::{voc_colormap, write_label_png, LabelMap, VOC_CLASSES};
use r38_data::ImageLoader;
use r38_seg::cam::{crf_scores, overlay, Cams, PSA_BG_THRESHOLD};
use r38_seg::psa_npy::{psa_cam_npy, PsaMap};
use std::path::{Path, PathBuf};

/// CAMs of a psa-style multi-label classifier (`fc8`): scales 1, 0.5, 1.5, 2 with flips, each class
/// normalised by its maximum. Writes `<name>.npy` (psa's dict class -> H×W float32 map, read with
/// `np.load(f, allow_pickle=True).item()`), `<name>_cam_pred.png` (psa's background-thresholded
/// label map: 0 background, c+1 class c) and `<name>_<class>_overlay.png` heat maps; with
/// `--crf`, psa's `_la_crf.npy` / `_ha_crf.npy` dicts.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Image files.
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    /// Folder for the outputs (created if missing).
    #[arg(long)]
    pub out_dir: PathBuf,
    /// Image-level labels, as psa's `cls_labels.npy` gives them: comma-separated class indices
    /// 0..19 (VOC order, no background), the same for every image. Default: the predicted
    /// classes (score > 0 on the unscaled image, else the best one).
    #[arg(long, value_delimiter = ',', conflicts_with = "cls_labels")]
    pub labels: Option<Vec<usize>>,
    /// psa's `voc12/cls_labels.npy`: each image's labels, looked up by its file stem (as psa's
    /// `infer_cls.py` does with the VOC image name). An image missing from it is an error.
    #[arg(long)]
    pub cls_labels: Option<PathBuf>,
    /// Background score of the label map (psa's `--out_cam_pred`: 0.2).
    #[arg(long, default_value_t = PSA_BG_THRESHOLD)]
    pub bg_threshold: f32,
    /// Also write psa's CRF-refined dicts `<name>_la_crf.npy` and `<name>_ha_crf.npy`
    /// (background (1 - max CAM)^alpha with alpha 4 and 32, dense CRF as psa's).
    #[arg(long)]
    pub crf: bool,
    /// Replace existing outputs.
    #[arg(long)]
    pub overwrite: bool,
    /// Refuse images with more pixels than this, from their header, before decoding.
    #[arg(long, default_value_t = r38_data::DEFAULT_PIXEL_LIMIT)]
    pub max_image_pixels: u64,
}

pub fn run(args: Args) -> Result<()> {
    let loaded = load(&args.model, r38::HeadChoice::File)?;
    if loaded.cam_classifier().is_none() {
        bail!(
            "{}: `r38 cam` needs psa's multi-label classifier (an `fc8` head); this file \
             holds {:?}",
            loaded.file().path.display(),
            loaded.metadata().head
        );
    }
    std::fs::create_dir_all(&args.out_dir)
        .with_context(|| format!("{}: cannot create", args.out_dir.display()))?;
    let loader = ImageLoader::new().with_pixel_limit(Some(args.max_image_pixels));
    let label_file = match &args.cls_labels {
        Some(p) => Some((p, r38_train::cls_labels::read_cls_labels(p)?)),
        None => None,
    };
    for image_path in &args.images {
        let stem = image_path
            .file_stem()
            .with_context(|| format!("{}: no file name", image_path.display()))?
            .to_string_lossy()
            .into_owned();
        let out = |suffix: &str| args.out_dir.join(format!("{stem}{suffix}"));
        let image = loader.load_rgb8(image_path)?;
        let from_file: Option<Vec<usize>> = match &label_file {
            Some((p, table)) => {
                let v = table.get(&stem).with_context(|| {
                    format!(
                        "{}: no labels for `{stem}` in {}",
                        image_path.display(),
                        p.display()
                    )
                })?;
                Some((0..v.len()).filter(|&c| v[c] > 1e-5).collect())
            }
            None => None,
        };
        let labels = from_file.as_deref().or(args.labels.as_deref());
        let cams = loaded
            .cams(&image, labels)
            .with_context(|| format!("{}: CAMs", image_path.display()))?;
        let mut targets = vec![out(".npy"), out("_cam_pred.png")];
        targets.extend(
            cams.classes
                .iter()
                .map(|c| out(&format!("_{c}_overlay.png"))),
        );
        if args.crf {
            targets.extend([out("_la_crf.npy"), out("_ha_crf.npy")]);
        }
        for t in &targets {
            check_overwrite(t, args.overwrite)?;
        }
        write_dict(&out(".npy"), &cams, &cams.classes, &cams.maps)?;
        let labels = LabelMap::new(
            cams.width as u32,
            cams.height as u32,
            cams.label_map(args.bg_threshold),
        )?;
        let palette = voc_colormap();
        write_atomically(&out("_cam_pred.png"), |tmp| {
            Ok(write_label_png(tmp, &labels, Some(&palette))?)
        })?;
        for &c in &cams.classes {
            let map = cams.map(c).expect("a class of cams.classes has a map");
            let heat = overlay(&image, map);
            write_atomically(&out(&format!("_{c}_overlay.png")), |tmp| {
                heat.save_with_format(tmp, r38_data::image::ImageFormat::Png)
                    .with_context(|| format!("{}: cannot write", tmp.display()))
            })?;
        }
        if args.crf {
            for (suffix, alpha) in [("_la_crf.npy", 4.0), ("_ha_crf.npy", 32.0)] {
                let refined = crf_scores(&cams, &image, alpha)
                    .with_context(|| format!("{}: CRF", image_path.display()))?;
                // psa's keys: 0 background, c + 1 for class c.
                let keys: Vec<usize> = std::iter::once(0)
                    .chain(cams.classes.iter().map(|c| c + 1))
                    .collect();
                write_dict(&out(suffix), &cams, &keys, &refined)?;
            }
        }
        eprintln!(
            "{} -> {} classes {:?} ({}), {}",
            image_path.display(),
            if cams.labelled {
                "labelled"
            } else {
                "predicted"
            },
            cams.classes,
            cams.classes
                .iter()
                // psa's class c is VOC label c + 1 (0 is the background).
                .map(|&c| VOC_CLASSES.get(c + 1).map_or("?", |k| k.name))
                .collect::<Vec<_>>()
                .join(", "),
            targets
                .iter()
                .map(|t| t.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}

fn write_dict(path: &Path, cams: &Cams, keys: &[usize], planes: &[f32]) -> Result<()> {
    let plane = cams.width * cams.height;
    let maps: Vec<PsaMap<'_>> = keys
        .iter()
        .enumerate()
        .map(|(i, &k)| PsaMap {
            key: k as u32,
            height: cams.height,
            width: cams.width,
            values: &planes[i * plane..(i + 1) * plane],
        })
        .collect();
    let bytes = psa_cam_npy(&maps);
    write_atomically(path, |tmp| {
        std::fs::write(tmp, &bytes).with_context(|| format!("{}: cannot write", tmp.display()))
    })
}
