//! IDX (plain and gzip): `read_idx_reader` with a 1 MiB bound on arbitrary bytes; a gzip
//! stream must never be inflated past what the header declares.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    common::bounded(data.len(), || {
        if let Ok(a) = r38_train::fashion_mnist::read_idx_reader(data, 1 << 20) {
            assert_eq!(a.data.len(), a.dims.iter().product::<usize>());
        }
    });
});
