//! "Fashion scenes": a deterministic segmentation dataset made of Fashion-MNIST items
//! composited on coloured canvases.
//!
//! Scene `i` of a set depends only on `(seed, i)` and the item split. Each scene has a flat
//! background colour with mild noise and 1..=`max_items` items, each taken from the split,
//! scaled by a random factor, tinted with a random colour and alpha-blended (grey value as
//! opacity) at a random position; later items occlude earlier ones. Labels: 0 background,
//! `1 + fashion_label` where an item's grey value exceeds `mask_threshold`, and 255 (ignore) on
//! a one-pixel band along every label boundary, as VOC marks object borders.

use std::sync::Arc;

use crate::error::Result;
use r38_data::image::RgbImage;
use r38_data::{resize_u8, Filter};

use crate::fashion_mnist::{FashionMnist, CLASSES};
use crate::rng::Rng;

/// Label of ignored pixels.
pub const IGNORE: u8 = 255;

/// Class names of the scenes: `background` then the ten Fashion-MNIST classes.
pub fn class_names() -> Vec<String> {
    r38_data::datasets::FASHION_SCENES_CLASSES
        .iter()
        .map(|c| c.name.to_string())
        .collect()
}

/// How scenes are drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SceneConfig {
    /// Canvas width and height.
    pub size: (u32, u32),
    /// Most items in a scene (at least one is always drawn).
    pub max_items: usize,
    /// Range of the item scale factor (items are 28 px before scaling).
    pub scale: (f64, f64),
    /// Grey value above which an item pixel is labelled with its class.
    pub mask_threshold: u8,
    /// Mark a one-pixel band along label boundaries as ignore.
    pub ignore_borders: bool,
    /// Random colours for the background and each item; `false`: light grey items on a dark
    /// grey canvas (with the same per-channel noise), the look of Fashion-MNIST itself.
    pub colour: bool,
}

impl Default for SceneConfig {
    fn default() -> Self {
        Self {
            size: (96, 96),
            max_items: 3,
            scale: (1.0, 2.0),
            mask_threshold: 40,
            ignore_borders: true,
            colour: true,
        }
    }
}

/// A fixed-size set of scenes over one Fashion-MNIST split.
#[derive(Debug, Clone)]
pub struct Scenes {
    items: Arc<FashionMnist>,
    config: SceneConfig,
    seed: u64,
    len: usize,
}

impl Scenes {
    /// `len` scenes drawn from `items` with `seed`.
    pub fn new(items: Arc<FashionMnist>, config: SceneConfig, seed: u64, len: usize) -> Self {
        Self {
            items,
            config,
            seed,
            len,
        }
    }

    /// Number of scenes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of classes (11).
    pub fn num_classes(&self) -> usize {
        CLASSES.len() + 1
    }

    /// Writes scenes `indices` as a `fashion-scenes` dataset (`r38 eval --dataset
    /// fashion-scenes`): `root/JPEGImages/scene-<i>.png`, `root/SegmentationClass/scene-<i>.png`
    /// (palette labels) and the list `root/ImageSets/Segmentation/<split>.txt`.
    pub fn write_dataset(
        &self,
        root: &std::path::Path,
        split: &str,
        indices: impl IntoIterator<Item = usize>,
    ) -> Result<()> {
        use r38_data::datasets::{write_label_png, DatasetKind, LabelMap};
        use r38_data::output::{write_atomically_path, write_bytes_atomically};
        let palette = DatasetKind::FashionScenes.palette();
        for dir in ["JPEGImages", "SegmentationClass", "ImageSets/Segmentation"] {
            std::fs::create_dir_all(root.join(dir))?;
        }
        let mut list = String::new();
        for i in indices {
            let id = format!("scene-{i:05}");
            let (image, labels) = self.render(i)?;
            let image_path = root.join("JPEGImages").join(format!("{id}.png"));
            write_atomically_path::<crate::error::TrainError>(&image_path, |tmp| {
                Ok(image.save_with_format(tmp, r38_data::image::ImageFormat::Png)?)
            })?;
            let map = LabelMap::new(image.width(), image.height(), labels)?;
            let label_path = root.join("SegmentationClass").join(format!("{id}.png"));
            write_atomically_path::<crate::error::TrainError>(&label_path, |tmp| {
                Ok(write_label_png(tmp, &map, Some(&palette))?)
            })?;
            list.push_str(&id);
            list.push('\n');
        }
        let list_path = root
            .join("ImageSets/Segmentation")
            .join(format!("{split}.txt"));
        write_bytes_atomically(&list_path, list.as_bytes())?;
        Ok(())
    }

