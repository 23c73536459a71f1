//! The training loop: gradient accumulation, schedule, checkpoints, resume, NaN guard,
//! periodic validation with best-checkpoint tracking, metrics logs and the curve plot.
//!
//! One *step* is one optimizer update over `accumulate` micro-batches of `batch_size`
//! samples. Each micro-batch loss is normalised on its own (valid or kept pixels, or
//! samples) and the gradients are averaged over the micro-batches, as the authors' multi-GPU
//! runs average the per-device gradients (`rescale_grad = 1 / #devices`). With frozen BN the
//! result equals that of one pass over all micro-batches as separate devices, exactly.
//!
//! Determinism: data order, augmentation, new-layer initialisation and dropout masks
//! ([`r38_ops::dropout`], reseeded per micro-batch) are seeded, and a resumed run reproduces
//! the uninterrupted run's losses bit for bit on the CPU.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use crate::error::{bail, Context, Result};
use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor};
use candle_nn::VarMap;

use crate::checkpoint::{Checkpoints, TrainState};
use crate::distributed::{
    average_gradients, average_running_statistics, average_scalar, check_same_step, Collective,
    SingleProcess,
};
use crate::loader::{Loader, Share, Source};
use crate::log::{MetricsLog, Record};
use crate::loss::{ohem_softmax_cross_entropy, softmax_cross_entropy, OhemConfig, IGNORE_LABEL};
use crate::optimizer::{MultiplierPolicy, Sgd, SgdConfig};
use crate::recompute::{micro_batch_gradients, TrainNet};
use crate::rng::Rng;
use crate::schedule::LrSchedule;

/// What is trained.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Task {
    /// Score maps `(N, C, h, w)` against label maps `(N, h, w)`, 255 ignored; OHEM when set.
    Segmentation {
        /// Online bootstrapping settings, or plain cross-entropy over valid pixels.
        ohem: Option<OhemConfig>,
    },
    /// Logits `(N, C)` against class ids `(N,)`.
    Classification,
    /// Scores `(N, C)` against 0/1 image-level labels `(N, C)`: psa's multilabel soft-margin
    /// loss ([`crate::multilabel`]).
    MultiLabel,
}

impl Task {
    /// The loss of `output` against `targets`.
    pub fn loss(&self, output: &Tensor, targets: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Task::Segmentation { ohem: Some(cfg) } => {
                ohem_softmax_cross_entropy(output, targets, cfg)?.0
            }
            Task::Segmentation { ohem: None } => {
                softmax_cross_entropy(output, targets, IGNORE_LABEL)?
            }
            Task::Classification => candle_nn::loss::cross_entropy(output, targets)?,
            Task::MultiLabel => crate::multilabel::multilabel_soft_margin_loss(
                output,
                &targets.to_dtype(output.dtype())?,
            )?,
        })
    }
}

/// Settings of a run.
#[derive(Debug, Clone)]
pub struct TrainConfig {
    /// The loss.
    pub task: Task,
    /// Optimizer updates in all (the run ends at this step).
    pub steps: usize,
    /// Samples per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per update.
    pub accumulate: usize,
    /// Seed of every random draw (data order, augmentation).
    pub seed: u64,
    /// Loader threads.
    pub workers: usize,
    /// Micro-batches made ahead.
    pub prefetch: usize,
    /// Save a checkpoint every this many steps (and at the end); 0 = only at the end.
    pub checkpoint_every: usize,
    /// Step checkpoints kept (besides the best).
    pub keep_checkpoints: usize,
    /// Validate every this many steps (and at the end) when a validator is given; 0 = only at
    /// the end.
    pub validate_every: usize,
    /// Output directory: `checkpoints/`, `metrics.csv`, `metrics.jsonl`, `curve.png`.
    pub out_dir: PathBuf,
    /// Learning-rate schedule.
    pub schedule: LrSchedule,
    /// Optimizer settings.
    pub sgd: SgdConfig,
    /// Multipliers.
    pub policy: MultiplierPolicy,
    /// Continue from the latest checkpoint in `out_dir/checkpoints` if there is one.
    pub resume: bool,
    /// Recompute each stage's activations during backward instead of keeping them
    /// ([`crate::recompute`]; frozen BN only).
    pub recompute: bool,
    /// Free-form run description stored in checkpoints.
    pub run: serde_json::Value,
    /// safetensors metadata of the saved models (e.g. `ModelMetadata::to_map`).
    pub model_metadata: BTreeMap<String, String>,
}

