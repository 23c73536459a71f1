//! High-dimensional Gaussian filtering on the permutohedral lattice (Adams, Baek & Davis,
//! "Fast High-Dimensional Filtering Using the Permutohedral Lattice", Eurographics 2010).
//!
//! Every point's feature vector (in units of the kernel's standard deviation) is lifted onto
//! the hyperplane `x_0 + … + x_d = 0` of `R^(d+1)` and falls into one simplex of the lattice
//! `A*_d`. Filtering is then three linear-time passes:
//!
//! 1. **splat**: each point adds its value to the `d + 1` vertices of its simplex, weighted by
//!    its barycentric coordinates;
//! 2. **blur**: along each of the `d + 1` lattice axes in turn, every vertex becomes
//!    `v + (left + right) / 2` (the `[1/2, 1, 1/2]` kernel; vertices that no point touched are
//!    zero);
//! 3. **slice**: each point reads its value back with the same barycentric weights.
//!
//! The numerical conventions follow Krähenbühl's `densecrf` (as packaged by `pydensecrf2`)
//! so that [`super::DenseCrf`] reproduces it: the same lattice scale, the same nearest-remainder
//! rounding, the same `1 / (1 + 2^-d)` output factor, all in `f32`. The order in which
//! lattice vertices are numbered differs, and no result depends on it. On one thread every
//! sum is taken in densecrf's order; with several, each splats a run of points into its own
//! copy of the lattice and the copies are added, which changes only the last bits.

use rayon::prelude::*;

/// Points per rayon task when the work per point is small.
const CHUNK: usize = 1024;

/// A lattice built for one set of feature vectors, ready to filter any values attached to them.
#[derive(Debug, Clone)]
pub struct Permutohedral {
    /// Feature dimension `d`.
    dim: usize,
    /// Number of points (pixels).
    points: usize,
    /// Number of lattice vertices touched by the points.
    vertices: usize,
    /// For point `i`, vertex `j <= d` of its simplex: `vertex[i * (d + 1) + j]`.
    vertex: Vec<u32>,
    /// The matching barycentric weights.
    weight: Vec<f32>,
    /// Blur neighbours along axis `a` of vertex `v`: `neighbours[a * vertices + v]`. The index
    /// `vertices` stands for "no such vertex" and reads the all-zero row kept after the last one.
    neighbours: Vec<[u32; 2]>,
    /// The lattice's gain factor `1 / (1 + 2^-d)`, applied when slicing.
    alpha: f32,
}

/// Open-addressing hash table from integer lattice keys (`d` coordinates; the last one is
/// implied because the coordinates of a lattice point sum to zero) to vertex numbers.
struct KeyTable {
    dim: usize,
    keys: Vec<i32>,
    slots: Vec<u32>,
    mask: usize,
}

const EMPTY: u32 = u32::MAX;

/// Key equality as a plain loop: keys are a handful of integers, too short for `memcmp`.
fn same_key(a: &[i32], b: &[i32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y)
}

impl KeyTable {
    fn with_capacity(dim: usize, expected: usize) -> Self {
        let size = (expected.max(8) * 2).next_power_of_two();
        Self {
            dim,
            keys: Vec::with_capacity(expected * dim),
            slots: vec![EMPTY; size],
            mask: size - 1,
        }
    }

    fn len(&self) -> usize {
        self.keys.len() / self.dim.max(1)
    }

