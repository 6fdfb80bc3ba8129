//! Keeping the daemon's kernel objects alive while it restarts.
//!
//! A FUSE mount lives as long as some process holds its `/dev/fuse` fd; a
//! listening socket as long as some process holds it. The daemon hands a
//! duplicate of each to a holder process (`hologram-fdstore`, [`holder`])
//! that never restarts with it. While the daemon is gone the kernel keeps
//! the mounts and queues their requests, and containerd's connections wait
//! in the socket's backlog; the next daemon takes everything back
//! ([`client::Handover::take`]), serves the FUSE connections again without a
//! new FUSE_INIT, and asks the kernel to resend the requests its predecessor
//! read and never answered (FUSE_NOTIFY_RESEND).
//!
//! The protocol: `SOCK_SEQPACKET` on a unix socket only the holder's own
//! user may use (peer credentials are checked); one JSON message per
//! packet, with at most one fd attached (`SCM_RIGHTS`). Versioned by
//! [`PROTOCOL`]: a daemon and a holder of different versions refuse each
//! other, and the daemon then starts without handover.

pub mod client;
pub mod holder;

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;

use hologram_oci::Digest;
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use serde::{Deserialize, Serialize};

/// Version of the protocol; bump on any incompatible change.
pub const PROTOCOL: u32 = 1;
/// Largest message either side accepts.
const MAX_MESSAGE: usize = 256 * 1024;

/// What an fd is kept under: `grpc` (the listening socket) or `fuse/<id>`
/// (the FUSE connection of snapshot `id`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Key {
    Grpc,
    Fuse(u64),
}

impl TryFrom<String> for Key {
    type Error = String;
    fn try_from(s: String) -> Result<Key, String> {
        if s == "grpc" {
            return Ok(Key::Grpc);
        }
        s.strip_prefix("fuse/")
            .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|n| n.parse().ok())
            .map(Key::Fuse)
            .ok_or_else(|| format!("not an fd key: {s:?}"))
    }
}

impl From<Key> for String {
    fn from(k: Key) -> String {
        match k {
            Key::Grpc => "grpc".to_owned(),
            Key::Fuse(id) => format!("fuse/{id}"),
        }
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&String::from(*self))
    }
}

/// What an fd is, as the daemon that handed it over described it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Meta {
    /// The gRPC listening socket bound at `path`.
    Grpc { path: PathBuf },
    /// A FUSE connection serving `layer` at `mountpoint`; `conn` is the
    /// connection's number (the mount's device minor, its directory under
    /// /sys/fs/fuse/connections); `passthrough` what FUSE_INIT negotiated.
    Fuse {
        mountpoint: PathBuf,
        layer: Digest,
        conn: u32,
        passthrough: bool,
    },
}

/// One kept fd's description.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub key: Key,
    pub meta: Meta,
}

/// Daemon to holder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// First message of a connection.
    Hello { protocol: u32 },
    /// Keep the attached fd under `key` (replacing what was there).
    Put { entry: Entry },
    /// Close what is kept under `key`.
    Remove { key: Key },
    /// Describe everything kept.
    List,
    /// Send a duplicate of what is kept under `key`.
    Get { key: Key },
}

/// Holder to daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case", deny_unknown_fields)]
pub enum Reply {
    Hello {
        protocol: u32,
        pid: u32,
    },
    Ok,
    Entries {
        entries: Vec<Entry>,
    },
    /// With the fd attached.
    Entry {
        entry: Entry,
    },
    Error {
        message: String,
    },
}

/// Sends `msg` as one packet, with `fd` attached.
pub(crate) fn send<T: Serialize>(
    sock: BorrowedFd<'_>,
    msg: &T,
    fd: Option<BorrowedFd<'_>>,
) -> io::Result<()> {
    let bytes = serde_json::to_vec(msg).map_err(io::Error::other)?;
    if bytes.len() > MAX_MESSAGE {
        return Err(io::Error::other(format!(
            "message of {} bytes is over the {MAX_MESSAGE}-byte limit",
            bytes.len()
        )));
    }
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    let fds;
    if let Some(fd) = fd {
        fds = [fd];
        if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
            return Err(io::Error::other(
                "no room for the fd in the control message",
            ));
        }
    }
    let sent = rustix::net::sendmsg(
        sock,
        &[IoSlice::new(&bytes)],
        &mut control,
        SendFlags::NOSIGNAL,
    )?;
    if sent != bytes.len() {
        return Err(io::Error::other("message sent in part"));
    }
    Ok(())
}

