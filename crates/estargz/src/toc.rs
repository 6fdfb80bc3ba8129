//! The TOC (`stargz.index.json`): JSON model, decoding with digest check,
//! encoding.

use std::collections::BTreeMap;
use std::io::Read;

use hologram_oci::Digest;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{Error, MAX_TOC_JSON_SIZE, TOC_JSON_NAME};

/// The raw TOC, as serialized in `stargz.index.json`.
///
/// Numeric fields keep the signed types of the reference implementation so
/// that hostile values (negative sizes, offsets, ids) survive decoding and are
/// rejected by [`crate::Index::build`] with an error naming the entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Toc {
    /// Must be 1.
    pub version: u32,
    /// All tar entries and chunks, except the TOC itself, in blob order.
    #[serde(default, deserialize_with = "null_as_default")]
    pub entries: Vec<TocEntry>,
}

/// One TOC entry: a tar entry, or a further chunk of a regular file.
///
/// Field names and omission of zero values follow the eStargz spec and the
/// reference implementation's JSON encoding.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TocEntry {
    /// Full path as stored in the tar (for `chunk`: the file's path).
    #[serde(default)]
    pub name: String,
    /// `dir`, `reg`, `symlink`, `hardlink`, `char`, `block`, `fifo` or `chunk`.
    #[serde(rename = "type", default)]
    pub kind: String,
    /// Size of a regular file.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub size: i64,
    /// Modification time, RFC 3339 in UTC; empty means zero/unknown.
    #[serde(rename = "modtime", default, skip_serializing_if = "String::is_empty")]
    pub mod_time: String,
    /// Target of a symlink or hardlink.
    #[serde(rename = "linkName", default, skip_serializing_if = "String::is_empty")]
    pub link_name: String,
    /// Permission and mode bits (tar header mode; may include type bits).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub mode: i64,
    /// Owner user id.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub uid: i64,
    /// Owner group id.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub gid: i64,
    /// Owner user name (may be given only on the first entry with that uid).
    #[serde(rename = "userName", default, skip_serializing_if = "String::is_empty")]
    pub user_name: String,
    /// Owner group name (may be given only on the first entry with that gid).
    #[serde(
        rename = "groupName",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub group_name: String,
    /// Blob offset of the gzip member holding this file's or chunk's payload.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub offset: i64,
    /// Uncompressed bytes to skip in that member before the payload starts.
    #[serde(rename = "innerOffset", default, skip_serializing_if = "is_zero")]
    pub inner_offset: i64,
    /// Device major number of `char`/`block` entries.
    #[serde(rename = "devMajor", default, skip_serializing_if = "is_zero")]
    pub dev_major: i64,
    /// Device minor number of `char`/`block` entries.
    #[serde(rename = "devMinor", default, skip_serializing_if = "is_zero")]
    pub dev_minor: i64,
    /// Extended attributes; values are base64 in JSON.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        serialize_with = "xattrs_ser",
        deserialize_with = "xattrs_de"
    )]
    pub xattrs: BTreeMap<String, Vec<u8>>,
    /// Digest of the whole regular file.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub digest: String,
    /// Offset of this chunk in the file.
    #[serde(rename = "chunkOffset", default, skip_serializing_if = "is_zero")]
    pub chunk_offset: i64,
    /// Uncompressed size of this chunk; 0 means "to the end of the file".
    #[serde(rename = "chunkSize", default, skip_serializing_if = "is_zero")]
    pub chunk_size: i64,
    /// Digest of this chunk's uncompressed bytes.
    #[serde(
        rename = "chunkDigest",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub chunk_digest: String,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

fn xattrs_ser<S: Serializer>(x: &BTreeMap<String, Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
    use base64::Engine as _;
    use serde::ser::SerializeMap;
    let mut m = s.serialize_map(Some(x.len()))?;
    for (k, v) in x {
        m.serialize_entry(k, &base64::engine::general_purpose::STANDARD.encode(v))?;
    }
    m.end()
}

pub(crate) fn xattrs_de<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, Vec<u8>>, D::Error> {
    use base64::Engine as _;
    let raw: Option<BTreeMap<String, Option<String>>> = Option::deserialize(d)?;
    let mut out = BTreeMap::new();
    for (k, v) in raw.unwrap_or_default() {
        let v = v.unwrap_or_default();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(v.as_bytes())
            .map_err(|e| {
                serde::de::Error::custom(format!("xattr {k:?}: value is not base64: {e}"))
            })?;
        out.insert(k, bytes);
    }
    Ok(out)
}

