use super::{gzip, sha};
use crate::{decode_toc, encode_toc_json, Error, Toc, TocEntry, MAX_TOC_JSON_SIZE};

/// A TOC gzip member: tar with one entry `name` holding `json`.
fn member(name: &str, json: &[u8]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_size(json.len() as u64);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    b.append_data(&mut h, name, json).unwrap();
    gzip(&b.into_inner().unwrap())
}

const JSON: &str = r#"{
	"version": 1,
	"entries": [
		{
			"name": "bin/",
			"type": "dir",
			"modtime": "2019-08-20T10:30:43Z",
			"mode": 16877,
			"NumLink": 0
		},
		{
			"name": "bin/busybox",
			"type": "reg",
			"size": 833104,
			"modtime": "2019-06-12T17:52:45Z",
			"mode": 33261,
			"offset": 126,
			"xattrs": {"user.a": "aGVsbG8=", "user.empty": "", "user.null": null},
			"digest": "sha256:8b7c559b8cccca0d30d01bc4b5dc944766208a53d18a03aa8afe97252207521f",
			"chunkDigest": "sha256:8b7c559b8cccca0d30d01bc4b5dc944766208a53d18a03aa8afe97252207521f"
		}
	]
}"#;

#[test]
fn decodes_spec_example_and_computes_digest() {
    let m = member("stargz.index.json", JSON.as_bytes());
    let (toc, digest) = decode_toc(&m, None).unwrap();
    assert_eq!(digest, sha(JSON.as_bytes()));
    assert_eq!(toc.version, 1);
    assert_eq!(toc.entries.len(), 2);
    let bb = &toc.entries[1];
    assert_eq!(bb.kind, "reg");
    assert_eq!(bb.size, 833104);
    assert_eq!(bb.mode, 0o100755);
    assert_eq!(bb.offset, 126);
    assert_eq!(bb.xattrs["user.a"], b"hello");
    assert_eq!(bb.xattrs["user.empty"], b"");
    assert_eq!(bb.xattrs["user.null"], b"");
    // With the right digest.
    let (toc2, _) = decode_toc(&m, Some(&digest)).unwrap();
    assert_eq!(toc, toc2);
}

#[test]
fn digest_mismatch() {
    let m = member("stargz.index.json", JSON.as_bytes());
    let other = sha(b"something else");
    match decode_toc(&m, Some(&other)) {
        Err(Error::TocDigestMismatch { expected, actual }) => {
            assert_eq!(expected, other);
            assert_eq!(actual, sha(JSON.as_bytes()));
        }
        r => panic!("expected a digest mismatch, got {r:?}"),
    }
}

#[test]
fn wrong_member_contents() {
    let e = decode_toc(&member("other.json", JSON.as_bytes()), None).unwrap_err();
    assert!(e.to_string().contains("\"other.json\""), "{e}");
    let e = decode_toc(b"not gzip at all", None).unwrap_err();
    assert!(matches!(e, Error::Toc(_)), "{e}");
    let e = decode_toc(
        &member("stargz.index.json", b"{\"version\": 1, \"entries\": [}"),
        None,
    )
    .unwrap_err();
    assert!(matches!(e, Error::TocJson(_)), "{e}");
    let bad_b64 =
        br#"{"version":1,"entries":[{"name":"a","type":"dir","xattrs":{"user.x":"!!"}}]}"#;
    let e = decode_toc(&member("stargz.index.json", bad_b64), None).unwrap_err();
    assert!(e.to_string().contains("user.x"), "{e}");
    // Truncated member.
    let m = member("stargz.index.json", JSON.as_bytes());
    assert!(decode_toc(&m[..m.len() / 2], None).is_err());
    // Corrupt CRC.
    let mut m = member("stargz.index.json", JSON.as_bytes());
    let n = m.len();
    m[n - 6] ^= 0xff;
    assert!(decode_toc(&m, None).is_err());
}

#[test]
fn oversized_toc_is_refused_before_reading() {
    // A tar header claiming 64 MiB + 1 bytes, and no data at all.
    let mut h = tar::Header::new_ustar();
    h.set_path("stargz.index.json").unwrap();
    h.set_size(MAX_TOC_JSON_SIZE + 1);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    let m = gzip(h.as_bytes());
    match decode_toc(&m, None) {
        Err(Error::TocTooLarge { size, limit }) => {
            assert_eq!(size, MAX_TOC_JSON_SIZE + 1);
            assert_eq!(limit, MAX_TOC_JSON_SIZE);
        }
        r => panic!("{r:?}"),
    }
}

#[test]
fn encode_matches_reference_layout() {
    let toc = Toc {
        version: 1,
        entries: vec![TocEntry {
            name: "a".into(),
            kind: "reg".into(),
            size: 3,
            offset: 85,
            xattrs: [("user.k".to_string(), b"hello".to_vec())]
                .into_iter()
                .collect(),
            digest: super::D.into(),
            chunk_digest: super::D.into(),
            ..TocEntry::default()
        }],
    };
    let json = String::from_utf8(encode_toc_json(&toc).unwrap()).unwrap();
    let expected = format!(
        "{{\n\t\"version\": 1,\n\t\"entries\": [\n\t\t{{\n\t\t\t\"name\": \"a\",\n\t\t\t\"type\": \"reg\",\n\t\t\t\"size\": 3,\n\t\t\t\"offset\": 85,\n\t\t\t\"xattrs\": {{\n\t\t\t\t\"user.k\": \"aGVsbG8=\"\n\t\t\t}},\n\t\t\t\"digest\": \"{d}\",\n\t\t\t\"chunkDigest\": \"{d}\"\n\t\t}}\n\t]\n}}",
        d = super::D
    );
    assert_eq!(json, expected);
    let back: Toc = serde_json::from_str(&json).unwrap();
    assert_eq!(back, toc);
}

#[test]
fn extension_headers_and_bad_checksums_are_refused() {
    // A PAX header in front of the TOC entry.
    let mut b = tar::Builder::new(Vec::new());
    let rec = b"30 comment=xxxxxxxxxxxxxxxxxx\n";
    let mut h = tar::Header::new_ustar();
    h.set_path("PaxHeaders/toc").unwrap();
    h.set_size(rec.len() as u64);
    h.set_entry_type(tar::EntryType::XHeader);
    h.set_cksum();
    b.append(&h, &rec[..]).unwrap();
    let mut h = tar::Header::new_ustar();
    h.set_size(JSON.len() as u64);
    h.set_entry_type(tar::EntryType::Regular);
    b.append_data(&mut h, "stargz.index.json", JSON.as_bytes())
        .unwrap();
    let e = decode_toc(&gzip(&b.into_inner().unwrap()), None).unwrap_err();
    assert!(e.to_string().contains("extension header"), "{e}");

    // A corrupted header checksum.
    let mut raw = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_size(JSON.len() as u64);
    h.set_entry_type(tar::EntryType::Regular);
    raw.append_data(&mut h, "stargz.index.json", JSON.as_bytes())
        .unwrap();
    let mut raw = raw.into_inner().unwrap();
    raw[148] = b'7';
    let e = decode_toc(&gzip(&raw), None).unwrap_err();
    assert!(e.to_string().contains("checksum"), "{e}");

    // Not a regular file.
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_size(0);
    h.set_entry_type(tar::EntryType::Directory);
    b.append_data(&mut h, "stargz.index.json", &[][..]).unwrap();
    let e = decode_toc(&gzip(&b.into_inner().unwrap()), None).unwrap_err();
    assert!(e.to_string().contains("not a regular file"), "{e}");
}
