pub mod classify;
pub mod convert;
pub mod eval;
pub mod forward;
pub mod inspect;
pub mod seg_common;
pub mod segment;