/// Decodes the TOC gzip member and parses the TOC.
///
/// See [`read_toc_json`]; returns the parsed TOC and the digest of the JSON
/// bytes. Building an [`crate::Index`] does not need the parsed form:
/// [`crate::Index::from_json`] streams the JSON.
pub fn decode_toc(
    toc_region: &[u8],
    expected_digest: Option<&Digest>,
) -> Result<(Toc, Digest), Error> {
    let (json, digest) = read_toc_json(toc_region, expected_digest)?;
    let toc: Toc = serde_json::from_slice(&json).map_err(Error::TocJson)?;
    Ok((toc, digest))
}

/// Decompresses the TOC gzip member and returns the TOC JSON bytes and
/// their digest.
///
/// `toc_region` is `blob[toc_offset .. blob_len - FOOTER_SIZE]`: one gzip
/// member holding a tar whose first entry is `stargz.index.json`. The
/// digest of the JSON bytes is what the layer annotation
/// [`crate::TOC_DIGEST_ANNOTATION`] records; if `expected_digest` is given,
/// a mismatch is an error. JSON over [`MAX_TOC_JSON_SIZE`] bytes is refused
/// before it is read.
pub fn read_toc_json(
    toc_region: &[u8],
    expected_digest: Option<&Digest>,
) -> Result<(Vec<u8>, Digest), Error> {
    let mut gz = flate2::read::GzDecoder::new(toc_region);
    // One plain tar header (as every eStargz writer produces). Extension
    // headers (PAX, GNU long names) are refused: their contents would have
    // to be read, unbounded, before the digest can be checked.
    let mut header = tar::Header::new_old();
    gz.read_exact(header.as_mut_bytes())
        .map_err(|e| Error::Toc(format!("reading the TOC tar header: {e}")))?;
    let raw = header.as_bytes();
    let sum = raw
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                u32::from(b' ')
            } else {
                u32::from(b)
            }
        })
        .sum::<u32>();
    if header.cksum().ok() != Some(sum) {
        return Err(Error::Toc("the TOC tar header has a bad checksum".into()));
    }
    let typeflag = raw[156];
    if matches!(typeflag, b'x' | b'g' | b'L' | b'K') {
        return Err(Error::Toc(format!(
            "the TOC tar entry has an extension header (type {:?}); only a plain header is supported",
            typeflag as char
        )));
    }
    let name = header.path_bytes().into_owned();
    if name != TOC_JSON_NAME.as_bytes() {
        return Err(Error::Toc(format!(
            "the TOC tar entry is named {:?}, expected {TOC_JSON_NAME:?}",
            String::from_utf8_lossy(&name)
        )));
    }
    if typeflag != b'0' && typeflag != 0 {
        return Err(Error::Toc(format!(
            "the {TOC_JSON_NAME} tar entry is not a regular file (type {:?})",
            typeflag as char
        )));
    }
    let size = header
        .size()
        .map_err(|e| Error::Toc(format!("the TOC tar header's size: {e}")))?;
    if size > MAX_TOC_JSON_SIZE {
        return Err(Error::TocTooLarge {
            size,
            limit: MAX_TOC_JSON_SIZE,
        });
    }
    let mut json = Vec::with_capacity(size.min(1 << 20) as usize);
    (&mut gz)
        .take(size)
        .read_to_end(&mut json)
        .map_err(|e| Error::Toc(format!("decompressing {TOC_JSON_NAME}: {e}")))?;
    if json.len() as u64 != size {
        return Err(Error::Toc(format!(
            "{TOC_JSON_NAME} is truncated: {} of {size} bytes",
            json.len()
        )));
    }
    // Read the rest of the member (padding, end-of-archive blocks) so that a
    // corrupt member fails its CRC check even without an expected digest.
    std::io::copy(&mut gz.take(1 << 20), &mut std::io::sink())
        .map_err(|e| Error::Toc(format!("the TOC gzip member is corrupt: {e}")))?;

    let actual = Digest::of(&json);
    if let Some(expected) = expected_digest {
        if *expected != actual {
            return Err(Error::TocDigestMismatch {
                expected: *expected,
                actual,
            });
        }
    }
    Ok((json, actual))
}

/// Serializes a TOC the way the reference implementation does (tab-indented
/// JSON). The TOC digest is the sha256 of exactly these bytes.
pub fn encode_toc_json(toc: &Toc) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"\t");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
    toc.serialize(&mut ser).map_err(Error::TocJson)?;
    Ok(out)
}
