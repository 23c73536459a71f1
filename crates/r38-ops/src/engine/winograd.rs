//! Winograd F(2x2, 3x3), F(3x3, 3x3) and F(4x4, 3x3) for 3x3 stride-1 "same" convolutions,
//! any dilation.
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
//! **Transforms.** The input and output transforms run on `LANES` consecutive tiles of a row
//! at a time, in SIMD registers (compiled for AVX2 + FMA where the CPU has them); the kernel
//! transform on as many input channels. Kernels too wide for memory are transformed and
//! multiplied in groups of output channels.
//!
//! **Products.** With AVX-512 the GEMMs are `product`'s register blocks, read straight from
//! the transforms' buffers (no packing; a 49-tile product's 49th column rides in a half-width
//! register); elsewhere the `gemm` crate's.
//!
//! Accuracy: F(2x2)'s transforms only use ±1 and ½ (~1e-6 relative to the direct convolution in
//! fp32); F(4x4)'s use up to 8 and 1/24 (~1e-5). [`block`] picks F(4x4) where it saves work.

use super::kernel::{gemm_strided, Geometry, Strided};
use super::output::Output;
use super::pre_activation::{copy_row, ScaleShift};
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "x86_64")]
use super::product;
use gemm::Parallelism;
use rayon::prelude::*;
use std::marker::PhantomData;
use std::mem::MaybeUninit;
use std::ops::Range;

/// Whether [`conv2d`] computes this convolution: 3x3, stride 1, "same" padding (= dilation),
/// enough channels to amortise the transforms, and enough tiles (over the whole batch) for
/// the GEMMs to be efficient: from 14x14 at batch 1 (49 tiles; level 5's 1024 -> 512
/// measured 11-12 ms against im2col's 14.6, its kernels transformed in groups: `fresh_group`);
/// 7x7 at batch 1 (16 tiles, a quarter of them padding) stays on im2col + GEMM.
pub fn applies(g: &Geometry) -> bool {
    is_same_3x3(g) && tiles(g, 2) >= MIN_TILES
}

/// 3x3, stride 1, "same" padding, and enough input channels to amortise the transforms.
fn is_same_3x3(g: &Geometry) -> bool {
    g.kernel == 3 && g.stride == 1 && g.padding == g.dilation && g.in_channels >= 8
}

/// Fewest tiles (2x2 output blocks, whole batch) for which Winograd is used.
const MIN_TILES: usize = 32;

/// Largest group of transformed kernels (floats) the forward pass holds at once: as large as
/// the input, from 64 to 128 MiB. Wider convolutions (level 7's 1024 -> 2048 would take 300 MB
/// under F(4x4)) run in groups of output channels, each with its own transformed kernel. The
/// largest group is the buffer [`FreshKernels`] keeps: on small maps it would set the peak RSS
/// (at 504x504, output stride 8, the head's 4096 -> 512 whole under F(2x2), 134 MB, made it
/// 0.63x PyTorch's), on large ones the maps do, and more groups would transform the tiles
/// more often (the head on a 1024x2048 frame: 2.1-2.2 s in 3 groups, 2.4 s in 5).
fn max_group_floats(g: &Geometry) -> usize {
    (g.batch * g.in_channels * g.height * g.width).clamp(1 << 24, 1 << 25)
}

/// Largest transformed kernel gradient (floats), accumulated whole: 128 MiB.
const MAX_GRADIENT_FLOATS: usize = 1 << 25;

/// Fewest tiles (4x4 output blocks, whole batch) for which F(4x4, 3x3) is used.
const MIN_TILES_4X4: usize = 128;

/// Tiles of `m x m` output blocks over the whole batch.
fn tiles(g: &Geometry, m: usize) -> usize {
    tile_rows(g, m) * origins(g.width, g.dilation, m).len()
}

/// Rows of tiles of `m x m` output blocks over the whole batch.
fn tile_rows(g: &Geometry, m: usize) -> usize {
    g.batch * origins(g.height, g.dilation, m).len()
}

/// The output block edge [`conv2d`] uses: 4 where its multiplies, padded tiles at the map
/// edges included, are clearly fewer than 2's (its transforms cost about twice as much per
/// tile), there are enough tiles for its 36 GEMMs (measured: at 28x28, batch 1, 49 tiles,
/// F(4x4) is slower than F(2x2), unless its kernels are made in the cache: `in_cache_group`)
/// and it stays cheaper once the kernel transforms are counted
/// (a kernel too wide for memory is transformed anew for every chunk of tiles, or the tiles
/// for every group of kernels, whichever writes fewer); else 2. Either gives way to 3 where
/// that saves a fifth of the multiplies (short rows of sub-images: `or_3x3`).
pub fn block(g: &Geometry) -> usize {
    let m = if in_cache_group(g, 4).is_some() {
        // Its kernels are made in the cache and never written out, so only the multiplies
        // count.
        block_saving_multiplies(g, MIN_TILES_4X4_IN_CACHE)
    } else {
        block_written(g)
    };
    or_3x3(g, m)
}

/// 3 where F(3x3, 3x3)'s multiplies, padded edge tiles included, are at most 80% of those
/// of blocks of edge `m` and there are at least [`MIN_TILES_3X3`] tiles, else `m`. Its
/// tiles cover short rows with less padding: on a 63x63 map at dilation 12 (the head at
/// 504x504, output stride 8) sub-images of 5-6 pixels, which blocks of 2 and of 4 both pad to
/// 6-8 (5.2 multiplies per output, F(3x3) 3.6; measured 600 -> 390-410 ms, its input
/// channels in passes: `channels_per_pass`).
fn or_3x3(g: &Geometry, m: usize) -> usize {
    let multiplies = |m: usize| (m + 2) * (m + 2) * tiles(g, m);
    let fewest = multiplies(m).min(multiplies(2)).min(multiplies(4));
    if tiles(g, 3) >= MIN_TILES_3X3 && multiplies(3) * 5 <= fewest * 4 {
        3
    } else {
        m
    }
}

/// Fewest tiles (3x3 output blocks, whole batch) for which F(3x3, 3x3) is used.
const MIN_TILES_3X3: usize = 128;

/// Fewest tiles (4x4 output blocks, whole batch) for which kernels made in the cache use
/// F(4x4, 3x3): 16, a 14x14 map at batch 1 (level 5's 1024 -> 512 measured 6.2-6.4 ms under
/// F(2x2), 5.3-6.0 under F(4x4)) or a 7x7 one at batch 4 (level 7's 1024 -> 2048 at batch 8:
/// 60 -> 34-39 ms). Kept kernels start at 48 (`block_kept`): their F(4x4) entries would take
/// 2.25 times the memory.
const MIN_TILES_4X4_IN_CACHE: usize = 16;

/// [`block`]'s rule where the transformed kernels are written out to memory: the input
/// gradient's (their taps gathered, not measured in the cache) and the kernel gradient's
/// (accumulated whole).
fn block_written(g: &Geometry) -> usize {
    // Per (input, output) channel pair: multiplies, then transformed floats written beyond
    // one pass of the kernels and one of the tiles.
    let cost = |m: usize| {
        let xis = (m + 2) * (m + 2);
        let group = output_group(g, xis);
        let chunks = chunks(g, m, group);
        let groups = g.out_channels.div_ceil(group);
        let (kernel_passes, tile_passes) = if groups == 1 {
            (1, 1)
        } else if Order::best(g, m, group) == Order::KernelsOuter {
            (1, groups)
        } else {
            (chunks, 1)
        };
        let extra_tiles = (tile_passes - 1) * tiles(g, m) / g.out_channels.max(1);
        xis * tiles(g, m) + KERNEL_FLOAT_COST * xis * (kernel_passes + extra_tiles)
    };
    if tiles(g, 4) >= MIN_TILES_4X4 && saves_multiplies(g) && cost(4) <= cost(2) {
        4
    } else {
        2
    }
}

/// Whether [`conv2d_transformed`] computes this convolution with kernels transformed
/// beforehand ([`Transformed`]): where [`applies`] holds. Without the kernel transform in
/// every pass, F(2x2) does 16 multiplies per 2x2 block where im2col does 36: measured at
/// 14x14, batch 1 (49 tiles), 0.49x the time of im2col; at 7x7, batch 1 (16 tiles, a quarter
/// of them padding) 1.1x, so that stays on im2col; at 7x7, batch 8, 0.45x.
pub fn applies_kept(g: &Geometry) -> bool {
    applies(g)
}

/// The output block edge for kernels transformed beforehand: [`block`]'s rule without the
/// kernel transform's cost, so from fewer tiles (F(4x4) where its multiplies, padded edge
/// tiles included, are at most 80% of F(2x2)'s and there are at least 48 tiles: measured at
/// 28x28, batch 1, 49 tiles, 0.79x F(2x2)'s time; at 14x14, 16 tiles, 1.2x).
pub fn block_kept(g: &Geometry) -> usize {
    or_3x3(g, block_saving_multiplies(g, MIN_TILES_4X4_KEPT))
}

/// 4 where there are at least `min_tiles` 4x4 tiles and [`saves_multiplies`] holds, else 2:
/// the rule where the kernel transform costs nothing in the pass.
fn block_saving_multiplies(g: &Geometry, min_tiles: usize) -> usize {
    if tiles(g, 4) >= min_tiles && saves_multiplies(g) {
        4
    } else {
        2
    }
}

