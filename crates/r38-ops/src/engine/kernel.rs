//! The CPU convolution kernel: tiled im2col + one GEMM per tile, written straight into NCHW.
//!
//! For every image of the batch the output is the matrix `Y (Cout x Ho*Wo) = W (Cout x K) *
//! col (K x Ho*Wo)` with `K = Cin * k * k`. Instead of materialising the whole `col` matrix
//! (candle builds `(N, Ho*Wo, K)` for the whole batch, then transposes the result back to
//! NCHW), the columns are built for a band of output rows at a time, so the buffer stays at a
//! few MiB and in cache, and the GEMM writes its tile directly into the NCHW output.
//!
//! A 1x1 stride-1 convolution needs no packing at all: the input image *is* the column matrix.
//! The bias, when there is one, is written into the output first and the GEMM accumulates onto
//! it.

use super::output::Output;
use gemm::Parallelism;
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Geometry of one convolution, NCHW input, OIHW weight, one padding value for both axes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Images in the batch (N).
    pub batch: usize,
    /// Input channels (Cin).
    pub in_channels: usize,
    /// Input height (H).
    pub height: usize,
    /// Input width (W).
    pub width: usize,
    /// Output channels (Cout).
    pub out_channels: usize,
    /// Square kernel size (k).
    pub kernel: usize,
    /// Stride, both axes.
    pub stride: usize,
    /// Dilation, both axes (1 for 1x1 kernels).
    pub dilation: usize,
    /// Zero padding on every side.
    pub padding: usize,
}

impl Geometry {
    fn out_dim(&self, n: usize) -> usize {
        let span = self.dilation * (self.kernel - 1) + 1;
        (n + 2 * self.padding).saturating_sub(span) / self.stride + 1
    }

    /// Output height.
    pub fn out_height(&self) -> usize {
        self.out_dim(self.height)
    }

    /// Output width.
    pub fn out_width(&self) -> usize {
        self.out_dim(self.width)
    }

    /// Reduction length of the GEMM.
    pub fn depth(&self) -> usize {
        self.in_channels * self.kernel * self.kernel
    }

    /// Multiply-accumulates of the whole convolution.
    pub fn macs(&self) -> u64 {
        (self.batch * self.out_channels * self.depth() * self.out_height() * self.out_width())
            as u64
    }

    /// A 1x1 stride-1 unpadded convolution: the input image is its own column matrix.
    pub fn pointwise(&self) -> bool {
        self.kernel == 1 && self.stride == 1 && self.padding == 0
    }

    /// Positive sizes, and the padded input at least as large as the kernel's reach.
    pub fn valid(&self) -> bool {
        self.kernel >= 1
            && self.stride >= 1
            && self.dilation >= 1
            && self.height + 2 * self.padding > self.dilation * (self.kernel - 1)
            && self.width + 2 * self.padding > self.dilation * (self.kernel - 1)
    }
}

/// Target size of one column tile, in floats (16 MiB), and the fewest columns a tile gets.
pub(crate) const TILE_FLOATS: usize = 1 << 22;
pub(crate) const MIN_TILE_COLS: usize = 1024;

/// `out = conv(x, w) (+ bias)`, Winograd where it applies. `x`: `N*Cin*H*W`, `w`: `Cout*Cin*k*k`, `out`: `N*Cout*Ho*Wo`.
pub fn conv2d(g: &Geometry, x: &[f32], w: &[f32], bias: Option<&[f32]>, out: &mut [f32]) {
    if super::winograd::applies(g) {
        super::winograd::conv2d(g, x, w, bias, out)
    } else {
        im2col_gemm(g, x, w, bias, out)
    }
}

/// The im2col + GEMM path for every geometry (see the module documentation).
pub fn im2col_gemm(g: &Geometry, x: &[f32], w: &[f32], bias: Option<&[f32]>, out: &mut [f32]) {
    im2col_gemm_into(g, x, w, bias, Output::over(out))
}

/// [`im2col_gemm`] into an [`Output`], its residual added in a pass of its own.
pub(crate) fn im2col_gemm_into(
    g: &Geometry,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    out: Output,
) {
    let hw_out = g.out_height() * g.out_width();
    assert_eq!(out.y.len(), g.batch * g.out_channels * hw_out);
    if let Some(b) = bias {
        assert_eq!(b.len(), g.out_channels);
        for img in out.y.chunks_mut(g.out_channels * hw_out) {
            for (row, &v) in img.chunks_mut(hw_out).zip(b) {
                row.fill(MaybeUninit::new(v));
            }
        }
    }
    // SAFETY: with a bias every element was just written, and the GEMMs read `y` only then.
    unsafe { gemm_into(g, x, w, bias.is_some(), out.y) };
    // SAFETY: the GEMMs wrote every element.
    unsafe { out.add_residual_after() }
}