    fn hash(key: &[i32]) -> usize {
        // FNV-style mixing, then a final avalanche so that nearby keys spread over the table.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for &k in key {
            h = (h ^ u64::from(k as u32)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        h ^= h >> 29;
        h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
        (h ^ (h >> 32)) as usize
    }

    fn key(&self, v: usize) -> &[i32] {
        &self.keys[v * self.dim..(v + 1) * self.dim]
    }

    /// The vertex with this key, inserting it when `insert` is set.
    fn find(&mut self, key: &[i32], insert: bool) -> Option<u32> {
        if insert && 2 * (self.len() + 1) > self.slots.len() {
            self.grow();
        }
        let mut h = Self::hash(key) & self.mask;
        loop {
            let v = self.slots[h];
            if v == EMPTY {
                if !insert {
                    return None;
                }
                let id = self.len() as u32;
                self.keys.extend_from_slice(key);
                self.slots[h] = id;
                return Some(id);
            }
            if same_key(self.key(v as usize), key) {
                return Some(v);
            }
            h = (h + 1) & self.mask;
        }
    }

    fn lookup(&self, key: &[i32]) -> Option<u32> {
        let mut h = Self::hash(key) & self.mask;
        loop {
            let v = self.slots[h];
            if v == EMPTY {
                return None;
            }
            if same_key(self.key(v as usize), key) {
                return Some(v);
            }
            h = (h + 1) & self.mask;
        }
    }

    fn grow(&mut self) {
        let size = self.slots.len() * 2;
        self.slots = vec![EMPTY; size];
        self.mask = size - 1;
        for v in 0..self.len() {
            let mut h = Self::hash(self.key(v)) & self.mask;
            while self.slots[h] != EMPTY {
                h = (h + 1) & self.mask;
            }
            self.slots[h] = v as u32;
        }
    }
}

/// Per-thread scratch space of [`embed`], so that no point allocates.
struct Scratch {
    elevated: Vec<f32>,
    rem0: Vec<f32>,
    rank: Vec<f32>,
    bary: Vec<f32>,
}

impl Scratch {
    fn new(dim: usize) -> Self {
        Self {
            elevated: vec![0.0; dim + 1],
            rem0: vec![0.0; dim + 1],
            rank: vec![0.0; dim + 1],
            bary: vec![0.0; dim + 2],
        }
    }
}

/// The per-dimension factors of the lifting matrix `E`, times the scale that makes the lattice
/// blur approximate a unit-variance Gaussian (Adams et al. 2010, pp. 5-6). Computed in `f64`
/// and rounded once, as densecrf does.
fn scale_factors(dim: usize) -> Vec<f32> {
    let inv_std_dev = ((2.0f64 / 3.0).sqrt() * (dim + 1) as f64) as f32;
    (0..dim)
        .map(|i| (1.0 / (((i + 2) * (i + 1)) as f64).sqrt() * f64::from(inv_std_dev)) as f32)
        .collect()
}

/// Lift one feature vector and find the enclosing simplex: writes the first `d` coordinates
/// of its remainder-0 corner, their ranks, and the `d + 1` barycentric weights. Vertex `k` of
/// the simplex is then [`vertex_key`]`(corner, rank, k)`.
fn embed(
    feature: &[f32],
    scale: &[f32],
    s: &mut Scratch,
    corner: &mut [i32],
    ranks: &mut [u8],
    weights: &mut [f32],
) {
    let d = feature.len();
    let d1 = d + 1;
    let inv_d1 = 1.0f32 / d1 as f32;
    let d1f = d1 as f32;

    // Elevate: y = E f, accumulated from the last coordinate down.
    let elevated = &mut s.elevated;
    let mut sum = 0f32;
    for j in (1..=d).rev() {
        let cf = feature[j - 1] * scale[j - 1];
        elevated[j] = sum - j as f32 * cf;
        sum += cf;
    }
    elevated[0] = sum;

    // The nearest point whose coordinates are all multiples of d + 1 ("remainder-0" point),
    // coordinate by coordinate; `shift` is how far off the hyperplane that rounding went.
    let rem0 = &mut s.rem0;
    let mut shift = 0f32;
    for (r, &e) in rem0.iter_mut().zip(elevated.iter()) {
        let v = round_ties_even(inv_d1 * e);
        *r = v * d1f;
        shift += v;
    }

    // Rank of each coordinate of the residual, largest first (ties go to the earlier index).
    let rank = &mut s.rank;
    rank.fill(0.0);
    for i in 0..d {
        let di = elevated[i] - rem0[i];
        for j in i + 1..=d {
            if di < elevated[j] - rem0[j] {
                rank[i] += 1.0;
            } else {
                rank[j] += 1.0;
            }
        }
    }
    // Bring the remainder-0 point back onto the hyperplane by moving the coordinates whose
    // rank leaves 0..=d, which also fixes their rank.
    for (r, q) in rank.iter_mut().zip(rem0.iter_mut()) {
        *r += shift;
        if *r < 0.0 {
            *r += d1f;
            *q += d1f;
        } else if *r >= d1f {
            *r -= d1f;
            *q -= d1f;
        }
    }

    // Barycentric coordinates (Adams et al. 2010, p. 10).
    let bary = &mut s.bary;
    bary.fill(0.0);
    for i in 0..=d {
        let v = (elevated[i] - rem0[i]) * inv_d1;
        let p = d - rank[i] as usize;
        bary[p] += v;
        bary[p + 1] -= v;
    }
    bary[0] += 1.0 + bary[d + 1];
    weights.copy_from_slice(&bary[..d1]);

    for i in 0..d {
        corner[i] = rem0[i] as i32;
        ranks[i] = rank[i] as u8;
    }
}

/// Vertex `k` of a simplex: its remainder-0 corner plus the canonical offset (`k` for
/// coordinates of rank `<= d - k`, `k - (d + 1)` for the others).
fn vertex_key(corner: &[i32], ranks: &[u8], k: usize, key: &mut [i32]) {
    let d = corner.len();
    for i in 0..d {
        let offset = if usize::from(ranks[i]) <= d - k {
            k as i32
        } else {
            k as i32 - (d as i32 + 1)
        };
        key[i] = corner[i] + offset;
    }
}

/// Round half to even in `f32` without a libm call (`rintf` is not inlined on baseline
/// x86-64): adding and subtracting 1.5 · 2^23 leaves the rounded integer for `|x| < 2^22`.
fn round_ties_even(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    if x.abs() < 4_194_304.0 {
        (x + MAGIC) - MAGIC
    } else {
        x.round_ties_even()
    }
}

impl Permutohedral {
    /// Build the lattice for `points` feature vectors of dimension `dim`, stored row-major in
    /// `features` (`features.len() == points * dim`, `dim >= 1`). Each feature must already be
    /// divided by its kernel's standard deviation.
    ///
    /// # Panics
    /// If `dim == 0` or `features.len()` is not `points * dim`; [`super::DenseCrf`] checks
    /// its inputs before getting here.
    pub fn new(features: &[f32], dim: usize) -> Self {
        assert!(dim > 0, "permutohedral lattice of dimension 0");
        assert_eq!(
            features.len() % dim,
            0,
            "features are not a multiple of dim"
        );
        let points = features.len() / dim;
        let d1 = dim + 1;
        let scale = scale_factors(dim);

        // The geometry of every point is independent: compute it in parallel…
        let mut corners = vec![0i32; points * dim];
        let mut ranks = vec![0u8; points * dim];
        let mut weight = vec![0f32; points * d1];
        features
            .par_chunks(dim)
            .zip(corners.par_chunks_mut(dim))
            .zip(ranks.par_chunks_mut(dim))
            .zip(weight.par_chunks_mut(d1))
            .with_min_len(CHUNK)
            .for_each_init(
                || Scratch::new(dim),
                |s, (((f, c), r), w)| embed(f, &scale, s, c, r, w),
            );

        // …then number the vertices in point order (sequential: one shared table). Smooth
        // features put many points on each vertex, so the table starts small and grows.
        let mut table = KeyTable::with_capacity(dim, (points / 8).max(1024));
        let mut vertex = Vec::with_capacity(points * d1);
        let mut key = vec![0i32; dim];
        for (c, r) in corners.chunks_exact(dim).zip(ranks.chunks_exact(dim)) {
            for k in 0..d1 {
                vertex_key(c, r, k, &mut key);
                vertex.push(
                    table
                        .find(&key, true)
                        .expect("insert always yields a vertex"),
                );
            }
        }
        drop((corners, ranks));
        let vertices = table.len();

        // Neighbours along axis a: the key moves by +d on coordinate a and by -1 on the others
        // (and the opposite way for the second neighbour). For a = d only the implied last
        // coordinate moves by d, so all stored coordinates move by -1 / +1.
        let missing = vertices as u32;
        let table = &table;
        let neighbours: Vec<[u32; 2]> = (0..d1 * vertices)
            .into_par_iter()
            .with_min_len(CHUNK)
            .map_init(
                || (vec![0i32; dim], vec![0i32; dim]),
                |(n1, n2), idx| {
                    let (axis, v) = (idx / vertices, idx % vertices);
                    let key = table.key(v);
                    for k in 0..dim {
                        n1[k] = key[k] - 1;
                        n2[k] = key[k] + 1;
                    }
                    if axis < dim {
                        n1[axis] = key[axis] + dim as i32;
                        n2[axis] = key[axis] - dim as i32;
                    }
                    [
                        table.lookup(n1).unwrap_or(missing),
                        table.lookup(n2).unwrap_or(missing),
                    ]
                },
            )
            .collect();

        Self {
            dim,
            points,
            vertices,
            vertex,
            weight,
            neighbours,
            alpha: 1.0 / (1.0 + 2f32.powi(-(dim as i32))),
        }
    }

