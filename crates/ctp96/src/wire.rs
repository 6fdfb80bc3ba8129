//! The JSON bodies of CTP-96, and their checks. Everything a peer sends is
//! parsed once, here, into typed values with limits applied.

use std::ops::Range;

use hologram_oci::Digest;
use serde::{Deserialize, Serialize};

/// Most ranges in one fetch request.
pub const MAX_RANGES: usize = 4096;
/// Most bytes one fetch request may ask for (all ranges together).
pub const MAX_FETCH_BYTES: u64 = 64 << 20;
/// Largest JSON body either side accepts.
pub const MAX_JSON_BODY: usize = 1 << 20;
/// Longest repository name accepted.
pub const MAX_REPOSITORY_LEN: usize = 255;

/// `POST /v1/sessions` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpenSession {
    /// The image this session is for, when the client knows it (informative).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uor_id: Option<String>,
    /// 24 lowercase hex digits chosen by the client; echoed in the answer.
    pub nonce: String,
    /// Who is asking (`hologram-snapshotter/0.1.0`), for the server's logs.
    pub client: String,
}

/// Energy hints: how hard the server wants to be driven now.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EnergyHints {
    /// 0 (idle) .. 1 (at capacity): the larger of the share of fetch slots
    /// in use and the share of session slots in use.
    pub load: f64,
    /// Fetch requests the client should have in flight at once (>= 1).
    pub concurrency: u32,
    /// Most bytes the client should ask for in one fetch request.
    pub chunk_size: u64,
    /// Wait this long before the next request (0: no wait).
    #[serde(default)]
    pub retry_after_ms: u64,
}

/// Bounds a client applies to hints, whatever the server says.
pub const MAX_HINT_CONCURRENCY: u32 = 64;
/// Smallest chunk size a client honours.
pub const MIN_HINT_CHUNK: u64 = 64 << 10;
/// Longest wait a hint may impose.
pub const MAX_HINT_WAIT_MS: u64 = 5_000;

impl Default for EnergyHints {
    fn default() -> Self {
        EnergyHints {
            load: 0.0,
            concurrency: 8,
            chunk_size: 8 << 20,
            retry_after_ms: 0,
        }
    }
}

impl EnergyHints {
    /// The hints with every value clamped to what a client accepts (a
    /// hostile or broken server cannot stop a client or make it flood).
    pub fn clamped(self) -> EnergyHints {
        let load = if self.load.is_finite() {
            self.load.clamp(0.0, 1.0)
        } else {
            1.0
        };
        EnergyHints {
            load,
            concurrency: self.concurrency.clamp(1, MAX_HINT_CONCURRENCY),
            chunk_size: self.chunk_size.clamp(MIN_HINT_CHUNK, MAX_FETCH_BYTES),
            retry_after_ms: self.retry_after_ms.min(MAX_HINT_WAIT_MS),
        }
    }
}

/// What the server measured about where bytes come from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencyHints {
    /// Smoothed time of an upstream read, ms (0: none yet).
    pub upstream_ms: f64,
    /// Share of the bytes served from the server's cache (0..1).
    pub cache_hit_ratio: f64,
}

/// `201` answer to `POST /v1/sessions`; also the answer to `GET` and
/// `POST .../renew` of a session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionInfo {
    /// 16 lowercase hex digits: the header's session id.
    pub session_id: String,
    pub lease_id: String,
    /// RFC 3339, UTC.
    pub expires_at: String,
    /// The lease's length: the client renews relative to its own clock.
    pub lease_seconds: u64,
    /// The client's nonce, echoed (empty for GET and renew).
    #[serde(default)]
    pub nonce: String,
    pub energy_hints: EnergyHints,
    pub latency_hints: LatencyHints,
}

/// Parses a session id (16 lowercase hex digits, not all zero).
pub fn parse_session_id(s: &str) -> Option<u64> {
    if s.len() != 16
        || !s
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    u64::from_str_radix(s, 16).ok().filter(|v| *v != 0)
}

/// The text form of a session id.
pub fn format_session_id(id: u64) -> String {
    format!("{id:016x}")
}

/// Whether `s` is a client nonce: 24 lowercase hex digits.
pub fn is_client_nonce(s: &str) -> bool {
    s.len() == 24
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// One range of a fetch request, as sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeSpec {
    pub digest: Digest,
    pub offset: u64,
    pub length: u64,
}

/// `POST /v1/sessions/{id}/fetch` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchRequest {
    /// The repository the blobs are in upstream (`library/python`); a
    /// server reading an OCI layout ignores it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    pub ranges: Vec<RangeSpec>,
}

/// A fetch request that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedFetch {
    pub repository: Option<String>,
    pub ranges: Vec<(Digest, Range<u64>)>,
    pub total: u64,
}

/// Whether `s` is a repository name as the distribution spec allows
/// (lowercase path components of `[a-z0-9._-]`, `/`-separated).
pub fn is_repository(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_REPOSITORY_LEN
        && s.split('/').all(|c| {
            !c.is_empty()
                && c.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
                })
                && c.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        })
}

