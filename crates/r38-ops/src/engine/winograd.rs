//! Winograd F(2x2, 3x3) for 3x3 stride-1 "same" convolutions, any dilation.
//!
//! Each 2x2 block of outputs costs 16 multiplies per (input, output) channel pair instead of 36:
//! `Y = A^T [ (G g G^T) ⊙ (B^T d B) ] A` (Lavin & Gray 2015). The element-wise products over all
//! channel pairs become 16 GEMMs, `M_ξ (Cout x P) = U_ξ (Cout x Cin) * V_ξ (Cin x P)`, one per
//! position ξ of the 4x4 transformed tile, over a chunk of P tiles at a time (a few MiB).
//!
//! **Dilation.** A stride-1 convolution dilated by `d` touches, for output row `y`, only input
//! rows `y - d, y, y + d`; it is `d²` undilated convolutions on the interleaved sub-images of
//! rows (and columns) `≡ r (mod d)`. The tiles are laid out on those sub-images directly: a tile
//! covers output rows `{y0, y0 + d}` and reads input rows `y0 - d, y0, y0 + d, y0 + 2d`, so no
//! sub-image is ever copied out.
//!
//! Accuracy: the transforms only use ±1 and ½, so fp32 results stay within ~1e-6 (relative) of
//! the direct convolution.

use super::kernel::Geometry;
use gemm::Parallelism;
use rayon::prelude::*;

/// Whether [`conv2d`] computes this convolution: 3x3, stride 1, "same" padding (= dilation),
/// enough channels to amortise the transforms, and enough tiles (over the whole batch) for
/// the 16 GEMMs to be efficient; small maps at batch 1 (7x7, 14x14) stay on im2col + GEMM.
pub fn applies(g: &Geometry) -> bool {
    g.kernel == 3
        && g.stride == 1
        && g.padding == g.dilation
        && g.in_channels >= 8
        && g.batch * origins(g.height, g.dilation).len() * origins(g.width, g.dilation).len()
            >= MIN_TILES
}

/// Fewest tiles (2x2 output blocks, whole batch) for which Winograd is used.
const MIN_TILES: usize = 64;

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
fn transform_weights(g: &Geometry, w: &[f32]) -> Vec<f32> {
    let (co_n, ci_n) = (g.out_channels, g.in_channels);
    let mut u = vec![0f32; 16 * co_n * ci_n];
    let plane = co_n * ci_n;
    // Parallel over output channels: each writes its own ci range in all 16 planes.
    let rows: Vec<Vec<[f32; 16]>> = (0..co_n)
        .into_par_iter()
        .map(|co| {
            (0..ci_n)
                .map(|ci| {
                    let k = &w[(co * ci_n + ci) * 9..(co * ci_n + ci) * 9 + 9];
                    // Gg: 4x3
                    let mut gg = [[0f32; 3]; 4];
                    for c in 0..3 {
                        let (a, b, e) = (k[c], k[3 + c], k[6 + c]);
                        gg[0][c] = a;
                        gg[1][c] = 0.5 * (a + b + e);
                        gg[2][c] = 0.5 * (a - b + e);
                        gg[3][c] = e;
                    }
                    let mut t = [0f32; 16];
                    for r in 0..4 {
                        let [a, b, e] = gg[r];
                        t[r * 4] = a;
                        t[r * 4 + 1] = 0.5 * (a + b + e);
                        t[r * 4 + 2] = 0.5 * (a - b + e);
                        t[r * 4 + 3] = e;
                    }
                    t
                })
                .collect()
        })
        .collect();
    for (co, row) in rows.iter().enumerate() {
        for (ci, t) in row.iter().enumerate() {
            for (xi, &v) in t.iter().enumerate() {
                u[xi * plane + co * ci_n + ci] = v;
            }
        }
    }
    u
}

/// Tile origins along one axis of length `n`: residue classes mod `d`, pairs of outputs each.
fn origins(n: usize, d: usize) -> Vec<usize> {
    let mut v = Vec::with_capacity(n.div_ceil(2) + d);
    for r in 0..d.min(n) {
        let mut y = r;
        while y < n {
            v.push(y);
            y += 2 * d;
        }
    }
    v
}

/// The 4 input indices a tile at `origin` reads (None outside the image).
fn taps(origin: usize, d: usize, n: usize) -> [Option<usize>; 4] {
    let mut t = [None; 4];
    for (i, slot) in t.iter_mut().enumerate() {
        let v = origin as isize + (i as isize - 1) * d as isize;
        if v >= 0 && (v as usize) < n {
            *slot = Some(v as usize);
        }
    }
    t
}

