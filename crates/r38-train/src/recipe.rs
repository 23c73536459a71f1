//! The authors' training recipes (reference §7) and a run's settings: from the numbers a user
//! gives (or leaves to the recipe) to a checked [`TrainConfig`]. `r38 train-seg` and
//! `r38 train-cls` only parse flags into a [`RunSettings`].

use crate::optimizer::{LrRule, MomentumKind, MultiplierPolicy, SgdConfig};
use crate::schedule::LrSchedule;
use crate::trainer::{Task, TrainConfig};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A run's settings that cannot work, named as the flag that set them.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{setting}: {message}")]
pub struct RecipeError {
    /// The setting (`--lr`, `--epochs`, ...).
    pub setting: &'static str,
    /// What is wrong with it.
    pub message: String,
}

fn refuse(setting: &'static str, message: impl Into<String>) -> RecipeError {
    RecipeError {
        setting,
        message: message.into(),
    }
}

/// The most optimizer updates one run may plan (a year of updates at 30 per second): a bound
/// on what a typo such as `--epochs 1e30` can ask for.
pub const MAX_STEPS: usize = 1_000_000_000;

/// The learning-rate schedule family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScheduleKind {
    /// The base rate at every step (Cityscapes stage 1).
    Fixed,
    /// The authors' "linear": `lr * (1 - step / (steps + 1))`, floored at min(lr/100, 1e-6).
    Linear,
    /// `lr * (1 - step / steps)^power`, floored.
    Poly,
    /// Fixed for some steps, then linear from a second rate (the Cityscapes two-stage recipe in
    /// one run).
    FixedThenLinear,
}

impl std::str::FromStr for ScheduleKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "fixed" => ScheduleKind::Fixed,
            "linear" => ScheduleKind::Linear,
            "poly" => ScheduleKind::Poly,
            "fixed-then-linear" => ScheduleKind::FixedThenLinear,
            other => {
                return Err(format!(
                    "unknown schedule `{other}` (fixed, linear, poly, fixed-then-linear)"
                ))
            }
        })
    }
}

/// What a recipe fixes; every value can be overridden by [`RunSettings`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Recipe {
    /// Epochs when no step count is given.
    pub epochs: f64,
    /// Images per optimizer update.
    pub batch_size: usize,
    /// Base learning rate.
    pub lr: f64,
    /// Schedule family.
    pub schedule: ScheduleKind,
    /// Weight decay.
    pub wd: f64,
    /// Momentum formulation.
    pub momentum: MomentumKind,
}

impl Recipe {
    /// Segmentation fine-tuning (Cityscapes stage 1: batch 16, lr 0.0016 fixed, 140 epochs,
    /// wd 5e-4, standard momentum).
    pub const SEGMENTATION: Recipe = Recipe {
        epochs: 140.0,
        batch_size: 16,
        lr: 0.0016,
        schedule: ScheduleKind::Fixed,
        wd: 5e-4,
        momentum: MomentumKind::Standard,
    };

    /// ImageNet classification: batch 256, lr 0.1 "linear" over 90 epochs, Nesterov, wd 1e-4.
    pub const IMAGENET: Recipe = Recipe {
        epochs: 90.0,
        batch_size: 256,
        lr: 0.1,
        schedule: ScheduleKind::Linear,
        wd: 1e-4,
        momentum: MomentumKind::TorchNesterov,
    };
}

/// A run's settings: `None` leaves a value to the recipe.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSettings {
    /// Output folder: checkpoints/, metrics.csv, metrics.jsonl, curve.png.
    pub out: PathBuf,
    /// Continue from the latest checkpoint in `out`.
    pub resume: bool,
    /// Start afresh even though `out` holds a run.
    pub overwrite: bool,
    /// Optimizer updates in all.
    pub steps: Option<usize>,
    /// Epochs, when `steps` is not given.
    pub epochs: Option<f64>,
    /// Images per update.
    pub batch_size: Option<usize>,
    /// Micro-batches per update; divides the batch size.
    pub accumulate: usize,
    /// Base learning rate.
    pub lr: Option<f64>,
    /// Schedule family.
    pub schedule: Option<ScheduleKind>,
    /// Exponent of the poly schedule.
    pub power: f64,
    /// Lowest rate of the poly schedule.
    pub lr_floor: f64,
    /// Steps of the fixed stage of fixed-then-linear (default: half).
    pub fixed_steps: Option<usize>,
    /// Starting rate of the linear stage of fixed-then-linear (default: lr / 2).
    pub lr2: Option<f64>,
    /// SGD momentum.
    pub momentum: f64,
    /// Weight decay.
    pub wd: Option<f64>,
    /// Clip every gradient value to `[-C, C]`.
    pub clip_gradient: Option<f64>,
    /// Multiplier rule of the pre-trained layers.
    pub lr_mult: LrRule,
    /// Multiplier rule of the new layers.
    pub new_lr_mult: LrRule,
    /// Seed of the data order, augmentation and new-layer initialisation.
    pub seed: u64,
    /// Data-loading threads.
    pub workers: usize,
    /// Micro-batches loaded ahead.
    pub prefetch: usize,
    /// Checkpoint every N steps (and at the end).
    pub checkpoint_every: usize,
    /// Step checkpoints kept besides the best.
    pub keep_checkpoints: usize,
    /// Validate every N steps (and at the end); 0: only at the end.
    pub validate_every: usize,
    /// Recompute activations during backward (less memory).
    pub recompute: bool,
}

