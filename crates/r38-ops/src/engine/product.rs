//! The engine's products `M = U V` in AVX-512: Winograd's `M_ξ = U_ξ V_ξ` (output channels
//! by tiles, over input channels) and im2col's `Y = W X` (output channels by pixels), read
//! in place from the transforms' and columns' buffers. At batch 1 these products are thin (a
//! 28x28 map has 49 tiles, a 7x7 one 49 pixels): a general GEMM spends much of its time
//! packing the right operand and wastes 15 lanes of a register on the 49th column.
//!
//! Registers hold a block of [`ROWS`] output channels by up to three vectors of 16 columns,
//! and a last column or few in a half-width register; each step broadcasts one entry of `U`
//! per row and loads one row of `V`. The sum over the inner dimension runs in order, one
//! fused multiply-add per term, whatever the blocking, so every caller gets the same bits.

use std::arch::x86_64::*;

/// Whether this CPU runs [`multiply`].
pub(super) fn available() -> bool {
    is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vl")
}

/// Output channels per register block.
const ROWS: usize = 8;
/// Input channels per pass: every pass reads and writes `m` once more. (Measured on one
/// thread, 2048x256x1024: 84 GFLOP/s in passes of 128, 110 in one pass.)
const DEPTH: usize = 1024;
/// Floats of `U` (384 KiB) whose block stays in L2 while every block of columns reads it: 96
/// rows of 1024, or all the rows of a shallow product (each pass over the rows of `U` reads
/// `V`'s block again).
const U_IN_CACHE: usize = 96 * 1024;
/// Columns per register block: three vectors.
const COLUMNS: usize = 48;
/// Products wider than this copy `V`'s rows into panels (see [`multiply`]).
const COPIED_FROM_COLUMNS: usize = 256;
/// Output channels per register block with a half-width tail (four registers per row).
const TAIL_ROWS: usize = 6;

