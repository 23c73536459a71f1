//! One micro-batch's gradients, stage by stage ([`r38_model::Stages`]), with optional
//! activation recomputation.
//!
//! candle keeps every intermediate tensor of the forward pass until `backward`. With
//! recomputation, the forward pass keeps only each stage's input (the stem, every level, the
//! final pre-activation, the head); backward then runs stage by stage from the last, re-running
//! one stage's forward pass at a time with autograd on and back-propagating the output
//! gradient through it. Peak memory falls from the whole network's intermediates to one
//! stage's, for one more forward pass. The gradients are the same: the recomputed forward pass
//! is the same computation, and dropout draws the same masks because its stream is reseeded
//! per stage in both modes.
//!
//! Batch-statistics BN would update its running statistics twice, so recomputation is only
//! for frozen BN, the authors' fine-tuning setting.

use crate::error::{Context, Result};
use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use candle_nn::ModuleT;
use r38_model::Stages;

use crate::optimizer::Sgd;
use crate::rng::Rng;
use crate::trainer::Task;

/// A network the trainer can run: a module that is also a chain of stages.
pub trait TrainNet: ModuleT + Stages {}

impl<T: ModuleT + Stages> TrainNet for T {}

/// Gradients of `task.loss(net(x), y)` (parameters of `sgd` only) and the loss value.
/// Dropout masks are drawn from `dropout_seed`, reseeded at every stage.
pub fn micro_batch_gradients(
    net: &dyn TrainNet,
    task: &Task,
    sgd: &Sgd,
    x: &Tensor,
    y: &Tensor,
    dropout_seed: u64,
    recompute: bool,
) -> Result<(GradStore, f64)> {
    let stages = net.stage_count();
    let seed_stage = |s: usize| {
        r38_ops::dropout::seed(Rng::derive(dropout_seed, "stage", s as u64, 0).next_u64())
    };
    let loss_value = |l: &Tensor| -> Result<f64> {
        Ok(f64::from(
            l.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()?,
        ))
    };
    if !recompute {
        let mut t = x.clone();
        for s in 0..stages {
            seed_stage(s);
            t = net.forward_stage(s, &t, true)?;
        }
        let loss = task.loss(&t, y)?;
        let value = loss_value(&loss)?;
        return Ok((loss.backward()?, value));
    }

    // Forward: keep each stage's input, drop its graph.
    let mut inputs = vec![x.clone()];
    for s in 0..stages - 1 {
        seed_stage(s);
        let out = net.forward_stage(s, &inputs[s], true)?.detach();
        inputs.push(out);
    }
    // The last stage and the loss, with a tracked input to read its gradient from.
    let last = Var::from_tensor(&inputs.pop().context("a network has stages")?)?;
    seed_stage(stages - 1);
    let loss = task.loss(&net.forward_stage(stages - 1, last.as_tensor(), true)?, y)?;
    let value = loss_value(&loss)?;
    let mut total = loss.backward()?;
    let mut output_grad = total
        .remove(last.as_tensor())
        .context("the loss does not depend on the last stage's input")?;
    drop(last);
    // Backward, one recomputed stage at a time.
    for s in (0..stages - 1).rev() {
        let input = inputs.pop().context("one input per stage")?;
        let tracked = if s > 0 {
            Some(Var::from_tensor(&input)?)
        } else {
            None
        };
        let x_in = tracked.as_ref().map_or(&input, |v| v.as_tensor());
        seed_stage(s);
        let out = net.forward_stage(s, x_in, true)?;
        // d/d(params) of sum(out * g) is the chain rule with out's gradient g.
        let mut grads = (out * &output_grad)?.sum_all()?.backward()?;
        for p in sgd.params() {
            if let Some(g) = grads.remove(p.var.as_tensor()) {
                let sum = match total.remove(p.var.as_tensor()) {
                    Some(a) => (a + g)?,
                    None => g,
                };
                total.insert(p.var.as_tensor(), sum);
            }
        }
        if let Some(v) = tracked {
            output_grad = grads
                .remove(v.as_tensor())
                .context("a stage's output does not depend on its input")?;
        }
    }
    Ok((total, value))
}