    /// Scene `i`: the image and its label map (row-major, `width * height`).
    pub fn render(&self, i: usize) -> Result<(RgbImage, Vec<u8>)> {
        let (w, h) = self.config.size;
        let (wu, hu) = (w as usize, h as usize);
        let mut rng = Rng::derive(self.seed, "scene", i as u64, 0);
        let bg: [f64; 3] = if self.config.colour {
            std::array::from_fn(|_| rng.range(0.0, 255.0))
        } else {
            [rng.range(0.0, 80.0); 3]
        };
        let mut img: Vec<f64> = Vec::with_capacity(wu * hu * 3);
        for _ in 0..wu * hu {
            for c in bg {
                img.push((c + rng.range(-12.0, 12.0)).clamp(0.0, 255.0));
            }
        }
        let mut labels = vec![0u8; wu * hu];
        let count = 1 + rng.below(self.config.max_items.max(1));
        for _ in 0..count {
            let k = rng.below(self.items.len);
            let class = self.items.labels[k] + 1;
            let s = rng.range(self.config.scale.0, self.config.scale.1);
            let iw = ((self.items.width as f64 * s).round() as u32).clamp(1, w);
            let ih = ((self.items.height as f64 * s).round() as u32).clamp(1, h);
            let src = (self.items.width as u32, self.items.height as u32);
            let item = resize_u8(self.items.image(k), src, 1, (iw, ih), Filter::Bilinear)?;
            let x0 = rng.below((w - iw) as usize + 1);
            let y0 = rng.below((h - ih) as usize + 1);
            // A colour far enough from the background to be visible.
            let colour: [f64; 3] = if self.config.colour {
                std::array::from_fn(|c| {
                    let v = rng.range(0.0, 255.0);
                    if (v - bg[c]).abs() < 64.0 {
                        (bg[c] + 128.0) % 256.0
                    } else {
                        v
                    }
                })
            } else {
                [rng.range(176.0, 255.0); 3]
            };
            for y in 0..ih as usize {
                for x in 0..iw as usize {
                    let g = item[y * iw as usize + x];
                    let a = f64::from(g) / 255.0;
                    let p = (y0 + y) * wu + x0 + x;
                    for c in 0..3 {
                        img[p * 3 + c] = img[p * 3 + c] * (1.0 - a) + colour[c] * a;
                    }
                    if g > self.config.mask_threshold {
                        labels[p] = class;
                    }
                }
            }
        }
        if self.config.ignore_borders {
            labels = mark_borders(&labels, wu, hu);
        }
        let raw: Vec<u8> = img.iter().map(|v| v.round() as u8).collect();
        let image = RgbImage::from_raw(w, h, raw).expect("canvas size");
        Ok((image, labels))
    }
}

