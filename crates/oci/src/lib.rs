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
