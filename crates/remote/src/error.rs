//! The crate's error type.

/// Everything that can go wrong talking to a registry.
///
/// `is_retryable` tells whether trying the same operation again (after a
/// backoff) may succeed; the client's own retry loop uses it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The image reference does not parse.
    #[error("invalid reference: {0}")]
    InvalidReference(String),
    /// A digest string is malformed or uses an algorithm we cannot verify.
    #[error("invalid digest: {0}")]
    InvalidDigest(String),
    /// The registry answered 404 (manifest or blob unknown), or nothing in
    /// an index matched.
    #[error("not found: {0}")]
    NotFound(String),
    /// 401/403 after authenticating, no usable challenge, or the token
    /// endpoint refused the credentials.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// Content does not hash to the digest it was addressed or announced by.
    #[error("digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        /// The digest the content should have.
        expected: hologram_oci::Digest,
        /// The digest the content has.
        actual: hologram_oci::Digest,
    },
    /// A body exceeds the limit the caller (or the 64 MiB range-read cap) set.
    #[error("too large: {0}")]
    TooLarge(String),
    /// The per-attempt or total time budget ran out.
    #[error("timed out: {0}")]
    Timeout(String),
    /// Any other unexpected HTTP status.
    #[error("HTTP {status} from {url}: {body_excerpt}")]
    Http {
        /// HTTP status code.
        status: u16,
        /// The URL, without its query string (it may hold signatures).
        url: String,
        /// The start of the response body, for diagnostics.
        body_excerpt: String,
    },
    /// Connection refused/reset, TLS failure, broken body stream, ...
    #[error("transport error: {0}")]
    Transport(String),
    /// The server answered something that violates the protocol (bad
    /// Content-Range, short 206 body, malformed JSON, redirect loop, ...).
    #[error("invalid response: {0}")]
    InvalidResponse(String),
    /// A read past the end of a blob, or a 416 from the server.
    #[error("out of range: {0}")]
    OutOfRange(String),
    /// Bad configuration: hosts.toml, docker config.json, certificates, or
    /// an operation no configured host is capable of.
    #[error("configuration error: {0}")]
    Config(String),
}

impl From<hologram_oci::ReferenceError> for Error {
    fn from(e: hologram_oci::ReferenceError) -> Self {
        Error::InvalidReference(e.to_string())
    }
}

impl From<hologram_oci::DigestError> for Error {
    fn from(e: hologram_oci::DigestError) -> Self {
        Error::InvalidDigest(e.to_string())
    }
}

impl Error {
    /// True for failures that a later attempt may not see: timeouts,
    /// transport errors, HTTP 5xx, 408 and 429.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Timeout(_) | Error::Transport(_) => true,
            Error::Http { status, .. } => *status >= 500 || *status == 429 || *status == 408,
            _ => false,
        }
    }

    /// True for failures that say the host itself is unreachable (as
    /// opposed to an HTTP answer).
    pub(crate) fn is_unreachable(&self) -> bool {
        matches!(self, Error::Timeout(_) | Error::Transport(_))
    }

    pub(crate) fn from_reqwest(e: reqwest::Error) -> Self {
        let msg = error_chain(&e);
        if e.is_timeout() {
            Error::Timeout(msg)
        } else if e.is_builder() {
            Error::Config(msg)
        } else {
            Error::Transport(msg)
        }
    }
}

/// Renders an error with its `source()` chain, which for reqwest/hyper
/// errors carries the useful part ("connection refused", "invalid peer
/// certificate: UnknownIssuer", ...). URLs are stripped of query strings.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let m = s.to_string();
        if !out.contains(&m) {
            out.push_str(": ");
            out.push_str(&m);
        }
        cur = s.source();
    }
    redact_queries(&out)
}

/// Removes `?query` parts of URLs embedded in a message (presigned storage
/// URLs carry credentials there).
pub(crate) fn redact_queries(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut skipping = false;
    for c in s.chars() {
        if skipping {
            if c.is_whitespace() || c == ')' || c == '"' {
                skipping = false;
                out.push(c);
            }
            continue;
        }
        if c == '?' && out.contains("://") {
            skipping = true;
            continue;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn retryable_classification() {
        assert!(Error::Timeout("x".into()).is_retryable());
        assert!(Error::Transport("x".into()).is_retryable());
        for (status, want) in [
            (500, true),
            (503, true),
            (429, true),
            (404, false),
            (401, false),
            (400, false),
        ] {
            let e = Error::Http {
                status,
                url: String::new(),
                body_excerpt: String::new(),
            };
            assert_eq!(e.is_retryable(), want, "{status}");
        }
        assert!(!Error::NotFound("x".into()).is_retryable());
        assert!(!Error::DigestMismatch {
            expected: hologram_oci::Digest::of(b"a"),
            actual: hologram_oci::Digest::of(b"b"),
        }
        .is_retryable());
    }

    #[test]
    fn redacts_query_strings() {
        assert_eq!(
            redact_queries("error sending request for url (https://s3/x?sig=abc&x=1): refused"),
            "error sending request for url (https://s3/x): refused"
        );
        assert_eq!(redact_queries("no url? fine"), "no url? fine");
    }
}