/// `m (+)= u v`, accumulating onto `m` where `accumulate`: `u` is `rows x depth` (rows `u_row`
/// floats apart), `v` is `depth x cols` (rows `v_row` apart), `m` is `rows x cols` (rows
/// `m_row` apart), all with unit column stride.
///
/// # Safety
/// The CPU must have AVX-512F and VL ([`available`]); every element the strides address must
/// be in bounds and `m`'s writable by nobody else meanwhile.
#[target_feature(enable = "avx512f,avx512vl")]
pub(super) unsafe fn multiply(
    (rows, cols, depth): (usize, usize, usize),
    (m, m_row, accumulate): (*mut f32, usize, bool),
    (u, u_row): (*const f32, usize),
    (v, v_row): (*const f32, usize),
) {
    if depth == 0 && !accumulate {
        // An empty sum.
        for r in 0..rows {
            std::ptr::write_bytes(m.add(r * m_row), 0, cols);
        }
        return;
    }
    // Blocks of three vectors; a last block of at most 8 columns rides along in a half-width
    // register, whose multiply-adds cost half as much (two per cycle where a full one takes a
    // cycle).
    let (full, rest) = (cols / COLUMNS, cols % COLUMNS);
    let (blocks, tail) = if rest <= 8 && full > 0 {
        (full, rest)
    } else {
        (full + (rest > 0) as usize, 0)
    };
    // Block b: its first column, its width in full registers' lanes, its tail.
    let block = |b: usize| {
        let c0 = b * COLUMNS;
        let tail = if b + 1 == blocks { tail } else { 0 };
        (c0, COLUMNS.min(cols - c0 - tail), tail)
    };
    // V's rows are copied next to each other, each block's starting on cache lines, where
    // they lie a multiple of 1 KiB apart (Winograd's chunks of 36 x 256 tiles at 504x504:
    // they would share a few sets of L1 and evict each other) or the product is wide (a
    // 63x63 map's pointwise convolution: a block's rows on a thousand pages; measured 2048 ->
    // 4096, 345-377 ms in place, 338-351 copied).
    let copied = (v_row * 4).is_multiple_of(1024) || cols > COPIED_FROM_COLUMNS;
    let panel_row = |width: usize, tail: usize| (width + tail).next_multiple_of(16);
    PANELS.with(|panels| {
        let mut panels = panels.take();
        if copied {
            panels.resize(DEPTH.min(depth) * (cols + 16 * blocks), 0.0);
        }
        for k0 in (0..depth).step_by(DEPTH) {
            let kb = DEPTH.min(depth - k0);
            if copied {
                let mut panel = panels.as_mut_ptr();
                for b in 0..blocks {
                    let (c0, width, tail) = block(b);
                    for k in 0..kb {
                        let row = v.add((k0 + k) * v_row + c0);
                        std::ptr::copy_nonoverlapping(row, panel, width + tail);
                        panel = panel.add(panel_row(width, tail));
                    }
                }
            }
            let rows_in_cache = (U_IN_CACHE / kb).next_multiple_of(24);
            for r_cached in (0..rows).step_by(rows_in_cache) {
                let r_end = rows.min(r_cached + rows_in_cache);
                let mut panel = panels.as_ptr();
                for b in 0..blocks {
                    let (c0, width, tail) = block(b);
                    let (block_v, block_v_row) = if copied {
                        (panel, panel_row(width, tail))
                    } else {
                        (v.add(k0 * v_row + c0), v_row)
                    };
                    let rows_per = if tail > 0 { TAIL_ROWS } else { ROWS };
                    for r0 in (r_cached..r_end).step_by(rows_per) {
                        let at = Block {
                            depth: kb,
                            u: u.add(r0 * u_row + k0),
                            u_row,
                            v: block_v,
                            v_row: block_v_row,
                            m: m.add(r0 * m_row + c0),
                            m_row,
                            last: lane_mask(width - 16 * ((width - 1) / 16)),
                            tail: ((1u32 << tail) - 1) as __mmask8,
                            first: k0 == 0 && !accumulate,
                        };
                        let r = rows_per.min(r_end - r0);
                        macro_rules! by_rows {
                            ($nv:literal, $tail:literal) => {
                                match r {
                                    8 => at.run::<$nv, 8, $tail>(),
                                    7 => at.run::<$nv, 7, $tail>(),
                                    6 => at.run::<$nv, 6, $tail>(),
                                    5 => at.run::<$nv, 5, $tail>(),
                                    4 => at.run::<$nv, 4, $tail>(),
                                    3 => at.run::<$nv, 3, $tail>(),
                                    2 => at.run::<$nv, 2, $tail>(),
                                    _ => at.run::<$nv, 1, $tail>(),
                                }
                            };
                        }
                        match (width.div_ceil(16), tail > 0) {
                            (3, true) => by_rows!(3, true),
                            (3, false) => by_rows!(3, false),
                            (2, _) => by_rows!(2, false),
                            _ => by_rows!(1, false),
                        }
                    }
                    if copied {
                        panel = panel.add(kb * panel_row(width, tail));
                    }
                }
            }
        }
        PANELS.set(panels);
    });
}

