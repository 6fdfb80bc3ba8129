//! Credentials (docker `config.json`), `WWW-Authenticate` challenges and the
//! bearer token cache.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde::Deserialize;

use crate::Error;
use hologram_oci::{DOCKER_HUB, DOCKER_HUB_API_HOST};

/// Credentials for one registry host.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Credential {
    Basic {
        username: String,
        password: String,
    },
    /// An OAuth2 refresh token (`identitytoken`), exchanged at the realm
    /// with `grant_type=refresh_token`.
    IdentityToken {
        token: String,
    },
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Basic { username, .. } => write!(f, "Basic({username}, ***)"),
            Credential::IdentityToken { .. } => write!(f, "IdentityToken(***)"),
        }
    }
}

impl Credential {
    pub fn basic_header(&self) -> Option<String> {
        match self {
            Credential::Basic { username, password } => Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"))
            )),
            Credential::IdentityToken { .. } => None,
        }
    }
}

/// `auths` of a docker config.json, keyed by normalised host.
#[derive(Clone, Default)]
pub(crate) struct CredentialStore {
    by_host: HashMap<String, Credential>,
    /// `credsStore`: the helper for every host without a `credHelpers` entry.
    creds_store: Option<String>,
    /// `credHelpers`, keyed by normalised host.
    cred_helpers: HashMap<String, String>,
}

impl std::fmt::Debug for CredentialStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut hosts: Vec<_> = self.by_host.keys().collect();
        hosts.sort();
        f.debug_struct("CredentialStore")
            .field("hosts", &hosts)
            .field("creds_store", &self.creds_store)
            .field("cred_helpers", &self.cred_helpers)
            .finish()
    }
}

#[derive(Deserialize)]
struct DockerConfigJson {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
    #[serde(rename = "credsStore")]
    creds_store: Option<String>,
    #[serde(rename = "credHelpers", default)]
    cred_helpers: HashMap<String, String>,
}

#[derive(Deserialize)]
struct AuthEntry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
    identitytoken: Option<String>,
}

/// Where docker looks: `$DOCKER_CONFIG/config.json`, else
/// `~/.docker/config.json`.
pub(crate) fn default_docker_config_path() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(d).join("config.json"));
    }
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| PathBuf::from(h).join(".docker").join("config.json"))
}

/// Normalises a config.json key or a host name to `host[:port]`, mapping
/// Docker Hub's aliases to `docker.io`.
pub(crate) fn normalize_host(key: &str) -> String {
    let k = key.trim();
    let k = k
        .strip_prefix("https://")
        .or_else(|| k.strip_prefix("http://"))
        .unwrap_or(k);
    let k = k.split('/').next().unwrap_or("").to_ascii_lowercase();
    match k.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            DOCKER_HUB.to_string()
        }
        _ => k,
    }
}

impl CredentialStore {
    /// Loads `path`; a missing file means no credentials.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = match std::fs::read(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(Error::Config(format!("reading {}: {e}", path.display()))),
        };
        Self::parse(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }

    pub fn parse(text: &[u8]) -> Result<Self, String> {
        let cfg: DockerConfigJson =
            serde_json::from_slice(text).map_err(|e| format!("invalid JSON: {e}"))?;
        let helper = |what: &str, name: String| {
            if crate::creds::valid_helper_name(&name) {
                Ok(name)
            } else {
                Err(format!("{what}: {name:?} is not a credential helper name"))
            }
        };
        let creds_store = match cfg.creds_store.filter(|s| !s.is_empty()) {
            Some(s) => Some(helper("credsStore", s)?),
            None => None,
        };
        let mut cred_helpers = HashMap::new();
        for (key, name) in cfg.cred_helpers {
            let host = normalize_host(&key);
            if host.is_empty() || name.is_empty() {
                continue;
            }
            cred_helpers.insert(host, helper(&format!("credHelpers[{key:?}]"), name)?);
        }
        let mut by_host = HashMap::new();
        for (key, e) in cfg.auths {
            let host = normalize_host(&key);
            if host.is_empty() {
                continue;
            }
            let mut username = e.username.filter(|u| !u.is_empty());
            let mut password = e.password.filter(|p| !p.is_empty());
            if let Some(auth) = e.auth.filter(|a| !a.is_empty()) {
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(auth.trim())
                    .map_err(|err| format!("auths[{key:?}].auth is not base64: {err}"))?;
                let raw = String::from_utf8(raw)
                    .map_err(|_| format!("auths[{key:?}].auth is not UTF-8"))?;
                let (u, p) = raw.split_once(':').ok_or_else(|| {
                    format!("auths[{key:?}].auth does not decode to user:password")
                })?;
                username = Some(u.to_string());
                password = Some(p.to_string());
            }
            let cred = match (
                e.identitytoken.filter(|t| !t.is_empty()),
                username,
                password,
            ) {
                (Some(token), _, _) => Credential::IdentityToken { token },
                (None, Some(username), Some(password)) => Credential::Basic { username, password },
                _ => continue,
            };
            by_host.insert(host, cred);
        }
        Ok(CredentialStore {
            by_host,
            creds_store,
            cred_helpers,
        })
    }

    /// The credential helper for `host`: its `credHelpers` entry, else
    /// `credsStore`.
    pub fn helper_for(&self, host: &str) -> Option<String> {
        let h = normalize_host(host);
        let h = if host == DOCKER_HUB_API_HOST {
            DOCKER_HUB.to_string()
        } else {
            h
        };
        self.cred_helpers
            .get(&h)
            .cloned()
            .or_else(|| self.creds_store.clone())
    }

    /// Credentials for the host a request goes to.
    pub fn lookup(&self, host: &str) -> Option<&Credential> {
        let h = normalize_host(host);
        self.by_host.get(&h).or_else(|| {
            // Docker Hub's API host is configured as docker.io.
            (host == DOCKER_HUB_API_HOST)
                .then(|| self.by_host.get(DOCKER_HUB))
                .flatten()
        })
    }
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Challenge {
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
    Basic,
}

