//! Where a request's credentials come from, in this order:
//!
//! 1. **Session credentials** ([`SessionCredentials`]): given to the process
//!    at run time, e.g. by the daemon's CRI image-service proxy from the
//!    kubelet's `PullImage` `AuthConfig`. Kept in memory only, per
//!    (registry host, repository), so a pull secret given for one image
//!    is not used for other repositories.
//! 2. docker `config.json` **`credHelpers`** for the host, then
//!    **`credsStore`**: the `docker-credential-<name>` program is run with
//!    the `get` action (server URL on stdin, JSON on stdout), as docker
//!    does. Answers (found or not) are cached in memory for
//!    [`HELPER_CACHE`]; a helper that fails or hangs longer than
//!    [`HELPER_TIMEOUT`] counts as "no credentials" (logged without its
//!    output, which may hold a secret).
//! 3. docker `config.json` inline **`auths`**.
//!
//! No credential is ever written to disk, logged or put in a label by this
//! crate: every type holding one prints `***` in its `Debug` output.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::io::AsyncWriteExt as _;

use crate::auth::{normalize_host, Credential, CredentialStore};
use hologram_oci::{Reference, DOCKER_HUB, DOCKER_HUB_API_HOST};

/// How long a credential helper may run.
pub const HELPER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a helper's answer is reused before the helper runs again
/// (short: helpers like ECR's hand out tokens that expire).
pub const HELPER_CACHE: Duration = Duration::from_secs(60);
/// Most (host, repository) pairs [`SessionCredentials`] keeps; the oldest
/// is forgotten first.
pub const MAX_SESSION_ENTRIES: usize = 4096;
/// Largest helper answer read.
const MAX_HELPER_OUTPUT: usize = 64 * 1024;

/// Credentials handed to the process at run time (the CRI proxy's
/// `AuthConfig`s), in memory only. Cheap to share (`Arc`).
#[derive(Default)]
pub struct SessionCredentials {
    entries: Mutex<SessionMap>,
}

#[derive(Default)]
struct SessionMap {
    by_key: HashMap<(String, String), (u64, Credential)>,
    next: u64,
}

impl std::fmt::Debug for SessionCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.entries.lock().map(|m| m.by_key.len()).unwrap_or(0);
        write!(f, "SessionCredentials({n} entries, ***)")
    }
}

/// A credential as a CRI `AuthConfig` (or a caller) gives it.
#[derive(Clone, PartialEq, Eq)]
pub enum GivenCredential {
    /// Username and password (basic auth, or sent to the token realm).
    Basic { username: String, password: String },
    /// An OAuth2 refresh token (`identitytoken`).
    IdentityToken(String),
}

impl std::fmt::Debug for GivenCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GivenCredential::Basic { username, .. } => write!(f, "Basic({username}, ***)"),
            GivenCredential::IdentityToken(_) => write!(f, "IdentityToken(***)"),
        }
    }
}

impl From<GivenCredential> for Credential {
    fn from(g: GivenCredential) -> Self {
        match g {
            GivenCredential::Basic { username, password } => {
                Credential::Basic { username, password }
            }
            GivenCredential::IdentityToken(token) => Credential::IdentityToken { token },
        }
    }
}

