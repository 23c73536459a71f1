//! MXNet `.params` reader: `load_bytes` on arbitrary bytes. The seeds (every NDArray header
//! form, f16/f64, none arrays, a V3 scalar, the parity fixtures) start with the list magic, so
//! mutations explore the array records, counts and names.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    common::bounded(data.len(), || {
        if let Ok(file) = r38_model::weights::load_bytes(Path::new("fuzz.params"), data) {
            common::check_loaded(&file, data.len());
        }
    });
});
