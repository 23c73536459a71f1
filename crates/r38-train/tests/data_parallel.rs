//! Data-parallel training on the in-process collective: two ranks of two micro-batches each
//! give the weights of one process accumulating four (frozen BN, dropout, OHEM), a run resumes
//! on another number of ranks, and with batch statistics the ranks end with the same weights
//! and BN statistics while only rank 0 writes.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::Device;
use r38_train::distributed::{Collective, LocalGroup, SingleProcess};
use r38_train::trainer::{train, train_data_parallel, Summary, TrainConfig};

mod common;
use common::*;

/// One rank (or the single process) of the tiny segmentation run, with its own copy of the
/// network.
fn run_rank(
    out: &Path,
    steps: usize,
    accumulate: usize,
    resume: bool,
    collective: &dyn Collective,
) -> (Summary, Weights) {
    let built = tiny_seg_net();
    let config = TrainConfig {
        accumulate,
        checkpoint_every: 1,
        ..seg_config(out.to_path_buf(), steps, resume)
    };
    let summary = train_data_parallel(
        &built.net,
        &built.varmap,
        seg_source(),
        &Device::Cpu,
        &config,
        collective,
        None,
        &mut |_| {},
    )
    .unwrap();
    (summary, weights(&built.varmap))
}

fn single_process(out: &Path, steps: usize, accumulate: usize, resume: bool) -> (Summary, Weights) {
    run_rank(out, steps, accumulate, resume, &SingleProcess)
}

fn data_parallel(
    out: &Path,
    steps: usize,
    world: usize,
    accumulate: usize,
) -> Vec<(Summary, Weights)> {
    LocalGroup::run(world, |group| {
        run_rank(out, steps, accumulate, false, &group)
    })
}

#[test]
fn two_ranks_give_the_weights_of_one_process_and_resume_on_one() {
    let (one, two) = (tmp("dp-one"), tmp("dp-two"));
    let (reference, reference_weights) = single_process(&one, 4, 4, false);

    let ranks = data_parallel(&two, 2, 2, 2);
    for (rank, (summary, _)) in ranks.iter().enumerate() {
        for (a, b) in summary.losses.iter().zip(&reference.losses[..2]) {
            assert!(
                (a - b).abs() <= 1e-5 * b.abs().max(1.0),
                "rank {rank}: {a} vs {b}"
            );
        }
    }
    // Both ranks hold the same model, the one a single process trains; only rank 0 saved it.
    assert_eq!(ranks[0].1, ranks[1].1);
    let (_, two_steps) = single_process(&tmp("dp-one-2"), 2, 4, false);
    let d = max_relative_difference(&two_steps, &ranks[0].1);
    println!("2 ranks x 2 micro-batches vs 1 process x 4, after 2 updates: {d:e}");
    assert!(d <= 1e-5, "{d}");
    assert!(ranks[0].0.last_checkpoint.is_some());
    assert!(ranks[1].0.last_checkpoint.is_none());

    // Steps 3 and 4 in one process from the two ranks' checkpoint: the uninterrupted run.
    let (resumed, resumed_weights) = single_process(&two, 4, 4, true);
    assert_eq!(resumed.start_step, 2);
    for (a, b) in resumed.losses.iter().zip(&reference.losses[2..]) {
        assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "{a} vs {b}");
    }
    let d = max_relative_difference(&reference_weights, &resumed_weights);
    println!("data-parallel vs single process: max relative weight difference {d:e}");
    assert!(d <= 1e-5, "{d}");

    // A different global batch cannot resume from these checkpoints.
    let built = tiny_seg_net();
    let config = TrainConfig {
        accumulate: 2,
        ..seg_config(two.clone(), 6, true)
    };
    let err = train(
        &built.net,
        &built.varmap,
        seg_source(),
        &Device::Cpu,
        &config,
        None,
        &mut |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("batch 2 x 4") && err.contains("batch 2 x 2"),
        "{err}"
    );
    for d in [one, two, tmp("dp-one-2")] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn with_batch_statistics_the_ranks_agree_and_only_rank_0_writes() {
    use r38_model::BatchNormMode;
    use r38_train::augment::{ClsAugment, ClsEval};
    use r38_train::model::{classifier_from, fashion_config};
    use r38_train::sources::FashionCls;
    use r38_train::trainer::Task;
    use r38_train::{LrSchedule, MultiplierPolicy, SgdConfig};

    let dirs = [tmp("dp-bn-0"), tmp("dp-bn-1")];
    let results = LocalGroup::run(2, |group| {
        let out = dirs[group.ranks().rank].clone();
        let mut built =
            classifier_from(&BTreeMap::new(), &fashion_config(8), 10, &Device::Cpu, 2).unwrap();
        built.net.set_bn_mode(BatchNormMode::BatchStatistics);
        let before = weights(&built.varmap);
        let eval = ClsEval {
            resize: 28,
            crop: 28,
            norm: r38_data::Normalization::default(),
        };
        let src = std::sync::Arc::new(FashionCls {
            data: toy_items(40),
            augment: Some(ClsAugment {
                crop: 28,
                ..ClsAugment::default()
            }),
            eval,
        });
        let config = TrainConfig {
            task: Task::Classification,
            batch_size: 4,
            accumulate: 1,
            checkpoint_every: 2,
            schedule: LrSchedule::Fixed { base: 0.05 },
            sgd: SgdConfig::imagenet(1),
            policy: MultiplierPolicy::uniform(),
            ..seg_config(out, 3, false)
        };
        train_data_parallel(
            &built.net,
            &built.varmap,
            src,
            &Device::Cpu,
            &config,
            &group,
            None,
            &mut |_| {},
        )
        .unwrap();
        (before, weights(&built.varmap))
    });
    let (before, rank0) = &results[0];
    assert_eq!(
        rank0, &results[1].1,
        "the ranks' weights and BN statistics differ"
    );
    assert_ne!(before["bn7_moving_mean"], rank0["bn7_moving_mean"]);
    assert!(dirs[0].join("checkpoints").is_dir() && dirs[0].join("metrics.csv").is_file());
    assert!(!dirs[1].join("metrics.csv").exists());
    let rank1_checkpoints = std::fs::read_dir(dirs[1].join("checkpoints"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(rank1_checkpoints, 0);
    for d in dirs {
        let _ = std::fs::remove_dir_all(d);
    }
}
