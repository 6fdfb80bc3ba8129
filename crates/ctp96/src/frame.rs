//! Frames: a 96-byte header (big-endian, CRC32C-protected) and a payload
//! whose SHA-256 the header carries. Layout in `docs/ctp96.md`.
//!
//! [`FrameHeader::decode`] checks one header; [`FrameDecoder`] cuts a byte
//! stream into frames, checking each header and each payload digest, and
//! never buffers more than one header plus the largest payload its kind
//! allows.

use bytes::{Buf as _, BufMut as _, Bytes, BytesMut};
use sha2::{Digest as _, Sha256};

/// `CTP` followed by 0x60 (96).
pub const MAGIC: [u8; 4] = [b'C', b'T', b'P', 0x60];
/// The only version this crate speaks.
pub const VERSION: u8 = 1;
/// Bytes in a header.
pub const HEADER_LEN: usize = 96;
/// Largest DATA payload a receiver accepts.
pub const MAX_DATA_PAYLOAD: u32 = 1 << 20;
/// Largest payload of END, ERROR and HINT frames.
pub const MAX_CONTROL_PAYLOAD: u32 = 4096;
/// Bytes of the header the CRC covers (all but the CRC itself).
pub const CRC_COVERED: usize = 92;

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrameKind {
    /// Bytes of one requested range.
    Data = 1,
    /// The end of a response.
    End = 2,
    /// One requested range failed (JSON [`crate::wire::ErrorBody`]).
    Error = 3,
    /// Energy hints (JSON [`crate::wire::EnergyHints`]).
    Hint = 4,
}

impl FrameKind {
    /// The kind with wire value `v`.
    pub fn from_u8(v: u8) -> Option<FrameKind> {
        match v {
            1 => Some(FrameKind::Data),
            2 => Some(FrameKind::End),
            3 => Some(FrameKind::Error),
            4 => Some(FrameKind::Hint),
            _ => None,
        }
    }

    /// The largest payload a frame of this kind may have.
    pub fn max_payload(self) -> u32 {
        match self {
            FrameKind::Data => MAX_DATA_PAYLOAD,
            FrameKind::End => 0,
            FrameKind::Error | FrameKind::Hint => MAX_CONTROL_PAYLOAD,
        }
    }
}

/// Why bytes are not a frame, or a frame does not belong where it is.
/// [`FrameError::reason`] is the short name used in metrics and logs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("bad magic {0:02x?}")]
    Magic([u8; 4]),
    #[error("unsupported version {0}")]
    Version(u8),
    #[error("unknown frame kind {0}")]
    Kind(u8),
    #[error("reserved flags set: {0:#06x}")]
    Flags(u16),
    #[error("header CRC32C {actual:#010x} does not match {expected:#010x}")]
    Crc { expected: u32, actual: u32 },
    #[error("{kind:?} payload of {len} bytes is over the limit of {max}")]
    PayloadTooLarge { kind: FrameKind, len: u32, max: u32 },
    #[error("payload does not match its SHA-256")]
    Digest,
    #[error("stream ended early ({0} bytes of an incomplete frame)")]
    Truncated(usize),
    #[error("frame of session {got:#018x} in a response of session {expected:#018x}")]
    Session { expected: u64, got: u64 },
    #[error("sequence {got}, expected {expected}")]
    Sequence { expected: u64, got: u64 },
    #[error("nonce {0} seen before in this session (replay)")]
    Replay(String),
    #[error("{0}")]
    Order(String),
    #[error("{0}")]
    Body(String),
}

impl FrameError {
    /// A short, fixed name: `crc`, `digest`, `session`, `sequence`,
    /// `replay`, `truncated`, `order` or `format`.
    pub fn reason(&self) -> &'static str {
        match self {
            FrameError::Crc { .. } => "crc",
            FrameError::Digest => "digest",
            FrameError::Session { .. } => "session",
            FrameError::Sequence { .. } => "sequence",
            FrameError::Replay(_) => "replay",
            FrameError::Truncated(_) => "truncated",
            FrameError::Order(_) => "order",
            FrameError::Magic(_)
            | FrameError::Version(_)
            | FrameError::Kind(_)
            | FrameError::Flags(_)
            | FrameError::PayloadTooLarge { .. }
            | FrameError::Body(_) => "format",
        }
    }
}

