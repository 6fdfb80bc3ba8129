use super::{gzip, sha};
use crate::{decompress_chunk, Chunk, Error};

fn chunk_for(data: &[u8], compressed: &[u8]) -> Chunk {
    Chunk {
        file_offset: 4096,
        size: data.len() as u64,
        blob_offset: 1234,
        blob_len: compressed.len() as u64,
        inner_offset: 0,
        digest: sha(data),
    }
}

#[test]
fn decompresses_and_verifies() {
    let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let gz = gzip(&data);
    let c = chunk_for(&data, &gz);
    assert_eq!(decompress_chunk(&c, &gz).unwrap(), data);
}

#[test]
fn ignores_the_rest_of_the_member_and_following_members() {
    // As in a real blob: chunk bytes, then tar padding and the next
    // headers in the same member, then the next member.
    let data = b"hello chunk".to_vec();
    let mut member = data.clone();
    member.extend_from_slice(&[0u8; 1000]);
    let mut gz = gzip(&member);
    gz.extend_from_slice(&gzip(b"next member"));
    let c = chunk_for(&data, &gz);
    assert_eq!(decompress_chunk(&c, &gz).unwrap(), data);
}

#[test]
fn inner_offset_is_skipped() {
    let gz = gzip(b"AAAAhello");
    let mut c = chunk_for(b"hello", &gz);
    c.inner_offset = 4;
    assert_eq!(decompress_chunk(&c, &gz).unwrap(), b"hello");
    c.inner_offset = 100;
    let e = decompress_chunk(&c, &gz).unwrap_err();
    assert!(
        e.to_string()
            .contains("before the chunk's inner offset 100"),
        "{e}"
    );
}

#[test]
fn digest_mismatch_is_an_error() {
    let data = b"the real data".to_vec();
    let gz = gzip(&data);
    let mut c = chunk_for(&data, &gz);
    c.digest = sha(b"other data");
    match decompress_chunk(&c, &gz) {
        Err(Error::ChunkDigestMismatch {
            blob_offset,
            file_offset,
            expected,
            actual,
        }) => {
            assert_eq!((blob_offset, file_offset), (1234, 4096));
            assert_eq!(expected, sha(b"other data"));
            assert_eq!(actual, sha(&data));
        }
        r => panic!("{r:?}"),
    }
    // Tampered compressed bytes (a different, valid member).
    let evil = gzip(b"the evil data");
    let c = chunk_for(&data, &gz);
    assert!(matches!(
        decompress_chunk(&c, &evil),
        Err(Error::ChunkDigestMismatch { .. })
    ));
}

#[test]
fn short_or_corrupt_members_are_errors() {
    let data = vec![42u8; 5000];
    let gz = gzip(&data);
    let mut c = chunk_for(&data, &gz);
    // Member holds fewer bytes than the TOC claims.
    c.size = 6000;
    let e = decompress_chunk(&c, &gz).unwrap_err();
    assert!(matches!(e, Error::Chunk { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("only 5000 of the chunk's 6000 bytes"),
        "{e}"
    );
    // Truncated compressed bytes.
    let c = chunk_for(&data, &gz);
    assert!(decompress_chunk(&c, &gz[..gz.len() / 3]).is_err());
    // Not gzip.
    assert!(decompress_chunk(&c, b"plain text, not gzip").is_err());
    assert!(decompress_chunk(&c, b"").is_err());
}
