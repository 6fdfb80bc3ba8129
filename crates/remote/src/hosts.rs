//! containerd `hosts.toml` (certs.d layout) support.
//!
//! For a registry `host[:port]` the directory `<hosts_dir>/<host>_<port>_`,
//! then `<hosts_dir>/<host>:<port>`, then `<hosts_dir>/_default` is used (the
//! first that exists). Its `hosts.toml` lists mirror hosts (tried in file
//! order) and the `server` (tried last). Without a `hosts.toml`, Docker's
//! certificate-directory convention applies (`*.crt` CA files, `*.cert` +
//! `*.key` client pairs).
//!
//! Implemented: `server`, `[host."..."]` order, `capabilities`
//! (pull/resolve/push), `http://`/`https://` schemes (no scheme means
//! https), URL paths with the implicit `/v2` suffix, `override_path`,
//! `skip_verify`, `ca` (string or list, relative to the hosts.toml
//! directory), `client` (the first pair only: reqwest takes one identity per
//! client), `header` (string or list values), `dial_timeout`, and the same
//! fields at the top level for the server.
//!
//! Not implemented: `proxy` (the environment's proxy settings apply),
//! containerd's https-then-http fallback for `http://` hosts that also carry
//! TLS settings (the scheme written is the scheme used), and re-reading the
//! files while a [`crate::RegistryClient`] lives (they are read once per
//! registry and cached).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::Error;
use hologram_oci::{DOCKER_HUB, DOCKER_HUB_API_HOST};

/// Which operations a host may be used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Caps {
    pub pull: bool,
    pub resolve: bool,
    pub push: bool,
}

impl Caps {
    pub const ALL: Caps = Caps {
        pull: true,
        resolve: true,
        push: true,
    };
}

/// The operation kinds, matched against [`Caps`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Capability {
    /// Fetch content by digest (blobs, manifests by digest).
    Pull,
    /// Resolve a tag to a manifest.
    Resolve,
    /// Upload.
    Push,
}

impl Caps {
    pub fn allows(&self, c: Capability) -> bool {
        match c {
            Capability::Pull => self.pull,
            Capability::Resolve => self.resolve,
            Capability::Push => self.push,
        }
    }
}

/// Settings that need a separate HTTP client (and connection pool).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub(crate) struct TlsSettings {
    pub skip_verify: bool,
    pub ca: Vec<PathBuf>,
    pub client: Option<(PathBuf, Option<PathBuf>)>,
    pub dial_timeout: Option<Duration>,
}

/// One host to try, in order.
#[derive(Debug, Clone)]
pub(crate) struct HostSpec {
    /// `http` or `https`.
    pub scheme: String,
    /// `host[:port]`.
    pub host: String,
    /// API root path, `/v2` unless `override_path` said otherwise; no
    /// trailing slash.
    pub path: String,
    pub caps: Caps,
    pub tls: TlsSettings,
    pub headers: Vec<(String, String)>,
    /// The `server` entry (always last): its errors are the authoritative ones.
    pub is_server: bool,
}

#[derive(Deserialize, Default)]
struct HostFields {
    capabilities: Option<Vec<String>>,
    ca: Option<OneOrMany>,
    client: Option<ClientField>,
    skip_verify: Option<bool>,
    header: Option<HashMap<String, OneOrMany>>,
    #[serde(default)]
    override_path: bool,
    dial_timeout: Option<String>,
}

#[derive(Deserialize, Default)]
struct HostFile {
    server: Option<String>,
    #[serde(default)]
    host: HashMap<String, HostFields>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ClientField {
    One(String),
    Many(Vec<ClientItem>),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ClientItem {
    Path(String),
    Pair(Vec<String>),
}

/// The hosts to use for `registry`, in the order to try them; the last one
/// is the server.
pub(crate) fn host_specs(
    hosts_dir: Option<&Path>,
    registry: &str,
    plain_http: bool,
) -> Result<Vec<HostSpec>, Error> {
    let Some(dir) = hosts_dir.and_then(|root| find_host_dir(root, registry)) else {
        return Ok(vec![default_spec(registry, plain_http)]);
    };
    let file = dir.join("hosts.toml");
    match std::fs::read_to_string(&file) {
        Ok(text) if !text.trim().is_empty() => parse_hosts_toml(&text, &dir, registry, plain_http)
            .map_err(|e| Error::Config(format!("{}: {e}", file.display()))),
        Ok(_) => cert_dir_spec(&dir, registry, plain_http),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            cert_dir_spec(&dir, registry, plain_http)
        }
        Err(e) => Err(Error::Config(format!("reading {}: {e}", file.display()))),
    }
}

fn find_host_dir(root: &Path, registry: &str) -> Option<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(idx) = registry.rfind(':') {
        let port = &registry[idx + 1..];
        if idx > 0 && !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) {
            candidates.push(format!("{}_{}_", &registry[..idx], port));
        }
    }
    candidates.push(registry.to_string());
    candidates.push("_default".to_string());
    candidates
        .into_iter()
        .map(|c| root.join(c))
        .find(|p| p.is_dir())
}

