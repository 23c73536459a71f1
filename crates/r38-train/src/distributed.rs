//! Data-parallel training: one process per device, each computing the gradients of its share
//! of every update's micro-batches, summed over the processes after the backward pass.
//!
//! The authors trained on several GPUs with MXNet, which averages the per-device gradients
//! (`rescale_grad = 1 / #devices`) and the BN running statistics when the parameters are read
//! back. [`crate::trainer::train_data_parallel`] does the same over a [`Collective`]: with
//! `W` ranks of `A` micro-batches each, an update is the average over the `W·A` micro-batches
//! that a single process accumulating `W·A` of them sees, so (frozen BN) both give the same
//! weights up to the order of the sums, and a run can resume on another number of ranks with
//! the same global batch.
//!
//! - [`Ranks`]: a process's place, from torchrun's `RANK`, `WORLD_SIZE`, `LOCAL_RANK`.
//! - [`Collective`]: the one operation needed, an all-reduce sum; [`SingleProcess`] and
//!   [`LocalGroup`] (ranks as threads of one process, for tests and CPU runs), and with the
//!   `nccl` feature `nccl::NcclCollective` (one GPU per process).
//! - [`average_gradients`], [`average_running_statistics`], [`check_same_step`]: the logic
//!   built on it, the same for every implementation.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor};
use candle_nn::VarMap;

use crate::error::{bail, train_error, Result};
use crate::optimizer::{is_running_stat, Sgd};

#[cfg(feature = "nccl")]
pub mod nccl;

/// A process's place in a data-parallel run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ranks {
    /// This process's rank, `0..world_size`; rank 0 writes checkpoints, logs and validates.
    pub rank: usize,
    /// Number of processes.
    pub world_size: usize,
    /// Rank within this machine: the GPU ordinal to use.
    pub local_rank: usize,
}

impl Ranks {
    /// One process.
    pub const SINGLE: Ranks = Ranks {
        rank: 0,
        world_size: 1,
        local_rank: 0,
    };

    /// From `RANK`, `WORLD_SIZE` and `LOCAL_RANK` as torchrun (and Slurm or Kubernetes job
    /// templates) set them; none set is a single process.
    pub fn from_env() -> Result<Self> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// As [`Ranks::from_env`], reading the variables through `var`.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let read = |name: &str| -> Result<Option<usize>> {
            var(name)
                .map(|v| {
                    v.trim()
                        .parse::<usize>()
                        .map_err(|_| train_error!("{name}={v:?} is not a non-negative integer"))
                })
                .transpose()
        };
        let (rank, world_size, local_rank) =
            (read("RANK")?, read("WORLD_SIZE")?, read("LOCAL_RANK")?);
        let ranks = match (rank, world_size) {
            (None, None) => return Ok(Self::SINGLE),
            (Some(rank), Some(world_size)) => Ranks {
                rank,
                world_size,
                local_rank: local_rank.unwrap_or(rank),
            },
            _ => bail!("RANK and WORLD_SIZE must be set together (a data-parallel run sets both)"),
        };
        if ranks.world_size == 0 || ranks.rank >= ranks.world_size {
            bail!(
                "RANK={} is not below WORLD_SIZE={}",
                ranks.rank,
                ranks.world_size
            );
        }
        Ok(ranks)
    }

    /// Whether this process writes checkpoints, logs and validates.
    pub fn is_leader(&self) -> bool {
        self.rank == 0
    }
}

/// The collective operation data-parallel training needs. Every rank calls it with tensors of
/// the same shape, in the same order.
pub trait Collective: Send + Sync {
    /// This process's place.
    fn ranks(&self) -> Ranks;

    /// The element-wise sum of `t` over all ranks, on every rank (same device and dtype as
    /// `t`).
    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor>;
}

/// One process: the sum is the tensor itself.
#[derive(Debug, Clone, Copy, Default)]
pub struct SingleProcess;

impl Collective for SingleProcess {
    fn ranks(&self) -> Ranks {
        Ranks::SINGLE
    }

    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor> {
        Ok(t.clone())
    }
}