/// Parses all challenges in the `WWW-Authenticate` header values, best
/// (Bearer) first.
pub(crate) fn parse_challenges<'a>(values: impl Iterator<Item = &'a str>) -> Vec<Challenge> {
    let mut out = Vec::new();
    for v in values {
        for (scheme, params) in parse_header(v) {
            let get = |k: &str| {
                params
                    .iter()
                    .find(|(pk, _)| pk.eq_ignore_ascii_case(k))
                    .map(|(_, v)| v.clone())
            };
            match scheme.to_ascii_lowercase().as_str() {
                "bearer" => {
                    if let Some(realm) = get("realm").filter(|r| !r.is_empty()) {
                        out.push(Challenge::Bearer {
                            realm,
                            service: get("service"),
                            scope: get("scope"),
                        });
                    }
                }
                "basic" => out.push(Challenge::Basic),
                _ => {}
            }
        }
    }
    out.sort_by_key(|c| matches!(c, Challenge::Basic));
    out
}

/// `scheme k=v, k="v", scheme2 k=v` → [(scheme, [(k, v)])]
fn parse_header(s: &str) -> Vec<(String, Vec<(String, String)>)> {
    let b = s.as_bytes();
    let mut i = 0;
    let mut out: Vec<(String, Vec<(String, String)>)> = Vec::new();
    let skip_ws = |i: &mut usize| {
        while *i < b.len() && (b[*i] == b' ' || b[*i] == b'\t' || b[*i] == b',') {
            *i += 1;
        }
    };
    let token = |i: &mut usize| {
        let start = *i;
        while *i < b.len() && !matches!(b[*i], b' ' | b'\t' | b',' | b'=') {
            *i += 1;
        }
        s[start..*i].to_string()
    };
    loop {
        skip_ws(&mut i);
        if i >= b.len() {
            break;
        }
        let tok = token(&mut i);
        // Skip spaces (not commas) to see whether '=' follows.
        let mut j = i;
        while j < b.len() && (b[j] == b' ' || b[j] == b'\t') {
            j += 1;
        }
        if j < b.len() && b[j] == b'=' && !out.is_empty() {
            // A parameter of the current challenge.
            i = j + 1;
            while i < b.len() && (b[i] == b' ' || b[i] == b'\t') {
                i += 1;
            }
            let value = if i < b.len() && b[i] == b'"' {
                i += 1;
                let mut v = String::new();
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' && i + 1 < b.len() {
                        i += 1;
                    }
                    // Push whole UTF-8 characters.
                    let ch_len = s[i..].chars().next().map_or(1, char::len_utf8);
                    v.push_str(&s[i..i + ch_len]);
                    i += ch_len;
                }
                i += 1; // closing quote
                v
            } else {
                token(&mut i)
            };
            if let Some(last) = out.last_mut() {
                last.1.push((tok, value));
            }
        } else if !tok.is_empty() {
            out.push((tok, Vec::new()));
        } else {
            i += 1;
        }
    }
    out
}

/// A bearer token and when to stop using it.
#[derive(Clone)]
pub(crate) struct Token {
    pub value: String,
    pub refresh_at: Instant,
}

#[derive(Deserialize)]
pub(crate) struct TokenResponse {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<u64>,
}

impl TokenResponse {
    /// Turns the realm's answer into a cached token: `expires_in` defaults
    /// to 60 s; the token is refreshed a little early (a fifth of its
    /// lifetime, at most 10 s).
    pub fn into_token(self, received: Instant) -> Result<Token, Error> {
        let value = self
            .token
            .filter(|t| !t.is_empty())
            .or(self.access_token.filter(|t| !t.is_empty()))
            .ok_or_else(|| {
                Error::InvalidResponse("token response has neither token nor access_token".into())
            })?;
        let life = Duration::from_secs(self.expires_in.unwrap_or(60).clamp(1, 365 * 24 * 3600));
        let margin = (life / 5).min(Duration::from_secs(10));
        Ok(Token {
            value,
            refresh_at: received + (life - margin),
        })
    }
}

