//! Keys: Ed25519 signing keys (PKCS#8 PEM) and Ed25519 / ECDSA P-256
//! public keys (SubjectPublicKeyInfo PEM, the format `cosign` and
//! `openssl pkey -pubout` write).

use std::fmt;

use base64::Engine as _;
use ed25519_dalek::pkcs8::{DecodePrivateKey as _, DecodePublicKey as _};
use ed25519_dalek::Signer as _;
use p256::ecdsa::signature::Verifier as _;
use sha2::{Digest as _, Sha256};

use crate::TrustError;

/// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410), before the 32 key bytes.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, // SEQUENCE, 42 bytes
    0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, // AlgorithmIdentifier { id-Ed25519 }
    0x03, 0x21, 0x00, // BIT STRING, 33 bytes, no unused bits
];

/// DER prefix of a P-256 SubjectPublicKeyInfo (RFC 5480), before the
/// 65-byte uncompressed point.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, // SEQUENCE, 89 bytes
    0x30, 0x13, // AlgorithmIdentifier, 19 bytes
    0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, // id-ecPublicKey
    0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, // prime256v1
    0x03, 0x42, 0x00, // BIT STRING, 66 bytes, no unused bits
];

/// DER prefix of an Ed25519 PKCS#8 v1 private key (RFC 8410), before the 32 seed bytes.
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, // SEQUENCE, 46 bytes
    0x02, 0x01, 0x00, // version 0
    0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, // AlgorithmIdentifier { id-Ed25519 }
    0x04, 0x22, 0x04, 0x20, // OCTET STRING { OCTET STRING, 32 bytes }
];

/// A key trusted to sign witnesses.
#[derive(Clone, PartialEq, Eq)]
pub enum PublicKey {
    Ed25519(ed25519_dalek::VerifyingKey),
    EcdsaP256(p256::ecdsa::VerifyingKey),
}

impl PublicKey {
    /// Reads a `-----BEGIN PUBLIC KEY-----` (SubjectPublicKeyInfo) PEM
    /// holding an Ed25519 or an ECDSA P-256 key.
    pub fn from_pem(pem: &str) -> Result<Self, TrustError> {
        let pem = pem.trim();
        if let Ok(k) = ed25519_dalek::VerifyingKey::from_public_key_pem(pem) {
            return Ok(PublicKey::Ed25519(k));
        }
        if let Ok(k) = p256::PublicKey::from_public_key_pem(pem) {
            return Ok(PublicKey::EcdsaP256(p256::ecdsa::VerifyingKey::from(&k)));
        }
        Err(TrustError::Key(describe_unusable_pem(
            pem,
            "PUBLIC KEY",
            "not an Ed25519 or ECDSA P-256 public key (expected a \"PUBLIC KEY\" SubjectPublicKeyInfo PEM, as cosign or `openssl pkey -pubout` write)",
        )))
    }

    /// Reads a DER SubjectPublicKeyInfo holding an Ed25519 or P-256 key.
    pub fn from_spki_der(der: &[u8]) -> Result<Self, TrustError> {
        if let Ok(k) = ed25519_dalek::VerifyingKey::from_public_key_der(der) {
            return Ok(PublicKey::Ed25519(k));
        }
        if let Ok(k) = p256::PublicKey::from_public_key_der(der) {
            return Ok(PublicKey::EcdsaP256(p256::ecdsa::VerifyingKey::from(&k)));
        }
        Err(TrustError::Key(
            "not an Ed25519 or ECDSA P-256 SubjectPublicKeyInfo".to_string(),
        ))
    }

    /// The DER SubjectPublicKeyInfo of this key (P-256 points uncompressed).
    pub fn to_spki_der(&self) -> Vec<u8> {
        match self {
            PublicKey::Ed25519(k) => [&ED25519_SPKI_PREFIX[..], k.as_bytes()].concat(),
            PublicKey::EcdsaP256(k) => {
                let point = k.to_encoded_point(false);
                [&P256_SPKI_PREFIX[..], point.as_bytes()].concat()
            }
        }
    }

    /// The key as a `PUBLIC KEY` PEM.
    pub fn to_pem(&self) -> String {
        pem_encode("PUBLIC KEY", &self.to_spki_der())
    }

    /// The key's id: lowercase hex SHA-256 of its DER SubjectPublicKeyInfo.
    /// Signatures name it as a hint; it is never trusted by itself.
    pub fn keyid(&self) -> String {
        hex::encode(Sha256::digest(self.to_spki_der()))
    }

