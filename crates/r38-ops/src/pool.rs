//! Model A's 3x3 max-pooling, with explicit padding (candle's pooling has none).

use candle_core::{Result, Tensor};

/// Max-pooling with MXNet's floor ("valid") output-size convention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxPool {
    /// Window size.
    pub kernel: usize,
    /// Stride on both axes.
    pub stride: usize,
    /// Padding on every side (padded cells never win).
    pub pad: usize,
    /// Dilation of the pooling window.
    pub dilation: usize,
}

impl MaxPool {
    /// The down-sampling pool: 3x3, stride 2, pad 1 (or 0 in the authors' caffe test style).
    pub fn downsample(pad: usize) -> Self {
        Self {
            kernel: 3,
            stride: 2,
            pad,
            dilation: 1,
        }
    }

    /// The pool of a level that traded its stride for dilation: stride 1, pad = dilation.
    pub fn dilated(dilation: usize) -> Self {
        Self {
            kernel: 3,
            stride: 1,
            pad: dilation,
            dilation,
        }
    }

    /// Output size along one axis.
    pub fn output_size(&self, input: usize) -> Option<usize> {
        let span = (self.kernel - 1) * self.dilation + 1;
        (input + 2 * self.pad)
            .checked_sub(span)
            .map(|r| r / self.stride + 1)
    }

    /// Pool `x` (N, C, H, W); an input smaller than the window is an error, not an empty map.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        if self.output_size(h).is_none() || self.output_size(w).is_none() {
            candle_core::bail!(
                "max-pool {}x{}/{} pad {} needs an input of at least {} pixels, got {h}x{w}",
                self.kernel,
                self.kernel,
                self.stride,
                self.pad,
                (self.kernel - 1) * self.dilation + 1 - 2 * self.pad
            );
        }
        // Padded cells must never win the max: pad with -inf, not zero.
        let x = pad_with(x, self.pad, f32::NEG_INFINITY)?;
        if self.dilation == 1 {
            return x.max_pool2d_with_stride(self.kernel, self.stride);
        }
        if self.stride != 1 {
            candle_core::bail!("dilated max-pooling is only defined at stride 1");
        }
        let (_, _, ph, pw) = x.dims4()?;
        let span = (self.kernel - 1) * self.dilation;
        let (oh, ow) = (ph - span, pw - span);
        let mut out: Option<Tensor> = None;
        for i in 0..self.kernel {
            for j in 0..self.kernel {
                let tap = x
                    .narrow(2, i * self.dilation, oh)?
                    .narrow(3, j * self.dilation, ow)?;
                out = Some(match out {
                    None => tap,
                    Some(acc) => acc.maximum(&tap)?,
                });
            }
        }
        out.expect("kernel >= 1").contiguous()
    }
}

fn pad_with(x: &Tensor, pad: usize, value: f32) -> Result<Tensor> {
    if pad == 0 {
        return Ok(x.clone());
    }
    let (n, c, h, w) = x.dims4()?;
    let fill = |rows: usize, cols: usize| {
        Tensor::full(value, (n, c, rows, cols), x.device())?.to_dtype(x.dtype())
    };
    let side = fill(h, pad)?;
    let x = Tensor::cat(&[&side, x, &side], 3)?;
    let top = fill(pad, w + 2 * pad)?;
    Tensor::cat(&[&top, &x, &top], 2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn padding_never_wins_and_sizes_floor() {
        // All-negative input: zero padding would leak zeros into the border outputs.
        let x = (Tensor::arange(0f32, 25.0, &Device::Cpu).unwrap() - 100.0)
            .unwrap()
            .reshape((1, 1, 5, 5))
            .unwrap();
        let y = MaxPool::downsample(1).forward(&x).unwrap();
        assert_eq!(y.dims4().unwrap(), (1, 1, 3, 3));
        let v: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(v[0], 6.0 - 100.0);
        let y0 = MaxPool::downsample(0).forward(&x).unwrap();
        assert_eq!(y0.dims4().unwrap(), (1, 1, 2, 2));
    }

    #[test]
    fn dilated_pool_keeps_size() {
        let x = Tensor::arange(0f32, 36.0, &Device::Cpu)
            .unwrap()
            .reshape((1, 1, 6, 6))
            .unwrap();
        let y = MaxPool::dilated(2).forward(&x).unwrap();
        assert_eq!(y.dims4().unwrap(), (1, 1, 6, 6));
        let v: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
        // Output (0,0) sees rows/cols {-2, 0, 2}: max is x[2][2] = 14.
        assert_eq!(v[0], 14.0);
    }
}
