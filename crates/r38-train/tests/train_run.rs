//! Short training runs of tiny networks on synthetic data: the loss falls, a resumed run
//! reproduces the uninterrupted run's losses exactly, a diverging run stops at the first
//! non-finite loss keeping its last good checkpoint, and gradient accumulation is exact with
//! frozen BN.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use candle_core::{Device, Tensor};
use r38_data::Normalization;
use r38_model::BatchNormMode;
use r38_seg::HeadConfig;
use r38_train::augment::{ClsAugment, ClsEval, SegAugment};
use r38_train::checkpoint::Checkpoints;
use r38_train::loader::{make_batch, Source};
use r38_train::model::{classifier_from, fashion_config, segmentation_from};
use r38_train::sources::{seg_confusion, top1, FashionCls, SceneSeg};
use r38_train::trainer::{accumulated_gradients, train, Event, Summary, Task, TrainConfig};
use r38_train::{micro_batch_gradients, LrSchedule, MultiplierPolicy, OhemConfig, Sgd, SgdConfig};

mod common;
use common::*;

fn run_seg(out: PathBuf, steps: usize, resume: bool) -> (Summary, Vec<f64>) {
    let built = tiny_seg_net();
    let val = SceneSeg {
        scenes: scenes(4, 99),
        augment: None,
        norm: Normalization::default(),
    };
    let net = &built.net;
    let mut metrics = Vec::new();
    let mut validate = || {
        let cm = seg_confusion(net, &val, &Device::Cpu, 11, 4, None)?;
        Ok(cm.pixel_accuracy())
    };
    let summary = train(
        net,
        &built.varmap,
        seg_source(),
        &Device::Cpu,
        &seg_config(out, steps, resume),
        Some(&mut validate),
        &mut |e| {
            if let Event::Validation { metric, .. } = e {
                metrics.push(*metric)
            }
        },
    )
    .unwrap();
    (summary, metrics)
}