/// The mean over the ranks of each of `tensors`, in one all-reduce of all of them
/// concatenated (every rank passes the same shapes in the same order).
fn mean_over_ranks(tensors: &[Tensor], c: &dyn Collective) -> Result<Vec<Tensor>> {
    let world = c.ranks().world_size;
    if world == 1 || tensors.is_empty() {
        return Ok(tensors.to_vec());
    }
    let flat = tensors
        .iter()
        .map(Tensor::flatten_all)
        .collect::<candle_core::Result<Vec<_>>>()?;
    let mean = c
        .all_reduce_sum(&Tensor::cat(&flat, 0)?)?
        .affine(1.0 / world as f64, 0.0)?;
    let mut at = 0;
    tensors
        .iter()
        .map(|t| {
            let n = t.elem_count();
            let m = mean.narrow(0, at, n)?.reshape(t.shape())?;
            at += n;
            Ok(m)
        })
        .collect()
}

/// Averages `grads` over the ranks (in the optimizer's parameter order, so every rank's
/// buffer lines up).
pub fn average_gradients(grads: &mut GradStore, sgd: &Sgd, c: &dyn Collective) -> Result<()> {
    if c.ranks().world_size == 1 {
        return Ok(());
    }
    let (vars, local): (Vec<Tensor>, Vec<Tensor>) = sgd
        .params()
        .iter()
        .filter_map(|p| {
            let var = p.var.as_tensor();
            grads.remove(var).map(|g| (var.clone(), g))
        })
        .unzip();
    for (var, mean) in vars.iter().zip(mean_over_ranks(&local, c)?) {
        grads.insert(var, mean);
    }
    Ok(())
}

/// The mean of a scalar over the ranks (the logged loss).
pub fn average_scalar(value: f64, c: &dyn Collective) -> Result<f64> {
    let world = c.ranks().world_size;
    if world == 1 {
        return Ok(value);
    }
    let t = Tensor::new(&[value], &candle_core::Device::Cpu)?;
    let sum = c.all_reduce_sum(&t)?.to_vec1::<f64>()?[0];
    Ok(sum / world as f64)
}

/// Replaces every BN running statistic of `varmap` by its mean over the ranks, as MXNet
/// averages the devices' auxiliary states; with frozen BN they are equal and stay so.
pub fn average_running_statistics(varmap: &VarMap, c: &dyn Collective) -> Result<()> {
    if c.ranks().world_size == 1 {
        return Ok(());
    }
    let data = varmap.data().lock().map_err(|_| poisoned())?;
    let mut names: Vec<&String> = data.keys().filter(|n| is_running_stat(n)).collect();
    names.sort();
    let local: Vec<Tensor> = names.iter().map(|n| data[*n].as_tensor().clone()).collect();
    for (name, mean) in names.iter().zip(mean_over_ranks(&local, c)?) {
        data[*name].set(&mean)?;
    }
    Ok(())
}

/// Checks that every rank starts at `step` (they resume from one checkpoint folder; a rank that
/// saw another would train on different data).
pub fn check_same_step(step: usize, c: &dyn Collective) -> Result<()> {
    let world = c.ranks().world_size;
    if world == 1 {
        return Ok(());
    }
    // All equal exactly when W · Σs² = (Σs)² (Cauchy-Schwarz); every rank sees the same sums.
    let s = step as f64;
    let t = Tensor::new(&[s, s * s], &candle_core::Device::Cpu)?;
    let sums = c.all_reduce_sum(&t)?.to_vec1::<f64>()?;
    if (world as f64 * sums[1] - sums[0] * sums[0]).abs() > 0.5 {
        bail!(
            "rank {} resumes at step {step}, other ranks elsewhere (mean step {}): do all ranks \
             see the same checkpoint folder?",
            c.ranks().rank,
            sums[0] / world as f64
        );
    }
    Ok(())
}

fn poisoned() -> crate::TrainError {
    train_error!("a lock was poisoned by a panicking rank")
}

/// Ranks as threads of one process, summing on the host: the data-parallel logic tested on
/// the CPU, and CPU runs that want it. The sum is taken in rank order, so a run is
/// reproducible bit for bit.
pub struct LocalGroup {
    shared: Arc<LocalShared>,
    rank: usize,
    world_size: usize,
}

