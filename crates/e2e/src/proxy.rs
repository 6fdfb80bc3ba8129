//! A byte-counting TCP proxy on 127.0.0.1, to put in front of the registry
//! and measure how many bytes it served.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};

#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    /// Bytes from the upstream (registry) to clients.
    down: AtomicU64,
    /// Bytes from clients to the upstream.
    up: AtomicU64,
    connections: AtomicU64,
    /// HTTP/1 request lines seen from clients (`GET /v2/... HTTP/1.1`).
    requests: Mutex<Vec<String>>,
    /// Both ends of every connection, to cut them at stop.
    streams: Mutex<Vec<TcpStream>>,
}

/// Forwards every connection to `upstream` and counts the bytes in each
/// direction. Dropping it (or [`CountingProxy::stop`]) closes the listener
/// and every open connection.
pub struct CountingProxy {
    addr: SocketAddr,
    upstream: String,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

/// Collects HTTP/1 request lines from a client's byte stream.
#[derive(Default)]
struct RequestLines {
    pending: Vec<u8>,
}

impl RequestLines {
    fn feed(&mut self, data: &[u8], out: &Mutex<Vec<String>>) {
        self.pending.extend_from_slice(data);
        while let Some(i) = self.pending.windows(2).position(|w| w == b"\r\n") {
            let line = String::from_utf8_lossy(&self.pending[..i]).into_owned();
            self.pending.drain(..i + 2);
            let is_request = ["GET ", "HEAD ", "POST ", "PUT ", "PATCH ", "DELETE "]
                .iter()
                .any(|m| line.starts_with(m))
                && (line.ends_with(" HTTP/1.1") || line.ends_with(" HTTP/1.0"));
            if is_request {
                if let Ok(mut v) = out.lock() {
                    v.push(line);
                }
            }
        }
        if self.pending.len() > 16 * 1024 {
            self.pending.clear(); // a body, not headers
        }
    }
}

fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    counter: &AtomicU64,
    stop: &AtomicBool,
    requests: Option<&Mutex<Vec<String>>>,
) {
    let mut lines = RequestLines::default();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        // Counted before forwarding: once the far side has the bytes (and
        // may answer, or the test may look), the count already includes them.
        counter.fetch_add(n as u64, Ordering::Relaxed);
        if let Some(r) = requests {
            lines.feed(&buf[..n], r);
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    // Half-close so the other side sees EOF, as a direct connection would.
    let _ = to.shutdown(Shutdown::Write);
    let _ = from.shutdown(Shutdown::Read);
}

impl CountingProxy {
    /// Listens on a free 127.0.0.1 port and forwards to `upstream`
    /// ("127.0.0.1:PORT").
    pub fn start(upstream: &str) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding the proxy")?;
        let addr = listener.local_addr().context("proxy local_addr")?;
        listener
            .set_nonblocking(true)
            .context("proxy listener nonblocking")?;
        let shared = Arc::new(Shared::default());
        let (sh, up) = (Arc::clone(&shared), upstream.to_owned());
        let accept = std::thread::Builder::new()
            .name("e2e-proxy".into())
            .spawn(move || Self::accept_loop(&listener, &up, &sh))
            .context("spawning the proxy thread")?;
        Ok(Self {
            addr,
            upstream: upstream.to_owned(),
            shared,
            accept: Some(accept),
        })
    }

    fn accept_loop(listener: &TcpListener, upstream: &str, shared: &Arc<Shared>) {
        while !shared.stop.load(Ordering::Relaxed) {
            let client = match listener.accept() {
                Ok((c, _)) => c,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
                Err(_) => continue,
            };
            let _ = client.set_nonblocking(false);
            let Ok(server) = TcpStream::connect(upstream) else {
                // Upstream down: the client sees a closed connection.
                let _ = client.shutdown(Shutdown::Both);
                continue;
            };
            shared.connections.fetch_add(1, Ordering::Relaxed);
            let clones = (
                client.try_clone(),
                server.try_clone(),
                client.try_clone(),
                server.try_clone(),
            );
            let (Ok(c2), Ok(s2), Ok(c3), Ok(s3)) = clones else {
                continue;
            };
            if let Ok(mut v) = shared.streams.lock() {
                v.push(c3);
                v.push(s3);
            }
            let sh = Arc::clone(shared);
            let _ = std::thread::Builder::new()
                .name("e2e-proxy-down".into())
                .spawn(move || pump(server, client, &sh.down, &sh.stop, None));
            let sh = Arc::clone(shared);
            let _ = std::thread::Builder::new()
                .name("e2e-proxy-up".into())
                .spawn(move || pump(c2, s2, &sh.up, &sh.stop, Some(&sh.requests)));
        }
    }

    /// "127.0.0.1:PORT" of the proxy.
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    pub fn upstream(&self) -> &str {
        &self.upstream
    }

    /// Bytes the upstream sent to clients so far (HTTP headers included).
    pub fn bytes_down(&self) -> u64 {
        self.shared.down.load(Ordering::Relaxed)
    }

    /// Bytes clients sent to the upstream so far.
    pub fn bytes_up(&self) -> u64 {
        self.shared.up.load(Ordering::Relaxed)
    }

    /// The HTTP/1 request lines clients sent so far, in order
    /// (`GET /v2/e2e/x/blobs/sha256:... HTTP/1.1`).
    pub fn requests(&self) -> Vec<String> {
        self.shared
            .requests
            .lock()
            .map(|v| v.clone())
            .unwrap_or_default()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::Relaxed)
    }

    /// Closes the listener and cuts every open connection.
    pub fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Ok(v) = self.shared.streams.lock() {
            for s in v.iter() {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn counts_bytes_both_ways() {
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let upstream = server.local_addr().unwrap().to_string();
        let t = std::thread::spawn(move || {
            let (mut s, _) = server.accept().unwrap();
            let mut req = [0u8; 5];
            s.read_exact(&mut req).unwrap();
            assert_eq!(&req, b"hello");
            s.write_all(&[7u8; 1000]).unwrap();
        });
        let mut proxy = CountingProxy::start(&upstream).unwrap();
        let mut c = TcpStream::connect(proxy.addr()).unwrap();
        c.write_all(b"hello").unwrap();
        let mut got = Vec::new();
        c.read_to_end(&mut got).unwrap();
        t.join().unwrap();
        assert_eq!(got.len(), 1000);
        assert_eq!(proxy.bytes_down(), 1000);
        assert_eq!(proxy.bytes_up(), 5);
        assert_eq!(proxy.connections(), 1);
        proxy.stop();
        assert!(TcpStream::connect(proxy.addr()).is_err());
    }

    #[test]
    fn records_request_lines() {
        let mut r = RequestLines::default();
        let out = Mutex::new(Vec::new());
        r.feed(
            b"GET /v2/a/blobs/sha256:1 HTTP/1.1\r\nHost: x\r\nRange: by",
            &out,
        );
        r.feed(b"tes=0-1\r\n\r\nHEAD /v2/ HTTP/1.1\r\n\r\n", &out);
        assert_eq!(
            out.into_inner().unwrap(),
            ["GET /v2/a/blobs/sha256:1 HTTP/1.1", "HEAD /v2/ HTTP/1.1"]
        );
    }
}