thread_local! {
    /// This thread's copy of a block of `V_ξ`'s rows, kept for its next product.
    static PANELS: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// The first `n` lanes of a vector (all 16 from `n = 16` on): the live columns of a block's
/// last vector here, the live tiles of a group in Winograd's transforms.
#[inline(always)]
pub(super) fn lane_mask(n: usize) -> __mmask16 {
    if n >= 16 {
        0xffff
    } else {
        ((1u32 << n) - 1) as __mmask16
    }
}

/// One register block's operands: `depth` terms from `u` and `v` into `m`, whose last vector
/// has the lanes of `last`; `m` is overwritten where `first` holds, accumulated into
/// otherwise.
struct Block {
    depth: usize,
    u: *const f32,
    u_row: usize,
    v: *const f32,
    v_row: usize,
    m: *mut f32,
    m_row: usize,
    last: __mmask16,
    tail: __mmask8,
    first: bool,
}

impl Block {
    // Index loops: iterator adaptors are functions of their own, without this target feature,
    // and would pass the registers through memory.
    #[allow(clippy::needless_range_loop)]
    #[target_feature(enable = "avx512f,avx512vl")]
    #[inline]
    unsafe fn run<const NV: usize, const R: usize, const TAIL: bool>(&self) {
        let last = self.last;
        let mask = |j: usize| if j + 1 == NV { last } else { 0xffff };
        let tail_at = 16 * NV;
        let mut acc = [[_mm512_setzero_ps(); NV]; R];
        let mut acc_tail = [_mm256_setzero_ps(); R];
        if !self.first {
            for r in 0..R {
                let row = self.m.add(r * self.m_row);
                for j in 0..NV {
                    acc[r][j] = _mm512_maskz_loadu_ps(mask(j), row.add(16 * j));
                }
                if TAIL {
                    acc_tail[r] = _mm256_maskz_loadu_ps(self.tail, row.add(tail_at));
                }
            }
        }
        let (mut u, mut v) = (self.u, self.v);
        for _ in 0..self.depth {
            let mut tiles = [_mm512_setzero_ps(); NV];
            for j in 0..NV {
                tiles[j] = _mm512_maskz_loadu_ps(mask(j), v.add(16 * j));
            }
            let tiles_tail = if TAIL {
                _mm256_maskz_loadu_ps(self.tail, v.add(tail_at))
            } else {
                _mm256_setzero_ps()
            };
            for r in 0..R {
                let kernel = _mm512_set1_ps(*u.add(r * self.u_row));
                for j in 0..NV {
                    acc[r][j] = _mm512_fmadd_ps(kernel, tiles[j], acc[r][j]);
                }
                if TAIL {
                    let kernel = _mm512_castps512_ps256(kernel);
                    acc_tail[r] = _mm256_fmadd_ps(kernel, tiles_tail, acc_tail[r]);
                }
            }
            u = u.add(1);
            v = v.add(self.v_row);
        }
        for r in 0..R {
            let row = self.m.add(r * self.m_row);
            for j in 0..NV {
                _mm512_mask_storeu_ps(row.add(16 * j), mask(j), acc[r][j]);
            }
            if TAIL {
                _mm256_mask_storeu_ps(row.add(tail_at), self.tail, acc_tail[r]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every entry is the in-order fused sum over the input channels, whatever the blocks:
    /// full and masked registers, half-width tails, partial blocks of rows, several passes of
    /// [`DEPTH`], rows of `V` read in place or copied (256 floats apart, or over 256 columns).
    #[test]
    fn products_are_the_in_order_fused_sums() {
        if !available() {
            return;
        }
        let value = |i: usize, salt: usize| ((i * 7919 + salt) % 1013) as f32 / 1013.0 - 0.4;
        for &(rows, cols, depth, v_row) in &[
            (1, 1, 1, 12),
            (3, 5, 0, 9),
            (7, 49, 9, 60),
            (13, 16, 3, 27),
            (9, 57, 5, 68),
            (8, 58, 4, 69),
            (101, 100, 17, 111),
            (101, 100, 17, 256),
            (6, 196, 2, 207),
            (5, 300, 7, 311),
            (3, 20, DEPTH + 3, 31),
            (3, 20, DEPTH + 3, 256),
        ] {
            let (u_row, m_row) = (depth + 5, cols + 3);
            let u: Vec<f32> = (0..rows * u_row).map(|i| value(i, 1)).collect();
            let v: Vec<f32> = (0..depth * v_row).map(|i| value(i, 2)).collect();
            let mut m = vec![f32::NAN; rows * m_row];
            // Overwritten first (NaNs and all), then accumulated onto.
            for accumulate in [false, true] {
                let before = m.clone();
                // SAFETY: the CPU has AVX-512F and VL; the buffers hold what the strides
                // address.
                unsafe {
                    multiply(
                        (rows, cols, depth),
                        (m.as_mut_ptr(), m_row, accumulate),
                        (u.as_ptr(), u_row),
                        (v.as_ptr(), v_row),
                    )
                };
                for r in 0..rows {
                    for c in 0..m_row {
                        let (got, was) = (m[r * m_row + c], before[r * m_row + c]);
                        if c >= cols {
                            assert!(got.is_nan(), "({rows}, {cols}, {depth}): wrote past a row");
                            continue;
                        }
                        let start = if accumulate { was } else { 0.0 };
                        let want = (0..depth).fold(start, |acc, k| {
                            u[r * u_row + k].mul_add(v[k * v_row + c], acc)
                        });
                        assert_eq!(
                            got.to_bits(),
                            want.to_bits(),
                            "({rows}, {cols}, {depth}, {accumulate}) [{r}][{c}]"
                        );
                    }
                }
            }
        }
    }
}
