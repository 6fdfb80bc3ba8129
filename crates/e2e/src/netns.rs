//! A registry behind a shaped link, the way `../shared/scenarios/netreg.sh`
//! builds one for the benchmarks: a network namespace of the test's own, a
//! veth pair into it, `tbf` on both ends (this kernel has no netem) for the
//! rate, a delay line for the latency, and a second `docker-registry`
//! inside the namespace serving the storage of the test's ordinary
//! loopback registry (push there, fast; read through the link, shaped).
//! The rate can be changed while containers read.
//!
//! The delay line is [`DelayLine`], netreg.sh's `delayproxy` (Go) redone
//! here so the tests need no Go toolchain: it listens at the namespace's
//! address, holds every chunk of bytes for the configured one-way delay in
//! each direction (a delay line, not stop-and-wait: bytes keep flowing
//! while earlier ones wait), and forwards to the registry on the
//! namespace's loopback. Its sockets are made by a thread that joined the
//! namespace (`setns`), so it runs inside the test process.
//!
//! Names and addresses are unique per test process (`hg<pid>h<n>`,
//! 10.216.x.y/30), so parallel test binaries do not collide. Dropping it
//! stops the registry and deletes the namespace (which deletes the veth
//! pair); nothing else on the machine is touched.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::process::{run_with_timeout, Daemon};
use crate::registry::http_get;
use crate::util::{short_tempdir, wait_until};

const CMD_TIMEOUT: Duration = Duration::from_secs(20);

/// Where the registry listens inside the namespace (its loopback).
const INNER_REGISTRY: &str = "127.0.0.1:5001";