/// `out += conv(x, w)` by im2col + GEMM: the GEMMs accumulate onto what `out` holds.
pub fn im2col_gemm_accumulate(g: &Geometry, x: &[f32], w: &[f32], out: &mut [f32]) {
    // SAFETY: `out` is initialised.
    unsafe { gemm_into(g, x, w, true, Output::over(out).y) }
}

/// `out (+)= conv(x, w)`, accumulating when `read_dst`, writing every element of `out`.
///
/// # Safety
/// Where `read_dst`, every element of `out` must be initialised.
unsafe fn gemm_into(
    g: &Geometry,
    x: &[f32],
    w: &[f32],
    read_dst: bool,
    out: &mut [MaybeUninit<f32>],
) {
    let hw_out = g.out_height() * g.out_width();
    let hw_in = g.height * g.width;
    assert_eq!(x.len(), g.batch * g.in_channels * hw_in);
    assert_eq!(w.len(), g.out_channels * g.depth());
    assert_eq!(out.len(), g.batch * g.out_channels * hw_out);
    let images = x
        .chunks(g.in_channels * hw_in)
        .zip(out.chunks_mut(g.out_channels * hw_out));
    match Split::of(g) {
        Split::Images => images.collect::<Vec<_>>().into_par_iter().for_each_init(
            || Tiles::new(g),
            |tiles, (xi, yi)| tiles.forward(xi, w, yi, read_dst, Parallelism::None),
        ),
        Split::Inside(par) => {
            let mut tiles = Tiles::new(g);
            for (xi, yi) in images {
                tiles.forward(xi, w, yi, read_dst, par);
            }
        }
    }
}

/// How the threads share a batched convolution.
#[derive(Clone, Copy)]
pub(crate) enum Split {
    /// One image per thread at a time, each GEMM single-threaded: small maps in a batch
    /// (training on 28x28 crops), where a GEMM is too small to split.
    Images,
    /// The images in turn, every GEMM and packing split across the threads.
    Inside(Parallelism),
}

impl Split {
    pub(crate) fn of(g: &Geometry) -> Split {
        let threads = rayon::current_num_threads().max(1);
        if threads == 1 {
            Split::Inside(Parallelism::None)
        } else if g.batch >= threads {
            Split::Images
        } else {
            Split::Inside(Parallelism::Rayon(threads))
        }
    }
}

/// Output-row tiles of one image and the column buffer they are packed into.
pub(crate) struct Tiles {
    pub(crate) g: Geometry,
    pub(crate) rows_per_tile: usize,
    pub(crate) col: Vec<f32>,
}

impl Tiles {
    pub(crate) fn new(g: &Geometry) -> Self {
        let k = g.depth();
        let (ho, wo) = (g.out_height(), g.out_width());
        let tile_cols = (TILE_FLOATS / k.max(1)).max(MIN_TILE_COLS);
        let rows_per_tile = (tile_cols / wo.max(1)).clamp(1, ho.max(1));
        let col = if g.pointwise() {
            Vec::new()
        } else {
            vec![0f32; k * rows_per_tile * wo]
        };
        Tiles {
            g: *g,
            rows_per_tile,
            col,
        }
    }

    /// Output rows `oy0..oy0+rows` of every tile.
    pub(crate) fn bands(&self) -> impl Iterator<Item = (usize, usize)> {
        let (ho, step) = (self.g.out_height(), self.rows_per_tile);
        (0..ho)
            .step_by(step)
            .map(move |oy0| (oy0, step.min(ho - oy0)))
    }

