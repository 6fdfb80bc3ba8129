#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;

use crate::frame::*;
use crate::validate::{Event, NonceWindow, ResponseCheck};
use crate::wire::{EnergyHints, ErrorBody};

/// A small deterministic generator (xorshift64*): property tests without a
/// dependency, reproducible from the seed printed on failure.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

const SESSION: u64 = 0x0123_4567_89ab_cdef;

fn fields(kind: FrameKind, sequence: u64, request_index: u32, object_offset: u64) -> FrameFields {
    let mut nonce = [0u8; 12];
    nonce[4..].copy_from_slice(&sequence.to_be_bytes());
    nonce[0] = 0xaa;
    FrameFields {
        kind,
        session: SESSION,
        sequence,
        request_index,
        object_offset,
        nonce,
        unix_ms: 1_767_225_600_000,
    }
}

/// The example frame of docs/ctp96.md.
fn spec_example() -> Frame {
    Frame::new(
        FrameFields {
            kind: FrameKind::Data,
            session: SESSION,
            sequence: 1,
            request_index: 0,
            object_offset: 4096,
            nonce: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11],
            unix_ms: 1_767_225_600_000,
        },
        Bytes::from_static(b"hello, ctp96"),
    )
    .unwrap()
}

/// The hex dump between the `ctp96-example-frame` markers of the doc.
fn doc_example_bytes() -> Vec<u8> {
    let doc = include_str!("../../../docs/ctp96.md");
    let start = doc
        .find("<!-- ctp96-example-frame -->")
        .expect("start marker in docs/ctp96.md");
    let end = doc
        .find("<!-- /ctp96-example-frame -->")
        .expect("end marker in docs/ctp96.md");
    let block = &doc[start..end];
    let mut out = Vec::new();
    for line in block.lines().filter(|l| l.starts_with("0x")) {
        // "0x0000  43 54 50 60 ...  ; comment"
        let body = line.split(';').next().unwrap_or("");
        for tok in body.split_whitespace().skip(1) {
            out.push(u8::from_str_radix(tok, 16).expect("hex byte"));
        }
    }
    out
}

#[test]
fn spec_example_is_byte_for_byte_the_doc() {
    let f = spec_example();
    let bytes = f.encode();
    let doc = doc_example_bytes();
    assert_eq!(
        doc.len(),
        HEADER_LEN + 12,
        "the doc shows header and payload"
    );
    assert_eq!(
        hex::encode(&bytes),
        hex::encode(&doc),
        "docs/ctp96.md's example frame differs from the encoder"
    );
    let back = decode_all(&doc).unwrap();
    assert_eq!(back, vec![f]);
}

#[test]
fn round_trips_of_every_kind() {
    let mut rng = Rng(0x5eed);
    for i in 0..500u64 {
        let kind = [
            FrameKind::Data,
            FrameKind::End,
            FrameKind::Error,
            FrameKind::Hint,
        ][rng.below(4) as usize];
        let max = kind.max_payload().min(70_000) as u64;
        let len = if max == 0 {
            0
        } else {
            rng.below(max + 1) as usize
        };
        let mut f = fields(kind, rng.next(), rng.next() as u32, rng.next());
        f.session = rng.next();
        f.nonce.copy_from_slice(&rng.bytes(12));
        f.unix_ms = rng.next();
        let frame = Frame::new(f, Bytes::from(rng.bytes(len))).unwrap();
        let enc = frame.encode();
        assert_eq!(enc.len(), HEADER_LEN + len);
        let hdr: [u8; HEADER_LEN] = enc[..HEADER_LEN].try_into().unwrap();
        assert_eq!(FrameHeader::decode(&hdr).unwrap(), frame.header, "case {i}");
        assert_eq!(decode_all(&enc).unwrap(), vec![frame], "case {i}");
    }
}

#[test]
fn header_checks() {
    let f = spec_example();
    let good: [u8; HEADER_LEN] = f.encode()[..HEADER_LEN].try_into().unwrap();
    // Any single bit flip is caught by the CRC.
    for byte in 0..HEADER_LEN {
        for bit in 0..8 {
            let mut b = good;
            b[byte] ^= 1 << bit;
            assert!(FrameHeader::decode(&b).is_err(), "flip {byte}.{bit}");
        }
    }
    // Fields checked after the CRC: re-sealed headers.
    let reseal = |mut b: [u8; HEADER_LEN]| {
        let crc = crc32c(&b[..CRC_COVERED]);
        b[CRC_COVERED..].copy_from_slice(&crc.to_be_bytes());
        b
    };
    let mut b = good;
    b[0] = b'X';
    assert!(matches!(
        FrameHeader::decode(&reseal(b)),
        Err(FrameError::Magic(_))
    ));
    let mut b = good;
    b[4] = 2;
    assert_eq!(FrameHeader::decode(&reseal(b)), Err(FrameError::Version(2)));
    let mut b = good;
    b[5] = 9;
    assert_eq!(FrameHeader::decode(&reseal(b)), Err(FrameError::Kind(9)));
    let mut b = good;
    b[7] = 1;
    assert_eq!(FrameHeader::decode(&reseal(b)), Err(FrameError::Flags(1)));
    let mut b = good;
    b[28..32].copy_from_slice(&(MAX_DATA_PAYLOAD + 1).to_be_bytes());
    assert!(matches!(
        FrameHeader::decode(&reseal(b)),
        Err(FrameError::PayloadTooLarge { .. })
    ));
    let mut b = good;
    b[5] = FrameKind::End as u8; // END has no payload; this header says 12
    assert!(matches!(
        FrameHeader::decode(&reseal(b)),
        Err(FrameError::PayloadTooLarge { .. })
    ));
    assert!(Frame::new(fields(FrameKind::Hint, 0, 0, 0), Bytes::from(vec![0; 5000])).is_err());
}