fn run(args: &[&str]) -> Result<()> {
    let out = run_with_timeout(Command::new(args[0]).args(&args[1..]), CMD_TIMEOUT)?;
    if !out.status.success() {
        bail!(
            "{} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// See the module docs.
pub struct ShapedRegistry {
    ns: String,
    host_if: String,
    ns_if: String,
    addr: String,
    delay: Duration,
    delay_line: Option<DelayLine>,
    // Declared before `dir`: stopped before its config goes away.
    registry: Option<Daemon>,
    dir: tempfile::TempDir,
}

impl ShapedRegistry {
    /// Serves the registry storage at `storage` at `10.216.x.y:5000` in a new namespace,
    /// with the link shaped to `rate` (tc syntax, e.g. `200mbit`) and
    /// `delay` added to each direction (netreg.sh: 10 ms).
    pub fn start(storage: &Path, rate: &str, delay: Duration) -> Result<Self> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let tag = format!("{}h{n}", pid % 100_000);
        // 10.216.A.B/30: A from the pid, B from the counter (64 links per
        // process).
        let (a, b) = ((pid % 250) as u8, ((n % 64) * 4) as u8);
        let host_ip = format!("10.216.{a}.{}", b + 1);
        let ns_ip = format!("10.216.{a}.{}", b + 2);
        let dir = short_tempdir("hg-netns-")?;
        let mut me = Self {
            ns: format!("hg{tag}"),
            host_if: format!("hg{tag}a"),
            ns_if: format!("hg{tag}b"),
            addr: format!("{ns_ip}:5000"),
            delay,
            delay_line: None,
            registry: None,
            dir,
        };
        // On any error below, Drop removes what was made.
        me.make_link(&host_ip, &ns_ip)?;
        me.set_rate(rate)?;
        // The registry on the namespace's loopback, behind the delay line
        // at the namespace's address (netreg.sh: PORT+1 behind PORT).
        me.delay_line = Some(DelayLine::start(&me.ns, &me.addr, INNER_REGISTRY, delay)?);
        me.start_registry(storage)?;
        Ok(me)
    }

    fn make_link(&self, host_ip: &str, ns_ip: &str) -> Result<()> {
        run(&["ip", "netns", "add", &self.ns])?;
        run(&[
            "ip",
            "link",
            "add",
            &self.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &self.ns_if,
        ])?;
        run(&["ip", "link", "set", &self.ns_if, "netns", &self.ns])?;
        run(&[
            "ip",
            "addr",
            "add",
            &format!("{host_ip}/30"),
            "dev",
            &self.host_if,
        ])?;
        run(&["ip", "link", "set", &self.host_if, "up"])?;
        let in_ns = |args: &[&str]| {
            let mut all = vec!["ip", "netns", "exec", &self.ns];
            all.extend_from_slice(args);
            run(&all)
        };
        in_ns(&[
            "ip",
            "addr",
            "add",
            &format!("{ns_ip}/30"),
            "dev",
            &self.ns_if,
        ])?;
        in_ns(&["ip", "link", "set", &self.ns_if, "up"])?;
        in_ns(&["ip", "link", "set", "lo", "up"])?;
        Ok(())
    }

    fn start_registry(&mut self, storage: &Path) -> Result<()> {
        let config = self.dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\n\
                 log:\n  level: info\n  accesslog:\n    disabled: true\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: {}\n",
                storage.display(),
                INNER_REGISTRY
            ),
        )
        .context("writing the shaped registry's config")?;
        let mut cmd = Command::new("ip");
        // `ip netns exec` execs the registry: the pid is the registry's.
        cmd.args(["netns", "exec", &self.ns, "docker-registry", "serve"])
            .arg(&config);
        let log = self.dir.path().join("registry.log");
        let mut daemon = Daemon::spawn("docker-registry (netns)", cmd, &log)?;
        let addr = self.addr.clone();
        let ready = wait_until(
            "the shaped registry to answer GET /v2/",
            Duration::from_secs(30),
            Duration::from_millis(100),
            || {
                if let Some(status) = daemon.try_exited()? {
                    bail!("docker-registry in {} exited early ({status})", self.ns);
                }
                Ok(http_get(&addr, "/v2/", &[])
                    .map(|r| r.status == 200)
                    .unwrap_or(false))
            },
        );
        if let Err(e) = ready {
            bail!("{e:#}\n--- registry log ---\n{}", daemon.log_tail(30));
        }
        self.registry = Some(daemon);
        Ok(())
    }

    /// "10.216.x.y:5000".
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The delay added to each direction.
    pub fn delay(&self) -> Duration {
        self.delay
    }

    /// Shapes both directions of the link to `rate` (tc syntax). Packets
    /// that would wait more than 2 s in the queue are dropped, as on a
    /// congested link; TCP resends them.
    pub fn set_rate(&self, rate: &str) -> Result<()> {
        let tbf = |dev: &str, in_ns: bool| {
            let mut args = Vec::new();
            if in_ns {
                args.extend(["ip", "netns", "exec", &self.ns]);
            }
            args.extend([
                "tc", "qdisc", "replace", "dev", dev, "root", "tbf", "rate", rate, "burst", "16kb",
                "latency", "2s",
            ]);
            run(&args)
        };
        tbf(&self.host_if, false)?;
        tbf(&self.ns_if, true)
    }

    /// Bytes the host received over the link so far.
    pub fn rx_bytes(&self) -> Result<u64> {
        let p = format!("/sys/class/net/{}/statistics/rx_bytes", self.host_if);
        let s = std::fs::read_to_string(&p).with_context(|| format!("reading {p}"))?;
        s.trim()
            .parse()
            .with_context(|| format!("parsing {p}: {s:?}"))
    }
}

impl Drop for ShapedRegistry {
    fn drop(&mut self) {
        drop(self.delay_line.take());
        drop(self.registry.take());
        // Deleting the namespace deletes the veth end inside it, and with
        // it the pair. The host end is removed explicitly in case the
        // namespace was never populated.
        if let Err(e) = run(&["ip", "netns", "del", &self.ns]) {
            eprintln!("e2e cleanup: {e:#}");
        }
        let _ = run(&["ip", "link", "del", &self.host_if]);
    }
}

/// Moves the calling thread into network namespace `ns` (`ip netns`'s
/// `/var/run/netns/<ns>`): sockets it makes from now on belong there.
fn enter_netns(ns: &str) -> Result<()> {
    let path = format!("/var/run/netns/{ns}");
    let f = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
    // SAFETY: setns(2) on a valid, open namespace fd owned by `f` for the
    // whole call; it changes only this thread's network namespace (the
    // thread is a dedicated one, see `DelayLine::start`).
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("setns {path}"));
    }
    Ok(())
}

