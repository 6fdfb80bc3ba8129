//! Typed OCI values, parsed once where untrusted text enters (a label, a
//! manifest from a registry, a command-line argument) and used as values
//! everywhere after.
//!
//! * [`Digest`] — `sha256:` + 64 lowercase hex digits, nothing else: the one
//!   digest type of the project. It is never joined onto a path as text
//!   that could be anything: [`Digest::hex`] is always 64 `[0-9a-f]`.
//! * [`chain_id`], [`chain_ids`] — containerd's layer chain IDs.
//! * [`Reference`] — `[registry/]repository[:tag][@digest]`, Docker's
//!   normalisation rules.
//! * [`ImageManifest`], [`ImageIndex`], [`Descriptor`], [`ImageConfig`],
//!   [`Platform`] — the OCI image and Docker v2 schema 2 documents, typed.
//! * [`time`] — RFC 3339 timestamps (over `jiff`).
//!
//! Why hand-written and not `oci-spec`: every digest in a document must be
//! a strict sha256 [`Digest`] at deserialisation time (a manifest naming a
//! `sha512:` or malformed digest is refused before anything looks at it),
//! and the daemon needs plain data types rather than builders. What exists
//! here is only what the project reads and writes. Nothing here does I/O.

#![forbid(unsafe_code)]

mod digest;
pub mod labels;
mod manifest;
mod reference;
pub mod time;

pub use digest::{chain_id, chain_ids, Digest, DigestError, Sha256Writer};
pub use manifest::{
    media_types, Descriptor, DocumentError, ImageConfig, ImageIndex, ImageManifest, Platform,
    RootFs, MAX_MANIFEST_SIZE,
};
pub use reference::{Reference, ReferenceError, DOCKER_HUB, DOCKER_HUB_API_HOST};

/// Entry point of the fuzz target (`fuzz/`), also replayed on stable by
/// `tests/fuzz_corpus.rs`. Must never panic, whatever the input.
#[doc(hidden)]
pub mod fuzzing {
    use crate::{time, Digest, ImageConfig, ImageIndex, ImageManifest, Platform, Reference};

    pub fn documents(data: &[u8]) {
        let text = String::from_utf8_lossy(data);
        if let Ok(d) = Digest::parse(&text) {
            assert_eq!(Digest::parse(&d.to_string()), Ok(d));
        }
        if let Ok(r) = Reference::parse(&text) {
            let again = Reference::parse(&r.to_string());
            assert_eq!(
                again.as_ref().ok(),
                Some(&r),
                "reference does not round-trip"
            );
        }
        if let Ok(t) = time::parse_rfc3339(&text) {
            let _ = time::format_rfc3339(t);
        }
        if let Ok(m) = ImageManifest::parse(data) {
            let again = ImageManifest::parse(&m.to_bytes());
            assert_eq!(
                again.as_ref().ok(),
                Some(&m),
                "manifest does not round-trip"
            );
            let _ = ImageConfig::parse_for(data, &m);
        }
        if let Ok(ix) = ImageIndex::parse(data) {
            let _ = ix.select(&Platform::current());
        }
    }
}