impl RunSettings {
    /// Refuse values no run can use: non-finite or negative rates, momentum outside `[0, 1)`,
    /// zero or absurd step counts, a batch the accumulation does not divide.
    pub fn check(&self, recipe: &Recipe) -> Result<(), RecipeError> {
        let finite = |setting, v: f64, lo: f64| {
            if v.is_finite() && v >= lo {
                Ok(())
            } else {
                Err(refuse(
                    setting,
                    format!("{v} is not a finite number >= {lo}"),
                ))
            }
        };
        finite("--lr", self.lr.unwrap_or(recipe.lr), 0.0)?;
        if let Some(lr2) = self.lr2 {
            finite("--lr2", lr2, 0.0)?;
        }
        finite("--wd", self.wd.unwrap_or(recipe.wd), 0.0)?;
        finite("--lr-floor", self.lr_floor, 0.0)?;
        finite("--power", self.power, 0.0)?;
        if !(self.momentum.is_finite() && (0.0..1.0).contains(&self.momentum)) {
            return Err(refuse(
                "--momentum",
                format!("{} is not in [0, 1)", self.momentum),
            ));
        }
        if let Some(c) = self.clip_gradient {
            if !(c.is_finite() && c > 0.0) {
                return Err(refuse("--clip-gradient", format!("{c} is not > 0")));
            }
        }
        if let Some(e) = self.epochs {
            if !(e.is_finite() && e > 0.0) {
                return Err(refuse("--epochs", format!("{e} is not a positive number")));
            }
        }
        if let Some(s) = self.steps {
            if s == 0 || s > MAX_STEPS {
                return Err(refuse("--steps", format!("{s} is not in 1..={MAX_STEPS}")));
            }
        }
        if self.accumulate == 0 {
            return Err(refuse("--accumulate", "must be at least 1"));
        }
        self.micro_batch(recipe).map(|_| ())
    }

    /// Refuse to start afresh over an existing run unless asked to.
    pub fn check_out_dir(&self) -> Result<(), RecipeError> {
        let latest = self.out.join("checkpoints").join("latest");
        if latest.exists() && !self.resume && !self.overwrite {
            return Err(refuse(
                "--out",
                format!(
                    "{} already holds a run; pass --resume to continue it or --overwrite to \
                     start afresh",
                    self.out.display()
                ),
            ));
        }
        Ok(())
    }

    /// The micro-batch size.
    pub fn micro_batch(&self, recipe: &Recipe) -> Result<usize, RecipeError> {
        let b = self.batch_size.unwrap_or(recipe.batch_size);
        if b == 0 || self.accumulate == 0 || !b.is_multiple_of(self.accumulate) {
            return Err(refuse(
                "--batch-size",
                format!(
                    "{b} is not a positive multiple of --accumulate {}",
                    self.accumulate
                ),
            ));
        }
        Ok(b / self.accumulate)
    }

