//! The forward transforms in AVX-512: the kernels' (`G g G^T`, 16 input channels per
//! register) and the tiles' (`B^T d B` in, `A^T M A` out), 16 tiles of a row of tiles per
//! register: the taps are gathered straight from the rows (any dilation), and the
//! output blocks scattered straight into the planes. The transform matrices are constants,
//! so their zero and unit coefficients cost nothing. As in the portable transforms, products
//! and sums are never fused, so F(m x m)'s rounding stays that of its matrices.

use super::{Tiling, Variant};
use crate::engine::pre_activation::copy_row;
use crate::engine::product::lane_mask;
use std::arch::x86_64::*;

/// `body` for `k = 0, 1, .. n - 1` (n ≤ 6), written out, so that every `k` is a constant
/// and the matrices' coefficients fold into the code (a loop would read them at run time).
macro_rules! each {
    ($k:ident < $n:expr => $body:block) => {{
        assert!($n <= 6);
        #[allow(clippy::reversed_empty_ranges, unused_comparisons)]
        {
            if 0 < $n {
                let $k: usize = 0;
                $body
            }
            if 1 < $n {
                let $k: usize = 1;
                $body
            }
            if 2 < $n {
                let $k: usize = 2;
                $body
            }
            if 3 < $n {
                let $k: usize = 3;
                $body
            }
            if 4 < $n {
                let $k: usize = 4;
                $body
            }
            if 5 < $n {
                let $k: usize = 5;
                $body
            }
        }
    }};
}

/// Tiles per register.
pub(super) const LANES: usize = 16;

/// Whether this CPU runs these transforms.
pub(super) fn available() -> bool {
    is_x86_feature_detected!("avx512f")
}

/// `Σ_l coef[l] x(l)` over the non-zero coefficients, in the order of `l` (written out with
/// [`each`], so that constant coefficients fold).
#[inline(always)]
unsafe fn lin<const N: usize>(coef: &[f32; N], x: impl Fn(usize) -> __m512) -> __m512 {
    let mut acc: Option<__m512> = None;
    each!(l < N => {
        let c = coef[l];
        if c != 0.0 {
            let v = x(l);
            acc = Some(match acc {
                None if c == 1.0 => v,
                None => _mm512_mul_ps(_mm512_set1_ps(c), v),
                Some(a) if c == 1.0 => _mm512_add_ps(a, v),
                Some(a) if c == -1.0 => _mm512_sub_ps(a, v),
                Some(a) => _mm512_add_ps(a, _mm512_mul_ps(_mm512_set1_ps(c), v)),
            });
        }
    });
    acc.unwrap_or_else(|| _mm512_setzero_ps())
}

/// The columns of tiles `s0..s0 + n` (0 past `n`).
#[inline(always)]
unsafe fn columns<const M: usize>(tiling: &Tiling<M>, s0: usize, mask: __mmask16) -> __m512i {
    _mm512_maskz_loadu_epi32(mask, tiling.col_origins_i32[s0..].as_ptr())
}

/// Floats per padded row of [`input_tiles`]' scratch: the taps of the last tile, and
/// undilated, whole registers of the last group of tiles.
pub(super) fn padded_row<const M: usize, const A: usize>(t: &Tiling<M>) -> usize {
    (t.width + (A + M + 1) * t.dilation).max(M * t.per_row().next_multiple_of(LANES) + LANES)
}

/// Index vectors for `_mm512_permutex2var_ps`.
#[inline(always)]
unsafe fn indices(i: [i32; 16]) -> __m512i {
    _mm512_loadu_epi32(i.as_ptr())
}

