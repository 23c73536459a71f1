//! PyTorch `.pth` path, two ways in one target:
//!
//! - an input starting with `PK` goes to `load_bytes` as it is (zip container, entry names,
//!   byte order, storages);
//! - any other input is taken as the `data.pkl` pickle and wrapped in a well-formed archive
//!   with storages `0`..`4`, so that mutated pickles get past the zip's CRC check and reach
//!   the pre-scan, candle's unpickler and the tensor-record checks.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use std::io::Write;
use std::path::Path;

fn archive(pickle: &[u8]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let mut put = |name: &str, bytes: &[u8]| {
        w.start_file(name, opts).expect("in-memory zip");
        w.write_all(bytes).expect("in-memory zip");
    };
    put("archive/data.pkl", pickle);
    put("archive/byteorder", b"little");
    for (key, len) in [("0", 24usize), ("1", 4), ("2", 8), ("3", 64), ("4", 24)] {
        let bytes: Vec<u8> = (0..len).map(|i| (i * 37 % 251) as u8).collect();
        put(&format!("archive/data/{key}"), &bytes);
    }
    put("archive/version", b"3\n");
    w.finish().expect("in-memory zip").into_inner()
}

fuzz_target!(|data: &[u8]| {
    let bytes = if data.starts_with(b"PK") {
        data.to_vec()
    } else {
        archive(data)
    };
    common::bounded(bytes.len(), || {
        if let Ok(file) = r38_model::weights::load_bytes(Path::new("fuzz.pth"), &bytes) {
            common::check_loaded(&file, bytes.len());
        }
    });
});
