//! UOR-ID v1: a content-derived identifier, checked by recomputation.
//!
//! For a byte string `B`:
//!
//! * `r` = (sum of all bytes of `B`) mod 96;
//! * `d` = SHA-256 of the UTF-8 string `uorid|"` + lowercase-hex(`B`) + `"`;
//! * the ID is `uor:v1:r<r>:<lowercase hex of d>`.
//!
//! The hex form of `B` is never built in memory: [`UorHasher`] encodes the
//! input into a small fixed buffer and feeds SHA-256 from it, so the ID of a
//! multi-gigabyte blob costs a few kilobytes of memory.

use std::fmt;
use std::io::{self, Read, Write};
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

use crate::TrustError;

/// The modulus of the `r` component.
pub const R_MODULUS: u8 = 96;

/// The domain prefix hashed before the hex string (and its opening quote).
const PREFIX: &[u8] = b"uorid|\"";
/// The closing quote hashed after the hex string.
const SUFFIX: &[u8] = b"\"";
/// Bytes of input hex-encoded per SHA-256 update; the stack buffer is twice this.
pub const STREAM_CHUNK: usize = 4096;

/// Lowercase hex of every byte value, so encoding is one lookup per byte.
const HEX_PAIRS: [[u8; 2]; 256] = {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut table = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = [DIGITS[i >> 4], DIGITS[i & 0x0f]];
        i += 1;
    }
    table
};

/// A UOR-ID v1: `uor:v1:r<r>:<hex digest>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UorId {
    /// Sum of the bytes mod 96 (always `< 96`).
    pub r: u8,
    /// SHA-256 of `uorid|"<hex of the bytes>"`.
    pub digest: [u8; 32],
}

impl UorId {
    /// The UOR-ID of `bytes` (streamed: no hex copy of the input is made).
    pub fn of(bytes: &[u8]) -> UorId {
        let mut h = UorHasher::new();
        h.update(bytes);
        h.finish()
    }

    /// The UOR-ID of everything `reader` yields, read in small pieces.
    pub fn from_reader<R: Read>(mut reader: R) -> io::Result<UorId> {
        let mut h = UorHasher::new();
        io::copy(&mut reader, &mut h)?;
        Ok(h.finish())
    }

    /// Parses exactly `^uor:v1:r([0-9]{1,2}):([0-9a-f]{64})$` with `r < 96`.
    ///
    /// Following that rule literally, a one-digit `r` written with a leading
    /// zero (`r05`) is accepted and means `r5`; [`fmt::Display`] always
    /// writes the canonical form without it, and comparisons are on the
    /// parsed value, so `r05` and `r5` name the same ID.
    pub fn parse(s: &str) -> Result<UorId, TrustError> {
        let bad = |reason: &str| TrustError::InvalidUorId {
            input: truncate_for_error(s),
            reason: reason.to_string(),
        };
        let Some(rest) = s.strip_prefix("uor:") else {
            return Err(bad("does not start with \"uor:\""));
        };
        let Some(rest) = rest.strip_prefix("v1:") else {
            return Err(bad("unsupported version (only \"uor:v1:\" is known)"));
        };
        let Some(rest) = rest.strip_prefix('r') else {
            return Err(bad("missing the r<0..95> component"));
        };
        let Some((r_str, digest_str)) = rest.split_once(':') else {
            return Err(bad("missing the digest component"));
        };
        if r_str.is_empty() || r_str.len() > 2 || !r_str.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad("r must be one or two decimal digits"));
        }
        let r = r_str.bytes().fold(0u8, |acc, b| {
            acc.saturating_mul(10).saturating_add(b - b'0')
        });
        if r >= R_MODULUS {
            return Err(bad("r must be less than 96"));
        }
        if digest_str.len() != 64 {
            return Err(bad("digest must be exactly 64 lowercase hex digits"));
        }
        let mut digest = [0u8; 32];
        for (i, pair) in digest_str.as_bytes().chunks_exact(2).enumerate() {
            match (
                lower_hex_value(pair[0]),
                lower_hex_value(pair[1]),
                digest.get_mut(i),
            ) {
                (Some(hi), Some(lo), Some(slot)) => *slot = (hi << 4) | lo,
                _ => return Err(bad("digest must be exactly 64 lowercase hex digits")),
            }
        }
        Ok(UorId { r, digest })
    }

    /// Whether `bytes` have this UOR-ID.
    pub fn verify(&self, bytes: &[u8]) -> bool {
        UorId::of(bytes) == *self
    }
}

fn lower_hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

/// Keeps error messages bounded when someone passes a huge string.
fn truncate_for_error(s: &str) -> String {
    const MAX: usize = 120;
    if s.len() <= MAX {
        return s.to_string();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

impl fmt::Display for UorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "uor:v1:r{}:{}", self.r, hex::encode(self.digest))
    }
}