/// Fewest tiles (4x4 output blocks, whole batch) for which kept kernels use F(4x4, 3x3).
const MIN_TILES_4X4_KEPT: usize = 48;

/// Whether F(4x4)'s multiplies, padded edge tiles included, are at most 80% of F(2x2)'s.
fn saves_multiplies(g: &Geometry) -> bool {
    36 * tiles(g, 4) * 5 <= 16 * tiles(g, 2) * 4
}

/// What writing one transformed kernel entry costs, in multiply-adds of the GEMMs. Measured
/// order of magnitude: the AVX-512 kernel transform (issue #17 fifth and sixth rounds) takes
/// about as long as 20 multiply-adds per entry (the frame head's 4096 -> 512 under F(4x4),
/// made in each of 12 chunks: 190 ms of 2.6 s), the portable one 3-4 times that; before
/// those rounds 100-250. At 128 the frame head took F(2x2) (3.3-3.5 s, against 2.5-2.7 under
/// F(4x4)); at 32 so does batch 8's level 5 at 14x14 (33-37 ms against 38).
const KERNEL_FLOAT_COST: usize = 32;

/// Chunks of tiles [`run`] takes with `group` output channels per group.
pub(crate) fn chunks(g: &Geometry, m: usize, group: usize) -> usize {
    tile_rows(g, m).div_ceil(chunk_rows_of(g, m, group, channels_per_pass(g, m, group)))
}

/// Rows of tiles per chunk of [`run`] with `group` output channels per group, every input
/// channel in one pass.
fn chunk_rows(g: &Geometry, m: usize, group: usize) -> usize {
    chunk_rows_of(g, m, group, g.in_channels)
}

/// Rows of tiles per chunk of [`run`] with `group` output channels per group and `depth`
/// input channels per pass. The GEMMs repack `U` for every chunk, and with several groups of
/// output channels every chunk transforms every group's kernels anew: chunks grow with the
/// kernel (to half its size, or as large as memory allows with groups), so that this stays
/// a fraction of the work on the tiles.
fn chunk_rows_of(g: &Geometry, m: usize, group: usize, depth: usize) -> usize {
    let xis = (m + 2) * (m + 2);
    let (ci_n, co_n) = (g.in_channels, g.out_channels);
    let budget = if group >= co_n {
        (xis * ci_n * co_n / 2).clamp(CHUNK_FLOATS, MAX_CHUNK_FLOATS)
    } else {
        MAX_CHUNK_FLOATS
    };
    // In several passes the products of every output channel are kept.
    let products = if depth < ci_n { co_n } else { group };
    let per_row = origins(g.width, g.dilation, m).len();
    (budget / (xis * depth.max(products) * per_row)).clamp(1, tile_rows(g, m).max(1))
}

/// Input channels [`run`] transforms and multiplies per pass over a chunk of tiles: all of
/// them, unless a chunk of every channel would be narrower than [`WIDE_CHUNK`] tiles and
/// still not hold them all; then halves of them, down to [`MIN_CHANNELS_PER_PASS`], for
/// wider chunks in the same memory. A narrow chunk's products stream `U` from memory for
/// a few columns each (the head's 4096 -> 512 at 504x504: 72-108 tiles a chunk, at 150-190
/// GFLOP/s); the products accumulate over the passes in order, so the bits stay the same.
pub(crate) fn channels_per_pass(g: &Geometry, m: usize, group: usize) -> usize {
    let per_row = origins(g.width, g.dilation, m).len();
    let narrow = |depth: usize| {
        let rows = chunk_rows_of(g, m, group, depth);
        rows * per_row < WIDE_CHUNK && rows < tile_rows(g, m)
    };
    let mut depth = g.in_channels;
    while depth / 2 >= MIN_CHANNELS_PER_PASS && narrow(depth) {
        depth /= 2;
    }
    depth
}

/// Tiles per chunk from which [`channels_per_pass`] takes every input channel at once.
const WIDE_CHUNK: usize = 256;

/// Fewest input channels per pass: passes over fewer read and write the products more often
/// than they save (one thread, 2048x256x1024: 84 GFLOP/s in passes of 128, 110 in one).
const MIN_CHANNELS_PER_PASS: usize = 1024;

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

/// F(3x3, 3x3), interpolation points 0, ±1, 2: for short rows of sub-images (dilation 12 on
/// a 63x63 map: 5-6 outputs, covered by two tiles of 3 where 2x2 blocks take three).
struct F3;

impl Variant<3, 5> for F3 {
    const BT: [[f32; 5]; 5] = [
        [2.0, -1.0, -2.0, 1.0, 0.0],
        [0.0, -2.0, -1.0, 1.0, 0.0],
        [0.0, 2.0, -3.0, 1.0, 0.0],
        [0.0, -1.0, 0.0, 1.0, 0.0],
        [0.0, 2.0, -1.0, -2.0, 1.0],
    ];
    const G: [[f32; 3]; 5] = [
        [1.0 / 2.0, 0.0, 0.0],
        [-1.0 / 2.0, -1.0 / 2.0, -1.0 / 2.0],
        [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
        [1.0 / 6.0, 1.0 / 3.0, 2.0 / 3.0],
        [0.0, 0.0, 1.0],
    ];
    const AT: [[f32; 5]; 3] = [
        [1.0, 1.0, 1.0, 1.0, 0.0],
        [0.0, 1.0, -1.0, 2.0, 0.0],
        [0.0, 1.0, 1.0, 4.0, 1.0],
    ];
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

/// The planes of consecutive channels, and the `(scale, shift)` of each where they are
/// pre-activated as they are read.
type Planes<'a> = (&'a [f32], Option<(&'a [f32], &'a [f32])>);

/// The map a convolution reads, and the pre-activation it applies to each row as the input
/// transform copies it (a unit's BN and ReLU, without a pass and a map of their own).
#[derive(Clone, Copy)]
pub(crate) struct Input<'a> {
    pub(crate) x: &'a [f32],
    pub(crate) pre: Option<&'a ScaleShift>,
}

impl<'a> Input<'a> {
    /// The map as it is.
    pub(crate) fn plain(x: &'a [f32]) -> Self {
        Input { x, pre: None }
    }
}

/// Floats per chunk buffer (V or M): 4 MiB, up to 32 MiB for wide kernels (see
/// [`chunk_rows`]). A chunk's tiles and products of the shallow levels then stay in the
/// shared cache between the transforms and the products (at 504x504 level 2 took 243-266 ms
/// against 287 in chunks of 16 MiB, level 3 207-226 against 221-233; 2 MiB was slower).
const CHUNK_FLOATS: usize = 1 << 20;
const MAX_CHUNK_FLOATS: usize = 1 << 23;

/// A piece of work whose loops are worth compiling for AVX2 + FMA: the crate is built for
/// baseline x86-64 (4-wide SSE), so [`wide`] runs it through a copy compiled with those
/// features where the CPU has them. No floating-point contraction happens either way, so
/// both give the same bits.
trait Job {
    /// Must be `#[inline(always)]`, so that it is compiled into [`wide`]'s AVX2 copy.
    fn run(self);
}

fn wide<J: Job>(job: J) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2<J: Job>(job: J) {
            job.run()
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports the features `avx2` is compiled with.
            return unsafe { avx2(job) };
        }
    }
    job.run()
}

/// Tiles transformed together: one SIMD register (AVX2) of consecutive tiles of a row.
const LANES: usize = 8;
type Lanes = [f32; LANES];

/// `Σ_l coef[l] x(l)` lane by lane, skipping zero coefficients, in the order of `l`.
#[inline(always)]
fn lin<const N: usize>(coef: &[f32; N], x: impl Fn(usize) -> Lanes) -> Lanes {
    let mut acc = [0f32; LANES];
    for (l, &c) in coef.iter().enumerate() {
        if c != 0.0 {
            let v = x(l);
            for (a, v) in acc.iter_mut().zip(v) {
                *a += c * v;
            }
        }
    }
    acc
}

/// Floats from one position ξ of `gc` output channels' transformed kernels (`[co][ci]`,
/// `Cin` input channels) to the next: one cache line more than they hold. Without it the
/// positions of most groups lie a multiple of 4 KiB apart, so that the kernel transform's
/// stores to all of them (36 under F(4x4)) fall in one set of the first-level cache: a
/// 512x512 F(4x4) transform of weights in memory took 7.0 ns a kernel with the taps
/// prefetched, 4.0 with the line as well.
pub(crate) fn kernel_plane(gc: usize, ci_n: usize) -> usize {
    gc * ci_n + 16
}

/// U = G g G^T for the output channels `cos`, laid out `[ξ][co - cos.start][ci]`, positions
/// [`kernel_plane`] apart.
fn transform_weights<V: Variant<M, A>, const M: usize, const A: usize>(
    g: &Geometry,
    w: &[f32],
    cos: Range<usize>,
) -> Vec<f32> {
    // Not zeroed first: every entry is written (zeroing tens of MiB cost as much as the
    // transform).
    let len = A * A * kernel_plane(cos.len(), g.in_channels);
    let mut u = Vec::<f32>::with_capacity(len);
    // SAFETY: `transform_weights_into` writes all A² x plane entries (every ξ, output and
    // input channel, and the padding) through the pointer, none is read before.
    unsafe {
        let cis = 0..g.in_channels;
        transform_weights_into::<V, M, A>(g, w, Taps::Own, (cos, cis), u.as_mut_ptr(), true);
        u.set_len(len);
    }
    u
}