impl FetchRequest {
    /// Checks the limits: 1 to [`MAX_RANGES`] ranges, each non-empty and
    /// without overflow, at most [`MAX_FETCH_BYTES`] in all, and a valid
    /// repository name.
    pub fn check(self) -> Result<CheckedFetch, String> {
        if self.ranges.is_empty() {
            return Err("no ranges".into());
        }
        if self.ranges.len() > MAX_RANGES {
            return Err(format!("{} ranges (limit {MAX_RANGES})", self.ranges.len()));
        }
        if let Some(r) = &self.repository {
            if !is_repository(r) {
                return Err(format!("invalid repository name {r:?}"));
            }
        }
        let mut total = 0u64;
        let mut ranges = Vec::with_capacity(self.ranges.len());
        for (i, r) in self.ranges.into_iter().enumerate() {
            if r.length == 0 {
                return Err(format!("range {i} is empty"));
            }
            let end = r
                .offset
                .checked_add(r.length)
                .ok_or_else(|| format!("range {i} overflows"))?;
            total = total.saturating_add(r.length);
            if total > MAX_FETCH_BYTES {
                return Err(format!(
                    "more than {MAX_FETCH_BYTES} bytes asked for in one request"
                ));
            }
            ranges.push((r.digest, r.offset..end));
        }
        Ok(CheckedFetch {
            repository: self.repository,
            ranges,
            total,
        })
    }
}

/// The payload of an ERROR frame, and the body of every non-2xx answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// One of the codes below.
    pub error: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

/// Error codes.
pub mod codes {
    /// No such session (never opened, expired, revoked, or the server restarted).
    pub const UNKNOWN_SESSION: &str = "unknown_session";
    /// The server has as many sessions as it allows.
    pub const SESSION_LIMIT: &str = "session_limit";
    /// The blob, manifest or repository does not exist.
    pub const NOT_FOUND: &str = "not_found";
    /// The range lies outside the blob.
    pub const OUT_OF_RANGE: &str = "out_of_range";
    /// The request breaks a rule of the protocol.
    pub const BAD_REQUEST: &str = "bad_request";
    /// The upstream failed or timed out (worth retrying).
    pub const UNAVAILABLE: &str = "unavailable";
    /// The server is too busy (worth retrying after `retry_after_ms`).
    pub const BUSY: &str = "busy";
}

/// `GET /v1/resolve?ref=...` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resolved {
    pub uor_id: String,
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
}

/// Parses a JSON body of at most [`MAX_JSON_BODY`] bytes.
pub fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    if bytes.len() > MAX_JSON_BODY {
        return Err(format!(
            "body of {} bytes (limit {MAX_JSON_BODY})",
            bytes.len()
        ));
    }
    serde_json::from_slice(bytes).map_err(|e| format!("invalid JSON: {e}"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn session_ids() {
        assert_eq!(parse_session_id("00000000000000ff"), Some(255));
        assert_eq!(format_session_id(255), "00000000000000ff");
        for bad in [
            "",
            "0000000000000000",
            "00000000000000FF",
            "ff",
            "g000000000000000",
        ] {
            assert_eq!(parse_session_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn fetch_requests_are_checked() {
        let d = Digest::of(b"x");
        let req = |ranges: Vec<(u64, u64)>| FetchRequest {
            repository: Some("e2e/lazy".into()),
            ranges: ranges
                .into_iter()
                .map(|(offset, length)| RangeSpec {
                    digest: d,
                    offset,
                    length,
                })
                .collect(),
        };
        let ok = req(vec![(0, 10), (100, 5)]).check().unwrap();
        assert_eq!(ok.ranges, vec![(d, 0..10), (d, 100..105)]);
        assert_eq!(ok.total, 15);
        assert!(req(vec![]).check().is_err());
        assert!(req(vec![(0, 0)]).check().is_err());
        assert!(req(vec![(u64::MAX, 2)]).check().is_err());
        assert!(req(vec![(0, MAX_FETCH_BYTES), (0, 1)]).check().is_err());
        assert!(req(vec![(0, 1); MAX_RANGES + 1]).check().is_err());
        let mut bad = req(vec![(0, 1)]);
        bad.repository = Some("../etc".into());
        assert!(bad.check().is_err());
        let json = r#"{"ranges":[{"digest":"sha256:abc","offset":0,"length":1}]}"#;
        assert!(
            parse_json::<FetchRequest>(json.as_bytes()).is_err(),
            "digests are strict"
        );
    }

    #[test]
    fn repositories() {
        for ok in ["a", "library/python", "e2e/lazy-1.x_y"] {
            assert!(is_repository(ok), "{ok}");
        }
        for bad in ["", "/a", "a/", "a//b", "A", "a b", ".a", "a/../b"] {
            assert!(!is_repository(bad), "{bad}");
        }
    }

    #[test]
    fn hints_are_clamped() {
        let h = EnergyHints {
            load: f64::NAN,
            concurrency: 0,
            chunk_size: 1,
            retry_after_ms: u64::MAX,
        }
        .clamped();
        assert_eq!(h.load, 1.0);
        assert_eq!(h.concurrency, 1);
        assert_eq!(h.chunk_size, MIN_HINT_CHUNK);
        assert_eq!(h.retry_after_ms, MAX_HINT_WAIT_MS);
        let h = EnergyHints {
            load: 7.0,
            concurrency: 10_000,
            chunk_size: u64::MAX,
            retry_after_ms: 0,
        }
        .clamped();
        assert_eq!(
            (h.load, h.concurrency, h.chunk_size),
            (1.0, 64, MAX_FETCH_BYTES)
        );
    }
}
