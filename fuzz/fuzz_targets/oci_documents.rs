//! Digests, references, manifests, indexes, configs, RFC 3339 times.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    hologram_oci::fuzzing::documents(data);
});
