//! A TOC region as a registry (or a local copy) serves it → footer, TOC
//! member, index.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    hologram_estargz::fuzzing::toc_region(data);
});