    /// The training configuration for a dataset of `len` samples; `new_layers` get the
    /// new-layer multipliers, `model_metadata` goes into every checkpoint's weights.
    pub fn train_config(
        &self,
        recipe: &Recipe,
        task: Task,
        len: usize,
        new_layers: &[&str],
        run: serde_json::Value,
        model_metadata: BTreeMap<String, String>,
    ) -> Result<TrainConfig, RecipeError> {
        self.check(recipe)?;
        let micro = self.micro_batch(recipe)?;
        let batch = micro * self.accumulate;
        let per_epoch = (len / batch).max(1);
        let steps = match self.steps {
            Some(s) => s,
            None => {
                let epochs = self.epochs.unwrap_or(recipe.epochs);
                let steps = (epochs * per_epoch as f64).ceil();
                if steps > MAX_STEPS as f64 {
                    return Err(refuse(
                        "--epochs",
                        format!("{epochs} epochs are {steps} updates, over {MAX_STEPS}"),
                    ));
                }
                (steps as usize).max(1)
            }
        };
        let lr = self.lr.unwrap_or(recipe.lr);
        let schedule = match self.schedule.unwrap_or(recipe.schedule) {
            ScheduleKind::Fixed => LrSchedule::Fixed { base: lr },
            ScheduleKind::Linear => LrSchedule::authors_linear(lr, 0, steps),
            ScheduleKind::Poly => LrSchedule::Poly {
                base: lr,
                power: self.power,
                total: steps,
                floor: self.lr_floor,
            },
            ScheduleKind::FixedThenLinear => {
                let fixed = self.fixed_steps.unwrap_or(steps / 2).min(steps);
                LrSchedule::FixedThenLinear {
                    fixed_lr: lr,
                    fixed_updates: fixed,
                    linear_base: self.lr2.unwrap_or(lr / 2.0),
                    linear_updates: steps - fixed,
                }
            }
        };
        let sgd = SgdConfig {
            momentum: self.momentum,
            weight_decay: self.wd.unwrap_or(recipe.wd),
            // Micro-batch gradients are averaged by the trainer.
            rescale_grad: 1.0,
            clip_gradient: self.clip_gradient,
            kind: recipe.momentum,
        };
        let policy = MultiplierPolicy {
            base: self.lr_mult,
            ..MultiplierPolicy::alex()
        }
        .with_new_layers(new_layers, self.new_lr_mult);
        Ok(TrainConfig {
            task,
            steps,
            batch_size: micro,
            accumulate: self.accumulate,
            seed: self.seed,
            workers: self.workers,
            prefetch: self.prefetch,
            checkpoint_every: self.checkpoint_every,
            keep_checkpoints: self.keep_checkpoints,
            validate_every: self.validate_every,
            out_dir: self.out.clone(),
            schedule,
            sgd,
            policy,
            resume: self.resume,
            recompute: self.recompute,
            run,
            model_metadata,
        })
    }
}

/// Initial weights under canonical names (a path or `hf://` name), or none.
pub fn initial_weights(
    init: Option<&Path>,
) -> crate::error::Result<BTreeMap<String, candle_core::Tensor>> {
    match init {
        Some(p) => {
            let file = r38_model::weights::load(&r38_model::hub::resolve(p)?)?;
            Ok(file.tensors)
        }
        None => Ok(BTreeMap::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> RunSettings {
        RunSettings {
            out: "out".into(),
            resume: false,
            overwrite: false,
            steps: None,
            epochs: None,
            batch_size: None,
            accumulate: 4,
            lr: None,
            schedule: None,
            power: 1.0,
            lr_floor: 1e-6,
            fixed_steps: None,
            lr2: None,
            momentum: 0.9,
            wd: None,
            clip_gradient: None,
            lr_mult: LrRule::Alex,
            new_lr_mult: LrRule::Alex,
            seed: 0,
            workers: 1,
            prefetch: 1,
            checkpoint_every: 10,
            keep_checkpoints: 1,
            validate_every: 0,
            recompute: false,
        }
    }

    fn config(s: &RunSettings) -> Result<TrainConfig, RecipeError> {
        s.train_config(
            &Recipe::SEGMENTATION,
            Task::Classification,
            100,
            &[],
            serde_json::Value::Null,
            BTreeMap::new(),
        )
    }

    #[test]
    fn the_recipe_fills_what_is_left_open() {
        let c = config(&settings()).unwrap();
        assert_eq!((c.batch_size, c.accumulate), (4, 4));
        // 100 samples, batch 16: 6 updates an epoch, 140 epochs.
        assert_eq!(c.steps, 6 * 140);
        assert_eq!(c.sgd.weight_decay, 5e-4);
    }

    #[test]
    fn values_no_run_can_use_are_refused() {
        type Change = fn(&mut RunSettings);
        let cases: [(&str, Change); 9] = [
            ("--lr", |s| s.lr = Some(f64::NAN)),
            ("--lr", |s| s.lr = Some(f64::INFINITY)),
            ("--momentum", |s| s.momentum = f64::NAN),
            ("--wd", |s| s.wd = Some(f64::NAN)),
            ("--epochs", |s| s.epochs = Some(-1.0)),
            ("--epochs", |s| s.epochs = Some(f64::NAN)),
            ("--epochs", |s| s.epochs = Some(1e30)),
            ("--steps", |s| s.steps = Some(0)),
            ("--batch-size", |s| s.batch_size = Some(6)),
        ];
        for (setting, change) in cases {
            let mut s = settings();
            change(&mut s);
            let e = config(&s).unwrap_err();
            assert_eq!(e.setting, setting, "{e}");
        }
    }
}