    /// `"ed25519"` or `"ecdsa-p256"`.
    pub fn algorithm(&self) -> &'static str {
        match self {
            PublicKey::Ed25519(_) => "ed25519",
            PublicKey::EcdsaP256(_) => "ecdsa-p256",
        }
    }

    /// Whether `sig` is this key's signature over `msg`.
    ///
    /// Ed25519 uses strict verification (no small-order keys, canonical
    /// `s`). ECDSA P-256 signs SHA-256 of `msg`; the signature may be ASN.1
    /// DER (what cosign and OpenSSL write) or the fixed 64-byte `r || s`
    /// form, and high-`s` signatures are accepted as Go and OpenSSL make them.
    pub fn verify_signature(&self, msg: &[u8], sig: &[u8]) -> bool {
        match self {
            PublicKey::Ed25519(k) => ed25519_dalek::Signature::from_slice(sig)
                .map(|s| k.verify_strict(msg, &s).is_ok())
                .unwrap_or(false),
            PublicKey::EcdsaP256(k) => {
                let raw_ok = sig.len() == 64
                    && p256::ecdsa::Signature::from_slice(sig)
                        .map(|s| k.verify(msg, &s).is_ok())
                        .unwrap_or(false);
                raw_ok
                    || p256::ecdsa::Signature::from_der(sig)
                        .map(|s| k.verify(msg, &s).is_ok())
                        .unwrap_or(false)
            }
        }
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({} {})", self.algorithm(), self.keyid())
    }
}

/// A key that signs witnesses. Only Ed25519 is supported for signing (P-256
/// keys are accepted for verification).
#[derive(Clone)]
pub enum SigningKey {
    Ed25519(ed25519_dalek::SigningKey),
}

impl SigningKey {
    /// A fresh random Ed25519 key from the operating system's generator.
    pub fn generate() -> Self {
        SigningKey::Ed25519(ed25519_dalek::SigningKey::generate(&mut rand_core::OsRng))
    }

    /// Reads a `-----BEGIN PRIVATE KEY-----` (PKCS#8, v1 or v2) Ed25519 PEM,
    /// as [`SigningKey::to_pem`] or `openssl genpkey -algorithm ed25519` write.
    pub fn from_pem(pem: &str) -> Result<Self, TrustError> {
        let pem = pem.trim();
        if let Ok(k) = ed25519_dalek::SigningKey::from_pkcs8_pem(pem) {
            return Ok(SigningKey::Ed25519(k));
        }
        if p256::SecretKey::from_pkcs8_pem(pem).is_ok() {
            return Err(TrustError::Key(
                "ECDSA P-256 private keys cannot sign witnesses here (only Ed25519); P-256 public keys can verify"
                    .to_string(),
            ));
        }
        Err(TrustError::Key(describe_unusable_pem(
            pem,
            "PRIVATE KEY",
            "not an unencrypted PKCS#8 Ed25519 private key (expected a \"PRIVATE KEY\" PEM)",
        )))
    }

    /// The key as an unencrypted PKCS#8 v1 `PRIVATE KEY` PEM. Keep it secret.
    pub fn to_pem(&self) -> String {
        match self {
            SigningKey::Ed25519(k) => {
                let der = [&ED25519_PKCS8_PREFIX[..], k.as_bytes()].concat();
                pem_encode("PRIVATE KEY", &der)
            }
        }
    }

    /// The matching public key.
    pub fn public(&self) -> PublicKey {
        match self {
            SigningKey::Ed25519(k) => PublicKey::Ed25519(k.verifying_key()),
        }
    }

    /// The raw signature over `msg` (64 bytes for Ed25519).
    pub fn sign_bytes(&self, msg: &[u8]) -> Vec<u8> {
        match self {
            SigningKey::Ed25519(k) => k.sign(msg).to_bytes().to_vec(),
        }
    }
}

impl fmt::Debug for SigningKey {
    /// Never prints key material.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey(ed25519, public {})", self.public().keyid())
    }
}