/// Pixels with a 4-neighbour of another label become [`IGNORE`] (the larger label's side
/// keeps its class, so thin items are not erased entirely).
fn mark_borders(labels: &[u8], w: usize, h: usize) -> Vec<u8> {
    let mut out = labels.to_vec();
    for y in 0..h {
        for x in 0..w {
            let l = labels[y * w + x];
            let mut differs = false;
            if x + 1 < w {
                differs |= labels[y * w + x + 1] > l;
            }
            if x > 0 {
                differs |= labels[y * w + x - 1] > l;
            }
            if y + 1 < h {
                differs |= labels[(y + 1) * w + x] > l;
            }
            if y > 0 {
                differs |= labels[(y - 1) * w + x] > l;
            }
            if differs {
                out[y * w + x] = IGNORE;
            }
        }
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A tiny synthetic item set: class `c` is a filled rectangle whose size depends on `c`.
    pub(crate) fn toy_items(n: usize) -> Arc<FashionMnist> {
        let mut images = Vec::with_capacity(n * 784);
        let mut labels = Vec::with_capacity(n);
        for i in 0..n {
            let c = (i % 10) as u8;
            labels.push(c);
            let half = 4 + c as usize;
            for y in 0..28usize {
                for x in 0..28usize {
                    let inside = y.abs_diff(14) < half && x.abs_diff(14) < 14 - c as usize / 2;
                    images.push(if inside { 200 + c * 5 } else { 0 });
                }
            }
        }
        Arc::new(FashionMnist {
            len: n,
            height: 28,
            width: 28,
            images,
            labels,
        })
    }

    #[test]
    fn scenes_are_deterministic_and_labelled() {
        let items = toy_items(20);
        let cfg = SceneConfig {
            size: (64, 48),
            ..SceneConfig::default()
        };
        let a = Scenes::new(items.clone(), cfg, 3, 10);
        let b = Scenes::new(items, cfg, 3, 10);
        for i in 0..10 {
            let (ia, la) = a.render(i).unwrap();
            let (ib, lb) = b.render(i).unwrap();
            assert_eq!(ia, ib);
            assert_eq!(la, lb);
            assert_eq!(ia.dimensions(), (64, 48));
            assert_eq!(la.len(), 64 * 48);
            assert!(la.iter().all(|&l| l <= 10 || l == IGNORE));
            assert!(la.contains(&0));
            assert!(
                la.iter().any(|&l| (1..=10).contains(&l)),
                "scene {i} has no item"
            );
            assert!(la.contains(&IGNORE));
        }
        assert_ne!(a.render(0).unwrap().1, a.render(1).unwrap().1);
        assert_eq!(class_names().len(), 11);
    }
}

#[cfg(test)]
mod dataset_tests {
    use super::*;
    use r38_data::datasets::{DatasetKind, SegDataset, SegmentationDataset};

    #[test]
    fn grey_scenes_are_grey_up_to_the_canvas_noise() {
        let config = SceneConfig {
            colour: false,
            ..SceneConfig::default()
        };
        let grey = Scenes::new(super::tests::toy_items(20), config, 5, 4);
        for i in 0..4 {
            let (image, labels) = grey.render(i).unwrap();
            // Channels differ only by the canvas noise (+-12 per channel).
            assert!(image.pixels().all(|p| {
                let (lo, hi) = (p.0.iter().min().unwrap(), p.0.iter().max().unwrap());
                hi - lo <= 24
            }));
            assert!(labels.iter().any(|&l| l > 0 && l != IGNORE));
        }
    }

    #[test]
    fn class_names_are_background_then_fashion_mnist() {
        let names = class_names();
        assert_eq!(names[0], "background");
        assert_eq!(&names[1..], CLASSES.map(String::from).as_slice());
    }

    #[test]
    fn written_scenes_read_back_as_a_fashion_scenes_dataset() {
        let root = std::env::temp_dir().join(format!("r38-scenes-ds-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let scenes = Scenes::new(
            super::tests::toy_items(20),
            SceneConfig {
                size: (40, 32),
                ..SceneConfig::default()
            },
            3,
            10,
        );
        scenes.write_dataset(&root, "val", [2, 7]).unwrap();
        let ds = SegDataset::open(DatasetKind::FashionScenes, &root, "val").unwrap();
        assert_eq!(ds.len(), 2);
        let sample = ds.sample(1).unwrap();
        assert_eq!(sample.id, "scene-00007");
        let (image, labels) = scenes.render(7).unwrap();
        assert_eq!(ds.load_image(&sample).unwrap().as_raw(), image.as_raw());
        assert_eq!(ds.load_label(&sample).unwrap().data, labels);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