/// The host used when nothing is configured: Docker Hub's API host, else the
/// registry itself over https, or http when `plain_http` is set or the
/// registry is a loopback address with a port other than 443.
pub(crate) fn default_spec(registry: &str, plain_http: bool) -> HostSpec {
    let (scheme, host) = if registry == DOCKER_HUB {
        ("https", DOCKER_HUB_API_HOST.to_string())
    } else if plain_http || is_loopback_nonstandard_port(registry) {
        ("http", registry.to_string())
    } else {
        ("https", registry.to_string())
    };
    HostSpec {
        scheme: scheme.to_string(),
        host,
        path: "/v2".to_string(),
        caps: Caps::ALL,
        tls: TlsSettings::default(),
        headers: Vec::new(),
        is_server: true,
    }
}

fn is_loopback_nonstandard_port(registry: &str) -> bool {
    let (host, port) = if let Some(rest) = registry.strip_prefix('[') {
        match rest.split_once(']') {
            Some((h, p)) => (h, p.strip_prefix(':')),
            None => return false,
        }
    } else {
        match registry.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (registry, None),
        }
    };
    let loopback = host == "localhost" || host == "::1" || host.starts_with("127.");
    loopback && matches!(port, Some(p) if p != "443")
}

fn parse_hosts_toml(
    text: &str,
    dir: &Path,
    registry: &str,
    plain_http: bool,
) -> Result<Vec<HostSpec>, String> {
    let file: HostFile = toml::from_str(text).map_err(|e| e.to_string())?;
    let root: HostFields = toml::from_str(text).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let mut hosts: Vec<(String, HostFields)> = file.host.into_iter().collect();
    let order = host_key_order(text)?;
    hosts.sort_by_key(|(k, _)| order.iter().position(|o| o == k).unwrap_or(usize::MAX));
    for (url, fields) in hosts {
        out.push(
            host_from_fields(Some(&url), fields, dir, false)
                .map_err(|e| format!("[host.{url:?}]: {e}"))?,
        );
    }
    let mut server = host_from_fields(file.server.as_deref(), root, dir, true)
        .map_err(|e| format!("server: {e}"))?;
    if server.host.is_empty() {
        let d = default_spec(registry, plain_http);
        server.scheme = d.scheme;
        server.host = d.host;
        server.path = d.path;
    }
    out.push(server);
    Ok(out)
}

/// The `[host."..."]` keys in the order they appear in the file (serde
/// gives us a map without order).
fn host_key_order(text: &str) -> Result<Vec<String>, String> {
    let doc = toml::de::DeTable::parse(text).map_err(|e| e.to_string())?;
    let mut keys = Vec::new();
    for (k, v) in doc.get_ref().iter() {
        if k.get_ref().as_ref() != "host" {
            continue;
        }
        if let Some(t) = v.get_ref().as_table() {
            for (hk, _) in t.iter() {
                keys.push((hk.span().start, hk.get_ref().to_string()));
            }
        }
    }
    keys.sort();
    Ok(keys.into_iter().map(|(_, k)| k).collect())
}