/// What the observer hears.
#[derive(Debug, Clone)]
pub enum Event {
    /// The run starts (or resumes) at this step.
    Start {
        /// First step to run is `step + 1`.
        step: usize,
        /// Total steps.
        total: usize,
    },
    /// An update is done.
    Step(Record),
    /// A validation is done.
    Validation {
        /// Step.
        step: usize,
        /// Metric.
        metric: f64,
        /// Whether it is the best so far.
        best: bool,
    },
    /// A checkpoint was written.
    Checkpoint(PathBuf),
}

/// The result of a run.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Step at which the run started (0, or the resumed checkpoint's).
    pub start_step: usize,
    /// Losses of the steps run, in order.
    pub losses: Vec<f64>,
    /// Best validation metric and its step.
    pub best: Option<(f64, usize)>,
    /// The last checkpoint written.
    pub last_checkpoint: Option<PathBuf>,
}

/// Validation: the metric of the current model (higher is better).
pub type Validator<'a> = dyn FnMut() -> Result<f64> + 'a;

/// Averages `other` into `acc` (running sum; divided at the end).
fn add_grads(acc: &mut GradStore, other: GradStore, sgd: &Sgd) -> Result<()> {
    let mut other = other;
    for p in sgd.params() {
        let t = p.var.as_tensor();
        if let Some(g) = other.remove(t) {
            let sum = match acc.remove(t) {
                Some(a) => (a + g)?,
                None => g,
            };
            acc.insert(t, sum);
        }
    }
    Ok(())
}

fn scale_grads(acc: &mut GradStore, sgd: &Sgd, k: f64) -> Result<()> {
    for p in sgd.params() {
        let t = p.var.as_tensor();
        if let Some(g) = acc.remove(t) {
            acc.insert(t, g.affine(k, 0.0)?);
        }
    }
    Ok(())
}

/// One update's averaged gradients and mean loss over `batches` (already on `device`); the
/// dropout masks of micro-batch `i` come from `dropout_seeds[i]` (0 when missing).
pub fn accumulated_gradients(
    net: &dyn TrainNet,
    task: &Task,
    sgd: &Sgd,
    batches: &[(Tensor, Tensor)],
    dropout_seeds: impl IntoIterator<Item = u64>,
    recompute: bool,
) -> Result<(GradStore, f64)> {
    let mut dropout_seeds = dropout_seeds.into_iter();
    let mut acc: Option<GradStore> = None;
    let mut loss_sum = 0.0;
    for (x, y) in batches {
        let seed = dropout_seeds.next().unwrap_or(0);
        let (grads, loss) = micro_batch_gradients(net, task, sgd, x, y, seed, recompute)?;
        loss_sum += loss;
        match &mut acc {
            None => acc = Some(grads),
            Some(a) => add_grads(a, grads, sgd)?,
        }
    }
    let mut acc = acc.context("no micro-batches")?;
    let k = batches.len() as f64;
    if batches.len() > 1 {
        scale_grads(&mut acc, sgd, 1.0 / k)?;
    }
    Ok((acc, loss_sum / k))
}

/// Runs (or resumes) training of `net`, whose variables all live in `varmap`.
pub fn train(
    net: &dyn TrainNet,
    varmap: &VarMap,
    data: Arc<dyn Source>,
    device: &Device,
    config: &TrainConfig,
    validate: Option<&mut Validator<'_>>,
    observer: &mut dyn FnMut(&Event),
) -> Result<Summary> {
    train_data_parallel(
        net,
        varmap,
        data,
        device,
        config,
        &SingleProcess,
        validate,
        observer,
    )
}

