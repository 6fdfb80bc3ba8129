//! Image references (`[registry/]repository[:tag][@digest]`) with Docker's
//! normalisation rules.

use std::fmt;
use std::str::FromStr;

use crate::Digest;

/// Why a text is not an image reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid image reference {0}")]
pub struct ReferenceError(String);

/// The registry name Docker Hub references normalise to.
pub const DOCKER_HUB: &str = "docker.io";
/// The host that actually serves Docker Hub's distribution API.
pub const DOCKER_HUB_API_HOST: &str = "registry-1.docker.io";

/// A parsed, normalised image reference.
///
/// `registry` is `host[:port]` as written (Docker Hub aliases become
/// `docker.io`), `repository` is the path inside it (`library/` is added for
/// single-component Docker Hub names). When neither tag nor digest is given
/// the tag is `latest`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    /// `host[:port]`, e.g. `docker.io`, `127.0.0.1:5000`.
    pub registry: String,
    /// Repository path, e.g. `library/alpine`, `e2e/layers`.
    pub repository: String,
    /// Tag, if any.
    pub tag: Option<String>,
    /// Digest, if any.
    pub digest: Option<Digest>,
}

impl Reference {
    /// Parses `s`: `alpine` → `docker.io/library/alpine:latest`,
    /// `127.0.0.1:5000/e2e/layers:1`, `host/repo@sha256:...`,
    /// `host/repo:tag@sha256:...`.
    pub fn parse(s: &str) -> Result<Self, ReferenceError> {
        let bad = |why: &str| {
            ReferenceError(format!(
                "{:?}: {why}",
                s.chars().take(300).collect::<String>()
            ))
        };
        if s.is_empty() {
            return Err(bad("empty"));
        }
        if s.len() > 4096 {
            return Err(bad("too long"));
        }
        let (name_tag, digest) = match s.split_once('@') {
            Some((n, d)) => {
                let d = Digest::parse(d).map_err(|e| bad(&e.to_string()))?;
                (n, Some(d))
            }
            None => (s, None),
        };
        // A tag is a ':' after the last '/'.
        let last_slash = name_tag.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name_tag[last_slash..].rfind(':') {
            Some(i) => {
                let i = last_slash + i;
                (&name_tag[..i], Some(name_tag[i + 1..].to_string()))
            }
            None => (name_tag, None),
        };
        if let Some(t) = &tag {
            if !valid_tag(t) {
                return Err(bad(&format!("invalid tag {t:?}")));
            }
        }
        let (mut registry, mut repository) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.')
                    || first.contains(':')
                    || first == "localhost"
                    || first.chars().any(|c| c.is_ascii_uppercase()) =>
            {
                (first.to_string(), rest.to_string())
            }
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        if !valid_registry(&registry) {
            return Err(bad(&format!("invalid registry host {registry:?}")));
        }
        if registry == "index.docker.io" || registry == DOCKER_HUB_API_HOST {
            registry = DOCKER_HUB.to_string();
        }
        if registry == DOCKER_HUB && !repository.contains('/') {
            repository = format!("library/{repository}");
        }
        if repository.is_empty() || !repository.split('/').all(valid_component) {
            return Err(bad(&format!(
                "invalid repository {repository:?} (lowercase letters, digits and separators . _ __ - only)"
            )));
        }
        if repository.len() > 255 {
            return Err(bad("repository name longer than 255 characters"));
        }
        let tag = match (&tag, &digest) {
            (None, None) => Some("latest".to_string()),
            _ => tag,
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// The tag or digest used to address the manifest: the digest when
    /// there is one (it is the stronger name), else the tag.
    pub fn manifest_reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".to_owned(),
        }
    }

    /// This reference with `digest` and no tag (same registry/repository).
    pub fn with_digest(&self, digest: &Digest) -> Reference {
        Reference {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            tag: None,
            digest: Some(*digest),
        }
    }

