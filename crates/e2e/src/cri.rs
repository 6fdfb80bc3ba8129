//! A CRI (`runtime.v1`) client that does what the kubelet does: pull an
//! image (with or without `AuthConfig`), run a host-network pod sandbox,
//! create and start a container in it, wait for it, read its log, stop and
//! remove everything. Generated from the vendored CRI protos
//! (`hologram_api::cri`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use hologram_api::cri::{
    self, image_service_client::ImageServiceClient, runtime_service_client::RuntimeServiceClient,
    AuthConfig, ContainerConfig, ContainerMetadata, ContainerState, ImageSpec,
    LinuxContainerConfig, LinuxContainerSecurityContext, LinuxPodSandboxConfig,
    LinuxSandboxSecurityContext, NamespaceMode, NamespaceOption, PodSandboxConfig,
    PodSandboxMetadata,
};
use tonic::transport::Channel;

use crate::util::wait_until;

/// The containerd namespace CRI keeps Kubernetes' images and containers in.
pub const CRI_NAMESPACE: &str = "k8s.io";
/// How long one CRI call may take (a pull of a lazily served image takes
/// seconds; a fallback unpack of a large one longer).
pub const CRI_TIMEOUT: Duration = Duration::from_secs(300);

/// Registry credentials as the kubelet passes them in `PullImage`.
#[derive(Clone, Default)]
pub struct Auth {
    pub username: String,
    pub password: String,
    /// `AuthConfig.server_address` (the kubelet sets the registry the
    /// secret was for); empty when not given.
    pub server_address: String,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Auth({}, ***)", self.username)
    }
}

/// A CRI client: `RuntimeService` on containerd's socket, `ImageService`
/// on containerd's socket or on another one (the snapshotter's CRI
/// credentials proxy, as a kubelet with `--image-service-endpoint` uses).
pub struct CriClient {
    rt: tokio::runtime::Runtime,
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
    /// Where pod logs go (`PodSandboxConfig.log_directory`).
    log_root: PathBuf,
}

/// A running pod sandbox; [`CriClient::remove_pod`] stops and removes it.
#[derive(Debug, Clone)]
pub struct Pod {
    pub id: String,
    pub config: PodSandboxConfig,
    pub log_dir: PathBuf,
    /// The pod's cgroup parent (removed with the pod).
    cgroup_parent: String,
}

/// The end of a container run: exit code and what it wrote.
#[derive(Debug, Clone)]
pub struct Finished {
    pub exit_code: i32,
    pub reason: String,
    pub message: String,
    /// stdout and stderr, as the CRI log file holds them (timestamps and
    /// stream tags removed).
    pub log: String,
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")
}

impl CriClient {
    /// `RuntimeService` and `ImageService` both on `runtime_socket`
    /// (containerd's). Pod logs go below `log_root`.
    pub fn connect(runtime_socket: &Path, log_root: &Path) -> Result<Self> {
        Self::connect_split(runtime_socket, runtime_socket, log_root)
    }

    /// `RuntimeService` on `runtime_socket`, `ImageService` on
    /// `image_socket` (kubelet's `--container-runtime-endpoint` and
    /// `--image-service-endpoint`).
    pub fn connect_split(
        runtime_socket: &Path,
        image_socket: &Path,
        log_root: &Path,
    ) -> Result<Self> {
        let rt = runtime()?;
        let (runtime, images) = rt.block_on(async {
            let rc = hologram_api::connect_unix(runtime_socket)
                .await
                .with_context(|| format!("connecting to {}", runtime_socket.display()))?;
            let ic = hologram_api::connect_unix(image_socket)
                .await
                .with_context(|| format!("connecting to {}", image_socket.display()))?;
            anyhow::Ok((RuntimeServiceClient::new(rc), ImageServiceClient::new(ic)))
        })?;
        std::fs::create_dir_all(log_root)
            .with_context(|| format!("creating {}", log_root.display()))?;
        Ok(Self {
            rt,
            runtime,
            images,
            log_root: log_root.to_path_buf(),
        })
    }

