//! Learning-rate schedules of the authors' recipes (MXNet `lr_scheduler` semantics).
//!
//! `num_update` is MXNet's update count: **1 for the first update**, incremented before the
//! learning rate is asked for.

use serde::{Deserialize, Serialize};

/// A learning-rate schedule: `lr(num_update)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LrSchedule {
    /// The same rate at every update (the authors' `FixedScheduler`).
    Fixed {
        /// The rate.
        base: f64,
    },
    /// The authors' `LinearScheduler`: `base * (1 - min(offset + n, updates) / updates)`,
    /// raised to `stop_lr` when it falls below it (`stop_lr <= 0` disables the floor).
    Linear {
        /// Rate at update 0.
        base: f64,
        /// Update count at which the rate reaches 0 (the authors pass `to_iter + 1`).
        updates: usize,
        /// Floor of the rate (the authors pass `min(base / 100, 1e-6)`).
        stop_lr: f64,
        /// Updates already done before this run (the authors pass `from_iter`).
        offset: usize,
    },
    /// General polynomial decay `base * (1 - min(n, total) / total)^power`, floored at `floor`.
    Poly {
        /// Rate at update 0.
        base: f64,
        /// Exponent (1 is "linear", 0.9 the DeepLab habit).
        power: f64,
        /// Update count at which the decay ends.
        total: usize,
        /// Lowest rate returned.
        floor: f64,
    },
    /// The Cityscapes recipe in one schedule: `fixed_lr` for the first `fixed_updates`
    /// updates (stage 1), then the authors' linear decay from `linear_base` over
    /// `linear_updates` more updates (stage 2, started afresh from the stage-1 checkpoint).
    FixedThenLinear {
        /// Stage-1 rate (0.0016 for Cityscapes).
        fixed_lr: f64,
        /// Stage-1 length in updates (140 epochs x 185).
        fixed_updates: usize,
        /// Stage-2 starting rate (0.0008).
        linear_base: f64,
        /// Stage-2 length in updates (64 epochs x 185).
        linear_updates: usize,
    },
    /// MXNet's `MultiFactorScheduler`: `base * factor^k`, `k` = number of `steps` strictly below
    /// `num_update`.
    Step {
        /// Rate before the first step.
        base: f64,
        /// Update counts after which the rate is multiplied by `factor` (increasing).
        steps: Vec<usize>,
        /// Multiplier per step (the authors use 0.1).
        factor: f64,
    },
}

impl LrSchedule {
    /// The authors' "linear" schedule for a run over updates `from_iter..to_iter`:
    /// `LinearScheduler(updates = to_iter + 1, stop_lr = min(base / 100, 1e-6), offset = from_iter)`.
    pub fn authors_linear(base: f64, from_iter: usize, to_iter: usize) -> Self {
        LrSchedule::Linear {
            base,
            updates: to_iter + 1,
            stop_lr: (base / 100.0).min(1e-6),
            offset: from_iter,
        }
    }

    /// The Cityscapes two-stage recipe: 0.0016 fixed for `stage1_epochs`, then "linear" from
    /// 0.0008 for `stage2_epochs`, with `iters_per_epoch` updates an epoch (185 for batch 16).
    pub fn cityscapes(iters_per_epoch: usize, stage1_epochs: usize, stage2_epochs: usize) -> Self {
        LrSchedule::FixedThenLinear {
            fixed_lr: 0.0016,
            fixed_updates: stage1_epochs * iters_per_epoch,
            linear_base: 0.0008,
            linear_updates: stage2_epochs * iters_per_epoch,
        }
    }

