//! Sliding-window inference: running a canvas that is too large for one pass as overlapping
//! tiles.
//!
//! The authors never tile: every released model sees the whole canvas in one pass (504x504 for
//! VOC and ADE20K, 1024x2048 for Cityscapes). A full-size ResNet-38 on a 1024x2048 canvas needs
//! tens of GiB of activations, so [`crate::TestProtocol::max_canvas`] can bound the canvas a
//! single pass sees. The canvas is then cut into tiles of at most that size, every tile is run
//! on its own, and the class probabilities of the output cells are averaged over the tiles that
//! cover them.
//!
//! # How this differs from one pass
//!
//! A tile is a separate network input: the convolutions see zero padding at its borders
//! instead of the neighbouring pixels. ResNet-38's receptive field is several hundred pixels
//! (the d12 head alone reaches ±24 output cells, ±192 px at stride 8), so near tile borders the
//! network loses context it would have had in one pass, and the probabilities there differ.
//! The overlap ([`crate::TestProtocol::window_overlap`]) and the averaging damp this; they do
//! not remove it. With a window at least as large as the canvas there is one tile and the
//! result is bit-identical to the single pass (tested).
//!
//! # Tile placement
//!
//! Work in units of `m` pixels (the canvas multiple; a multiple of the output stride, so every
//! tile starts on an output cell): along an axis of `L` units with tiles of `T` units and an
//! overlap of at least `O = ceil(overlap / m)` units, `n = ceil((L - O) / (T - O))` tiles sit at
//! `floor(i * (L - T) / (n - 1))`, `i = 0..n`: the first at 0, the last flush with the end, the
//! rest spread evenly. Consecutive tiles then overlap by at least `O` units.

#![warn(missing_docs)]

use candle_core::Tensor;

use crate::error::{SegError, SegResult};
use crate::score_net::{common_geometry, mean_probabilities, ScoreNet};

/// The largest canvas one forward pass may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum CanvasLimit {
    /// At most this many pixels (`height * width`) per pass. Tiles are square-ish: the side is
    /// `sqrt(pixels)` rounded down to the canvas multiple, clipped to the canvas, and the other
    /// side widened to use the budget.
    Pixels(u64),
    /// Tiles of at most this height and width (rounded down to the canvas multiple, at least one
    /// multiple).
    Size {
        /// Largest tile height in pixels.
        height: u32,
        /// Largest tile width in pixels.
        width: u32,
    },
}

/// Where the tiles of one canvas go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowPlan {
    canvas: (usize, usize),
    tile: (usize, usize),
    ys: Vec<usize>,
    xs: Vec<usize>,
}

fn round_down(v: usize, m: usize) -> usize {
    (v / m * m).max(m)
}

impl WindowPlan {
    /// One tile covering the whole canvas `(height, width)`: the single pass.
    pub fn single(canvas: (usize, usize)) -> Self {
        WindowPlan {
            canvas,
            tile: canvas,
            ys: vec![0],
            xs: vec![0],
        }
    }

    /// Tiles of `tile = (height, width)` (clipped to the canvas) over `canvas = (height,
    /// width)`, overlapping by at least `overlap` pixels, placed on multiples of `multiple`.
    ///
    /// Every size must be a multiple of `multiple`, and `overlap` rounded up to a multiple must
    /// be smaller than the tile along every axis that needs more than one tile.
    pub fn new(
        canvas: (usize, usize),
        tile: (usize, usize),
        overlap: usize,
        multiple: usize,
    ) -> SegResult<Self> {
        if multiple == 0 {
            return Err(SegError::Protocol("canvas multiple 0".into()));
        }
        let tile = (tile.0.min(canvas.0), tile.1.min(canvas.1));
        for (what, v) in [
            ("canvas height", canvas.0),
            ("canvas width", canvas.1),
            ("tile height", tile.0),
            ("tile width", tile.1),
        ] {
            if v == 0 || !v.is_multiple_of(multiple) {
                return Err(SegError::Protocol(format!(
                    "{what} {v} is not a positive multiple of {multiple}"
                )));
            }
        }
        Ok(WindowPlan {
            canvas,
            tile,
            ys: axis_positions(canvas.0, tile.0, overlap, multiple)?,
            xs: axis_positions(canvas.1, tile.1, overlap, multiple)?,
        })
    }

