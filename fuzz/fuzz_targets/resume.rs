//! Training resume state: a checkpoint's `state.json` as `TrainState` on arbitrary bytes.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    common::bounded(data.len(), || {
        if let Ok(state) = serde_json::from_slice::<r38_train::checkpoint::TrainState>(data) {
            // What was read can be written back.
            let _ = serde_json::to_vec(&state).unwrap();
        }
    });
});