/// [`train`] as one rank of a data-parallel run over `collective`: every update averages
/// `config.accumulate` micro-batches on each of the `W` ranks, the `W·accumulate` that a single
/// process with `accumulate = W·accumulate` would see ([`crate::distributed`]). Rank 0 alone
/// validates and writes logs, checkpoints and the curve; every rank resumes from the same
/// checkpoint folder. Checkpoints record the global micro-batch count, so a run resumes on any
/// number of ranks that keeps it.
#[allow(clippy::too_many_arguments)]
pub fn train_data_parallel(
    net: &dyn TrainNet,
    varmap: &VarMap,
    data: Arc<dyn Source>,
    device: &Device,
    config: &TrainConfig,
    collective: &dyn Collective,
    mut validate: Option<&mut Validator<'_>>,
    observer: &mut dyn FnMut(&Event),
) -> Result<Summary> {
    if config.batch_size == 0 || config.accumulate == 0 {
        bail!("batch size and accumulation must be at least 1");
    }
    let ranks = collective.ranks();
    let leader = ranks.is_leader();
    // Micro-batches per update over all ranks: what a checkpoint records.
    let global_accumulate = config.accumulate * ranks.world_size;
    let mut sgd = Sgd::new(varmap, config.sgd, &config.policy);
    let ckpts = Checkpoints::new(config.out_dir.join("checkpoints"), config.keep_checkpoints);
    let mut best: Option<(f64, usize)> = None;
    let mut start = 0;
    if config.resume {
        if let Some(path) = ckpts.resume_point()? {
            let state = Checkpoints::restore(&path, varmap, &mut sgd)
                .with_context(|| format!("cannot resume from {}", path.display()))?;
            if state.seed != config.seed
                || state.batch_size != config.batch_size
                || state.accumulate != global_accumulate
            {
                bail!(
                    "{}: saved with seed {}, batch {} x {}; this run has seed {}, batch {} x {}{}",
                    path.display(),
                    state.seed,
                    state.batch_size,
                    state.accumulate,
                    config.seed,
                    config.batch_size,
                    global_accumulate,
                    if ranks.world_size > 1 {
                        format!(" ({} ranks x {})", ranks.world_size, config.accumulate)
                    } else {
                        String::new()
                    }
                );
            }
            start = state.step;
            best = state.best;
        }
    }
    check_same_step(start, collective)?;
    let log = if leader {
        Some(MetricsLog::open(
            &config.out_dir,
            config.resume.then_some(start),
        )?)
    } else {
        None
    };
    observer(&Event::Start {
        step: start,
        total: config.steps,
    });
    let state_at = |step: usize, best: Option<(f64, usize)>| TrainState {
        step,
        seed: config.seed,
        rng_state: Rng::derive(config.seed, "step", step as u64, 0).state(),
        schedule: config.schedule.clone(),
        sgd: config.sgd,
        accumulate: global_accumulate,
        batch_size: config.batch_size,
        best,
        run: config.run.clone(),
    };
    let mut summary = Summary {
        start_step: start,
        losses: Vec::new(),
        best,
        last_checkpoint: if leader { ckpts.latest() } else { None },
    };
    if start >= config.steps {
        return Ok(summary);
    }
    let mut loader = Loader::shared(
        data.clone(),
        config.seed,
        config.batch_size,
        start * global_accumulate,
        Share::of_rank(ranks.rank, ranks.world_size, config.accumulate),
        config.workers,
        config.prefetch,
    )?;
    let per_step = config.batch_size * global_accumulate;
    let epoch_len = data.len() as f64;
    for step in start + 1..=config.steps {
        let _span = tracing::debug_span!("step", step).entered();
        let t0 = Instant::now();
        let mut batches = Vec::with_capacity(config.accumulate);
        for _ in 0..config.accumulate {
            let b = loader.next_batch()?;
            batches.push((b.images.to_device(device)?, b.targets.to_device(device)?));
        }
        // Dropout masks depend only on (seed, step, micro-batch within the update): a resumed
        // run, or one on another number of ranks, draws the same.
        let first = ranks.rank * config.accumulate;
        let seeds = (first..first + config.accumulate)
            .map(|m| Rng::derive(config.seed, "dropout", step as u64, m as u64).next_u64());
        let (mut grads, loss) =
            accumulated_gradients(net, &config.task, &sgd, &batches, seeds, config.recompute)?;
        average_gradients(&mut grads, &sgd, collective)?;
        // Every rank sees the same loss, so every rank stops on a non-finite one.
        let loss = average_scalar(loss, collective)?;
        if !loss.is_finite() {
            let keep = summary
                .last_checkpoint
                .as_ref()
                .map(|p| format!("the last good checkpoint is {}", p.display()))
                .unwrap_or_else(|| "no checkpoint was written yet".to_string());
            bail!("training stopped: the loss is {loss} at step {step} (the model was not updated; {keep})");
        }
        let lr = sgd.step(&grads, &config.schedule)?;
        let rec = Record {
            step,
            epoch: (step * per_step) as f64 / epoch_len,
            loss,
            lr,
            samples_per_s: per_step as f64 / t0.elapsed().as_secs_f64().max(1e-9),
            metric: None,
        };
        if let Some(log) = &log {
            log.append(&rec)?;
        }
        summary.losses.push(loss);
        observer(&Event::Step(rec.clone()));
        let last = step == config.steps;
        let validation_due =
            last || (config.validate_every > 0 && step % config.validate_every == 0);
        let checkpoint_due =
            last || (config.checkpoint_every > 0 && step % config.checkpoint_every == 0);
        if (validate.is_some() && validation_due) || checkpoint_due {
            // What rank 0 validates and saves: the ranks' mean BN statistics.
            average_running_statistics(varmap, collective)?;
        }
        let mut is_best = false;
        if let (Some(v), Some(log)) = (validate.as_mut(), &log) {
            if validation_due {
                let metric = v()?;
                is_best = best.is_none_or(|(b, _)| metric > b);
                if is_best {
                    best = Some((metric, step));
                }
                log.append(&Record {
                    metric: Some(metric),
                    loss: f64::NAN,
                    ..rec.clone()
                })?;
                observer(&Event::Validation {
                    step,
                    metric,
                    best: is_best,
                });
            }
        }
        if leader && (checkpoint_due || is_best) {
            let path = ckpts.save(
                varmap,
                &sgd,
                &state_at(step, best),
                &config.model_metadata,
                is_best,
            )?;
            observer(&Event::Checkpoint(path.clone()));
            summary.last_checkpoint = Some(path);
        }
    }
    drop(loader);
    summary.best = best;
    if let Some(log) = &log {
        crate::plot::write_png(&log.records()?, &config.out_dir.join("curve.png"))?;
    }
    Ok(summary)
}

