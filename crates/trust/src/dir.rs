//! A local witness directory: any files, any names, each holding one DSSE
//! envelope (or a saved [`WitnessResponse`] with one), indexed by the UOR-ID
//! inside the envelope's statement.
//!
//! Indexing reads statements **unverified**; it only decides which
//! envelopes to try for an image. Files that are not witnesses are skipped,
//! each with a reason, so one stray file never hides the others.

use std::collections::HashMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use crate::endpoint::WitnessResponse;
use crate::{Envelope, TrustError, UorId};

/// Files larger than this are not witnesses (they are skipped unread).
pub const MAX_WITNESS_FILE: u64 = 1024 * 1024;

/// What [`load_dir`] found.
#[derive(Debug, Clone, Default)]
pub struct WitnessDir {
    /// Envelopes by canonical UOR-ID string (`uor:v1:r<r>:<hex>`), in file-name order.
    pub by_uor: HashMap<String, Vec<Envelope>>,
    /// Files that were not used, and why.
    pub skipped: Vec<Skipped>,
}

/// A file [`load_dir`] did not use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub path: PathBuf,
    pub reason: String,
}

impl WitnessDir {
    /// The envelopes for `uor` (empty if none).
    pub fn get(&self, uor: &UorId) -> &[Envelope] {
        self.by_uor
            .get(&uor.to_string())
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// How many envelopes were indexed.
    pub fn len(&self) -> usize {
        self.by_uor.values().map(Vec::len).sum()
    }

    /// Whether no envelope was indexed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Reads every entry of `dir` (not recursively). Only an unreadable `dir`
/// is an error; unusable files land in [`WitnessDir::skipped`].
pub fn load_dir(dir: &Path) -> Result<WitnessDir, TrustError> {
    let io_err = |source| TrustError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err)? {
        paths.push(entry.map_err(io_err)?.path());
    }
    paths.sort();

    let mut out = WitnessDir::default();
    for path in paths {
        match load_file(&path) {
            Ok((uor, env)) => out.by_uor.entry(uor.to_string()).or_default().push(env),
            Err(reason) => out.skipped.push(Skipped { path, reason }),
        }
    }
    Ok(out)
}

/// Reads a witness file's JSON: a DSSE envelope, or a saved witness
/// endpoint answer ([`WitnessResponse`]) that carries one.
pub fn parse_witness_json(bytes: &[u8]) -> Result<Envelope, TrustError> {
    match Envelope::from_json(bytes) {
        Ok(env) => Ok(env),
        Err(e) => match serde_json::from_slice::<WitnessResponse>(bytes) {
            Ok(WitnessResponse {
                envelope: Some(env),
                ..
            }) => Ok(env),
            _ => Err(e),
        },
    }
}

fn load_file(path: &Path) -> Result<(UorId, Envelope), String> {
    // Follows symlinks, as a directory of links into a store is common.
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot stat: {e}"))?;
    if !meta.is_file() {
        return Err("not a regular file".to_string());
    }
    if meta.len() > MAX_WITNESS_FILE {
        return Err(format!("larger than {MAX_WITNESS_FILE} bytes"));
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_WITNESS_FILE + 1).read_to_end(&mut bytes))
        .map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() as u64 > MAX_WITNESS_FILE {
        return Err(format!("larger than {MAX_WITNESS_FILE} bytes"));
    }
    let env = match Envelope::from_json(&bytes) {
        Ok(env) => env,
        Err(e) => match serde_json::from_slice::<WitnessResponse>(&bytes) {
            Ok(WitnessResponse {
                envelope: Some(env),
                ..
            }) => env,
            _ => return Err(e.to_string()),
        },
    };
    let statement = env.peek_statement().map_err(|e| e.to_string())?;
    let uor = UorId::parse(&statement.predicate.uor_id)
        .map_err(|e| format!("statement's uor_id: {e}"))?;
    Ok((uor, env))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn witness(key: &crate::SigningKey, manifest: &[u8]) -> Envelope {
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let digest = hologram_oci::Digest::of(manifest);
        crate::sign(
            key,
            "r/a:1",
            &digest,
            &UorId::of(manifest),
            t,
            t + Duration::from_secs(3600),
            "ci",
            serde_json::Value::Null,
        )
        .unwrap()
    }

