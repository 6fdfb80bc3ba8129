//! The CRI image-service proxy: how Kubernetes pull secrets reach lazy
//! reads.
//!
//! The kubelet's `--image-service-endpoint` points at this socket. Every
//! `runtime.v1.ImageService` call is forwarded unchanged to containerd's
//! CRI (`[cri] containerd_address`); a `PullImage` carrying an `AuthConfig`
//! first leaves its credential in [`SessionCredentials`] under the image's
//! registry host (or `AuthConfig.server_address`'s, as containerd matches
//! it) and repository, so the Prepare calls containerd makes during the
//! pull, and every lazy read long after it, authenticate with it.
//!
//! Trade-offs (docs/kubernetes.md): credentials live in this process's
//! memory only (never on disk, in logs, labels or metrics), so a daemon
//! restart forgets them until the kubelet pulls again (reads of chunks not
//! yet cached then fall back to the docker config / credential helpers);
//! the alternative, reading Kubernetes Secrets, needs API-server
//! credentials on every node and RBAC over every namespace's secrets.

use std::path::PathBuf;
use std::sync::Arc;

use base64::Engine as _;
use hologram_api::cri::{
    self, image_service_client::ImageServiceClient, image_service_server::ImageService,
};
use hologram_oci::Reference;
use hologram_remote::{GivenCredential, SessionCredentials};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

/// Forwards `ImageService` to containerd, remembering pull credentials.
pub struct CriImageProxy {
    upstream: PathBuf,
    channel: tokio::sync::Mutex<Option<Channel>>,
    credentials: Arc<SessionCredentials>,
}

impl CriImageProxy {
    /// `upstream`: containerd's socket (connected on first use, so the
    /// daemon may start before containerd).
    pub fn new(upstream: PathBuf, credentials: Arc<SessionCredentials>) -> Self {
        CriImageProxy {
            upstream,
            channel: tokio::sync::Mutex::new(None),
            credentials,
        }
    }

    async fn client(&self) -> Result<ImageServiceClient<Channel>, Status> {
        let mut g = self.channel.lock().await;
        if let Some(c) = g.as_ref() {
            return Ok(ImageServiceClient::new(c.clone()));
        }
        let c = hologram_api::connect_unix(&self.upstream)
            .await
            .map_err(|e| {
                Status::unavailable(format!(
                    "CRI proxy: cannot reach containerd at {}: {e}",
                    self.upstream.display()
                ))
            })?;
        *g = Some(c.clone());
        Ok(ImageServiceClient::new(c))
    }

    /// Keeps the credential of a `PullImage` (nothing when there is none
    /// or it does not parse; containerd then answers the pull itself).
    fn remember(&self, req: &cri::PullImageRequest) {
        let Some(auth) = req.auth.as_ref() else {
            return;
        };
        let image = req.image.as_ref().map_or("", |i| i.image.as_str());
        let reference = match Reference::parse(image) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "CRI PullImage with credentials for an unparsable image; not kept");
                return;
            }
        };
        let cred = match given_credential(auth) {
            Ok(Some(c)) => c,
            Ok(None) => return,
            Err(why) => {
                tracing::warn!(image = %reference, why, "CRI PullImage credentials not usable; not kept");
                return;
            }
        };
        let host = server_host(&auth.server_address).unwrap_or_else(|| reference.registry.clone());
        self.credentials
            .remember(&host, &reference.repository, cred);
        tracing::info!(image = %reference, registry = %host, "CRI pull credentials kept in memory for lazy reads");
    }
}

/// `AuthConfig.server_address` as a host (`https://r.example/v1/` →
/// `r.example`); `None` when empty.
fn server_host(server_address: &str) -> Option<String> {
    let s = server_address.trim();
    if s.is_empty() {
        return None;
    }
    let s = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
        .unwrap_or(s);
    let host = s.split('/').next().unwrap_or("");
    match host {
        "" => None,
        "index.docker.io" | "registry-1.docker.io" => Some(hologram_oci::DOCKER_HUB.to_owned()),
        h => Some(h.to_ascii_lowercase()),
    }
}

