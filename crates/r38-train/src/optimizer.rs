//! SGD with momentum (MXNet's `sgd_mom_update`) or the authors' "Torch-style Nesterov",
//! weight decay, gradient rescaling and clipping, per-parameter lr/wd multipliers (the
//! authors' "alex" rule), frozen parameters and state save/load.
//!
//! Parameters are candle [`Var`]s identified by canonical names (`res4b3_branch2a_weight`,
//! `bn4b3_branch2a_beta`, `conv6a_bias`, ...). BN running statistics (`*_moving_mean`,
//! `*_moving_var`) are never trainable.
//!
//! Update rules, with `g = clip(rescale_grad * grad)`, `lr = schedule(n) * lr_mult`,
//! `wd = weight_decay * wd_mult`, momentum buffer `m` starting at 0:
//!
//! * [`MomentumKind::Standard`] (MXNet `sgd_mom_update`, what the segmentation recipe runs):
//!   `m = momentum * m - lr * (g + wd * w); w = w + m`.
//! * [`MomentumKind::TorchNesterov`] (the authors' ImageNet optimizer):
//!   `d = g + wd * w; m = momentum * m + d; w = w - lr * (d + momentum * m)`.
//! * momentum 0 (both kinds): `w = w - lr * (g + wd * w)`. (The authors' `TorchNesterov`
//!   without momentum uses the optimizer-wide weight decay, ignoring `wd_mult`; no recipe runs
//!   that path, and here `wd_mult` always applies.)
//!
//! MXNet's own `nag` optimizer (`nag_mom_update`) keeps the learning rate inside the momentum
//! buffer (`m = momentum * m - lr * d; w += momentum * m - lr * d`); it equals
//! `TorchNesterov` only while the learning rate is constant. The parity tests check
//! `Standard` against MXNet's `sgd` (fixed and poly schedules, rescaling, clipping) and
//! `TorchNesterov` against MXNet's `nag` at a constant rate.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Result, Tensor, Var};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};

use crate::schedule::LrSchedule;

/// Learning-rate and weight-decay multipliers of one parameter.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Multipliers {
    /// Multiplies the scheduled learning rate.
    pub lr: f64,
    /// Multiplies the weight decay.
    pub wd: f64,
}

impl Multipliers {
    /// lr x1, wd x1.
    pub const ONE: Multipliers = Multipliers { lr: 1.0, wd: 1.0 };
    /// A frozen parameter: lr x0, wd x0 (never updated).
    pub const FROZEN: Multipliers = Multipliers { lr: 0.0, wd: 0.0 };
}

/// The authors' multiplier rules (`util/symbol/symbol.py`, `_attr_scope_lr`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LrRule {
    /// Weights and BN gamma lr x1 wd x1; biases and BN beta lr x2 wd x0.
    Alex,
    /// For new layers: weights lr x10 wd x1; biases lr x20 wd x0.
    Alex10,
    /// Every parameter lr x1 wd x1 ("torch").
    Uniform,
}

/// Whether `name` is a bias-like parameter (`*_bias`, `*_beta`).
fn is_bias_like(name: &str) -> bool {
    name.ends_with("_bias") || name.ends_with("_beta")
}

/// Whether `name` is a BN running statistic (not trainable).
pub fn is_running_stat(name: &str) -> bool {
    name.ends_with("_moving_mean") || name.ends_with("_moving_var")
}

/// The layer part of a parameter name: `res4b3_branch2a` for `res4b3_branch2a_weight`.
pub fn layer_of(name: &str) -> &str {
    for suffix in [
        "_weight",
        "_bias",
        "_gamma",
        "_beta",
        "_moving_mean",
        "_moving_var",
    ] {
        if let Some(stem) = name.strip_suffix(suffix) {
            return stem;
        }
    }
    name
}

