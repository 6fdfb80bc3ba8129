//! A private containerd (own config, root, state, socket and namespace) and
//! a `ctr` wrapper.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tempfile::TempDir;

use crate::mounts::unmount_under;
use crate::process::{pid_exists, run_with_timeout, send_signal, Daemon};
use crate::util::{short_tempdir, tail, unique_namespace, wait_until};

/// Name of the proxy snapshotter plugin in the generated config.
pub const SNAPSHOTTER: &str = "hologram";
/// Default timeout of one `ctr` invocation.
pub const CTR_TIMEOUT: Duration = Duration::from_secs(180);

/// A containerd process with everything in one temp dir. Dropping it
/// removes leftover tasks and containers, stops containerd, kills leftover
/// shims of this instance, unmounts everything below its dir and removes the
/// cgroups/runc state of its namespace.
pub struct Containerd {
    daemon: Option<Daemon>,
    /// The CRI plugin runs (pods in namespace `k8s.io`).
    cri: bool,
    address: PathBuf,
    namespace: String,
    root: PathBuf,
    state: PathBuf,
    log: PathBuf,
    extra_logs: Vec<(String, PathBuf)>,
    // Dropped last.
    dir: TempDir,
}

impl Containerd {
    /// containerd with `[proxy_plugins.hologram]` pointing at `snapshotter_socket`.
    pub fn start(snapshotter_socket: &Path) -> Result<Self> {
        Self::start_with(Some(snapshotter_socket))
    }

    /// containerd with only its built-in snapshotters (reference runs).
    pub fn start_without_proxy() -> Result<Self> {
        Self::start_with(None)
    }

    fn start_with(snapshotter_socket: Option<&Path>) -> Result<Self> {
        Self::start_configured(snapshotter_socket, None)
    }

    /// containerd with `[proxy_plugins.hologram]` and its CRI plugin
    /// enabled the way a Kubernetes node runs it: `snapshotter = "hologram"`,
    /// `disable_snapshot_annotations = false`, `config_path` (hosts.toml),
    /// the sandbox image given, no CNI needed for host-network pods. Its
    /// runc state, CRI state and stream server are private to this
    /// instance. Drive it with [`crate::cri::CriClient`].
    pub fn start_cri(snapshotter_socket: &Path, cri: &CriSettings) -> Result<Self> {
        Self::start_configured(Some(snapshotter_socket), Some(cri))
    }

    fn start_configured(
        snapshotter_socket: Option<&Path>,
        cri: Option<&CriSettings>,
    ) -> Result<Self> {
        let dir = short_tempdir("hg-ctd-")?;
        let root = dir.path().join("root");
        let state = dir.path().join("state");
        let address = dir.path().join("c.sock");
        let log = dir.path().join("containerd.log");
        let opt = dir.path().join("opt");
        let config = dir.path().join("config.toml");
        if address.as_os_str().len() >= 100 {
            bail!("containerd socket path too long: {}", address.display());
        }
        let disabled = if cri.is_some() {
            ""
        } else {
            "\"io.containerd.grpc.v1.cri\""
        };
        let mut toml = format!(
            "version = 2\n\
             root = {root:?}\n\
             state = {state:?}\n\
             disabled_plugins = [{disabled}]\n\
             [grpc]\n  address = {address:?}\n\
             [ttrpc]\n  address = {ttrpc:?}\n\
             [debug]\n  level = \"debug\"\n\
             [metrics]\n  address = \"\"\n\
             [plugins.\"io.containerd.internal.v1.opt\"]\n  path = {opt:?}\n",
            root = root.display().to_string(),
            state = state.display().to_string(),
            address = address.display().to_string(),
            ttrpc = format!("{}.ttrpc", address.display()),
            opt = opt.display().to_string(),
        );
        if let Some(sock) = snapshotter_socket {
            toml.push_str(&format!(
                "[proxy_plugins.{SNAPSHOTTER}]\n  type = \"snapshot\"\n  address = {:?}\n",
                sock.display().to_string()
            ));
        }
        if let Some(c) = cri {
            toml.push_str(&c.toml(dir.path())?);
        }
        std::fs::write(&config, toml).context("writing containerd config")?;
        let mut cmd = Command::new("containerd");
        cmd.arg("--config").arg(&config);
        let daemon = Daemon::spawn("containerd", cmd, &log)?;
        let mut me = Self {
            daemon: Some(daemon),
            cri: cri.is_some(),
            address,
            namespace: unique_namespace(),
            root,
            state,
            log,
            extra_logs: Vec::new(),
            dir,
        };
        me.wait_ready()?;
        Ok(me)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let address = self.address.clone();
        let daemon = self.daemon.as_mut().context("containerd not running")?;
        let res = wait_until(
            "`ctr version` to succeed",
            Duration::from_secs(30),
            Duration::from_millis(100),
            || {
                if let Some(status) = daemon.try_exited()? {
                    bail!("containerd exited during start-up ({status})");
                }
                if !address.exists() {
                    return Ok(false);
                }
                let out = run_with_timeout(
                    Command::new("ctr")
                        .arg("--address")
                        .arg(&address)
                        .arg("version"),
                    Duration::from_secs(10),
                )?;
                Ok(out.status.success())
            },
        );
        if let Err(e) = res {
            bail!("{e:#}\n--- containerd log ---\n{}", tail(&self.log, 40));
        }
        Ok(())
    }

