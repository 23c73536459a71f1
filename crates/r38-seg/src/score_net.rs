//! The network as the test protocol sees it: a fully convolutional map from an image canvas to
//! class scores at a fixed output stride.
//!
//! [`ScoreNet`] is implemented for [`SegmentationNet`]; tests and tools can implement it for
//! anything else (tiny synthetic nets, ensembles, other backbones). Model averaging is
//! [`mean_probabilities`] over a slice `&[&dyn ScoreNet]`.

#![warn(missing_docs)]

use candle_core::{DType, Device, Tensor};

use crate::error::{SegError, SegResult};
use crate::network::SegmentationNet;

/// A fully convolutional segmentation network: `(N, 3, H, W)` in, `(N, C, H / s, W / s)` out,
/// for `H` and `W` multiples of the output stride `s`.
pub trait ScoreNet {
    /// Class scores before the softmax, `(N, classes, H / s, W / s)`. `x` is `f32`; an
    /// implementation converts it to its own dtype if it needs to.
    fn scores(&self, x: &Tensor) -> candle_core::Result<Tensor>;

    /// The output stride `s` (8 for the released segmentation models).
    fn output_stride(&self) -> usize;

    /// The number of classes `C`.
    fn classes(&self) -> usize;

    /// The device the network's weights live on; inputs are moved there. CPU by default.
    fn device(&self) -> Device {
        Device::Cpu
    }

    /// Class probabilities, `f32`, `(N, classes, H / s, W / s)`: by default the softmax over
    /// the class axis of [`ScoreNet::scores`] (the authors' network ends in a softmax layer, and
    /// their protocol works with its probabilities).
    fn probabilities(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let scores = self.scores(x)?.to_dtype(DType::F32)?;
        candle_nn::ops::softmax(&scores, 1)
    }
}

impl ScoreNet for SegmentationNet {
    /// [`SegmentationNet::forward_t`] in inference mode (dropout off, frozen BN), with `x`
    /// converted to the dtype and device of the weights.
    fn scores(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let w = self.backbone().stem().weight();
        let x = x.to_device(w.device())?.to_dtype(w.dtype())?;
        self.forward_t(&x, false)
    }

    fn output_stride(&self) -> usize {
        self.backbone().config().output_stride()
    }

    fn classes(&self) -> usize {
        self.head().config().classes
    }

    fn device(&self) -> Device {
        self.backbone().stem().weight().device().clone()
    }
}

/// The classes and output stride shared by `nets`; fails if `nets` is empty or they disagree.
pub fn common_geometry(nets: &[&dyn ScoreNet]) -> SegResult<(usize, usize)> {
    let first = nets
        .first()
        .ok_or_else(|| SegError::Protocol("no network given".into()))?;
    let (classes, stride) = (first.classes(), first.output_stride());
    if classes == 0 || stride == 0 {
        return Err(SegError::Protocol(format!(
            "a network reports {classes} classes and output stride {stride}"
        )));
    }
    for (i, net) in nets.iter().enumerate().skip(1) {
        if net.classes() != classes || net.output_stride() != stride {
            return Err(SegError::Protocol(format!(
                "network {i} has {} classes at output stride {}, network 0 has {classes} at \
                 stride {stride}; model averaging needs the same classes and stride",
                net.classes(),
                net.output_stride()
            )));
        }
    }
    Ok((classes, stride))
}

/// Model averaging: the mean of the class probabilities of `nets` on the canvas `x` of shape
/// `(1, 3, H, W)` (`H`, `W` multiples of the common output stride), returned on the CPU as a
/// row-major `(C, H / s, W / s)` buffer.
///
/// With one network this is its probabilities unchanged (no division). Averaging here, before
/// any resampling, equals averaging the final maps: every later step of the protocol (flip
/// averaging, interleaving, bicubic upsampling, cropping, resizing) is linear, so the two orders
/// differ only by `f32` rounding.
pub fn mean_probabilities(nets: &[&dyn ScoreNet], x: &Tensor) -> SegResult<Vec<f32>> {
    let (classes, stride) = common_geometry(nets)?;
    let dims = x.dims();
    if dims.len() != 4
        || dims[0] != 1
        || !dims[2].is_multiple_of(stride)
        || !dims[3].is_multiple_of(stride)
    {
        return Err(SegError::InvalidArgument(format!(
            "canvas of shape {dims:?}: expected (1, C, H, W) with H and W multiples of {stride}"
        )));
    }
    let expected = [1, classes, dims[2] / stride, dims[3] / stride];
    let mut sum: Option<Vec<f32>> = None;
    for (i, net) in nets.iter().enumerate() {
        let p = net.probabilities(&x.to_device(&net.device())?)?;
        if p.dims() != expected {
            return Err(SegError::InvalidArgument(format!(
                "network {i} gave probabilities of shape {:?} for a canvas of shape {dims:?}; \
                 expected {expected:?}",
                p.dims()
            )));
        }
        let p = p
            .to_dtype(DType::F32)?
            .to_device(&Device::Cpu)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        match &mut sum {
            None => sum = Some(p),
            Some(acc) => acc.iter_mut().zip(&p).for_each(|(a, b)| *a += b),
        }
    }
    let mut out = sum.expect("at least one network");
    if nets.len() > 1 {
        let n = nets.len() as f32;
        out.iter_mut().for_each(|v| *v /= n);
    }
    Ok(out)
}