impl LrRule {
    /// The multipliers this rule gives to parameter `name`.
    pub fn multipliers(self, name: &str) -> Multipliers {
        let bias = is_bias_like(name);
        match (self, bias) {
            (LrRule::Alex, false) => Multipliers::ONE,
            (LrRule::Alex, true) => Multipliers { lr: 2.0, wd: 0.0 },
            (LrRule::Alex10, false) => Multipliers { lr: 10.0, wd: 1.0 },
            (LrRule::Alex10, true) => Multipliers { lr: 20.0, wd: 0.0 },
            (LrRule::Uniform, _) => Multipliers::ONE,
        }
    }
}

/// How every parameter gets its multipliers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MultiplierPolicy {
    /// Rule for every parameter not matched below ("alex" in the authors' recipes).
    pub base: LrRule,
    /// Layer-name prefixes of newly initialised layers (e.g. `conv6a`, `linear`).
    pub new_layers: Vec<String>,
    /// Rule for the new layers (the authors' option: [`LrRule::Alex10`]).
    pub new_layer_rule: LrRule,
    /// Layer-name prefixes that are frozen (lr 0, never updated), e.g. `conv1a`, `res2`.
    pub frozen: Vec<String>,
    /// Exact parameter names with explicit multipliers; these win over everything else.
    pub overrides: BTreeMap<String, Multipliers>,
}

impl MultiplierPolicy {
    /// The authors' segmentation setting: "alex" everywhere, no new-layer boost, nothing frozen.
    pub fn alex() -> Self {
        Self {
            base: LrRule::Alex,
            new_layers: Vec::new(),
            new_layer_rule: LrRule::Alex10,
            frozen: Vec::new(),
            overrides: BTreeMap::new(),
        }
    }

    /// Every parameter lr x1 wd x1.
    pub fn uniform() -> Self {
        Self {
            base: LrRule::Uniform,
            ..Self::alex()
        }
    }

    /// Layers whose name starts with one of `prefixes` get `rule` (e.g. `Alex10` for the head).
    pub fn with_new_layers<S: AsRef<str>>(mut self, prefixes: &[S], rule: LrRule) -> Self {
        self.new_layers = prefixes.iter().map(|s| s.as_ref().to_string()).collect();
        self.new_layer_rule = rule;
        self
    }

    /// Layers whose name starts with one of `prefixes` are frozen.
    pub fn with_frozen<S: AsRef<str>>(mut self, prefixes: &[S]) -> Self {
        self.frozen = prefixes.iter().map(|s| s.as_ref().to_string()).collect();
        self
    }

    /// Multipliers of parameter `name`; `None` for BN running statistics (never trainable).
    pub fn multipliers(&self, name: &str) -> Option<Multipliers> {
        if is_running_stat(name) {
            return None;
        }
        if let Some(m) = self.overrides.get(name) {
            return Some(*m);
        }
        let layer = layer_of(name);
        if self.frozen.iter().any(|p| layer.starts_with(p.as_str())) {
            return Some(Multipliers::FROZEN);
        }
        if self
            .new_layers
            .iter()
            .any(|p| layer.starts_with(p.as_str()))
        {
            return Some(self.new_layer_rule.multipliers(name));
        }
        Some(self.base.multipliers(name))
    }
}

/// Which momentum update to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MomentumKind {
    /// MXNet's `sgd_mom_update` (the segmentation recipe).
    #[default]
    Standard,
    /// The authors' `TorchNesterov` (their ImageNet recipe).
    TorchNesterov,
    /// PyTorch's `torch.optim.SGD` (psa's recipe): `d = g + wd * w; m = momentum * m + d;
    /// w = w - lr * m`; differs from `Standard` when the rate changes (the rate is applied at
    /// update time, not folded into the buffer).
    Torch,
}

/// Optimiser settings shared by all parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SgdConfig {
    /// Momentum (0.9 in every recipe); 0 disables the momentum buffers.
    pub momentum: f64,
    /// Weight decay (5e-4 segmentation, 1e-4 ImageNet), times each parameter's `wd` multiplier.
    pub weight_decay: f64,
    /// Gradient scale before everything else (the authors use 1 / #devices).
    pub rescale_grad: f64,
    /// Clip the rescaled gradient to `[-c, c]`.
    pub clip_gradient: Option<f64>,
    /// Standard or Torch-style Nesterov momentum.
    pub kind: MomentumKind,
}

