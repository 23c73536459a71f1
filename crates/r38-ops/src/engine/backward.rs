//! The gradients of the im2col + GEMM convolution, for training on the CPU.
//!
//! With `col` the column matrix of one image (`K x Ho*Wo`, [`super::kernel`]):
//!
//! - kernel gradient: `dW (Cout x K) = sum over images of dY (Cout x Ho*Wo) * col^T`;
//! - input gradient: `dcol (K x Ho*Wo) = W^T * dY`, then every column entry is added back onto
//!   the input pixel it was copied from (col2im).
//!
//! Both are tiled by bands of output rows like the forward pass, so they hold the same few MiB
//! of columns. They are exact for every input size, stride and dilation: col2im visits
//! precisely the pixels the forward packing read. (candle 0.11 computes the input gradient
//! with a transposed convolution that gets odd sizes wrong and is far slower on the CPU; see
//! [`crate::conv_grad`].)

use gemm::Parallelism;
use rayon::prelude::*;

use super::kernel::{gemm_strided, pack_columns, Geometry, Split, Strided, Tiles};

/// `dw = dL/dW` (`Cout * Cin * k * k`) of `y = conv(x, w)` given `dy = dL/dy`.
pub fn kernel_gradient(g: &Geometry, x: &[f32], dy: &[f32], dw: &mut [f32]) {
    let hw_in = g.height * g.width;
    let hw_out = g.out_height() * g.out_width();
    assert_eq!(x.len(), g.batch * g.in_channels * hw_in);
    assert_eq!(dy.len(), g.batch * g.out_channels * hw_out);
    assert_eq!(dw.len(), g.out_channels * g.depth());
    let images = x
        .chunks(g.in_channels * hw_in)
        .zip(dy.chunks(g.out_channels * hw_out));
    dw.fill(0.0);
    match Split::of(g) {
        Split::Images => {
            // One partial sum per thread, added up at the end.
            let partials = images
                .collect::<Vec<_>>()
                .into_par_iter()
                .fold(
                    || (Tiles::new(g), vec![0f32; dw.len()]),
                    |(mut tiles, mut acc), (xi, dyi)| {
                        tiles.kernel_gradient(xi, dyi, &mut acc, Parallelism::None);
                        (tiles, acc)
                    },
                )
                .map(|(_, acc)| acc)
                .collect::<Vec<_>>();
            for p in partials {
                dw.iter_mut().zip(&p).for_each(|(a, b)| *a += b);
            }
        }
        Split::Inside(par) => {
            let mut tiles = Tiles::new(g);
            for (xi, dyi) in images {
                tiles.kernel_gradient(xi, dyi, dw, par);
            }
        }
    }
}

/// The input gradient of a 3x3 stride-1 "same" convolution is itself such a convolution:
/// `dy` (Cout channels) convolved with the kernel flipped in space and with its channel axes
/// swapped, same dilation and padding. Its geometry, when `g` is one of those convolutions.
pub fn input_gradient_as_convolution(g: &Geometry) -> Option<Geometry> {
    (g.kernel == 3 && g.stride == 1 && g.padding == g.dilation).then_some(Geometry {
        in_channels: g.out_channels,
        out_channels: g.in_channels,
        ..*g
    })
}

/// The kernel of [`input_gradient_as_convolution`]: `w'[ci][co][ky][kx] = w[co][ci][2-ky][2-kx]`.
/// (The engine reads these taps from `w` in place, `winograd::input_gradient`; this copy is
/// the definition it is tested against.)
pub fn flipped_transposed_kernel(g: &Geometry, w: &[f32]) -> Vec<f32> {
    let (co_n, ci_n, kk) = (g.out_channels, g.in_channels, g.kernel * g.kernel);
    assert_eq!(w.len(), co_n * ci_n * kk);
    let mut t = vec![0f32; w.len()];
    for co in 0..co_n {
        for ci in 0..ci_n {
            let src = &w[(co * ci_n + ci) * kk..(co * ci_n + ci + 1) * kk];
            let dst = &mut t[(ci * co_n + co) * kk..(ci * co_n + co + 1) * kk];
            for (d, s) in dst.iter_mut().zip(src.iter().rev()) {
                *d = *s;
            }
        }
    }
    t
}

/// `dx = dL/dx` (`N * Cin * H * W`) of `y = conv(x, w)` given `dy = dL/dy`.
pub fn input_gradient(g: &Geometry, w: &[f32], dy: &[f32], dx: &mut [f32]) {
    let hw_in = g.height * g.width;
    let hw_out = g.out_height() * g.out_width();
    assert_eq!(w.len(), g.out_channels * g.depth());
    assert_eq!(dy.len(), g.batch * g.out_channels * hw_out);
    assert_eq!(dx.len(), g.batch * g.in_channels * hw_in);
    dx.fill(0.0);
    let images = dx
        .chunks_mut(g.in_channels * hw_in)
        .zip(dy.chunks(g.out_channels * hw_out));
    match Split::of(g) {
        Split::Images => images.collect::<Vec<_>>().into_par_iter().for_each_init(
            || Tiles::new(g),
            |tiles, (dxi, dyi)| tiles.input_gradient(w, dyi, dxi, Parallelism::None),
        ),
        Split::Inside(par) => {
            let mut tiles = Tiles::new(g);
            for (dxi, dyi) in images {
                tiles.input_gradient(w, dyi, dxi, par);
            }
        }
    }
}

