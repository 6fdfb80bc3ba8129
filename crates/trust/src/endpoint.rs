//! Wire types of the witness endpoint (`HOLOGRAM_WITNESS_ENDPOINT`).
//!
//! * `GET {endpoint}/v1/witness/{uor_id}` → `200` [`WitnessResponse`], or
//!   `404` [`ErrorResponse`] when the server has no witness;
//! * `POST {endpoint}/v1/witness/verify` with [`VerifyRequest`] → `200`
//!   [`VerifyResponse`].
//!
//! A server's `valid: true` only means "I have a witness". Clients never
//! trust it: they verify the `envelope` with their own keys
//! ([`crate::verify`]). The flat fields (`timestamp`, `signature`, …) exist
//! for compatibility with other Hologram tools and are informational.

use serde::{Deserialize, Serialize};

use crate::{Envelope, TrustError, UorId};

/// Path of the verify call.
pub const VERIFY_PATH: &str = "/v1/witness/verify";

/// Path of the witness of `uor` (`/v1/witness/uor:v1:r…:…`).
pub fn witness_path(uor: &UorId) -> String {
    format!("/v1/witness/{uor}")
}

/// Answer to `GET /v1/witness/{uor_id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct WitnessResponse {
    pub uor_id: String,
    /// The server has a witness; **not** a verification result.
    pub valid: bool,
    /// The witness's `issued_at` (RFC 3339).
    pub timestamp: String,
    pub witness_type: String,
    pub metadata: serde_json::Value,
    /// The first DSSE signature (base64), for display.
    pub signature: String,
    /// RFC 3339.
    pub expires_at: String,
    /// The witness itself: the only part a client acts on, after verifying it.
    pub envelope: Option<Envelope>,
}

impl WitnessResponse {
    /// The response a server gives for `env`, with the informational fields
    /// copied from its (unverified) statement.
    pub fn from_envelope(env: &Envelope) -> Result<WitnessResponse, TrustError> {
        let st = env.peek_statement()?;
        let p = st.predicate;
        let uor = UorId::parse(&p.uor_id)?;
        Ok(WitnessResponse {
            uor_id: uor.to_string(),
            valid: true,
            timestamp: p.issued_at,
            witness_type: p.witness_type,
            metadata: p.metadata,
            signature: env
                .signatures
                .first()
                .map(|s| s.sig.clone())
                .unwrap_or_default(),
            expires_at: p.expires_at,
            envelope: Some(env.clone()),
        })
    }
}

/// Body of `POST /v1/witness/verify`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyRequest {
    pub uor_id: String,
}

/// Answer to `POST /v1/witness/verify`: whether the server has a witness.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyResponse {
    pub uor_id: String,
    pub valid: bool,
}

/// Body of an error answer (`404`, `400`, `500`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorResponse {
    pub error: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uor_id: Option<String>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn response_from_envelope_and_json_shape() {
        let key = crate::SigningKey::generate();
        let uor = UorId::of(b"m");
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let env = crate::sign(
            &key,
            "r/a:1",
            &hologram_oci::Digest::from_bytes([0xcd; 32]),
            &uor,
            t,
            t + Duration::from_secs(60),
            "ci",
            serde_json::json!({"k": "v"}),
        )
        .unwrap();
        let resp = WitnessResponse::from_envelope(&env).unwrap();
        assert_eq!(resp.uor_id, uor.to_string());
        assert!(resp.valid);
        assert_eq!(resp.timestamp, "2023-11-14T22:13:20Z");
        assert_eq!(resp.expires_at, "2023-11-14T22:14:20Z");
        assert_eq!(resp.signature, env.signatures[0].sig);
        let json = serde_json::to_value(&resp).unwrap();
        for field in [
            "uor_id",
            "valid",
            "timestamp",
            "witness_type",
            "metadata",
            "signature",
            "expires_at",
            "envelope",
        ] {
            assert!(json.get(field).is_some(), "missing {field}");
        }
        assert_eq!(json["envelope"]["payloadType"], crate::PAYLOAD_TYPE);
        let back: WitnessResponse = serde_json::from_value(json).unwrap();
        assert_eq!(back, resp);
        // Other servers may omit fields.
        let sparse: WitnessResponse =
            serde_json::from_str(r#"{"uor_id":"x","valid":true}"#).unwrap();
        assert!(sparse.envelope.is_none());
        assert_eq!(witness_path(&uor), format!("/v1/witness/{uor}"));
    }
}