/// Where the 3x3 taps of the kernel of (output channel `o`, input channel `i`) lie in the
/// weight [`run`] is given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Taps {
    /// `w[o][i][ky][kx]`: the convolution's own weight.
    Own,
    /// `w[i][o][2 - ky][2 - kx]`: the weight of the convolution whose input gradient this is
    /// (`backward::input_gradient_as_convolution`), read in place rather than copied.
    FlippedTransposed,
}

impl Taps {
    /// For output channel `o` of `g`: where its first input channel's taps start, how far
    /// apart consecutive input channels' are, and whether they run backwards.
    fn of(self, g: &Geometry, o: usize) -> (usize, usize, bool) {
        match self {
            Taps::Own => (o * g.in_channels * 9, 9, false),
            Taps::FlippedTransposed => (o * 9, g.out_channels * 9, true),
        }
    }
}

/// [`transform_weights`] of input channels `cis` written to `u`, which must hold `A² x
/// kernel_plane(cos.len(), cis.len())` floats (all written), with the taps where `taps` says,
/// the output channels spread over the threads when `parallel`.
///
/// # Safety
/// `u` must be valid for that many writes, and nothing else may access them meanwhile.
unsafe fn transform_weights_into<V: Variant<M, A>, const M: usize, const A: usize>(
    g: &Geometry,
    w: &[f32],
    taps: Taps,
    (cos, cis): (Range<usize>, Range<usize>),
    u: *mut f32,
    parallel: bool,
) {
    assert_eq!(w.len(), g.out_channels * g.in_channels * 9);
    assert!(cis.end <= g.in_channels);
    let ci_n = cis.len();
    let plane = kernel_plane(cos.len(), ci_n);
    // Output channel `co`'s taps from input channel `cis.start` on.
    let taps_of = |co: usize| {
        let (first, stride, flip) = taps.of(g, co);
        (first + cis.start * stride, stride, flip)
    };
    let c0 = cos.start;
    let up = OutPtr(u);
    let each_channel = |one: &(dyn Fn(usize) + Sync)| {
        if parallel {
            cos.clone().into_par_iter().for_each(one)
        } else {
            cos.clone().for_each(one)
        }
    };
    #[cfg(target_arch = "x86_64")]
    if simd_transforms() {
        for xi in 0..A * A {
            // SAFETY: (caller) the padding after each position lies inside `u`.
            unsafe {
                let pad = u.add(xi * plane + cos.len() * ci_n);
                std::ptr::write_bytes(pad, 0, plane - cos.len() * ci_n)
            }
        }
        return each_channel(&|co| {
            // SAFETY: the CPU has AVX-512F; the taps of every (co, ci) lie inside `w` (its
            // length, asserted, is that of both layouts) and 16 strides fit an i32 for any
            // weight under 2^27 floats' channels; rows (ξ, co) of `u` lie inside it and only
            // this worker (output channel co) writes them.
            unsafe {
                avx512::kernel_transform::<V, M, A>(
                    w,
                    taps_of(co),
                    ci_n,
                    up.get(),
                    (co - c0) * ci_n,
                    plane,
                )
            }
        });
    }
    // SAFETY: (caller) `u` is valid for these writes. Zeroed first (the padding included) so
    // that the slices the workers write through are initialised.
    unsafe { std::ptr::write_bytes(u, 0, A * A * plane) };
    each_channel(&|co| {
        wide(KernelTransform::<V, M, A> {
            w,
            taps: taps_of(co),
            ci_n,
            // SAFETY: rows (ξ, co) of `u` lie inside it; only this worker (output channel
            // co) writes them.
            u: up,
            offset: (co - c0) * ci_n,
            plane,
            variant: PhantomData,
        })
    })
}

/// The transformed kernels of one output channel, [`LANES`] input channels at a time.
struct KernelTransform<'a, V, const M: usize, const A: usize> {
    w: &'a [f32],
    /// [`Taps::of`] this output channel.
    taps: (usize, usize, bool),
    ci_n: usize,
    u: OutPtr,
    offset: usize,
    plane: usize,
    variant: PhantomData<V>,
}

impl<V: Variant<M, A>, const M: usize, const A: usize> Job for KernelTransform<'_, V, M, A> {
    #[inline(always)]
    fn run(self) {
        let (first, stride, flip) = self.taps;
        let ci_n = self.ci_n;
        for ci0 in (0..ci_n).step_by(LANES) {
            let n = LANES.min(ci_n - ci0);
            let mut k = [[[0f32; LANES]; 3]; 3];
            let channels = (ci0..ci0 + n).map(|ci| &self.w[first + ci * stride..][..9]);
            for (lane, taps) in channels.enumerate() {
                for (t, &v) in taps.iter().enumerate() {
                    let t = if flip { 8 - t } else { t };
                    k[t / 3][t % 3][lane] = v;
                }
            }
            // (G g)[r][c], then (G g G^T)[r][c].
            let mut gg = [[[0f32; LANES]; 3]; A];
            for (ggr, row) in gg.iter_mut().zip(&V::G) {
                for (c, ggrc) in ggr.iter_mut().enumerate() {
                    *ggrc = lin(row, |j| k[j][c]);
                }
            }
            for (r, ggr) in gg.iter().enumerate() {
                for (c, row) in V::G.iter().enumerate() {
                    let v = lin(row, |j| ggr[j]);
                    // SAFETY: see `transform_weights`.
                    let dst = unsafe {
                        let at = (r * A + c) * self.plane + self.offset + ci0;
                        std::slice::from_raw_parts_mut(self.u.get().add(at), n)
                    };
                    dst.copy_from_slice(&v[..n]);
                }
            }
        }
    }
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

/// Where the tiles of one image lie. Within a row of tiles, tile `s` starts at column
/// `col_origins[s]`; [`LANES`] consecutive tiles are transformed together, whatever their
/// residue class.
struct Tiling<const M: usize> {
    row_origins: Vec<usize>,
    col_origins: Vec<usize>,
    /// `col_origins` as vector indices, zeros after the end for a whole last register.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    col_origins_i32: Vec<i32>,
    height: usize,
    width: usize,
    dilation: usize,
}

impl<const M: usize> Tiling<M> {
    fn new(g: &Geometry) -> Self {
        let col_origins = origins(g.width, g.dilation, M);
        let col_origins_i32 = col_origins
            .iter()
            .map(|&x| x as i32)
            .chain([0; 16])
            .collect();
        Tiling {
            row_origins: origins(g.height, g.dilation, M),
            col_origins,
            col_origins_i32,
            height: g.height,
            width: g.width,
            dilation: g.dilation,
        }
    }

    /// The rows of tiles of a batch of `batch` images, `(image, row)`, image by image.
    fn batch_rows(&self, batch: usize) -> Vec<(usize, usize)> {
        let per_image = self.row_origins.len();
        (0..batch)
            .flat_map(|n| (0..per_image).map(move |ty| (n, ty)))
            .collect()
    }

    /// Tiles per row of tiles.
    fn per_row(&self) -> usize {
        self.col_origins.len()
    }

    /// Tiles per row rounded up to whole groups of [`LANES`].
    fn padded_row(&self) -> usize {
        self.per_row().next_multiple_of(LANES)
    }
}

/// A worker's buffers for [`TileTransform`].
struct TileScratch {
    /// One row of the plane, shifted right by the transform's reach before the origin, zeros
    /// around (as far as the last tile's taps reach).
    padded: Vec<f32>,
    /// `[l][j][tile]`: tap `j` of row `l` of every tile of the row of tiles.
    taps: Vec<f32>,
}

impl TileScratch {
    fn new<const M: usize, const R: usize>(t: &Tiling<M>) -> Self {
        TileScratch {
            padded: vec![0f32; t.width + (R + M + 1) * t.dilation],
            taps: vec![0f32; R * R * t.padded_row()],
        }
    }
}

/// The matrix `L` of a [`TileTransform`] (`A x R`) and how many steps up and left of its
/// origin a tile starts, as constants, so that the transform's zero and unit coefficients
/// cost nothing.
trait TileMatrix<const A: usize, const R: usize>: Sync {
    const L: [[f32; R]; A];
    const BEFORE: usize;
}

/// The input transform `B^T` of variant `V`, on the `A x A` windows the tiles read.
struct InputTiles<V, const M: usize>(PhantomData<V>);

impl<V: Variant<M, A>, const M: usize, const A: usize> TileMatrix<A, A> for InputTiles<V, M> {
    const L: [[f32; A]; A] = V::BT;
    const BEFORE: usize = 1;
}

/// The output gradient's transform `A = (A^T)^T` of variant `V`, on the `m x m` blocks the
/// tiles write.
struct GradientTiles<V>(PhantomData<V>);

impl<V: Variant<M, A>, const M: usize, const A: usize> TileMatrix<A, M> for GradientTiles<V> {
    const L: [[f32; M]; A] = {
        let mut l = [[0f32; M]; A];
        let mut k = 0;
        while k < A {
            let mut j = 0;
            while j < M {
                l[k][j] = V::AT[j][k];
                j += 1;
            }
            k += 1;
        }
        l
    };
    const BEFORE: usize = 0;
}