    /// Feature dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Number of points the lattice was built for.
    pub fn points(&self) -> usize {
        self.points
    }

    /// Number of lattice vertices in use (the cost of a blur pass grows with it).
    pub fn vertices(&self) -> usize {
        self.vertices
    }

    /// Gaussian-filter `values` (`points x channels`, row-major: each point's channels are
    /// contiguous) and return the result in the same layout.
    ///
    /// The result approximates `out_i = sum_j exp(-|f_i - f_j|^2 / 2) * in_j` over all points
    /// `j`, the point itself included, up to the lattice's constant gain; the CRF normalises
    /// that gain away.
    ///
    /// # Panics
    /// If `values.len() != points * channels` or `channels == 0`.
    pub fn filter(&self, values: &[f32], channels: usize) -> Vec<f32> {
        assert!(channels > 0, "filter of 0 channels");
        assert_eq!(values.len(), self.points * channels, "values do not fit");
        let mut buffers = LatticeBuffers::default();
        self.splat_and_blur(values, None, channels, &mut buffers);
        let mut out = vec![0f32; self.points * channels];
        out.par_chunks_mut(channels)
            .with_min_len(CHUNK)
            .enumerate()
            .for_each(|(i, dst)| self.slice_point(i, &buffers.lattice, dst));
        out
    }

