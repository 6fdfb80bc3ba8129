//! The one error type of this crate. Every way a witness can fail to verify
//! has its own variant, so callers (and logs) say exactly why.

use std::path::PathBuf;

/// Why a UOR-ID, a key or a witness was rejected.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// A string is not a UOR-ID v1 (`uor:v1:r<0..95>:<64 lowercase hex>`).
    #[error("invalid UOR-ID {input:?}: {reason}")]
    InvalidUorId { input: String, reason: String },

    /// A key could not be read, decoded or used.
    #[error("key error: {0}")]
    Key(String),

    /// No signature of the envelope was made by any of the trusted keys
    /// (the key ids named by the signatures are listed).
    #[error(
        "witness is not signed by a trusted key (signature key ids: {keyids}; trusted: {trusted})"
    )]
    UntrustedKey { keyids: String, trusted: String },

    /// A signature claims a trusted key (or names none) but does not verify
    /// over the envelope's payload: the payload or the signature was altered.
    #[error("witness signature does not verify: {0}")]
    BadSignature(String),

    /// The envelope's payloadType is not `application/vnd.in-toto+json`.
    #[error("witness payloadType is {found:?}, expected {expected:?}")]
    WrongPayloadType { expected: String, found: String },

    /// The statement's `_type` is not in-toto Statement v1.
    #[error("witness statement _type is {found:?}, expected {expected:?}")]
    WrongStatementType { expected: String, found: String },

    /// The statement's predicateType is not the hologram witness v1.
    #[error("witness predicateType is {found:?}, expected {expected:?}")]
    WrongPredicateType { expected: String, found: String },

    /// No subject of the statement has the manifest's sha256 digest.
    #[error("witness is for another manifest: expected subject sha256:{expected}, found {found}")]
    WrongSubject { expected: String, found: String },

    /// The predicate names another UOR-ID than the image's.
    #[error("witness is for another UOR-ID: expected {expected}, found {found}")]
    UorMismatch { expected: String, found: String },

    /// The witness expired (`at` is its `expires_at`, RFC 3339).
    #[error("witness expired at {at}")]
    Expired { at: String },

    /// The witness was issued in the future, beyond the allowed clock skew
    /// (`at` is its `issued_at`, RFC 3339).
    #[error("witness is not valid yet: issued at {at}, beyond the allowed clock skew")]
    NotYetValid { at: String },

    /// No witness at all was found for this UOR-ID.
    #[error("no witness found for {uor_id}")]
    NoWitness { uor_id: String },

    /// The envelope or its statement is not well-formed.
    #[error("malformed witness: {0}")]
    Malformed(String),

    /// A file or directory could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}
