//! Prefetch profiles learned on the node, stored per layer digest.
//!
//! The first lazily served run of a layer learns the order its chunks are
//! read in ([`hologram_fs::profile`]); when the learning window has passed
//! (or the layer is unmounted first), the order is written to
//! `<root>/profiles/<layer digest hex>.json`. A later mount of the same
//! layer (the cache emptied, the image pulled again) finds it and
//! prefetches in that order. Other nodes use it when it is copied into
//! their `profiles` directory or into one of `[profiles] shared_dirs`
//! (a read-only directory the operator fills: a hostPath, a ConfigMap).
//!
//! A profile file is untrusted input: read only by digest-hex name under a
//! configured directory, as a regular file (`O_NOFOLLOW`) of at most
//! [`MAX_PROFILE_BYTES`], parsed with limits, and it must name the layer it
//! is read for. It only orders fetches: every byte is still verified
//! against the TOC, the TOC against the manifest, the layer as a whole
//! against its digest and diff ID.

use std::io::Read as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use hologram_fs::profile::ProfileFiles;
use hologram_oci::Digest;
use serde::{Deserialize, Serialize};

/// The `format` field of a profile file.
pub const FORMAT: &str = "hologram-profile/1";
/// Largest profile file read.
pub const MAX_PROFILE_BYTES: u64 = 16 << 20;
/// Most files one profile names.
pub const MAX_FILES: usize = 200_000;
/// Most chunk offsets one profile names (all files together).
pub const MAX_CHUNKS: usize = 1_000_000;
/// Longest path in a profile, bytes.
const MAX_PATH: usize = 4096;

/// Settings (`[profiles]`).
#[derive(Debug, Clone)]
pub struct ProfileConfig {
    /// Learn a profile on the first run of a layer that has none.
    pub learn: bool,
    /// Prefetch by a profile when one is found.
    pub apply: bool,
    /// How long after a layer's first read the learning lasts.
    pub window: std::time::Duration,
    /// Read-only directories searched after the node's own.
    pub shared_dirs: Vec<PathBuf>,
}