    /// Adds a log whose tail is appended to `ctr` failures (e.g. the
    /// snapshotter's).
    pub fn attach_log(&mut self, name: &str, path: &Path) {
        self.extra_logs.push((name.to_string(), path.to_path_buf()));
    }

    pub fn address(&self) -> &Path {
        &self.address
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn state(&self) -> &Path {
        &self.state
    }

    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Through containerd's snapshots API: a View `key` of `parent`, labelled
    /// as a GC root. `ctr snapshots view` sets no GC root, so containerd's
    /// garbage collector (which runs after any removal, e.g. a `ctr run --rm`
    /// ending) may collect such a view mid-test.
    pub fn view_rooted(&self, snapshotter: &str, key: &str, parent: &str) -> Result<()> {
        use hologram_api::snapshots::ViewSnapshotRequest;
        let req = ViewSnapshotRequest {
            snapshotter: snapshotter.into(),
            key: key.into(),
            parent: parent.into(),
            labels: gc_root_label(),
        };
        self.snapshots_rpc(format!("View {key} of {parent}"), |mut c| async move {
            c.view(req).await.map(drop)
        })
    }

    /// Through containerd's snapshots API: Commit active `key` as `name`,
    /// labelled as a GC root (`ctr snapshots commit` sets none; see
    /// [`Containerd::view_rooted`]).
    pub fn commit_rooted(&self, snapshotter: &str, name: &str, key: &str) -> Result<()> {
        use hologram_api::snapshots::CommitSnapshotRequest;
        let req = CommitSnapshotRequest {
            snapshotter: snapshotter.into(),
            name: name.into(),
            key: key.into(),
            labels: gc_root_label(),
        };
        self.snapshots_rpc(format!("Commit {key} as {name}"), |mut c| async move {
            c.commit(req).await.map(drop)
        })
    }

    /// One call of containerd's snapshots service in this namespace.
    fn snapshots_rpc<F, Fut>(&self, what: String, call: F) -> Result<()>
    where
        F: FnOnce(
            hologram_api::snapshots::snapshots_client::SnapshotsClient<
                tonic::service::interceptor::InterceptedService<
                    tonic::transport::Channel,
                    NamespaceHeader,
                >,
            >,
        ) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<(), tonic::Status>>,
    {
        use hologram_api::snapshots::snapshots_client::SnapshotsClient;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("tokio runtime")?;
        let ns = tonic::metadata::MetadataValue::try_from(self.namespace.as_str())
            .context("namespace header")?;
        rt.block_on(async {
            let channel = hologram_api::connect_unix(&self.address)
                .await
                .with_context(|| format!("connecting to {}", self.address.display()))?;
            let client = SnapshotsClient::with_interceptor(channel, NamespaceHeader(ns));
            tokio::time::timeout(CTR_TIMEOUT, call(client))
                .await
                .with_context(|| format!("{what}: no answer within {CTR_TIMEOUT:?}"))?
                .with_context(|| format!("{what}\n{}", self.diagnostics()))
        })
    }

    /// A scratch directory inside this instance's temp dir (removed on drop).
    pub fn scratch(&self, name: &str) -> Result<PathBuf> {
        let p = self.dir.path().join(name);
        std::fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
        Ok(p)
    }

    /// `ctr --address SOCK --namespace NS <args>` (not run yet).
    pub fn ctr_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address")
            .arg(&self.address)
            .arg("--namespace")
            .arg(&self.namespace)
            .args(args);
        cmd
    }