    fn call<T, F, Fut>(&self, what: &str, f: F) -> Result<T, tonic::Status>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.rt.block_on(async {
            match tokio::time::timeout(CRI_TIMEOUT, f()).await {
                Ok(r) => r.map(tonic::Response::into_inner),
                Err(_) => Err(tonic::Status::deadline_exceeded(format!(
                    "{what}: no answer within {CRI_TIMEOUT:?}"
                ))),
            }
        })
    }

    /// `Version`: the runtime's name and CRI version.
    pub fn version(&self) -> Result<cri::VersionResponse> {
        let mut c = self.runtime.clone();
        self.call("Version", || async move {
            c.version(cri::VersionRequest::default()).await
        })
        .context("CRI Version")
    }

    /// `PullImage` as the kubelet sends it; the image reference containerd
    /// returns (the image ID), or the gRPC status of a failure.
    pub fn pull_image(
        &self,
        image: &str,
        auth: Option<&Auth>,
        pod: Option<&PodSandboxConfig>,
    ) -> Result<String, tonic::Status> {
        let req = cri::PullImageRequest {
            image: Some(ImageSpec {
                image: image.to_owned(),
                ..Default::default()
            }),
            auth: auth.map(|a| AuthConfig {
                username: a.username.clone(),
                password: a.password.clone(),
                server_address: a.server_address.clone(),
                ..Default::default()
            }),
            sandbox_config: pod.cloned(),
        };
        let mut c = self.images.clone();
        self.call("PullImage", || async move { c.pull_image(req).await })
            .map(|r| r.image_ref)
    }

    /// `PullImage` that must succeed.
    pub fn pull_image_ok(&self, image: &str, auth: Option<&Auth>) -> Result<String> {
        self.pull_image(image, auth, None)
            .map_err(|s| anyhow::anyhow!("CRI PullImage {image}: {s}"))
    }

    /// `ImageStatus`: whether containerd's CRI knows `image`.
    pub fn image_present(&self, image: &str) -> Result<bool> {
        let req = cri::ImageStatusRequest {
            image: Some(ImageSpec {
                image: image.to_owned(),
                ..Default::default()
            }),
            verbose: false,
        };
        let mut c = self.images.clone();
        let r = self
            .call("ImageStatus", || async move { c.image_status(req).await })
            .with_context(|| format!("CRI ImageStatus {image}"))?;
        Ok(r.image.is_some())
    }

    /// `RemoveImage`.
    pub fn remove_image(&self, image: &str) -> Result<()> {
        let req = cri::RemoveImageRequest {
            image: Some(ImageSpec {
                image: image.to_owned(),
                ..Default::default()
            }),
        };
        let mut c = self.images.clone();
        self.call("RemoveImage", || async move { c.remove_image(req).await })
            .with_context(|| format!("CRI RemoveImage {image}"))?;
        Ok(())
    }

    /// A host-network pod sandbox config (no CNI needed), with its own log
    /// directory and cgroup parent.
    pub fn pod_config(&self, name: &str) -> PodSandboxConfig {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let uid = format!("hg-{}-{n}", std::process::id());
        let node_net = NamespaceOption {
            network: NamespaceMode::Node as i32,
            pid: NamespaceMode::Pod as i32,
            ipc: NamespaceMode::Pod as i32,
            ..Default::default()
        };
        PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.to_owned(),
                uid: uid.clone(),
                namespace: "default".to_owned(),
                attempt: 0,
            }),
            // Host-network pods share the node's UTS namespace: runc
            // refuses to set a hostname there.
            hostname: String::new(),
            log_directory: self.log_root.join(&uid).display().to_string(),
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: format!("/hgcri-{uid}"),
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(node_net),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// `RunPodSandbox` of [`CriClient::pod_config`].
    pub fn run_pod(&self, name: &str) -> Result<Pod> {
        let config = self.pod_config(name);
        let log_dir = PathBuf::from(&config.log_directory);
        std::fs::create_dir_all(&log_dir)
            .with_context(|| format!("creating {}", log_dir.display()))?;
        let req = cri::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
        };
        let mut c = self.runtime.clone();
        let id = self
            .call(
                "RunPodSandbox",
                || async move { c.run_pod_sandbox(req).await },
            )
            .with_context(|| format!("CRI RunPodSandbox {name}"))?
            .pod_sandbox_id;
        let cgroup_parent = config
            .linux
            .as_ref()
            .map(|l| l.cgroup_parent.clone())
            .unwrap_or_default();
        Ok(Pod {
            id,
            config,
            log_dir,
            cgroup_parent,
        })
    }

    /// `CreateContainer` of `image` (the image ref `PullImage` returned, as
    /// the kubelet passes it) running `command`; the container ID, or the
    /// gRPC status of a failure.
    pub fn create_container(
        &self,
        pod: &Pod,
        name: &str,
        image: &str,
        command: &[&str],
    ) -> Result<String, tonic::Status> {
        let ns = pod
            .config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .and_then(|s| s.namespace_options.clone());
        let req = cri::CreateContainerRequest {
            pod_sandbox_id: pod.id.clone(),
            config: Some(ContainerConfig {
                metadata: Some(ContainerMetadata {
                    name: name.to_owned(),
                    attempt: 0,
                }),
                image: Some(ImageSpec {
                    image: image.to_owned(),
                    ..Default::default()
                }),
                command: command.iter().map(|s| (*s).to_owned()).collect(),
                log_path: format!("{name}.log"),
                linux: Some(LinuxContainerConfig {
                    security_context: Some(LinuxContainerSecurityContext {
                        namespace_options: ns,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                labels: HashMap::new(),
                ..Default::default()
            }),
            sandbox_config: Some(pod.config.clone()),
        };
        let mut c = self.runtime.clone();
        self.call("CreateContainer", || async move {
            c.create_container(req).await
        })
        .map(|r| r.container_id)
    }

    /// `StartContainer`.
    pub fn start_container(&self, id: &str) -> Result<(), tonic::Status> {
        let req = cri::StartContainerRequest {
            container_id: id.to_owned(),
        };
        let mut c = self.runtime.clone();
        self.call(
            "StartContainer",
            || async move { c.start_container(req).await },
        )
        .map(drop)
    }

    /// `ContainerStatus`.
    pub fn container_status(&self, id: &str) -> Result<cri::ContainerStatus> {
        let req = cri::ContainerStatusRequest {
            container_id: id.to_owned(),
            verbose: false,
        };
        let mut c = self.runtime.clone();
        self.call("ContainerStatus", || async move {
            c.container_status(req).await
        })
        .with_context(|| format!("CRI ContainerStatus {id}"))?
        .status
        .context("ContainerStatus without status")
    }

    /// Waits until container `id` has exited (polling `ContainerStatus`, as
    /// the kubelet's PLEG does), then reads its log file.
    pub fn wait_exited(
        &self,
        pod: &Pod,
        id: &str,
        name: &str,
        timeout: Duration,
    ) -> Result<Finished> {
        let mut last = None;
        wait_until(
            &format!("container {name} to exit"),
            timeout,
            Duration::from_millis(100),
            || {
                let s = self.container_status(id)?;
                let done = s.state == ContainerState::ContainerExited as i32;
                last = Some(s);
                Ok(done)
            },
        )
        .with_context(|| format!("last status: {last:?}"))?;
        let s = last.context("no status")?;
        Ok(Finished {
            exit_code: s.exit_code,
            reason: s.reason,
            message: s.message,
            log: read_cri_log(&pod.log_dir.join(format!("{name}.log")))?,
        })
    }

    /// Create, start and wait for a container running `command` in `pod`;
    /// then remove it. The container's exit and output.
    pub fn run_to_completion(
        &self,
        pod: &Pod,
        name: &str,
        image: &str,
        command: &[&str],
        timeout: Duration,
    ) -> Result<Finished> {
        let id = self
            .create_container(pod, name, image, command)
            .map_err(|s| anyhow::anyhow!("CRI CreateContainer {name}: {s}"))?;
        let result = self
            .start_container(&id)
            .map_err(|s| anyhow::anyhow!("CRI StartContainer {name}: {s}"))
            .and_then(|()| self.wait_exited(pod, &id, name, timeout));
        let removed = self.remove_container(&id);
        let finished = result?;
        removed?;
        Ok(finished)
    }

    /// `StopContainer` (grace 0) and `RemoveContainer`.
    pub fn remove_container(&self, id: &str) -> Result<()> {
        let stop = cri::StopContainerRequest {
            container_id: id.to_owned(),
            timeout: 0,
        };
        let mut c = self.runtime.clone();
        self.call(
            "StopContainer",
            || async move { c.stop_container(stop).await },
        )
        .with_context(|| format!("CRI StopContainer {id}"))?;
        let rm = cri::RemoveContainerRequest {
            container_id: id.to_owned(),
        };
        let mut c = self.runtime.clone();
        self.call(
            "RemoveContainer",
            || async move { c.remove_container(rm).await },
        )
        .with_context(|| format!("CRI RemoveContainer {id}"))?;
        Ok(())
    }

    /// `StopPodSandbox` and `RemovePodSandbox`, then the pod's cgroup
    /// parent directories.
    pub fn remove_pod(&self, pod: &Pod) -> Result<()> {
        let stop = cri::StopPodSandboxRequest {
            pod_sandbox_id: pod.id.clone(),
        };
        let mut c = self.runtime.clone();
        self.call("StopPodSandbox", || async move {
            c.stop_pod_sandbox(stop).await
        })
        .with_context(|| format!("CRI StopPodSandbox {}", pod.id))?;
        let rm = cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod.id.clone(),
        };
        let mut c = self.runtime.clone();
        self.call("RemovePodSandbox", || async move {
            c.remove_pod_sandbox(rm).await
        })
        .with_context(|| format!("CRI RemovePodSandbox {}", pod.id))?;
        remove_cgroup_parent(&pod.cgroup_parent);
        Ok(())
    }
}

/// Removes `/sys/fs/cgroup/<controller><parent>` (cgroup v1) and
/// `/sys/fs/cgroup<parent>` (v2), children first; best effort (runc
/// removes the containers' own cgroups).
fn remove_cgroup_parent(parent: &str) {
    let rel = parent.trim_start_matches('/');
    if rel.is_empty() || rel.contains("..") {
        return;
    }
    let mut dirs = vec![Path::new("/sys/fs/cgroup").join(rel)];
    if let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") {
        for e in entries.flatten() {
            dirs.push(e.path().join(rel));
        }
    }
    for d in dirs {
        if let Ok(children) = std::fs::read_dir(&d) {
            for c in children.flatten() {
                if c.path().is_dir() {
                    let _ = std::fs::remove_dir(c.path());
                }
            }
        }
        let _ = std::fs::remove_dir(&d);
    }
}

/// The text of a CRI container log: each line is `TIMESTAMP STREAM TAG
/// CONTENT`, TAG `P` for a partial line (continued by the next) or `F`.
pub fn read_cri_log(path: &Path) -> Result<String> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = String::new();
    for line in text.lines() {
        let mut parts = line.splitn(4, ' ');
        let (Some(_ts), Some(_stream), Some(tag)) = (parts.next(), parts.next(), parts.next())
        else {
            bail!("malformed CRI log line {line:?} in {}", path.display());
        };
        out.push_str(parts.next().unwrap_or_default());
        if tag != "P" {
            out.push('\n');
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn reads_cri_logs() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.log");
        std::fs::write(
            &p,
            "2026-01-01T00:00:00.000000001Z stdout P hel\n\
             2026-01-01T00:00:00.000000002Z stdout F lo world\n\
             2026-01-01T00:00:00.000000003Z stderr F \n",
        )
        .unwrap();
        assert_eq!(read_cri_log(&p).unwrap(), "hello world\n\n");
        std::fs::write(&p, "garbage\n").unwrap();
        assert!(read_cri_log(&p).is_err());
    }
}