impl Tiles {
    /// `dw += dY * col(xi)^T` for one image.
    fn kernel_gradient(&mut self, xi: &[f32], dyi: &[f32], dw: &mut [f32], par: Parallelism) {
        let g = self.g;
        let (k, wo) = (g.depth(), g.out_width());
        let hw_out = g.out_height() * wo;
        let parallel_pack = !matches!(par, Parallelism::None);
        for (oy0, rows) in self.bands().collect::<Vec<_>>() {
            let cols = rows * wo;
            let col: &[f32] = if g.pointwise() {
                &xi[oy0 * wo..]
            } else {
                let col = &mut self.col[..k * cols];
                pack_columns(&g, xi, oy0, rows, wo, col, parallel_pack);
                col
            };
            // The pointwise "columns" are the image rows, `hw_out` apart.
            let col_row = if g.pointwise() { hw_out } else { cols };
            // SAFETY: dw is Cout x K row-major; the dY band is Cout x cols with rows `hw_out`
            // apart; col^T is cols x K with element (c, r) at `col[r * col_row + c]`.
            unsafe {
                gemm_strided(
                    (g.out_channels, k, cols),
                    Strided(dw.as_mut_ptr() as *const f32, 1, k),
                    true,
                    Strided(dyi[oy0 * wo..].as_ptr(), 1, hw_out),
                    Strided(col.as_ptr(), col_row, 1),
                    par,
                );
            }
        }
    }

    /// `dxi = col2im(W^T * dY)` for one image (`dxi` zeroed by the caller).
    fn input_gradient(&mut self, w: &[f32], dyi: &[f32], dxi: &mut [f32], par: Parallelism) {
        let g = self.g;
        let (k, wo) = (g.depth(), g.out_width());
        let hw_out = g.out_height() * wo;
        let parallel = !matches!(par, Parallelism::None);
        for (oy0, rows) in self.bands().collect::<Vec<_>>() {
            let cols = rows * wo;
            let (dst, dst_row) = if g.pointwise() {
                (&mut dxi[oy0 * wo..], hw_out)
            } else {
                (&mut self.col[..k * cols], cols)
            };
            // SAFETY: W^T is K x Cout with element (r, o) at `w[o * K + r]`; the dY band is
            // Cout x cols with rows `hw_out` apart; dst is K x cols with rows `dst_row` apart.
            unsafe {
                gemm_strided(
                    (k, cols, g.out_channels),
                    Strided(dst.as_mut_ptr() as *const f32, 1, dst_row),
                    false,
                    Strided(w.as_ptr(), k, 1),
                    Strided(dyi[oy0 * wo..].as_ptr(), 1, hw_out),
                    par,
                );
            }
            if !g.pointwise() {
                scatter_columns(&g, &self.col[..k * cols], oy0, rows, dxi, parallel);
            }
        }
    }
}

/// col2im: add `col` (K x rows*wo, for output rows `oy0..oy0+rows`) back onto the input
/// pixels [`pack_columns`] read them from. Each input channel is one task, so no two threads
/// write the same pixel.
fn scatter_columns(
    g: &Geometry,
    col: &[f32],
    oy0: usize,
    rows: usize,
    dx: &mut [f32],
    parallel: bool,
) {
    let kk = g.kernel * g.kernel;
    let wo = g.out_width();
    let cols = rows * wo;
    let (h, w) = (g.height as isize, g.width as isize);
    let (s, d, p) = (g.stride as isize, g.dilation as isize, g.padding as isize);
    let add_channel = |(ci, plane): (usize, &mut [f32])| {
        for tap in 0..kk {
            let ky = (tap / g.kernel) as isize;
            let kx = (tap % g.kernel) as isize;
            let src = &col[(ci * kk + tap) * cols..(ci * kk + tap + 1) * cols];
            let xoff = kx * d - p;
            for (row, band) in src.chunks(wo).enumerate() {
                let iy = (oy0 + row) as isize * s - p + ky * d;
                if iy < 0 || iy >= h {
                    continue;
                }
                let line = &mut plane[iy as usize * g.width..(iy as usize + 1) * g.width];
                // Output columns whose input column `ox * s + xoff` lies inside [0, w).
                let lo = if xoff >= 0 { 0 } else { (-xoff + s - 1) / s } as usize;
                let hi = if w - xoff <= 0 {
                    0
                } else {
                    (w - xoff + s - 1) / s
                } as usize;
                let (lo, hi) = (lo.min(wo), hi.clamp(lo.min(wo), wo));
                if hi == lo {
                    continue;
                }
                if s == 1 {
                    let start = (lo as isize + xoff) as usize;
                    let dst = &mut line[start..start + (hi - lo)];
                    dst.iter_mut().zip(&band[lo..hi]).for_each(|(a, b)| *a += b);
                } else {
                    for (ox, &v) in band.iter().enumerate().take(hi).skip(lo) {
                        line[(ox as isize * s + xoff) as usize] += v;
                    }
                }
            }
        }
    };
    let planes = dx.chunks_mut(g.height * g.width).enumerate();
    if parallel {
        planes
            .collect::<Vec<_>>()
            .into_par_iter()
            .for_each(add_channel);
    } else {
        planes.for_each(add_channel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flipped_transposed_kernel_flips_taps_and_swaps_channels() {
        for (ci_n, co_n) in [(3, 5), (37, 6), (16, 1)] {
            let g = Geometry {
                batch: 1,
                in_channels: ci_n,
                height: 4,
                width: 4,
                out_channels: co_n,
                kernel: 3,
                stride: 1,
                dilation: 1,
                padding: 1,
            };
            let w: Vec<f32> = (0..co_n * ci_n * 9).map(|i| i as f32).collect();
            let t = flipped_transposed_kernel(&g, &w);
            for co in 0..co_n {
                for ci in 0..ci_n {
                    for k in 0..9 {
                        assert_eq!(t[(ci * co_n + co) * 9 + k], w[(co * ci_n + ci) * 9 + 8 - k]);
                    }
                }
            }
        }
    }
}