/// `L d L^T` of every `R x R` tile `d` of some rows of tiles of one plane (a tile starting
/// `T::BEFORE` steps of `d` up and left of its origin), written to `v[ξ * chunk + p]` (`p`:
/// the tile's index in the chunk). The input transform is `L = B^T` on the `A x A` windows the
/// tiles read; the output gradient's is `L = A` on the `m x m` blocks they write. Each row a
/// row of tiles reads is first gathered into one contiguous row per tap, so [`LANES`]
/// consecutive tiles are transformed with vector loads and stores.
struct TileTransform<'a, T, const M: usize, const A: usize, const R: usize> {
    tiling: &'a Tiling<M>,
    scratch: &'a mut TileScratch,
    /// The channel's plane of image 0; image `n`'s is `n * image_stride` further.
    plane: &'a [f32],
    image_stride: usize,
    /// The channel's pre-activation `(scale, shift)`, applied to the plane as it is read.
    pre: Option<(f32, f32)>,
    /// The chunk's rows of tiles, `(image, row)`.
    rows: &'a [(usize, usize)],
    v: &'a mut [f32],
    chunk: usize,
    matrix: PhantomData<T>,
}

impl<T: TileMatrix<A, R>, const M: usize, const A: usize, const R: usize> Job
    for TileTransform<'_, T, M, A, R>
{
    #[inline(always)]
    fn run(self) {
        let t = self.tiling;
        let (wd, d, ntx, stride) = (t.width, t.dilation, t.per_row(), t.padded_row());
        let hw = t.height * wd;
        let shift = T::BEFORE * d;
        let TileScratch { padded, taps } = self.scratch;
        let mut across = [[[0f32; LANES]; A]; R];
        for (r, &(n, ty)) in self.rows.iter().enumerate() {
            let plane = &self.plane[n * self.image_stride..][..hw];
            let y0 = t.row_origins[ty];
            for l in 0..R {
                let rows_taps = &mut taps[l * R * stride..(l + 1) * R * stride];
                let y = (y0 + l * d).checked_sub(shift).filter(|&y| y < t.height);
                let Some(y) = y else {
                    rows_taps.fill(0.0);
                    continue;
                };
                let src = &plane[y * wd..(y + 1) * wd];
                copy_row(src, self.pre, &mut padded[shift..shift + wd]);
                for (j, tap) in rows_taps.chunks_exact_mut(stride).enumerate() {
                    if d == 1 {
                        // Undilated: tile s starts at m s; a fixed stride the compiler can
                        // vectorise.
                        let src = padded[j..].chunks_exact(M);
                        for (o, c) in tap[..ntx].iter_mut().zip(src) {
                            *o = c[0];
                        }
                    } else {
                        for (o, &x0) in tap.iter_mut().zip(&t.col_origins) {
                            *o = padded[x0 + j * d];
                        }
                    }
                }
            }
            let taps = &*taps;
            for s0 in (0..ntx).step_by(LANES) {
                // Along x (d L^T), then along y (L (d L^T)).
                for (l, row) in across.iter_mut().enumerate() {
                    for (k, coef) in T::L.iter().enumerate() {
                        row[k] = lin(coef, |j| {
                            taps[(l * R + j) * stride + s0..][..LANES]
                                .try_into()
                                .unwrap()
                        });
                    }
                }
                let n = LANES.min(ntx - s0);
                let p = r * ntx + s0;
                let positions = (0..A).flat_map(|k1| (0..A).map(move |k2| (k1, k2)));
                for (xi, (k1, k2)) in positions.enumerate() {
                    let v = lin(&T::L[k1], |l| across[l][k2]);
                    let dst = &mut self.v[xi * self.chunk + p..];
                    if n == LANES {
                        dst[..LANES].copy_from_slice(&v);
                    } else {
                        dst[..n].copy_from_slice(&v[..n]);
                    }
                }
            }
        }
    }
}

/// `Y = A^T M A` (+ bias) (+ residual) of some rows of tiles of one output channel, whose
/// products are at `m[ξ * chunk + p]`, written into the channel's planes; [`LANES`] tiles at
/// a time.
struct OutputTransform<'a, V, const M: usize, const A: usize> {
    tiling: &'a Tiling<M>,
    m: &'a [f32],
    chunk: usize,
    rows: &'a [(usize, usize)],
    bias: f32,
    /// Plane `n` of the output channel is at `out + n * image_stride`, of its residual (if
    /// any) at `residual + n * image_stride`.
    out: OutPtr,
    residual: Option<InPtr>,
    image_stride: usize,
    variant: PhantomData<V>,
}

impl<V: Variant<M, A>, const M: usize, const A: usize> Job for OutputTransform<'_, V, M, A> {
    #[inline(always)]
    fn run(self) {
        let t = self.tiling;
        let (wd, d, ntx) = (t.width, t.dilation, t.per_row());
        let hw = t.height * wd;
        let mut down = [[[0f32; LANES]; A]; M];
        for (r, &(n, ty)) in self.rows.iter().enumerate() {
            // SAFETY: plane n of this output channel lies inside the output (and the
            // residual), and only this worker writes it while the transform runs.
            let yplane = unsafe {
                let at = self.out.get().add(n * self.image_stride);
                std::slice::from_raw_parts_mut(at.cast::<MaybeUninit<f32>>(), hw)
            };
            let rplane = self.residual.map(|r| unsafe {
                std::slice::from_raw_parts(r.get().add(n * self.image_stride), hw)
            });
            let y0 = t.row_origins[ty];
            let rows = (0..M).take_while(|i| y0 + i * d < t.height).count();
            for s0 in (0..ntx).step_by(LANES) {
                let n = LANES.min(ntx - s0);
                let p = r * ntx + s0;
                let prod = |xi: usize| -> Lanes {
                    let src = &self.m[xi * self.chunk + p..];
                    if n == LANES {
                        src[..LANES].try_into().unwrap()
                    } else {
                        let mut v = [0f32; LANES];
                        v[..n].copy_from_slice(&src[..n]);
                        v
                    }
                };
                // Along y (A^T M), then along x ((A^T M) A).
                for (row, coef) in down.iter_mut().zip(&V::AT).take(rows) {
                    for (k2, v) in row.iter_mut().enumerate() {
                        *v = lin(coef, |k1| prod(k1 * A + k2));
                    }
                }
                let x0s = &t.col_origins[s0..s0 + n];
                for (i, down) in down.iter().enumerate().take(rows) {
                    let at = (y0 + i * d) * wd;
                    let yrow = &mut yplane[at..at + wd];
                    let rrow = rplane.map(|r| &r[at..at + wd]);
                    for (j, coef) in V::AT.iter().enumerate() {
                        let y = lin(coef, |k2| down[k2]);
                        for (&x0, &v) in x0s.iter().zip(&y) {
                            let x = x0 + j * d;
                            if let Some(o) = yrow.get_mut(x) {
                                let v = v + self.bias;
                                o.write(rrow.map_or(v, |r| v + r[x]));
                            }
                        }
                    }
                }
            }
        }
    }
}

/// [`TileTransform`] of every channel of `planes` (`channels` per image) into `out`
/// (`[c][ξ][p]`, `chunk` tiles per ξ), the channels spread over the threads; channel `c`
/// pre-activated by `pre`'s `(scale[c], shift[c])` where there is one.
fn transform_tiles<T: TileMatrix<A, R>, const M: usize, const A: usize, const R: usize>(
    tiling: &Tiling<M>,
    (planes, pre): Planes,
    channels: usize,
    rows: &[(usize, usize)],
    out: &mut [f32],
    chunk: usize,
) {
    let hw = tiling.height * tiling.width;
    out.par_chunks_mut(A * A * chunk).enumerate().for_each_init(
        || TileScratch::new::<M, R>(tiling),
        |scratch, (c, v)| {
            wide(TileTransform::<T, M, A, R> {
                tiling,
                scratch,
                plane: &planes[c * hw..],
                image_stride: channels * hw,
                pre: pre.map(|(scale, shift)| (scale[c], shift[c])),
                rows,
                v,
                chunk,
                matrix: PhantomData,
            })
        },
    )
}