    /// The plan for `canvas = (height, width)` under `limit` (`None`: the single pass), with
    /// tiles overlapping by at least `overlap` pixels and placed on multiples of `multiple`.
    pub fn for_limit(
        canvas: (usize, usize),
        limit: Option<CanvasLimit>,
        overlap: usize,
        multiple: usize,
    ) -> SegResult<Self> {
        let tile = match limit {
            None => return Ok(WindowPlan::single(canvas)),
            Some(CanvasLimit::Size { height, width }) => (
                round_down(height as usize, multiple),
                round_down(width as usize, multiple),
            ),
            Some(CanvasLimit::Pixels(pixels)) => {
                if (canvas.0 as u64) * (canvas.1 as u64) <= pixels {
                    return Ok(WindowPlan::single(canvas));
                }
                let side = round_down((pixels as f64).sqrt() as usize, multiple);
                let th = side.min(canvas.0);
                let tw = round_down((pixels / th as u64) as usize, multiple).min(canvas.1);
                (th, tw)
            }
        };
        if tile.0 >= canvas.0 && tile.1 >= canvas.1 {
            return Ok(WindowPlan::single(canvas));
        }
        WindowPlan::new(canvas, tile, overlap, multiple)
    }

    /// The canvas `(height, width)`.
    pub fn canvas(&self) -> (usize, usize) {
        self.canvas
    }

    /// The tile `(height, width)`.
    pub fn tile(&self) -> (usize, usize) {
        self.tile
    }

    /// Top rows of the tiles.
    pub fn ys(&self) -> &[usize] {
        &self.ys
    }

    /// Left columns of the tiles.
    pub fn xs(&self) -> &[usize] {
        &self.xs
    }

    /// The top-left corners `(y, x)` of every tile, row by row.
    pub fn tiles(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.ys
            .iter()
            .flat_map(move |&y| self.xs.iter().map(move |&x| (y, x)))
    }

    /// Number of tiles.
    pub fn len(&self) -> usize {
        self.ys.len() * self.xs.len()
    }

    /// Always `false`: a plan has at least one tile.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the plan is a single pass over the whole canvas.
    pub fn is_single(&self) -> bool {
        self.tile == self.canvas
    }
}

/// Tile starts along one axis (see the module docs): `len`, `tile` multiples of `multiple`,
/// `tile <= len`.
pub fn axis_positions(
    len: usize,
    tile: usize,
    overlap: usize,
    multiple: usize,
) -> SegResult<Vec<usize>> {
    if multiple == 0
        || !len.is_multiple_of(multiple)
        || !tile.is_multiple_of(multiple)
        || tile == 0
        || tile > len
    {
        return Err(SegError::Protocol(format!(
            "cannot tile an axis of {len} px with tiles of {tile} px on multiples of {multiple}"
        )));
    }
    if tile == len {
        return Ok(vec![0]);
    }
    let (l, t, o) = (len / multiple, tile / multiple, overlap.div_ceil(multiple));
    if o >= t {
        return Err(SegError::Protocol(format!(
            "window overlap {overlap} px (rounded up to {} px) must be smaller than the tile \
             ({tile} px)",
            o * multiple
        )));
    }
    let n = (l - o).div_ceil(t - o);
    Ok((0..n).map(|i| i * (l - t) / (n - 1) * multiple).collect())
}

