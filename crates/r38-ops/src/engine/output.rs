//! What a convolution writes into: a fresh buffer whose every element it writes once and
//! never reads first, so the buffer is not zeroed beforehand (zeroing the fresh maps took
//! about 4% of a batch-1 pass), optionally with a residual added to each value as it is
//! written (a residual unit's identity shortcut, without a pass and a map of its own).

use rayon::prelude::*;
use std::mem::MaybeUninit;

/// A convolution's destination: `y`, written whole, plus `residual` where there is one.
pub(crate) struct Output<'a> {
    pub(crate) y: &'a mut [MaybeUninit<f32>],
    pub(crate) residual: Option<&'a [f32]>,
}

impl<'a> Output<'a> {
    /// Over a buffer whose values are overwritten.
    pub(crate) fn over(y: &'a mut [f32]) -> Self {
        Output {
            y: as_uninit(y),
            residual: None,
        }
    }

    /// The raw start of `y`, for writers through pointers.
    pub(crate) fn y_ptr(&mut self) -> *mut f32 {
        self.y.as_mut_ptr().cast()
    }

    /// Adds the residual onto `y` in one parallel pass, for writers that cannot add it as
    /// they write (the same bits: each value is rounded before the sum either way).
    ///
    /// # Safety
    /// Every element of `y` must have been written.
    pub(crate) unsafe fn add_residual_after(self) {
        let Some(residual) = self.residual else {
            return;
        };
        assert_eq!(residual.len(), self.y.len());
        let y = &mut *(self.y as *mut [MaybeUninit<f32>] as *mut [f32]);
        y.par_chunks_mut(1 << 14)
            .zip(residual.par_chunks(1 << 14))
            .for_each(|(y, r)| y.iter_mut().zip(r).for_each(|(y, r)| *y += r));
    }
}

/// An initialised buffer as one to be written: only initialised values are ever written
/// through it (by the engine's writers, which take either).
pub(crate) fn as_uninit(y: &mut [f32]) -> &mut [MaybeUninit<f32>] {
    // SAFETY: `MaybeUninit<f32>` has `f32`'s layout; the engine writes only initialised
    // values through the view.
    unsafe { &mut *(y as *mut [f32] as *mut [MaybeUninit<f32>]) }
}

/// A vector of `n` floats that `fill` writes, every one of them, never zeroed.
///
/// # Safety
/// `fill` must write every element of the slice it is given.
pub(crate) unsafe fn written_by(n: usize, fill: impl FnOnce(&mut [MaybeUninit<f32>])) -> Vec<f32> {
    let mut v = Vec::with_capacity(n);
    fill(&mut v.spare_capacity_mut()[..n]);
    v.set_len(n);
    v
}