impl SessionCredentials {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Remembers `cred` for requests to `host` (normalised, e.g.
    /// `127.0.0.1:5000` or `docker.io`) about `repository`, replacing
    /// what was there.
    pub fn remember(&self, host: &str, repository: &str, cred: GivenCredential) {
        let key = (normalize_host(host), repository.to_owned());
        let Ok(mut m) = self.entries.lock() else {
            return;
        };
        m.next += 1;
        let seq = m.next;
        m.by_key.insert(key, (seq, cred.into()));
        if m.by_key.len() > MAX_SESSION_ENTRIES {
            if let Some(oldest) = m
                .by_key
                .iter()
                .min_by_key(|(_, (s, _))| *s)
                .map(|(k, _)| k.clone())
            {
                m.by_key.remove(&oldest);
            }
        }
    }

    /// Remembers `cred` for `image`'s registry and repository.
    pub fn remember_for(&self, image: &Reference, cred: GivenCredential) {
        self.remember(&image.registry, &image.repository, cred);
    }

    /// Whether anything is known for (`host`, `repository`).
    pub fn has(&self, host: &str, repository: &str) -> bool {
        self.lookup(host, repository).is_some()
    }

    /// How many (host, repository) pairs are known.
    pub fn len(&self) -> usize {
        self.entries.lock().map(|m| m.by_key.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn lookup(&self, host: &str, repository: &str) -> Option<Credential> {
        let m = self.entries.lock().ok()?;
        let h = normalize_host(host);
        let get = |h: &str| {
            m.by_key
                .get(&(h.to_owned(), repository.to_owned()))
                .map(|(_, c)| c.clone())
        };
        get(&h).or_else(|| {
            (host == DOCKER_HUB_API_HOST)
                .then(|| get(DOCKER_HUB))
                .flatten()
        })
    }
}

/// The server URL a credential helper is asked about: docker's legacy
/// index URL for Docker Hub, the host otherwise.
pub(crate) fn helper_server_url(host: &str) -> String {
    if host == DOCKER_HUB || host == DOCKER_HUB_API_HOST {
        "https://index.docker.io/v1/".to_owned()
    } else {
        host.to_owned()
    }
}

/// A helper name must be a plain program-name suffix.
pub(crate) fn valid_helper_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !name.starts_with('.')
}

#[derive(Deserialize)]
struct HelperAnswer {
    #[serde(rename = "Username", default)]
    username: String,
    #[serde(rename = "Secret", default)]
    secret: String,
}

/// Parses a helper's `get` answer; `<token>` as the username means the
/// secret is an identity token (docker's convention).
pub(crate) fn parse_helper_answer(out: &[u8]) -> Result<Option<Credential>, String> {
    let a: HelperAnswer =
        serde_json::from_slice(out).map_err(|e| format!("answer is not the helper JSON: {e}"))?;
    if a.secret.is_empty() {
        return Ok(None);
    }
    Ok(Some(if a.username == "<token>" {
        Credential::IdentityToken { token: a.secret }
    } else {
        Credential::Basic {
            username: a.username,
            password: a.secret,
        }
    }))
}

/// Runs `docker-credential-<name> get` (found on `PATH`) for `server_url`.
async fn run_helper(name: &str, server_url: &str) -> Result<Option<Credential>, String> {
    run_helper_program(
        std::path::Path::new(&format!("docker-credential-{name}")),
        server_url,
    )
    .await
}

async fn run_helper_program(
    program: &std::path::Path,
    server_url: &str,
) -> Result<Option<Credential>, String> {
    let mut child = tokio::process::Command::new(program)
        .arg("get")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", program.display()))?;
    let program = program.display();
    let work = async {
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(server_url.as_bytes())
                .await
                .map_err(|e| format!("{program}: writing stdin: {e}"))?;
            drop(stdin);
        }
        child
            .wait_with_output()
            .await
            .map_err(|e| format!("{program}: {e}"))
    };
    let out = tokio::time::timeout(HELPER_TIMEOUT, work)
        .await
        .map_err(|_| format!("{program} did not answer within {HELPER_TIMEOUT:?}"))??;
    if out.stdout.len() > MAX_HELPER_OUTPUT {
        return Err(format!(
            "{program}: answer larger than {MAX_HELPER_OUTPUT} bytes"
        ));
    }
    if !out.status.success() {
        // "credentials not found in native keychain" and the like: stdout
        // is an error message, never echoed (it is the helper's to word).
        return Ok(None);
    }
    parse_helper_answer(&out.stdout).map_err(|e| format!("{program}: {e}"))
}

/// Everything [`crate::RegistryClient`] knows about credentials.
pub(crate) struct Credentials {
    pub file: CredentialStore,
    pub session: Option<Arc<SessionCredentials>>,
    helper_cache: Mutex<HashMap<String, (Instant, Option<Credential>)>>,
    /// One helper run per host at a time.
    helper_runs: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("file", &self.file)
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    pub fn new(file: CredentialStore, session: Option<Arc<SessionCredentials>>) -> Self {
        Credentials {
            file,
            session,
            helper_cache: Mutex::new(HashMap::new()),
            helper_runs: tokio::sync::Mutex::new(()),
        }
    }

    /// The credential for a request to `host` about `repository` (empty
    /// when the request is not about one repository).
    pub async fn lookup(&self, host: &str, repository: &str) -> Option<Credential> {
        if let Some(c) = self
            .session
            .as_ref()
            .and_then(|s| s.lookup(host, repository))
        {
            return Some(c);
        }
        if let Some(helper) = self.file.helper_for(host) {
            if let Some(c) = self.ask_helper(&helper, host).await {
                return Some(c);
            }
        }
        self.file.lookup(host).cloned()
    }

    async fn ask_helper(&self, helper: &str, host: &str) -> Option<Credential> {
        let key = format!("{helper}\0{host}");
        let cached = |me: &Self| {
            me.helper_cache
                .lock()
                .ok()
                .and_then(|m| m.get(&key).cloned())
                .filter(|(at, _)| at.elapsed() < HELPER_CACHE)
                .map(|(_, c)| c)
        };
        if let Some(c) = cached(self) {
            return c;
        }
        let _one = self.helper_runs.lock().await;
        if let Some(c) = cached(self) {
            return c;
        }
        let found = match run_helper(helper, &helper_server_url(host)).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(%host, helper, error = %e, "credential helper failed; trying without it");
                None
            }
        };
        if let Ok(mut m) = self.helper_cache.lock() {
            m.insert(key, (Instant::now(), found.clone()));
        }
        found
    }
}

