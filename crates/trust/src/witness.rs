//! Witnesses: DSSE envelopes holding an in-toto Statement v1 that says "this
//! manifest, with this UOR-ID, is trusted from `issued_at` to `expires_at`".
//!
//! ```json
//! {"payloadType": "application/vnd.in-toto+json",
//!  "payload": "<base64 of the statement JSON>",
//!  "signatures": [{"keyid": "<hex sha256 of the SPKI>", "sig": "<base64>"}]}
//! ```
//!
//! Signatures are over the DSSE v1 pre-authentication encoding
//! ([`pae`]) of the payload type and the payload bytes. Verification is
//! local cryptography against keys the caller trusts; nothing a server says
//! about validity is ever believed.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::{PublicKey, SigningKey, TrustError, UorId};
use hologram_oci::time::{format_rfc3339, parse_rfc3339};
use hologram_oci::Digest;

/// The DSSE payloadType of a witness.
pub const PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
/// Media type of a DSSE envelope stored as an OCI artifact (attached witnesses).
pub const DSSE_ARTIFACT_TYPE: &str = "application/vnd.dsse.envelope.v1+json";
/// The in-toto statement `_type`.
pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
/// The predicateType of a hologram witness.
pub const PREDICATE_TYPE: &str = "https://uor.foundation/hologram/witness/v1";
/// How far in the future `issued_at` may be (clocks disagree a little).
pub const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// A DSSE envelope (JSON: `payloadType`, `payload`, `signatures`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// How to read the payload; a witness has [`PAYLOAD_TYPE`].
    #[serde(rename = "payloadType")]
    pub payload_type: String,
    /// The statement, base64 (standard alphabet; URL-safe is read too).
    pub payload: String,
    /// Signatures over `pae(payload_type, payload bytes)`.
    #[serde(default)]
    pub signatures: Vec<Signature>,
}

/// One DSSE signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    /// Hint naming the key ([`PublicKey::keyid`]); may be empty (cosign).
    #[serde(default)]
    pub keyid: String,
    /// The signature, base64.
    pub sig: String,
}

/// An in-toto Statement v1 carrying a witness predicate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Statement {
    /// [`STATEMENT_TYPE`].
    #[serde(rename = "_type")]
    pub statement_type: String,
    /// The image manifest(s): `{"name": <ref>, "digest": {"sha256": <hex>}}`.
    pub subject: Vec<Subject>,
    /// [`PREDICATE_TYPE`].
    #[serde(rename = "predicateType")]
    pub predicate_type: String,
    /// What is witnessed.
    pub predicate: Predicate,
}

/// A statement subject: a name and its digests by algorithm.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subject {
    pub name: String,
    pub digest: BTreeMap<String, String>,
}

/// The witness predicate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Predicate {
    /// The UOR-ID of the manifest bytes.
    pub uor_id: String,
    /// RFC 3339.
    pub issued_at: String,
    /// RFC 3339.
    pub expires_at: String,
    /// Free-form kind of witness (e.g. `"signature"`, `"ci"`, `"manual"`).
    #[serde(default)]
    pub witness_type: String,
    /// Free-form, signed but not interpreted.
    #[serde(default)]
    pub metadata: serde_json::Value,
}

impl Statement {
    /// The statement a witness for this image makes; times are written in
    /// whole UTC seconds.
    pub fn for_image(
        image_ref: &str,
        manifest_digest: &Digest,
        uor: &UorId,
        issued_at: SystemTime,
        expires_at: SystemTime,
        witness_type: &str,
        metadata: serde_json::Value,
    ) -> Result<Statement, TrustError> {
        let hex = manifest_digest.hex();
        let issued = format_rfc3339(issued_at);
        let expires = format_rfc3339(expires_at);
        // Compare what is written (whole seconds), not the inputs.
        let (Ok(i), Ok(e)) = (parse_rfc3339(&issued), parse_rfc3339(&expires)) else {
            return Err(TrustError::Malformed(format!(
                "cannot represent {issued} / {expires} as RFC 3339"
            )));
        };
        if e <= i {
            return Err(TrustError::Malformed(format!(
                "expires_at ({expires}) must be after issued_at ({issued})"
            )));
        }
        Ok(Statement {
            statement_type: STATEMENT_TYPE.to_string(),
            subject: vec![Subject {
                name: image_ref.to_string(),
                digest: BTreeMap::from([("sha256".to_string(), hex)]),
            }],
            predicate_type: PREDICATE_TYPE.to_string(),
            predicate: Predicate {
                uor_id: uor.to_string(),
                issued_at: issued,
                expires_at: expires,
                witness_type: witness_type.to_string(),
                metadata,
            },
        })
    }

