//! Segmentation metrics: a confusion matrix accumulated over a whole split, and the scores the
//! authors report from it.
//!
//! # The authors' definitions
//!
//! From `issegm/voc.py` (`ScoreUpdater`), which accumulates one confusion matrix over every
//! image of the split and scores it at the end:
//!
//! * Only pixels whose **ground truth** is one of the dataset's valid labels are counted; every
//!   other pixel (255 = ignore / void, and anything unmapped) is skipped.
//! * `conf[g][p]` counts pixels with ground truth `g` and prediction `p`; `gt[g] = Σ_p conf[g][p]`
//!   and `pred[p] = Σ_g conf[g][p]` (predictions are counted on counted pixels only).
//! * **Pixel accuracy** = `Σ_c conf[c][c] / Σ_c gt[c]`.
//! * **Class accuracy** of `c` = `conf[c][c] / max(gt[c], 1)`; **mean class accuracy** is the
//!   mean over **all** classes.
//! * **IoU** of `c` = `conf[c][c] / (max(gt[c], 1) + pred[c] − conf[c][c])`; **mean IoU** is the
//!   mean over **all** classes. A class absent from both ground truth and prediction therefore
//!   scores 0 and still counts in the mean (the `max(·, 1)` only avoids dividing by zero).
//!   Over a full validation split every class occurs, so this only matters for subsets or
//!   single images; [`ConfusionMatrix::mean_iou_present`] gives the common alternative that
//!   averages only classes with a non-empty union.
//!
//! The frequency-weighted IoU (`Σ_c gt[c] / Σ gt · IoU_c`, Long et al.) is not in the authors'
//! code and is given for completeness.
//!
//! Here classes are `0..C`; a dataset's raw label ids are mapped to them (and everything else to
//! the ignore label) before accumulation, as the authors do with `label_2_id`.

#![warn(missing_docs)]

use std::fmt;

use crate::error::{SegError, SegResult};

/// A `C x C` confusion matrix of pixel counts, rows = ground truth, columns = prediction.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ConfusionMatrix {
    classes: usize,
    ignore_label: Option<u32>,
    counts: Vec<u64>,
    ignored: u64,
}

impl ConfusionMatrix {
    /// An empty matrix for `classes` classes; ground-truth pixels equal to `ignore_label`
    /// (usually 255) are skipped.
    pub fn new(classes: usize, ignore_label: Option<u32>) -> Self {
        ConfusionMatrix {
            classes,
            ignore_label,
            counts: vec![0; classes * classes],
            ignored: 0,
        }
    }

    /// Number of classes.
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// The ignore label.
    pub fn ignore_label(&self) -> Option<u32> {
        self.ignore_label
    }

    /// Row-major counts, `counts[g * C + p]`.
    pub fn counts(&self) -> &[u64] {
        &self.counts
    }

    /// Pixels with ground truth `gt` predicted as `pred`.
    pub fn count(&self, gt: usize, pred: usize) -> u64 {
        self.counts[gt * self.classes + pred]
    }

    /// Ground-truth pixels skipped because they carry the ignore label.
    pub fn ignored(&self) -> u64 {
        self.ignored
    }

    /// Pixels counted (all entries of the matrix).
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Adds one label map. `gt` and `pred` are row-major maps of the same length; every ground
    /// truth value must be a class (`< C`) or the ignore label, every prediction a class.
    /// Nothing is added if any value is out of range.
    pub fn accumulate<G, P>(&mut self, gt: &[G], pred: &[P]) -> SegResult<()>
    where
        G: Copy + Into<u64>,
        P: Copy + Into<u64>,
    {
        if gt.len() != pred.len() {
            return Err(SegError::InvalidArgument(format!(
                "ground truth has {} pixels, prediction {}",
                gt.len(),
                pred.len()
            )));
        }
        let c = self.classes as u64;
        let ignore = self.ignore_label.map(u64::from);
        let mut local = vec![0u64; self.counts.len()];
        let mut ignored = 0u64;
        for (i, (&g, &p)) in gt.iter().zip(pred).enumerate() {
            let (g, p): (u64, u64) = (g.into(), p.into());
            if Some(g) == ignore {
                ignored += 1;
                continue;
            }
            if g >= c {
                return Err(SegError::InvalidArgument(format!(
                    "ground-truth label {g} at pixel {i} is neither a class (0..{c}) nor the \
                     ignore label {ignore:?}; map raw label ids to classes first"
                )));
            }
            if p >= c {
                return Err(SegError::InvalidArgument(format!(
                    "predicted label {p} at pixel {i} is not a class (0..{c})"
                )));
            }
            local[(g * c + p) as usize] += 1;
        }
        self.counts
            .iter_mut()
            .zip(&local)
            .for_each(|(a, b)| *a += b);
        self.ignored += ignored;
        Ok(())
    }