/// Whether the input and output transforms run in AVX-512 ([`avx512`]) rather than the
/// portable code (a test can ask for the portable code on its thread).
fn simd_transforms() -> bool {
    #[cfg(test)]
    if PORTABLE.with(|p| p.get()) {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    return avx512::available();
    #[cfg(not(target_arch = "x86_64"))]
    false
}

#[cfg(test)]
thread_local! {
    static PORTABLE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Run `f` with the portable transforms on this thread.
#[cfg(test)]
pub(crate) fn with_portable_transforms<T>(f: impl FnOnce() -> T) -> T {
    PORTABLE.with(|p| p.set(true));
    let t = f();
    PORTABLE.with(|p| p.set(false));
    t
}

/// `V = B^T d B` of every channel of `planes` (pre-activated by `pre`, if any) into `out`
/// (`[c][ξ][p]`), as [`transform_tiles`] with [`InputTiles`] computes it: in AVX-512 where the
/// CPU has it.
fn transform_inputs<V: Variant<M, A>, const M: usize, const A: usize>(
    tiling: &Tiling<M>,
    (planes, pre): Planes,
    channels: usize,
    rows: &[(usize, usize)],
    out: &mut [f32],
    chunk: usize,
) {
    #[cfg(target_arch = "x86_64")]
    if simd_transforms() {
        let hw = tiling.height * tiling.width;
        let padded = A * avx512::padded_row::<M, A>(tiling);
        out.par_chunks_mut(A * A * chunk).enumerate().for_each_init(
            || vec![0f32; padded],
            |padded, (c, v)| {
                // SAFETY: the CPU has AVX-512F.
                unsafe {
                    avx512::input_tiles::<V, M, A>(
                        tiling,
                        (&planes[c * hw..], channels * hw),
                        pre.map(|(scale, shift)| (scale[c], shift[c])),
                        rows,
                        v,
                        chunk,
                        padded,
                    )
                }
            },
        );
        return;
    }
    let input = (planes, pre);
    transform_tiles::<InputTiles<V, M>, M, A, A>(tiling, input, channels, rows, out, chunk)
}

/// `f(ξ)` for every position of the transformed tile: the `(m + 2)²` independent GEMMs, each
/// single-threaded, spread over the threads (one synchronisation for all of them).
fn for_each_position(positions: usize, f: impl Fn(usize) + Sync + Send) {
    if rayon::current_num_threads() > 1 {
        (0..positions).into_par_iter().for_each(f);
    } else {
        (0..positions).for_each(f);
    }
}

/// `out = conv(x, w) (+ bias)` for geometries where [`applies`] holds, with the block of
/// [`block`].
pub fn conv2d(g: &Geometry, x: &[f32], w: &[f32], bias: Option<&[f32]>, out: &mut [f32]) {
    conv2d_into(g, Input::plain(x), w, bias, Output::over(out))
}

/// [`conv2d`] of an [`Input`] into an [`Output`].
pub(crate) fn conv2d_into(g: &Geometry, x: Input, w: &[f32], bias: Option<&[f32]>, out: Output) {
    run_fresh(g, block(g), w, Taps::Own, x, bias, out)
}

/// [`conv2d`] with the output block edge given: 2, 3 or 4 (F(m x m, 3x3)).
pub fn conv2d_blocks(
    g: &Geometry,
    m: usize,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    conv2d_blocks_into(g, m, Input::plain(x), w, bias, Output::over(out))
}

/// [`conv2d_blocks`] of an [`Input`] into an [`Output`].
pub(crate) fn conv2d_blocks_into(
    g: &Geometry,
    m: usize,
    x: Input,
    w: &[f32],
    bias: Option<&[f32]>,
    out: Output,
) {
    run_fresh(g, m, w, Taps::Own, x, bias, out)
}

/// `dx = dL/dx` of a 3x3 stride-1 "same" convolution with weight `w` (`Cout x Cin x 3 x 3`),
/// given `dy = dL/dy`: the convolution `t` of `dy` with `w` flipped and its channel axes
/// swapped (`t`: [`super::backward::input_gradient_as_convolution`], where [`applies`]
/// holds), its taps read from `w` in place. The same bits as [`conv2d`] of `t` on
/// [`super::backward::flipped_transposed_kernel`], without that copy (level 7's 75 MB took up
/// to 108 ms).
pub fn input_gradient(t: &Geometry, dy: &[f32], w: &[f32], dx: &mut [f32]) {
    run_fresh(
        t,
        block_written(t),
        w,
        Taps::FlippedTransposed,
        Input::plain(dy),
        None,
        Output::over(dx),
    )
}

/// [`run`] with the kernels of `w` (taps where `taps` says) transformed in the pass itself, in
/// [`fresh_group`]'s groups and [`Order::best`]'s loop order.
fn run_fresh(
    g: &Geometry,
    m: usize,
    w: &[f32],
    taps: Taps,
    x: Input,
    bias: Option<&[f32]>,
    out: Output,
) {
    let in_cache = in_cache_group(g, m).filter(|_| taps == Taps::Own);
    let (group, order) = match in_cache {
        Some(group) => (group, Order::KernelsInCache),
        None => {
            let group = fresh_group(g, m);
            (group, Order::best(g, m, group))
        }
    };
    run_block(g, m, group, x, Kernels::Weight(w, taps, order), bias, out)
}

/// Output channels per group for [`Order::KernelsInCache`], where it applies: every tile fits
/// one chunk small enough for the shared cache to serve it to every group again, and the
/// whole transformed kernel would not fit there.
///
/// Level 4 at 28x28, batch 1 (37.7 MB of kernels under F(4x4), 3.6 MB of tiles): 10.8-11.3
/// ms under F(2x2) as before, 8.6-9.6 in this order (kept kernels: 7.1-7.9). Under F(2x2)
/// only for thin products (up to 64 tiles), whose GEMMs are short next to their kernel
/// transform: level 5 at 14x14, batch 1 (49 tiles), 7.8-8.2 ms against 8.6-8.9, and A1's
/// level 5 at batch 1 faster in 4 of 5 interleaved rounds (42-51 ms against 45-55); level 7
/// at 7x7, batch 8 (128 tiles), measured slower or on par. Where the kernel fits the shared
/// cache its transform is cheap already, and this order measured slower (level 3 at 56x56:
/// 8.4-9.1 ms against 7.5-7.9).
pub(crate) fn in_cache_group(g: &Geometry, m: usize) -> Option<usize> {
    let xis = (m + 2) * (m + 2);
    let (ci_n, co_n) = (g.in_channels, g.out_channels);
    let one_small_chunk =
        ci_n * xis * tiles(g, m) <= IN_CACHE_TILE_FLOATS && tile_rows(g, m) <= chunk_rows(g, m, 1);
    let thin = m == 2 && tiles(g, m) <= IN_CACHE_F2_MAX_TILES;
    if !(m == 4 || thin) || !one_small_chunk || xis * ci_n * co_n <= SHARED_CACHE_KERNEL_FLOATS {
        return None;
    }
    // Equal groups, as many as a multiple of the threads, for the balance.
    let small = (IN_CACHE_KERNEL_FLOATS / (xis * ci_n)).clamp(1, co_n);
    let threads = rayon::current_num_threads().max(1);
    let groups = co_n.div_ceil(small).next_multiple_of(threads);
    Some(co_n.div_ceil(groups))
}

/// Most tiles for which F(2x2) kernels are made in the cache (see [`in_cache_group`]).
const IN_CACHE_F2_MAX_TILES: usize = 64;

/// Largest transformed tiles (floats) of [`Order::KernelsInCache`]: 8 MiB.
const IN_CACHE_TILE_FLOATS: usize = 1 << 21;

/// Largest group of kernels (floats) of [`Order::KernelsInCache`]: 4 MiB (measured on level 4
/// at 28x28: 8.6-9.6 ms; 1 and 2 MiB 9.4-9.6, 16 MiB 10.1).
const IN_CACHE_KERNEL_FLOATS: usize = 1 << 20;

/// Largest transformed kernel (floats) made whole where [`Order::KernelsInCache`] could
/// apply: 16 MiB, half the shared cache.
const SHARED_CACHE_KERNEL_FLOATS: usize = 1 << 22;

/// [`run`] for output blocks of edge `m`: 2, 3 or 4 (F(m x m, 3x3)).
fn run_block(
    g: &Geometry,
    m: usize,
    group: usize,
    x: Input,
    kernels: Kernels,
    bias: Option<&[f32]>,
    out: Output,
) {
    match m {
        4 => run::<F4, 4, 6>(g, group, x, kernels, bias, out),
        3 => run::<F3, 3, 5>(g, group, x, kernels, bias, out),
        2 => run::<F2, 2, 4>(g, group, x, kernels, bias, out),
        _ => panic!("Winograd blocks are 2x2, 3x3 or 4x4, not {m}x{m}"),
    }
}

/// Output channels per group for kernels transformed in the pass itself. Where one chunk
/// holds every tile (small maps), a transformed kernel over 30 MiB (level 5's 1024 -> 1024
/// under F(2x2) at 14x14: 67 MB) is split into groups that the heap serves again in every
/// pass: a whole one is a fresh mapping each time, whose page faults cost more than the
/// products (level 5's 1024 -> 512: 21-25 ms whole, 11-12 ms in groups), and [`FreshKernels`]
/// keeps a buffer as large as the largest group. Elsewhere each chunk (or group) would
/// transform every group (or the tiles) anew, so the groups stay as large as [`output_group`]
/// allows.
pub(crate) fn fresh_group(g: &Geometry, m: usize) -> usize {
    let xis = (m + 2) * (m + 2);
    let small = (FRESH_GROUP_FLOATS / (xis * g.in_channels)).clamp(1, g.out_channels.max(1));
    if small == g.out_channels || tile_rows(g, m) > chunk_rows(g, m, small) {
        return output_group(g, xis);
    }
    // Equal groups, as many as a multiple of the threads, for the transforms' balance.
    let threads = rayon::current_num_threads().max(1);
    let groups = g.out_channels.div_ceil(small).next_multiple_of(threads);
    g.out_channels.div_ceil(groups).max(1)
}

/// Largest group of kernels transformed in the pass itself where one chunk holds every tile
/// (floats): 30 MiB, under the 32 MiB up to which [`super::allocator::keep_freed_memory`]
/// has the heap serve requests.
const FRESH_GROUP_FLOATS: usize = 30 << 18;

/// [`conv2d_blocks`] with `group` output channels per group, in the loop order given.
#[cfg(test)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv2d_grouped(
    g: &Geometry,
    m: usize,
    group: usize,
    order: Order,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    run_block(
        g,
        m,
        group,
        Input::plain(x),
        Kernels::Weight(w, Taps::Own, order),
        bias,
        Output::over(out),
    )
}

/// Output channels per group: all of them unless their transformed kernel would exceed
/// [`max_group_floats`], else equal groups that stay within it.
fn output_group(g: &Geometry, xis: usize) -> usize {
    let groups = (xis * g.in_channels * g.out_channels).div_ceil(max_group_floats(g));
    g.out_channels.div_ceil(groups.max(1))
}

/// The transformed kernels `U = G g G^T` of one weight under F(m x m, 3x3), in the groups of
/// output channels [`conv2d`] multiplies them in: made once and kept, they serve every pass
/// with the same constant weight (see [`super::KeptKernels`]). They take `(m + 2)² / 9` times
/// the weight's memory: 1.8x for F(2x2), 4x for F(4x4).
pub struct Transformed {
    m: usize,
    group: usize,
    in_channels: usize,
    out_channels: usize,
    /// Per group of output channels, `[ξ][co - group start][ci]`.
    groups: Vec<Vec<f32>>,
}

impl Transformed {
    /// The kernels of `w` (`Cout * Cin * 9`, channels of `g`) for output blocks of edge `m`.
    pub fn new(g: &Geometry, m: usize, w: &[f32]) -> Self {
        let group = output_group(g, (m + 2) * (m + 2));
        // Multiplied pass by pass over the input channels, they serve every output channel
        // at once: each product copies its tiles (`product::multiply`'s panels), so groups
        // would copy them once per group (the head at 504x504: 1.25x the fresh kernels' time).
        let group = if channels_per_pass(g, m, g.out_channels) < g.in_channels {
            g.out_channels
        } else {
            group
        };
        Self::grouped(g, m, group, w)
    }

    /// [`Transformed::new`] with `group` output channels per group.
    pub(crate) fn grouped(g: &Geometry, m: usize, group: usize, w: &[f32]) -> Self {
        assert_eq!(w.len(), g.out_channels * g.in_channels * 9);
        let group = group.clamp(1, g.out_channels.max(1));
        let groups = (0..g.out_channels)
            .step_by(group)
            .map(|c0| {
                let cos = c0..(c0 + group).min(g.out_channels);
                match m {
                    4 => transform_weights::<F4, 4, 6>(g, w, cos),
                    3 => transform_weights::<F3, 3, 5>(g, w, cos),
                    2 => transform_weights::<F2, 2, 4>(g, w, cos),
                    _ => panic!("Winograd blocks are 2x2, 3x3 or 4x4, not {m}x{m}"),
                }
            })
            .collect();
        Transformed {
            m,
            group,
            in_channels: g.in_channels,
            out_channels: g.out_channels,
            groups,
        }
    }

    /// The output block edge they were made for.
    pub fn block(&self) -> usize {
        self.m
    }

    /// Bytes they hold.
    pub fn bytes(&self) -> usize {
        self.groups.iter().map(|u| u.len() * 4).sum()
    }
}

/// `out = conv(x, w) (+ bias)` with the kernels of `w` transformed beforehand, for geometries
/// where [`applies_kept`] holds; the same bits as [`conv2d_blocks`] with `u`'s block.
pub fn conv2d_transformed(
    g: &Geometry,
    u: &Transformed,
    x: &[f32],
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    conv2d_transformed_into(g, u, Input::plain(x), bias, Output::over(out))
}

/// [`conv2d_transformed`] of an [`Input`] into an [`Output`].
pub(crate) fn conv2d_transformed_into(
    g: &Geometry,
    u: &Transformed,
    x: Input,
    bias: Option<&[f32]>,
    out: Output,
) {
    assert_eq!(
        (u.in_channels, u.out_channels),
        (g.in_channels, g.out_channels)
    );
    run_block(g, u.m, u.group, x, Kernels::Kept(u), bias, out)
}

/// A buffer of [`run`]'s transformed tiles or products, kept by the calling thread for its
/// next convolution: allocating and zeroing them anew (up to 32 MiB each) took about a fifth
/// of a 128-channel convolution at 112x112. Every element [`run`] reads it writes first.
struct Scratch {
    buffer: Vec<f32>,
    len: usize,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Vec<Vec<f32>>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Scratch {
    /// This thread's largest kept buffer (or a new one), at least `len` floats long.
    fn take(len: usize) -> Scratch {
        let mut buffer = SCRATCH.with(|s| s.borrow_mut().pop()).unwrap_or_default();
        if buffer.len() < len {
            buffer.resize(len, 0.0);
        }
        Scratch { buffer, len }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let buffer = std::mem::take(&mut self.buffer);
        SCRATCH.with(|s| {
            let mut kept = s.borrow_mut();
            kept.push(buffer);
            // The two largest (tiles, products) are all one convolution uses; smallest
            // first, so `pop` gives the largest.
            kept.sort_by_key(Vec::len);
            if kept.len() > 2 {
                kept.remove(0);
            }
        });
    }
}

impl std::ops::Deref for Scratch {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.buffer[..self.len]
    }
}

impl std::ops::DerefMut for Scratch {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.buffer[..self.len]
    }
}