fn host_from_fields(
    url: Option<&str>,
    f: HostFields,
    dir: &Path,
    is_server: bool,
) -> Result<HostSpec, String> {
    let (scheme, host, path) = match url.map(str::trim).filter(|u| !u.is_empty()) {
        None => (String::new(), String::new(), "/v2".to_string()),
        Some(u) => {
            let full = if u.starts_with("http://") || u.starts_with("https://") {
                u.to_string()
            } else if u.contains("://") {
                return Err(format!("unsupported scheme in {u:?} (http or https)"));
            } else {
                format!("https://{u}")
            };
            let parsed =
                reqwest::Url::parse(&full).map_err(|e| format!("invalid URL {u:?}: {e}"))?;
            let h = parsed
                .host_str()
                .ok_or_else(|| format!("no host in {u:?}"))?;
            let host = match parsed.port() {
                Some(p) => format!("{h}:{p}"),
                None => h.to_string(),
            };
            let mut path = parsed.path().trim_end_matches('/').to_string();
            if !f.override_path && !path.ends_with("/v2") {
                path.push_str("/v2");
            }
            (parsed.scheme().to_string(), host, path)
        }
    };
    let caps = match &f.capabilities {
        None => Caps::ALL,
        Some(list) if list.is_empty() => Caps::ALL,
        Some(list) => {
            let mut c = Caps {
                pull: false,
                resolve: false,
                push: false,
            };
            for cap in list {
                match cap.to_ascii_lowercase().as_str() {
                    "pull" => c.pull = true,
                    "resolve" => c.resolve = true,
                    "push" => c.push = true,
                    other => return Err(format!("unknown capability {other:?}")),
                }
            }
            c
        }
    };
    let abs = |p: &str| {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            dir.join(p)
        }
    };
    let ca =
        f.ca.map(|c| c.into_vec().iter().map(|p| abs(p)).collect())
            .unwrap_or_default();
    let client = match f.client {
        None => None,
        Some(ClientField::One(p)) => Some((abs(&p), None)),
        Some(ClientField::Many(items)) => match items.into_iter().next() {
            None => None,
            Some(ClientItem::Path(p)) => Some((abs(&p), None)),
            Some(ClientItem::Pair(pair)) => match pair.as_slice() {
                [c, k] if k.is_empty() => Some((abs(c), None)),
                [c, k] => Some((abs(c), Some(abs(k)))),
                _ => return Err(format!("invalid client pair {pair:?}")),
            },
        },
    };
    let dial_timeout = f
        .dial_timeout
        .as_deref()
        .map(parse_go_duration)
        .transpose()?;
    let mut headers = Vec::new();
    if let Some(h) = f.header {
        let mut h: Vec<_> = h.into_iter().collect();
        h.sort_by(|a, b| a.0.cmp(&b.0));
        for (k, v) in h {
            for value in v.into_vec() {
                headers.push((k.clone(), value));
            }
        }
    }
    Ok(HostSpec {
        scheme,
        host,
        path,
        caps,
        tls: TlsSettings {
            skip_verify: f.skip_verify.unwrap_or(false),
            ca,
            client,
            dial_timeout,
        },
        headers,
        is_server,
    })
}

/// Docker's certificate directory: `*.crt` are CAs, `x.cert` + `x.key` a
/// client pair.
fn cert_dir_spec(dir: &Path, registry: &str, plain_http: bool) -> Result<Vec<HostSpec>, Error> {
    let mut spec = default_spec(registry, plain_http);
    let rd = std::fs::read_dir(dir)
        .map_err(|e| Error::Config(format!("reading {}: {e}", dir.display())))?;
    let mut names: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
    names.sort();
    for p in &names {
        match p.extension().and_then(|e| e.to_str()) {
            Some("crt") => spec.tls.ca.push(p.clone()),
            Some("cert") if spec.tls.client.is_none() => {
                let key = p.with_extension("key");
                if key.is_file() {
                    spec.tls.client = Some((p.clone(), Some(key)));
                }
            }
            _ => {}
        }
    }
    Ok(vec![spec])
}

/// Parses Go's `time.ParseDuration` syntax (`1s`, `500ms`, `1m30s`, `1.5h`).
fn parse_go_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {s:?}");
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        if num_end == 0 {
            return Err(bad());
        }
        let n: f64 = rest[..num_end].parse().map_err(|_| bad())?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let secs = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += n * secs;
        rest = &rest[unit_end..];
    }
    Duration::try_from_secs_f64(total).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn write(dir: &Path, sub: &str, text: &str) {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
        std::fs::write(dir.join(sub).join("hosts.toml"), text).unwrap();
    }

    #[test]
    fn defaults_without_config() {
        let s = host_specs(None, "docker.io", true).unwrap();
        assert_eq!(
            (s[0].scheme.as_str(), s[0].host.as_str(), s[0].path.as_str()),
            ("https", "registry-1.docker.io", "/v2")
        );
        let s = host_specs(None, "example.com", false).unwrap();
        assert_eq!(s[0].scheme, "https");
        let s = host_specs(None, "example.com", true).unwrap();
        assert_eq!(s[0].scheme, "http");
        assert_eq!(
            host_specs(None, "127.0.0.1:5000", false).unwrap()[0].scheme,
            "http"
        );
        assert_eq!(
            host_specs(None, "localhost:5000", false).unwrap()[0].scheme,
            "http"
        );
        assert_eq!(
            host_specs(None, "127.0.0.1:443", false).unwrap()[0].scheme,
            "https"
        );
        assert_eq!(
            host_specs(None, "[::1]:5000", false).unwrap()[0].scheme,
            "http"
        );
        assert!(host_specs(None, "x", false).unwrap()[0].is_server);
    }

    #[test]
    fn full_hosts_toml() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "reg.example_5000_",
            r#"