/// The taps of 16 undilated tiles `s0..s0 + 16` of a padded row (tile `s` reads `row[M s + j]`,
/// `j < A`): the `M x 16` values from `row + M s0` de-interleaved by permutes, and the last
/// two taps, which are the first two of the next tile, shifted in by one lane.
#[inline(always)]
unsafe fn undilated_taps<const M: usize, const A: usize>(row: *const f32) -> [__m512; A] {
    let mut taps = [_mm512_setzero_ps(); A];
    if M == 2 {
        let (z0, z1) = (_mm512_loadu_ps(row), _mm512_loadu_ps(row.add(16)));
        let even = indices([0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30]);
        let odd = indices([1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31]);
        taps[0] = _mm512_permutex2var_ps(z0, even, z1);
        taps[1] = _mm512_permutex2var_ps(z0, odd, z1);
    } else {
        let z: [__m512; 4] = std::array::from_fn(|q| _mm512_loadu_ps(row.add(16 * q)));
        // Taps (0, 1) and (2, 3) of tiles 0..8 from z0, z1 and of tiles 8..16 from z2, z3.
        let j01 = indices([0, 4, 8, 12, 16, 20, 24, 28, 1, 5, 9, 13, 17, 21, 25, 29]);
        let j23 = indices([2, 6, 10, 14, 18, 22, 26, 30, 3, 7, 11, 15, 19, 23, 27, 31]);
        let (a, b) = (
            _mm512_permutex2var_ps(z[0], j01, z[1]),
            _mm512_permutex2var_ps(z[0], j23, z[1]),
        );
        let (c, e) = (
            _mm512_permutex2var_ps(z[2], j01, z[3]),
            _mm512_permutex2var_ps(z[2], j23, z[3]),
        );
        let first = indices([0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23]);
        let second = indices([8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31]);
        taps[0] = _mm512_permutex2var_ps(a, first, c);
        taps[1] = _mm512_permutex2var_ps(a, second, c);
        taps[2] = _mm512_permutex2var_ps(b, first, e);
        taps[3] = _mm512_permutex2var_ps(b, second, e);
    }
    // Taps M and M + 1 of tile s are taps 0 and 1 of tile s + 1.
    for j in 0..2 {
        let next = _mm512_set1_ps(*row.add(M * LANES + j));
        taps[M + j] = _mm512_castsi512_ps(_mm512_alignr_epi32(
            _mm512_castps_si512(next),
            _mm512_castps_si512(taps[j]),
            1,
        ));
    }
    taps
}

/// Writes the `M` values per tile of 16 undilated tiles (`y[j]`: column `j` of every tile's
/// block row) to `row[M s + j]`, the first `count` of them, plus `residual[M s + j]` where
/// there is one.
#[inline(always)]
unsafe fn store_undilated<const M: usize>(
    row: *mut f32,
    residual: Option<*const f32>,
    y: &[__m512; M],
    count: usize,
) {
    // Columns 0 and 1 of tiles 0..8, then of tiles 8..16, side by side: F(2x2)'s rows whole.
    let lo = indices([0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23]);
    let hi = indices([8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31]);
    let (p01, q01) = (
        _mm512_permutex2var_ps(y[0], lo, y[1]),
        _mm512_permutex2var_ps(y[0], hi, y[1]),
    );
    let parts = if M == 2 {
        [p01, q01, p01, q01]
    } else {
        let (p23, q23) = (
            _mm512_permutex2var_ps(y[2], lo, y[3]),
            _mm512_permutex2var_ps(y[2], hi, y[3]),
        );
        // Pairs (j = 0, 1) and (2, 3) of one tile next to each other.
        let first = indices([0, 1, 16, 17, 2, 3, 18, 19, 4, 5, 20, 21, 6, 7, 22, 23]);
        let second = indices([8, 9, 24, 25, 10, 11, 26, 27, 12, 13, 28, 29, 14, 15, 30, 31]);
        [
            _mm512_permutex2var_ps(p01, first, p23),
            _mm512_permutex2var_ps(p01, second, p23),
            _mm512_permutex2var_ps(q01, first, q23),
            _mm512_permutex2var_ps(q01, second, q23),
        ]
    };
    for (q, part) in parts.iter().enumerate().take(M) {
        let n = count.saturating_sub(16 * q).min(16);
        if n == 0 {
            break;
        }
        let mut part = *part;
        if let Some(r) = residual {
            part = _mm512_add_ps(part, _mm512_maskz_loadu_ps(lane_mask(n), r.add(16 * q)));
        }
        _mm512_mask_storeu_ps(row.add(16 * q), lane_mask(n), part);
    }
}