/// `out = conv(x, w) (+ bias)` for geometries where [`applies`] holds.
pub fn conv2d(g: &Geometry, x: &[f32], w: &[f32], bias: Option<&[f32]>, out: &mut [f32]) {
    debug_assert!(applies(g));
    let (h, wd, d) = (g.height, g.width, g.dilation);
    let (ci_n, co_n) = (g.in_channels, g.out_channels);
    let hw = h * wd;
    assert_eq!(x.len(), g.batch * ci_n * hw);
    assert_eq!(w.len(), co_n * ci_n * 9);
    assert_eq!(out.len(), g.batch * co_n * hw);
    let threads = rayon::current_num_threads().max(1);

    let u = transform_weights(g, w);
    let row_o = origins(h, d);
    let col_o = origins(wd, d);
    let row_taps: Vec<_> = row_o.iter().map(|&o| taps(o, d, h)).collect();
    let col_taps: Vec<_> = col_o.iter().map(|&o| taps(o, d, wd)).collect();
    // Tiles of the whole batch are numbered image by image; a chunk may span images.
    let per_image = row_o.len() * col_o.len();
    let tiles = g.batch * per_image;
    let chunk = (CHUNK_FLOATS / (16 * ci_n.max(co_n))).clamp(32, tiles.max(32));
    let mut v = vec![0f32; ci_n * 16 * chunk];
    let mut m = vec![0f32; co_n * 16 * chunk];
    let out_ptr = OutPtr(out.as_mut_ptr());
    {
        let mut p0 = 0;
        while p0 < tiles {
            let pc = chunk.min(tiles - p0);
            // 1. V[c][ξ][p] = B^T d B.
            v.par_chunks_mut(16 * chunk)
                .enumerate()
                .for_each(|(c, vc)| {
                    for p in 0..pc {
                        let (n, t) = ((p0 + p) / per_image, (p0 + p) % per_image);
                        let plane = &x[(n * ci_n + c) * hw..(n * ci_n + c + 1) * hw];
                        let (rt, ct) = (&row_taps[t / col_o.len()], &col_taps[t % col_o.len()]);
                        let mut dd = [[0f32; 4]; 4];
                        for (i, ry) in rt.iter().enumerate() {
                            if let Some(ry) = ry {
                                let row = &plane[ry * wd..ry * wd + wd];
                                for (j, cx) in ct.iter().enumerate() {
                                    if let Some(cx) = cx {
                                        dd[i][j] = row[*cx];
                                    }
                                }
                            }
                        }
                        // B^T d
                        let mut tt = [[0f32; 4]; 4];
                        for j in 0..4 {
                            tt[0][j] = dd[0][j] - dd[2][j];
                            tt[1][j] = dd[1][j] + dd[2][j];
                            tt[2][j] = dd[2][j] - dd[1][j];
                            tt[3][j] = dd[1][j] - dd[3][j];
                        }
                        // (B^T d) B
                        for (r, row) in tt.iter().enumerate() {
                            let vals = [
                                row[0] - row[2],
                                row[1] + row[2],
                                row[2] - row[1],
                                row[1] - row[3],
                            ];
                            for (cidx, val) in vals.into_iter().enumerate() {
                                vc[(r * 4 + cidx) * chunk + p] = val;
                            }
                        }
                    }
                });
            // 2. M_ξ = U_ξ V_ξ: 16 independent single-threaded GEMMs spread over the threads
            // (one synchronisation per chunk instead of one per GEMM).
            let (mp, vp, up) = (OutPtr(m.as_mut_ptr()), InPtr(v.as_ptr()), InPtr(u.as_ptr()));
            let gemm_one = |xi_: usize| {
                // SAFETY: U_ξ is Cout x Cin row-major at ξ*Cout*Cin; V_ξ is Cin x pc with row
                // stride 16*chunk at offset ξ*chunk; M_ξ is Cout x pc, row stride 16*chunk at
                // offset ξ*chunk, so the 16 destinations are disjoint sets of elements.
                unsafe {
                    gemm::gemm(
                        co_n,
                        pc,
                        ci_n,
                        mp.get().add(xi_ * chunk),
                        1,
                        (16 * chunk) as isize,
                        false,
                        up.get().add(xi_ * co_n * ci_n),
                        1,
                        ci_n as isize,
                        vp.get().add(xi_ * chunk),
                        1,
                        (16 * chunk) as isize,
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
                (0..16).into_par_iter().for_each(gemm_one);
            } else {
                (0..16).for_each(gemm_one);
            }
            // 3. Y = A^T M A, scattered back to the image.
            m.par_chunks(16 * chunk).enumerate().for_each(|(co, mc)| {
                let b = bias.map_or(0.0, |b| b[co]);
                for p in 0..pc {
                    let (n, t) = ((p0 + p) / per_image, (p0 + p) % per_image);
                    // SAFETY: plane (n, co) lies inside `out` (asserted length) and only
                    // this worker (output channel co) writes to it during this loop.
                    let yplane = unsafe {
                        std::slice::from_raw_parts_mut(out_ptr.get().add((n * co_n + co) * hw), hw)
                    };
                    let (y0, x0) = (row_o[t / col_o.len()], col_o[t % col_o.len()]);
                    let mut mm = [[0f32; 4]; 4];
                    for (r, row) in mm.iter_mut().enumerate() {
                        for (c, val) in row.iter_mut().enumerate() {
                            *val = mc[(r * 4 + c) * chunk + p];
                        }
                    }
                    let mut s = [[0f32; 4]; 2];
                    for j in 0..4 {
                        s[0][j] = mm[0][j] + mm[1][j] + mm[2][j];
                        s[1][j] = mm[1][j] - mm[2][j] - mm[3][j];
                    }
                    for (i, srow) in s.iter().enumerate() {
                        let yy = y0 + i * d;
                        if yy >= h {
                            continue;
                        }
                        let o0 = srow[0] + srow[1] + srow[2] + b;
                        let o1 = srow[1] - srow[2] - srow[3] + b;
                        yplane[yy * wd + x0] = o0;
                        if x0 + d < wd {
                            yplane[yy * wd + x0 + d] = o1;
                        }
                    }
                }
            });
            p0 += pc;
        }
    }
}