/// The reasons [`FrameError::reason`] can give (metric label values).
pub const REJECT_REASONS: &[&str] = &[
    "crc",
    "digest",
    "session",
    "sequence",
    "replay",
    "truncated",
    "order",
    "format",
];

/// A decoded header: every field typed, the CRC already checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub kind: FrameKind,
    pub flags: u16,
    pub session: u64,
    pub sequence: u64,
    pub request_index: u32,
    pub payload_len: u32,
    pub object_offset: u64,
    pub nonce: [u8; 12],
    pub payload_sha256: [u8; 32],
    pub unix_ms: u64,
}

/// CRC32C (Castagnoli) of `bytes`.
pub fn crc32c(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes)
}

impl FrameHeader {
    /// The 96 header bytes, CRC included.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        {
            let mut w = &mut b[..];
            w.put_slice(&MAGIC);
            w.put_u8(VERSION);
            w.put_u8(self.kind as u8);
            w.put_u16(self.flags);
            w.put_u64(self.session);
            w.put_u64(self.sequence);
            w.put_u32(self.request_index);
            w.put_u32(self.payload_len);
            w.put_u64(self.object_offset);
            w.put_slice(&self.nonce);
            w.put_slice(&self.payload_sha256);
            w.put_u64(self.unix_ms);
        }
        let crc = crc32c(&b[..CRC_COVERED]);
        b[CRC_COVERED..].copy_from_slice(&crc.to_be_bytes());
        b
    }

    /// Checks and decodes 96 header bytes: CRC first (nothing in a header
    /// whose CRC fails is looked at), then magic, version, kind, flags and
    /// the payload length limit of the kind.
    pub fn decode(b: &[u8; HEADER_LEN]) -> Result<FrameHeader, FrameError> {
        let expected = u32::from_be_bytes([b[92], b[93], b[94], b[95]]);
        let actual = crc32c(&b[..CRC_COVERED]);
        if expected != actual {
            return Err(FrameError::Crc { expected, actual });
        }
        let mut r = &b[..CRC_COVERED];
        let mut magic = [0u8; 4];
        r.copy_to_slice(&mut magic);
        if magic != MAGIC {
            return Err(FrameError::Magic(magic));
        }
        let version = r.get_u8();
        if version != VERSION {
            return Err(FrameError::Version(version));
        }
        let kind_byte = r.get_u8();
        let kind = FrameKind::from_u8(kind_byte).ok_or(FrameError::Kind(kind_byte))?;
        let flags = r.get_u16();
        if flags != 0 {
            return Err(FrameError::Flags(flags));
        }
        let session = r.get_u64();
        let sequence = r.get_u64();
        let request_index = r.get_u32();
        let payload_len = r.get_u32();
        if payload_len > kind.max_payload() {
            return Err(FrameError::PayloadTooLarge {
                kind,
                len: payload_len,
                max: kind.max_payload(),
            });
        }
        let object_offset = r.get_u64();
        let mut nonce = [0u8; 12];
        r.copy_to_slice(&mut nonce);
        let mut payload_sha256 = [0u8; 32];
        r.copy_to_slice(&mut payload_sha256);
        let unix_ms = r.get_u64();
        Ok(FrameHeader {
            kind,
            flags,
            session,
            sequence,
            request_index,
            payload_len,
            object_offset,
            nonce,
            payload_sha256,
            unix_ms,
        })
    }
}

/// A header and its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub header: FrameHeader,
    pub payload: Bytes,
}

/// The fields of a frame a sender chooses; length and digest follow from
/// the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameFields {
    pub kind: FrameKind,
    pub session: u64,
    pub sequence: u64,
    pub request_index: u32,
    pub object_offset: u64,
    pub nonce: [u8; 12],
    pub unix_ms: u64,
}