/// `V = B^T d B` of every tile of some rows of tiles of one channel (its rows pre-activated
/// by `pre`'s `(scale, shift)` as they are copied, where there is one), as the portable
/// `TileTransform` with `InputTiles` writes it (`v[ξ * chunk + p]`). `padded` holds `A` zeroed
/// rows of [`padded_row`] floats; only their middles are written.
///
/// # Safety
/// The CPU must have AVX-512F ([`available`]).
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn input_tiles<V: Variant<M, A>, const M: usize, const A: usize>(
    tiling: &Tiling<M>,
    (plane, image_stride): (&[f32], usize),
    pre: Option<(f32, f32)>,
    rows: &[(usize, usize)],
    v: &mut [f32],
    chunk: usize,
    padded: &mut [f32],
) {
    let (wd, ht, d, ntx) = (
        tiling.width,
        tiling.height,
        tiling.dilation,
        tiling.per_row(),
    );
    let hw = ht * wd;
    let pw = padded_row::<M, A>(tiling);
    assert!(padded.len() >= A * pw);
    let mut h = [[_mm512_setzero_ps(); A]; A];
    for (r, &(n, ty)) in rows.iter().enumerate() {
        let image = &plane[n * image_stride..][..hw];
        let y0 = tiling.row_origins[ty];
        // Row l of the tiles reads input row y0 + (l - 1) d.
        let present: [bool; A] =
            std::array::from_fn(|l| (y0 + l * d).checked_sub(d).is_some_and(|y| y < ht));
        for (l, &here) in present.iter().enumerate() {
            if here {
                let y = y0 + l * d - d;
                copy_row(&image[y * wd..][..wd], pre, &mut padded[l * pw + d..][..wd]);
            }
        }
        for s0 in (0..ntx).step_by(LANES) {
            let mask = lane_mask(ntx - s0);
            let cols = columns(tiling, s0, mask);
            each!(l < A => {
                if present[l] {
                    let row = padded[l * pw..][..pw].as_ptr();
                    // Tap j of a tile at column x0 is padded column x0 + j d (in bounds: x0 <
                    // wd). F(3x3)'s undilated taps are gathered too (it serves dilated maps).
                    let taps = if d == 1 && M != 3 {
                        undilated_taps::<M, A>(row.add(M * s0))
                    } else {
                        let mut taps = [_mm512_setzero_ps(); A];
                        each!(j < A => {
                            taps[j] = _mm512_i32gather_ps::<4>(cols, row.add(j * d));
                        });
                        taps
                    };
                    each!(k2 < A => {
                        h[l][k2] = lin(&V::BT[k2], |j| taps[j]);
                    });
                } else {
                    h[l] = [_mm512_setzero_ps(); A];
                }
            });
            let p = r * ntx + s0;
            each!(k1 < A => {
                each!(k2 < A => {
                    let t = lin(&V::BT[k1], |l| h[l][k2]);
                    let dst = &mut v[(k1 * A + k2) * chunk + p..];
                    debug_assert!(dst.len() >= (ntx - s0).min(LANES));
                    _mm512_mask_storeu_ps(dst.as_mut_ptr(), mask, t);
                });
            });
        }
    }
}

