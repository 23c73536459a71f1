//! `.npy` reader: `r38_data::npy::parse_npy` on arbitrary bytes. The seeds are small arrays of
//! every accepted dtype and format version, so mutations explore the header dictionary, the
//! shape and the declared lengths.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    common::bounded(data.len(), || {
        if let Ok(t) = r38_data::npy::parse_npy(data, "fuzz.npy") {
            // The values came from the file: never more bytes than it holds.
            assert!(t.elem_count() * t.dtype().size_in_bytes() <= data.len());
            let limits = r38_data::npy::NchwLimits::DEFAULT;
            if let Ok(h) = r38_data::npy::parse_header(data, data.len() as u64) {
                let _ = limits.check(&h);
            }
        }
    });
});
