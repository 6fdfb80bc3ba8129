//! Trust for hologram: UOR-IDs, witnesses and the policy that acts on them.
//!
//! * [`UorId`] — UOR-ID v1, a content-derived image identifier
//!   (`uor:v1:r<r>:<sha256 hex>`), computed by streaming;
//! * [`sign`] / [`verify`] — witnesses: DSSE envelopes holding an in-toto
//!   Statement v1 about one image manifest and its UOR-ID, signed with
//!   Ed25519 (ECDSA P-256 signatures verify too);
//! * [`decide`] — enforce or warn;
//! * [`load_dir`] — a local directory of witnesses, indexed by UOR-ID;
//! * [`endpoint`] — the witness endpoint's wire types.
//!
//! This crate does no network I/O, and its only file-system access is
//! [`load_dir`]. Verification is local cryptography against keys the caller
//! passes in: see README.md for what is verified and what is trusted.
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use hologram_trust::{sign, verify, SigningKey, UorId};
//!
//! let manifest = br#"{"schemaVersion":2}"#;
//! let digest = hologram_oci::Digest::of(manifest);
//! let uor = UorId::of(manifest);
//! let key = SigningKey::generate();
//! let now = SystemTime::now();
//! let env = sign(&key, "example.com/app:1", &digest, &uor, now, now + Duration::from_secs(3600),
//!                "ci", serde_json::Value::Null)?;
//! let ok = verify(&env, &[key.public()], &digest, &uor, now)?;
//! assert_eq!(ok.uor_id, uor);
//! # Ok::<(), hologram_trust::TrustError>(())
//! ```

#![forbid(unsafe_code)]

mod dir;
pub mod endpoint;
mod error;
mod keys;
mod policy;
mod uor;
mod witness;

pub use dir::{load_dir, parse_witness_json, Skipped, WitnessDir, MAX_WITNESS_FILE};
pub use endpoint::{ErrorResponse, VerifyRequest, VerifyResponse, WitnessResponse};
pub use error::TrustError;
pub use keys::{PublicKey, SigningKey};
pub use policy::{decide, Decision, Mode};
pub use uor::{UorHasher, UorId, R_MODULUS, STREAM_CHUNK};
pub use witness::{
    pae, sign, sign_payload, verify, verify_any, Envelope, Predicate, Signature, Statement,
    Subject, Verified, CLOCK_SKEW, DSSE_ARTIFACT_TYPE, PAYLOAD_TYPE, PREDICATE_TYPE,
    STATEMENT_TYPE,
};