/// Receives one packet: `None` when the peer closed the connection.
pub(crate) fn recv<T: for<'de> Deserialize<'de>>(
    sock: BorrowedFd<'_>,
) -> io::Result<Option<(T, Option<OwnedFd>)>> {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = rustix::net::recvmsg(
        sock,
        &mut [IoSliceMut::new(&mut buf)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    // Take the fds first: dropping them closes them whatever happens next.
    let mut fds: Vec<OwnedFd> = Vec::new();
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = m {
            fds.extend(rights);
        }
    }
    if got.flags.contains(ReturnFlags::TRUNC) || got.flags.contains(ReturnFlags::CTRUNC) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "message or its fds truncated",
        ));
    }
    if got.bytes == 0 {
        return Ok(None);
    }
    if fds.len() > 1 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} fds attached to one message (at most 1)", fds.len()),
        ));
    }
    let msg = serde_json::from_slice(&buf[..got.bytes])
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("bad message: {e}")))?;
    Ok(Some((msg, fds.pop())))
}

/// A new `SOCK_SEQPACKET` unix socket (close-on-exec).
pub(crate) fn seqpacket() -> io::Result<OwnedFd> {
    Ok(rustix::net::socket_with(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::SEQPACKET,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )?)
}

/// Whether the peer of `sock` runs as our effective user.
pub(crate) fn peer_is_us(sock: impl AsFd) -> io::Result<bool> {
    let cred = rustix::net::sockopt::socket_peercred(sock)?;
    Ok(cred.uid == rustix::process::geteuid())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::io::{Read, Seek, Write};

    #[test]
    fn keys_parse_strictly() {
        assert_eq!(Key::try_from("grpc".to_owned()), Ok(Key::Grpc));
        assert_eq!(Key::try_from("fuse/42".to_owned()), Ok(Key::Fuse(42)));
        for bad in [
            "fuse/",
            "fuse/-1",
            "fuse/1/2",
            "fuse/../x",
            "Grpc",
            "fuse/+3",
            "",
        ] {
            assert!(Key::try_from(bad.to_owned()).is_err(), "{bad}");
        }
        assert_eq!(String::from(Key::Fuse(7)), "fuse/7");
    }

    #[test]
    fn messages_and_fds_cross_a_socketpair() {
        let (a, b) = rustix::net::socketpair(
            rustix::net::AddressFamily::UNIX,
            rustix::net::SocketType::SEQPACKET,
            rustix::net::SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(b"kept").unwrap();
        let entry = Entry {
            key: Key::Fuse(3),
            meta: Meta::Fuse {
                mountpoint: "/r/snapshots/3/fs".into(),
                layer: Digest::of(b"layer"),
                conn: 71,
                passthrough: true,
            },
        };
        send(
            a.as_fd(),
            &Request::Put {
                entry: entry.clone(),
            },
            Some(f.as_fd()),
        )
        .unwrap();
        let (msg, fd) = recv::<Request>(b.as_fd()).unwrap().unwrap();
        assert_eq!(msg, Request::Put { entry });
        let mut got = std::fs::File::from(fd.unwrap());
        got.rewind().unwrap();
        let mut s = String::new();
        got.read_to_string(&mut s).unwrap();
        assert_eq!(s, "kept");
        assert!(peer_is_us(&a).unwrap());

        send(a.as_fd(), &Request::List, None).unwrap();
        let (msg, fd) = recv::<Request>(b.as_fd()).unwrap().unwrap();
        assert_eq!((msg, fd.is_none()), (Request::List, true));

        // A message of the wrong shape is an error, not a panic.
        send(a.as_fd(), &Reply::Ok, None).unwrap();
        assert!(recv::<Request>(b.as_fd()).is_err());

        drop(a);
        assert!(recv::<Request>(b.as_fd()).unwrap().is_none());
    }
}
