pub mod classify;
pub mod convert;
pub mod forward;
pub mod inspect;