    /// Adds the counts of `other` (e.g. from another thread or shard).
    pub fn merge(&mut self, other: &ConfusionMatrix) -> SegResult<()> {
        if other.classes != self.classes || other.ignore_label != self.ignore_label {
            return Err(SegError::InvalidArgument(format!(
                "cannot merge a {}-class matrix (ignore {:?}) into a {}-class one (ignore {:?})",
                other.classes, other.ignore_label, self.classes, self.ignore_label
            )));
        }
        self.counts
            .iter_mut()
            .zip(&other.counts)
            .for_each(|(a, b)| *a += b);
        self.ignored += other.ignored;
        Ok(())
    }

    /// Ground-truth pixels of class `c`.
    pub fn gt_pixels(&self, c: usize) -> u64 {
        self.counts[c * self.classes..(c + 1) * self.classes]
            .iter()
            .sum()
    }

    /// Pixels predicted as class `c` (among counted pixels).
    pub fn predicted_pixels(&self, c: usize) -> u64 {
        (0..self.classes).map(|g| self.count(g, c)).sum()
    }

    /// Correctly labelled pixels of class `c`.
    pub fn intersection(&self, c: usize) -> u64 {
        self.count(c, c)
    }

    /// `gt + pred − intersection` of class `c`.
    pub fn union(&self, c: usize) -> u64 {
        self.gt_pixels(c) + self.predicted_pixels(c) - self.intersection(c)
    }

    /// The authors' IoU of class `c`: `tp / (max(gt, 1) + pred − tp)`; 0 for a class absent from
    /// ground truth and prediction.
    pub fn iou(&self, c: usize) -> f64 {
        let tp = self.intersection(c);
        let denom = self.gt_pixels(c).max(1) + self.predicted_pixels(c) - tp;
        tp as f64 / denom as f64
    }

    /// The authors' accuracy of class `c`: `tp / max(gt, 1)`.
    pub fn class_accuracy(&self, c: usize) -> f64 {
        self.intersection(c) as f64 / self.gt_pixels(c).max(1) as f64
    }

    /// IoU of every class ([`ConfusionMatrix::iou`]).
    pub fn per_class_iou(&self) -> Vec<f64> {
        (0..self.classes).map(|c| self.iou(c)).collect()
    }

    /// The authors' mean IoU: the mean of [`ConfusionMatrix::iou`] over **all** classes.
    pub fn mean_iou(&self) -> f64 {
        mean((0..self.classes).map(|c| self.iou(c)), self.classes)
    }

    /// The mean IoU over the classes with a non-empty union (present in ground truth or
    /// prediction); `None` if there is none.
    pub fn mean_iou_present(&self) -> Option<f64> {
        let present: Vec<usize> = (0..self.classes).filter(|&c| self.union(c) > 0).collect();
        (!present.is_empty()).then(|| mean(present.iter().map(|&c| self.iou(c)), present.len()))
    }

    /// Correct pixels over counted pixels; 0 when nothing was counted.
    pub fn pixel_accuracy(&self) -> f64 {
        let total = self.total();
        if total == 0 {
            return 0.0;
        }
        (0..self.classes).map(|c| self.count(c, c)).sum::<u64>() as f64 / total as f64
    }

    /// The authors' mean class accuracy: the mean of [`ConfusionMatrix::class_accuracy`] over
    /// all classes.
    pub fn mean_class_accuracy(&self) -> f64 {
        mean(
            (0..self.classes).map(|c| self.class_accuracy(c)),
            self.classes,
        )
    }

    /// `Σ_c gt[c] / Σ gt · IoU_c`; 0 when nothing was counted.
    pub fn frequency_weighted_iou(&self) -> f64 {
        let total = self.total();
        if total == 0 {
            return 0.0;
        }
        (0..self.classes)
            .map(|c| self.gt_pixels(c) as f64 / total as f64 * self.iou(c))
            .sum()
    }