    /// `ctr [-n NS] run ARGS...` (ARGS = options such as `--rm`, image, id,
    /// command),
    /// with the container's output written by the shim to a file
    /// (`--log-uri file://`) and returned from there. `ctr run` copies a
    /// container's output through FIFOs and cancels the copy when the task
    /// is deleted, which can lose the last lines under load; the shim waits
    /// for its own copy to a log file before it lets the task go.
    pub fn run_logged(&self, ns: Option<&str>, args: &[&str]) -> Result<String> {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let log = self.scratch("run-logs")?.join(format!(
            "run-{}.log",
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let uri = format!("file://{}", log.display());
        let mut full = vec!["run", "--log-uri", uri.as_str()];
        full.extend_from_slice(args);
        match ns {
            Some(ns) => self.ctr_ns(ns, &full)?,
            None => self.ctr(&full)?,
        };
        std::fs::read_to_string(&log).with_context(|| format!("container output {}", log.display()))
    }

    /// `ctr` in namespace `ns` (not this instance's own); stdout, or an
    /// error with the output when it fails.
    pub fn ctr_ns(&self, ns: &str, args: &[&str]) -> Result<String> {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address")
            .arg(&self.address)
            .arg("--namespace")
            .arg(ns)
            .args(args);
        let out = run_with_timeout(&mut cmd, CTR_TIMEOUT)
            .with_context(|| format!("ctr -n {ns} {}", args.join(" ")))?;
        self.stdout_of(&format!("ctr -n {ns} {}", args.join(" ")), out)
    }

    /// stdout of a successful ctr run; else an error carrying stdout,
    /// stderr and the tails of the containerd and attached logs.
    fn stdout_of(&self, what: &str, out: Output) -> Result<String> {
        if !out.status.success() {
            bail!(
                "`{what}` failed ({})\n--- stdout ---\n{}\n--- stderr ---\n{}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.diagnostics()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs ctr and returns its raw output, whatever the exit status.
    pub fn ctr_raw(&self, args: &[&str]) -> Result<Output> {
        run_with_timeout(&mut self.ctr_command(args), CTR_TIMEOUT)
            .with_context(|| format!("ctr {}\n{}", args.join(" "), self.diagnostics()))
    }

    /// Runs ctr and returns stdout; a non-zero exit is an error carrying
    /// stdout, stderr and the tails of the containerd and attached logs.
    pub fn ctr(&self, args: &[&str]) -> Result<String> {
        let out = self.ctr_raw(args)?;
        self.stdout_of(&format!("ctr {}", args.join(" ")), out)
    }

    /// Runs ctr expecting failure; returns stderr (error if it succeeds).
    pub fn ctr_fails(&self, args: &[&str]) -> Result<String> {
        let out = self.ctr_raw(args)?;
        if out.status.success() {
            bail!(
                "`ctr {}` succeeded but was expected to fail\n--- stdout ---\n{}\n{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                self.diagnostics()
            );
        }
        Ok(String::from_utf8_lossy(&out.stderr).into_owned())
    }

    /// Tails of the containerd log and attached logs.
    pub fn diagnostics(&self) -> String {
        let mut s = format!(
            "--- containerd log tail ({}) ---\n{}\n",
            self.log.display(),
            tail(&self.log, 30)
        );
        for (name, path) in &self.extra_logs {
            s.push_str(&format!(
                "--- {name} log tail ({}) ---\n{}\n",
                path.display(),
                tail(path, 40)
            ));
        }
        s
    }

    /// Whether containerd is still running.
    pub fn is_running(&mut self) -> Result<bool> {
        match self.daemon.as_mut() {
            None => Ok(false),
            Some(d) => Ok(d.try_exited()?.is_none()),
        }
    }

    fn list_ids_in(&self, ns: &str, args: &[&str]) -> Vec<String> {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address")
            .arg(&self.address)
            .arg("--namespace")
            .arg(ns)
            .args(args);
        match run_with_timeout(&mut cmd, Duration::from_secs(20)) {
            Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The namespaces this instance runs containers in.
    fn namespaces(&self) -> Vec<String> {
        let mut v = vec![self.namespace.clone()];
        if self.cri {
            v.push(crate::cri::CRI_NAMESPACE.to_owned());
        }
        v
    }

    /// Best-effort removal of tasks and containers of our namespaces (pods
    /// a CRI test left behind included).
    fn remove_tasks_and_containers(&self) {
        let short = Duration::from_secs(20);
        for ns in self.namespaces() {
            let ctr = |args: &[&str]| {
                let mut cmd = Command::new("ctr");
                cmd.arg("--address")
                    .arg(&self.address)
                    .arg("--namespace")
                    .arg(&ns)
                    .args(args);
                let _ = run_with_timeout(&mut cmd, short);
            };
            for id in self.list_ids_in(&ns, &["tasks", "ls", "-q"]) {
                ctr(&["tasks", "kill", "--all", "--signal", "SIGKILL", &id]);
                ctr(&["tasks", "rm", "-f", &id]);
            }
            for id in self.list_ids_in(&ns, &["containers", "ls", "-q"]) {
                ctr(&["containers", "rm", &id]);
            }
        }
    }

    /// Processes started on behalf of this containerd that outlived it:
    /// shims (their argv holds our socket path) and container init
    /// processes (init.pid files in our state dir).
    fn leftover_pids(&self) -> Vec<u32> {
        let mut pids = Vec::new();
        for ns in self.namespaces() {
            let tasks = self.state.join("io.containerd.runtime.v2.task").join(ns);
            if let Ok(entries) = std::fs::read_dir(&tasks) {
                for e in entries.flatten() {
                    if let Ok(text) = std::fs::read_to_string(e.path().join("init.pid")) {
                        if let Ok(pid) = text.trim().parse::<u32>() {
                            pids.push(pid);
                        }
                    }
                }
            }
        }
        let address = self.address.as_os_str().as_encoded_bytes();
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for e in entries.flatten() {
                let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                    continue;
                };
                let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
                    continue;
                };
                let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
                let is_shim = args
                    .first()
                    .is_some_and(|a0| String::from_utf8_lossy(a0).contains("containerd-shim"));
                if is_shim && args.contains(&address) {
                    pids.push(pid);
                }
            }
        }
        pids
    }

    fn remove_namespace_leftovers(&self) {
        if let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") {
            for e in entries.flatten() {
                let _ = std::fs::remove_dir(e.path().join(&self.namespace));
            }
        }
        let _ = std::fs::remove_dir(Path::new("/sys/fs/cgroup").join(&self.namespace));
        let _ = std::fs::remove_dir_all(Path::new("/run/containerd/runc").join(&self.namespace));
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let running = self.is_running().unwrap_or(false);
        if running {
            self.remove_tasks_and_containers();
        }
        if let Some(mut daemon) = self.daemon.take() {
            if let Err(e) = daemon.terminate(Duration::from_secs(15)) {
                eprintln!("e2e cleanup: {e:#}");
            }
            // Dropping the reaped daemon does nothing more.
        }
        let leftovers = self.leftover_pids();
        for pid in &leftovers {
            let _ = send_signal(*pid, libc::SIGKILL);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while leftovers.iter().any(|p| pid_exists(*p)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Err(e) = unmount_under(self.dir.path()) {
            eprintln!("e2e cleanup: {e:#}");
        }
        self.remove_namespace_leftovers();
    }
}

/// The CRI plugin's settings in a test containerd.
#[derive(Debug, Clone)]
pub struct CriSettings {
    /// `sandbox_image` (the pause image; pulled through the snapshotter
    /// like every CRI image).
    pub sandbox_image: String,
    /// `registry.config_path`: a containerd certs.d directory.
    pub hosts_dir: PathBuf,
}

impl CriSettings {
    /// The `[plugins."io.containerd.grpc.v1.cri"]` section. `dir` is the
    /// instance's temp dir (runc state, CNI dirs). The machines lack
    /// CAP_SYS_RESOURCE (`restrict_oom_score_adj`); AppArmor profiles are not
    /// loaded here (`disable_apparmor`); the stream server takes a free
    /// port so instances do not collide.
    fn toml(&self, dir: &Path) -> Result<String> {
        let runc_root = dir.join("runc");
        let cni_bin = dir.join("cni-bin");
        let cni_conf = dir.join("cni-conf");
        for d in [&runc_root, &cni_bin, &cni_conf] {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        let q = |p: &Path| format!("{:?}", p.display().to_string());
        Ok(format!(
            "[plugins.\"io.containerd.grpc.v1.cri\"]\n\
             \x20 sandbox_image = {sandbox:?}\n\
             \x20 restrict_oom_score_adj = true\n\
             \x20 disable_apparmor = true\n\
             \x20 enable_selinux = false\n\
             \x20 stream_server_address = \"127.0.0.1\"\n\
             \x20 stream_server_port = \"0\"\n\
             \x20 [plugins.\"io.containerd.grpc.v1.cri\".containerd]\n\
             \x20   snapshotter = \"{SNAPSHOTTER}\"\n\
             \x20   disable_snapshot_annotations = false\n\
             \x20   default_runtime_name = \"runc\"\n\
             \x20   [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\n\
             \x20     runtime_type = \"io.containerd.runc.v2\"\n\
             \x20     [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc.options]\n\
             \x20       Root = {runc}\n\
             \x20 [plugins.\"io.containerd.grpc.v1.cri\".cni]\n\
             \x20   bin_dir = {cni_bin}\n\
             \x20   conf_dir = {cni_conf}\n\
             \x20 [plugins.\"io.containerd.grpc.v1.cri\".registry]\n\
             \x20   config_path = {hosts}\n",
            sandbox = self.sandbox_image,
            runc = q(&runc_root),
            cni_bin = q(&cni_bin),
            cni_conf = q(&cni_conf),
            hosts = q(&self.hosts_dir),
        ))
    }
}

/// Adds containerd's namespace header to every call.
#[derive(Clone)]
pub struct NamespaceHeader(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for NamespaceHeader {
    fn call(
        &mut self,
        mut req: tonic::Request<()>,
    ) -> std::result::Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut()
            .insert("containerd-namespace", self.0.clone());
        Ok(req)
    }
}

/// `containerd.io/gc.root`, as ctr sets it on prepared snapshots.
fn gc_root_label() -> std::collections::HashMap<String, String> {
    std::collections::HashMap::from([(
        "containerd.io/gc.root".to_owned(),
        "hologram-e2e".to_owned(),
    )])
}
