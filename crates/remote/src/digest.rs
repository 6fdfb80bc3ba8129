//! Content digests (`sha256:<hex>` / `sha512:<hex>`): validation, computing
//! and verification.

use sha2::{Digest as _, Sha256, Sha512};

use crate::Error;

/// The `sha256:<hex>` digest of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// Checks that `digest` is `sha256:` + 64 lowercase hex digits or
/// `sha512:` + 128 (the algorithms this crate can verify).
pub fn validate_digest(digest: &str) -> Result<(), Error> {
    let (algo, hex_part) = digest
        .split_once(':')
        .ok_or_else(|| Error::InvalidDigest(format!("{digest:?}: missing ':'")))?;
    let want = match algo {
        "sha256" => 64,
        "sha512" => 128,
        _ => {
            return Err(Error::InvalidDigest(format!(
                "{digest:?}: unsupported algorithm {algo:?} (sha256 and sha512 are supported)"
            )))
        }
    };
    if hex_part.len() != want
        || !hex_part
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(Error::InvalidDigest(format!(
            "{digest:?}: expected {want} lowercase hex digits after '{algo}:'"
        )));
    }
    Ok(())
}

/// Computes the digest of `data` with the algorithm `like` names.
pub fn compute_digest_like(like: &str, data: &[u8]) -> Result<String, Error> {
    validate_digest(like)?;
    if like.starts_with("sha512:") {
        Ok(format!("sha512:{}", hex::encode(Sha512::digest(data))))
    } else {
        Ok(sha256_digest(data))
    }
}

/// Fails with [`Error::DigestMismatch`] unless `data` hashes to `expected`.
pub fn verify_digest(expected: &str, data: &[u8]) -> Result<(), Error> {
    let actual = compute_digest_like(expected, data)?;
    if actual != expected {
        return Err(Error::DigestMismatch {
            expected: expected.to_string(),
            actual,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn sha256_of_empty() {
        assert_eq!(
            sha256_digest(b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert!(verify_digest(&sha256_digest(b"abc"), b"abc").is_ok());
    }

    #[test]
    fn sha512_verifies() {
        let d =
            compute_digest_like(&format!("sha512:{}", "0".repeat(128)), b"abc").unwrap_or_default();
        assert!(d.starts_with("sha512:"));
        assert!(verify_digest(&d, b"abc").is_ok());
        assert!(matches!(
            verify_digest(&d, b"abd"),
            Err(Error::DigestMismatch { .. })
        ));
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "sha256",
            "sha256:abc",
            "md5:00",
            &format!("sha256:{}", "A".repeat(64)),
        ] {
            assert!(
                matches!(validate_digest(bad), Err(Error::InvalidDigest(_))),
                "{bad}"
            );
        }
    }
}
