use crate::{footer_bytes, parse_footer, Error, FOOTER_SIZE};

#[test]
fn round_trip() {
    for off in [0u64, 1, 85, 33939, 0x0123_4567_89ab_cdef, i64::MAX as u64] {
        let f = footer_bytes(off);
        assert_eq!(f.len() as u64, FOOTER_SIZE);
        assert_eq!(parse_footer(&f).unwrap(), off);
    }
}

#[test]
fn footer_is_an_empty_gzip_member() {
    use std::io::Read;
    let f = footer_bytes(12345);
    let mut d = flate2::read::GzDecoder::new(&f[..]);
    let mut out = Vec::new();
    d.read_to_end(&mut out).unwrap();
    assert!(out.is_empty());
    assert_eq!(
        d.header().unwrap().extra().unwrap(),
        b"SG\x16\x000000000000003039STARGZ"
    );
}

#[test]
fn ctr_remote_footer() {
    // The footer of testdata/ctrremote-chunked.esgz.
    let f = hex::decode(
        "1f8b08040000000000ff1a00534716003030303030303030303030303834393353544152475a010000ffff0000000000000000",
    )
    .unwrap();
    assert_eq!(parse_footer(&f).unwrap(), 0x8493);
}

#[test]
fn short_and_long() {
    let f = footer_bytes(7);
    for bad in [&f[..0], &f[..50], &f[1..]] {
        let e = parse_footer(bad).unwrap_err();
        assert!(matches!(e, Error::Footer(_)), "{e}");
        assert!(e.to_string().contains("expected 51 bytes"), "{e}");
    }
    let mut long = f.to_vec();
    long.push(0);
    assert!(parse_footer(&long).is_err());
}

#[test]
fn bad_magic_and_fields() {
    let good = footer_bytes(42);
    let cases: &[(usize, u8, &str)] = &[
        (0, 0x00, "gzip magic"),
        (2, 0x07, "deflate"),
        (3, 0x00, "no Extra field"),
        (3, 0x04 | 0x08, "FNAME"),
        (10, 25, "Extra length"),
        (12, b'E', "subfield id"),
        (14, 21, "subfield length"),
        (33, b'x', "STARGZ magic"),
        (20, b'g', "hex digits"),
    ];
    for &(pos, val, needle) in cases {
        let mut f = good;
        f[pos] = val;
        let e = parse_footer(&f).unwrap_err().to_string();
        assert!(
            e.contains(needle),
            "byte {pos}={val:#x}: {e:?} lacks {needle:?}"
        );
    }
}

#[test]
fn legacy_footer_is_rejected_clearly() {
    // CRFS stargz: Extra is "%016xSTARGZ" without the SG subfield header.
    let mut legacy = vec![0x1f, 0x8b, 0x08, 0x04, 0, 0, 0, 0, 0, 0xff, 22, 0];
    legacy.extend_from_slice(b"0000000000001234STARGZ");
    legacy.extend_from_slice(&[0x01, 0x00, 0x00, 0xff, 0xff]);
    legacy.extend_from_slice(&[0; 8]);
    assert_eq!(legacy.len(), 47);
    assert!(matches!(parse_footer(&legacy), Err(Error::LegacyFooter)));
    // As the last 51 bytes of a legacy blob.
    let mut tail = vec![0xaa, 0xbb, 0xcc, 0xdd];
    tail.extend_from_slice(&legacy);
    let e = parse_footer(&tail).unwrap_err();
    assert!(matches!(e, Error::LegacyFooter), "{e}");
    assert!(e.to_string().contains("legacy"));
}
