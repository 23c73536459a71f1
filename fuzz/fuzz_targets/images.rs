//! Image and label decoding: `ImageLoader::decode_rgb8` (JPEG and PNG, with the truncation
//! check) and `decode_label_png` on arbitrary bytes, under a pixel limit of 2^20.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    common::bounded(data.len(), || {
        let loader = r38_data::ImageLoader::new().with_pixel_limit(Some(1 << 20));
        if let Ok(img) = loader.decode_rgb8(data, "fuzz.img") {
            assert!(u64::from(img.width()) * u64::from(img.height()) <= 1 << 20);
        }
        let _ = r38_data::image_io::check_jpeg_complete(data);
        if let Ok(map) = r38_data::datasets::decode_label_png(data, Path::new("fuzz.png"), None) {
            assert_eq!(map.data.len(), map.width as usize * map.height as usize);
        }
    });
});
