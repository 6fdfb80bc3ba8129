//! What to do with a verification result: enforce (fail closed) or warn.

use std::fmt;
use std::str::FromStr;

use crate::{TrustError, Verified};

/// The trust policy mode (`HOLOGRAM_ENFORCE=1` is [`Mode::Enforce`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Nothing unverified is mounted or served.
    Enforce,
    /// Unverified images are used, with a warning.
    #[default]
    Warn,
}

/// The outcome of the policy for one image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// A witness verified.
    Allow(Verified),
    /// No witness verified, but the mode lets the image through.
    Warn { reason: String },
    /// No witness verified and the mode is enforcing.
    Deny { reason: String },
}

impl Decision {
    /// Whether the image may be used (allowed or only warned about).
    pub fn permits(&self) -> bool {
        !matches!(self, Decision::Deny { .. })
    }

    /// Whether a witness verified.
    pub fn is_verified(&self) -> bool {
        matches!(self, Decision::Allow(_))
    }
}

/// Applies `mode` to a verification result.
pub fn decide(mode: Mode, result: Result<Verified, TrustError>) -> Decision {
    match (result, mode) {
        (Ok(v), _) => Decision::Allow(v),
        (Err(e), Mode::Enforce) => Decision::Deny {
            reason: e.to_string(),
        },
        (Err(e), Mode::Warn) => Decision::Warn {
            reason: e.to_string(),
        },
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Enforce => "enforce",
            Mode::Warn => "warn",
        })
    }
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "enforce" => Ok(Mode::Enforce),
            "warn" => Ok(Mode::Warn),
            other => Err(format!(
                "unknown trust mode {other:?} (expected \"enforce\" or \"warn\")"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::UorId;
    use std::time::UNIX_EPOCH;

    fn verified() -> Verified {
        Verified {
            uor_id: UorId::of(b"x"),
            manifest_digest: hologram_oci::Digest::from_bytes([0; 32]),
            issued_at: UNIX_EPOCH,
            expires_at: UNIX_EPOCH,
            keyid: "k".to_string(),
            witness_type: "ci".to_string(),
        }
    }

    #[test]
    fn decisions() {
        for mode in [Mode::Enforce, Mode::Warn] {
            let d = decide(mode, Ok(verified()));
            assert_eq!(d, Decision::Allow(verified()));
            assert!(d.permits() && d.is_verified());
        }
        let err = || {
            Err(TrustError::Expired {
                at: "2023-01-01T00:00:00Z".to_string(),
            })
        };
        let d = decide(Mode::Enforce, err());
        assert!(!d.permits());
        assert!(
            matches!(&d, Decision::Deny { reason } if reason.contains("expired at 2023-01-01T00:00:00Z"))
        );
        let d = decide(Mode::Warn, err());
        assert!(d.permits() && !d.is_verified());
        assert!(matches!(&d, Decision::Warn { reason } if reason.contains("expired")));
    }

    #[test]
    fn mode_strings() {
        assert_eq!("enforce".parse::<Mode>().unwrap(), Mode::Enforce);
        assert_eq!(" Warn ".parse::<Mode>().unwrap(), Mode::Warn);
        assert!("off".parse::<Mode>().is_err());
        assert_eq!(Mode::Enforce.to_string(), "enforce");
        assert_eq!(Mode::default(), Mode::Warn);
    }
}