    /// Learning rate for update number `num_update` (1 for the first update).
    pub fn lr(&self, num_update: usize) -> f64 {
        match self {
            LrSchedule::Fixed { base } => *base,
            LrSchedule::Linear {
                base,
                updates,
                stop_lr,
                offset,
            } => linear(*base, *updates, *stop_lr, offset + num_update),
            LrSchedule::Poly {
                base,
                power,
                total,
                floor,
            } => {
                let total = (*total).max(1);
                let n = num_update.min(total);
                let lr = base * (1.0 - n as f64 / total as f64).powf(*power);
                lr.max(*floor)
            }
            LrSchedule::FixedThenLinear {
                fixed_lr,
                fixed_updates,
                linear_base,
                linear_updates,
            } => {
                if num_update <= *fixed_updates {
                    *fixed_lr
                } else {
                    let stage2 = LrSchedule::authors_linear(*linear_base, 0, *linear_updates);
                    stage2.lr(num_update - fixed_updates)
                }
            }
            LrSchedule::Step {
                base,
                steps,
                factor,
            } => {
                let k = steps.iter().filter(|&&s| num_update > s).count();
                base * factor.powi(k as i32)
            }
        }
    }
}

fn linear(base: f64, updates: usize, stop_lr: f64, now: usize) -> f64 {
    let updates = updates.max(1);
    let now = now.min(updates);
    let lr = base * (1.0 - now as f64 / updates as f64);
    if stop_lr > 0.0 && lr < stop_lr {
        stop_lr
    } else {
        lr
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-12 * b.abs().max(1e-300)
    }

    #[test]
    fn fixed_is_constant() {
        let s = LrSchedule::Fixed { base: 0.0016 };
        assert_eq!(s.lr(1), 0.0016);
        assert_eq!(s.lr(1_000_000), 0.0016);
    }

    #[test]
    fn authors_linear_decays_to_the_floor() {
        let s = LrSchedule::authors_linear(0.1, 0, 99);
        // updates = 100
        assert!(close(s.lr(1), 0.1 * 0.99));
        assert!(close(s.lr(50), 0.05));
        assert!(close(s.lr(99), 0.1 * 0.01));
        // update 100 and beyond: 0, floored at min(0.1/100, 1e-6) = 1e-6
        assert_eq!(s.lr(100), 1e-6);
        assert_eq!(s.lr(1000), 1e-6);
        // resume at iteration 40 of the same run
        let r = LrSchedule::authors_linear(0.1, 40, 99);
        assert!(close(r.lr(10), s.lr(50)));
    }

    #[test]
    fn poly_generalises_linear() {
        let p = LrSchedule::Poly {
            base: 0.01,
            power: 0.9,
            total: 1000,
            floor: 0.0,
        };
        assert!(close(p.lr(500), 0.01 * 0.5f64.powf(0.9)));
        assert_eq!(p.lr(1000), 0.0);
        assert_eq!(p.lr(2000), 0.0);
        let one = LrSchedule::Poly {
            base: 0.01,
            power: 1.0,
            total: 1000,
            floor: 1e-6,
        };
        assert!(close(one.lr(250), 0.0075));
        assert_eq!(one.lr(1000), 1e-6);
    }

    #[test]
    fn cityscapes_two_stages() {
        let s = LrSchedule::cityscapes(185, 140, 64);
        let n1 = 140 * 185;
        assert_eq!(s.lr(1), 0.0016);
        assert_eq!(s.lr(n1), 0.0016);
        // stage 2 update k uses the linear schedule from 0.0008 over 64*185 + 1 updates
        let n2 = 64 * 185 + 1;
        assert!(close(s.lr(n1 + 1), 0.0008 * (1.0 - 1.0 / n2 as f64)));
        assert!(close(s.lr(n1 + 5920), 0.0008 * (1.0 - 5920.0 / n2 as f64)));
        // the floor: min(0.0008/100, 1e-6) = 1e-6
        assert_eq!(s.lr(n1 + n2), 1e-6);
    }

    #[test]
    fn step_is_mxnet_multifactor() {
        let s = LrSchedule::Step {
            base: 0.1,
            steps: vec![10, 20],
            factor: 0.1,
        };
        assert!(close(s.lr(10), 0.1));
        assert!(close(s.lr(11), 0.01));
        assert!(close(s.lr(20), 0.01));
        assert!(close(s.lr(21), 0.001));
    }

    #[test]
    fn serde_round_trip() {
        let s = LrSchedule::cityscapes(185, 140, 64);
        let j = serde_json::to_string(&s).unwrap();
        assert!(j.contains("\"type\":\"fixed_then_linear\""));
        let back: LrSchedule = serde_json::from_str(&j).unwrap();
        assert_eq!(back, s);
    }
}