struct LocalShared {
    round: Mutex<Round>,
    changed: Condvar,
}

#[derive(Default)]
struct Round {
    contributions: Vec<Option<(Vec<usize>, Vec<f64>)>>,
    /// The finished sum and how many ranks have still to take it.
    result: Option<(Arc<Vec<f64>>, usize)>,
    finished: u64,
    /// A rank dropped its member: the others must not wait for it.
    left: Option<usize>,
}

impl LocalGroup {
    /// One member per rank of a group of `world_size`; hand each to its own thread.
    pub fn new(world_size: usize) -> Vec<LocalGroup> {
        let shared = Arc::new(LocalShared {
            round: Mutex::new(Round {
                contributions: vec![None; world_size],
                ..Round::default()
            }),
            changed: Condvar::new(),
        });
        (0..world_size)
            .map(|rank| LocalGroup {
                shared: shared.clone(),
                rank,
                world_size,
            })
            .collect()
    }

    /// `f` once per rank of a group of `world_size`, each on its own thread with its member;
    /// the results in rank order (a rank's panic is raised again here).
    pub fn run<T: Send>(world_size: usize, f: impl Fn(LocalGroup) -> T + Sync) -> Vec<T> {
        std::thread::scope(|s| {
            let handles: Vec<_> = LocalGroup::new(world_size)
                .into_iter()
                .map(|member| s.spawn(|| f(member)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                .collect()
        })
    }

    fn wait<'a>(&self, guard: MutexGuard<'a, Round>) -> Result<MutexGuard<'a, Round>> {
        self.shared.changed.wait(guard).map_err(|_| poisoned())
    }

    fn left_error(&self, left: usize) -> crate::TrainError {
        train_error!(
            "rank {left} left the group (it failed or stopped): rank {} stops too",
            self.rank
        )
    }
}

impl Collective for LocalGroup {
    fn ranks(&self) -> Ranks {
        Ranks {
            rank: self.rank,
            world_size: self.world_size,
            local_rank: self.rank,
        }
    }

    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor> {
        let dims = t.dims().to_vec();
        let values = t.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
        let mut round = self.shared.round.lock().map_err(|_| poisoned())?;
        // The previous sum may still be being taken by slower ranks (never by one that left:
        // a rank takes its sum before it can leave).
        while round.result.is_some() {
            round = self.wait(round)?;
        }
        if let Some(r) = round.left {
            return Err(self.left_error(r));
        }
        round.contributions[self.rank] = Some((dims.clone(), values));
        let finished = round.finished;
        if round.contributions.iter().all(Option::is_some) {
            let mismatch = round
                .contributions
                .iter()
                .flatten()
                .position(|(d, _)| *d != dims);
            if let Some(rank) = mismatch {
                round.left = Some(rank);
                self.shared.changed.notify_all();
                bail!(
                    "rank {rank} and rank {} reduce tensors of different shapes: the ranks run \
                     different steps",
                    self.rank
                );
            }
            let mut sum = vec![0.0; t.elem_count()];
            for (_, v) in round.contributions.iter().flatten() {
                sum.iter_mut().zip(v).for_each(|(s, x)| *s += x);
            }
            round.contributions.iter_mut().for_each(|c| *c = None);
            round.result = Some((Arc::new(sum), self.world_size));
            round.finished += 1;
            self.shared.changed.notify_all();
        } else {
            while round.finished == finished {
                if let Some(r) = round.left {
                    return Err(self.left_error(r));
                }
                round = self.wait(round)?;
            }
        }
        let (sum, waiting) = round.result.as_mut().expect("set when a round finishes");
        let sum = sum.clone();
        *waiting -= 1;
        if *waiting == 0 {
            round.result = None;
            self.shared.changed.notify_all();
        }
        drop(round);
        Ok(Tensor::from_vec(sum.to_vec(), dims, t.device())?.to_dtype(t.dtype())?)
    }
}