    /// `yi (+)= W * col(xi)` for one image.
    fn forward(
        &mut self,
        xi: &[f32],
        w: &[f32],
        yi: &mut [MaybeUninit<f32>],
        read_dst: bool,
        par: Parallelism,
    ) {
        let g = self.g;
        let (k, wo) = (g.depth(), g.out_width());
        let hw_out = g.out_height() * wo;
        if g.pointwise() {
            // SAFETY: Y (Cout x HW), W (Cout x Cin), X (Cin x HW), row-major, sizes asserted
            // by the caller.
            unsafe {
                product(
                    (g.out_channels, hw_out, g.in_channels),
                    (yi.as_mut_ptr().cast(), hw_out, read_dst),
                    w.as_ptr(),
                    (xi.as_ptr(), hw_out),
                    par,
                )
            };
            return;
        }
        let parallel_pack = !matches!(par, Parallelism::None);
        for (oy0, rows) in self.bands().collect::<Vec<_>>() {
            let cols = rows * wo;
            let col = &mut self.col[..k * cols];
            pack_columns(&g, xi, oy0, rows, wo, col, parallel_pack);
            let dst = &mut yi[oy0 * wo..];
            // SAFETY: dst rows start at `c * hw_out` and hold `cols` valid floats each
            // (`oy0 * wo + cols <= hw_out`); col is K x cols row-major; w is Cout x K.
            unsafe {
                product(
                    (g.out_channels, cols, k),
                    (dst.as_mut_ptr().cast(), hw_out, read_dst),
                    w.as_ptr(),
                    (col.as_ptr(), cols),
                    par,
                )
            };
        }
    }
}

/// Products at most this wide (a 14x14 map) are split over output channels across the
/// threads; wider ones over parts of at most [`PART_COLUMNS`] columns.
const THIN_COLUMNS: usize = 256;
/// Most columns per part of a wide product: 21 register blocks. (63x63's 2048 -> 4096 on two
/// threads: 326-327 ms in 4 parts of 1008, 332-334 in 9 of 480, 396-403 in 3 of 1488.)
const PART_COLUMNS: usize = 1008;

/// `dst (+)= w x` (accumulating where `accumulate`): `w` is `rows x depth` (row-major), `x` is
/// `depth x cols` (rows `x_row` floats apart), `dst` is `rows x cols` (rows `dst_row` apart).
/// In `engine::product`'s register blocks where the CPU has AVX-512, else the `gemm` crate's.
///
/// # Safety
/// Every element the strides address must be in bounds, `dst`'s writable and not aliased by
/// anything else running.
unsafe fn product(
    (rows, cols, depth): (usize, usize, usize),
    (dst, dst_row, accumulate): (*mut f32, usize, bool),
    w: *const f32,
    (x, x_row): (*const f32, usize),
    par: Parallelism,
) {
    #[cfg(target_arch = "x86_64")]
    if super::product::available() {
        let threads = match par {
            Parallelism::Rayon(n) => n.max(1),
            _ => 1,
        };
        if rows == 0 || cols == 0 {
            return;
        }
        let (dst, w, x) = (dst as usize, w as usize, x as usize);
        // Parts: a few per thread, of whole register blocks of rows (thin products) or of
        // columns (wide ones).
        let (rows_per, cols_per) = if cols <= THIN_COLUMNS {
            (rows.div_ceil(4 * threads).next_multiple_of(8), cols)
        } else {
            // As many parts as a multiple of the threads, for the balance.
            let parts = threads * cols.div_ceil(threads * PART_COLUMNS);
            (rows, cols.div_ceil(parts).next_multiple_of(48))
        };
        let parts: Vec<(usize, usize)> = (0..rows)
            .step_by(rows_per)
            .flat_map(|r0| (0..cols).step_by(cols_per).map(move |c0| (r0, c0)))
            .collect();
        let run = |&(r0, c0): &(usize, usize)| {
            let (r, c) = (rows_per.min(rows - r0), cols_per.min(cols - c0));
            // SAFETY: rows r0..r0 + r of dst and w and columns c0..c0 + c of dst and x are
            // inside the caller's bounds; each part writes its own entries of dst.
            unsafe {
                super::product::multiply(
                    (r, c, depth),
                    (
                        (dst as *mut f32).add(r0 * dst_row + c0),
                        dst_row,
                        accumulate,
                    ),
                    ((w as *const f32).add(r0 * depth), depth),
                    ((x as *const f32).add(c0), x_row),
                )
            }
        };
        if threads == 1 {
            parts.iter().for_each(run);
        } else {
            parts.par_iter().for_each(run);
        }
        return;
    }
    gemm_strided(
        (rows, cols, depth),
        Strided(dst as *const f32, 1, dst_row),
        accumulate,
        Strided(w, 1, depth),
        Strided(x, 1, x_row),
        par,
    );
}

/// A strided matrix: start, column stride, row stride (in floats).
pub(crate) struct Strided(pub(crate) *const f32, pub(crate) usize, pub(crate) usize);

