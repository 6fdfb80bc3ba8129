//! `hologram convert --record`: learn which files a workload needs first.
//!
//! The converted layers (local files, not pushed yet) are mounted through
//! our own FUSE filesystem (`hologram-fs`, the same read path the daemon
//! serves), stacked with overlayfs, and the workload runs once in a chroot
//! of that tree. Each layer logs the files in the order they were first
//! opened; that order, per layer, goes before the prefetch landmark when the
//! layers are converted again. A profile only orders fetches: every byte is
//! still checked against the TOC when it is read, so a wrong or hostile
//! profile costs bandwidth, never integrity.
//!
//! Needs root (mounts, chroot). Everything mounted here is unmounted when
//! the recording ends, whatever happens.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use hologram_estargz::{Converted, IndexLimits};
use hologram_fs::cache::ChunkCache;
use hologram_fs::fuse::MountedLayer;
use hologram_fs::layer::{Layer, LayerConfig};
use hologram_fs::observer::NoObserver;
use hologram_source::FileBlob;
use nix::mount::{MntFlags, MsFlags};
use serde_json::Value;

/// What to run, from the image config unless the user gave a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    pub argv: Vec<String>,
    pub env: Vec<String>,
}

impl Workload {
    /// `command` (run with `/bin/sh -c`) or the config's Entrypoint + Cmd.
    pub fn from_config(config: &[u8], command: Option<&str>) -> anyhow::Result<Workload> {
        let v: Value = serde_json::from_slice(config).context("the image config is not JSON")?;
        let c = &v["config"];
        let strings = |k: &str| -> Vec<String> {
            c[k].as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        };
        let argv = match command {
            Some(cmd) if !cmd.trim().is_empty() => {
                vec!["/bin/sh".to_owned(), "-c".to_owned(), cmd.to_owned()]
            }
            _ => {
                let mut a = strings("Entrypoint");
                a.extend(strings("Cmd"));
                a
            }
        };
        if argv.is_empty() {
            bail!("the image has no Entrypoint or Cmd: give the workload with --record 'COMMAND'");
        }
        let mut env = strings("Env");
        if !env.iter().any(|e| e.starts_with("PATH=")) {
            env.push("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
        }
        Ok(Workload { argv, env })
    }
}

/// Mounts made for a recording, undone in reverse order on drop.
struct Mounts {
    /// Plain mounts (overlay, proc, dev), innermost last.
    paths: Vec<PathBuf>,
    layers: Vec<MountedLayer>,
}

impl Drop for Mounts {
    fn drop(&mut self) {
        for p in self.paths.iter().rev() {
            if let Err(e) = nix::mount::umount2(p, MntFlags::MNT_DETACH) {
                eprintln!("warning: cannot unmount {}: {e}", p.display());
            }
        }
        // Dropping a mounted layer unmounts it.
        self.layers.clear();
    }
}

/// Runs `workload` on the converted layers (`blobs[i]` is the eStargz blob
/// of `layers[i]`, bottom first) and returns, per layer, the paths opened in
/// first-open order. `timeout` bounds the workload; it is killed after.
pub fn record(
    blobs: &[PathBuf],
    layers: &[Converted],
    workload: &Workload,
    timeout: Duration,
    rt: &tokio::runtime::Handle,
) -> anyhow::Result<Vec<Vec<String>>> {
    if !nix::unistd::geteuid().is_root() {
        bail!("--record needs root (it mounts the image and runs the workload in a chroot)");
    }
    let work = tempfile::Builder::new()
        .prefix("hologram-record.")
        .tempdir_in("/var/tmp")
        .context("temporary directory")?;
    let cache = Arc::new(
        ChunkCache::open(&work.path().join("cache"), 16 << 30)
            .context("the recording's chunk cache")?,
    );
    let mut mounts = Mounts {
        paths: Vec::new(),
        layers: Vec::new(),
    };
    let mut served = Vec::new();
    for (i, (blob, c)) in blobs.iter().zip(layers).enumerate() {
        let source = Arc::new(FileBlob::open(blob, c.digest).context("opening a converted layer")?);
        let (index, _) = rt
            .block_on(hologram_fs::load_index(
                &*source,
                &c.toc_digest,
                IndexLimits::default(),
            ))
            .with_context(|| format!("reading back converted layer {}", c.digest))?;
        let cfg = LayerConfig {
            prefetch: false,
            background_fetch: false,
            passthrough: false,
            ..LayerConfig::default()
        };
        let layer = Arc::new(
            Layer::new(
                index,
                source,
                Arc::clone(&cache),
                rt.clone(),
                cfg,
                Arc::new(NoObserver),
            )
            .with_access_log(),
        );
        let dir = work.path().join(format!("layer{i}"));
        std::fs::create_dir(&dir)?;
        mounts.layers.push(
            hologram_fs::fuse::mount(Arc::clone(&layer), &dir, 4)
                .with_context(|| format!("mounting layer {} at {}", c.digest, dir.display()))?,
        );
        served.push((layer, dir));
    }
    let (upper, wdir, root) = (
        work.path().join("upper"),
        work.path().join("work"),
        work.path().join("root"),
    );
    for d in [&upper, &wdir, &root] {
        std::fs::create_dir(d)?;
    }
    let lower: Vec<String> = served
        .iter()
        .rev()
        .map(|(_, d)| d.display().to_string())
        .collect();
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        upper.display(),
        wdir.display()
    );
    nix::mount::mount(
        Some("overlay"),
        &root,
        Some("overlay"),
        MsFlags::empty(),
        Some(opts.as_str()),
    )
    .context("mounting the image's layers with overlayfs")?;
    mounts.paths.push(root.clone());
    for (what, fstype, flags) in [
        ("proc", Some("proc"), MsFlags::empty()),
        ("dev", None, MsFlags::MS_BIND | MsFlags::MS_REC),
    ] {
        let target = root.join(what);
        std::fs::create_dir_all(&target)
            .with_context(|| format!("creating /{what} in the image"))?;
        let source: &Path = if fstype.is_some() {
            Path::new("proc")
        } else {
            Path::new("/dev")
        };
        nix::mount::mount(Some(source), &target, fstype, flags, None::<&str>)
            .with_context(|| format!("mounting /{what} for the workload"))?;
        mounts.paths.push(target);
    }

