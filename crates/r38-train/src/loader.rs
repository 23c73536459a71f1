//! Batches made in background threads, in a deterministic order.
//!
//! Micro-batch `m` holds the samples at global positions `m * B .. (m + 1) * B` of an endless
//! sequence of epochs, each a seeded permutation of the dataset (`Rng::derive(seed, "epoch",
//! e, 0)`); sample `i` of micro-batch `m` is augmented with `Rng::derive(seed, "augment", m,
//! i)`. A batch therefore depends only on `(seed, m)`: any number of worker threads, and a
//! resumed run, see exactly the same data.

use std::collections::BTreeMap;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::error::{train_error, Result};
use candle_core::{Device, Tensor};

use crate::augment::Planar;
use crate::rng::Rng;

/// What a sample is trained towards.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// A class index (classification).
    Class(u32),
    /// A label map `(height, width)`, row-major, 255 = ignore (segmentation).
    Mask {
        /// Label values.
        labels: Vec<u8>,
        /// Height.
        height: usize,
        /// Width.
        width: usize,
    },
    /// Image-level labels, 1 for every class present (multi-label classification).
    Labels(Vec<u8>),
}

/// One augmented sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// The normalised image.
    pub image: Planar,
    /// Its target.
    pub target: Target,
}

/// A dataset with its augmentation: sample `index` drawn with `rng`.
pub trait Source: Send + Sync {
    /// Number of samples in an epoch.
    fn len(&self) -> usize;
    /// Whether there are none.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Sample `index`, augmented with `rng` (validation sources ignore it).
    fn example(&self, index: usize, rng: &mut Rng) -> Result<Example>;
}

/// A batch on the CPU: images `(N, 3, H, W)` and targets, `(N,)` class ids or `(N, h, w)`
/// label maps, both `u32`.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Micro-batch number.
    pub index: usize,
    /// Images.
    pub images: Tensor,
    /// Targets.
    pub targets: Tensor,
}

/// Stacks examples into a [`Batch`].
pub fn collate(index: usize, examples: &[Example]) -> Result<Batch> {
    let first = examples
        .first()
        .ok_or_else(|| train_error!("empty batch"))?;
    let (h, w) = (first.image.height, first.image.width);
    let mut images = Vec::with_capacity(examples.len() * 3 * h * w);
    let mut targets: Vec<u32> = Vec::new();
    let mut mask_shape = None;
    let mut label_count = None;
    for ex in examples {
        if (ex.image.height, ex.image.width) != (h, w) {
            return Err(train_error!("images of one batch differ in size"));
        }
        images.extend_from_slice(&ex.image.data);
        match &ex.target {
            Target::Class(c) => targets.push(*c),
            Target::Mask {
                labels,
                height,
                width,
            } => {
                if mask_shape.get_or_insert((*height, *width)) != &(*height, *width) {
                    return Err(train_error!("label maps of one batch differ in size"));
                }
                targets.extend(labels.iter().map(|&l| u32::from(l)));
            }
            Target::Labels(labels) => {
                if label_count.get_or_insert(labels.len()) != &labels.len() {
                    return Err(train_error!("label vectors of one batch differ in length"));
                }
                targets.extend(labels.iter().map(|&l| u32::from(l)));
            }
        }
    }
    if mask_shape.is_some() && label_count.is_some() {
        return Err(train_error!("a batch mixes label maps and label vectors"));
    }
    let n = examples.len();
    let images = Tensor::from_vec(images, (n, 3, h, w), &Device::Cpu)?;
    let targets = match mask_shape {
        Some((mh, mw)) => Tensor::from_vec(targets, (n, mh, mw), &Device::Cpu)?,
        None => match label_count {
            Some(c) => Tensor::from_vec(targets, (n, c), &Device::Cpu)?,
            None => Tensor::from_vec(targets, n, &Device::Cpu)?,
        },
    };
    Ok(Batch {
        index,
        images,
        targets,
    })
}

