//! Dataset list files: `parse_id_list` on arbitrary text; every id it returns is a plain name.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    common::bounded(data.len(), || {
        if let Ok(ids) = r38_data::datasets::parse_id_list(text, Path::new("fuzz.txt")) {
            for id in ids {
                assert!(!id.is_empty() && id != "." && id != "..");
                assert!(!id.contains('/') && !id.chars().any(char::is_control));
                assert!(id.len() <= r38_data::datasets::MAX_ID_BYTES);
            }
        }
    });
});
