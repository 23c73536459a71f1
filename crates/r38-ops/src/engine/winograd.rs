//! Winograd F(2x2, 3x3) and F(4x4, 3x3) for 3x3 stride-1 "same" convolutions, any dilation.
//!
//! An `m x m` block of outputs costs `(m + 2)²` multiplies per (input, output) channel pair
//! instead of `9 m²`: `Y = A^T [ (G g G^T) ⊙ (B^T d B) ] A` (Lavin & Gray 2015), i.e. 16 instead
//! of 36 for m = 2 and 36 instead of 144 for m = 4. The element-wise products over all channel
//! pairs become `(m + 2)²` GEMMs, `M_ξ (Cout x P) = U_ξ (Cout x Cin) * V_ξ (Cin x P)`, one per
//! position ξ of the transformed tile, over a chunk of P tiles at a time (a few MiB).
//!
//! **Dilation.** A stride-1 convolution dilated by `d` touches, for output row `y`, only input
//! rows `y - d, y, y + d`; it is `d²` undilated convolutions on the interleaved sub-images of
//! rows (and columns) `≡ r (mod d)`. The tiles are laid out on those sub-images directly: a tile
//! covers output rows `{y0, y0 + d, ..}` and reads input rows `y0 - d, y0, y0 + d, ..`, so no
//! sub-image is ever copied out.
//!
//! Accuracy: F(2x2)'s transforms only use ±1 and ½ (~1e-6 relative to the direct convolution in
//! fp32); F(4x4)'s use up to 8 and 1/24 (~1e-5). [`block`] picks F(4x4) where it saves work.

use super::kernel::Geometry;
use gemm::Parallelism;
use rayon::prelude::*;

/// Whether [`conv2d`] computes this convolution: 3x3, stride 1, "same" padding (= dilation),
/// enough channels to amortise the transforms, and enough tiles (over the whole batch) for
/// the GEMMs to be efficient; small maps at batch 1 (7x7, 14x14) stay on im2col + GEMM.
pub fn applies(g: &Geometry) -> bool {
    g.kernel == 3
        && g.stride == 1
        && g.padding == g.dilation
        && g.in_channels >= 8
        && tiles(g, 2) >= MIN_TILES
}

/// Fewest tiles (2x2 output blocks, whole batch) for which Winograd is used.
const MIN_TILES: usize = 64;

/// Largest transformed kernel (floats) F(4x4, 3x3) is used for: 128 MiB. The kernels are
/// transformed whole on every call; level 7's 3x3 (1024 -> 2048) would take 300 MB under
/// F(4x4), 134 MB under F(2x2). (Transforming blocks of output channels as the GEMMs go
/// saves that memory but, measured, costs more time than F(4x4) gains there.)
const MAX_WEIGHT_FLOATS_4X4: usize = 1 << 25;

/// Fewest tiles (4x4 output blocks, whole batch) for which F(4x4, 3x3) is used.
const MIN_TILES_4X4: usize = 128;

/// Tiles of `m x m` output blocks over the whole batch.
fn tiles(g: &Geometry, m: usize) -> usize {
    g.batch * origins(g.height, g.dilation, m).len() * origins(g.width, g.dilation, m).len()
}

/// The output block edge [`conv2d`] uses: 4 where its multiplies, padded tiles at the map
/// edges included, are clearly fewer than 2's (its transforms cost about twice as much per
/// tile), there are enough tiles for its 36 GEMMs (measured: at 28x28, batch 1, 49 tiles,
/// F(4x4) is slower than F(2x2)) and its transformed weights, 4x the kernel, stay within
/// [`MAX_WEIGHT_FLOATS_4X4`]; else 2.
pub fn block(g: &Geometry) -> usize {
    if tiles(g, 4) >= MIN_TILES_4X4
        && 36 * tiles(g, 4) * 5 <= 16 * tiles(g, 2) * 4
        && 36 * g.in_channels * g.out_channels <= MAX_WEIGHT_FLOATS_4X4
    {
        4
    } else {
        2
    }
}

