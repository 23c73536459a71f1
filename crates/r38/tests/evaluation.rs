//! The library's evaluation loop on the shipped segmenter and scenes: shards add up to the
//! whole split exactly, the cache resumes, and a cache made for other weights is refused.

use r38::data::datasets::{DatasetKind, SegDataset};
use r38::{evaluate_segmentation, Device, EvalOptions, Pretrained, SegEvaluation, Shard};
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("r38-eval-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn run(model: &Pretrained, cache: &Path, shard: Option<Shard>) -> r38::Result<SegEvaluation> {
    let dataset = SegDataset::open(
        DatasetKind::FashionScenes,
        repo().join("samples/fashion-scenes"),
        "val",
    )?;
    let protocol = r38::evaluation::dataset_protocol(DatasetKind::FashionScenes, model);
    let options = EvalOptions {
        cache_dir: Some(cache.to_path_buf()),
        shard,
        ..Default::default()
    };
    evaluate_segmentation(
        std::slice::from_ref(model),
        &dataset,
        &protocol,
        None,
        &options,
        &mut |_| {},
    )
}

#[test]
fn shards_merge_into_the_unsharded_evaluation_and_caches_are_keyed() {
    let model = Pretrained::load(
        repo().join("weights/fashion-scenes-segmenter.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let whole_cache = scratch("whole");
    let whole = run(&model, &whole_cache, None).unwrap();
    assert_eq!((whole.samples, whole.resumed), (8, 0));

    // Three shards of 8 samples (3 + 3 + 2), in their own caches, merged in any order.
    let shard_cache = scratch("shards");
    let parts: Vec<SegEvaluation> = [2, 0, 1]
        .into_iter()
        .map(|index| run(&model, &shard_cache, Some(Shard { index, count: 3 })).unwrap())
        .collect();
    assert_eq!(
        parts.iter().map(|p| p.samples).collect::<Vec<_>>(),
        [2, 3, 3]
    );
    let names: Vec<&str> = DatasetKind::FashionScenes
        .classes()
        .iter()
        .map(|c| c.name)
        .collect();
    let merged = SegEvaluation::merge(&parts, Some(&names)).unwrap();
    assert_eq!(merged.confusion, whole.confusion);
    assert_eq!(merged.metrics, whole.metrics);
    assert!(
        SegEvaluation::merge(&parts[..2], Some(&names)).is_err(),
        "a shard is missing"
    );
    assert!(SegEvaluation::merge(&[parts[0].clone(), parts[0].clone()], None).is_err());

    // A second run reads every prediction from the cache, with the same figures.
    let again = run(&model, &whole_cache, None).unwrap();
    assert_eq!((again.resumed, again.confusion), (8, whole.confusion));

    // Predictions made under another protocol are never read from this cache.
    let refused = {
        let dataset = SegDataset::open(
            DatasetKind::FashionScenes,
            repo().join("samples/fashion-scenes"),
            "val",
        )
        .unwrap();
        let protocol = r38::TestProtocol::single_scale(64);
        evaluate_segmentation(
            std::slice::from_ref(&model),
            &dataset,
            &protocol,
            None,
            &EvalOptions {
                cache_dir: Some(whole_cache.clone()),
                ..Default::default()
            },
            &mut |_| {},
        )
    };
    let message = refused.unwrap_err().to_string();
    assert!(
        message.contains("other weights, protocol or split"),
        "{message}"
    );
    for dir in [whole_cache, shard_cache] {
        std::fs::remove_dir_all(dir).unwrap();
    }
}