    /// Reads a statement, checking `_type` and `predicateType` first so that
    /// a statement of another kind gets its own error, not a parse error.
    pub fn from_json(bytes: &[u8]) -> Result<Statement, TrustError> {
        let value: serde_json::Value = serde_json::from_slice(bytes)
            .map_err(|e| TrustError::Malformed(format!("statement is not JSON: {e}")))?;
        let field = |name: &str| {
            value
                .get(name)
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .to_string()
        };
        let statement_type = field("_type");
        if statement_type != STATEMENT_TYPE {
            return Err(TrustError::WrongStatementType {
                expected: STATEMENT_TYPE.to_string(),
                found: statement_type,
            });
        }
        let predicate_type = field("predicateType");
        if predicate_type != PREDICATE_TYPE {
            return Err(TrustError::WrongPredicateType {
                expected: PREDICATE_TYPE.to_string(),
                found: predicate_type,
            });
        }
        serde_json::from_value(value).map_err(|e| TrustError::Malformed(format!("statement: {e}")))
    }
}

impl Envelope {
    /// Reads an envelope from its JSON.
    pub fn from_json(bytes: &[u8]) -> Result<Envelope, TrustError> {
        serde_json::from_slice(bytes)
            .map_err(|e| TrustError::Malformed(format!("not a DSSE envelope: {e}")))
    }

    /// The envelope as indented JSON.
    pub fn to_json_pretty(&self) -> String {
        // Serializing plain strings cannot fail; fall back to compact anyway.
        serde_json::to_string_pretty(self).unwrap_or_else(|_| {
            serde_json::json!({
                "payloadType": self.payload_type,
                "payload": self.payload,
                "signatures": self.signatures.iter().map(|s| serde_json::json!({"keyid": s.keyid, "sig": s.sig})).collect::<Vec<_>>(),
            })
            .to_string()
        })
    }

    /// The decoded payload bytes.
    pub fn payload_bytes(&self) -> Result<Vec<u8>, TrustError> {
        decode_base64(&self.payload)
            .ok_or_else(|| TrustError::Malformed("payload is not base64".to_string()))
    }

    /// The statement inside, **unverified**: for indexing and display only,
    /// never for a trust decision (use [`verify`]).
    pub fn peek_statement(&self) -> Result<Statement, TrustError> {
        if self.payload_type != PAYLOAD_TYPE {
            return Err(TrustError::WrongPayloadType {
                expected: PAYLOAD_TYPE.to_string(),
                found: self.payload_type.clone(),
            });
        }
        Statement::from_json(&self.payload_bytes()?)
    }
}

/// DSSE v1 pre-authentication encoding:
/// `"DSSEv1" SP len(type) SP type SP len(body) SP body`, lengths in ASCII decimal bytes.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let head = format!(
        "DSSEv1 {} {} {} ",
        payload_type.len(),
        payload_type,
        payload.len()
    );
    let mut out = Vec::with_capacity(head.len() + payload.len());
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(payload);
    out
}

/// Signs any payload into a one-signature DSSE envelope.
pub fn sign_payload(key: &SigningKey, payload_type: &str, payload: &[u8]) -> Envelope {
    let b64 = base64::engine::general_purpose::STANDARD;
    let sig = key.sign_bytes(&pae(payload_type, payload));
    Envelope {
        payload_type: payload_type.to_string(),
        payload: b64.encode(payload),
        signatures: vec![Signature {
            keyid: key.public().keyid(),
            sig: b64.encode(sig),
        }],
    }
}

/// Makes a witness: a signed statement that `uor` (the UOR-ID of the manifest
/// with digest `manifest_digest`, known as `image_ref`) is trusted from
/// `issued_at` until `expires_at`.
#[allow(clippy::too_many_arguments)]
pub fn sign(
    key: &SigningKey,
    image_ref: &str,
    manifest_digest: &Digest,
    uor: &UorId,
    issued_at: SystemTime,
    expires_at: SystemTime,
    witness_type: &str,
    metadata: serde_json::Value,
) -> Result<Envelope, TrustError> {
    let statement = Statement::for_image(
        image_ref,
        manifest_digest,
        uor,
        issued_at,
        expires_at,
        witness_type,
        metadata,
    )?;
    let payload = serde_json::to_vec(&statement)
        .map_err(|e| TrustError::Malformed(format!("cannot encode statement: {e}")))?;
    Ok(sign_payload(key, PAYLOAD_TYPE, &payload))
}

