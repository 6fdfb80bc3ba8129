//! A TCP proxy on 127.0.0.1 in front of the registry that can misbehave the
//! ways real registries do: hang (accept, read, never answer), answer every
//! request with HTTP 500, or trickle its answers a byte at a time. A mode
//! change cuts every open connection, so pooled keep-alive connections meet
//! the new behaviour at once.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};

/// How the proxy treats new connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward both ways.
    Pass,
    /// Read requests, never answer.
    Hang,
    /// Answer every request `500 Internal Server Error`.
    Error500,
    /// Forward requests; send the registry's answers one byte per interval.
    Trickle(Duration),
}

#[derive(Debug)]
struct Shared {
    stop: AtomicBool,
    mode: Mutex<Fault>,
    streams: Mutex<Vec<TcpStream>>,
}

impl Shared {
    fn mode(&self) -> Fault {
        *self.mode.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn track(&self, s: &TcpStream) {
        if let Ok(c) = s.try_clone() {
            self.streams
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(c);
        }
    }
    fn cut_all(&self) {
        let streams = std::mem::take(&mut *self.streams.lock().unwrap_or_else(|p| p.into_inner()));
        for s in streams {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

/// See the module docs. Dropping it stops it and cuts every connection.
pub struct FaultyProxy {
    addr: String,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl FaultyProxy {
    /// Listens on a free port of 127.0.0.1 and forwards to `upstream`
    /// (`HOST:PORT`).
    pub fn start(upstream: &str) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding the faulty proxy")?;
        let addr = listener.local_addr()?.to_string();
        listener.set_nonblocking(true)?;
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            mode: Mutex::new(Fault::Pass),
            streams: Mutex::new(Vec::new()),
        });
        let (s, up) = (Arc::clone(&shared), upstream.to_owned());
        let accept = std::thread::Builder::new()
            .name("faulty-accept".into())
            .spawn(move || accept_loop(&listener, &s, &up))?;
        Ok(Self {
            addr,
            shared,
            accept: Some(accept),
        })
    }

    /// `127.0.0.1:PORT`
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Switches behaviour for every connection from now on (open ones are
    /// cut).
    pub fn set(&self, mode: Fault) {
        *self.shared.mode.lock().unwrap_or_else(|p| p.into_inner()) = mode;
        self.shared.cut_all();
    }
}

impl Drop for FaultyProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.cut_all();
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>, upstream: &str) {
    while !shared.stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((client, _)) => {
                let _ = client.set_nonblocking(false);
                shared.track(&client);
                let (s, up) = (Arc::clone(shared), upstream.to_owned());
                let _ = std::thread::Builder::new()
                    .name("faulty-conn".into())
                    .spawn(move || serve(client, &s, &up));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(_) => return,
        }
    }
}

fn serve(mut client: TcpStream, shared: &Arc<Shared>, upstream: &str) {
    match shared.mode() {
        Fault::Hang => {
            let mut buf = [0u8; 4096];
            while !shared.stop.load(Ordering::Relaxed) {
                match client.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        }
        Fault::Error500 => {
            let mut buf = [0u8; 4096];
            let mut head = Vec::new();
            loop {
                match client.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
                if head.windows(4).any(|w| w == b"\r\n\r\n") {
                    let _ = client.write_all(
                        b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    );
                    return;
                }
            }
        }
        mode @ (Fault::Pass | Fault::Trickle(_)) => {
            let Ok(server) = TcpStream::connect(upstream) else {
                return;
            };
            shared.track(&server);
            let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
                return;
            };
            let up = std::thread::spawn(move || pump(c2, s2, None));
            let per_byte = match mode {
                Fault::Trickle(d) => Some(d),
                _ => None,
            };
            pump(server, client, per_byte);
            let _ = up.join();
        }
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, per_byte: Option<Duration>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let ok = match per_byte {
            None => to.write_all(&buf[..n]).is_ok(),
            Some(d) => buf[..n].iter().all(|b| {
                std::thread::sleep(d);
                to.write_all(std::slice::from_ref(b)).is_ok()
            }),
        };
        if !ok {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}