impl SgdConfig {
    /// The segmentation recipe: momentum 0.9, wd 5e-4, rescale 1/`devices`, standard momentum.
    pub fn segmentation(devices: usize) -> Self {
        Self {
            momentum: 0.9,
            weight_decay: 5e-4,
            rescale_grad: 1.0 / devices.max(1) as f64,
            clip_gradient: None,
            kind: MomentumKind::Standard,
        }
    }

    /// The ImageNet recipe: Torch-style Nesterov, momentum 0.9, wd 1e-4, rescale 1/`devices`.
    pub fn imagenet(devices: usize) -> Self {
        Self {
            momentum: 0.9,
            weight_decay: 1e-4,
            rescale_grad: 1.0 / devices.max(1) as f64,
            clip_gradient: None,
            kind: MomentumKind::TorchNesterov,
        }
    }
}

/// One trainable parameter.
#[derive(Debug, Clone)]
pub struct Param {
    /// Canonical name.
    pub name: String,
    /// The variable the model reads.
    pub var: Var,
    /// Its multipliers.
    pub mults: Multipliers,
    momentum: Option<Tensor>,
}

impl Param {
    /// The momentum buffer, once the parameter has been updated with momentum.
    pub fn momentum_buffer(&self) -> Option<&Tensor> {
        self.momentum.as_ref()
    }
}

/// SGD over a set of named [`Var`]s.
#[derive(Debug, Clone)]
pub struct Sgd {
    config: SgdConfig,
    params: Vec<Param>,
    num_update: usize,
}

/// Name of the update counter in a saved state file.
const NUM_UPDATE_KEY: &str = "__num_update__";
/// Prefix of momentum buffers in a saved state file.
const MOMENTUM_PREFIX: &str = "momentum:";

impl Sgd {
    /// Every trainable variable of `varmap` (BN running statistics excluded), in name order,
    /// with the multipliers of `policy`.
    pub fn new(varmap: &VarMap, config: SgdConfig, policy: &MultiplierPolicy) -> Self {
        let data = varmap.data().lock().expect("VarMap mutex poisoned");
        let vars: Vec<(String, Var)> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        drop(data);
        Self::from_vars(vars, config, policy)
    }

    /// From explicit `(name, var)` pairs; running statistics are dropped.
    pub fn from_vars(
        vars: impl IntoIterator<Item = (String, Var)>,
        config: SgdConfig,
        policy: &MultiplierPolicy,
    ) -> Self {
        let mut params: Vec<Param> = vars
            .into_iter()
            .filter_map(|(name, var)| {
                policy.multipliers(&name).map(|mults| Param {
                    name,
                    var,
                    mults,
                    momentum: None,
                })
            })
            .collect();
        params.sort_by(|a, b| a.name.cmp(&b.name));
        Self {
            config,
            params,
            num_update: 0,
        }
    }

    /// The settings.
    pub fn config(&self) -> &SgdConfig {
        &self.config
    }

    /// The parameters, in name order.
    pub fn params(&self) -> &[Param] {
        &self.params
    }

    /// The parameter called `name`.
    pub fn param(&self, name: &str) -> Option<&Param> {
        self.params.iter().find(|p| p.name == name)
    }

    /// Updates done so far (MXNet's `num_update` of the last update).
    pub fn num_update(&self) -> usize {
        self.num_update
    }

    /// One update at base learning rate `lr` (before multipliers) from `grads`.
    ///
    /// Parameters without a gradient in `grads` (not reached by the loss) and frozen
    /// parameters (lr multiplier 0) are left unchanged, momentum included.
    pub fn step_lr(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        self.num_update += 1;
        let cfg = self.config;
        for p in &mut self.params {
            if p.mults.lr == 0.0 {
                continue;
            }
            let Some(grad) = grads.get(p.var.as_tensor()) else {
                continue;
            };
            update_one(
                p,
                grad,
                lr * p.mults.lr,
                cfg.weight_decay * p.mults.wd,
                &cfg,
            )?;
        }
        Ok(())
    }