impl fmt::Debug for UorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UorId({self})")
    }
}

impl FromStr for UorId {
    type Err = TrustError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        UorId::parse(s)
    }
}

impl serde::Serialize for UorId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for UorId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        UorId::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Incremental UOR-ID computation: feed the bytes in any number of pieces,
/// then [`UorHasher::finish`]. Memory use is constant (one
/// `2 * STREAM_CHUNK`-byte stack buffer per update call).
#[derive(Clone)]
pub struct UorHasher {
    sha: Sha256,
    sum: u64,
    len: u64,
}

impl UorHasher {
    /// A hasher that has seen no bytes yet.
    pub fn new() -> Self {
        let mut sha = Sha256::new();
        sha.update(PREFIX);
        UorHasher {
            sha,
            sum: 0,
            len: 0,
        }
    }

    /// Adds `bytes` to the input.
    pub fn update(&mut self, bytes: &[u8]) {
        let mut buf = [0u8; 2 * STREAM_CHUNK];
        for piece in bytes.chunks(STREAM_CHUNK) {
            let mut sum = 0u64;
            for (b, out) in piece.iter().zip(buf.chunks_exact_mut(2)) {
                sum += u64::from(*b);
                out.copy_from_slice(&HEX_PAIRS[usize::from(*b)]);
            }
            // Reduce as we go so the sum can never overflow.
            self.sum = (self.sum + sum) % u64::from(R_MODULUS);
            self.sha.update(&buf[..2 * piece.len()]);
        }
        self.len += bytes.len() as u64;
    }

    /// How many input bytes were fed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether no input byte was fed yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The UOR-ID of everything fed.
    pub fn finish(mut self) -> UorId {
        self.sha.update(SUFFIX);
        UorId {
            // `sum` is already reduced mod 96, so it fits in a u8.
            r: u8::try_from(self.sum % u64::from(R_MODULUS)).unwrap_or(0),
            digest: self.sha.finalize().into(),
        }
    }
}

impl Default for UorHasher {
    fn default() -> Self {
        UorHasher::new()
    }
}

impl Write for UorHasher {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    /// The rule written out naively: builds the whole hex string.
    fn naive(bytes: &[u8]) -> String {
        let r = bytes.iter().map(|&b| u64::from(b)).sum::<u64>() % 96;
        let text = format!("uorid|\"{}\"", hex::encode(bytes));
        format!(
            "uor:v1:r{r}:{}",
            hex::encode(Sha256::digest(text.as_bytes()))
        )
    }

    #[derive(serde::Deserialize)]
    struct Vector {
        name: String,
        bytes_hex: String,
        sha256: String,
        uor_id: String,
    }

    /// The known-answer vectors, kept in the repo (a copy of the project's
    /// shared `uor-id-vectors.json`, so a clean clone tests on its own); when
    /// the shared original sits beside the repo, the copy must still match it.
    fn vectors() -> Vec<Vector> {
        let here = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let path = here.join("testdata/uor-id-vectors.json");
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        if let Ok(shared) =
            std::fs::read_to_string(here.join("../../../shared/uor-id-vectors.json"))
        {
            assert_eq!(
                text, shared,
                "testdata/uor-id-vectors.json differs from shared/uor-id-vectors.json"
            );
        }
        let v: Vec<Vector> = serde_json::from_str(&text).expect("vectors file is valid JSON");
        assert!(!v.is_empty(), "no vectors in {}", path.display());
        v
    }

    #[test]
    fn known_answer_vectors() {
        for v in vectors() {
            let bytes = hex::decode(&v.bytes_hex).unwrap();
            assert_eq!(
                hex::encode(Sha256::digest(&bytes)),
                v.sha256,
                "{}: sha256",
                v.name
            );
            let id = UorId::of(&bytes);
            assert_eq!(id.to_string(), v.uor_id, "{}: UorId::of", v.name);
            assert_eq!(naive(&bytes), v.uor_id, "{}: naive rule", v.name);
            let parsed = UorId::parse(&v.uor_id).unwrap();
            assert_eq!(parsed, id, "{}: parse", v.name);
            assert!(parsed.verify(&bytes), "{}: verify", v.name);
            assert_eq!(
                UorId::from_reader(&bytes[..]).unwrap(),
                id,
                "{}: from_reader",
                v.name
            );
            let mut tampered = bytes.clone();
            tampered.push(0);
            assert!(!parsed.verify(&tampered), "{}: verify tampered", v.name);
        }
    }

