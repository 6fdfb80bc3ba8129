//! A registry behind a shaped link, the way `../shared/scenarios/netreg.sh`
//! builds one for the benchmarks: a network namespace of the test's own, a
//! veth pair into it, `tbf` on both ends (this kernel has no netem), and a
//! second `docker-registry` inside the namespace serving the storage of the
//! test's ordinary loopback registry (push there, fast; read through the
//! link, shaped). The rate can be changed while containers read.
//!
//! Names and addresses are unique per test process (`hg<pid>h<n>`,
//! 10.216.x.y/30), so parallel test binaries do not collide. Dropping it
//! stops the registry and deletes the namespace (which deletes the veth
//! pair); nothing else on the machine is touched.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::process::{run_with_timeout, Daemon};
use crate::registry::http_get;
use crate::util::{short_tempdir, wait_until};

const CMD_TIMEOUT: Duration = Duration::from_secs(20);

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
    // Declared before `dir`: stopped before its config goes away.
    registry: Option<Daemon>,
    dir: tempfile::TempDir,
}

impl ShapedRegistry {
    /// Serves the registry storage at `storage` at `10.216.x.y:5000` in a new namespace,
    /// with the link shaped to `rate` (tc syntax, e.g. `200mbit`).
    pub fn start(storage: &Path, rate: &str) -> Result<Self> {
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
            registry: None,
            dir,
        };
        // On any error below, Drop removes what was made.
        me.make_link(&host_ip, &ns_ip)?;
        me.set_rate(rate)?;
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
                self.addr
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