/// The transform matrices of F(m x m, 3x3), `A = m + 2`.
trait Variant<const M: usize, const A: usize>: Sync {
    /// `B^T`, A x A: input tile -> transformed tile.
    const BT: [[f32; A]; A];
    /// `G`, A x 3: kernel -> transformed kernel.
    const G: [[f32; 3]; A];
    /// `A^T`, M x A: transformed products -> output block.
    const AT: [[f32; A]; M];
}

/// F(2x2, 3x3), interpolation points 0, ±1.
struct F2;

impl Variant<2, 4> for F2 {
    const BT: [[f32; 4]; 4] = [
        [1.0, 0.0, -1.0, 0.0],
        [0.0, 1.0, 1.0, 0.0],
        [0.0, -1.0, 1.0, 0.0],
        [0.0, 1.0, 0.0, -1.0],
    ];
    const G: [[f32; 3]; 4] = [
        [1.0, 0.0, 0.0],
        [0.5, 0.5, 0.5],
        [0.5, -0.5, 0.5],
        [0.0, 0.0, 1.0],
    ];
    const AT: [[f32; 4]; 2] = [[1.0, 1.0, 1.0, 0.0], [0.0, 1.0, -1.0, -1.0]];
}

/// F(4x4, 3x3), interpolation points 0, ±1, ±2.
struct F4;