/// A PEM block: base64 in 64-column lines between BEGIN/END lines.
fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    let mut rest = b64.as_str();
    while !rest.is_empty() {
        // base64 is ASCII, so any index is a character boundary.
        let (line, tail) = rest.split_at(rest.len().min(64));
        out.push_str(line);
        out.push('\n');
        rest = tail;
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// A helpful message for a PEM we could not use.
fn describe_unusable_pem(pem: &str, wanted: &str, generic: &str) -> String {
    let label = pem
        .lines()
        .find_map(|l| l.trim().strip_prefix("-----BEGIN ")?.strip_suffix("-----"))
        .map(str::to_string);
    match label.as_deref() {
        None => "no PEM block found (expected -----BEGIN ".to_string() + wanted + "-----)",
        Some(l) if l.contains("ENCRYPTED") => {
            format!("{l:?} keys are encrypted; export an unencrypted PKCS#8 key")
        }
        Some("PUBLIC KEY") if wanted != "PUBLIC KEY" => {
            "this is a public key; a private key is needed here".to_string()
        }
        Some(l) if l.contains("PRIVATE KEY") && wanted == "PUBLIC KEY" => {
            "this is a private key; pass the public key (PUBLIC KEY PEM) instead".to_string()
        }
        Some(_) => generic.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use p256::pkcs8::{EncodePrivateKey as _, EncodePublicKey as _};

    // Made with `openssl genpkey -algorithm ed25519` / `openssl pkey -pubout`
    // and `openssl ecparam -name prime256v1 -genkey | openssl pkcs8 -topk8 -nocrypt`.
    const OPENSSL_ED25519_KEY: &str = include_str!("../testdata/openssl-ed25519.key");
    const OPENSSL_ED25519_PUB: &str = include_str!("../testdata/openssl-ed25519.pub");
    const OPENSSL_P256_PUB: &str = include_str!("../testdata/openssl-p256.pub");
    const OPENSSL_P256_KEY: &str = include_str!("../testdata/openssl-p256.key");

    #[test]
    fn ed25519_pem_round_trip_and_encodings_match_openssl() {
        let k = SigningKey::generate();
        let pem = k.to_pem();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        let back = SigningKey::from_pem(&pem).unwrap();
        assert_eq!(back.public(), k.public());
        // Our v1 encoding is byte-for-byte OpenSSL's.
        let openssl = SigningKey::from_pem(OPENSSL_ED25519_KEY).unwrap();
        assert_eq!(openssl.to_pem(), OPENSSL_ED25519_KEY);
        // The v2 form (with the public key) that ed25519-dalek writes is read too.
        let SigningKey::Ed25519(inner) = &k;
        let v2 = inner.to_pkcs8_pem(p256::pkcs8::LineEnding::LF).unwrap();
        assert_eq!(SigningKey::from_pem(&v2).unwrap().public(), k.public());
        let public = k.public();
        let PublicKey::Ed25519(vk) = &public else {
            panic!("ed25519")
        };
        assert_eq!(
            vk.to_public_key_der().unwrap().as_bytes(),
            &public.to_spki_der()[..]
        );
        assert_eq!(PublicKey::from_pem(&public.to_pem()).unwrap(), public);
        assert_eq!(public.keyid().len(), 64);
        assert_ne!(SigningKey::generate().public().keyid(), public.keyid());
    }

    #[test]
    fn p256_spki_matches_der_encoder() {
        let sk = p256::ecdsa::SigningKey::from_slice(&[7u8; 32]).unwrap();
        let vk = *sk.verifying_key();
        let public = PublicKey::EcdsaP256(vk);
        assert_eq!(
            vk.to_public_key_der().unwrap().as_bytes(),
            &public.to_spki_der()[..]
        );
        assert_eq!(PublicKey::from_pem(&public.to_pem()).unwrap(), public);
        assert_eq!(
            PublicKey::from_spki_der(&public.to_spki_der()).unwrap(),
            public
        );
    }

    #[test]
    fn reads_openssl_keys() {
        let k = SigningKey::from_pem(OPENSSL_ED25519_KEY).unwrap();
        let p = PublicKey::from_pem(OPENSSL_ED25519_PUB).unwrap();
        assert_eq!(k.public(), p);
        assert_eq!(p.to_pem(), OPENSSL_ED25519_PUB);
        let p256 = PublicKey::from_pem(OPENSSL_P256_PUB).unwrap();
        assert_eq!(p256.algorithm(), "ecdsa-p256");
        assert_eq!(p256.to_pem(), OPENSSL_P256_PUB);
    }

    #[test]
    fn verifies_openssl_p256_signature() {
        // `openssl dgst -sha256 -sign openssl-p256.key` over this message (DER).
        let msg = include_bytes!("../testdata/openssl-p256.msg");
        let sig = include_bytes!("../testdata/openssl-p256.sig");
        let p = PublicKey::from_pem(OPENSSL_P256_PUB).unwrap();
        assert!(p.verify_signature(msg, sig));
        assert!(!p.verify_signature(b"something else", sig));
        // The same signature in fixed r || s form.
        let raw = p256::ecdsa::Signature::from_der(sig).unwrap().to_bytes();
        assert!(p.verify_signature(msg, &raw));
    }

    #[test]
    fn rejects_unusable_keys() {
        let e = SigningKey::from_pem(OPENSSL_P256_KEY)
            .unwrap_err()
            .to_string();
        assert!(e.contains("only Ed25519"), "{e}");
        let e = SigningKey::from_pem(OPENSSL_ED25519_PUB)
            .unwrap_err()
            .to_string();
        assert!(e.contains("public key"), "{e}");
        let e = PublicKey::from_pem(OPENSSL_ED25519_KEY)
            .unwrap_err()
            .to_string();
        assert!(e.contains("private key"), "{e}");
        let e = PublicKey::from_pem("hello").unwrap_err().to_string();
        assert!(e.contains("no PEM block"), "{e}");
        let e = SigningKey::from_pem(
            "-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED SIGSTORE PRIVATE KEY-----\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("encrypted"), "{e}");
        // A P-256 private key is not a public key either.
        let sk = p256::SecretKey::from_slice(&[9u8; 32]).unwrap();
        let pem = sk.to_pkcs8_pem(p256::pkcs8::LineEnding::LF).unwrap();
        assert!(PublicKey::from_pem(&pem).is_err());
    }

    #[test]
    fn debug_does_not_leak_the_secret() {
        let k = SigningKey::generate();
        let SigningKey::Ed25519(inner) = &k;
        let dbg = format!("{k:?}");
        assert!(!dbg.contains(&hex::encode(inner.as_bytes())));
        assert!(dbg.contains(&k.public().keyid()));
    }
}