    /// The CRF's message pass, fused so that no image-sized temporary is needed: with `K`
    /// the lattice filter and `s` a per-point scale, `acc -= -weight · s ⊙ K(s ⊙ values)`.
    /// Each product is rounded in the order densecrf rounds it (scale the input, filter,
    /// scale the output, multiply by the negated Potts weight, subtract).
    ///
    /// # Panics
    /// If the slices do not hold `points` rows of `channels` (and `points` scales).
    pub(crate) fn filter_scaled_into(
        &self,
        values: &[f32],
        scale: &[f32],
        weight: f32,
        channels: usize,
        acc: &mut [f32],
        buffers: &mut LatticeBuffers,
    ) {
        assert!(channels > 0, "filter of 0 channels");
        assert_eq!(values.len(), self.points * channels, "values do not fit");
        assert_eq!(acc.len(), values.len(), "accumulator does not fit");
        assert_eq!(scale.len(), self.points, "scales do not fit");
        self.splat_and_blur(values, Some(scale), channels, buffers);
        let lattice = &buffers.lattice;
        let neg_w = -weight;
        acc.par_chunks_mut(channels)
            .zip(scale.par_iter())
            .with_min_len(CHUNK)
            .enumerate()
            .for_each_init(
                || vec![0f32; channels],
                |row, (i, (dst, &s))| {
                    row.fill(0.0);
                    self.slice_point(i, lattice, row);
                    for (a, &m) in dst.iter_mut().zip(row.iter()) {
                        *a -= neg_w * (m * s);
                    }
                },
            );
    }