impl Default for ProfileConfig {
    fn default() -> Self {
        ProfileConfig {
            learn: true,
            apply: true,
            window: std::time::Duration::from_secs(30),
            shared_dirs: Vec::new(),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileFormat {
    format: String,
    layer: String,
    /// Files in first-read order.
    files: Vec<FileEntry>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEntry {
    path: String,
    /// Offsets (in the file) of the chunks read, in first-read order.
    chunks: Vec<u64>,
}

/// Where the node's profiles live, and the shared ones.
#[derive(Debug)]
pub struct Profiles {
    dir: PathBuf,
    cfg: ProfileConfig,
}

/// A profile found for a layer.
#[derive(Debug)]
pub struct Found {
    pub files: ProfileFiles,
    /// The file it came from.
    pub path: PathBuf,
}

impl Profiles {
    /// The node's profiles under `root/profiles` (created).
    pub fn open(root: &Path, cfg: ProfileConfig) -> std::io::Result<Profiles> {
        let dir = root.join("profiles");
        std::fs::create_dir_all(&dir)?;
        Ok(Profiles { dir, cfg })
    }

    pub fn config(&self) -> &ProfileConfig {
        &self.cfg
    }

    /// The node's own directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The profile of `layer`, from the node's directory, else the shared
    /// ones, when applying is on. A file that is unreadable or invalid is
    /// logged, skipped and told to `refused`.
    pub fn find(&self, layer: &Digest, refused: &dyn Fn()) -> Option<Found> {
        if !self.cfg.apply {
            return None;
        }
        let name = format!("{}.json", layer.hex());
        for dir in std::iter::once(&self.dir).chain(&self.cfg.shared_dirs) {
            let path = dir.join(&name);
            match read_profile(&path, layer) {
                Ok(Some(files)) => return Some(Found { files, path }),
                Ok(None) => {}
                Err(e) => {
                    refused();
                    tracing::warn!(path = %path.display(), error = %e, "ignoring an unusable prefetch profile")
                }
            }
        }
        None
    }

    /// Whether a layer with no profile should learn one.
    pub fn learn(&self) -> bool {
        self.cfg.learn
    }

    /// Stores `files` as the node's profile of `layer` (atomically; an
    /// existing one is kept).
    pub fn save(&self, layer: &Digest, files: ProfileFiles) -> std::io::Result<Option<PathBuf>> {
        let path = self.dir.join(format!("{}.json", layer.hex()));
        if path.exists() {
            return Ok(None);
        }
        let doc = FileFormat {
            format: FORMAT.to_owned(),
            layer: layer.to_string(),
            files: files
                .into_iter()
                .filter_map(|(p, chunks)| {
                    Some(FileEntry {
                        path: p.to_str()?.to_owned(),
                        chunks,
                    })
                })
                .collect(),
        };
        let bytes = serde_json::to_vec(&doc).map_err(std::io::Error::other)?;
        let tmp = self.dir.join(format!(".tmp-{}.json", layer.hex()));
        std::fs::write(&tmp, &bytes)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .inspect_err(|_| {
                let _ = std::fs::remove_file(&tmp);
            })?;
        Ok(Some(path))
    }
}

/// Reads and checks the profile at `path` for `layer`; `Ok(None)` when
/// there is none.
fn read_profile(path: &Path, layer: &Digest) -> Result<Option<ProfileFiles>, String> {
    let Some(bytes) = read_regular(path, MAX_PROFILE_BYTES).map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    parse(&bytes, layer).map(Some)
}

/// Parses a profile document for `layer`, within the limits.
pub fn parse(bytes: &[u8], layer: &Digest) -> Result<ProfileFiles, String> {
    let doc: FileFormat =
        serde_json::from_slice(bytes).map_err(|e| format!("not a profile: {e}"))?;
    if doc.format != FORMAT {
        return Err(format!(
            "format {:?}, expected {FORMAT:?}",
            doc.format.chars().take(64).collect::<String>()
        ));
    }
    let named: Digest = doc
        .layer
        .parse()
        .map_err(|e| format!("invalid layer digest: {e}"))?;
    if named != *layer {
        return Err(format!("it is the profile of {named}, not of {layer}"));
    }
    if doc.files.len() > MAX_FILES {
        return Err(format!("{} files, over {MAX_FILES}", doc.files.len()));
    }
    let chunks: usize = doc.files.iter().map(|f| f.chunks.len()).sum();
    if chunks > MAX_CHUNKS {
        return Err(format!("{chunks} chunks, over {MAX_CHUNKS}"));
    }
    Ok(doc
        .files
        .into_iter()
        // The layer's index resolves each path (plain names only); a path
        // it does not have is skipped there.
        .filter(|f| f.path.len() <= MAX_PATH)
        .map(|f| (PathBuf::from(f.path), f.chunks))
        .collect())
}

/// Reads a regular file (never a symlink, FIFO or device: opened with
/// `O_NOFOLLOW | O_NONBLOCK` and checked) of at most `max` bytes.
/// `Ok(None)` when there is none.
pub fn read_regular(path: &Path, max: u64) -> std::io::Result<Option<Vec<u8>>> {
    let f = match std::fs::File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    if meta.len() > max {
        return Err(std::io::Error::other(format!(
            "{} bytes, over {max}",
            meta.len()
        )));
    }
    let mut out = Vec::with_capacity(meta.len() as usize);
    f.take(max + 1).read_to_end(&mut out)?;
    if out.len() as u64 > max {
        return Err(std::io::Error::other(format!("over {max} bytes")));
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn layer() -> Digest {
        Digest::from_bytes([0xab; 32])
    }

    #[test]
    fn saved_profiles_read_back_and_name_their_layer() {
        let d = tempfile::tempdir().unwrap();
        let p = Profiles::open(d.path(), ProfileConfig::default()).unwrap();
        assert!(p.find(&layer(), &|| ()).is_none());
        let files = vec![
            (PathBuf::from("usr/bin/python3"), vec![0, 4096]),
            (PathBuf::from("etc/passwd"), vec![0]),
        ];
        let path = p.save(&layer(), files.clone()).unwrap().unwrap();
        assert_eq!(
            path,
            d.path()
                .join("profiles")
                .join(format!("{}.json", layer().hex()))
        );
        assert!(p.save(&layer(), Vec::new()).unwrap().is_none(), "kept");
        assert_eq!(p.find(&layer(), &|| ()).unwrap().files, files);
        // The same file under another layer's name is refused.
        let other = Digest::from_bytes([0xcd; 32]);
        std::fs::copy(
            &path,
            d.path()
                .join("profiles")
                .join(format!("{}.json", other.hex())),
        )
        .unwrap();
        assert!(p.find(&other, &|| ()).is_none());
    }

    #[test]
    fn hostile_profiles_are_refused() {
        let l = layer();
        for bad in [
            &b"not json"[..],
            br#"{"format":"other/1","layer":"sha256:ab","files":[]}"#,
            br#"{"format":"hologram-profile/1","layer":"sha256:AB","files":[]}"#,
            br#"{"format":"hologram-profile/1","layer":"sha256:abab","files":[],"extra":1}"#,
        ] {
            assert!(parse(bad, &l).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        let d = tempfile::tempdir().unwrap();
        let p = Profiles::open(d.path(), ProfileConfig::default()).unwrap();
        let name = p.dir().join(format!("{}.json", l.hex()));
        // A symlink (to a real profile elsewhere) is not followed.
        let elsewhere = d.path().join("x.json");
        std::fs::write(
            &elsewhere,
            format!(r#"{{"format":"{FORMAT}","layer":"{l}","files":[]}}"#),
        )
        .unwrap();
        std::os::unix::fs::symlink(&elsewhere, &name).unwrap();
        assert!(p.find(&l, &|| ()).is_none());
        std::fs::remove_file(&name).unwrap();
        // A FIFO does not block.
        nix::unistd::mkfifo(&name, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert!(p.find(&l, &|| ()).is_none());
    }

    #[test]
    fn shared_dirs_are_searched_after_the_nodes_own() {
        let d = tempfile::tempdir().unwrap();
        let shared = d.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        let l = layer();
        std::fs::write(
            shared.join(format!("{}.json", l.hex())),
            format!(
                r#"{{"format":"{FORMAT}","layer":"{l}","files":[{{"path":"a","chunks":[0]}}]}}"#
            ),
        )
        .unwrap();
        let cfg = ProfileConfig {
            shared_dirs: vec![shared.clone()],
            ..ProfileConfig::default()
        };
        let p = Profiles::open(&d.path().join("root"), cfg).unwrap();
        let found = p.find(&l, &|| ()).unwrap();
        assert_eq!(found.path, shared.join(format!("{}.json", l.hex())));
        assert_eq!(found.files, vec![(PathBuf::from("a"), vec![0])]);
        let off = Profiles::open(
            &d.path().join("root2"),
            ProfileConfig {
                apply: false,
                shared_dirs: vec![shared],
                ..ProfileConfig::default()
            },
        )
        .unwrap();
        assert!(off.find(&l, &|| ()).is_none());
    }
}