    #[test]
    fn streaming_matches_naive_across_chunk_boundaries() {
        // Pseudo-random bytes, long enough to span several chunks.
        let mut x = 0x1234_5678u32;
        let data: Vec<u8> = (0..3 * STREAM_CHUNK + 17)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x >> 24) as u8
            })
            .collect();
        let want = naive(&data);
        assert_eq!(UorId::of(&data).to_string(), want);
        for step in [
            1usize,
            7,
            STREAM_CHUNK - 1,
            STREAM_CHUNK,
            STREAM_CHUNK + 1,
            10_000,
        ] {
            let mut h = UorHasher::new();
            for piece in data.chunks(step) {
                h.update(piece);
            }
            assert_eq!(h.len(), data.len() as u64);
            assert_eq!(h.finish().to_string(), want, "step {step}");
        }
    }

    #[test]
    fn r_wraps_mod_96() {
        // 0xff * 1000 = 255000; 255000 mod 96 = 24.
        let data = vec![0xffu8; 1000];
        assert_eq!(UorId::of(&data).r, 24);
        assert_eq!(UorId::of(&data).to_string(), naive(&data));
    }

    const D: &str = "12af9acca1ec8ece41d4d4ca1fa7b079aa3380376b45fb043d91952b72487421";

    #[test]
    fn parse_accepts_the_rule() {
        for r in [0u8, 5, 10, 52, 95] {
            let s = format!("uor:v1:r{r}:{D}");
            let id = UorId::parse(&s).unwrap();
            assert_eq!(id.r, r);
            assert_eq!(id.to_string(), s);
            assert_eq!(s.parse::<UorId>().unwrap(), id);
        }
        // Two digits with a leading zero match the rule's regex: r05 == r5.
        let id = UorId::parse(&format!("uor:v1:r05:{D}")).unwrap();
        assert_eq!(id, UorId::parse(&format!("uor:v1:r5:{D}")).unwrap());
        assert_eq!(id.to_string(), format!("uor:v1:r5:{D}"));
        assert_eq!(UorId::parse(&format!("uor:v1:r00:{D}")).unwrap().r, 0);
    }

    #[test]
    fn parse_rejects() {
        let upper = D.to_uppercase();
        let cases = [
            (String::new(), "empty"),
            (format!("uor:v2:r0:{D}"), "other version"),
            (format!("uor:v10:r0:{D}"), "other version"),
            (format!("uor:V1:r0:{D}"), "upper-case version"),
            (format!("UOR:v1:r0:{D}"), "upper-case scheme"),
            (format!("urn:v1:r0:{D}"), "other scheme"),
            (format!("uor:v1:r96:{D}"), "r = 96"),
            (format!("uor:v1:r99:{D}"), "r = 99"),
            (format!("uor:v1:r096:{D}"), "three digits"),
            (format!("uor:v1:r100:{D}"), "r = 100"),
            (format!("uor:v1:r:{D}"), "empty r"),
            (format!("uor:v1:r-1:{D}"), "negative r"),
            (format!("uor:v1:r+5:{D}"), "plus sign"),
            (format!("uor:v1:r 5:{D}"), "space in r"),
            (format!("uor:v1:R5:{D}"), "upper-case R"),
            (format!("uor:v1:5:{D}"), "missing r prefix"),
            (format!("uor:v1:r5:{upper}"), "upper-case hex"),
            (format!("uor:v1:r5:{}", &D[..63]), "short digest"),
            (format!("uor:v1:r5:{}", &D[..62]), "short digest (even)"),
            (format!("uor:v1:r5:{D}0"), "long digest"),
            (format!("uor:v1:r5:{D}\n"), "trailing newline"),
            (format!("uor:v1:r5:{D} "), "trailing space"),
            (format!(" uor:v1:r5:{D}"), "leading space"),
            (format!("uor:v1:r5:{D}:x"), "trailing junk"),
            (format!("uor:v1:r5:{}g", &D[..63]), "non-hex digit"),
            (format!("uor:v1:r5:{}é", &D[..62]), "non-ascii digit"),
            ("uor:v1:r5".to_string(), "missing digest"),
            ("uor:v1:r5:".to_string(), "empty digest"),
            ("uor:v1:".to_string(), "missing r and digest"),
            ("uor:".to_string(), "missing everything"),
            (format!("uor:r5:{D}"), "missing version"),
            (D.to_string(), "bare digest"),
        ];
        for (s, why) in cases {
            let err = UorId::parse(&s).expect_err(why);
            assert!(
                matches!(err, TrustError::InvalidUorId { .. }),
                "{why}: {err}"
            );
        }
    }

    #[test]
    fn serde_round_trip() {
        let id = UorId::of(b"hello");
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{id}\""));
        assert_eq!(serde_json::from_str::<UorId>(&json).unwrap(), id);
        assert!(serde_json::from_str::<UorId>("\"uor:v1:r96:00\"").is_err());
    }
}
