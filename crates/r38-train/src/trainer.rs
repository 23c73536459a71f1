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
use crate::loader::{Loader, Source};
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
    mut validate: Option<&mut Validator<'_>>,
    observer: &mut dyn FnMut(&Event),
) -> Result<Summary> {
    if config.batch_size == 0 || config.accumulate == 0 {
        bail!("batch size and accumulation must be at least 1");
    }
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
                || state.accumulate != config.accumulate
            {
                bail!(
                    "{}: saved with seed {}, batch {} x {}; this run has seed {}, batch {} x {}",
                    path.display(),
                    state.seed,
                    state.batch_size,
                    state.accumulate,
                    config.seed,
                    config.batch_size,
                    config.accumulate
                );
            }
            start = state.step;
            best = state.best;
        }
    }
    let log = MetricsLog::open(&config.out_dir, config.resume.then_some(start))?;
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
        accumulate: config.accumulate,
        batch_size: config.batch_size,
        best,
        run: config.run.clone(),
    };
    let mut summary = Summary {
        start_step: start,
        losses: Vec::new(),
        best,
        last_checkpoint: ckpts.latest(),
    };
    if start >= config.steps {
        return Ok(summary);
    }
    let mut loader = Loader::new(
        data.clone(),
        config.seed,
        config.batch_size,
        start * config.accumulate,
        config.workers,
        config.prefetch,
    )?;
    let per_step = config.batch_size * config.accumulate;
    let epoch_len = data.len() as f64;
    for step in start + 1..=config.steps {
        let _span = tracing::debug_span!("step", step).entered();
        let t0 = Instant::now();
        let mut batches = Vec::with_capacity(config.accumulate);
        for _ in 0..config.accumulate {
            let b = loader.next_batch()?;
            batches.push((b.images.to_device(device)?, b.targets.to_device(device)?));
        }
        // Dropout masks depend only on (seed, step, micro-batch): a resumed run draws the same.
        let seeds = (0..config.accumulate)
            .map(|m| Rng::derive(config.seed, "dropout", step as u64, m as u64).next_u64());
        let (grads, loss) =
            accumulated_gradients(net, &config.task, &sgd, &batches, seeds, config.recompute)?;
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
        log.append(&rec)?;
        summary.losses.push(loss);
        observer(&Event::Step(rec.clone()));
        let last = step == config.steps;
        let mut is_best = false;
        if let Some(v) = validate.as_mut() {
            if last || (config.validate_every > 0 && step % config.validate_every == 0) {
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
        if last || is_best || (config.checkpoint_every > 0 && step % config.checkpoint_every == 0) {
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
    crate::plot::write_png(&log.records()?, &config.out_dir.join("curve.png"))?;
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