    /// One update with the learning rate `schedule.lr(n)` (n = 1 for the first update);
    /// returns the base learning rate used.
    pub fn step(&mut self, grads: &GradStore, schedule: &LrSchedule) -> Result<f64> {
        let lr = schedule.lr(self.num_update + 1);
        self.step_lr(grads, lr)?;
        Ok(lr)
    }

    /// `loss.backward()` then [`Sgd::step`]; returns the base learning rate used.
    pub fn backward_step(&mut self, loss: &Tensor, schedule: &LrSchedule) -> Result<f64> {
        let grads = loss.backward()?;
        self.step(&grads, schedule)
    }

    /// Saves the momentum buffers and the update count to a safetensors file
    /// (`momentum:<name>` tensors and a `__num_update__` u32 pair `[low, high]`).
    pub fn save_state<P: AsRef<Path>>(&self, path: P) -> Result<()> {
        let mut map: HashMap<String, Tensor> = HashMap::new();
        for p in &self.params {
            if let Some(m) = &p.momentum {
                map.insert(format!("{MOMENTUM_PREFIX}{}", p.name), m.clone());
            }
        }
        let n = self.num_update as u64;
        map.insert(
            NUM_UPDATE_KEY.to_string(),
            Tensor::new(&[n as u32, (n >> 32) as u32], &Device::Cpu)?,
        );
        candle_core::safetensors::save(&map, path)
    }

    /// Loads what [`Sgd::save_state`] wrote. Buffers of unknown parameters are an error;
    /// parameters without a saved buffer restart from zero momentum.
    pub fn load_state<P: AsRef<Path>>(&mut self, path: P) -> Result<()> {
        let device = self
            .params
            .first()
            .map(|p| p.var.device().clone())
            .unwrap_or(Device::Cpu);
        let mut map = candle_core::safetensors::load(path, &device)?;
        let n = match map.remove(NUM_UPDATE_KEY) {
            Some(t) => {
                let v = t.to_dtype(DType::U32)?.to_vec1::<u32>()?;
                if v.len() != 2 {
                    candle_core::bail!("{NUM_UPDATE_KEY} must hold 2 values");
                }
                (v[0] as u64 | ((v[1] as u64) << 32)) as usize
            }
            None => candle_core::bail!("optimizer state without {NUM_UPDATE_KEY}"),
        };
        for p in &mut self.params {
            p.momentum = None;
        }
        for (key, t) in map {
            let Some(name) = key.strip_prefix(MOMENTUM_PREFIX) else {
                candle_core::bail!("unexpected tensor {key} in optimizer state");
            };
            let Some(p) = self.params.iter_mut().find(|p| p.name == name) else {
                candle_core::bail!("optimizer state for unknown parameter {name}");
            };
            if t.dims() != p.var.dims() {
                candle_core::bail!(
                    "momentum of {name} has shape {:?}, parameter {:?}",
                    t.dims(),
                    p.var.dims()
                );
            }
            p.momentum = Some(t.to_dtype(p.var.dtype())?);
        }
        self.num_update = n;
        Ok(())
    }
}