/// Re-estimates BN running statistics on `data` before frozen-BN fine-tuning: `batches`
/// forward passes of `batch_size` training samples, no update of any weight. `net` must be in
/// [`r38_model::BatchNormMode::BatchStatistics`] (each pass moves the statistics 10% towards
/// the batch's, MXNet's momentum 0.9); the caller freezes BN again afterwards. For a domain
/// far from the initial weights' (grey 28x28 items -> coloured scenes), where the stored
/// statistics would mis-normalise every layer.
pub fn recalibrate_batch_norm(
    net: &dyn candle_nn::ModuleT,
    data: &dyn Source,
    batches: usize,
    batch_size: usize,
    seed: u64,
    device: &Device,
) -> Result<()> {
    let mut rng = Rng::derive(seed, "bn-recalibration", 0, 0);
    let n = data.len();
    if n == 0 {
        bail!("no samples to re-estimate BN statistics on");
    }
    for b in 0..batches {
        let examples = (0..batch_size)
            .map(|k| data.example((rng.next_u64() as usize).wrapping_add(b + k) % n, &mut rng))
            .collect::<Result<Vec<_>>>()?;
        let batch = crate::loader::collate(b, &examples)?;
        // Forward only: the graph is dropped with the output.
        net.forward_t(&batch.images.to_device(device)?, true)?;
    }
    Ok(())
}