/// `Y = A^T M A` (+ bias) (+ residual) of some rows of tiles of one output channel
/// (products at `m[ξ * chunk + p]`), scattered into the channel's planes (plane `n` at `out +
/// n * image_stride`, of the residual at `residual + n * image_stride`).
///
/// # Safety
/// The CPU must have AVX-512F ([`available`]); the channel's planes must lie inside the
/// output (and the residual) and be written by nobody else meanwhile.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn output_tiles<V: Variant<M, A>, const M: usize, const A: usize>(
    tiling: &Tiling<M>,
    m: &[f32],
    chunk: usize,
    rows: &[(usize, usize)],
    bias: f32,
    (out, residual, image_stride): (*mut f32, Option<*const f32>, usize),
) {
    let (wd, ht, d, ntx) = (
        tiling.width,
        tiling.height,
        tiling.dilation,
        tiling.per_row(),
    );
    let width = _mm512_set1_epi32(wd as i32);
    let bias = _mm512_set1_ps(bias);
    for (r, &(n, ty)) in rows.iter().enumerate() {
        let y0 = tiling.row_origins[ty];
        let block_rows = (0..M).take_while(|i| y0 + i * d < ht).count();
        for s0 in (0..ntx).step_by(LANES) {
            let mask = lane_mask(ntx - s0);
            let cols = columns(tiling, s0, mask);
            let p = r * ntx + s0;
            let prod: [[__m512; A]; A] = std::array::from_fn(|k1| {
                std::array::from_fn(|k2| {
                    let at = (k1 * A + k2) * chunk + p;
                    debug_assert!(m.len() >= at + (ntx - s0).min(LANES));
                    _mm512_maskz_loadu_ps(mask, m.as_ptr().add(at))
                })
            });
            each!(i < M => {
                if i < block_rows {
                    // Along y (A^T M), then along x ((A^T M) A).
                    let mut down = [_mm512_setzero_ps(); A];
                    each!(k2 < A => {
                        down[k2] = lin(&V::AT[i], |k1| prod[k1][k2]);
                    });
                    let at = n * image_stride + (y0 + i * d) * wd;
                    let (row, residual_row) = (out.add(at), residual.map(|r| r.add(at)));
                    if d == 1 && M != 3 {
                        let mut y = [_mm512_setzero_ps(); M];
                        each!(j < M => {
                            y[j] = _mm512_add_ps(lin(&V::AT[j], |k2| down[k2]), bias);
                        });
                        let x0 = M * s0;
                        let count = (M * (ntx - s0).min(LANES)).min(wd - x0);
                        let residual = residual_row.map(|r| r.add(x0));
                        store_undilated::<M>(row.add(x0), residual, &y, count);
                    } else {
                        each!(j < M => {
                            let mut y = _mm512_add_ps(lin(&V::AT[j], |k2| down[k2]), bias);
                            let x = _mm512_add_epi32(cols, _mm512_set1_epi32((j * d) as i32));
                            let inside = mask & _mm512_cmplt_epi32_mask(x, width);
                            if let Some(r) = residual_row {
                                let zero = _mm512_setzero_ps();
                                let r = _mm512_mask_i32gather_ps::<4>(zero, inside, x, r);
                                y = _mm512_add_ps(y, r);
                            }
                            _mm512_mask_i32scatter_ps::<4>(row, inside, x, y);
                        });
                    }
                }
            });
        }
    }
}

/// Where lane `l` of tap `t` lies among 16 consecutive kernels' taps (`9 l + t`) loaded as
/// nine registers: for each pair of registers (the last one alone), the index into the pair
/// and the lanes it serves.
struct Deinterleave {
    index: [[[i32; LANES]; 5]; 9],
    lanes: [[u16; 5]; 9],
}

static DEINTERLEAVE: Deinterleave = {
    let mut d = Deinterleave {
        index: [[[0; LANES]; 5]; 9],
        lanes: [[0; 5]; 9],
    };
    let mut t = 0;
    while t < 9 {
        let mut l = 0;
        while l < LANES {
            let e = 9 * l + t;
            d.index[t][e / 32][l] = (e % 32) as i32;
            d.lanes[t][e / 32] |= 1 << l;
            l += 1;
        }
        t += 1;
    }
    d
};