/// The buffer of the kernels [`run`] transforms in the pass itself, kept by the calling thread
/// for its next convolution: a transformed kernel over 32 MiB is otherwise a fresh mapping in
/// every pass, whose page faults cost more than the transform (level 5's 1024 -> 512 at
/// 504x504, output stride 8: 25 ms, against 12 in a reused buffer). Only its capacity is
/// kept; every entry is written before it is read.
struct FreshKernels {
    buffer: Vec<f32>,
}

thread_local! {
    static FRESH_KERNELS: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

impl FreshKernels {
    /// This thread's kept buffer, with room for at least `len` floats.
    fn take(len: usize) -> FreshKernels {
        let mut buffer = FRESH_KERNELS.take();
        if buffer.capacity() < len {
            buffer = Vec::with_capacity(len);
        }
        FreshKernels { buffer }
    }

    /// The kernels of output channels `cos` transformed into the buffer ([`transform_weights`]).
    ///
    /// # Safety
    /// The buffer must have room for `A² x kernel_plane(cos.len(), Cin)` floats; the slice
    /// returned by an earlier call must no longer be used.
    unsafe fn fill<'a, V: Variant<M, A>, const M: usize, const A: usize>(
        &mut self,
        g: &Geometry,
        w: &[f32],
        taps: Taps,
        cos: Range<usize>,
        cis: Range<usize>,
    ) -> &'a [f32] {
        let len = A * A * kernel_plane(cos.len(), cis.len());
        debug_assert!(len <= self.buffer.capacity());
        let u = self.buffer.as_mut_ptr();
        // SAFETY: (caller) room for `len` floats, no other user; all of them are written.
        unsafe {
            transform_weights_into::<V, M, A>(g, w, taps, (cos, cis), u, true);
            std::slice::from_raw_parts(u, len)
        }
    }
}

impl Drop for FreshKernels {
    fn drop(&mut self) {
        FRESH_KERNELS.set(std::mem::take(&mut self.buffer));
    }
}

/// Where [`run`] finds `U`: transformed in this pass from the weight (in the loop order
/// given), or kept from before.
enum Kernels<'a> {
    Weight(&'a [f32], Taps, Order),
    Kept(&'a Transformed),
}

/// The loops of [`run`] over chunks of tiles and groups of output channels, for kernels
/// transformed in the pass itself. Both give the same bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Order {
    /// The tiles transformed once, every group's kernels once per chunk of tiles.
    TilesOuter,
    /// Every group's kernels transformed once, the tiles once per group.
    KernelsOuter,
    /// Per chunk of tiles, each worker transforms a small group's kernels into a buffer that
    /// stays in its cache, multiplies them and writes their output channels (see
    /// [`in_cache_group`]).
    KernelsInCache,
}

impl Order {
    /// [`Order::KernelsOuter`] where the kernels are in several groups, the tiles in several
    /// chunks, and it writes fewer transformed floats: level 7 at output stride 8 (3 groups of
    /// kernels, 1024 -> 2048 under F(4x4); on a 504x504 image 2 chunks of tiles a ninth of
    /// the kernels' size, on a 1024x2048 frame 11 of about their size).
    pub(crate) fn best(g: &Geometry, m: usize, group: usize) -> Order {
        let groups = g.out_channels.div_ceil(group.max(1));
        let chunks = chunks(g, m, group);
        // Transformed floats per (ξ, input channel). In passes over part of the input
        // channels the tiles are transformed once, the kernels once per chunk, pass by pass.
        let (kernels, tiles) = (g.out_channels, tiles(g, m));
        let sliced = channels_per_pass(g, m, group) < g.in_channels;
        if !sliced
            && groups > 1
            && chunks > 1
            && kernels + groups * tiles < chunks * kernels + tiles
        {
            Order::KernelsOuter
        } else {
            Order::TilesOuter
        }
    }
}