impl Frame {
    /// A frame carrying `payload` (its length and SHA-256 filled in). The
    /// caller keeps payloads within [`FrameKind::max_payload`]; a longer one
    /// is refused.
    pub fn new(f: FrameFields, payload: Bytes) -> Result<Frame, FrameError> {
        let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
        if len > f.kind.max_payload() {
            return Err(FrameError::PayloadTooLarge {
                kind: f.kind,
                len,
                max: f.kind.max_payload(),
            });
        }
        Ok(Frame {
            header: FrameHeader {
                kind: f.kind,
                flags: 0,
                session: f.session,
                sequence: f.sequence,
                request_index: f.request_index,
                payload_len: len,
                object_offset: f.object_offset,
                nonce: f.nonce,
                payload_sha256: Sha256::digest(&payload).into(),
                unix_ms: f.unix_ms,
            },
            payload,
        })
    }

    /// Header and payload, as sent.
    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(HEADER_LEN + self.payload.len());
        self.encode_into(&mut b);
        b.freeze()
    }

    /// Appends header and payload to `out`.
    pub fn encode_into(&self, out: &mut BytesMut) {
        out.put_slice(&self.header.encode());
        out.put_slice(&self.payload);
    }
}

/// Cuts a byte stream into checked frames. Feed it with [`push`], take
/// frames with [`next_frame`] until it returns `Ok(None)`, and call
/// [`finish`] at the end of the stream.
///
/// [`push`]: FrameDecoder::push
/// [`next_frame`]: FrameDecoder::next_frame
/// [`finish`]: FrameDecoder::finish
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: BytesMut,
    header: Option<FrameHeader>,
    failed: bool,
}

impl FrameDecoder {
    pub fn new() -> Self {
        FrameDecoder::default()
    }

    /// Bytes received and not yet part of a returned frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Appends received bytes. Callers feed what the network gives and take
    /// frames out in between, so the buffer stays within one frame plus one
    /// network read.
    pub fn push(&mut self, data: &[u8]) {
        if !self.failed {
            self.buf.extend_from_slice(data);
        }
    }

    /// The next complete frame, `Ok(None)` when more bytes are needed. After
    /// an error the decoder stays failed (a stream is never resynchronised).
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if self.failed {
            return Err(FrameError::Order("decoder used after an error".into()));
        }
        let r = self.next_inner();
        if r.is_err() {
            self.failed = true;
            self.buf.clear();
        }
        r
    }

    fn next_inner(&mut self) -> Result<Option<Frame>, FrameError> {
        let header = match self.header {
            Some(h) => h,
            None => {
                if self.buf.len() < HEADER_LEN {
                    return Ok(None);
                }
                let mut raw = [0u8; HEADER_LEN];
                raw.copy_from_slice(&self.buf[..HEADER_LEN]);
                let h = FrameHeader::decode(&raw)?;
                self.buf.advance(HEADER_LEN);
                self.header = Some(h);
                h
            }
        };
        let len = header.payload_len as usize;
        if self.buf.len() < len {
            return Ok(None);
        }
        let payload = self.buf.split_to(len).freeze();
        self.header = None;
        let digest: [u8; 32] = Sha256::digest(&payload).into();
        if digest != header.payload_sha256 {
            return Err(FrameError::Digest);
        }
        Ok(Some(Frame { header, payload }))
    }

    /// The stream ended: an error if it ended inside a frame.
    pub fn finish(&self) -> Result<(), FrameError> {
        let left = self.buf.len() + if self.header.is_some() { HEADER_LEN } else { 0 };
        if left > 0 && !self.failed {
            return Err(FrameError::Truncated(left));
        }
        Ok(())
    }
}

/// Decodes every frame of a complete byte string (tests, the fuzz target).
pub fn decode_all(bytes: &[u8]) -> Result<Vec<Frame>, FrameError> {
    let mut d = FrameDecoder::new();
    d.push(bytes);
    let mut out = Vec::new();
    while let Some(f) = d.next_frame()? {
        out.push(f);
    }
    d.finish()?;
    Ok(out)
}