    /// Every score, with class names (`None`, or fewer names than classes: the missing ones are
    /// `class <index>`).
    pub fn report(&self, class_names: Option<&[&str]>) -> MetricsReport {
        let classes = (0..self.classes)
            .map(|c| ClassMetrics {
                index: c,
                name: class_names
                    .and_then(|n| n.get(c))
                    .map_or_else(|| format!("class {c}"), |s| s.to_string()),
                gt_pixels: self.gt_pixels(c),
                predicted_pixels: self.predicted_pixels(c),
                intersection: self.intersection(c),
                iou: self.iou(c),
                accuracy: self.class_accuracy(c),
            })
            .collect();
        MetricsReport {
            pixels: self.total(),
            ignored: self.ignored,
            pixel_accuracy: self.pixel_accuracy(),
            mean_class_accuracy: self.mean_class_accuracy(),
            mean_iou: self.mean_iou(),
            mean_iou_present: self.mean_iou_present(),
            frequency_weighted_iou: self.frequency_weighted_iou(),
            classes,
        }
    }
}

fn mean(values: impl Iterator<Item = f64>, n: usize) -> f64 {
    if n == 0 {
        return 0.0;
    }
    values.sum::<f64>() / n as f64
}

/// The scores of one class.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ClassMetrics {
    /// Class index.
    pub index: usize,
    /// Class name.
    pub name: String,
    /// Ground-truth pixels.
    pub gt_pixels: u64,
    /// Predicted pixels (among counted pixels).
    pub predicted_pixels: u64,
    /// Correctly labelled pixels.
    pub intersection: u64,
    /// The authors' IoU (0 when the class is absent from both).
    pub iou: f64,
    /// The authors' class accuracy (0 when the class is absent from the ground truth).
    pub accuracy: f64,
}

/// Every score of a [`ConfusionMatrix`], serialisable; [`fmt::Display`] renders a text table.
/// Fractions are in `0..=1`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MetricsReport {
    /// Counted pixels.
    pub pixels: u64,
    /// Skipped pixels (ignore label).
    pub ignored: u64,
    /// Pixel accuracy.
    pub pixel_accuracy: f64,
    /// The authors' mean class accuracy (over all classes).
    pub mean_class_accuracy: f64,
    /// The authors' mean IoU (over all classes, absent ones as 0).
    pub mean_iou: f64,
    /// Mean IoU over classes with a non-empty union.
    pub mean_iou_present: Option<f64>,
    /// Frequency-weighted IoU.
    pub frequency_weighted_iou: f64,
    /// Per-class scores, in class order.
    pub classes: Vec<ClassMetrics>,
}

impl MetricsReport {
    /// The text table (same as `to_string()`): one row per class with IoU and accuracy in
    /// percent and the pixel counts, then the summary.
    pub fn to_table(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for MetricsReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = self
            .classes
            .iter()
            .map(|c| c.name.chars().count())
            .max()
            .unwrap_or(0)
            .max(5);
        writeln!(
            f,
            "{:>3}  {:<width$}  {:>7}  {:>7}  {:>12}  {:>12}",
            "#", "class", "IoU %", "acc %", "GT px", "pred px"
        )?;
        let rule = "-".repeat(3 + 2 + width + 2 + 7 + 2 + 7 + 2 + 12 + 2 + 12);
        writeln!(f, "{rule}")?;
        for c in &self.classes {
            writeln!(
                f,
                "{:>3}  {:<width$}  {:>7.2}  {:>7.2}  {:>12}  {:>12}",
                c.index,
                c.name,
                c.iou * 100.0,
                c.accuracy * 100.0,
                c.gt_pixels,
                c.predicted_pixels
            )?;
        }
        writeln!(f, "{rule}")?;
        write!(
            f,
            "mean IoU {:.2}% (classes present: {}), pixel acc {:.2}%, mean class acc {:.2}%, \
             fw IoU {:.2}%; {} pixels scored, {} ignored",
            self.mean_iou * 100.0,
            self.mean_iou_present
                .map_or_else(|| "n/a".to_string(), |v| format!("{:.2}%", v * 100.0)),
            self.pixel_accuracy * 100.0,
            self.mean_class_accuracy * 100.0,
            self.frequency_weighted_iou * 100.0,
            self.pixels,
            self.ignored
        )
    }
}
