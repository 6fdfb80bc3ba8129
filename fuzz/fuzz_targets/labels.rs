//! Prepare labels (attacker-chosen annotations) → the layer request.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    hologram_snapshotter::plan::fuzz_labels(data);
});
