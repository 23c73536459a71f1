//! The pre-activation residual unit ("b33" basic and "b131" bottleneck).

use crate::batch_norm::BatchNormMode;
use crate::conv::{Conv2d, ConvSpec};
use crate::pre_activation::PreActivation;
use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

/// Everything that places one unit in the network.
#[derive(Debug, Clone, PartialEq)]
pub struct UnitSpec {
    /// Unit id as in the checkpoint: `2a`, `4b3`, `7a`.
    pub name: String,
    /// Channels of the unit's input.
    pub in_channels: usize,
    /// Kernel of each conv of the residual branch: `[3, 3]` or `[1, 3, 1]`.
    pub kernels: Vec<usize>,
    /// Output channels of each conv of the residual branch.
    pub widths: Vec<usize>,
    /// Stride of the first conv and of the shortcut.
    pub stride: usize,
    /// Dilation of the first conv.
    pub first_dilation: usize,
    /// Dilation of the later convs (twice `first_dilation` where a stride became dilation).
    pub dilation: usize,
    /// A 1x1 projection shortcut (`res<U>_branch1`) instead of the identity.
    pub projection: bool,
    /// Dropout probability before the last conv, in training only.
    pub dropout: f32,
    /// BN epsilon.
    pub bn_eps: f64,
}

impl UnitSpec {
    /// Branch names in checkpoint order: `branch2a`, `branch2b1`, `branch2b2`, ...
    pub fn branch_names(&self) -> Vec<String> {
        (0..self.kernels.len())
            .map(|i| match i {
                0 => "branch2a".to_string(),
                i => format!("branch2b{i}"),
            })
            .collect()
    }
}

/// One conv of the residual branch with its own BN+ReLU in front.
#[derive(Debug, Clone)]
pub struct Branch {
    /// BN + ReLU in front of the conv.
    pub pre: PreActivation,
    /// The conv `res<U>_<branch>`.
    pub conv: Conv2d,
}

/// `x -> [BN -> ReLU -> conv] x k (+ shortcut)`; the projection reads the pre-activated input.
#[derive(Debug, Clone)]
pub struct ResidualUnit {
    branches: Vec<Branch>,
    shortcut: Option<Conv2d>,
    dropout: f32,
    spec: UnitSpec,
}

impl ResidualUnit {
    /// Read the unit's tensors (`bn<U>_*`, `res<U>_*`) through `vb`.
    pub fn new(spec: UnitSpec, vb: &VarBuilder) -> Result<Self> {
        if spec.kernels.len() != spec.widths.len() || spec.kernels.is_empty() {
            candle_core::bail!("unit {}: kernels and widths differ in length", spec.name);
        }
        let mut branches = Vec::with_capacity(spec.kernels.len());
        let mut in_c = spec.in_channels;
        for (i, br) in spec.branch_names().iter().enumerate() {
            let (stride, dilation) = if i == 0 {
                (spec.stride, spec.first_dilation)
            } else {
                (1, spec.dilation)
            };
            let conv_spec = ConvSpec::new(in_c, spec.widths[i], spec.kernels[i])
                .stride(stride)
                .dilation(dilation);
            branches.push(Branch {
                pre: PreActivation::new(in_c, spec.bn_eps, vb, &format!("bn{}_{br}", spec.name))?,
                conv: Conv2d::new(conv_spec, vb, &format!("res{}_{br}", spec.name))?,
            });
            in_c = spec.widths[i];
        }
        let shortcut = if spec.projection {
            let conv_spec = ConvSpec::new(spec.in_channels, in_c, 1).stride(spec.stride);
            Some(Conv2d::new(
                conv_spec,
                vb,
                &format!("res{}_branch1", spec.name),
            )?)
        } else {
            if spec.stride != 1 || spec.in_channels != in_c {
                candle_core::bail!(
                    "unit {}: an identity shortcut cannot change stride or channels",
                    spec.name
                );
            }
            None
        };
        Ok(Self {
            branches,
            shortcut,
            dropout: spec.dropout,
            spec,
        })
    }

    /// Where the unit sits in the network.
    pub fn spec(&self) -> &UnitSpec {
        &self.spec
    }

    /// The residual branch, one BN+ReLU+conv per entry.
    pub fn branches(&self) -> &[Branch] {
        &self.branches
    }

    /// Set the mode of every BN of the unit.
    pub fn set_bn_mode(&mut self, mode: BatchNormMode) {
        for b in &mut self.branches {
            b.pre.set_mode(mode);
        }
    }

    /// The unit's output.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_output(x.clone(), train)
    }

    /// The unit's output, taking the input by value ([`Self::forward_owned`]). With no first
    /// pre-activation to return, in inference an identity unit applies each pre-activation
    /// as its convolution reads its input ([`Conv2d::forward_after`]), so the pre-activated
    /// maps are never written.
    pub fn forward_output(&self, x: Tensor, train: bool) -> Result<Tensor> {
        Ok(self.run(x, train, false)?.0)
    }

    /// The unit's output and its first pre-activation `ReLU(BN_branch2a(x))`, which is what the
    /// PyTorch port exposes as the features of the previous level.
    pub fn forward_with_preactivation(&self, x: &Tensor, train: bool) -> Result<(Tensor, Tensor)> {
        self.forward_owned(x.clone(), train)
    }

    /// [`Self::forward_with_preactivation`] taking the input by value: each branch's input is
    /// released as soon as its pre-activation exists, the unit's own input too when the
    /// shortcut is a projection and the caller keeps no other handle (at a 1024x2048 frame a
    /// level-7 map is 0.25-0.5 GB).
    pub fn forward_owned(&self, x: Tensor, train: bool) -> Result<(Tensor, Tensor)> {
        let (out, pre_activated) = self.run(x, train, true)?;
        Ok((out, pre_activated.expect("kept when asked for")))
    }

    /// The output, and the first pre-activation where `keep_first` (or a projection shortcut)
    /// needs it; every other pre-activation in inference is applied as its convolution reads.
    fn run(&self, x: Tensor, train: bool, keep_first: bool) -> Result<(Tensor, Option<Tensor>)> {
        let last = self.branches.len() - 1;
        let identity = self.shortcut.is_none().then(|| x.clone());
        let keep_first = keep_first || self.shortcut.is_some();
        let mut pre_activated = None;
        let mut t = x;
        for (i, branch) in self.branches.iter().enumerate() {
            // The identity shortcut is added as the last branch writes its output.
            let shortcut = identity.as_ref().filter(|_| i == last);
            let pre_activated_alone = train || (i == 0 && keep_first);
            if !pre_activated_alone {
                t = branch.conv.forward_after(&branch.pre, t, shortcut)?;
                continue;
            }
            let mut a = branch.pre.forward_t(&t, train)?;
            drop(t);
            if i == 0 {
                pre_activated = Some(a.clone());
            }
            if i == last && train && self.dropout > 0.0 {
                a = crate::dropout::dropout(&a, self.dropout)?;
            }
            t = match shortcut {
                Some(x) => branch.conv.forward_plus(&a, x)?,
                None => branch.conv.forward(&a)?,
            };
        }
        let out = match &self.shortcut {
            Some(projection) => {
                let a = pre_activated.as_ref();
                projection.forward_add(a.expect("a projection keeps its input"), t)?
            }
            None => t,
        };
        Ok((out, pre_activated))
    }
}

impl candle_nn::ModuleT for ResidualUnit {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        ResidualUnit::forward_t(self, x, train)
    }
}
