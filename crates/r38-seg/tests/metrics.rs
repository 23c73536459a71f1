//! Confusion-matrix scores on a hand-computed example.

use r38_seg::{ConfusionMatrix, MetricsReport, SegError};

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-12
}

/// 4 classes, ignore 255. Counted pixels (gt, pred): (0,0) x2, (0,1), (1,1) x2, (1,2), (2,0);
/// one ignored pixel; class 3 appears nowhere.
///
/// gt = [3, 3, 1, 0], pred = [3, 3, 1, 0], tp = [2, 2, 0, 0]
/// IoU (authors): 2/4, 2/4, 0/(1+1-0) = 0, 0/(max(0,1)+0-0) = 0 -> mean 0.25 over 4 classes;
/// over the 3 classes present: 1/3. Class acc: 2/3, 2/3, 0, 0 -> mean 1/3. Pixel acc 4/7.
/// fw IoU = 3/7 * 0.5 + 3/7 * 0.5 = 3/7.
fn example() -> ConfusionMatrix {
    let gt: [u8; 8] = [0, 0, 1, 1, 2, 255, 0, 1];
    let pred: [u8; 8] = [0, 1, 1, 1, 0, 2, 0, 2];
    let mut m = ConfusionMatrix::new(4, Some(255));
    m.accumulate(&gt, &pred).unwrap();
    m
}

#[test]
fn hand_computed_scores() {
    let m = example();
    assert_eq!(m.total(), 7);
    assert_eq!(m.ignored(), 1);
    assert_eq!(m.count(0, 0), 2);
    assert_eq!(m.count(0, 1), 1);
    assert_eq!(m.count(1, 2), 1);
    assert_eq!(m.count(2, 0), 1);
    assert_eq!(
        (0..4).map(|c| m.gt_pixels(c)).collect::<Vec<_>>(),
        [3, 3, 1, 0]
    );
    assert_eq!(
        (0..4).map(|c| m.predicted_pixels(c)).collect::<Vec<_>>(),
        [3, 3, 1, 0]
    );
    assert_eq!((0..4).map(|c| m.union(c)).collect::<Vec<_>>(), [4, 4, 2, 0]);
    assert_eq!(m.per_class_iou(), vec![0.5, 0.5, 0.0, 0.0]);
    assert!(close(m.mean_iou(), 0.25));
    assert!(close(m.mean_iou_present().unwrap(), 1.0 / 3.0));
    assert!(close(m.pixel_accuracy(), 4.0 / 7.0));
    assert!(close(m.class_accuracy(0), 2.0 / 3.0));
    assert!(close(m.class_accuracy(3), 0.0));
    assert!(close(m.mean_class_accuracy(), 1.0 / 3.0));
    assert!(close(m.frequency_weighted_iou(), 3.0 / 7.0));
}

#[test]
fn accumulate_merge_and_errors() {
    let mut m = example();
    let snapshot = m.clone();
    // u32 labels work the same as u8
    let mut n = ConfusionMatrix::new(4, Some(255));
    n.accumulate(&[0u32, 0, 1, 1, 2, 255, 0, 1], &[0u32, 1, 1, 1, 0, 2, 0, 2])
        .unwrap();
    assert_eq!(n, snapshot);
    m.merge(&n).unwrap();
    assert_eq!(m.total(), 14);
    assert_eq!(m.ignored(), 2);
    assert!(close(m.mean_iou(), 0.25)); // doubling every count changes no ratio

    // size mismatch, labels out of range: errors, nothing added
    let before = m.clone();
    assert!(matches!(
        m.accumulate(&[0u8, 1], &[0u8]),
        Err(SegError::InvalidArgument(_))
    ));
    assert!(m.accumulate(&[0u8, 7], &[0u8, 0]).is_err());
    assert!(m.accumulate(&[0u8, 1], &[0u8, 4]).is_err());
    assert!(m.accumulate(&[0u8, 1], &[0u8, 255]).is_err());
    assert_eq!(m, before);
    assert!(m.merge(&ConfusionMatrix::new(5, Some(255))).is_err());
    assert!(m.merge(&ConfusionMatrix::new(4, None)).is_err());

    // without an ignore label, 255 is simply out of range
    let mut strict = ConfusionMatrix::new(4, None);
    assert!(strict.accumulate(&[255u8], &[0u8]).is_err());

    // empty matrix: no division by zero
    let empty = ConfusionMatrix::new(3, Some(255));
    assert_eq!(empty.pixel_accuracy(), 0.0);
    assert_eq!(empty.mean_iou(), 0.0);
    assert_eq!(empty.mean_iou_present(), None);
    assert_eq!(empty.frequency_weighted_iou(), 0.0);
}

#[test]
fn report_serialises_and_renders() {
    let report = example().report(Some(&["background", "cat", "dog"]));
    assert_eq!(report.classes.len(), 4);
    assert_eq!(report.classes[1].name, "cat");
    assert_eq!(report.classes[3].name, "class 3");
    assert_eq!(report.classes[2].intersection, 0);
    let json = serde_json::to_string(&report).unwrap();
    let back: MetricsReport = serde_json::from_str(&json).unwrap();
    assert_eq!(back, report);
    let table = report.to_table();
    assert!(table.contains("background"));
    assert!(table.contains("mean IoU 25.00%"));
    assert!(table.contains("classes present: 33.33%"));
    assert!(table.contains("pixel acc 57.14%"));
    assert_eq!(table.lines().count(), 2 + 4 + 2);
    println!("{table}");
}