fn update_one(p: &mut Param, grad: &Tensor, lr: f64, wd: f64, cfg: &SgdConfig) -> Result<()> {
    let w = p.var.as_tensor();
    let mut g = grad.detach().to_dtype(w.dtype())?;
    if cfg.rescale_grad != 1.0 {
        g = g.affine(cfg.rescale_grad, 0.0)?;
    }
    if let Some(c) = cfg.clip_gradient {
        g = g.clamp(-c, c)?;
    }
    let w = w.detach();
    let d = if wd != 0.0 {
        (&g + w.affine(wd, 0.0)?)?
    } else {
        g
    };
    if cfg.momentum == 0.0 {
        return p.var.set(&(&w - d.affine(lr, 0.0)?)?);
    }
    let m_prev = match &p.momentum {
        Some(m) => m.clone(),
        None => w.zeros_like()?,
    };
    let (m, new_w) = match cfg.kind {
        MomentumKind::Standard => {
            let m = (m_prev.affine(cfg.momentum, 0.0)? - d.affine(lr, 0.0)?)?;
            let new_w = (&w + &m)?;
            (m, new_w)
        }
        MomentumKind::Torch => {
            let m = (m_prev.affine(cfg.momentum, 0.0)? + &d)?;
            let new_w = (&w - m.affine(lr, 0.0)?)?;
            (m, new_w)
        }
        MomentumKind::TorchNesterov => {
            let m = (m_prev.affine(cfg.momentum, 0.0)? + &d)?;
            let step = (&d + m.affine(cfg.momentum, 0.0)?)?;
            let new_w = (&w - step.affine(lr, 0.0)?)?;
            (m, new_w)
        }
    };
    p.var.set(&new_w)?;
    p.momentum = Some(m);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alex_rule() {
        let p = MultiplierPolicy::alex();
        let one = Some(Multipliers::ONE);
        let two = Some(Multipliers { lr: 2.0, wd: 0.0 });
        assert_eq!(p.multipliers("res4b3_branch2a_weight"), one);
        assert_eq!(p.multipliers("bn4b3_branch2a_gamma"), one);
        assert_eq!(p.multipliers("bn4b3_branch2a_beta"), two);
        assert_eq!(p.multipliers("conv6a_bias"), two);
        assert_eq!(p.multipliers("conv6a_weight"), one);
        assert_eq!(p.multipliers("bn4b3_branch2a_moving_mean"), None);
        assert_eq!(p.multipliers("bn7_moving_var"), None);
    }

    #[test]
    fn new_layers_and_frozen() {
        let p = MultiplierPolicy::alex()
            .with_new_layers(&["conv6a", "linear"], LrRule::Alex10)
            .with_frozen(&["conv1a", "res2", "bn2"]);
        assert_eq!(
            p.multipliers("conv6a_weight"),
            Some(Multipliers { lr: 10.0, wd: 1.0 })
        );
        assert_eq!(
            p.multipliers("linear21_bias"),
            Some(Multipliers { lr: 20.0, wd: 0.0 })
        );
        assert_eq!(p.multipliers("conv1a_weight"), Some(Multipliers::FROZEN));
        assert_eq!(
            p.multipliers("res2a_branch1_weight"),
            Some(Multipliers::FROZEN)
        );
        assert_eq!(
            p.multipliers("bn2b1_branch2a_beta"),
            Some(Multipliers::FROZEN)
        );
        assert_eq!(
            p.multipliers("res3a_branch1_weight"),
            Some(Multipliers::ONE)
        );
        assert_eq!(
            MultiplierPolicy::uniform().multipliers("conv6a_bias"),
            Some(Multipliers::ONE)
        );
        assert_eq!(layer_of("bn7_moving_mean"), "bn7");
    }

    fn scalar_var(v: f32) -> Var {
        Var::from_tensor(&Tensor::new(&[v], &Device::Cpu).unwrap()).unwrap()
    }

    fn value(v: &Var) -> f64 {
        v.as_tensor().to_vec1::<f32>().unwrap()[0] as f64
    }

    /// One weight 1.0, gradient 0.5, wd 0.1, momentum 0.9, lr 0.1 then 0.05.
    fn two_steps(kind: MomentumKind, momentum: f64, clip: Option<f64>, rescale: f64) -> (f64, f64) {
        let w = scalar_var(1.0);
        let cfg = SgdConfig {
            momentum,
            weight_decay: 0.1,
            rescale_grad: rescale,
            clip_gradient: clip,
            kind,
        };
        let mut sgd = Sgd::from_vars(
            [("x_weight".to_string(), w.clone())],
            cfg,
            &MultiplierPolicy::alex(),
        );
        let mut grads = GradStore::default();
        grads.insert(w.as_tensor(), Tensor::new(&[0.5f32], &Device::Cpu).unwrap());
        sgd.step_lr(&grads, 0.1).unwrap();
        let w1 = value(&w);
        sgd.step_lr(&grads, 0.05).unwrap();
        (w1, value(&w))
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-6
    }

    #[test]
    fn standard_momentum_by_hand() {
        // m = -0.1 * (0.5 + 0.1) = -0.06, w = 0.94; d = 0.5 + 0.094 = 0.594,
        // m = 0.9 * -0.06 - 0.05 * 0.594 = -0.0837, w = 0.8563
        let (w1, w2) = two_steps(MomentumKind::Standard, 0.9, None, 1.0);
        assert!(close(w1, 0.94) && close(w2, 0.8563), "{w1} {w2}");
    }

    #[test]
    fn torch_nesterov_by_hand() {
        // d = 0.6, M = 0.6, w = 1 - 0.1 * (0.6 + 0.54) = 0.886;
        // d = 0.5886, M = 1.1286, w = 0.886 - 0.05 * (0.5886 + 1.01574) = 0.805783
        let (w1, w2) = two_steps(MomentumKind::TorchNesterov, 0.9, None, 1.0);
        assert!(close(w1, 0.886) && close(w2, 0.805783), "{w1} {w2}");
    }

    #[test]
    fn plain_sgd_rescale_and_clip_by_hand() {
        // no momentum: w = 1 - 0.1 * 0.6 = 0.94; w = 0.94 - 0.05 * (0.5 + 0.094) = 0.9103
        let (w1, w2) = two_steps(MomentumKind::Standard, 0.0, None, 1.0);
        assert!(close(w1, 0.94) && close(w2, 0.9103), "{w1} {w2}");
        // rescale 0.5 then clip to 0.2: g = 0.2, d = 0.3, m = -0.03, w = 0.97
        let (w1, _) = two_steps(MomentumKind::Standard, 0.9, Some(0.2), 0.5);
        assert!(close(w1, 0.97), "{w1}");
    }

    #[test]
    fn frozen_and_gradient_free_parameters_stay_put() {
        let frozen = scalar_var(1.0);
        let untouched = scalar_var(2.0);
        let bias = scalar_var(3.0);
        let stat = scalar_var(4.0);
        let policy = MultiplierPolicy::alex().with_frozen(&["f"]);
        let mut sgd = Sgd::from_vars(
            [
                ("f_weight".to_string(), frozen.clone()),
                ("u_weight".to_string(), untouched.clone()),
                ("b_bias".to_string(), bias.clone()),
                ("bn_moving_var".to_string(), stat.clone()),
            ],
            SgdConfig::segmentation(2),
            &policy,
        );
        assert_eq!(
            sgd.params().len(),
            3,
            "running statistics are not trainable"
        );
        let mut grads = GradStore::default();
        let g = Tensor::new(&[1.0f32], &Device::Cpu).unwrap();
        grads.insert(frozen.as_tensor(), g.clone());
        grads.insert(bias.as_tensor(), g.clone());
        grads.insert(stat.as_tensor(), g);
        let lr = sgd.step(&grads, &LrSchedule::Fixed { base: 0.1 }).unwrap();
        assert_eq!(lr, 0.1);
        assert_eq!(value(&frozen), 1.0);
        assert_eq!(value(&untouched), 2.0);
        assert_eq!(value(&stat), 4.0);
        assert!(sgd.param("u_weight").unwrap().momentum_buffer().is_none());
        // bias: lr x2, wd x0, rescale 1/2: w = 3 - 0.2 * 0.5 = 2.9
        assert!(close(value(&bias), 2.9), "{}", value(&bias));
        assert_eq!(sgd.num_update(), 1);
    }
}
