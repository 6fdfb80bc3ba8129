//! The receiver's checks of a fetch response: every frame belongs to the
//! session, sequence numbers go up by one from 0, no nonce repeats within
//! the session's window, and the frames answer the requested ranges in
//! order, byte for byte, before one END.

use std::collections::{HashSet, VecDeque};

use bytes::Bytes;

use crate::frame::{Frame, FrameError, FrameKind};
use crate::wire::{EnergyHints, ErrorBody};

/// Nonces a client remembers per session.
pub const NONCE_WINDOW: usize = 32 * 1024;
/// Most HINT and ERROR frames in one response beyond one per range.
pub const MAX_EXTRA_CONTROL_FRAMES: u64 = 64;

/// The nonces of the last [`NONCE_WINDOW`] frames of a session.
#[derive(Debug, Default)]
pub struct NonceWindow {
    seen: HashSet<[u8; 12]>,
    order: VecDeque<[u8; 12]>,
    capacity: usize,
}

impl NonceWindow {
    pub fn new(capacity: usize) -> Self {
        NonceWindow {
            seen: HashSet::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// Records `n`; false when it was seen before (a replay).
    pub fn insert(&mut self, n: [u8; 12]) -> bool {
        if !self.seen.insert(n) {
            return false;
        }
        self.order.push_back(n);
        if self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        true
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

/// What a checked frame means for the request.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// `payload` is the bytes of range `index` at `offset` within the range
    /// (0 = the range's first byte).
    Data {
        index: usize,
        offset: u64,
        payload: Bytes,
    },
    /// Range `index` failed on the server.
    RangeError { index: usize, body: ErrorBody },
    /// New energy hints (unclamped: the caller clamps).
    Hint(EnergyHints),
    /// The response is complete.
    End,
}

/// Checks the frames of one fetch response, in the order received.
#[derive(Debug)]
pub struct ResponseCheck {
    session: u64,
    /// (blob offset, length) of each requested range.
    ranges: Vec<(u64, u64)>,
    next_seq: u64,
    current: usize,
    /// Bytes of the current range received so far.
    filled: u64,
    data_bytes: u64,
    control_frames: u64,
    ended: bool,
}

impl ResponseCheck {
    /// A check for a response to `ranges` (blob offset, length) on `session`.
    pub fn new(session: u64, ranges: Vec<(u64, u64)>) -> Self {
        ResponseCheck {
            session,
            ranges,
            next_seq: 0,
            current: 0,
            filled: 0,
            data_bytes: 0,
            control_frames: 0,
            ended: false,
        }
    }

    /// Whether END has been seen.
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// Checks `frame` (header CRC and payload digest were checked by the
    /// decoder). `nonces` is the session's window.
    pub fn accept(&mut self, frame: Frame, nonces: &mut NonceWindow) -> Result<Event, FrameError> {
        let h = frame.header;
        if self.ended {
            return Err(FrameError::Order("frame after END".into()));
        }
        if h.session != self.session {
            return Err(FrameError::Session {
                expected: self.session,
                got: h.session,
            });
        }
        if h.sequence != self.next_seq {
            return Err(FrameError::Sequence {
                expected: self.next_seq,
                got: h.sequence,
            });
        }
        if !nonces.insert(h.nonce) {
            return Err(FrameError::Replay(hex::encode(h.nonce)));
        }
        self.next_seq += 1;
        match h.kind {
            FrameKind::Data => {
                let index = h.request_index as usize;
                let Some(&(start, len)) = self.ranges.get(self.current) else {
                    return Err(FrameError::Order("DATA after the last range".into()));
                };
                if index != self.current {
                    return Err(FrameError::Order(format!(
                        "DATA for range {index} while range {} is open",
                        self.current
                    )));
                }
                let want = start.saturating_add(self.filled);
                if h.object_offset != want {
                    return Err(FrameError::Order(format!(
                        "DATA at offset {} of range {index}, expected {want}",
                        h.object_offset
                    )));
                }
                let n = u64::from(h.payload_len);
                if n == 0 || n > len - self.filled {
                    return Err(FrameError::Order(format!(
                        "DATA of {n} bytes for range {index} with {} bytes left",
                        len - self.filled
                    )));
                }
                let offset = self.filled;
                self.filled += n;
                self.data_bytes += n;
                if self.filled == len {
                    self.current += 1;
                    self.filled = 0;
                }
                Ok(Event::Data {
                    index,
                    offset,
                    payload: frame.payload,
                })
            }
            FrameKind::Error => {
                self.control()?;
                let index = h.request_index as usize;
                if index != self.current || index >= self.ranges.len() {
                    return Err(FrameError::Order(format!(
                        "ERROR for range {index} while range {} is open",
                        self.current
                    )));
                }
                let body: ErrorBody = serde_json::from_slice(&frame.payload)
                    .map_err(|e| FrameError::Body(format!("ERROR payload: {e}")))?;
                self.current += 1;
                self.filled = 0;
                Ok(Event::RangeError { index, body })
            }
            FrameKind::Hint => {
                self.control()?;
                let hints: EnergyHints = serde_json::from_slice(&frame.payload)
                    .map_err(|e| FrameError::Body(format!("HINT payload: {e}")))?;
                Ok(Event::Hint(hints))
            }
            FrameKind::End => {
                if self.current != self.ranges.len() {
                    return Err(FrameError::Order(format!(
                        "END with {} of {} ranges answered",
                        self.current,
                        self.ranges.len()
                    )));
                }
                if h.request_index as usize != self.ranges.len()
                    || h.object_offset != self.data_bytes
                {
                    return Err(FrameError::Order(format!(
                        "END says {} ranges and {} bytes; received {} and {}",
                        h.request_index,
                        h.object_offset,
                        self.ranges.len(),
                        self.data_bytes
                    )));
                }
                self.ended = true;
                Ok(Event::End)
            }
        }
    }

    fn control(&mut self) -> Result<(), FrameError> {
        self.control_frames += 1;
        if self.control_frames > self.ranges.len() as u64 + MAX_EXTRA_CONTROL_FRAMES {
            return Err(FrameError::Order("too many HINT/ERROR frames".into()));
        }
        Ok(())
    }

    /// The stream ended: an error unless END was seen.
    pub fn finish(&self) -> Result<(), FrameError> {
        if self.ended {
            Ok(())
        } else {
            Err(FrameError::Truncated(0))
        }
    }
}