impl Drop for LocalGroup {
    fn drop(&mut self) {
        if let Ok(mut round) = self.shared.round.lock() {
            round.left.get_or_insert(self.rank);
            self.shared.changed.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn vars<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            pairs
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn ranks_come_from_torchrun_variables() {
        assert_eq!(Ranks::from_vars(vars(&[])).unwrap(), Ranks::SINGLE);
        let r = Ranks::from_vars(vars(&[
            ("RANK", "3"),
            ("WORLD_SIZE", "4"),
            ("LOCAL_RANK", "1"),
        ]));
        assert_eq!(
            r.unwrap(),
            Ranks {
                rank: 3,
                world_size: 4,
                local_rank: 1
            }
        );
        for bad in [
            vec![("RANK", "1")],
            vec![("RANK", "4"), ("WORLD_SIZE", "4")],
            vec![("RANK", "0"), ("WORLD_SIZE", "0")],
            vec![("RANK", "-1"), ("WORLD_SIZE", "2")],
            vec![("RANK", "0"), ("WORLD_SIZE", "two")],
        ] {
            let err = Ranks::from_vars(vars(&bad)).unwrap_err().to_string();
            assert!(err.contains("RANK") || err.contains("WORLD_SIZE"), "{err}");
        }
    }

    #[test]
    fn local_sums_reach_every_rank_round_after_round() {
        let results = LocalGroup::run(3, |g| {
            let r = g.ranks().rank as f32;
            (0..50)
                .map(|round| {
                    let t = Tensor::new(&[r, round as f32], &Device::Cpu).unwrap();
                    g.all_reduce_sum(&t).unwrap().to_vec1::<f32>().unwrap()
                })
                .collect::<Vec<_>>()
        });
        for per_rank in results {
            for (round, v) in per_rank.into_iter().enumerate() {
                assert_eq!(v, [3.0, 3.0 * round as f32]);
            }
        }
    }

    #[test]
    fn a_rank_that_leaves_stops_the_others_instead_of_hanging() {
        let results = LocalGroup::run(2, |g| {
            if g.ranks().rank == 1 {
                drop(g);
                return Ok(());
            }
            let t = Tensor::new(&[1f32], &Device::Cpu).unwrap();
            g.all_reduce_sum(&t).map(|_| ())
        });
        let err = results[0].as_ref().unwrap_err().to_string();
        assert!(err.contains("rank 1 left"), "{err}");
    }

    #[test]
    fn different_steps_are_refused_on_every_rank() {
        let results = LocalGroup::run(3, |g| check_same_step(1 + g.ranks().rank, &g));
        assert!(results.iter().all(|r| r.is_err()));
        let same = LocalGroup::run(3, |g| check_same_step(7, &g));
        assert!(same.iter().all(|r| r.is_ok()));
    }

    #[test]
    fn running_statistics_become_their_mean() {
        let results = LocalGroup::run(2, |g| {
            let varmap = VarMap::new();
            let r = g.ranks().rank as f32;
            for (name, v) in [("bn1_moving_mean", r), ("bn1_moving_var", 1.0 + 2.0 * r)] {
                let t = Tensor::new(&[v, v], &Device::Cpu).unwrap();
                let var = candle_core::Var::from_tensor(&t).unwrap();
                varmap.data().lock().unwrap().insert(name.into(), var);
            }
            let w = candle_core::Var::from_tensor(&Tensor::new(&[r], &Device::Cpu).unwrap());
            varmap
                .data()
                .lock()
                .unwrap()
                .insert("conv1_weight".into(), w.unwrap());
            average_running_statistics(&varmap, &g).unwrap();
            let data = varmap.data().lock().unwrap();
            let get = |n: &str| data[n].as_tensor().to_vec1::<f32>().unwrap();
            (
                get("bn1_moving_mean"),
                get("bn1_moving_var"),
                get("conv1_weight"),
            )
        });
        for (r, (mean, var, weight)) in results.into_iter().enumerate() {
            assert_eq!(mean, [0.5, 0.5]);
            assert_eq!(var, [2.0, 2.0]);
            // Weights are not statistics: untouched.
            assert_eq!(weight, [r as f32]);
        }
    }
}