impl Variant<4, 6> for F4 {
    const BT: [[f32; 6]; 6] = [
        [4.0, 0.0, -5.0, 0.0, 1.0, 0.0],
        [0.0, -4.0, -4.0, 1.0, 1.0, 0.0],
        [0.0, 4.0, -4.0, -1.0, 1.0, 0.0],
        [0.0, -2.0, -1.0, 2.0, 1.0, 0.0],
        [0.0, 2.0, -1.0, -2.0, 1.0, 0.0],
        [0.0, 4.0, 0.0, -5.0, 0.0, 1.0],
    ];
    const G: [[f32; 3]; 6] = [
        [1.0 / 4.0, 0.0, 0.0],
        [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
        [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
        [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
        [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
        [0.0, 0.0, 1.0],
    ];
    const AT: [[f32; 6]; 4] = [
        [1.0, 1.0, 1.0, 1.0, 1.0, 0.0],
        [0.0, 1.0, -1.0, 2.0, -2.0, 0.0],
        [0.0, 1.0, 1.0, 4.0, 4.0, 0.0],
        [0.0, 1.0, -1.0, 8.0, -8.0, 1.0],
    ];
}

/// `L X L^T` for a constant `L` (R x C) and `X` (C x C); inlined so the zeros fold away.
#[inline(always)]
fn congruence<const R: usize, const C: usize>(
    l: &[[f32; C]; R],
    x: &[[f32; C]; C],
) -> [[f32; R]; R] {
    let mut lx = [[0f32; C]; R];
    for (i, row) in l.iter().enumerate() {
        for (k, &lik) in row.iter().enumerate() {
            if lik != 0.0 {
                for j in 0..C {
                    lx[i][j] += lik * x[k][j];
                }
            }
        }
    }
    let mut y = [[0f32; R]; R];
    for i in 0..R {
        for (j, row) in l.iter().enumerate() {
            let mut acc = 0f32;
            for k in 0..C {
                if row[k] != 0.0 {
                    acc += lx[i][k] * row[k];
                }
            }
            y[i][j] = acc;
        }
    }
    y
}

/// A raw output pointer shared by the workers of the output transform; each worker writes
/// only the planes of its own output channel.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// A raw input pointer shared by the GEMM workers (read only).
#[derive(Clone, Copy)]
struct InPtr(*const f32);
unsafe impl Send for InPtr {}
unsafe impl Sync for InPtr {}

impl InPtr {
    fn get(self) -> *const f32 {
        self.0
    }
}

impl OutPtr {
    /// Through a method, so closures capture the `Sync` wrapper rather than the raw field.
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// Floats per chunk buffer (V or M): 16 MiB.
const CHUNK_FLOATS: usize = 1 << 22;

/// U = G g G^T for every (co, ci), laid out `[ξ][co][ci]`.
fn transform_weights<V: Variant<M, A>, const M: usize, const A: usize>(
    g: &Geometry,
    w: &[f32],
) -> Vec<f32> {
    let (co_n, ci_n) = (g.out_channels, g.in_channels);
    let plane = co_n * ci_n;
    let mut u = vec![0f32; A * A * plane];
    let up = OutPtr(u.as_mut_ptr());
    (0..co_n).into_par_iter().for_each(|co| {
        for ci in 0..ci_n {
            let k = &w[(co * ci_n + ci) * 9..(co * ci_n + ci) * 9 + 9];
            let kernel = [[k[0], k[1], k[2]], [k[3], k[4], k[5]], [k[6], k[7], k[8]]];
            for (r, row) in congruence(&V::G, &kernel).iter().enumerate() {
                for (c, &v) in row.iter().enumerate() {
                    // SAFETY: index (r*A + c, co, ci) is inside `u` and written by this
                    // worker (output channel co) only.
                    unsafe { *up.get().add((r * A + c) * plane + co * ci_n + ci) = v };
                }
            }
        }
    });
    u
}

/// Tile origins along one axis of length `n`: residue classes mod `d`, blocks of `m` outputs.
fn origins(n: usize, d: usize, m: usize) -> Vec<usize> {
    let mut v = Vec::with_capacity(n.div_ceil(m) + d);
    for r in 0..d.min(n) {
        let mut y = r;
        while y < n {
            v.push(y);
            y += m * d;
        }
    }
    v
}

/// The `A` input indices a tile at `origin` reads (None outside the image).
fn taps<const A: usize>(origin: usize, d: usize, n: usize) -> [Option<usize>; A] {
    let mut t = [None; A];
    for (i, slot) in t.iter_mut().enumerate() {
        let v = origin as isize + (i as isize - 1) * d as isize;
        if v >= 0 && (v as usize) < n {
            *slot = Some(v as usize);
        }
    }
    t
}

/// `out = conv(x, w) (+ bias)` for geometries where [`applies`] holds, with the block of
/// [`block`].
pub fn conv2d(g: &Geometry, x: &[f32], w: &[f32], bias: Option<&[f32]>, out: &mut [f32]) {
    conv2d_blocks(g, block(g), x, w, bias, out)
}

/// [`conv2d`] with the output block edge given: 2 (F(2x2, 3x3)) or 4 (F(4x4, 3x3)).
pub fn conv2d_blocks(
    g: &Geometry,
    m: usize,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    match m {
        4 => run::<F4, 4, 6>(g, x, w, bias, out),
        2 => run::<F2, 2, 4>(g, x, w, bias, out),
        _ => panic!("Winograd blocks are 2x2 or 4x4, not {m}x{m}"),
    }
}

fn run<V: Variant<M, A>, const M: usize, const A: usize>(
    g: &Geometry,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    assert!(g.kernel == 3 && g.stride == 1 && g.padding == g.dilation);
    let (h, wd, d) = (g.height, g.width, g.dilation);
    let (ci_n, co_n) = (g.in_channels, g.out_channels);
    let hw = h * wd;
    let xis = A * A;
    assert_eq!(x.len(), g.batch * ci_n * hw);
    assert_eq!(w.len(), co_n * ci_n * 9);
    assert_eq!(out.len(), g.batch * co_n * hw);
    let threads = rayon::current_num_threads().max(1);

    let u = transform_weights::<V, M, A>(g, w);
    let row_o = origins(h, d, M);
    let col_o = origins(wd, d, M);
    let row_taps: Vec<[Option<usize>; A]> = row_o.iter().map(|&o| taps(o, d, h)).collect();
    let col_taps: Vec<[Option<usize>; A]> = col_o.iter().map(|&o| taps(o, d, wd)).collect();
    // Tiles of the whole batch are numbered image by image; a chunk may span images.
    let per_image = row_o.len() * col_o.len();
    let tiles = g.batch * per_image;
    let chunk = (CHUNK_FLOATS / (xis * ci_n.max(co_n))).clamp(32, tiles.max(32));
    let mut v = vec![0f32; ci_n * xis * chunk];
    let mut m = vec![0f32; co_n * xis * chunk];
    let out_ptr = OutPtr(out.as_mut_ptr());
    let mut p0 = 0;
    while p0 < tiles {
        let pc = chunk.min(tiles - p0);
        // 1. V[c][ξ][p] = B^T d B.
        v.par_chunks_mut(xis * chunk)
            .enumerate()
            .for_each(|(c, vc)| {
                for p in 0..pc {
                    let (n, t) = ((p0 + p) / per_image, (p0 + p) % per_image);
                    let plane = &x[(n * ci_n + c) * hw..(n * ci_n + c + 1) * hw];
                    let (rt, ct) = (&row_taps[t / col_o.len()], &col_taps[t % col_o.len()]);
                    let mut dd = [[0f32; A]; A];
                    for (ddr, ry) in dd.iter_mut().zip(rt) {
                        if let Some(ry) = ry {
                            let row = &plane[ry * wd..ry * wd + wd];
                            for (val, cx) in ddr.iter_mut().zip(ct) {
                                if let Some(cx) = cx {
                                    *val = row[*cx];
                                }
                            }
                        }
                    }
                    let tv = congruence(&V::BT, &dd);
                    for (r, row) in tv.iter().enumerate() {
                        for (c2, &val) in row.iter().enumerate() {
                            vc[(r * A + c2) * chunk + p] = val;
                        }
                    }
                }
            });
        // 2. M_ξ = U_ξ V_ξ: independent single-threaded GEMMs spread over the threads
        // (one synchronisation per chunk instead of one per GEMM).
        let (mp, vp, up) = (OutPtr(m.as_mut_ptr()), InPtr(v.as_ptr()), InPtr(u.as_ptr()));
        let gemm_one = |xi_: usize| {
            // SAFETY: U_ξ is Cout x Cin row-major at ξ*Cout*Cin; V_ξ is Cin x pc with row
            // stride A²*chunk at offset ξ*chunk; M_ξ is Cout x pc, row stride A²*chunk at
            // offset ξ*chunk, so the destinations are disjoint sets of elements.
            unsafe {
                gemm::gemm(
                    co_n,
                    pc,
                    ci_n,
                    mp.get().add(xi_ * chunk),
                    1,
                    (xis * chunk) as isize,
                    false,
                    up.get().add(xi_ * co_n * ci_n),
                    1,
                    ci_n as isize,
                    vp.get().add(xi_ * chunk),
                    1,
                    (xis * chunk) as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    Parallelism::None,
                );
            }
        };
        if threads > 1 {
            (0..xis).into_par_iter().for_each(gemm_one);
        } else {
            (0..xis).for_each(gemm_one);
        }
        // 3. Y = A^T M A, scattered back to the image.
        m.par_chunks(xis * chunk).enumerate().for_each(|(co, mc)| {
            let b = bias.map_or(0.0, |b| b[co]);
            for p in 0..pc {
                let (n, t) = ((p0 + p) / per_image, (p0 + p) % per_image);
                // SAFETY: plane (n, co) lies inside `out` (asserted length) and only
                // this worker (output channel co) writes to it during this loop.
                let yplane = unsafe {
                    std::slice::from_raw_parts_mut(out_ptr.get().add((n * co_n + co) * hw), hw)
                };
                let (y0, x0) = (row_o[t / col_o.len()], col_o[t % col_o.len()]);
                let mut mm = [[0f32; A]; A];
                for (r, row) in mm.iter_mut().enumerate() {
                    for (c, val) in row.iter_mut().enumerate() {
                        *val = mc[(r * A + c) * chunk + p];
                    }
                }
                let y = congruence(&V::AT, &mm);
                for (i, yrow) in y.iter().enumerate() {
                    let yy = y0 + i * d;
                    if yy >= h {
                        break;
                    }
                    for (j, &val) in yrow.iter().enumerate() {
                        let xx = x0 + j * d;
                        if xx >= wd {
                            break;
                        }
                        yplane[yy * wd + xx] = val + b;
                    }
                }
            }
        });
        p0 += pc;
    }
}