/// `repository:NAME:ACTIONS` → NAME (empty for other scopes).
pub(crate) fn scope_repository(scope: &str) -> &str {
    scope
        .strip_prefix("repository:")
        .and_then(|s| s.rsplit_once(':'))
        .map_or("", |(name, _)| name)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn session_credentials_are_per_repository_and_never_printed() {
        let s = SessionCredentials::new();
        let r = Reference::parse("127.0.0.1:5000/team/app:1").unwrap();
        s.remember_for(
            &r,
            GivenCredential::Basic {
                username: "u".into(),
                password: "hunter2".into(),
            },
        );
        assert!(s.has("127.0.0.1:5000", "team/app"));
        assert!(!s.has("127.0.0.1:5000", "team/other"));
        assert!(!s.has("127.0.0.1:5001", "team/app"));
        let hub = Reference::parse("busybox").unwrap();
        s.remember_for(&hub, GivenCredential::IdentityToken("tok".into()));
        assert!(s.has(DOCKER_HUB_API_HOST, "library/busybox"));
        let shown = format!("{s:?} {:?}", s.lookup("127.0.0.1:5000", "team/app"));
        assert!(
            !shown.contains("hunter2") && !shown.contains("tok\""),
            "{shown}"
        );
    }

    #[test]
    fn session_credentials_are_bounded() {
        let s = SessionCredentials::new();
        for i in 0..(MAX_SESSION_ENTRIES + 10) {
            s.remember(
                "r.example",
                &format!("repo{i}"),
                GivenCredential::IdentityToken("t".into()),
            );
        }
        assert_eq!(s.len(), MAX_SESSION_ENTRIES);
        assert!(!s.has("r.example", "repo0"));
        assert!(s.has("r.example", &format!("repo{}", MAX_SESSION_ENTRIES + 9)));
    }

    #[test]
    fn helper_answers_and_names() {
        assert_eq!(
            parse_helper_answer(br#"{"ServerURL":"x","Username":"u","Secret":"p"}"#).unwrap(),
            Some(Credential::Basic {
                username: "u".into(),
                password: "p".into()
            })
        );
        assert_eq!(
            parse_helper_answer(br#"{"Username":"<token>","Secret":"rt"}"#).unwrap(),
            Some(Credential::IdentityToken { token: "rt".into() })
        );
        assert_eq!(parse_helper_answer(br#"{"Username":"u"}"#).unwrap(), None);
        assert!(parse_helper_answer(b"credentials not found").is_err());
        assert!(valid_helper_name("ecr-login") && valid_helper_name("desktop.exe"));
        assert!(!valid_helper_name("../x") && !valid_helper_name("") && !valid_helper_name("a b"));
        assert_eq!(
            helper_server_url("docker.io"),
            "https://index.docker.io/v1/"
        );
        assert_eq!(helper_server_url("127.0.0.1:5000"), "127.0.0.1:5000");
        assert_eq!(scope_repository("repository:a/b:pull"), "a/b");
        assert_eq!(scope_repository("repository:a/b:pull,push"), "a/b");
        assert_eq!(scope_repository("registry:catalog:*"), "");
    }

    #[tokio::test]
    async fn runs_a_helper_program() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("docker-credential-unit");
        std::fs::write(
            &script,
            "#!/bin/sh\n[ \"$1\" = get ] || exit 1\nread -r url\n\
             [ \"$url\" = r.example ] || { echo 'credentials not found in native keychain'; exit 1; }\n\
             printf '{\"ServerURL\":\"%s\",\"Username\":\"u\",\"Secret\":\"s3\"}\\n' \"$url\"\n",
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let file = CredentialStore::parse(br#"{"credHelpers":{"r.example":"unit"}}"#).unwrap();
        let got = run_helper_program(&script, "r.example").await.unwrap();
        assert_eq!(
            got,
            Some(Credential::Basic {
                username: "u".into(),
                password: "s3".into()
            })
        );
        assert_eq!(
            run_helper_program(&script, "other.example").await.unwrap(),
            None
        );
        assert!(run_helper_program(&dir.path().join("missing"), "r.example")
            .await
            .is_err());
        assert_eq!(file.helper_for("r.example").as_deref(), Some("unit"));
        assert_eq!(file.helper_for("other.example"), None);
    }
}
