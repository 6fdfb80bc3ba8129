//! Bytes a CTP-96 server sends as a fetch response → the frame decoder and
//! the client's response checks.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    hologram_ctp96::fuzz_frames(data);
});