    /// The same repository, without tag or digest (`registry/repository`).
    pub fn repository_name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// This reference with `tag` and no digest.
    pub fn with_tag(&self, tag: &str) -> Reference {
        Reference {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            tag: Some(tag.to_string()),
            digest: None,
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;
    fn from_str(s: &str) -> Result<Self, ReferenceError> {
        Reference::parse(s)
    }
}

fn valid_tag(t: &str) -> bool {
    let mut chars = t.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphanumeric() || c == '_' => {}
        _ => return false,
    }
    t.len() <= 128 && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-')
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run.
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn valid_registry(r: &str) -> bool {
    let (host_ok, port) = if let Some(rest) = r.strip_prefix('[') {
        // [ipv6]:port
        let Some((h, after)) = rest.split_once(']') else {
            return false;
        };
        let ok = !h.is_empty()
            && h.chars()
                .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.');
        let port = match after {
            "" => None,
            a => match a.strip_prefix(':') {
                Some(p) => Some(p),
                None => return false,
            },
        };
        (ok, port)
    } else {
        let (h, port) = match r.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (r, None),
        };
        let ok = !h.is_empty()
            && h.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
            && !h.starts_with(['.', '-'])
            && !h.ends_with(['.', '-']);
        (ok, port)
    };
    host_ok
        && match port {
            None => true,
            Some(p) => !p.is_empty() && p.len() <= 5 && p.chars().all(|c| c.is_ascii_digit()),
        }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn p(s: &str) -> Reference {
        match Reference::parse(s) {
            Ok(r) => r,
            Err(e) => panic!("{s}: {e}"),
        }
    }

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn docker_hub_defaults() {
        let r = p("alpine");
        assert_eq!(r.registry, "docker.io");
        assert_eq!(r.repository, "library/alpine");
        assert_eq!(r.tag.as_deref(), Some("latest"));
        assert_eq!(r.digest, None);
        assert_eq!(r.to_string(), "docker.io/library/alpine:latest");
        assert_eq!(p("alpine:3.19").tag.as_deref(), Some("3.19"));
        assert_eq!(p("user/app").repository, "user/app");
        assert_eq!(p("user/app").registry, "docker.io");
        assert_eq!(p("index.docker.io/alpine").repository, "library/alpine");
        assert_eq!(
            p("docker.io/library/alpine:1").to_string(),
            "docker.io/library/alpine:1"
        );
    }

    #[test]
    fn registries_with_ports() {
        let r = p("127.0.0.1:5000/e2e/layers:1");
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "e2e/layers");
        assert_eq!(r.tag.as_deref(), Some("1"));
        assert_eq!(r.to_string(), "127.0.0.1:5000/e2e/layers:1");
        let r = p("127.0.0.1:5000/repo");
        assert_eq!(r.tag.as_deref(), Some("latest"));
        assert_eq!(p("localhost/repo").registry, "localhost");
        assert_eq!(p("localhost:5000/a/b/c:t").repository, "a/b/c");
        assert_eq!(p("[::1]:5000/repo:t").registry, "[::1]:5000");
        assert_eq!(p("ghcr.io/owner/img").registry, "ghcr.io");
    }

    #[test]
    fn digests() {
        let r = p(&format!("host.example/repo@{D}"));
        assert_eq!(r.tag, None);
        assert_eq!(r.digest.map(|d| d.to_string()).as_deref(), Some(D));
        assert_eq!(r.manifest_reference(), D);
        assert_eq!(r.to_string(), format!("host.example/repo@{D}"));
        let r = p(&format!("host.example:443/repo:v1@{D}"));
        assert_eq!(r.tag.as_deref(), Some("v1"));
        assert_eq!(r.manifest_reference(), D);
        assert_eq!(Reference::parse(&r.to_string()).ok(), Some(r));
    }

    #[test]
    fn rejects_invalid() {
        for bad in [
            "",
            "host.example/Repo",
            "repo:",
            "repo:-tag",
            "repo@sha256:short",
            "host.example//repo",
            "host.example/repo/",
            "host.example/re--po_",
            "host.example/a...b",
            "host.example:port/repo",
            "host.example/repo@sha256:/etc/passwd",
            "host.example/repo@SHA256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ] {
            assert!(
                Reference::parse(bad).is_err(),
                "{bad:?} parsed"
            );
        }
        // Valid separators.
        p("host.example/a-b__c.d_e---f");
    }
}