fn run<V: Variant<M, A>, const M: usize, const A: usize>(
    g: &Geometry,
    group: usize,
    input: Input,
    kernels: Kernels,
    bias: Option<&[f32]>,
    mut out: Output,
) {
    let x = input.x;
    assert!(g.kernel == 3 && g.stride == 1 && g.padding == g.dilation);
    let (ci_n, co_n) = (g.in_channels, g.out_channels);
    let hw = g.height * g.width;
    let xis = A * A;
    assert_eq!(x.len(), g.batch * ci_n * hw);
    assert_eq!(out.y.len(), g.batch * co_n * hw);
    if let Some(r) = out.residual {
        assert_eq!(r.len(), out.y.len());
    }
    match kernels {
        Kernels::Weight(w, ..) => assert_eq!(w.len(), co_n * ci_n * 9),
        Kernels::Kept(u) => assert_eq!((u.m, u.group), (M, group)),
    }

    let tiling = Tiling::<M>::new(g);
    let ntx = tiling.per_row();
    // A chunk holds whole rows of tiles, of any image of the batch.
    let batch_rows = tiling.batch_rows(g.batch);
    assert!(group >= 1);
    let group = group.min(co_n);
    let single = group == co_n;
    let in_cache = matches!(kernels, Kernels::Weight(_, _, Order::KernelsInCache));
    let kernels_outer = matches!(kernels, Kernels::Weight(_, _, Order::KernelsOuter));
    let depth = if in_cache || kernels_outer {
        ci_n
    } else {
        channels_per_pass(g, M, group)
    };
    // The passes over the input channels: one, or several whose products accumulate.
    let passes: Vec<Range<usize>> = (0..ci_n)
        .step_by(depth)
        .map(|k0| k0..(k0 + depth).min(ci_n))
        .collect();
    let sliced = passes.len() > 1;
    let rows_per_chunk = chunk_rows_of(g, M, group, depth);
    let chunk = rows_per_chunk * ntx;
    let mut v = Scratch::take(depth * xis * chunk);
    // With several passes the products of every output channel add up over them.
    let products = if in_cache {
        0
    } else if sliced {
        co_n
    } else {
        group
    };
    let mut m = Scratch::take(products * xis * chunk);
    let out_ptr = OutPtr(out.y_ptr());
    let residual = out.residual.map(|r| InPtr(r.as_ptr()));
    let simd = simd_transforms();
    #[cfg(target_arch = "x86_64")]
    let in_registers = simd && product::available();
    // Kernels made pass by pass take as many output channels at once as a group of whole
    // ones would hold: the fewer products a pass has, the more often each copies its tiles
    // (`product::multiply`'s panels).
    let pass_group = match kernels {
        Kernels::Weight(..) if sliced && !single => {
            (max_group_floats(g) / (xis * depth)).clamp(group, co_n)
        }
        _ => group,
    };
    let mut fresh = match kernels {
        Kernels::Weight(..) if sliced => FreshKernels::take(xis * kernel_plane(pass_group, depth)),
        Kernels::Weight(..) if !in_cache => FreshKernels::take(xis * kernel_plane(group, ci_n)),
        _ => FreshKernels::take(0),
    };
    // 1. V[c][ξ][p] = B^T d B for the input channels of one pass.
    let transform = |rows: &[(usize, usize)], pass: &Range<usize>, v: &mut [f32]| {
        let (x, v) = (&x[pass.start * hw..], &mut v[..pass.len() * xis * chunk]);
        let pre = input.pre.map(|p| p.channels_from(pass.start));
        transform_inputs::<V, M, A>(&tiling, (x, pre), ci_n, rows, v, chunk)
    };
    // 2. M_ξ (gc x pc) (+)= U_ξ (gc x pass) V_ξ (pass x pc) for `gc` output channels, adding
    // onto the earlier passes' sums. `u` is U_ξ's first row from the pass's first input
    // channel on, its rows `u_row` apart.
    let multiply = |xi: usize, (gc, pc): (usize, usize), pass: &Range<usize>, v, m, (u, u_row)| {
        let (v, m, u): (InPtr, OutPtr, InPtr) = (v, m, u);
        let (depth, accumulate) = (pass.len(), pass.start > 0);
        // SAFETY: V_ξ's rows (one per input channel) and M_ξ's (one per output channel) are
        // A²*chunk apart from ξ*chunk on, so the destinations of different ξ are disjoint;
        // (callers) U_ξ's rows hold the pass's input channels.
        unsafe {
            #[cfg(target_arch = "x86_64")]
            if in_registers {
                return product::multiply(
                    (gc, pc, depth),
                    (m.get().add(xi * chunk), xis * chunk, accumulate),
                    (u.get(), u_row),
                    (v.get().add(xi * chunk), xis * chunk),
                );
            }
            gemm_strided(
                (gc, pc, depth),
                Strided(m.get().add(xi * chunk) as *const f32, 1, xis * chunk),
                accumulate,
                Strided(u.get(), 1, u_row),
                Strided(v.get().add(xi * chunk), 1, xis * chunk),
                Parallelism::None,
            )
        }
    };
    // U_ξ of kernels `u` laid out `[ξ][co][ci]` for `gc` output channels and `cis` input
    // channels, from input channel `from` on.
    let position = |u: InPtr, xi: usize, gc: usize, (cis, from): (usize, usize)| {
        // SAFETY: (callers) `u` holds A² x kernel_plane(gc, cis) floats, and from < cis.
        (
            InPtr(unsafe { u.get().add(xi * kernel_plane(gc, cis) + from) }),
            cis,
        )
    };
    // 3. Y = A^T M A for output channel `co`, from its products `mc`, scattered to the image.
    let write = |co: usize, mc: &[f32], rows: &[(usize, usize)]| {
        let bias = bias.map_or(0.0, |b| b[co]);
        #[cfg(target_arch = "x86_64")]
        if simd {
            // SAFETY: the CPU has AVX-512F; plane (0, co) is inside `out` and the residual
            // (asserted lengths) and only this worker writes channel co.
            unsafe {
                let out = out_ptr.get().add(co * hw);
                let residual = residual.map(|r| r.get().add(co * hw));
                let planes = (out, residual, co_n * hw);
                avx512::output_tiles::<V, M, A>(&tiling, mc, chunk, rows, bias, planes)
            }
            return;
        }
        wide(OutputTransform::<V, M, A> {
            tiling: &tiling,
            m: mc,
            chunk,
            rows,
            bias,
            // SAFETY: offsets of plane (0, co), inside `out` and the residual (asserted
            // lengths).
            out: OutPtr(unsafe { out_ptr.get().add(co * hw) }),
            residual: residual.map(|r| InPtr(unsafe { r.get().add(co * hw) })),
            image_stride: co_n * hw,
            variant: PhantomData,
        })
    };
    let write_group = |rows: &[(usize, usize)], m: &[f32], cos: Range<usize>| {
        m[..cos.len() * xis * chunk]
            .par_chunks(xis * chunk)
            .enumerate()
            .for_each(|(i, mc)| write(cos.start + i, mc, rows));
    };
    // Every ξ's product of one pass for output channels `cos`, into `m` (their rows first),
    // `u` their kernels (`[ξ][co][ci]`, `cis` input channels from `from` on).
    let multiply_pass = |rows: &[(usize, usize)],
                         pass: &Range<usize>,
                         v: &[f32],
                         m: &mut [f32],
                         cos: &Range<usize>,
                         (u, cis, from): (&[f32], usize, usize)| {
        let (gc, pc) = (cos.len(), rows.len() * ntx);
        let (mp, vp, up) = (OutPtr(m.as_mut_ptr()), InPtr(v.as_ptr()), InPtr(u.as_ptr()));
        for_each_position(xis, |xi| {
            multiply(
                xi,
                (gc, pc),
                pass,
                vp,
                mp,
                position(up, xi, gc, (cis, from)),
            )
        });
    };
    let groups = (0..co_n)
        .step_by(group)
        .map(|c0| c0..(c0 + group).min(co_n));
    let chunks = batch_rows.chunks(rows_per_chunk);
    match kernels {
        Kernels::Weight(w, taps, Order::KernelsInCache) => {
            let groups: Vec<_> = groups.collect();
            for rows in chunks {
                transform(rows, &passes[0], &mut v);
                let vp = InPtr(v.as_ptr());
                groups.par_iter().for_each(|cos| {
                    let (gc, pc) = (cos.len(), rows.len() * ntx);
                    let mut cache = InCache::take(xis * kernel_plane(gc, ci_n), gc * xis * chunk);
                    let (u, m) = (cache.kernels.as_mut_ptr(), cache.products.as_mut_ptr());
                    // SAFETY: the buffers hold A² x kernel_plane(gc, Cin) and gc x A² x chunk
                    // floats and belong to this worker.
                    unsafe {
                        transform_weights_into::<V, M, A>(
                            g,
                            w,
                            taps,
                            (cos.clone(), 0..ci_n),
                            u,
                            false,
                        )
                    };
                    for xi in 0..xis {
                        let (m, u) = (OutPtr(m), position(InPtr(u), xi, gc, (ci_n, 0)));
                        multiply(xi, (gc, pc), &passes[0], vp, m, u);
                    }
                    for (i, mc) in cache.products.chunks(xis * chunk).take(gc).enumerate() {
                        write(cos.start + i, mc, rows);
                    }
                });
            }
        }
        Kernels::Weight(w, taps, Order::KernelsOuter) => {
            for cos in groups {
                // SAFETY: `fresh` holds A² x kernel_plane(group, Cin) floats; the previous
                // group's products, its only reader, are done.
                let u = unsafe { fresh.fill::<V, M, A>(g, w, taps, cos.clone(), 0..ci_n) };
                for rows in chunks.clone() {
                    transform(rows, &passes[0], &mut v);
                    multiply_pass(rows, &passes[0], &v, &mut m, &cos, (u, ci_n, 0));
                    write_group(rows, &m, cos.clone());
                }
            }
        }
        _ => {
            let all_weights = match kernels {
                // SAFETY: `fresh` holds A² x kernel_plane(Cout, Cin) floats; nothing else uses it.
                Kernels::Weight(w, taps, _) if single && !sliced => {
                    Some(unsafe { fresh.fill::<V, M, A>(g, w, taps, 0..co_n, 0..ci_n) })
                }
                _ => None,
            };
            // Several passes: each pass's tiles are transformed once and multiplied by every
            // group's kernels, whose products (all output channels) add up over the passes.
            let groups = (0..co_n)
                .step_by(pass_group)
                .map(|c0| c0..(c0 + pass_group).min(co_n));
            for rows in chunks {
                for pass in &passes {
                    transform(rows, pass, &mut v);
                    for cos in groups.clone() {
                        let u = match (&kernels, all_weights) {
                            (Kernels::Kept(u), _) => {
                                (&u.groups[cos.start / group][..], ci_n, pass.start)
                            }
                            (_, Some(u)) => (u, ci_n, pass.start),
                            // SAFETY: as above; only this pass's input channels are made.
                            (Kernels::Weight(w, taps, _), None) => unsafe {
                                let cis = pass.clone();
                                (
                                    fresh.fill::<V, M, A>(g, w, *taps, cos.clone(), cis),
                                    pass.len(),
                                    0,
                                )
                            },
                        };
                        let m = if sliced {
                            &mut m[cos.start * xis * chunk..]
                        } else {
                            &mut m[..]
                        };
                        multiply_pass(rows, pass, &v, m, &cos, u);
                        if !sliced {
                            write_group(rows, m, cos);
                        }
                    }
                }
                if sliced {
                    write_group(rows, &m, 0..co_n);
                }
            }
        }
    }
}