    #[test]
    fn indexes_by_uor_regardless_of_names_and_skips_junk() {
        let dir = tempfile::tempdir().unwrap();
        let key = crate::SigningKey::generate();
        let a1 = witness(&key, b"manifest a");
        let a2 = witness(&crate::SigningKey::generate(), b"manifest a");
        let b = witness(&key, b"manifest b");
        let w = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        // Names say nothing about content; one is even misleading.
        w("zz-first", &a1.to_json_pretty());
        w(
            &format!("{}.json", UorId::of(b"manifest a")),
            &b.to_json_pretty(),
        );
        w("no-extension", &serde_json::to_string(&a2).unwrap());
        // A saved endpoint answer is accepted too.
        let resp = WitnessResponse::from_envelope(&b).unwrap();
        w(
            "saved-response.json",
            &serde_json::to_string(&resp).unwrap(),
        );
        // Junk.
        w("README.md", "# not a witness\n");
        w("empty.json", "");
        w("other.json", "{\"hello\": 1}");
        let mut foreign = a1.clone();
        foreign.payload_type = "text/plain".to_string();
        w("foreign-type.json", &foreign.to_json_pretty());
        let mut bad_uor = a1.peek_statement().unwrap();
        bad_uor.predicate.uor_id = "uor:v2:r1:00".to_string();
        let bad_env = crate::sign_payload(
            &key,
            crate::PAYLOAD_TYPE,
            &serde_json::to_vec(&bad_uor).unwrap(),
        );
        w("bad-uor.json", &bad_env.to_json_pretty());
        std::fs::create_dir(dir.path().join("subdir")).unwrap();
        std::fs::write(
            dir.path().join("huge"),
            vec![b' '; (MAX_WITNESS_FILE + 1) as usize],
        )
        .unwrap();

        let loaded = load_dir(dir.path()).unwrap();
        assert_eq!(loaded.by_uor.len(), 2, "{:?}", loaded.by_uor.keys());
        let got_a = loaded.get(&UorId::of(b"manifest a"));
        assert_eq!(got_a.len(), 2);
        // File-name order: "no-extension" < "zz-first".
        assert_eq!(got_a[0], a2);
        assert_eq!(got_a[1], a1);
        let got_b = loaded.get(&UorId::of(b"manifest b"));
        assert_eq!(got_b, &[b.clone(), b]);
        assert!(loaded.get(&UorId::of(b"nothing")).is_empty());
        assert_eq!(loaded.len(), 4);

        let skipped: HashMap<String, String> = loaded
            .skipped
            .iter()
            .map(|s| {
                (
                    s.path.file_name().unwrap().to_string_lossy().to_string(),
                    s.reason.clone(),
                )
            })
            .collect();
        let mut names: Vec<&str> = skipped.keys().map(String::as_str).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "README.md",
                "bad-uor.json",
                "empty.json",
                "foreign-type.json",
                "huge",
                "other.json",
                "subdir"
            ]
        );
        assert!(skipped["subdir"].contains("not a regular file"));
        assert!(skipped["huge"].contains("larger than"));
        assert!(
            skipped["foreign-type.json"].contains("payloadType"),
            "{}",
            skipped["foreign-type.json"]
        );
        assert!(
            skipped["bad-uor.json"].contains("uor_id"),
            "{}",
            skipped["bad-uor.json"]
        );
        assert!(skipped["README.md"].contains("not a DSSE envelope"));

        // The loaded witnesses verify like any other.
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_100);
        let digest = hologram_oci::Digest::of(b"manifest a");
        let v = crate::verify_any(
            got_a,
            &[key.public()],
            &digest,
            &UorId::of(b"manifest a"),
            now,
        )
        .unwrap();
        assert_eq!(v.keyid, key.public().keyid());
    }

    #[test]
    fn missing_dir_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = load_dir(&dir.path().join("absent")).unwrap_err();
        assert!(matches!(err, TrustError::Io { .. }));
        assert!(err.to_string().contains("absent"));
        let empty = load_dir(dir.path()).unwrap();
        assert!(empty.is_empty() && empty.skipped.is_empty());
    }
}