server = "https://reg.example:5000"
ca = "server-ca.pem"
[header]
  x-root = "r"

[host."https://zz-mirror.example/prefix"]
  capabilities = ["pull"]
  skip_verify = true
  dial_timeout = "1.5s"
  [host."https://zz-mirror.example/prefix".header]
    x-custom = ["a", "b"]

[host."http://aa-mirror.example:8080"]
  capabilities = ["pull", "resolve"]
  ca = ["/abs/ca.pem", "rel.pem"]
  client = [["c.cert", "c.key"]]

[host."https://raw.example/v2/upstream"]
  override_path = true
"#,
        );
        let s = host_specs(Some(d.path()), "reg.example:5000", false).unwrap();
        assert_eq!(s.len(), 4);
        let dir = d.path().join("reg.example_5000_");
        // File order, not alphabetical.
        assert_eq!(s[0].host, "zz-mirror.example");
        assert_eq!(s[0].path, "/prefix/v2");
        assert_eq!(
            s[0].caps,
            Caps {
                pull: true,
                resolve: false,
                push: false
            }
        );
        assert!(s[0].tls.skip_verify);
        assert_eq!(s[0].tls.dial_timeout, Some(Duration::from_millis(1500)));
        assert_eq!(
            s[0].headers,
            vec![
                ("x-custom".to_string(), "a".to_string()),
                ("x-custom".to_string(), "b".to_string())
            ]
        );
        assert!(!s[0].is_server);
        assert_eq!(
            (s[1].scheme.as_str(), s[1].host.as_str(), s[1].path.as_str()),
            ("http", "aa-mirror.example:8080", "/v2")
        );
        assert_eq!(
            s[1].tls.ca,
            vec![PathBuf::from("/abs/ca.pem"), dir.join("rel.pem")]
        );
        assert_eq!(
            s[1].tls.client,
            Some((dir.join("c.cert"), Some(dir.join("c.key"))))
        );
        assert_eq!(s[2].path, "/v2/upstream");
        assert_eq!(s[2].caps, Caps::ALL);
        assert_eq!(
            (s[3].scheme.as_str(), s[3].host.as_str()),
            ("https", "reg.example:5000")
        );
        assert!(s[3].is_server);
        assert_eq!(s[3].tls.ca, vec![dir.join("server-ca.pem")]);
        assert_eq!(s[3].headers, vec![("x-root".to_string(), "r".to_string())]);
    }

    #[test]
    fn lookup_order_and_default_namespace() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "_default",
            "[host.\"https://mirror.example\"]\ncapabilities = [\"pull\"]\n",
        );
        write(
            d.path(),
            "other.example:5000",
            "server = \"http://other.example:5000\"\n",
        );
        let s = host_specs(Some(d.path()), "quay.io", false).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].host, "mirror.example");
        // No server: the registry itself.
        assert_eq!(
            (s[1].scheme.as_str(), s[1].host.as_str()),
            ("https", "quay.io")
        );
        let s = host_specs(Some(d.path()), "docker.io", false).unwrap();
        assert_eq!(s[1].host, "registry-1.docker.io");
        let s = host_specs(Some(d.path()), "other.example:5000", false).unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].scheme, "http");
    }

    #[test]
    fn cert_dir_fallback() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("secure.example");
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["ca.crt", "client.cert", "client.key", "README"] {
            std::fs::write(dir.join(f), "x").unwrap();
        }
        let s = host_specs(Some(d.path()), "secure.example", false).unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].tls.ca, vec![dir.join("ca.crt")]);
        assert_eq!(
            s[0].tls.client,
            Some((dir.join("client.cert"), Some(dir.join("client.key"))))
        );
    }

    #[test]
    fn errors_are_reported() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "a.example",
            "[host.\"https://m\"]\ncapabilities = [\"fly\"]\n",
        );
        assert!(matches!(
            host_specs(Some(d.path()), "a.example", false),
            Err(Error::Config(_))
        ));
        write(d.path(), "b.example", "server = \n");
        assert!(matches!(
            host_specs(Some(d.path()), "b.example", false),
            Err(Error::Config(_))
        ));
        write(d.path(), "c.example", "server = \"ftp://c.example\"\n");
        assert!(matches!(
            host_specs(Some(d.path()), "c.example", false),
            Err(Error::Config(_))
        ));
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("1s").unwrap(), Duration::from_secs(1));
        assert_eq!(
            parse_go_duration("500ms").unwrap(),
            Duration::from_millis(500)
        );
        assert_eq!(parse_go_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert!(parse_go_duration("5").is_err());
        assert!(parse_go_duration("s").is_err());
        assert!(parse_go_duration("1x").is_err());
    }
}