/// The mean class probabilities of `nets` over the canvas `x` of shape `(1, 3, H, W)`, run tile
/// by tile as `plan` says and averaged over overlapping tiles; returned on the CPU as a
/// row-major `(C, H / s, W / s)` buffer.
///
/// A single-tile plan runs the whole canvas once and returns exactly
/// [`mean_probabilities`]`(nets, x)`.
pub fn windowed_probabilities(
    nets: &[&dyn ScoreNet],
    x: &Tensor,
    plan: &WindowPlan,
) -> SegResult<Vec<f32>> {
    let (classes, stride) = common_geometry(nets)?;
    let dims = x.dims();
    if dims.len() != 4 || (dims[2], dims[3]) != plan.canvas() {
        return Err(SegError::InvalidArgument(format!(
            "canvas of shape {dims:?} does not match the window plan's {:?}",
            plan.canvas()
        )));
    }
    if plan.is_single() {
        return mean_probabilities(nets, x);
    }
    let (oh, ow) = (dims[2] / stride, dims[3] / stride);
    let (th, tw) = (plan.tile().0 / stride, plan.tile().1 / stride);
    let mut sum = vec![0f32; classes * oh * ow];
    let mut count = vec![0u32; oh * ow];
    for (y, x0) in plan.tiles() {
        let tile = x
            .narrow(2, y, plan.tile().0)?
            .narrow(3, x0, plan.tile().1)?
            .contiguous()?;
        let p = mean_probabilities(nets, &tile)?;
        let (cy, cx) = (y / stride, x0 / stride);
        for i in 0..th {
            let row = (cy + i) * ow + cx;
            count[row..row + tw].iter_mut().for_each(|n| *n += 1);
            for c in 0..classes {
                let src = &p[(c * th + i) * tw..(c * th + i + 1) * tw];
                let dst = &mut sum[c * oh * ow + row..c * oh * ow + row + tw];
                dst.iter_mut().zip(src).for_each(|(d, s)| *d += s);
            }
        }
    }
    for c in 0..classes {
        for (v, n) in sum[c * oh * ow..(c + 1) * oh * ow].iter_mut().zip(&count) {
            debug_assert!(*n > 0, "tiles cover the canvas");
            *v /= *n as f32;
        }
    }
    Ok(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions() {
        assert_eq!(axis_positions(64, 64, 16, 8).unwrap(), vec![0]);
        // 2048 px in tiles of 512 with >= 128 overlap: n = ceil((256-16)/(64-16)) = 5
        let p = axis_positions(2048, 512, 128, 8).unwrap();
        assert_eq!(p, vec![0, 384, 768, 1152, 1536]);
        for w in p.windows(2) {
            assert!(w[0] + 512 - w[1] >= 128);
        }
        // uneven split stays on the grid, overlap at least the requested one
        let p = axis_positions(1000, 312, 100, 8).unwrap();
        assert_eq!(*p.last().unwrap(), 1000 - 312);
        for w in p.windows(2) {
            assert!(w[1] % 8 == 0 && w[0] + 312 - w[1] >= 100, "{p:?}");
        }
        assert!(axis_positions(64, 16, 16, 8).is_err());
        assert!(axis_positions(64, 12, 0, 8).is_err());
        // zero overlap: abutting tiles
        assert_eq!(axis_positions(64, 16, 0, 8).unwrap(), vec![0, 16, 32, 48]);
    }

    #[test]
    fn plans_from_limits() {
        let single = WindowPlan::for_limit((1024, 2048), None, 128, 8).unwrap();
        assert!(single.is_single() && single.len() == 1);
        let big = WindowPlan::for_limit((1024, 2048), Some(CanvasLimit::Pixels(1 << 22)), 0, 8);
        assert!(big.unwrap().is_single());
        let p = WindowPlan::for_limit((1024, 2048), Some(CanvasLimit::Pixels(512 * 512)), 64, 8)
            .unwrap();
        assert_eq!(p.tile(), (512, 512));
        assert!(p.tiles().all(|(y, x)| y + 512 <= 1024 && x + 512 <= 2048));
        let p = WindowPlan::for_limit(
            (104, 104),
            Some(CanvasLimit::Size {
                height: 60,
                width: 500,
            }),
            16,
            8,
        )
        .unwrap();
        assert_eq!(p.tile(), (56, 104));
        assert_eq!(p.xs(), &[0]);
        // 13 units, tiles of 7, overlap 2: ceil(11 / 5) = 3 tiles
        assert_eq!(p.ys(), &[0, 24, 48]);
        assert!(!p.is_empty());
    }
}
