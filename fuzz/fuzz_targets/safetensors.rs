//! Safetensors path: the format sniffing, the `safetensors` crate's header checks and the
//! conversion to canonical `f32` tensors, on arbitrary bytes.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    common::bounded(data.len(), || {
        if let Ok(file) = r38_model::weights::load_bytes(Path::new("fuzz.safetensors"), data) {
            common::check_loaded(&file, data.len());
        }
    });
});