/// netreg.sh's `delayproxy`: a TCP proxy adding a fixed one-way delay to
/// each direction of every connection (see the module docs). Dropping it
/// stops accepting and cuts every connection.
pub struct DelayLine {
    stop: Arc<AtomicBool>,
    streams: Arc<Mutex<Vec<TcpStream>>>,
    accept: Option<JoinHandle<()>>,
}

impl DelayLine {
    /// Listens at `listen` inside namespace `ns` and forwards to `target`
    /// (also inside it), `delay` each way.
    pub fn start(ns: &str, listen: &str, target: &str, delay: Duration) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let streams = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = mpsc::channel::<Result<()>>();
        let (ns, listen, target) = (ns.to_owned(), listen.to_owned(), target.to_owned());
        let (st, sv) = (Arc::clone(&stop), Arc::clone(&streams));
        let accept = std::thread::Builder::new()
            .name("delay-line".into())
            .spawn(move || {
                // This thread (and the ones it spawns) live in the namespace.
                let listener = enter_netns(&ns).and_then(|()| {
                    let l = TcpListener::bind(&listen)
                        .with_context(|| format!("binding the delay line at {listen}"))?;
                    l.set_nonblocking(true)?;
                    Ok(l)
                });
                let listener = match listener {
                    Ok(l) => {
                        let _ = ready_tx.send(Ok(()));
                        l
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                while !st.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((client, _)) => {
                            let _ = client.set_nonblocking(false);
                            connect(client, &target, delay, &sv);
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            // Polling the stop flag: a listener cannot be
                            // woken otherwise.
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            })
            .context("spawning the delay line")?;
        let ready = ready_rx
            .recv_timeout(Duration::from_secs(10))
            .context("the delay line did not start")?;
        let me = Self {
            stop,
            streams,
            accept: Some(accept),
        };
        ready?;
        Ok(me)
    }
}

/// Connects `client` to `target` (from the namespace's thread) and pipes
/// both ways through the delay line.
fn connect(client: TcpStream, target: &str, delay: Duration, streams: &Mutex<Vec<TcpStream>>) {
    let Ok(upstream) = TcpStream::connect(target) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    if let Ok(mut s) = streams.lock() {
        for c in [&client, &upstream] {
            if let Ok(c) = c.try_clone() {
                s.push(c);
            }
        }
    }
    let pairs = [
        (client.try_clone(), upstream.try_clone()),
        (upstream.try_clone(), client.try_clone()),
    ];
    for (src, dst) in pairs {
        if let (Ok(src), Ok(dst)) = (src, dst) {
            let _ = std::thread::Builder::new()
                .name("delay-line-pipe".into())
                .spawn(move || pipe(src, dst, delay));
        }
    }
}

/// One direction: a reader stamps each chunk with its due time, this
/// thread writes it then (chunks keep being read meanwhile).
fn pipe(mut src: TcpStream, mut dst: TcpStream, delay: Duration) {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let reader = std::thread::Builder::new()
        .name("delay-line-read".into())
        .spawn(move || {
            let mut buf = vec![0u8; 64 << 10];
            loop {
                match src.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if tx
                            .send((Instant::now() + delay, buf[..n].to_vec()))
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            }
        });
    if reader.is_err() {
        return;
    }
    for (due, data) in rx {
        let wait = due.saturating_duration_since(Instant::now());
        if !wait.is_zero() {
            // The delay line itself: each chunk leaves at its due time.
            std::thread::sleep(wait);
        }
        if dst.write_all(&data).is_err() {
            break;
        }
    }
    let _ = dst.shutdown(Shutdown::Write);
}

impl Drop for DelayLine {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Ok(mut s) = self.streams.lock() {
            for c in s.drain(..) {
                let _ = c.shutdown(Shutdown::Both);
            }
        }
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}