/// The 9 taps of the kernels of `n` consecutive input channels (16 at most; 0 past `n`)
/// whose kernels lie one after another from `base`: nine contiguous loads, de-interleaved by
/// permutes. Gathering them tap by tap took most of the kernel transform's time (a
/// microbenchmark of 512x512 kernels on one thread: 2.7 ms gathered, 1.6 ms so).
///
/// # Safety
/// The CPU must have AVX-512F; `9 * min(n, 16)` floats from `base` must be readable.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn consecutive_taps(base: *const f32, n: usize) -> [__m512; 9] {
    // No closures here: they would not inherit the target feature, and every intrinsic in
    // them would become a call.
    let floats = 9 * n.min(LANES);
    let mut r = [_mm512_setzero_ps(); 9];
    for (i, r) in r.iter_mut().enumerate() {
        let valid = floats.saturating_sub(LANES * i);
        // Masked-off lanes are not read, so the last registers' addresses may lie past `w`.
        *r = _mm512_maskz_loadu_ps(lane_mask(valid), base.wrapping_add(LANES * i));
    }
    let mut taps = [_mm512_setzero_ps(); 9];
    for (t, tap) in taps.iter_mut().enumerate() {
        let (lanes, mut index) = (&DEINTERLEAVE.lanes[t], [_mm512_setzero_si512(); 5]);
        for (p, index) in index.iter_mut().enumerate() {
            *index = _mm512_loadu_si512(DEINTERLEAVE.index[t][p].as_ptr().cast());
        }
        *tap = _mm512_permutex2var_ps(r[0], index[0], r[1]);
        for p in 1..4 {
            let pair = _mm512_permutex2var_ps(r[2 * p], index[p], r[2 * p + 1]);
            *tap = _mm512_mask_mov_ps(*tap, lanes[p], pair);
        }
        *tap = _mm512_mask_mov_ps(*tap, lanes[4], _mm512_permutexvar_ps(index[4], r[8]));
    }
    taps
}

/// How many steps of 16 input channels ahead [`kernel_transform`] asks for its taps: the
/// hardware's own prefetch left a 512x512 F(4x4) transform of weights in memory at 7.0 ns a
/// kernel, 4.0 with this (1024x512 under F(2x2): 6.4 and 3.8).
const PREFETCH_AHEAD: usize = 4;

/// `U = G g G^T` of one output channel's kernels, written to `u[ξ * plane + offset + ci]` for
/// every ξ and input channel, as the portable `KernelTransform` computes it. Input channel
/// `ci`'s taps are `w[first + ci * stride..][..9]`, in reverse order where `flip` holds.
///
/// # Safety
/// The CPU must have AVX-512F ([`available`]); those taps must lie inside `w` and `16 *
/// stride` fit an `i32`; those entries must lie inside `u`'s allocation and be written by
/// nobody else meanwhile.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn kernel_transform<V: Variant<M, A>, const M: usize, const A: usize>(
    w: &[f32],
    (first, stride, flip): (usize, usize, bool),
    ci_n: usize,
    u: *mut f32,
    offset: usize,
    plane: usize,
) {
    // Lane i reads input channel ci0 + i: taps `stride` floats apart.
    let taps = _mm512_mullo_epi32(
        _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
        _mm512_set1_epi32(stride as i32),
    );
    for ci0 in (0..ci_n).step_by(LANES) {
        let mask = lane_mask(ci_n - ci0);
        let base = w.as_ptr().add(first + ci0 * stride);
        let consecutive = if stride == 9 {
            // A hint, harmless past the weight's end.
            let ahead = base.wrapping_add(PREFETCH_AHEAD * LANES * 9);
            for line in 0..9 {
                _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(line * LANES).cast());
            }
            Some(consecutive_taps(base, ci_n - ci0))
        } else {
            None
        };
        let mut k = [[_mm512_setzero_ps(); 3]; 3];
        each!(r < 3 => {
            each!(c < 3 => {
                let tap = if flip { 8 - (r * 3 + c) } else { r * 3 + c };
                k[r][c] = match &consecutive {
                    Some(loaded) => loaded[tap],
                    None => _mm512_mask_i32gather_ps::<4>(
                        _mm512_setzero_ps(),
                        mask,
                        taps,
                        base.add(tap),
                    ),
                };
            });
        });
        // (G g)[r][c], then (G g G^T)[r][c].
        let mut gg = [[_mm512_setzero_ps(); 3]; A];
        each!(r < A => {
            each!(c < 3 => {
                gg[r][c] = lin(&V::G[r], |j| k[j][c]);
            });
        });
        each!(r < A => {
            each!(c < A => {
                let value = lin(&V::G[c], |j| gg[r][j]);
                _mm512_mask_storeu_ps(u.add((r * A + c) * plane + offset + ci0), mask, value);
            });
        });
    }
}
