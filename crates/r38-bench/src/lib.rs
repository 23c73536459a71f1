//! Benchmark harness for the ResNet-38 forward pass and training step.
//!
//! - [`weights`]: deterministic random full-size weights (no weight files needed), the same in
//!   every process, so the exact, fast and PyTorch runs see identical networks.
//! - [`net`]: [`net::BenchNet`], the network's forward pass written out level by level (same
//!   weights and names as `r38_model::Classifier` / `r38_seg::SegmentationNet`), with every
//!   convolution routed through [`r38_ops::engine::conv2d_with`], per-level timings and MAC counts.
//! - [`cases`]: the benchmark cases.
//! - [`train_step`]: one training step of the segmentation recipe on the real network.
//! - [`stats`]: medians and the process's peak RSS.
//! - [`device_check`]: a GPU against the CPU (parity fixtures per dtype, training gradients).
//! - [`peak`]: the machine's measured FMA peak, which every case is reported against.
//! - [`worker`]: the engines' processes and their interleaved repetitions.

pub mod cases;
pub mod device_check;
pub mod layers;
pub mod net;
pub mod peak;
pub mod stats;
pub mod train_step;
pub mod weights;
pub mod worker;
