//! Convolution with the authors' "same" padding rule, dilation included.

use crate::engine::KeptKernels;
use crate::pre_activation::PreActivation;
use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;
use std::sync::Arc;

/// Padding that keeps the spatial size at stride 1: `((k - 1) * d + 1) / 2`.
pub fn same_padding(kernel: usize, dilation: usize) -> usize {
    // Same as the authors' `((k - 1) * d + 1) // 2`.
    ((kernel - 1) * dilation).div_ceil(2)
}

/// Shape and placement of one convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvSpec {
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Square kernel size.
    pub kernel: usize,
    /// Stride on both axes.
    pub stride: usize,
    /// Dilation on both axes (ignored for 1x1 kernels).
    pub dilation: usize,
    /// Whether the conv has a bias (only the head convolutions do).
    pub bias: bool,
}

impl ConvSpec {
    /// A bias-free convolution, as every convolution of the backbone is.
    pub fn new(in_channels: usize, out_channels: usize, kernel: usize) -> Self {
        Self {
            in_channels,
            out_channels,
            kernel,
            stride: 1,
            dilation: 1,
            bias: false,
        }
    }

    /// With this stride.
    pub fn stride(mut self, stride: usize) -> Self {
        self.stride = stride;
        self
    }

    /// With this dilation.
    pub fn dilation(mut self, dilation: usize) -> Self {
        self.dilation = dilation;
        self
    }

    /// With a bias.
    pub fn with_bias(mut self) -> Self {
        self.bias = true;
        self
    }

    /// A 1x1 kernel has nothing to dilate; the authors force its dilation to 1.
    pub fn effective_dilation(&self) -> usize {
        if self.kernel == 1 {
            1
        } else {
            self.dilation
        }
    }

    /// The "same" padding for this kernel and dilation.
    pub fn padding(&self) -> usize {
        same_padding(self.kernel, self.effective_dilation())
    }
}

/// A 2-D convolution named like the checkpoint: `<name>_weight` and, with a bias, `<name>_bias`.
#[derive(Debug, Clone)]
pub struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    spec: ConvSpec,
    /// The weight's Winograd transforms, made and kept inside
    /// [`crate::engine::with_kept_kernels`] (shared by clones, which share the weight).
    kept: Arc<KeptKernels>,
}

impl Conv2d {
    /// Read `<name>_weight` (and `<name>_bias`) through `vb`.
    pub fn new(spec: ConvSpec, vb: &VarBuilder, name: &str) -> Result<Self> {
        let shape = (
            spec.out_channels,
            spec.in_channels,
            spec.kernel,
            spec.kernel,
        );
        let fan_in = spec.in_channels * spec.kernel * spec.kernel;
        // MSRA initialisation for new layers, as the authors' recipe uses.
        let init = candle_nn::Init::Randn {
            mean: 0.0,
            stdev: (2.0 / fan_in as f64).sqrt(),
        };
        let weight = vb.get_with_hints(shape, &format!("{name}_weight"), init)?;
        let bias = if spec.bias {
            Some(vb.get_with_hints(
                spec.out_channels,
                &format!("{name}_bias"),
                candle_nn::Init::Const(0.0),
            )?)
        } else {
            None
        };
        Ok(Self {
            weight,
            bias,
            spec,
            kept: Arc::default(),
        })
    }

    /// Shape and placement.
    pub fn spec(&self) -> &ConvSpec {
        &self.spec
    }

    /// The kernel, (out, in, k, k).
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The bias, if the conv has one.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// The transformed kernels kept for this layer's weight (empty until it runs inside
    /// [`crate::engine::with_kept_kernels`]).
    pub fn kept_kernels(&self) -> &KeptKernels {
        &self.kept
    }

    /// `residual + self(x)`, accumulated into `residual`'s storage on the fast path (a
    /// projection shortcut adding onto its unit's fresh branch output; see
    /// [`crate::engine::conv2d_add`]).
    pub fn forward_add(&self, x: &Tensor, residual: Tensor) -> Result<Tensor> {
        match &self.bias {
            Some(_) => self.forward(x)? + residual,
            None => crate::engine::conv2d_add(x, &self.weight, &self.spec, residual),
        }
    }
}

impl Conv2d {
    /// `self(ReLU(BN(x)))` in inference, plus `shortcut` if given: on the fast engine's
    /// Winograd path the pre-activation is applied as the input transform reads `x`, and the
    /// pre-activated map is never written ([`crate::engine::conv2d_after`]); elsewhere it is
    /// `pre` then this convolution, the same bits, `x` released once pre-activated.
    pub fn forward_after(
        &self,
        pre: &PreActivation,
        x: Tensor,
        shortcut: Option<&Tensor>,
    ) -> Result<Tensor> {
        if self.bias.is_none() {
            if let Some(folded) = pre.inference_scale_shift(&x)? {
                let kept = crate::engine::keeps_kernels().then_some(&*self.kept);
                let (w, spec) = (&self.weight, &self.spec);
                if let Some(y) = crate::engine::conv2d_after(&x, folded, w, spec, shortcut, kept)? {
                    return Ok(y);
                }
            }
        }
        let a = pre.forward_t(&x, false)?;
        drop(x);
        match shortcut {
            Some(s) => self.forward_plus(&a, s),
            None => self.forward(&a),
        }
    }

    /// `shortcut + self(x)` in a fresh tensor, the shortcut added as each output is written on
    /// the fast path (a unit's identity shortcut onto its last branch; see
    /// [`crate::engine::conv2d_plus`]).
    pub fn forward_plus(&self, x: &Tensor, shortcut: &Tensor) -> Result<Tensor> {
        match &self.bias {
            Some(_) => shortcut + self.forward(x)?,
            None => {
                let kept = crate::engine::keeps_kernels().then_some(&*self.kept);
                crate::engine::conv2d_plus(x, &self.weight, &self.spec, shortcut, kept)
            }
        }
    }
}

impl Module for Conv2d {
    /// The fast CPU engine for inference, candle's exact path for training and other devices
    /// (see [`crate::engine`]; `engine::with_engine(Engine::Exact, ..)` selects the exact path).
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if crate::engine::keeps_kernels() {
            crate::engine::conv2d_kept(x, &self.weight, self.bias.as_ref(), &self.spec, &self.kept)
        } else {
            crate::engine::conv2d(x, &self.weight, self.bias.as_ref(), &self.spec)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_padding_matches_the_authors_rule() {
        assert_eq!(same_padding(3, 1), 1);
        assert_eq!(same_padding(3, 2), 2);
        assert_eq!(same_padding(3, 4), 4);
        assert_eq!(same_padding(3, 12), 12);
        assert_eq!(same_padding(1, 1), 0);
        assert_eq!(ConvSpec::new(8, 8, 1).dilation(4).padding(), 0);
    }
}