    eprintln!("recording: {}", workload.argv.join(" "));
    let started = Instant::now();
    // coreutils' chroot (a path: the environment below is the image's).
    let mut child = Command::new("/usr/sbin/chroot")
        .arg(&root)
        .args(&workload.argv)
        .env_clear()
        .envs(workload.env.iter().filter_map(|e| e.split_once('=')))
        .stdin(Stdio::null())
        .stdout(Stdio::from(std::io::stderr()))
        .stderr(Stdio::inherit())
        .spawn()
        .context("running the workload (chroot)")?;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break Some(s);
        }
        if started.elapsed() >= timeout {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    match status {
        Some(s) if s.success() => {}
        Some(s) => eprintln!("warning: the workload exited with {s}; its profile is kept"),
        None => eprintln!(
            "warning: the workload ran past {} s and was stopped; the profile covers what it read until then",
            timeout.as_secs()
        ),
    }
    let profile: Vec<Vec<String>> = served
        .iter()
        .map(|(l, _)| {
            l.opened_in_order()
                .into_iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect()
        })
        .collect();
    drop(mounts);
    eprintln!(
        "recorded in {:.1} s: {} files opened ({} per layer)",
        started.elapsed().as_secs_f64(),
        profile.iter().map(Vec::len).sum::<usize>(),
        profile
            .iter()
            .map(|p| p.len().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(profile)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn workload_from_config_or_command() {
        let cfg =
            br#"{"config":{"Env":["LANG=C"],"Entrypoint":["python3"],"Cmd":["-c","print(1)"]}}"#;
        let w = Workload::from_config(cfg, None).unwrap();
        assert_eq!(w.argv, ["python3", "-c", "print(1)"]);
        assert!(w.env.contains(&"LANG=C".to_owned()));
        assert!(w.env.iter().any(|e| e.starts_with("PATH=")));
        let w = Workload::from_config(cfg, Some("ls /")).unwrap();
        assert_eq!(w.argv, ["/bin/sh", "-c", "ls /"]);
        assert!(Workload::from_config(br#"{"config":{}}"#, None).is_err());
        assert!(Workload::from_config(b"nope", None).is_err());
    }
}
