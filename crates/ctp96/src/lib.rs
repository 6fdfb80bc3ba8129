//! CTP-96: sessions, leases, energy hints and batched, integrity-framed
//! range reads over HTTP. `docs/ctp96.md` is the contract; this crate is
//! its implementation:
//!
//! * [`frame`] — the 96-byte header (CRC32C) and payload (SHA-256), the
//!   stream decoder;
//! * [`wire`] — the JSON bodies, parsed once into typed, limited values;
//! * [`validate`] — a receiver's checks of a fetch response (session,
//!   sequence, nonce replay, ranges answered in order);
//! * [`lease`] — the server's session table and the client's renewal time;
//! * [`client`] — [`client::Ctp96Client`] (sessions, leases, hints, retries)
//!   and [`client::Ctp96Blob`], a [`hologram_source::BlobSource`];
//! * [`server`] — the HTTP server over an [`server::Upstream`] (a registry
//!   or an OCI layout, provided by the caller), with an on-disk blob cache.
//!
//! The crate knows no registry client and no daemon: `hologram` (the CLI)
//! gives the server its upstream, the daemon picks the client as a layer's
//! source.

#![forbid(unsafe_code)]

pub mod client;
pub mod frame;
pub mod lease;
pub mod server;
pub mod validate;
pub mod wire;

pub use frame::{Frame, FrameDecoder, FrameError, FrameFields, FrameHeader, FrameKind};

/// Feeds arbitrary bytes through the decoder and a response check, as a
/// client would: never panics, never buffers more than one frame (the
/// fuzz target and its stable replay call this).
pub fn fuzz_frames(data: &[u8]) {
    // The first bytes choose the expected ranges, so the checks past the
    // decoder are reached too.
    let (ranges, stream) = match data.split_first() {
        Some((&n, rest)) => {
            let n = usize::from(n % 4) + 1;
            let ranges = (0..n)
                .map(|i| ((i as u64) * 4096, 1 + (i as u64) * 100))
                .collect::<Vec<_>>();
            (ranges, rest)
        }
        None => (vec![(0, 1)], data),
    };
    let session = 0x0123_4567_89ab_cdef;
    let mut check = validate::ResponseCheck::new(session, ranges);
    let mut nonces = validate::NonceWindow::new(64);
    let mut dec = FrameDecoder::new();
    for piece in stream.chunks(97) {
        dec.push(piece);
        loop {
            match dec.next_frame() {
                Ok(Some(f)) => {
                    let _ = f.encode();
                    if check.accept(f, &mut nonces).is_err() {
                        return;
                    }
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
        assert!(dec.buffered() <= frame::HEADER_LEN + frame::MAX_DATA_PAYLOAD as usize + 97);
    }
    let _ = dec.finish();
    let _ = check.finish();
    let _ = frame::decode_all(data);
}

#[cfg(test)]
mod tests;