/// What a verified witness established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub uor_id: UorId,
    pub manifest_digest: Digest,
    pub issued_at: SystemTime,
    pub expires_at: SystemTime,
    /// The id of the trusted key whose signature verified.
    pub keyid: String,
    pub witness_type: String,
}

/// Verifies a witness locally. In order: the payloadType; at least one
/// signature over the PAE by a `trusted` key; the statement and predicate
/// types; a subject whose `sha256` is `manifest_digest`'s 64 lowercase hex
/// digits; the predicate's UOR-ID = `uor`; `issued_at` not after
/// `now` + [`CLOCK_SKEW`]; `now` before `expires_at`. The statement is only
/// parsed after a signature verified.
pub fn verify(
    env: &Envelope,
    trusted: &[PublicKey],
    manifest_digest: &Digest,
    uor: &UorId,
    now: SystemTime,
) -> Result<Verified, TrustError> {
    if env.payload_type != PAYLOAD_TYPE {
        return Err(TrustError::WrongPayloadType {
            expected: PAYLOAD_TYPE.to_string(),
            found: env.payload_type.clone(),
        });
    }
    if env.signatures.is_empty() {
        return Err(TrustError::Malformed(
            "envelope has no signatures".to_string(),
        ));
    }
    let payload = env.payload_bytes()?;
    let keyid = check_signatures(env, &payload, trusted)?;

    let statement = Statement::from_json(&payload)?;
    let found: Vec<&str> = statement
        .subject
        .iter()
        .filter_map(|s| s.digest.get("sha256").map(String::as_str))
        .collect();
    if !found
        .iter()
        .any(|d| Digest::parse_hex(d).ok().as_ref() == Some(manifest_digest))
    {
        return Err(TrustError::WrongSubject {
            expected: manifest_digest.hex(),
            found: if found.is_empty() {
                "no sha256 subject".to_string()
            } else {
                found
                    .iter()
                    .map(|d| format!("sha256:{d}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        });
    }

    let p = &statement.predicate;
    let witnessed = UorId::parse(&p.uor_id)
        .map_err(|e| TrustError::Malformed(format!("predicate uor_id: {e}")))?;
    if witnessed != *uor {
        return Err(TrustError::UorMismatch {
            expected: uor.to_string(),
            found: witnessed.to_string(),
        });
    }

    let issued_at = parse_rfc3339(&p.issued_at)
        .map_err(|e| TrustError::Malformed(format!("issued_at: {e}")))?;
    let expires_at = parse_rfc3339(&p.expires_at)
        .map_err(|e| TrustError::Malformed(format!("expires_at: {e}")))?;
    if expires_at <= issued_at {
        return Err(TrustError::Malformed(format!(
            "expires_at ({}) is not after issued_at ({})",
            p.expires_at, p.issued_at
        )));
    }
    let latest_issue = now.checked_add(CLOCK_SKEW).unwrap_or(now);
    if issued_at > latest_issue {
        return Err(TrustError::NotYetValid {
            at: p.issued_at.clone(),
        });
    }
    if now >= expires_at {
        return Err(TrustError::Expired {
            at: p.expires_at.clone(),
        });
    }

    Ok(Verified {
        uor_id: witnessed,
        manifest_digest: *manifest_digest,
        issued_at,
        expires_at,
        keyid,
        witness_type: p.witness_type.clone(),
    })
}

/// Verifies each envelope in turn and returns the first that verifies. If
/// none does, returns the most telling failure: one from an envelope that
/// got furthest (a correctly signed but expired witness says more than an
/// envelope signed by some unknown key). [`TrustError::NoWitness`] if
/// `envs` is empty.
pub fn verify_any(
    envs: &[Envelope],
    trusted: &[PublicKey],
    manifest_digest: &Digest,
    uor: &UorId,
    now: SystemTime,
) -> Result<Verified, TrustError> {
    let mut best: Option<TrustError> = None;
    for env in envs {
        match verify(env, trusted, manifest_digest, uor, now) {
            Ok(v) => return Ok(v),
            Err(e) => {
                if best.as_ref().is_none_or(|b| stage(&e) > stage(b)) {
                    best = Some(e);
                }
            }
        }
    }
    Err(best.unwrap_or(TrustError::NoWitness {
        uor_id: uor.to_string(),
    }))
}

/// How far verification got before an error: higher means the envelope was
/// more nearly acceptable.
fn stage(e: &TrustError) -> u8 {
    match e {
        TrustError::WrongPayloadType { .. } => 1,
        TrustError::UntrustedKey { .. } => 2,
        TrustError::BadSignature(_) => 3,
        TrustError::WrongStatementType { .. }
        | TrustError::WrongPredicateType { .. }
        | TrustError::WrongSubject { .. }
        | TrustError::UorMismatch { .. }
        | TrustError::Expired { .. }
        | TrustError::NotYetValid { .. } => 4,
        _ => 0,
    }
}

/// Returns the key id of the trusted key that signed the PAE, or why none did.
fn check_signatures(
    env: &Envelope,
    payload: &[u8],
    trusted: &[PublicKey],
) -> Result<String, TrustError> {
    let message = pae(&env.payload_type, payload);
    let trusted_ids: Vec<String> = trusted.iter().map(PublicKey::keyid).collect();
    for sig in &env.signatures {
        let Some(raw) = decode_base64(&sig.sig) else {
            continue;
        };
        for (key, id) in trusted.iter().zip(&trusted_ids) {
            if key.verify_signature(&message, &raw) {
                return Ok(id.clone());
            }
        }
    }
    let named: Vec<&str> = env.signatures.iter().map(|s| s.keyid.as_str()).collect();
    let named_list = named
        .iter()
        .map(|k| if k.is_empty() { "(none)" } else { k })
        .collect::<Vec<_>>()
        .join(", ");
    if trusted.is_empty() {
        return Err(TrustError::UntrustedKey {
            keyids: named_list,
            trusted: "no keys configured".to_string(),
        });
    }
    let claims_trusted = named.iter().any(|k| trusted_ids.iter().any(|t| t == k));
    let anonymous = named.iter().any(|k| k.is_empty());
    if claims_trusted {
        Err(TrustError::BadSignature(
            "a signature names a trusted key but does not verify over the payload (payload or signature altered)"
                .to_string(),
        ))
    } else if anonymous {
        Err(TrustError::BadSignature(format!(
            "no signature verifies with any of the {} trusted keys (signatures name no key id; wrong key, or payload or signature altered)",
            trusted.len()
        )))
    } else {
        Err(TrustError::UntrustedKey {
            keyids: named_list,
            trusted: trusted_ids.join(", "),
        })
    }
}

/// DSSE allows standard or URL-safe base64, padded or not.
fn decode_base64(s: &str) -> Option<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    [STANDARD, URL_SAFE, STANDARD_NO_PAD, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|engine| engine.decode(s.trim()).ok())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use p256::ecdsa::signature::Signer as _;
    use std::time::UNIX_EPOCH;

    const MANIFEST: &[u8] = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[]}"#;
    const REF: &str = "registry.example/app:1";

    fn digest() -> Digest {
        Digest::of(MANIFEST)
    }
    fn issued() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }
    fn expires() -> SystemTime {
        issued() + Duration::from_secs(24 * 3600)
    }
    fn now() -> SystemTime {
        issued() + Duration::from_secs(3600)
    }
    fn uor() -> UorId {
        UorId::of(MANIFEST)
    }
    fn statement() -> Statement {
        Statement::for_image(
            REF,
            &digest(),
            &uor(),
            issued(),
            expires(),
            "ci",
            serde_json::json!({"run": 7}),
        )
        .unwrap()
    }
    fn witness(key: &SigningKey) -> Envelope {
        sign(
            key,
            REF,
            &digest(),
            &uor(),
            issued(),
            expires(),
            "ci",
            serde_json::json!({"run": 7}),
        )
        .unwrap()
    }
    fn check(env: &Envelope, key: &PublicKey) -> Result<Verified, TrustError> {
        verify(env, std::slice::from_ref(key), &digest(), &uor(), now())
    }
    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    #[test]
    fn pae_is_dsse_v1() {
        assert_eq!(
            pae(PAYLOAD_TYPE, b"hello"),
            include_bytes!("../testdata/openssl-p256.msg").to_vec()
        );
        assert_eq!(pae("", b""), b"DSSEv1 0  0 ".to_vec());
    }

    #[test]
    fn ed25519_round_trip() {
        let key = SigningKey::generate();
        let env = witness(&key);
        let v = check(&env, &key.public()).unwrap();
        assert_eq!(v.uor_id, uor());
        assert_eq!(v.manifest_digest, digest());
        assert_eq!(v.issued_at, issued());
        assert_eq!(v.expires_at, expires());
        assert_eq!(v.keyid, key.public().keyid());
        assert_eq!(v.witness_type, "ci");

        // Through JSON, with DSSE's field names.
        let json = env.to_json_pretty();
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["payloadType"], PAYLOAD_TYPE);
        assert!(value["payload"].is_string());
        assert_eq!(value["signatures"][0]["keyid"], key.public().keyid());
        let back = Envelope::from_json(json.as_bytes()).unwrap();
        assert_eq!(back, env);
        assert!(check(&back, &key.public()).is_ok());

        // The statement is what the design says.
        let st: serde_json::Value = serde_json::from_slice(&env.payload_bytes().unwrap()).unwrap();
        assert_eq!(st["_type"], STATEMENT_TYPE);
        assert_eq!(st["predicateType"], PREDICATE_TYPE);
        assert_eq!(st["subject"][0]["name"], REF);
        assert_eq!(st["subject"][0]["digest"]["sha256"], digest().hex());
        assert_eq!(st["predicate"]["uor_id"], uor().to_string());
        assert_eq!(st["predicate"]["issued_at"], "2023-11-14T22:13:20Z");
        assert_eq!(st["predicate"]["expires_at"], "2023-11-15T22:13:20Z");
        assert_eq!(st["predicate"]["witness_type"], "ci");
        assert_eq!(st["predicate"]["metadata"]["run"], 7);
        assert_eq!(env.peek_statement().unwrap(), statement());
    }

    #[test]
    fn accepts_cosign_style_envelopes() {
        // No keyid, URL-safe unpadded base64: still verifies.
        let key = SigningKey::generate();
        let mut env = witness(&key);
        let url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        env.payload = url.encode(env.payload_bytes().unwrap());
        env.signatures[0].keyid.clear();
        assert!(check(&env, &key.public()).is_ok());
    }

    fn p256_envelope(der: bool) -> (Envelope, PublicKey) {
        let sk = p256::ecdsa::SigningKey::from_slice(&[0x42u8; 32]).unwrap();
        let public = PublicKey::EcdsaP256(*sk.verifying_key());
        let payload = serde_json::to_vec(&statement()).unwrap();
        let sig: p256::ecdsa::Signature = sk.sign(&pae(PAYLOAD_TYPE, &payload));
        let sig_bytes = if der {
            sig.to_der().as_bytes().to_vec()
        } else {
            sig.to_bytes().to_vec()
        };
        let env = Envelope {
            payload_type: PAYLOAD_TYPE.to_string(),
            payload: b64(&payload),
            signatures: vec![Signature {
                keyid: String::new(),
                sig: b64(&sig_bytes),
            }],
        };
        (env, public)
    }

    #[test]
    fn p256_der_and_raw_signatures() {
        for der in [true, false] {
            let (env, public) = p256_envelope(der);
            let v = check(&env, &public).unwrap();
            assert_eq!(v.keyid, public.keyid());
            // The P-256 key trusted among others.
            let other = SigningKey::generate().public();
            assert!(verify(
                &env,
                &[other.clone(), public.clone()],
                &digest(),
                &uor(),
                now()
            )
            .is_ok());
            // Not trusted: rejected.
            assert!(matches!(
                check(&env, &other),
                Err(TrustError::BadSignature(_))
            ));
            // Tampered: rejected.
            let mut bad = env.clone();
            let mut payload = bad.payload_bytes().unwrap();
            payload[10] ^= 1;
            bad.payload = b64(&payload);
            assert!(
                matches!(check(&bad, &public), Err(TrustError::BadSignature(_))),
                "der={der}"
            );
        }
    }

    #[test]
    fn untrusted_key() {
        let env = witness(&SigningKey::generate());
        let err = check(&env, &SigningKey::generate().public()).unwrap_err();
        assert!(matches!(err, TrustError::UntrustedKey { .. }), "{err}");
        let err = verify(&env, &[], &digest(), &uor(), now()).unwrap_err();
        assert!(matches!(err, TrustError::UntrustedKey { .. }), "{err}");
        assert!(err.to_string().contains("no keys configured"), "{err}");
    }

    #[test]
    fn tampered_payload() {
        let key = SigningKey::generate();
        let mut env = witness(&key);
        // Re-sign nothing; swap in a statement for another image.
        let mut st = statement();
        st.predicate.uor_id = UorId::of(b"evil").to_string();
        env.payload = b64(&serde_json::to_vec(&st).unwrap());
        let err = check(&env, &key.public()).unwrap_err();
        assert!(matches!(err, TrustError::BadSignature(_)), "{err}");
    }

    #[test]
    fn tampered_signature() {
        let key = SigningKey::generate();
        let mut env = witness(&key);
        let mut sig = decode_base64(&env.signatures[0].sig).unwrap();
        sig[5] ^= 0x40;
        env.signatures[0].sig = b64(&sig);
        let err = check(&env, &key.public()).unwrap_err();
        assert!(matches!(err, TrustError::BadSignature(_)), "{err}");
        env.signatures[0].sig = "not base64!".to_string();
        let err = check(&env, &key.public()).unwrap_err();
        assert!(matches!(err, TrustError::BadSignature(_)), "{err}");
    }

    #[test]
    fn one_good_signature_among_others_is_enough() {
        let key = SigningKey::generate();
        let mut env = witness(&key);
        let stranger = witness(&SigningKey::generate()).signatures.remove(0);
        env.signatures.insert(0, stranger);
        let v = check(&env, &key.public()).unwrap();
        assert_eq!(v.keyid, key.public().keyid());
    }

    #[test]
    fn wrong_subject() {
        let key = SigningKey::generate();
        let env = witness(&key);
        let other = Digest::from_bytes([0xab; 32]);
        let err = verify(&env, &[key.public()], &other, &uor(), now()).unwrap_err();
        match &err {
            TrustError::WrongSubject { expected, found } => {
                assert_eq!(expected, &"ab".repeat(32));
                assert_eq!(found, &digest().to_string());
            }
            e => panic!("{e}"),
        }
        // A statement with no sha256 subject at all.
        let mut st = statement();
        st.subject[0].digest = BTreeMap::from([("sha512".to_string(), "00".repeat(64))]);
        let env = sign_payload(&key, PAYLOAD_TYPE, &serde_json::to_vec(&st).unwrap());
        let err = check(&env, &key.public()).unwrap_err();
        assert!(matches!(err, TrustError::WrongSubject { .. }), "{err}");
        assert!(err.to_string().contains("no sha256 subject"), "{err}");
    }

    #[test]
    fn uor_mismatch() {
        let key = SigningKey::generate();
        let env = witness(&key);
        let other = UorId::of(b"another manifest");
        let err = verify(&env, &[key.public()], &digest(), &other, now()).unwrap_err();
        assert!(matches!(err, TrustError::UorMismatch { .. }), "{err}");
    }

    #[test]
    fn expiry_and_not_yet_valid() {
        let key = SigningKey::generate();
        let env = witness(&key);
        let trusted = [key.public()];
        let at = |t: SystemTime| verify(&env, &trusted, &digest(), &uor(), t);
        assert!(at(expires() - Duration::from_secs(1)).is_ok());
        let err = at(expires()).unwrap_err();
        assert!(matches!(err, TrustError::Expired { .. }), "{err}");
        assert!(err.to_string().contains("2023-11-15T22:13:20Z"), "{err}");
        assert!(matches!(
            at(expires() + Duration::from_secs(86_400)),
            Err(TrustError::Expired { .. })
        ));
        // Issued in the future: within the skew is fine, beyond it is not.
        assert!(at(issued() - Duration::from_secs(59)).is_ok());
        assert!(at(issued() - CLOCK_SKEW).is_ok());
        let err = at(issued() - Duration::from_secs(61)).unwrap_err();
        assert!(matches!(err, TrustError::NotYetValid { .. }), "{err}");
    }

    #[test]
    fn wrong_payload_type() {
        let key = SigningKey::generate();
        let payload = serde_json::to_vec(&statement()).unwrap();
        let env = sign_payload(&key, "application/json", &payload);
        let err = check(&env, &key.public()).unwrap_err();
        assert!(matches!(err, TrustError::WrongPayloadType { .. }), "{err}");
    }

    #[test]
    fn wrong_predicate_and_statement_type() {
        let key = SigningKey::generate();
        let mut st = statement();
        st.predicate_type = "https://slsa.dev/provenance/v1".to_string();
        let env = sign_payload(&key, PAYLOAD_TYPE, &serde_json::to_vec(&st).unwrap());
        let err = check(&env, &key.public()).unwrap_err();
        assert!(
            matches!(err, TrustError::WrongPredicateType { .. }),
            "{err}"
        );

        let mut st = statement();
        st.statement_type = "https://in-toto.io/Statement/v0.1".to_string();
        let env = sign_payload(&key, PAYLOAD_TYPE, &serde_json::to_vec(&st).unwrap());
        let err = check(&env, &key.public()).unwrap_err();
        assert!(
            matches!(err, TrustError::WrongStatementType { .. }),
            "{err}"
        );
    }

    #[test]
    fn malformed() {
        let key = SigningKey::generate();
        let mut env = witness(&key);
        env.signatures.clear();
        assert!(matches!(
            check(&env, &key.public()),
            Err(TrustError::Malformed(_))
        ));

        let mut env = witness(&key);
        env.payload = "%%%".to_string();
        assert!(matches!(
            check(&env, &key.public()),
            Err(TrustError::Malformed(_))
        ));

        // Signed, but not a statement.
        let env = sign_payload(&key, PAYLOAD_TYPE, b"not json");
        assert!(matches!(
            check(&env, &key.public()),
            Err(TrustError::Malformed(_))
        ));

        // Signed, but the times are nonsense.
        let mut st = statement();
        st.predicate.expires_at = "tomorrow".to_string();
        let env = sign_payload(&key, PAYLOAD_TYPE, &serde_json::to_vec(&st).unwrap());
        assert!(matches!(
            check(&env, &key.public()),
            Err(TrustError::Malformed(_))
        ));
        let mut st = statement();
        st.predicate.expires_at = st.predicate.issued_at.clone();
        let env = sign_payload(&key, PAYLOAD_TYPE, &serde_json::to_vec(&st).unwrap());
        assert!(matches!(
            check(&env, &key.public()),
            Err(TrustError::Malformed(_))
        ));

        // A subject digest in uppercase hex is not the manifest's digest.
        let mut st = statement();
        st.subject[0].digest =
            BTreeMap::from([("sha256".to_string(), digest().hex().to_uppercase())]);
        let env = sign_payload(&key, PAYLOAD_TYPE, &serde_json::to_vec(&st).unwrap());
        assert!(matches!(
            check(&env, &key.public()),
            Err(TrustError::WrongSubject { .. })
        ));
        assert!(Envelope::from_json(b"{\"payload\": 1}").is_err());
    }

    #[test]
    fn sign_rejects_bad_input() {
        let key = SigningKey::generate();
        let d = digest();
        let u = uor();
        let meta = serde_json::Value::Null;
        assert!(sign(&key, REF, &d, &u, issued(), issued(), "ci", meta.clone()).is_err());
        // Less than a whole second apart: equal once written.
        let almost = issued() + Duration::from_millis(500);
        assert!(sign(&key, REF, &d, &u, issued(), almost, "ci", meta).is_err());
    }

    #[test]
    fn verify_any_prefers_the_most_telling_error() {
        let key = SigningKey::generate();
        let stranger = witness(&SigningKey::generate());
        let expired = sign(
            &key,
            REF,
            &digest(),
            &uor(),
            issued() - Duration::from_secs(7200),
            issued(),
            "ci",
            serde_json::Value::Null,
        )
        .unwrap();
        let trusted = [key.public()];
        let err = verify_any(
            &[stranger.clone(), expired.clone()],
            &trusted,
            &digest(),
            &uor(),
            now(),
        )
        .unwrap_err();
        assert!(matches!(err, TrustError::Expired { .. }), "{err}");
        let err = verify_any(
            &[expired, stranger.clone()],
            &trusted,
            &digest(),
            &uor(),
            now(),
        )
        .unwrap_err();
        assert!(matches!(err, TrustError::Expired { .. }), "{err}");
        let good = witness(&key);
        assert!(verify_any(&[stranger, good], &trusted, &digest(), &uor(), now()).is_ok());
        assert!(matches!(
            verify_any(&[], &trusted, &digest(), &uor(), now()),
            Err(TrustError::NoWitness { .. })
        ));
    }
}
