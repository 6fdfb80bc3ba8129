//! The project's one digest type.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

const PREFIX: &str = "sha256:";

/// A sha256 content digest: `sha256:` followed by exactly 64 lowercase hex
/// digits. Parsing accepts nothing else (no other algorithm, no uppercase,
/// no whitespace); a value of this type is therefore safe as a file name
/// ([`Digest::hex`]) and in URLs.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

/// Why a text is not a [`Digest`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid digest {value:?}: {reason}")]
pub struct DigestError {
    /// The offending text (cut to 100 characters).
    pub value: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl Digest {
    /// Parses `sha256:<64 lowercase hex>`.
    pub fn parse(s: &str) -> Result<Digest, DigestError> {
        let bad = |reason| DigestError {
            value: s.chars().take(100).collect(),
            reason,
        };
        let hex_part = s
            .strip_prefix(PREFIX)
            .ok_or_else(|| bad("only sha256 digests (\"sha256:<64 hex digits>\") are accepted"))?;
        Self::from_hex(hex_part).map_err(bad)
    }

    /// Parses the 64 lowercase hex digits alone (a file name in a cache).
    pub fn parse_hex(hex_part: &str) -> Result<Digest, DigestError> {
        Self::from_hex(hex_part).map_err(|reason| DigestError {
            value: hex_part.chars().take(100).collect(),
            reason,
        })
    }

    fn from_hex(hex_part: &str) -> Result<Digest, &'static str> {
        if hex_part.len() != 64 {
            return Err("a sha256 digest has exactly 64 hex digits");
        }
        if !hex_part
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err("the hex digits must be lowercase 0-9a-f");
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex_part, &mut out).map_err(|_| "not hex")?;
        Ok(Digest(out))
    }

    /// The digest of `data`.
    pub fn of(data: &[u8]) -> Digest {
        Digest(Sha256::digest(data).into())
    }

    /// From the 32 raw hash bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Digest {
        Digest(bytes)
    }

    /// The 32 raw hash bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The 64 lowercase hex digits (without `sha256:`).
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// A streaming hasher that ends in a [`Digest`].
    pub fn hasher() -> Sha256Writer {
        Sha256Writer(Sha256::new())
    }

    /// Whether `data` hashes to this digest.
    pub fn matches(&self, data: &[u8]) -> bool {
        Digest::of(data) == *self
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(PREFIX)?;
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Digest {
    type Err = DigestError;
    fn from_str(s: &str) -> Result<Digest, DigestError> {
        Digest::parse(s)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Digest, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Digest;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a sha256 digest \"sha256:<64 lowercase hex digits>\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Digest, E> {
                Digest::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

/// A streaming sha256 (also an [`std::io::Write`] sink).
#[derive(Clone, Default)]
pub struct Sha256Writer(Sha256);

impl Sha256Writer {
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    pub fn finish(self) -> Digest {
        Digest(self.0.finalize().into())
    }
}

impl std::io::Write for Sha256Writer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl fmt::Debug for Sha256Writer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Sha256Writer")
    }
}

/// containerd's chain ID of a layer: the diff ID for the first layer,
/// `sha256(parent_chain + " " + diff_id)` for the others.
pub fn chain_id(parent: Option<&Digest>, diff_id: &Digest) -> Digest {
    match parent {
        None => *diff_id,
        Some(p) => Digest::of(format!("{p} {diff_id}").as_bytes()),
    }
}

/// The chain IDs of every layer, bottom first.
pub fn chain_ids(diff_ids: &[Digest]) -> Vec<Digest> {
    let mut out: Vec<Digest> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = chain_id(out.last(), d);
        out.push(next);
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn round_trips() {
        let d = Digest::parse(EMPTY).unwrap();
        assert_eq!(d.to_string(), EMPTY);
        assert_eq!(d, Digest::of(b""));
        assert_eq!(d.hex(), &EMPTY[7..]);
        assert_eq!(Digest::parse_hex(&EMPTY[7..]).unwrap(), d);
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(json, format!("\"{EMPTY}\""));
        assert_eq!(serde_json::from_str::<Digest>(&json).unwrap(), d);
        let mut w = Digest::hasher();
        w.update(b"");
        assert_eq!(w.finish(), d);
    }

    #[test]
    fn refuses_everything_else() {
        let upper = EMPTY.to_uppercase().replacen("SHA256", "sha256", 1);
        for bad in [
            "",
            "sha256:",
            "sha256:abc",
            "sha256:/etc/passwd",
            "sha256:../../../../../../../../../../../../../../../../../../etc/passwd",
            "sha512:00",
            &upper,
            &format!("{EMPTY} "),
            &format!(" {EMPTY}"),
            &format!("{EMPTY}\n"),
            &EMPTY[7..],
            &format!("sha256:{}", "g".repeat(64)),
            &format!("sha256:{}", "0".repeat(65)),
        ] {
            assert!(Digest::parse(bad).is_err(), "{bad:?} accepted");
            assert!(serde_json::from_value::<Digest>(serde_json::json!(bad)).is_err());
        }
        assert!(Digest::parse_hex("../x").is_err());
        let e = Digest::parse("sha256:/some/root/owned/file").unwrap_err();
        assert!(e.to_string().contains("64 hex digits"), "{e}");
    }

    #[test]
    fn chain_ids_follow_containerd() {
        let a = Digest::of(b"a");
        let b = Digest::of(b"b");
        let c = chain_ids(&[a, b]);
        assert_eq!(c[0], a);
        assert_eq!(c[1], Digest::of(format!("{a} {b}").as_bytes()));
        assert_eq!(chain_id(Some(&c[0]), &b), c[1]);
    }
}