    /// Splat `values` (times `scale` per point, if given) onto the lattice, then blur it;
    /// the result is left in `buffers.lattice`.
    fn splat_and_blur(
        &self,
        values: &[f32],
        scale: Option<&[f32]>,
        c: usize,
        buffers: &mut LatticeBuffers,
    ) {
        let d1 = self.dim + 1;
        // One extra zero row at the end serves the missing neighbours of the blur.
        let len = (self.vertices + 1) * c;
        let LatticeBuffers { lattice, next, .. } = buffers;
        lattice.clear();
        lattice.resize(len, 0.0);
        next.clear();
        next.resize(len, 0.0);

        // Splat: each thread scatters a contiguous run of points into its own lattice copy
        // (cache-resident, read in point order), then the copies are summed in run order.
        let runs = rayon::current_num_threads()
            .clamp(1, 8)
            .min(self.points.max(1));
        let per_run = self.points.div_ceil(runs);
        let vc = self.vertices * c;
        let mut partial = std::mem::take(&mut buffers.partial);
        partial.clear();
        partial.resize(runs.saturating_sub(1) * vc, 0.0);
        {
            let mut targets: Vec<&mut [f32]> = vec![&mut lattice[..vc]];
            targets.extend(partial.chunks_mut(vc.max(1)).take(runs - 1));
            targets.into_par_iter().enumerate().for_each(|(r, dst)| {
                let end = ((r + 1) * per_run).min(self.points);
                for point in r * per_run..end {
                    let row = &values[point * c..(point + 1) * c];
                    let sc = scale.map(|s| s[point]);
                    for j in 0..d1 {
                        let v = self.vertex[point * d1 + j] as usize;
                        let w = self.weight[point * d1 + j];
                        let acc = &mut dst[v * c..(v + 1) * c];
                        match sc {
                            Some(sc) => {
                                for (x, &y) in acc.iter_mut().zip(row) {
                                    *x += w * (y * sc);
                                }
                            }
                            None => {
                                for (x, &y) in acc.iter_mut().zip(row) {
                                    *x += w * y;
                                }
                            }
                        }
                    }
                }
            });
        }
        if runs > 1 {
            lattice[..vc]
                .par_chunks_mut(4096)
                .enumerate()
                .for_each(|(i, dst)| {
                    for part in partial.chunks(vc) {
                        for (x, &y) in dst.iter_mut().zip(&part[i * 4096..]) {
                            *x += y;
                        }
                    }
                });
        }
        buffers.partial = partial;

        // Blur along each axis in turn, ping-ponging between the two buffers.
        for axis in 0..d1 {
            let nb = &self.neighbours[axis * self.vertices..(axis + 1) * self.vertices];
            let src = &*lattice;
            next[..self.vertices * c]
                .par_chunks_mut(c)
                .with_min_len(CHUNK / 4)
                .zip(nb.par_iter())
                .enumerate()
                .for_each(|(v, (out, &[n1, n2]))| {
                    let own = &src[v * c..(v + 1) * c];
                    let a = &src[n1 as usize * c..(n1 as usize + 1) * c];
                    let b = &src[n2 as usize * c..(n2 as usize + 1) * c];
                    for k in 0..c {
                        out[k] = own[k] + 0.5 * (a[k] + b[k]);
                    }
                });
            std::mem::swap(lattice, next);
        }
    }

    /// Slice point `i` out of the blurred lattice into `dst` (which must start at zero), with
    /// the lattice's gain factor. densecrf folds the factor into the weight for more than two
    /// channels and applies it last otherwise; the two round differently in the last bit, so
    /// both orders are kept.
    fn slice_point(&self, i: usize, lattice: &[f32], dst: &mut [f32]) {
        let d1 = self.dim + 1;
        let c = dst.len();
        let alpha = self.alpha;
        for j in 0..d1 {
            let v = self.vertex[i * d1 + j] as usize;
            let w = self.weight[i * d1 + j];
            let src = &lattice[v * c..(v + 1) * c];
            if c > 2 {
                let wa = w * alpha;
                for (x, &y) in dst.iter_mut().zip(src) {
                    *x += wa * y;
                }
            } else {
                for (x, &y) in dst.iter_mut().zip(src) {
                    *x += w * y * alpha;
                }
            }
        }
    }
}

/// The two lattice-sized buffers of a filter pass, kept between passes so that mean-field
/// iterations do not allocate.
#[derive(Debug, Default)]
pub(crate) struct LatticeBuffers {
    lattice: Vec<f32>,
    next: Vec<f32>,
    partial: Vec<f32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Features of a `w x h` grid: position / sxy, plus an optional ramp-coloured channel.
    fn grid(w: usize, h: usize, sxy: f32) -> Vec<f32> {
        let mut f = Vec::new();
        for y in 0..h {
            for x in 0..w {
                f.push(x as f32 / sxy);
                f.push(y as f32 / sxy);
            }
        }
        f
    }

    #[test]
    fn barycentric_weights_sum_to_one_and_are_non_negative() {
        let features: Vec<f32> = (0..300).map(|i| ((i * 37 % 101) as f32) * 0.173).collect();
        for dim in [1, 2, 3, 5] {
            let scale = scale_factors(dim);
            let mut scratch = Scratch::new(dim);
            let (mut corner, mut ranks) = (vec![0; dim], vec![0; dim]);
            let (mut keys, mut weights) = (vec![0; (dim + 1) * dim], vec![0.0; dim + 1]);
            for f in features.chunks_exact(dim) {
                embed(
                    f,
                    &scale,
                    &mut scratch,
                    &mut corner,
                    &mut ranks,
                    &mut weights,
                );
                for k in 0..=dim {
                    vertex_key(&corner, &ranks, k, &mut keys[k * dim..(k + 1) * dim]);
                }
                let sum: f32 = weights.iter().sum();
                assert!((sum - 1.0).abs() < 1e-5, "dim {dim}: sum {sum}");
                assert!(weights.iter().all(|&w| w >= -1e-6), "{weights:?}");
                // Every vertex key differs from the others: a proper simplex.
                for a in 0..=dim {
                    for b in a + 1..=dim {
                        assert_ne!(keys[a * dim..(a + 1) * dim], keys[b * dim..(b + 1) * dim]);
                    }
                }
            }
        }
    }