#[test]
fn payload_digest_is_checked() {
    let mut enc = spec_example().encode().to_vec();
    let last = enc.len() - 1;
    enc[last] ^= 0x01;
    assert_eq!(decode_all(&enc), Err(FrameError::Digest));
}

#[test]
fn truncated_streams_are_errors_at_every_cut() {
    let mut stream = Vec::new();
    for s in 0..3 {
        let f = Frame::new(
            fields(FrameKind::Data, s, 0, s * 10),
            Bytes::from(vec![s as u8; 10]),
        );
        stream.extend_from_slice(&f.unwrap().encode());
    }
    let frame_len = HEADER_LEN + 10;
    for cut in 0..stream.len() {
        let r = decode_all(&stream[..cut]);
        if cut % frame_len == 0 {
            assert_eq!(r.unwrap().len(), cut / frame_len);
        } else {
            assert!(
                matches!(r, Err(FrameError::Truncated(_))),
                "cut {cut}: {r:?}"
            );
        }
    }
}

#[test]
fn random_garbage_and_mutations_never_panic() {
    let mut rng = Rng(0xdead_beef);
    for _ in 0..2000 {
        let n = rng.below(600) as usize;
        crate::fuzz_frames(&rng.bytes(n));
    }
    // Mutations of valid streams reach past the CRC.
    let good = response(&[(0, 300), (4096, 101)], 128);
    for _ in 0..2000 {
        let mut s = good.clone();
        for _ in 0..=rng.below(4) {
            let i = rng.below(s.len() as u64) as usize;
            s[i] ^= 1 << rng.below(8);
        }
        let cut = rng.below(s.len() as u64 + 1) as usize;
        crate::fuzz_frames(&s[..cut]);
        let _ = decode_all(&s[..cut]);
    }
    // A header promising the largest payload, and nothing after it.
    let mut h = fields(FrameKind::Data, 0, 0, 0);
    h.session = SESSION;
    let big = FrameHeader {
        kind: FrameKind::Data,
        flags: 0,
        session: SESSION,
        sequence: 0,
        request_index: 0,
        payload_len: MAX_DATA_PAYLOAD,
        object_offset: 0,
        nonce: h.nonce,
        payload_sha256: [0; 32],
        unix_ms: 0,
    };
    assert!(matches!(
        decode_all(&big.encode()),
        Err(FrameError::Truncated(_))
    ));
}

/// A well-formed response to `ranges` (offset, length) in frames of at most
/// `frame` bytes: HINT, DATA..., END.
fn response_frames(ranges: &[(u64, u64)], frame: u64) -> Vec<Frame> {
    let mut seq = 0;
    let mut out = Vec::new();
    let hint = serde_json::to_vec(&EnergyHints::default()).unwrap();
    out.push(Frame::new(fields(FrameKind::Hint, seq, 0, 0), Bytes::from(hint)).unwrap());
    seq += 1;
    let mut total = 0;
    for (i, &(off, len)) in ranges.iter().enumerate() {
        let mut done = 0;
        while done < len {
            let n = frame.min(len - done);
            let payload: Vec<u8> = (0..n).map(|k| ((off + done + k) % 251) as u8).collect();
            out.push(
                Frame::new(
                    fields(FrameKind::Data, seq, i as u32, off + done),
                    Bytes::from(payload),
                )
                .unwrap(),
            );
            seq += 1;
            done += n;
            total += n;
        }
    }
    out.push(
        Frame::new(
            fields(FrameKind::End, seq, ranges.len() as u32, total),
            Bytes::new(),
        )
        .unwrap(),
    );
    out
}

fn response(ranges: &[(u64, u64)], frame: u64) -> Vec<u8> {
    response_frames(ranges, frame)
        .iter()
        .flat_map(|f| f.encode().to_vec())
        .collect()
}

fn check_all(ranges: &[(u64, u64)], frames: Vec<Frame>) -> Result<Vec<Vec<u8>>, FrameError> {
    let mut c = ResponseCheck::new(SESSION, ranges.to_vec());
    let mut nonces = NonceWindow::new(1024);
    let mut out = vec![Vec::new(); ranges.len()];
    for f in frames {
        match c.accept(f, &mut nonces)? {
            Event::Data { index, payload, .. } => out[index].extend_from_slice(&payload),
            Event::RangeError { .. } | Event::Hint(_) | Event::End => {}
        }
    }
    c.finish()?;
    Ok(out)
}

