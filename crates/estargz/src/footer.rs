//! The 51-byte eStargz footer.
//!
//! ```text
//! 10 bytes  gzip header: 1f 8b 08 FLG=04 (FEXTRA) MTIME=0 XFL=0 OS
//!  2 bytes  XLEN = 26 (little endian)
//!  2 bytes  SI1 SI2 = 'S' 'G'
//!  2 bytes  LEN = 22 (little endian)
//! 22 bytes  "%016xSTARGZ" % toc_offset
//!  5 bytes  empty stored deflate block: 01 00 00 ff ff
//!  8 bytes  CRC32 = 0, ISIZE = 0
//! ```

use crate::{Error, FOOTER_SIZE, LEGACY_FOOTER_SIZE};

const MAGIC: &[u8] = b"STARGZ";
const FEXTRA: u8 = 0x04;
/// FHCRC, FNAME, FCOMMENT: none of them fits in a fixed 51-byte footer.
const FOTHER: u8 = 0x02 | 0x08 | 0x10;

/// Builds the footer pointing at a TOC member starting at `toc_offset`.
pub fn footer_bytes(toc_offset: u64) -> [u8; FOOTER_SIZE as usize] {
    let mut f = [0u8; FOOTER_SIZE as usize];
    f[..10].copy_from_slice(&[0x1f, 0x8b, 0x08, FEXTRA, 0, 0, 0, 0, 0, 0xff]);
    f[10..12].copy_from_slice(&26u16.to_le_bytes());
    f[12] = b'S';
    f[13] = b'G';
    f[14..16].copy_from_slice(&22u16.to_le_bytes());
    let sub = format!("{toc_offset:016x}");
    f[16..32].copy_from_slice(sub.as_bytes());
    f[32..38].copy_from_slice(MAGIC);
    f[38..43].copy_from_slice(&[0x01, 0x00, 0x00, 0xff, 0xff]);
    // CRC32 and ISIZE of the empty payload are 0.
    f
}

/// Parses the last [`FOOTER_SIZE`] bytes of a blob and returns the offset of
/// the TOC gzip member in the blob.
///
/// The caller must still check that the offset lies before the footer
/// (`toc_offset < blob_len - FOOTER_SIZE`). A legacy 47-byte stargz footer is
/// recognised (at the end of the given bytes) and rejected with
/// [`Error::LegacyFooter`].
pub fn parse_footer(footer: &[u8]) -> Result<u64, Error> {
    if footer.len() as u64 != FOOTER_SIZE {
        if footer.len() as u64 == LEGACY_FOOTER_SIZE && is_legacy_footer(footer) {
            return Err(Error::LegacyFooter);
        }
        return Err(Error::Footer(format!(
            "expected {FOOTER_SIZE} bytes, got {}",
            footer.len()
        )));
    }
    match parse_estargz(footer) {
        Ok(off) => Ok(off),
        Err(e) => {
            if is_legacy_footer(&footer[(FOOTER_SIZE - LEGACY_FOOTER_SIZE) as usize..]) {
                Err(Error::LegacyFooter)
            } else {
                Err(e)
            }
        }
    }
}

fn parse_estargz(f: &[u8]) -> Result<u64, Error> {
    let err = |m: &str| Error::Footer(m.to_owned());
    if f[0] != 0x1f || f[1] != 0x8b {
        return Err(err(
            "bad gzip magic (not 1f 8b); the blob is not gzip or not eStargz",
        ));
    }
    if f[2] != 0x08 {
        return Err(err("gzip compression method is not deflate"));
    }
    if f[3] & FEXTRA == 0 {
        return Err(err(
            "gzip header has no Extra field (FEXTRA unset); the blob is not eStargz",
        ));
    }
    if f[3] & FOTHER != 0 {
        return Err(err("gzip header has FNAME/FCOMMENT/FHCRC set"));
    }
    let xlen = u16::from_le_bytes([f[10], f[11]]);
    if xlen != 26 {
        return Err(Error::Footer(format!(
            "gzip Extra length is {xlen}, expected 26"
        )));
    }
    if f[12] != b'S' || f[13] != b'G' {
        return Err(Error::Footer(format!(
            "Extra subfield id is {:?}{:?}, expected 'S''G'",
            f[12] as char, f[13] as char
        )));
    }
    let len = u16::from_le_bytes([f[14], f[15]]);
    if len != 22 {
        return Err(Error::Footer(format!(
            "Extra subfield length is {len}, expected 22"
        )));
    }
    if &f[32..38] != MAGIC {
        return Err(err("STARGZ magic not found in the footer's Extra field"));
    }
    parse_hex_offset(&f[16..32])
}

fn parse_hex_offset(digits: &[u8]) -> Result<u64, Error> {
    if !digits.iter().all(u8::is_ascii_hexdigit) {
        return Err(Error::Footer(format!(
            "TOC offset {:?} is not 16 hex digits",
            String::from_utf8_lossy(digits)
        )));
    }
    let s =
        std::str::from_utf8(digits).map_err(|_| Error::Footer("TOC offset is not ASCII".into()))?;
    let off =
        u64::from_str_radix(s, 16).map_err(|e| Error::Footer(format!("TOC offset {s:?}: {e}")))?;
    if off > i64::MAX as u64 {
        return Err(Error::Footer(format!("TOC offset {off} is out of range")));
    }
    Ok(off)
}

/// A legacy stargz footer: gzip header with FEXTRA, XLEN = 22 and the Extra
/// field being "%016xSTARGZ" directly (no subfield id).
fn is_legacy_footer(f: &[u8]) -> bool {
    f.len() as u64 == LEGACY_FOOTER_SIZE
        && f[0] == 0x1f
        && f[1] == 0x8b
        && f[2] == 0x08
        && f[3] & FEXTRA != 0
        && u16::from_le_bytes([f[10], f[11]]) == 22
        && &f[28..34] == MAGIC
}