    #[test]
    fn filter_is_linear() {
        let lattice = Permutohedral::new(&grid(9, 7, 2.0), 2);
        let a: Vec<f32> = (0..63 * 3).map(|i| (i % 11) as f32).collect();
        let b: Vec<f32> = (0..63 * 3).map(|i| (i % 5) as f32 - 2.0).collect();
        let sum: Vec<f32> = a.iter().zip(&b).map(|(x, y)| 2.0 * x + y).collect();
        let (fa, fb, fs) = (
            lattice.filter(&a, 3),
            lattice.filter(&b, 3),
            lattice.filter(&sum, 3),
        );
        for i in 0..fs.len() {
            assert!((fs[i] - (2.0 * fa[i] + fb[i])).abs() < 1e-3 * fs[i].abs().max(1.0));
        }
    }

    /// The lattice against the exact Gaussian `sum_j exp(-|f_i - f_j|^2 / 2) v_j` on a small
    /// image: both normalised by their filtered constant, as the CRF uses them.
    #[test]
    fn normalised_filter_matches_brute_force_gaussian() {
        let (w, h) = (16, 12);
        // Position (sxy 3) and one colour-like channel with an edge down the middle (s 0.5).
        let mut f = Vec::new();
        for y in 0..h {
            for x in 0..w {
                f.extend([
                    x as f32 / 3.0,
                    y as f32 / 3.0,
                    if x < 8 { 0.0 } else { 2.0 },
                ]);
            }
        }
        let n = w * h;
        let values: Vec<f32> = (0..n).map(|i| ((i * 7919) % 13) as f32 / 13.0).collect();
        let lattice = Permutohedral::new(&f, 3);
        let ones = vec![1f32; n];
        let (fv, f1) = (lattice.filter(&values, 1), lattice.filter(&ones, 1));
        let mut worst = 0f32;
        for i in 0..n {
            let (mut num, mut den) = (0f64, 0f64);
            for j in 0..n {
                let d2: f32 = (0..3).map(|k| (f[i * 3 + k] - f[j * 3 + k]).powi(2)).sum();
                let g = (-f64::from(d2) / 2.0).exp();
                num += g * f64::from(values[j]);
                den += g;
            }
            let exact = (num / den) as f32;
            let approx = fv[i] / f1[i];
            worst = worst.max((exact - approx).abs());
        }
        // The lattice is an approximation (a truncated, slightly anisotropic kernel); on
        // values in [0, 1] it stays within 0.01 of the exact normalised filter (0.008 here).
        assert!(worst < 0.02, "max |lattice - exact| = {worst}");
    }

    #[test]
    fn constant_in_constant_out_after_normalisation() {
        let lattice = Permutohedral::new(&grid(20, 15, 1.5), 2);
        let n = 300;
        let ones = vec![1f32; n];
        let f1 = lattice.filter(&ones, 1);
        let fc = lattice.filter(&vec![3.5f32; n * 4], 4);
        for i in 0..n {
            assert!(f1[i] > 0.0);
            for k in 0..4 {
                let r = fc[i * 4 + k] / f1[i];
                assert!((r - 3.5).abs() < 1e-4, "point {i}: {r}");
            }
        }
    }

    /// One thread sums in point order; several sum per-thread copies: the same up to rounding.
    #[test]
    fn thread_count_changes_only_rounding() {
        let f = grid(40, 30, 2.5);
        let values: Vec<f32> = (0..1200 * 3)
            .map(|i| ((i * 31) % 17) as f32 / 17.0)
            .collect();
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| Permutohedral::new(&f, 2).filter(&values, 3))
        };
        let (one, three) = (run(1), run(3));
        for (a, b) in one.iter().zip(&three) {
            assert!((a - b).abs() <= 1e-5 * a.abs().max(1.0), "{a} vs {b}");
        }
    }

    #[test]
    fn far_apart_points_do_not_interact() {
        // Two points 100 standard deviations apart: each sees only itself.
        let lattice = Permutohedral::new(&[0.0, 0.0, 100.0, 100.0], 2);
        let out = lattice.filter(&[1.0, 0.0], 1);
        assert!(out[0] > 0.0);
        assert_eq!(out[1], 0.0);
    }
}