/// The buffers of one worker of [`Order::KernelsInCache`]: its output channels' transformed
/// kernels and their products, small enough to stay in the caches, kept by the thread for
/// its next group. Only their capacity is kept; every entry is written before it is read.
struct InCache {
    kernels: Vec<f32>,
    products: Vec<f32>,
}

thread_local! {
    static IN_CACHE: std::cell::Cell<(Vec<f32>, Vec<f32>)> =
        const { std::cell::Cell::new((Vec::new(), Vec::new())) };
}

impl InCache {
    /// This thread's kept buffers, `kernels` and `products` floats long.
    fn take(kernels: usize, products: usize) -> InCache {
        let (mut k, mut p) = IN_CACHE.take();
        k.resize(kernels, 0.0);
        p.resize(products, 0.0);
        InCache {
            kernels: k,
            products: p,
        }
    }
}

impl Drop for InCache {
    fn drop(&mut self) {
        let kept = (
            std::mem::take(&mut self.kernels),
            std::mem::take(&mut self.products),
        );
        IN_CACHE.set(kept);
    }
}

/// The block [`kernel_gradient`] uses for `g`: `block_written`'s, or 2 where F(4x4)'s transformed
/// gradient (which is accumulated whole) would exceed `MAX_GRADIENT_FLOATS`; `None` where
/// Winograd does not apply or even F(2x2)'s would.
pub fn kernel_gradient_block(g: &Geometry) -> Option<usize> {
    if !applies(g) {
        return None;
    }
    let fits = |m: usize| (m + 2) * (m + 2) * g.in_channels * g.out_channels <= MAX_GRADIENT_FLOATS;
    [block_written(g), 2].into_iter().find(|&m| fits(m))
}

/// `dw = dL/dW` (`Cout * Cin * 9`) of `y = conv(x, w)` given `dy = dL/dy`, for geometries
/// where [`applies`] holds, with output block `m` (see [`kernel_gradient_block`]).
///
/// Through the same transforms as the forward pass: with `V = B^T d B` the transformed input
/// tiles and `dM = A dY A^T` the transformed output-gradient blocks, `dU_ξ (Cout x Cin) =
/// Σ_tiles dM_ξ V_ξ^T` (one GEMM per ξ, over the tiles) and `dW = G^T dU G`.
pub fn kernel_gradient(g: &Geometry, m: usize, x: &[f32], dy: &[f32], dw: &mut [f32]) {
    match m {
        4 => run_kernel_gradient::<F4, 4, 6>(g, x, dy, dw),
        2 => run_kernel_gradient::<F2, 2, 4>(g, x, dy, dw),
        _ => panic!("Winograd blocks are 2x2 or 4x4, not {m}x{m}"),
    }
}

fn run_kernel_gradient<V: Variant<M, A>, const M: usize, const A: usize>(
    g: &Geometry,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
) {
    assert!(g.kernel == 3 && g.stride == 1 && g.padding == g.dilation);
    let (ci_n, co_n) = (g.in_channels, g.out_channels);
    let hw = g.height * g.width;
    let xis = A * A;
    assert_eq!(x.len(), g.batch * ci_n * hw);
    assert_eq!(dy.len(), g.batch * co_n * hw);
    assert_eq!(dw.len(), co_n * ci_n * 9);

    let tiling = Tiling::<M>::new(g);
    let ntx = tiling.per_row();
    let batch_rows = tiling.batch_rows(g.batch);
    let rows_per_chunk = chunk_rows(g, M, co_n);
    let chunk = rows_per_chunk * ntx;
    let mut v = vec![0f32; ci_n * xis * chunk];
    let mut dm = vec![0f32; co_n * xis * chunk];
    let mut du = vec![0f32; xis * co_n * ci_n];
    for (i, rows) in batch_rows.chunks(rows_per_chunk).enumerate() {
        let pc = rows.len() * ntx;
        transform_inputs::<V, M, A>(&tiling, (x, None), ci_n, rows, &mut v, chunk);
        let dy = (dy, None);
        transform_tiles::<GradientTiles<V>, M, A, M>(&tiling, dy, co_n, rows, &mut dm, chunk);
        // dU_ξ (Cout x Cin) += dM_ξ (Cout x pc) V_ξ^T (pc x Cin).
        let (up, vp, mp) = (
            OutPtr(du.as_mut_ptr()),
            InPtr(v.as_ptr()),
            InPtr(dm.as_ptr()),
        );
        for_each_position(xis, |xi| {
            // SAFETY: dU_ξ is row-major at ξ*Cout*Cin (disjoint per ξ); the rows of dM_ξ (one
            // per output channel) and V_ξ (one per input channel, V_ξ^T's columns) are
            // A²*chunk apart from ξ*chunk on.
            unsafe {
                gemm_strided(
                    (co_n, ci_n, pc),
                    Strided(up.get().add(xi * co_n * ci_n) as *const f32, 1, ci_n),
                    i > 0,
                    Strided(mp.get().add(xi * chunk), 1, xis * chunk),
                    Strided(vp.get().add(xi * chunk), xis * chunk, 1),
                    Parallelism::None,
                )
            }
        });
    }
    dw.par_chunks_mut(ci_n * 9)
        .enumerate()
        .for_each(|(co, dw)| {
            wide(KernelGradientTransform::<V, M, A> {
                du: &du,
                co,
                out_channels: co_n,
                dw,
                variant: PhantomData,
            })
        });
}

/// `dW = G^T dU G` for the kernels of one output channel, [`LANES`] input channels at a time.
struct KernelGradientTransform<'a, V, const M: usize, const A: usize> {
    /// `[ξ][co][ci]`.
    du: &'a [f32],
    co: usize,
    out_channels: usize,
    /// `[ci][3][3]` of output channel `co`.
    dw: &'a mut [f32],
    variant: PhantomData<V>,
}

impl<V: Variant<M, A>, const M: usize, const A: usize> Job
    for KernelGradientTransform<'_, V, M, A>
{
    #[inline(always)]
    fn run(self) {
        let ci_n = self.dw.len() / 9;
        let plane = self.out_channels * ci_n;
        // G^T's rows: G's columns.
        let gt: [[f32; A]; 3] = std::array::from_fn(|a| std::array::from_fn(|r| V::G[r][a]));
        let mut du = [[[0f32; LANES]; A]; A];
        for ci0 in (0..ci_n).step_by(LANES) {
            let n = LANES.min(ci_n - ci0);
            for (xi, lanes) in du.iter_mut().flatten().enumerate() {
                lanes[..n].copy_from_slice(&self.du[xi * plane + self.co * ci_n + ci0..][..n]);
            }
            // (G^T dU)[a][c], then (G^T dU G)[a][b].
            let mut half = [[[0f32; LANES]; A]; 3];
            for (row, coef) in half.iter_mut().zip(&gt) {
                for (c, v) in row.iter_mut().enumerate() {
                    *v = lin(coef, |r| du[r][c]);
                }
            }
            for (a, row) in half.iter().enumerate() {
                for (b, coef) in gt.iter().enumerate() {
                    let v = lin(coef, |c| row[c]);
                    for (lane, &v) in v.iter().enumerate().take(n) {
                        self.dw[(ci0 + lane) * 9 + a * 3 + b] = v;
                    }
                }
            }
        }
    }
}