/// `dst (m x n) (+)= lhs (m x k) * rhs (k x n)` by the `gemm` crate, accumulating when
/// `accumulate`, on the threads `par` gives.
///
/// # Safety
/// Every element the strides address must be in bounds, `dst`'s writable and not aliased by
/// anything else running.
pub(crate) unsafe fn gemm_strided(
    (m, n, k): (usize, usize, usize),
    dst: Strided,
    accumulate: bool,
    lhs: Strided,
    rhs: Strided,
    par: Parallelism,
) {
    gemm::gemm(
        m,
        n,
        k,
        dst.0 as *mut f32,
        dst.1 as isize,
        dst.2 as isize,
        accumulate,
        lhs.0,
        lhs.1 as isize,
        lhs.2 as isize,
        rhs.0,
        rhs.1 as isize,
        rhs.2 as isize,
        if accumulate { 1.0 } else { 0.0 },
        1.0,
        false,
        false,
        false,
        par,
    )
}

/// `out[i] = src[2 i]`: the columns a stride-2 convolution reads from one input row
/// (de-interleaved 16 at a time in AVX-512 where the CPU has it).
fn every_other(src: &[f32], out: &mut [f32]) {
    assert!(out.is_empty() || src.len() > 2 * (out.len() - 1));
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F; the loads stay inside `src`, the stores inside `out`.
        done = unsafe { every_other_avx512(src, out) };
    }
    for (o, s) in out[done..]
        .iter_mut()
        .zip(src[2 * done..].iter().step_by(2))
    {
        *o = *s;
    }
}

/// [`every_other`] for whole registers while 32 floats of `src` remain; returns how many
/// outputs it wrote.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn every_other_avx512(src: &[f32], out: &mut [f32]) -> usize {
    use std::arch::x86_64::*;
    let even = [0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30];
    let even = _mm512_loadu_epi32(even.as_ptr());
    let mut i = 0;
    while i + 16 <= out.len() && 2 * i + 32 <= src.len() {
        let a = _mm512_loadu_ps(src.as_ptr().add(2 * i));
        let b = _mm512_loadu_ps(src.as_ptr().add(2 * i + 16));
        _mm512_storeu_ps(out.as_mut_ptr().add(i), _mm512_permutex2var_ps(a, even, b));
        i += 16;
    }
    i
}

/// Fill `col` (K x rows*wo, row-major) for output rows `oy0..oy0+rows` of one image.
pub(crate) fn pack_columns(
    g: &Geometry,
    x: &[f32],
    oy0: usize,
    rows: usize,
    wo: usize,
    col: &mut [f32],
    parallel: bool,
) {
    let kk = g.kernel * g.kernel;
    let cols = rows * wo;
    let (h, w) = (g.height as isize, g.width as isize);
    let (s, d, p) = (g.stride as isize, g.dilation as isize, g.padding as isize);
    // Output x range whose input column `ox*s - p + kx*d` lies inside [0, w).
    let inside = |off: isize| -> (usize, usize) {
        // smallest ox with ox*s + off >= 0
        let lo = if off >= 0 { 0 } else { ((-off) + s - 1) / s };
        // largest ox (exclusive) with ox*s + off < w
        let hi = if w - off <= 0 {
            0
        } else {
            ((w - off) + s - 1) / s
        };
        let lo = (lo as usize).min(wo);
        let hi = (hi as usize).clamp(lo, wo);
        (lo, hi)
    };
    let fill = |(r, dst): (usize, &mut [f32])| {
        let ci = r / kk;
        let ky = ((r % kk) / g.kernel) as isize;
        let kx = (r % g.kernel) as isize;
        let plane = &x[ci * g.height * g.width..(ci + 1) * g.height * g.width];
        let xoff = kx * d - p;
        let (lo, hi) = inside(xoff);
        for (row, out) in dst.chunks_mut(wo).enumerate() {
            let iy = (oy0 + row) as isize * s - p + ky * d;
            if iy < 0 || iy >= h {
                out.fill(0.0);
                continue;
            }
            let src = &plane[iy as usize * g.width..(iy as usize + 1) * g.width];
            out[..lo].fill(0.0);
            out[hi..].fill(0.0);
            if hi == lo {
                continue;
            }
            if s == 1 {
                let start = (lo as isize + xoff) as usize;
                out[lo..hi].copy_from_slice(&src[start..start + (hi - lo)]);
            } else if s == 2 {
                let start = (lo as isize * 2 + xoff) as usize;
                every_other(&src[start..], &mut out[lo..hi]);
            } else {
                for (ox, o) in out[lo..hi].iter_mut().enumerate() {
                    *o = src[((ox + lo) as isize * s + xoff) as usize];
                }
            }
        }
    };
    if parallel {
        col.par_chunks_mut(cols).enumerate().for_each(fill);
    } else {
        col.chunks_mut(cols).enumerate().for_each(fill);
    }
}
