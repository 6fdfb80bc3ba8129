//! `sha256:<hex>` digests.

use sha2::{Digest, Sha256};

use crate::Error;

const PREFIX: &str = "sha256:";

/// Parses an OCI sha256 digest (`sha256:` + 64 lowercase hex digits).
pub(crate) fn parse_sha256(value: &str) -> Result<[u8; 32], Error> {
    let bad = |reason| Error::BadDigest {
        value: value.to_owned(),
        reason,
    };
    let hex_part = value
        .strip_prefix(PREFIX)
        .ok_or_else(|| bad("only sha256 digests (\"sha256:<64 hex digits>\") are supported"))?;
    if hex_part.len() != 64 {
        return Err(bad("a sha256 digest has 64 hex digits"));
    }
    if !hex_part
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(bad("the hex digits of a digest must be lowercase 0-9a-f"));
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_part, &mut out).map_err(|_| bad("not hex"))?;
    Ok(out)
}

/// Formats a sha256 hash as `sha256:<hex>`.
pub(crate) fn format_sha256(hash: &[u8]) -> String {
    format!("{PREFIX}{}", hex::encode(hash))
}

/// `sha256:<hex>` of `data`.
pub(crate) fn sha256_of(data: &[u8]) -> String {
    format_sha256(&Sha256::digest(data))
}
