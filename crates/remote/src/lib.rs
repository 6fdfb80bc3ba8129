//! OCI distribution client for hologram: image references, containerd
//! `hosts.toml` mirrors, docker `config.json` credentials, bearer/basic
//! token auth, manifests (verified), whole blobs (verified), HTTP Range reads
//! for lazy pulling, and pushes.
//!
//! Every network operation is bounded in time ([`RegistryConfig`]'s
//! `request_timeout` per attempt and `total_timeout` per operation,
//! retries and mirror fallback included), so a dead registry yields an
//! error, never a hang. Whole-blob transfers (`fetch_blob`, `push_blob`)
//! get 1 s per MiB on top, and a body that stalls for `request_timeout`
//! fails.
//!
//! # Retries
//! Up to `retries` extra passes with exponential backoff and jitter, only
//! for connect errors, timeouts, 5xx, 408 and 429. A 401 re-authenticates
//! once per request (not counted as a retry); other 4xx, digest mismatches
//! and size limits fail at once.
//!
//! # Authentication
//! Anonymous first. A 401 with `WWW-Authenticate: Bearer realm=..` fetches a
//! token from the realm (with basic credentials from the docker config
//! `auths` entry for the host, else anonymously; an `identitytoken` is
//! exchanged with an OAuth2 `refresh_token` POST) and caches it per
//! (host, scope) until shortly before `expires_in` (default 60 s). Later
//! requests send it proactively; a 401 with a cached token (expired or
//! revoked mid-stream) fetches a new one once, shared by concurrent callers.
//! A `Basic` challenge sends the configured username/password. Credentials
//! go to a token realm only over https or on the registry's own host, and
//! the registry's Authorization header is never forwarded on a redirect to
//! another origin. Where credentials come from (session credentials given
//! at run time, `credHelpers`/`credsStore` helper programs, inline
//! `auths`): see [`creds`].
//!
//! # hosts.toml (containerd certs.d layout)
//! For registry `host:port` the first existing directory of
//! `<hosts_dir>/host_port_`, `<hosts_dir>/host:port`, `<hosts_dir>/_default`
//! is used. Implemented: `server` (defaults to the registry itself),
//! `[host."..."]` mirrors tried in file order before the server,
//! `capabilities` (pull/resolve/push: tags are resolved only by hosts with
//! `resolve`, digests and blobs fetched from hosts with `pull`, pushes go
//! to hosts with `push`), `http://` and `https://` (no scheme = https), URL
//! paths with the implicit `/v2` suffix, `override_path`, `skip_verify`,
//! `ca` (string or list; relative paths are relative to the hosts.toml
//! directory), `header`, `dial_timeout`, `client` (first pair only), the
//! `ns=<registry>` query parameter on mirror requests, and Docker's
//! certificate directory (`*.crt`, `*.cert`/`*.key`) when there is no
//! hosts.toml. Not implemented: `proxy` (environment proxies apply), the
//! https-then-http fallback containerd does for `http://` hosts with TLS
//! settings, and reloading the files (they are read once per registry per
//! client). A host that failed to connect is tried after the others for
//! 30 s.
//!
//! Without hosts.toml: Docker Hub (`docker.io`) is reached at
//! `https://registry-1.docker.io`; other registries over https, or http
//! when `plain_http` is set or the registry is a loopback address
//! (`localhost`, `127.*`, `[::1]`) with a port other than 443.
//!
//! ```no_run
//! # async fn demo() -> Result<(), hologram_remote::Error> {
//! use hologram_remote::{Reference, RegistryBlob, RegistryClient, RegistryConfig};
//! use hologram_source::BlobSource as _;
//! let client = RegistryClient::new(RegistryConfig::default())?;
//! let r = Reference::parse("127.0.0.1:5000/e2e/layers:1")?;
//! let (_index, manifest) = client.resolve_platform(&r).await?;
//! let layer = manifest.image()?.layers.remove(0);
//! let blob = RegistryBlob::new(client.clone(), r, layer.digest, layer.size);
//! let head = blob.read_at(0, 512).await.map_err(|e| hologram_remote::Error::Transport(e.to_string()))?;
//! # let _ = (manifest, head);
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

mod auth;
mod blob;
mod client;
pub mod creds;
mod error;
mod hosts;
mod manifest;
pub mod referrers;

pub use blob::RegistryBlob;

/// containerd's hosts.toml directory, where both the daemon and `hologram`
/// look by default (CRI's `config_path` convention).
pub const DEFAULT_HOSTS_DIR: &str = "/etc/containerd/certs.d";
pub use client::{RegistryClient, RegistryConfig, MAX_RANGE_BODY};
pub use creds::{GivenCredential, SessionCredentials};
pub use error::Error;
pub use hologram_oci::{media_types, Digest, Platform, Reference, DOCKER_HUB, DOCKER_HUB_API_HOST};
pub use manifest::{verify, Manifest};