/// The dataset indices of micro-batch `m`.
pub fn batch_indices(seed: u64, len: usize, batch_size: usize, m: usize) -> Vec<usize> {
    let mut out = Vec::with_capacity(batch_size);
    let mut cached: Option<(usize, Vec<usize>)> = None;
    for i in 0..batch_size {
        let pos = m * batch_size + i;
        let epoch = pos / len;
        if cached.as_ref().map(|c| c.0) != Some(epoch) {
            cached = Some((
                epoch,
                Rng::derive(seed, "epoch", epoch as u64, 0).permutation(len),
            ));
        }
        out.push(cached.as_ref().expect("set above").1[pos % len]);
    }
    out
}

/// Micro-batch `m`, made in the calling thread.
pub fn make_batch(source: &dyn Source, seed: u64, batch_size: usize, m: usize) -> Result<Batch> {
    let examples = batch_indices(seed, source.len(), batch_size, m)
        .into_iter()
        .enumerate()
        .map(|(i, idx)| source.example(idx, &mut Rng::derive(seed, "augment", m as u64, i as u64)))
        .collect::<Result<Vec<_>>>()?;
    collate(m, &examples)
}

/// Which micro-batches one rank of a data-parallel run takes: of every `per_step` consecutive
/// micro-batches (one update over all ranks), the `per_rank` starting at `offset`. A single
/// process takes them all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Share {
    /// Micro-batches per update, over all ranks.
    pub per_step: usize,
    /// Micro-batches per update on this rank.
    pub per_rank: usize,
    /// This rank's first micro-batch within an update.
    pub offset: usize,
}

impl Share {
    /// Every micro-batch, in order.
    pub const ALL: Share = Share {
        per_step: 1,
        per_rank: 1,
        offset: 0,
    };

    /// Rank `rank` of `world_size`, `per_rank` micro-batches each per update.
    pub fn of_rank(rank: usize, world_size: usize, per_rank: usize) -> Self {
        Share {
            per_step: world_size * per_rank,
            per_rank,
            offset: rank * per_rank,
        }
    }

    /// The micro-batch number of this rank's `k`-th micro-batch, counted from an update's start.
    fn batch_number(&self, k: usize) -> usize {
        (k / self.per_rank) * self.per_step + self.offset + k % self.per_rank
    }
}

/// Background loading of micro-batches `start, start + 1, ...` (or a rank's [`Share`] of them),
/// delivered in order.
pub struct Loader {
    rx: Option<Receiver<(usize, Result<Batch>)>>,
    pending: BTreeMap<usize, Result<Batch>>,
    next: usize,
    workers: Vec<JoinHandle<()>>,
}

impl Loader {
    /// Starts `workers` threads (at least 1) making up to `prefetch` batches ahead.
    pub fn new(
        source: Arc<dyn Source>,
        seed: u64,
        batch_size: usize,
        start: usize,
        workers: usize,
        prefetch: usize,
    ) -> Result<Self> {
        Self::shared(
            source,
            seed,
            batch_size,
            start,
            Share::ALL,
            workers,
            prefetch,
        )
    }

    /// As [`Loader::new`], for one rank: its `share` of the micro-batches from `start` on
    /// (`start` is the first micro-batch of an update).
    pub fn shared(
        source: Arc<dyn Source>,
        seed: u64,
        batch_size: usize,
        start: usize,
        share: Share,
        workers: usize,
        prefetch: usize,
    ) -> Result<Self> {
        if share.per_rank == 0 || share.offset + share.per_rank > share.per_step {
            return Err(train_error!("invalid share of micro-batches: {share:?}"));
        }
        if source.is_empty() || batch_size == 0 {
            return Err(train_error!("empty dataset or batch size 0"));
        }
        let workers = workers.max(1);
        let (tx, rx) = sync_channel(prefetch.max(1));
        let handles = (0..workers)
            .map(|w| {
                let tx = tx.clone();
                let source = source.clone();
                std::thread::spawn(move || {
                    // `k` counts this rank's micro-batches; `m` numbers them over all ranks.
                    let mut k = w;
                    loop {
                        let m = start + share.batch_number(k);
                        let batch = make_batch(source.as_ref(), seed, batch_size, m);
                        if tx.send((k, batch)).is_err() {
                            return;
                        }
                        k += workers;
                    }
                })
            })
            .collect();
        Ok(Self {
            rx: Some(rx),
            pending: BTreeMap::new(),
            next: 0,
            workers: handles,
        })
    }

