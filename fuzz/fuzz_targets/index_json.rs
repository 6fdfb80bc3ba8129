//! TOC JSON → the streaming index builder.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    hologram_estargz::fuzzing::index_json(data);
});