type TokenSlot = Arc<tokio::sync::Mutex<Option<Token>>>;

/// Known challenges per host and bearer tokens per (host, scope).
#[derive(Default)]
pub(crate) struct AuthCache {
    challenges: Mutex<HashMap<String, Challenge>>,
    tokens: Mutex<HashMap<(String, String), TokenSlot>>,
}

impl AuthCache {
    pub fn challenge(&self, host: &str) -> Option<Challenge> {
        self.challenges
            .lock()
            .ok()
            .and_then(|m| m.get(host).cloned())
    }

    pub fn set_challenge(&self, host: &str, c: Challenge) {
        if let Ok(mut m) = self.challenges.lock() {
            m.insert(host.to_string(), c);
        }
    }

    /// The slot for (host, scope); holding its lock while fetching makes
    /// concurrent readers share one token request.
    pub fn slot(&self, host: &str, scope: &str) -> TokenSlot {
        match self.tokens.lock() {
            Ok(mut m) => m
                .entry((host.to_string(), scope.to_string()))
                .or_default()
                .clone(),
            Err(_) => TokenSlot::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn parses_docker_hub_challenge() {
        let c = parse_challenges(
            ["Bearer realm=\"https://auth.docker.io/token\",service=\"registry.docker.io\",scope=\"repository:library/alpine:pull\""]
                .into_iter(),
        );
        assert_eq!(
            c,
            vec![Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/alpine:pull".into()),
            }]
        );
    }

    #[test]
    fn parses_multiple_and_unquoted() {
        let c = parse_challenges(
            [
                "Basic realm=\"x\", Bearer realm=https://a/t, service=svc",
                "Negotiate",
            ]
            .into_iter(),
        );
        assert_eq!(
            c,
            vec![
                Challenge::Bearer {
                    realm: "https://a/t".into(),
                    service: Some("svc".into()),
                    scope: None
                },
                Challenge::Basic
            ]
        );
        let c = parse_challenges(
            ["Bearer realm=\"a\\\"b\",scope=\"repository:x:pull,push\""].into_iter(),
        );
        assert_eq!(
            c,
            vec![Challenge::Bearer {
                realm: "a\"b".into(),
                service: None,
                scope: Some("repository:x:pull,push".into())
            }]
        );
        assert!(parse_challenges(["Bearer service=\"no-realm\""].into_iter()).is_empty());
    }

    #[test]
    fn docker_config_forms() {
        let json = br#"{"auths":{
            "https://index.docker.io/v1/":{"auth":"dXNlcjpwYXNz"},
            "127.0.0.1:5000":{"username":"u2","password":"p:2"},
            "https://ghcr.io":{"identitytoken":"refresh"},
            "empty.example":{}
        },"credsStore":"desktop"}"#;
        let s = CredentialStore::parse(json).unwrap();
        assert_eq!(
            s.lookup("docker.io"),
            Some(&Credential::Basic {
                username: "user".into(),
                password: "pass".into()
            })
        );
        assert_eq!(
            s.lookup("registry-1.docker.io")
                .and_then(|c| c.basic_header())
                .as_deref(),
            Some("Basic dXNlcjpwYXNz")
        );
        assert_eq!(
            s.lookup("127.0.0.1:5000"),
            Some(&Credential::Basic {
                username: "u2".into(),
                password: "p:2".into()
            })
        );
        assert_eq!(
            s.lookup("ghcr.io"),
            Some(&Credential::IdentityToken {
                token: "refresh".into()
            })
        );
        assert_eq!(s.lookup("empty.example"), None);
        assert!(CredentialStore::parse(br#"{"auths":{"x":{"auth":"!!"}}}"#).is_err());
        assert!(CredentialStore::parse(b"nope").is_err());
        // Credentials never show in Debug output.
        assert!(!format!("{s:?} {:?}", s.lookup("docker.io")).contains("pass"));
    }

    #[test]
    fn token_lifetimes() {
        let now = Instant::now();
        let t: TokenResponse = serde_json::from_str(r#"{"token":"a","expires_in":300}"#).unwrap();
        let t = t.into_token(now).unwrap();
        assert_eq!(t.refresh_at - now, Duration::from_secs(290));
        let t: TokenResponse = serde_json::from_str(r#"{"access_token":"b"}"#).unwrap();
        let t = t.into_token(now).unwrap();
        assert_eq!(t.value, "b");
        assert_eq!(t.refresh_at - now, Duration::from_secs(50));
        let t: TokenResponse = serde_json::from_str(r#"{"expires_in":5}"#).unwrap();
        assert!(t.into_token(now).is_err());
    }
}