/// The credential an `AuthConfig` carries: username/password, the `auth`
/// field (base64 `user:password`), or an identity token. A bare
/// `registry_token` is not supported (it expires in minutes, long before
/// lazy reads end).
fn given_credential(a: &cri::AuthConfig) -> Result<Option<GivenCredential>, &'static str> {
    if !a.identity_token.is_empty() {
        return Ok(Some(GivenCredential::IdentityToken(
            a.identity_token.clone(),
        )));
    }
    if !a.username.is_empty() || !a.password.is_empty() {
        return Ok(Some(GivenCredential::Basic {
            username: a.username.clone(),
            password: a.password.clone(),
        }));
    }
    if !a.auth.is_empty() {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(a.auth.trim())
            .map_err(|_| "auth is not base64")?;
        let raw = String::from_utf8(raw).map_err(|_| "auth is not UTF-8")?;
        let (u, p) = raw
            .split_once(':')
            .ok_or("auth does not decode to user:password")?;
        return Ok(Some(GivenCredential::Basic {
            username: u.to_owned(),
            password: p.to_owned(),
        }));
    }
    if !a.registry_token.is_empty() {
        return Err("registry_token alone is not supported");
    }
    Ok(None)
}

#[tonic::async_trait]
impl ImageService for CriImageProxy {
    async fn list_images(
        &self,
        request: Request<cri::ListImagesRequest>,
    ) -> Result<Response<cri::ListImagesResponse>, Status> {
        self.client().await?.list_images(request.into_inner()).await
    }

    async fn image_status(
        &self,
        request: Request<cri::ImageStatusRequest>,
    ) -> Result<Response<cri::ImageStatusResponse>, Status> {
        self.client()
            .await?
            .image_status(request.into_inner())
            .await
    }

    async fn pull_image(
        &self,
        request: Request<cri::PullImageRequest>,
    ) -> Result<Response<cri::PullImageResponse>, Status> {
        let req = request.into_inner();
        self.remember(&req);
        self.client().await?.pull_image(req).await
    }

    async fn remove_image(
        &self,
        request: Request<cri::RemoveImageRequest>,
    ) -> Result<Response<cri::RemoveImageResponse>, Status> {
        self.client()
            .await?
            .remove_image(request.into_inner())
            .await
    }

    async fn image_fs_info(
        &self,
        request: Request<cri::ImageFsInfoRequest>,
    ) -> Result<Response<cri::ImageFsInfoResponse>, Status> {
        self.client()
            .await?
            .image_fs_info(request.into_inner())
            .await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn auth_configs() {
        let basic = |u: &str, p: &str| GivenCredential::Basic {
            username: u.into(),
            password: p.into(),
        };
        let a = cri::AuthConfig {
            username: "u".into(),
            password: "p".into(),
            ..Default::default()
        };
        assert_eq!(given_credential(&a), Ok(Some(basic("u", "p"))));
        let a = cri::AuthConfig {
            auth: "dTpwOng=".into(), // u:p:x
            ..Default::default()
        };
        assert_eq!(given_credential(&a), Ok(Some(basic("u", "p:x"))));
        let a = cri::AuthConfig {
            identity_token: "rt".into(),
            ..Default::default()
        };
        assert_eq!(
            given_credential(&a),
            Ok(Some(GivenCredential::IdentityToken("rt".into())))
        );
        assert!(given_credential(&cri::AuthConfig {
            auth: "!!".into(),
            ..Default::default()
        })
        .is_err());
        assert!(given_credential(&cri::AuthConfig {
            registry_token: "t".into(),
            ..Default::default()
        })
        .is_err());
        assert_eq!(given_credential(&cri::AuthConfig::default()), Ok(None));
    }

    #[test]
    fn server_addresses() {
        assert_eq!(server_host(""), None);
        assert_eq!(
            server_host("https://index.docker.io/v1/").as_deref(),
            Some("docker.io")
        );
        assert_eq!(
            server_host("127.0.0.1:5000").as_deref(),
            Some("127.0.0.1:5000")
        );
        assert_eq!(
            server_host("http://R.example/x").as_deref(),
            Some("r.example")
        );
    }

    #[tokio::test]
    async fn pull_credentials_are_kept_per_repository() {
        let creds = SessionCredentials::new();
        let p = CriImageProxy::new(PathBuf::from("/nonexistent"), Arc::clone(&creds));
        p.remember(&cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: "127.0.0.1:5000/team/app:1".into(),
                ..Default::default()
            }),
            auth: Some(cri::AuthConfig {
                username: "u".into(),
                password: "secret".into(),
                ..Default::default()
            }),
            sandbox_config: None,
        });
        assert!(creds.has("127.0.0.1:5000", "team/app"));
        assert!(!creds.has("127.0.0.1:5000", "team/other"));
        // Without containerd the call fails as unavailable, naming the socket.
        let e = p
            .list_images(Request::new(cri::ListImagesRequest::default()))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unavailable);
        assert!(!format!("{creds:?}").contains("secret"));
    }
}
