//! A 2-D convolution whose backward pass is exact for every input size.
//!
//! # The candle 0.11.1 bug
//!
//! candle's autograd computes the input gradient of `conv2d` as a transposed convolution of
//! the output gradient. A strided convolution maps several input sizes onto one output size,
//! so the transposed convolution needs an `output_padding` to give back the input size:
//! `out_padding = H - ((h_out - 1) * stride + dilation * (k - 1) + 1 - 2 * padding)`.
//! candle derives that value **from the height only** and uses it for both axes
//! (`candle-core/src/backprop.rs`, `Op::Conv2D`). When `H` and `W` leave different remainders
//! (for a 3x3/2 pad-1 convolution: one even and one odd, e.g. 12x9), the input gradient has the
//! wrong width and `backward()` fails with a shape mismatch when it is added to the gradient
//! of the input (`shape mismatch in add, lhs: [1, 3, 12, 9], rhs: [1, 3, 12, 10]`). When
//! both remainders agree candle is exact. The kernel gradient is always right.
//!
//! # The workaround
//!
//! The last `out_padding` rows (columns) of the zero-padded input are never read by any
//! output window. [`conv2d_exact`] therefore pads the input explicitly with zeros, drops those
//! unread trailing rows and columns (they would only be zeros or values that no output sees),
//! and runs the convolution with padding 0 on a map whose size fits the output exactly, so
//! that candle's `out_padding` is 0 on both axes. The forward values are bit-identical to
//! `x.conv2d(w, padding, stride, dilation, 1)`; the gradients flow back through candle's
//! `pad_with_zeros`/`narrow`, whose backward passes are exact (a slice and a zero-pad).
//! The cost is one copy of the input, paid only when the remainders differ.

use candle_core::{Result, Tensor};

/// Output size of a convolution along one axis.
pub fn conv_output_size(
    input: usize,
    kernel: usize,
    padding: usize,
    stride: usize,
    dilation: usize,
) -> usize {
    (input + 2 * padding - dilation * (kernel - 1) - 1) / stride + 1
}

/// The `output_padding` a transposed convolution needs to give back `input` along one axis:
/// the number of trailing rows of the zero-padded input that no output window reads.
pub fn unread_trailing(
    input: usize,
    kernel: usize,
    padding: usize,
    stride: usize,
    dilation: usize,
) -> usize {
    let out = conv_output_size(input, kernel, padding, stride, dilation);
    input + 2 * padding - ((out - 1) * stride + dilation * (kernel - 1) + 1)
}

/// Whether candle 0.11.1's `conv2d` backward fails (or would be wrong) for this input:
/// true when the two axes need different `output_padding`.
pub fn candle_backward_mismatch(
    height: usize,
    width: usize,
    kernel: (usize, usize),
    padding: usize,
    stride: usize,
    dilation: usize,
) -> bool {
    unread_trailing(height, kernel.0, padding, stride, dilation)
        != unread_trailing(width, kernel.1, padding, stride, dilation)
}

/// `x.conv2d(kernel, padding, stride, dilation, groups)` with a backward pass that is exact
/// for every `(H, W)`.
///
/// Same arguments and same forward values as [`Tensor::conv2d`]. Where candle's own backward
/// is correct (both axes need the same `output_padding`) this is exactly `Tensor::conv2d`;
/// otherwise the input is zero-padded explicitly, cropped to the rows and columns the
/// windows read, and convolved with padding 0 (see the module documentation).
pub fn conv2d_exact(
    x: &Tensor,
    kernel: &Tensor,
    padding: usize,
    stride: usize,
    dilation: usize,
    groups: usize,
) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let (_, _, kh, kw) = kernel.dims4()?;
    if !candle_backward_mismatch(h, w, (kh, kw), padding, stride, dilation) {
        return x.conv2d(kernel, padding, stride, dilation, groups);
    }
    let xp = if padding > 0 {
        x.pad_with_zeros(2, padding, padding)?
            .pad_with_zeros(3, padding, padding)?
    } else {
        x.clone()
    };
    let uh = unread_trailing(h, kh, padding, stride, dilation);
    let uw = unread_trailing(w, kw, padding, stride, dilation);
    let xp = xp
        .narrow(2, 0, h + 2 * padding - uh)?
        .narrow(3, 0, w + 2 * padding - uw)?;
    xp.conv2d(kernel, 0, stride, dilation, groups)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unread_rows_match_the_transposed_conv_formula() {
        // 3x3/2 pad 1: even sizes leave one unread row, odd sizes none.
        assert_eq!(unread_trailing(12, 3, 1, 2, 1), 1);
        assert_eq!(unread_trailing(9, 3, 1, 2, 1), 0);
        assert!(candle_backward_mismatch(12, 9, (3, 3), 1, 2, 1));
        assert!(!candle_backward_mismatch(12, 10, (3, 3), 1, 2, 1));
        // 1x1/2 pad 0 shortcut.
        assert_eq!(unread_trailing(14, 1, 0, 2, 1), 1);
        assert_eq!(unread_trailing(11, 1, 0, 2, 1), 0);
        // stride 1 never mismatches
        assert!(!candle_backward_mismatch(12, 9, (3, 3), 12, 1, 12));
        assert_eq!(conv_output_size(14, 3, 1, 2, 1), 7);
        assert_eq!(conv_output_size(11, 3, 1, 2, 1), 6);
    }
}
