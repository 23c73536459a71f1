//! The authors' choice of resampling filter ("adaptive interpolation").
//!
//! In the authors' code (`util/util.py`, `get_interp_method(h_src, w_src, h_dst, w_dst,
//! default=CUBIC)`), every resize of an image or of a probability map asks for a filter:
//!
//! * if adaptive choice is switched off (`choose_interpolation_method` false, i.e.
//!   `--no-choose-interp-method`, which the README's ImageNet evaluation commands pass), the
//!   answer is always the default, bicubic — whatever filter the caller asked for;
//! * otherwise: if **both** the new height and the new width are **smaller** than the old ones,
//!   `Image.ANTIALIAS` (Lanczos-3 in Pillow); else if **both** are **larger**, bicubic; in every
//!   other case (one axis grows and the other shrinks, or one axis keeps its length),
//!   bilinear.
//!
//! `iclass/ilsvrc.py` switches adaptive choice on unless `--no-choose-interp-method` is given;
//! `issegm/voc.py` always switches it on for segmentation.

use crate::resample::Filter;

/// The filter the authors' rule picks for a resize from `src` to `dst` (both `(width,
/// height)`) when adaptive choice is on: Lanczos when both sides shrink, bicubic when both
/// grow, bilinear otherwise (including an unchanged size).
pub fn adaptive_filter(src: (u32, u32), dst: (u32, u32)) -> Filter {
    let (sw, sh) = src;
    let (dw, dh) = dst;
    if dh < sh && dw < sw {
        Filter::Lanczos
    } else if dh > sh && dw > sw {
        Filter::Bicubic
    } else {
        Filter::Bilinear
    }
}

/// How a transform chooses its resampling filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Interpolation {
    /// Always this filter. `Fixed(Filter::Bicubic)` is the authors' behaviour with adaptive
    /// choice off (`--no-choose-interp-method`), used for their published ImageNet numbers.
    Fixed(Filter),
    /// The authors' adaptive rule, [`adaptive_filter`].
    Adaptive,
}

impl Default for Interpolation {
    /// `Fixed(Filter::Bicubic)`, the setting of the published ImageNet evaluation.
    fn default() -> Self {
        Interpolation::Fixed(Filter::Bicubic)
    }
}

impl Interpolation {
    /// The authors' switch: `choose_interp = true` gives [`Interpolation::Adaptive`], `false`
    /// gives `Fixed(Filter::Bicubic)` (the default of `get_interp_method`).
    pub fn from_choose_interp(choose_interp: bool) -> Self {
        if choose_interp {
            Interpolation::Adaptive
        } else {
            Interpolation::Fixed(Filter::Bicubic)
        }
    }

    /// The filter to use for a resize from `src` to `dst` (both `(width, height)`).
    pub fn filter_for(self, src: (u32, u32), dst: (u32, u32)) -> Filter {
        match self {
            Interpolation::Fixed(f) => f,
            Interpolation::Adaptive => adaptive_filter(src, dst),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule() {
        assert_eq!(adaptive_filter((500, 375), (427, 320)), Filter::Lanczos);
        assert_eq!(adaptive_filter((213, 160), (427, 320)), Filter::Bicubic);
        assert_eq!(adaptive_filter((500, 300), (600, 200)), Filter::Bilinear);
        assert_eq!(adaptive_filter((500, 300), (500, 200)), Filter::Bilinear);
        assert_eq!(adaptive_filter((500, 300), (400, 300)), Filter::Bilinear);
        assert_eq!(adaptive_filter((500, 300), (500, 300)), Filter::Bilinear);
        assert_eq!(
            Interpolation::from_choose_interp(false).filter_for((500, 375), (427, 320)),
            Filter::Bicubic
        );
        assert_eq!(
            Interpolation::from_choose_interp(true).filter_for((500, 375), (427, 320)),
            Filter::Lanczos
        );
        assert_eq!(
            Interpolation::default(),
            Interpolation::Fixed(Filter::Bicubic)
        );
    }
}