    /// The next micro-batch in order.
    pub fn next_batch(&mut self) -> Result<Batch> {
        loop {
            if let Some(b) = self.pending.remove(&self.next) {
                self.next += 1;
                return b;
            }
            let (k, b) = self
                .rx
                .as_ref()
                .expect("receiver lives until drop")
                .recv()
                .map_err(|_| train_error!("data loader threads stopped"))?;
            self.pending.insert(k, b);
        }
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        // Closing the channel ends the workers at their next send.
        self.rx = None;
        self.pending.clear();
        for h in self.workers.drain(..) {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Counting(usize);
    impl Source for Counting {
        fn len(&self) -> usize {
            self.0
        }
        fn example(&self, index: usize, rng: &mut Rng) -> Result<Example> {
            Ok(Example {
                image: Planar {
                    width: 1,
                    height: 1,
                    data: vec![index as f32, rng.uniform() as f32, 0.0],
                },
                target: Target::Class(index as u32),
            })
        }
    }

    #[test]
    fn order_and_content_do_not_depend_on_threads_or_start() {
        let src: Arc<dyn Source> = Arc::new(Counting(7));
        let mut one = Loader::new(src.clone(), 3, 3, 0, 1, 2).unwrap();
        let mut four = Loader::new(src.clone(), 3, 3, 0, 4, 8).unwrap();
        let mut seen = Vec::new();
        let mut batches = Vec::new();
        for m in 0..7 {
            let a = one.next_batch().unwrap();
            let b = four.next_batch().unwrap();
            assert_eq!(a.index, m);
            let av = a.images.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(
                av,
                b.images.flatten_all().unwrap().to_vec1::<f32>().unwrap()
            );
            seen.extend(a.targets.to_vec1::<u32>().unwrap());
            batches.push(av);
        }
        // Three epochs of 7: each epoch is a permutation.
        for e in 0..3 {
            let mut ep: Vec<u32> = seen[e * 7..e * 7 + 7].to_vec();
            ep.sort();
            assert_eq!(ep, (0..7).collect::<Vec<_>>());
        }
        let mut late = Loader::new(src, 3, 3, 5, 2, 2).unwrap();
        let b5 = late.next_batch().unwrap();
        assert_eq!(
            b5.images.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            batches[5]
        );
    }

    #[test]
    fn ranks_share_the_single_process_sequence() {
        let src: Arc<dyn Source> = Arc::new(Counting(7));
        // Three ranks, two micro-batches each per update, from the update starting at 6.
        let numbers = |rank| {
            let share = Share::of_rank(rank, 3, 2);
            let mut l = Loader::shared(src.clone(), 3, 2, 6, share, 2, 2).unwrap();
            (0..4)
                .map(|_| l.next_batch().unwrap().index)
                .collect::<Vec<_>>()
        };
        assert_eq!(numbers(0), [6, 7, 12, 13]);
        assert_eq!(numbers(1), [8, 9, 14, 15]);
        assert_eq!(numbers(2), [10, 11, 16, 17]);
        let bad = Share {
            per_step: 2,
            per_rank: 2,
            offset: 1,
        };
        assert!(Loader::shared(src, 3, 2, 0, bad, 1, 1).is_err());
    }
}