#[test]
fn segmentation_loss_falls_and_resume_reproduces_it() {
    let a = tmp("seg-a");
    let (full, metrics) = run_seg(a.clone(), 8, false);
    println!("losses {:?}, validation {metrics:?}", full.losses);
    assert_eq!(full.losses.len(), 8);
    let first = (full.losses[0] + full.losses[1]) / 2.0;
    let last = (full.losses[6] + full.losses[7]) / 2.0;
    assert!(last < first, "loss did not fall: {:?}", full.losses);
    assert_eq!(metrics.len(), 2);
    assert!(a.join("curve.png").is_file());
    let csv = std::fs::read_to_string(a.join("metrics.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 8 + 2);
    let ck = Checkpoints::new(a.join("checkpoints"), 2);
    let latest = ck.latest().unwrap();
    assert!(latest.ends_with("step-00000008"));
    assert!(ck.best().is_some());
    assert_eq!(Checkpoints::read_state(&latest).unwrap().step, 8);

    // Interrupted after 4 steps (a fresh process each time), then resumed to 8.
    let b = tmp("seg-b");
    let (part, _) = run_seg(b.clone(), 4, true);
    assert_eq!(part.start_step, 0);
    let (rest, _) = run_seg(b.clone(), 8, true);
    assert_eq!(rest.start_step, 4);
    let mut resumed = part.losses.clone();
    resumed.extend(&rest.losses);
    assert_eq!(
        resumed, full.losses,
        "resume must reproduce the losses exactly"
    );
    // Same final weights, bit for bit.
    let wa =
        candle_core::safetensors::load(latest.join("model.safetensors"), &Device::Cpu).unwrap();
    let lb = Checkpoints::new(b.join("checkpoints"), 2).latest().unwrap();
    let wb = candle_core::safetensors::load(lb.join("model.safetensors"), &Device::Cpu).unwrap();
    for (k, t) in &wa {
        let bits = |t: &Tensor| -> Vec<u32> {
            let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            v.iter().map(|x| x.to_bits()).collect()
        };
        assert!(
            t.flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .all(|x| x.is_finite()),
            "{k}"
        );
        assert_eq!(bits(t), bits(&wb[k]), "{k}");
    }
    // Resuming a finished run does nothing.
    let (again, _) = run_seg(b.clone(), 8, true);
    assert!(again.losses.is_empty());
    let _ = std::fs::remove_dir_all(&a);
    let _ = std::fs::remove_dir_all(&b);
}

#[test]
fn non_finite_loss_stops_and_keeps_the_last_good_checkpoint() {
    let out = tmp("nan");
    let built = tiny_seg_net();
    let mut cfg = seg_config(out.clone(), 6, false);
    cfg.checkpoint_every = 1;
    cfg.schedule = LrSchedule::Fixed { base: 1e300 };
    let err = train(
        &built.net,
        &built.varmap,
        seg_source(),
        &Device::Cpu,
        &cfg,
        None,
        &mut |_| {},
    )
    .unwrap_err()
    .to_string();
    println!("{err}");
    assert!(err.contains("training stopped: the loss is"), "{err}");
    let ck = Checkpoints::new(out.join("checkpoints"), 2);
    let latest = ck.latest().unwrap();
    assert!(err.contains(&latest.display().to_string()), "{err}");
    // The checkpoint named as good is complete and loads.
    let fresh = tiny_seg_net();
    let mut sgd = Sgd::new(&fresh.varmap, cfg.sgd, &cfg.policy);
    let state = Checkpoints::restore(&latest, &fresh.varmap, &mut sgd).unwrap();
    assert!(state.step >= 1);
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn accumulation_equals_the_averaged_device_gradients() {
    // Without dropout, so that the reference below can run the net in one graph.
    let built = tiny_seg_net_with_dropout(0.0, 0.0);
    let src = SceneSeg {
        scenes: scenes(4, 3),
        augment: Some(SegAugment {
            crop: 32,
            label_stride: 4,
            ..SegAugment::default()
        }),
        norm: Normalization::default(),
    };
    let task = Task::Segmentation { ohem: None };
    let sgd = Sgd::new(
        &built.varmap,
        SgdConfig::segmentation(1),
        &MultiplierPolicy::alex(),
    );
    let b0 = make_batch(&src, 1, 1, 0).unwrap();
    let b1 = make_batch(&src, 1, 1, 1).unwrap();
    let (acc, loss) = accumulated_gradients(
        &built.net,
        &task,
        &sgd,
        &[
            (b0.images.clone(), b0.targets.clone()),
            (b1.images.clone(), b1.targets.clone()),
        ],
        [],
        false,
    )
    .unwrap();
    // Reference: (loss0 + loss1) / 2 in one graph.
    let l0 = task
        .loss(&built.net.forward_t(&b0.images, true).unwrap(), &b0.targets)
        .unwrap();
    let l1 = task
        .loss(&built.net.forward_t(&b1.images, true).unwrap(), &b1.targets)
        .unwrap();
    let mean = ((l0 + l1).unwrap() / 2.0).unwrap();
    assert!((f64::from(mean.to_scalar::<f32>().unwrap()) - loss).abs() < 1e-5);
    let reference = mean.backward().unwrap();
    let mut checked = 0;
    for p in sgd.params() {
        let (Some(a), Some(r)) = (acc.get(p.var.as_tensor()), reference.get(p.var.as_tensor()))
        else {
            continue;
        };
        let d = (a - r)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let s = r
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d <= 1e-5 * s.max(1.0), "{}: {d} vs {s}", p.name);
        checked += 1;
    }
    assert!(checked > 10);
}

#[test]
fn classification_trains_with_batch_statistics() {
    let out = tmp("cls");
    let items = toy_items(40);
    let cfg = fashion_config(8);
    let mut built = classifier_from(&BTreeMap::new(), &cfg, 10, &Device::Cpu, 2).unwrap();
    built.net.set_bn_mode(BatchNormMode::BatchStatistics);
    let eval = ClsEval {
        resize: 28,
        crop: 28,
        norm: Normalization::default(),
    };
    let src: Arc<dyn Source> = Arc::new(FashionCls {
        data: items.clone(),
        augment: Some(ClsAugment {
            crop: 28,
            area: (0.6, 1.0),
            ..ClsAugment::default()
        }),
        eval,
    });
    let val = FashionCls {
        data: items,
        augment: None,
        eval,
    };
    let before = built.varmap.data().lock().unwrap()["bn7_moving_mean"]
        .as_tensor()
        .to_vec1::<f32>()
        .unwrap();
    let config = TrainConfig {
        task: Task::Classification,
        steps: 6,
        batch_size: 8,
        accumulate: 1,
        seed: 3,
        workers: 2,
        prefetch: 2,
        checkpoint_every: 0,
        keep_checkpoints: 1,
        validate_every: 0,
        out_dir: out.clone(),
        schedule: LrSchedule::authors_linear(0.05, 0, 6),
        sgd: SgdConfig::imagenet(1),
        policy: MultiplierPolicy::uniform(),
        resume: false,
        recompute: false,
        run: serde_json::Value::Null,
        model_metadata: BTreeMap::new(),
    };
    let net = &built.net;
    let mut validate = || top1(net, &val, &Device::Cpu, 16, None);
    let summary = train(
        net,
        &built.varmap,
        src,
        &Device::Cpu,
        &config,
        Some(&mut validate),
        &mut |_| {},
    )
    .unwrap();
    println!("cls losses {:?} best {:?}", summary.losses, summary.best);
    assert!(summary.losses.iter().all(|l| l.is_finite()));
    assert!(
        summary.losses[5] < summary.losses[0],
        "{:?}",
        summary.losses
    );
    let after = built.varmap.data().lock().unwrap()["bn7_moving_mean"]
        .as_tensor()
        .to_vec1::<f32>()
        .unwrap();
    assert_ne!(
        before, after,
        "batch statistics must update the running mean"
    );
    assert!(summary.best.is_some());
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn imagenet_weights_become_a_segmentation_net_in_one_call() {
    // A tiny "ImageNet classifier": its linear1000 is dropped, conv6a/linear5 are new.
    let cfg = fashion_config(16);
    let cls = classifier_from(&BTreeMap::new(), &cfg, 1000, &Device::Cpu, 1).unwrap();
    let file = r38_train::checkpoint::varmap_tensors(&cls.varmap).unwrap();
    assert!(file.contains_key("linear1000_weight"));
    let head = HeadConfig {
        classes: 5,
        hidden: Some(4),
        kernel: 3,
        dilation: 2,
    };
    let seg = segmentation_from(&file, &cfg, head, &Device::Cpu, 9).unwrap();
    assert_eq!(seg.dropped, vec!["linear1000_bias", "linear1000_weight"]);
    assert_eq!(
        seg.new_vars,
        vec![
            "conv6a_bias",
            "conv6a_weight",
            "linear5_bias",
            "linear5_weight"
        ]
    );
    let w = seg.varmap.data().lock().unwrap()["res4a_branch2a_weight"]
        .as_tensor()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(
        w,
        file["res4a_branch2a_weight"]
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    );
    // New layers: MSRA with the seed, biases zero, reproducible.
    let again = segmentation_from(&file, &cfg, head, &Device::Cpu, 9).unwrap();
    let get = |b: &r38_train::model::Built<r38_seg::SegmentationNet>, n: &str| {
        b.varmap.data().lock().unwrap()[n]
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    assert_eq!(get(&seg, "conv6a_weight"), get(&again, "conv6a_weight"));
    assert!(get(&seg, "linear5_bias").iter().all(|&b| b == 0.0));
    // A stray tensor is an error, not silently ignored.
    let mut bad = file.clone();
    bad.insert(
        "res9a_branch1_weight".into(),
        Tensor::zeros(3, candle_core::DType::F32, &Device::Cpu).unwrap(),
    );
    assert!(segmentation_from(&bad, &cfg, head, &Device::Cpu, 9).is_err());
}

#[test]
fn recomputed_activations_give_the_same_gradients() {
    let built = tiny_seg_net();
    let src = SceneSeg {
        scenes: scenes(4, 9),
        augment: Some(SegAugment {
            crop: 40,
            label_stride: 4,
            ..SegAugment::default()
        }),
        norm: Normalization::default(),
    };
    let task = Task::Segmentation {
        ohem: Some(OhemConfig {
            ignore_label: 255,
            thresh: 0.6,
            min_kept: 16,
        }),
    };
    let sgd = Sgd::new(
        &built.varmap,
        SgdConfig::segmentation(1),
        &MultiplierPolicy::alex(),
    );
    let b = make_batch(&src, 2, 2, 0).unwrap();
    let run = |recompute| {
        micro_batch_gradients(
            &built.net, &task, &sgd, &b.images, &b.targets, 42, recompute,
        )
        .unwrap()
    };
    let (kept, loss_kept) = run(false);
    let (recomputed, loss_recomputed) = run(true);
    assert_eq!(loss_kept, loss_recomputed);
    let mut checked = 0;
    for p in sgd.params() {
        let a = kept.get(p.var.as_tensor());
        let r = recomputed.get(p.var.as_tensor());
        let (Some(a), Some(r)) = (a, r) else {
            assert!(
                a.is_none() && r.is_none(),
                "{}: gradient in one mode only",
                p.name
            );
            continue;
        };
        let scale = a
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let diff = (a - r).unwrap().abs().unwrap().max_all().unwrap();
        let rel = diff.to_scalar::<f32>().unwrap() / scale.max(1e-30);
        assert!(rel <= 1e-6, "{}: relative difference {rel}", p.name);
        checked += 1;
    }
    assert!(checked > 20, "only {checked} parameters have gradients");
}
