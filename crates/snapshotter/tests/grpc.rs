//! The daemon binary over its real unix socket, driven by a gRPC client: every
//! RPC's edge cases and bad input, kill -9 and restart. No containerd here
//! (see crates/e2e for that); no mounts, so no root needed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hologram_api::snapshots as pb;
use hologram_api::snapshots::snapshots_client::SnapshotsClient;
use tonic::transport::Channel;
use tonic::Code;

struct Daemon {
    child: Option<Child>,
    dir: PathBuf,
}

impl Daemon {
    fn start(dir: &Path) -> Daemon {
        let config = dir.join("config.toml");
        std::fs::write(&config, "").unwrap();
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(dir.join("daemon.log"))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_hologram-snapshotter"))
            .arg("--root")
            .arg(dir.join("root"))
            .arg("--address")
            .arg(dir.join("h.sock"))
            .arg("--config")
            .arg(&config)
            .arg("--log-level")
            .arg("debug")
            .arg("--metrics-address")
            .arg("off")
            // These tests are about the API and the store across plain
            // restarts; handover has its own tests (fdstore.rs, e2e).
            .env("HOLOGRAM_HANDOVER", "0")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let d = Daemon {
            child: Some(child),
            dir: dir.to_owned(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(d.sock()).is_err() {
            assert!(
                Instant::now() < deadline,
                "daemon did not start:\n{}",
                d.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }

    fn sock(&self) -> PathBuf {
        self.dir.join("h.sock")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    fn term(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().unwrap();
        let pid = nix::unistd::Pid::from_raw(i32::try_from(c.id()).unwrap());
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        c.wait().unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

async fn client(d: &Daemon) -> SnapshotsClient<Channel> {
    SnapshotsClient::new(hologram_api::connect_unix(d.sock()).await.unwrap())
}

fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

async fn prepare(
    c: &mut SnapshotsClient<Channel>,
    key: &str,
    parent: &str,
) -> Result<Vec<hologram_api::types::Mount>, tonic::Status> {
    c.prepare(pb::PrepareSnapshotRequest {
        snapshotter: "hologram".into(),
        key: key.into(),
        parent: parent.into(),
        labels: HashMap::new(),
    })
    .await
    .map(|r| r.into_inner().mounts)
}

async fn commit(
    c: &mut SnapshotsClient<Channel>,
    name: &str,
    key: &str,
) -> Result<(), tonic::Status> {
    c.commit(pb::CommitSnapshotRequest {
        snapshotter: "hologram".into(),
        name: name.into(),
        key: key.into(),
        labels: HashMap::new(),
    })
    .await
    .map(|_| ())
}

async fn list(
    c: &mut SnapshotsClient<Channel>,
    filters: &[&str],
) -> Result<Vec<pb::Info>, tonic::Status> {
    let mut s = c
        .list(pb::ListSnapshotsRequest {
            snapshotter: "hologram".into(),
            filters: filters.iter().map(|f| f.to_string()).collect(),
        })
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(batch) = s.message().await? {
        out.extend(batch.info);
    }
    Ok(out)
}

async fn stat(c: &mut SnapshotsClient<Channel>, key: &str) -> Result<pb::Info, tonic::Status> {
    c.stat(pb::StatSnapshotRequest {
        snapshotter: "hologram".into(),
        key: key.into(),
    })
    .await
    .map(|r| r.into_inner().info.unwrap())
}

/// base <- mid, committed.
async fn two_layers(c: &mut SnapshotsClient<Channel>) {
    prepare(c, "k-base", "").await.unwrap();
    commit(c, "base", "k-base").await.unwrap();
    prepare(c, "k-mid", "base").await.unwrap();
    commit(c, "mid", "k-mid").await.unwrap();
}

#[tokio::test]
async fn rpc_semantics_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(tmp.path());
    let mut c = client(&d).await;
    let root = tmp.path().join("root");

    // Prepare with no parent: rw bind of its own fs dir
    let m = prepare(&mut c, "k-base", "").await.unwrap();
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].r#type, "bind");
    assert_eq!(m[0].options, vec!["rw", "rbind"]);
    assert!(Path::new(&m[0].source).is_dir());
    std::fs::write(Path::new(&m[0].source).join("f"), vec![1u8; 10_000]).unwrap();

    // Usage of an active snapshot is measured live
    let u = c
        .usage(pb::UsageRequest {
            snapshotter: "".into(),
            key: "k-base".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(u.size >= 10_000 && u.inodes == 2, "{u:?}");

    commit(&mut c, "base", "k-base").await.unwrap();
    let u2 = c
        .usage(pb::UsageRequest {
            snapshotter: "".into(),
            key: "base".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (u2.size, u2.inodes),
        (u.size, u.inodes),
        "committed usage recorded at commit"
    );
    assert_eq!(
        stat(&mut c, "k-base").await.unwrap_err().code(),
        Code::NotFound
    );
    let info = stat(&mut c, "base").await.unwrap();
    assert_eq!(info.kind, pb::Kind::Committed as i32);
    assert!(info.created_at.is_some());

    // Overlay for a child; lowerdir points at base's fs
    prepare(&mut c, "k-mid", "base").await.unwrap();
    commit(&mut c, "mid", "k-mid").await.unwrap();
    let m = prepare(&mut c, "ctr", "mid").await.unwrap();
    assert_eq!(m[0].r#type, "overlay");
    let lower = m[0]
        .options
        .iter()
        .find(|o| o.starts_with("lowerdir="))
        .unwrap();
    assert_eq!(lower.matches(':').count(), 1, "{lower}");
    assert!(m[0].options.iter().any(|o| o.starts_with("upperdir=")));
    // Mounts returns the same
    let again = c
        .mounts(pb::MountsRequest {
            snapshotter: "".into(),
            key: "ctr".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .mounts;
    assert_eq!(again, m);
    // Mounts of a committed snapshot is refused
    let e = c
        .mounts(pb::MountsRequest {
            snapshotter: "".into(),
            key: "mid".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);

    // View on one parent binds the parent read-only
    let v = c
        .view(pb::ViewSnapshotRequest {
            snapshotter: "".into(),
            key: "v".into(),
            parent: "base".into(),
            labels: HashMap::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .mounts;
    assert_eq!(
        (v[0].r#type.as_str(), v[0].options.clone()),
        ("bind", vec!["ro".to_string(), "rbind".to_string()])
    );
    assert_eq!(
        commit(&mut c, "x", "v").await.unwrap_err().code(),
        Code::FailedPrecondition,
        "commit of a view"
    );

    // Remove rules
    let e = c
        .remove(pb::RemoveSnapshotRequest {
            snapshotter: "".into(),
            key: "base".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    let dirs_before = std::fs::read_dir(root.join("snapshots")).unwrap().count();
    c.remove(pb::RemoveSnapshotRequest {
        snapshotter: "".into(),
        key: "ctr".into(),
    })
    .await
    .unwrap();
    let dirs_after = std::fs::read_dir(root.join("snapshots")).unwrap().count();
    assert_eq!(
        dirs_after,
        dirs_before - 1,
        "directory reclaimed after remove"
    );
    let e = c
        .remove(pb::RemoveSnapshotRequest {
            snapshotter: "".into(),
            key: "ctr".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    // Update with field paths
    let mut info = stat(&mut c, "mid").await.unwrap();
    info.labels = labels(&[("a", "1"), ("b", "2")]);
    let got = c
        .update(pb::UpdateSnapshotRequest {
            snapshotter: "".into(),
            info: Some(info.clone()),
            update_mask: Some(hologram_api::prost_types::FieldMask {
                paths: vec!["labels.a".into()],
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .info
        .unwrap();
    assert_eq!(got.labels, labels(&[("a", "1")]));
    let e = c
        .update(pb::UpdateSnapshotRequest {
            snapshotter: "".into(),
            info: Some(info.clone()),
            update_mask: Some(hologram_api::prost_types::FieldMask {
                paths: vec!["parent".into()],
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = c
        .update(pb::UpdateSnapshotRequest {
            snapshotter: "".into(),
            info: None,
            update_mask: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    // Walk with containerd's filters
    let all = list(&mut c, &[]).await.unwrap();
    let mut names: Vec<_> = all.iter().map(|i| i.name.as_str()).collect();
    names.sort();
    assert_eq!(names, vec!["base", "mid", "v"]);
    let hits = list(&mut c, &["labels.a==1,parent==base"]).await.unwrap();
    assert_eq!(
        hits.iter().map(|i| i.name.as_str()).collect::<Vec<_>>(),
        vec!["mid"]
    );
    assert!(list(&mut c, &["labels.a==1,parent==\"\""])
        .await
        .unwrap()
        .is_empty());
    let hits = list(&mut c, &["kind==view", "name==base"]).await.unwrap();
    assert_eq!(hits.len(), 2);
    let e = list(&mut c, &["name=="]).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("name=="), "{}", e.message());

    // Cleanup reclaims an orphan directory and nothing else
    std::fs::create_dir_all(root.join("snapshots/999/fs")).unwrap();
    c.cleanup(pb::CleanupRequest {
        snapshotter: "".into(),
    })
    .await
    .unwrap();
    assert!(!root.join("snapshots/999").exists());
    for key in ["base", "mid", "v"] {
        stat(&mut c, key).await.unwrap();
    }
    assert_eq!(
        std::fs::read_dir(root.join("snapshots")).unwrap().count(),
        3
    );
}

#[tokio::test]
async fn bad_input_gets_clear_errors_and_leaves_the_store_intact() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(tmp.path());
    let mut c = client(&d).await;
    two_layers(&mut c).await;

    let e = prepare(&mut c, "", "").await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let e = prepare(&mut c, "bad\0key", "").await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let e = prepare(&mut c, &"k".repeat(10_000), "").await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let e = prepare(&mut c, "x", "no-such-parent").await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert!(e.message().contains("no-such-parent"), "{}", e.message());
    prepare(&mut c, "dup", "mid").await.unwrap();
    let e = prepare(&mut c, "dup", "mid").await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    let e = prepare(&mut c, "y", "dup").await.unwrap_err();
    assert_eq!(
        e.code(),
        Code::InvalidArgument,
        "parent not committed: {e:?}"
    );
    let e = commit(&mut c, "mid", "dup").await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");

    // one oversized label; a map of 50 000 labels (≈1.3 MB); a message over 4 MiB
    let big = labels(&[("k", &"v".repeat(5000))]);
    let e = c
        .prepare(pb::PrepareSnapshotRequest {
            snapshotter: "".into(),
            key: "l1".into(),
            parent: "".into(),
            labels: big,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("4096"), "{}", e.message());
    let many: HashMap<String, String> = (0..50_000)
        .map(|i| (format!("label-{i:06}"), "value-value".to_string()))
        .collect();
    let e = c
        .prepare(pb::PrepareSnapshotRequest {
            snapshotter: "".into(),
            key: "l2".into(),
            parent: "".into(),
            labels: many,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let huge: HashMap<String, String> = (0..5_000)
        .map(|i| (format!("k{i}"), "v".repeat(1000)))
        .collect();
    let e = c
        .prepare(pb::PrepareSnapshotRequest {
            snapshotter: "".into(),
            key: "l3".into(),
            parent: "".into(),
            labels: huge,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(
            e.code(),
            Code::ResourceExhausted | Code::OutOfRange | Code::Internal
        ),
        "{e:?}"
    );

    // garbage on the socket, and a client that hangs up mid-request
    for junk in [
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x04\x01",
        &[0xffu8; 4096],
    ] {
        let mut s = std::os::unix::net::UnixStream::connect(d.sock()).unwrap();
        let _ = s.write_all(junk);
        drop(s);
    }

    // the daemon still serves, and nothing half-made is visible
    let mut c = client(&d).await;
    let mut names: Vec<_> = list(&mut c, &[])
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.name)
        .collect();
    names.sort();
    assert_eq!(names, vec!["base", "dup", "mid"]);
    assert_eq!(
        std::fs::read_dir(tmp.path().join("root/snapshots"))
            .unwrap()
            .count(),
        3
    );
}

#[tokio::test]
async fn concurrent_prepare_of_one_key_has_one_winner() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(tmp.path());
    let c = client(&d).await;
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let mut c = c.clone();
            tokio::spawn(async move { prepare(&mut c, "same", "").await })
        })
        .collect();
    let mut ok = 0;
    let mut exists = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) if e.code() == Code::AlreadyExists => exists += 1,
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!((ok, exists), (1, 15));
    assert_eq!(
        std::fs::read_dir(tmp.path().join("root/snapshots"))
            .unwrap()
            .count(),
        1
    );
}

#[tokio::test]
async fn kill9_restart_keeps_a_consistent_store_and_never_reuses_ids() {
    let tmp = tempfile::tempdir().unwrap();
    let mut d = Daemon::start(tmp.path());
    let mut c = client(&d).await;
    two_layers(&mut c).await;
    let made_so_far = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let busy = {
        let c = c.clone();
        let made_so_far = std::sync::Arc::clone(&made_so_far);
        tokio::spawn(async move {
            let mut c = c;
            for i in 0..10_000 {
                if prepare(&mut c, &format!("k{i}"), "mid").await.is_err() {
                    return i;
                }
                made_so_far.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            10_000
        })
    };
    // Kill once the stream is under way (a few Prepares done), not after a
    // fixed time that a loaded machine may not reach.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while made_so_far.load(std::sync::atomic::Ordering::Relaxed) < 5 {
        assert!(
            std::time::Instant::now() < deadline,
            "no Prepare succeeded in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    d.kill9();
    let made = busy.await.unwrap();
    assert!(
        made > 0 && made < 10_000,
        "the kill landed mid-stream ({made})"
    );

    // A request over the closed socket gets a clear error, not a hang.
    let e = tokio::time::timeout(Duration::from_secs(5), prepare(&mut c, "late", ""))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");

    let d = Daemon::start(tmp.path());
    let mut c = client(&d).await;
    let infos = list(&mut c, &[]).await.unwrap();
    let names: std::collections::HashSet<_> = infos.iter().map(|i| i.name.clone()).collect();
    for i in &infos {
        assert!(
            i.parent.is_empty() || names.contains(&i.parent),
            "dangling parent {}",
            i.parent
        );
        let m = c
            .mounts(pb::MountsRequest {
                snapshotter: "".into(),
                key: i.name.clone(),
            })
            .await;
        if i.kind == pb::Kind::Active as i32 {
            let m = m.unwrap().into_inner().mounts;
            let upper = m[0]
                .options
                .iter()
                .find_map(|o| o.strip_prefix("upperdir="))
                .unwrap();
            assert!(
                Path::new(upper).is_dir(),
                "active snapshot {} lost its directory",
                i.name
            );
        }
    }
    assert!(
        infos.len() >= made,
        "every acknowledged prepare survived ({} < {made})",
        infos.len()
    );
    // Cleanup removes whatever the crash orphaned; then dirs == snapshots
    c.cleanup(pb::CleanupRequest {
        snapshotter: "".into(),
    })
    .await
    .unwrap();
    let dirs: Vec<u64> = std::fs::read_dir(tmp.path().join("root/snapshots"))
        .unwrap()
        .map(|e| {
            e.unwrap()
                .file_name()
                .to_string_lossy()
                .parse::<u64>()
                .unwrap()
        })
        .collect();
    assert_eq!(dirs.len(), infos.len());
    // a new snapshot gets an id above all seen before
    let m = prepare(&mut c, "after", "").await.unwrap();
    let id: u64 = Path::new(&m[0].source)
        .parent()
        .unwrap()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .parse()
        .unwrap();
    assert!(
        dirs.iter().all(|d| *d < id),
        "id {id} reused or below {dirs:?}"
    );
}

#[tokio::test]
async fn refuses_a_live_socket_replaces_a_stale_one_and_exits_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let mut d = Daemon::start(tmp.path());
    // A second daemon on the same socket (other root) must refuse.
    let other = tmp.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("c.toml"), "").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_hologram-snapshotter"))
        .env("HOLOGRAM_HANDOVER", "0")
        .arg("--root")
        .arg(other.join("root"))
        .arg("--address")
        .arg(d.sock())
        .arg("--config")
        .arg(other.join("c.toml"))
        .arg("--metrics-address")
        .arg("off")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already serving"), "{err}");
    // A second daemon on the same root (other socket) must refuse too.
    let out = Command::new(env!("CARGO_BIN_EXE_hologram-snapshotter"))
        .arg("--root")
        .arg(tmp.path().join("root"))
        .arg("--address")
        .arg(other.join("x.sock"))
        .arg("--config")
        .arg(other.join("c.toml"))
        .arg("--metrics-address")
        .arg("off")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use"), "{err}");

    // SIGTERM: exit 0, socket removed
    assert!(d.term().success());
    assert!(!d.sock().exists());

    // kill -9 leaves a stale socket; the next start replaces it
    let mut d = Daemon::start(tmp.path());
    d.kill9();
    assert!(d.sock().exists());
    let d = Daemon::start(tmp.path());
    let mut c = client(&d).await;
    assert!(list(&mut c, &[]).await.unwrap().is_empty());
}