#[test]
fn a_good_response_passes_every_check() {
    let ranges = [(0, 300), (4096, 101), (10, 1)];
    let out = check_all(&ranges, response_frames(&ranges, 64)).unwrap();
    for (i, &(off, len)) in ranges.iter().enumerate() {
        let want: Vec<u8> = (0..len).map(|k| ((off + k) % 251) as u8).collect();
        assert_eq!(out[i], want);
    }
}

#[test]
fn each_kind_of_tampering_is_named() {
    let ranges = [(0, 300), (4096, 101)];
    let good = response_frames(&ranges, 64);
    // reordered DATA frames
    let mut f = good.clone();
    f.swap(1, 2);
    assert_eq!(check_all(&ranges, f).unwrap_err().reason(), "sequence");
    // another session's frame
    let mut f = good.clone();
    f[2].header.session ^= 1;
    assert_eq!(check_all(&ranges, f).unwrap_err().reason(), "session");
    // a replayed frame, renumbered to fit
    let mut f = good.clone();
    let mut again = f[1].clone();
    again.header.sequence = 2;
    f[2] = again;
    assert_eq!(check_all(&ranges, f).unwrap_err().reason(), "replay");
    // a frame left out (renumbered) → the offsets no longer add up
    let mut f = good.clone();
    f.remove(2);
    for (s, fr) in f.iter_mut().enumerate() {
        fr.header.sequence = s as u64;
    }
    assert_eq!(check_all(&ranges, f).unwrap_err().reason(), "order");
    // no END
    let mut f = good.clone();
    f.pop();
    assert_eq!(check_all(&ranges, f).unwrap_err().reason(), "truncated");
    // something after END
    let mut f = good.clone();
    let mut extra = f[1].clone();
    extra.header.sequence = f.len() as u64;
    f.push(extra);
    assert_eq!(check_all(&ranges, f).unwrap_err().reason(), "order");
    // END lying about the byte count
    let mut f = good.clone();
    f.last_mut().unwrap().header.object_offset += 1;
    assert_eq!(check_all(&ranges, f).unwrap_err().reason(), "order");
}

#[test]
fn error_frames_answer_one_range() {
    let ranges = [(0, 10), (100, 10)];
    let body = serde_json::to_vec(&ErrorBody {
        error: "not_found".into(),
        message: "no blob".into(),
        retry_after_ms: None,
    })
    .unwrap();
    let frames = vec![
        Frame::new(fields(FrameKind::Error, 0, 0, 0), Bytes::from(body)).unwrap(),
        Frame::new(fields(FrameKind::Data, 1, 1, 100), Bytes::from(vec![1; 10])).unwrap(),
        Frame::new(fields(FrameKind::End, 2, 2, 10), Bytes::new()).unwrap(),
    ];
    let out = check_all(&ranges, frames).unwrap();
    assert!(out[0].is_empty());
    assert_eq!(out[1], vec![1; 10]);
}

#[test]
fn nonce_window_forgets_the_oldest() {
    let mut w = NonceWindow::new(3);
    let n = |i: u8| [i; 12];
    assert!(w.insert(n(1)) && w.insert(n(2)) && w.insert(n(3)));
    assert!(!w.insert(n(2)));
    assert!(w.insert(n(4)));
    assert_eq!(w.len(), 3);
    assert!(w.insert(n(1)), "1 fell out of the window");
}

#[test]
#[ignore = "writes fuzz/corpus/ctp96_frames; run by hand after a format change"]
fn write_fuzz_seeds() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/ctp96_frames");
    std::fs::create_dir_all(&dir).unwrap();
    // The first byte picks the ranges fuzz_frames expects: n % 4 + 1 ranges,
    // range i = (i * 4096, 1 + i * 100).
    let ranges = |n: u64| (0..n).map(|i| (i * 4096, 1 + i * 100)).collect::<Vec<_>>();
    let with = |n: u8, body: &[u8]| [&[n][..], body].concat();
    let one = response(&ranges(1), 64);
    let three = response(&ranges(3), 64);
    let seeds: Vec<(&str, Vec<u8>)> = vec![
        ("one-range", with(0, &one)),
        ("three-ranges", with(2, &three)),
        ("truncated", with(2, &three[..three.len() - 50])),
        ("spec-example", with(0, &spec_example().encode())),
        ("bad-crc", {
            let mut b = with(0, &one);
            b[10] ^= 0xff;
            b
        }),
        ("garbage", (0..=255u8).collect()),
        ("empty", Vec::new()),
    ];
    for (name, data) in seeds {
        std::fs::write(dir.join(name), data).unwrap();
    }
}

#[test]
#[ignore = "prints the doc's example frame; run by hand after a format change"]
fn print_spec_example() {
    let b = spec_example().encode();
    for (i, c) in b.chunks(16).enumerate() {
        let hex: Vec<String> = c.iter().map(|x| format!("{x:02x}")).collect();
        println!("0x{:04x}  {}", i * 16, hex.join(" "));
    }
}
