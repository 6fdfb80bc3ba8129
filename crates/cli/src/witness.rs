//! `hologram witness`: make, check and serve witnesses (signed statements
//! that an image's UOR-ID is trusted; see crates/trust/README.md).
//!
//! * `keygen --out PREFIX` — an Ed25519 key pair, `PREFIX.key` (0600) and `PREFIX.pub`;
//! * `sign --key KEY REF` — a DSSE envelope for the image's platform manifest;
//! * `verify --key PUB REF` — local verification of a witness from a file or
//!   from the witness endpoint; exits non-zero with the reason;
//! * `serve --listen ADDR --dir DIR` — a witness endpoint serving the
//!   envelopes in DIR (re-read on every request). The server holds no keys:
//!   its `valid: true` only means "I have a witness", and clients verify.

use std::future::Future;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context as _};
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hologram_trust::endpoint::{
    witness_path, ErrorResponse, VerifyRequest, VerifyResponse, WitnessResponse,
};
use hologram_trust::{Envelope, PublicKey, SigningKey, UorId};

use crate::uor::{resolve_image, write_stdout};

/// Environment variable naming the witness endpoint.
pub const ENDPOINT_ENV: &str = "HOLOGRAM_WITNESS_ENDPOINT";
/// Largest witness endpoint answer the client reads.
const MAX_RESPONSE: usize = 4 * 1024 * 1024;
/// Time budget for one call to the witness endpoint.
const ENDPOINT_TIMEOUT: Duration = Duration::from_secs(30);

/// `hologram witness …`
#[derive(clap::Subcommand, Debug)]
pub enum WitnessCommand {
    /// Generate an Ed25519 key pair: PREFIX.key (private, mode 0600) and PREFIX.pub
    Keygen {
        /// Path prefix of the two files
        #[arg(long)]
        out: PathBuf,
        /// Overwrite existing files
        #[arg(long)]
        force: bool,
    },
    /// Sign a witness for an image (its platform manifest and UOR-ID)
    Sign {
        /// Ed25519 private key (PKCS#8 PEM, as `keygen` writes)
        #[arg(long)]
        key: PathBuf,
        #[command(flatten)]
        registry: crate::RegistryArgs,
        /// How long the witness is valid: e.g. 30m, 24h, 7d, 1h30m
        #[arg(long, default_value = "24h", value_parser = parse_duration)]
        expires: Duration,
        /// The predicate's witness_type
        #[arg(long, default_value = "signature")]
        witness_type: String,
        /// The predicate's metadata, a JSON value (signed, not interpreted)
        #[arg(long, value_parser = parse_json)]
        metadata: Option<serde_json::Value>,
        /// Write the envelope here instead of standard output
        #[arg(long)]
        out: Option<PathBuf>,
        /// Also attach the envelope to the image's manifest in the registry
        /// (an OCI artifact referring to it; the snapshotter finds it there)
        #[arg(long)]
        attach: bool,
        /// Image reference
        reference: String,
    },
    /// Verify an image's witness with trusted public keys; fails with the reason
    Verify {
        /// Trusted public key (SPKI PEM: Ed25519 or ECDSA P-256, as cosign writes); repeatable
        #[arg(long = "key", required = true)]
        keys: Vec<PathBuf>,
        #[command(flatten)]
        registry: crate::RegistryArgs,
        /// Witness file (a DSSE envelope, or a saved endpoint answer);
        /// without it the witness endpoint is asked
        #[arg(long)]
        witness: Option<PathBuf>,
        /// Witness endpoint URL, e.g. http://localhost:8081
        #[arg(long, env = ENDPOINT_ENV)]
        endpoint: Option<String>,
        /// Image reference
        reference: String,
    },
    /// Serve the witnesses in a directory over HTTP (GET /v1/witness/{uor_id})
    Serve {
        /// Address to listen on
        #[arg(long, default_value = "127.0.0.1:8081")]
        listen: String,
        /// Directory of witness files (any names; re-read on every request)
        #[arg(long)]
        dir: PathBuf,
    },
}

/// Runs a `hologram witness` command.
pub async fn run(cmd: WitnessCommand) -> anyhow::Result<()> {
    match cmd {
        WitnessCommand::Keygen { out, force } => keygen(&out, force),
        WitnessCommand::Sign {
            key,
            registry,
            expires,
            witness_type,
            metadata,
            out,
            attach,
            reference,
        } => {
            let pem = read_to_string(&key)?;
            let reg_cfg = registry.config();
            let signing_key = SigningKey::from_pem(&pem)
                .with_context(|| format!("cannot use {} as a signing key", key.display()))?;
            let image = resolve_image(&reference, registry.config()).await?;
            let now = SystemTime::now();
            let expires_at = now
                .checked_add(expires)
                .context("--expires is too far in the future")?;
            let env = hologram_trust::sign(
                &signing_key,
                &image.reference,
                &image.manifest_digest,
                &image.uor_id,
                now,
                expires_at,
                &witness_type,
                metadata.unwrap_or_else(|| serde_json::json!({})),
            )?;
            let json = env.to_json_pretty() + "\n";
            if attach {
                let client = hologram_remote::RegistryClient::new(reg_cfg)
                    .context("cannot set up the registry client")?;
                let r = hologram_remote::Reference::parse(&image.reference)
                    .with_context(|| format!("invalid reference {}", image.reference))?;
                let subject = hologram_oci::Descriptor::new(
                    &image.media_type,
                    image.manifest_digest,
                    image.size as u64,
                );
                let d = hologram_remote::referrers::attach(
                    &client,
                    &r,
                    &subject,
                    hologram_trust::DSSE_ARTIFACT_TYPE,
                    bytes::Bytes::from(json.clone().into_bytes()),
                )
                .await
                .context("cannot attach the witness to the image")?;
                eprintln!("attached the witness to {} as {d}", image.reference);
            }
            match out {
                Some(path) => {
                    write_file(&path, json.as_bytes(), 0o644, true)?;
                    eprintln!(
                        "signed {} ({}, {}) until {}: {}",
                        image.reference,
                        image.uor_id,
                        image.manifest_digest,
                        hologram_oci::time::format_rfc3339(expires_at),
                        path.display()
                    );
                }
                None => write_stdout(&json)?,
            }
            Ok(())
        }
        WitnessCommand::Verify {
            keys,
            registry,
            witness,
            endpoint,
            reference,
        } => {
            let trusted = read_public_keys(&keys)?;
            // Read a witness file before touching the network, so a bad file fails fast.
            let from_file = match (&witness, &endpoint) {
                (Some(path), _) => {
                    let bytes = std::fs::read(path)
                        .with_context(|| format!("cannot read {}", path.display()))?;
                    Some(
                        hologram_trust::parse_witness_json(&bytes)
                            .with_context(|| format!("{} is not a witness", path.display()))?,
                    )
                }
                (None, Some(_)) => None,
                (None, None) => bail!(
                    "no witness given: pass --witness FILE, --endpoint URL or set {ENDPOINT_ENV}"
                ),
            };
            let image = resolve_image(&reference, registry.config()).await?;
            let envelope = match (from_file, &endpoint) {
                (Some(env), _) => env,
                (None, Some(url)) => fetch_witness(url, &image.uor_id).await?,
                (None, None) => bail!("no witness given"),
            };
            let verified = hologram_trust::verify(
                &envelope,
                &trusted,
                &image.manifest_digest,
                &image.uor_id,
                SystemTime::now(),
            )
            .with_context(|| {
                format!("witness of {reference} ({}) is not accepted", image.uor_id)
            })?;
            let fmt = hologram_oci::time::format_rfc3339;
            write_stdout(&format!(
                "verified {reference}\n  uor_id:       {}\n  manifest:     {}\n  signed by:    {}\n  witness_type: {}\n  issued_at:    {}\n  expires_at:   {}\n",
                verified.uor_id,
                verified.manifest_digest,
                verified.keyid,
                verified.witness_type,
                fmt(verified.issued_at),
                fmt(verified.expires_at),
            ))?;
            Ok(())
        }
        WitnessCommand::Serve { listen, dir } => {
            let loaded = load(&dir)
                .await
                .with_context(|| format!("cannot serve witnesses from {}", dir.display()))?;
            let listener = tokio::net::TcpListener::bind(&listen)
                .await
                .with_context(|| format!("cannot listen on {listen}"))?;
            let addr = listener
                .local_addr()
                .context("cannot read the listening address")?;
            eprintln!(
                "serving {} witnesses for {} UOR-IDs from {} on http://{addr}",
                loaded.len(),
                loaded.by_uor.len(),
                dir.display()
            );
            for s in &loaded.skipped {
                eprintln!("  skipping {}: {}", s.path.display(), s.reason);
            }
            serve(listener, dir, shutdown_signal()).await
        }
    }
}

/// Parses a duration: one or more `<number><unit>` with unit `s`, `m`, `h`,
/// `d` or `w` (`90s`, `30m`, `24h`, `7d`, `1h30m`). Zero is refused.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let text = s.trim();
    if text.is_empty() {
        return Err("empty duration (expected e.g. 30m, 24h, 7d)".to_string());
    }
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit: u64 = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            'w' => 7 * 86_400,
            _ => return Err(format!("{s:?}: unknown unit {c:?} (use s, m, h, d or w)")),
        };
        if digits.is_empty() {
            return Err(format!("{s:?}: unit {c:?} without a number"));
        }
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("{s:?}: number too large"))?;
        total = n
            .checked_mul(unit)
            .and_then(|secs| total.checked_add(secs))
            .ok_or_else(|| format!("{s:?}: duration too large"))?;
        digits.clear();
    }
    if !digits.is_empty() {
        return Err(format!(
            "{s:?}: missing unit after {digits} (use s, m, h, d or w)"
        ));
    }
    if total == 0 {
        return Err(format!("{s:?}: duration must be positive"));
    }
    Ok(Duration::from_secs(total))
}

fn parse_json(s: &str) -> Result<serde_json::Value, String> {
    serde_json::from_str(s).map_err(|e| format!("not JSON: {e}"))
}

fn read_to_string(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

fn read_public_keys(paths: &[PathBuf]) -> anyhow::Result<Vec<PublicKey>> {
    paths
        .iter()
        .map(|p| {
            PublicKey::from_pem(&read_to_string(p)?)
                .with_context(|| format!("cannot use {} as a trusted public key", p.display()))
        })
        .collect()
}

fn keygen(prefix: &Path, force: bool) -> anyhow::Result<()> {
    let mut key_path = prefix.as_os_str().to_owned();
    key_path.push(".key");
    let mut pub_path = prefix.as_os_str().to_owned();
    pub_path.push(".pub");
    let (key_path, pub_path) = (PathBuf::from(key_path), PathBuf::from(pub_path));
    if !force {
        for p in [&key_path, &pub_path] {
            if p.exists() {
                bail!("{} exists; pass --force to replace it", p.display());
            }
        }
    }
    let key = SigningKey::generate();
    let public = key.public();
    write_file(&key_path, key.to_pem().as_bytes(), 0o600, force)?;
    write_file(&pub_path, public.to_pem().as_bytes(), 0o644, force)?;
    eprintln!(
        "wrote {} (private: keep it secret) and {} (keyid {})",
        key_path.display(),
        pub_path.display(),
        public.keyid()
    );
    Ok(())
}

/// Writes `path` with permission bits `mode`, through a temporary file in
/// the same directory and a rename, so readers (such as `serve`) never see
/// a half-written file and a secret is never readable by others.
fn write_file(path: &Path, bytes: &[u8], mode: u32, overwrite: bool) -> anyhow::Result<()> {
    if !overwrite && path.exists() {
        bail!("{} exists", path.display());
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .with_context(|| format!("{} is not a file path", path.display()))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        // The umask may have narrowed `mode`; widen it back to exactly `mode`.
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("cannot write {}", path.display()))
}

/// Fetches the witness of `uor` from the endpoint at `base`. The answer's
/// `valid` is ignored: only the envelope matters, and it is verified by the caller.
pub(crate) async fn fetch_witness(base: &str, uor: &UorId) -> anyhow::Result<Envelope> {
    let url = format!("{}{}", base.trim_end_matches('/'), witness_path(uor));
    let client = reqwest::Client::builder()
        .timeout(ENDPOINT_TIMEOUT)
        .build()
        .context("cannot set up the HTTP client")?;
    let mut resp = client
        .get(&url)
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .with_context(|| format!("cannot reach the witness endpoint at {url}"))?;
    let status = resp.status();
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .with_context(|| format!("reading the answer of {url}"))?
    {
        if body.len() + chunk.len() > MAX_RESPONSE {
            bail!("the witness endpoint's answer from {url} is larger than {MAX_RESPONSE} bytes");
        }
        body.extend_from_slice(&chunk);
    }
    if status == reqwest::StatusCode::NOT_FOUND {
        bail!("the witness endpoint has no witness for {uor} ({url}: 404)");
    }
    if !status.is_success() {
        let excerpt: String = String::from_utf8_lossy(&body).chars().take(200).collect();
        bail!("the witness endpoint answered {status} for {url}: {excerpt}");
    }
    let answer: WitnessResponse = serde_json::from_slice(&body).with_context(|| {
        format!("the witness endpoint's answer from {url} is not a witness response")
    })?;
    match answer.envelope {
        Some(env) => Ok(env),
        None => bail!(
            "the witness endpoint answered for {uor} without an envelope (its \"valid\": {} is never trusted without a verified signature)",
            answer.valid
        ),
    }
}

// ---- the witness endpoint server ----

#[derive(Clone)]
struct ServeState {
    dir: Arc<PathBuf>,
}

/// Serves the witness endpoint on `listener` until `shutdown` completes.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    dir: PathBuf,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    axum::serve(listener, router(dir))
        .with_graceful_shutdown(shutdown)
        .await
        .context("the witness server failed")
}

fn router(dir: PathBuf) -> Router {
    Router::new()
        .route("/v1/witness/verify", post(post_verify))
        .route("/v1/witness/{uor_id}", get(get_witness))
        .route("/v1/manifests/{uor_id}", get(get_manifest))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint".to_string(), None) })
        .with_state(ServeState { dir: Arc::new(dir) })
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = ctrl_c.await;
        }
    }
}

fn error(status: StatusCode, message: String, uor_id: Option<String>) -> Response {
    (
        status,
        Json(ErrorResponse {
            error: message,
            uor_id,
        }),
    )
        .into_response()
}

/// Reads the directory off the async threads.
async fn load(dir: &Path) -> anyhow::Result<hologram_trust::WitnessDir> {
    let dir = dir.to_path_buf();
    Ok(
        tokio::task::spawn_blocking(move || hologram_trust::load_dir(&dir))
            .await
            .context("the directory reading task failed")??,
    )
}

/// Loads the directory and returns the envelopes for `uor_id`, or an error response.
async fn witnesses_for(
    state: &ServeState,
    uor_id: &str,
) -> Result<(UorId, Vec<Envelope>), Response> {
    let uor =
        UorId::parse(uor_id).map_err(|e| error(StatusCode::BAD_REQUEST, e.to_string(), None))?;
    let loaded = load(&state.dir).await.map_err(|e| {
        eprintln!("witness server: {e:#}");
        error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot read the witness directory".to_string(),
            Some(uor.to_string()),
        )
    })?;
    Ok((uor, loaded.get(&uor).to_vec()))
}

async fn get_witness(
    State(state): State<ServeState>,
    UrlPath(uor_id): UrlPath<String>,
) -> Response {
    let (uor, envs) = match witnesses_for(&state, &uor_id).await {
        Ok(found) => found,
        Err(resp) => return resp,
    };
    match best_envelope(&envs, SystemTime::now()).map(WitnessResponse::from_envelope) {
        Some(Ok(answer)) => (StatusCode::OK, Json(answer)).into_response(),
        Some(Err(e)) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            e.to_string(),
            Some(uor.to_string()),
        ),
        None => error(
            StatusCode::NOT_FOUND,
            format!("no witness for {uor}"),
            Some(uor.to_string()),
        ),
    }
}

/// `GET /v1/manifests/{uor_id}`: the resolver side of the endpoint API,
/// answered from manifest files in the directory (`hologram uor resolve --save`).
async fn get_manifest(
    State(state): State<ServeState>,
    UrlPath(uor_id): UrlPath<String>,
) -> Response {
    let uor = match UorId::parse(&uor_id) {
        Ok(u) => u,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string(), None),
    };
    let dir = state.dir.as_ref().clone();
    match tokio::task::spawn_blocking(move || crate::uor::find_in_dir(&dir, &uor)).await {
        Ok(Ok(Some(bytes))) => {
            let media = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v["mediaType"].as_str().map(str::to_owned))
                .unwrap_or_else(|| "application/octet-stream".to_owned());
            ([(axum::http::header::CONTENT_TYPE, media)], bytes).into_response()
        }
        Ok(Ok(None)) => error(
            StatusCode::NOT_FOUND,
            format!("no manifest for {uor}"),
            Some(uor.to_string()),
        ),
        Ok(Err(e)) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{e:#}"),
            Some(uor.to_string()),
        ),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            e.to_string(),
            Some(uor.to_string()),
        ),
    }
}

async fn post_verify(
    State(state): State<ServeState>,
    body: Result<Json<VerifyRequest>, JsonRejection>,
) -> Response {
    let Json(req) = match body {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text(), None),
    };
    match witnesses_for(&state, &req.uor_id).await {
        Ok((uor, envs)) => (
            StatusCode::OK,
            Json(VerifyResponse {
                uor_id: uor.to_string(),
                valid: !envs.is_empty(),
            }),
        )
            .into_response(),
        Err(resp) => resp,
    }
}

/// The envelope to hand out when a directory holds several for one UOR-ID:
/// one not expired yet if any, the most recently issued among those. (The
/// server verifies nothing; this is only about being useful.)
fn best_envelope(envs: &[Envelope], now: SystemTime) -> Option<&Envelope> {
    let times = |env: &Envelope| -> (bool, Option<SystemTime>) {
        let Ok(st) = env.peek_statement() else {
            return (false, None);
        };
        let issued = hologram_oci::time::parse_rfc3339(&st.predicate.issued_at).ok();
        let live =
            hologram_oci::time::parse_rfc3339(&st.predicate.expires_at).is_ok_and(|e| e > now);
        (live, issued)
    };
    envs.iter().max_by_key(|env| times(env))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn durations() {
        let secs = |s: &str| parse_duration(s).unwrap().as_secs();
        assert_eq!(secs("24h"), 86_400);
        assert_eq!(secs("30m"), 1800);
        assert_eq!(secs("7d"), 7 * 86_400);
        assert_eq!(secs("45s"), 45);
        assert_eq!(secs("2w"), 14 * 86_400);
        assert_eq!(secs("1h30m"), 5400);
        assert_eq!(secs("1d12h"), 129_600);
        assert_eq!(secs(" 90s "), 90);
        assert_eq!(secs("0h5m"), 300);
        for bad in [
            "",
            "   ",
            "24",
            "h",
            "24x",
            "1.5h",
            "-1h",
            "0h",
            "0s0m",
            "1h 30m",
            "24H",
            "99999999999999999999s",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse_duration("18446744073709551615w").is_err());
        assert!(parse_duration("24").unwrap_err().contains("missing unit"));
    }

    #[test]
    fn keygen_writes_a_usable_private_key_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let prefix = dir.path().join("signer");
        keygen(&prefix, false).unwrap();
        let key_path = dir.path().join("signer.key");
        let pub_path = dir.path().join("signer.pub");
        let mode = std::fs::metadata(&key_path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let key = SigningKey::from_pem(&std::fs::read_to_string(&key_path).unwrap()).unwrap();
        let public = PublicKey::from_pem(&std::fs::read_to_string(&pub_path).unwrap()).unwrap();
        assert_eq!(key.public(), public);
        // No clobbering without --force.
        let err = keygen(&prefix, false).unwrap_err();
        assert!(err.to_string().contains("--force"), "{err}");
        keygen(&prefix, true).unwrap();
        let again = SigningKey::from_pem(&std::fs::read_to_string(&key_path).unwrap()).unwrap();
        assert_ne!(again.public(), public);
        assert_eq!(
            std::fs::metadata(&key_path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // No temporary files left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    fn witness_for(
        key: &SigningKey,
        manifest: &[u8],
        issued: SystemTime,
        ttl: Duration,
    ) -> Envelope {
        let digest = hologram_oci::Digest::of(manifest);
        hologram_trust::sign(
            key,
            "registry.example/app:1",
            &digest,
            &UorId::of(manifest),
            issued,
            issued + ttl,
            "ci",
            serde_json::json!({}),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn server_serves_witnesses_that_clients_verify() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::generate();
        let manifest = br#"{"schemaVersion":2,"layers":[]}"#;
        let uor = UorId::of(manifest);
        let now = SystemTime::now();
        let old = witness_for(
            &key,
            manifest,
            now - Duration::from_secs(7200),
            Duration::from_secs(3600),
        );
        let fresh = witness_for(&key, manifest, now, Duration::from_secs(3600));
        std::fs::write(dir.path().join("a-fresh"), fresh.to_json_pretty()).unwrap();
        std::fs::write(dir.path().join("b-old.json"), old.to_json_pretty()).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not a witness").unwrap();

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, dir.path().to_path_buf(), async {
            let _ = stopped.await;
        }));

        // GET: the fresh witness, which verifies locally.
        let env = fetch_witness(&format!("{base}/"), &uor).await.unwrap();
        assert_eq!(env, fresh);
        let digest = hologram_oci::Digest::of(manifest);
        hologram_trust::verify(&env, &[key.public()], &digest, &uor, SystemTime::now()).unwrap();
        let http = reqwest::Client::new();
        let answer: serde_json::Value = serde_json::from_slice(
            &http
                .get(format!("{base}{}", witness_path(&uor)))
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap(),
        )
        .unwrap();
        assert_eq!(answer["uor_id"], uor.to_string());
        assert_eq!(answer["valid"], true);
        assert_eq!(answer["witness_type"], "ci");

        // A witness added later is seen without a restart.
        let other_manifest = b"another manifest";
        let other = UorId::of(other_manifest);
        let err = fetch_witness(&base, &other).await.unwrap_err();
        assert!(err.to_string().contains("no witness"), "{err:#}");
        std::fs::write(
            dir.path().join("later"),
            witness_for(&key, other_manifest, now, Duration::from_secs(60)).to_json_pretty(),
        )
        .unwrap();
        assert!(fetch_witness(&base, &other).await.is_ok());

        // 404 and 400 are JSON.
        let resp = http
            .get(format!("{base}{}", witness_path(&UorId::of(b"nothing"))))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), reqwest::StatusCode::NOT_FOUND);
        let body: ErrorResponse = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
        assert!(body.error.contains("no witness"));
        let resp = http
            .get(format!("{base}/v1/witness/uor:v1:r96:00"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), reqwest::StatusCode::BAD_REQUEST);

        // POST /v1/witness/verify says whether it has a witness.
        for (id, has) in [(uor, true), (UorId::of(b"nothing"), false)] {
            let resp = http
                .post(format!("{base}/v1/witness/verify"))
                .header("content-type", "application/json")
                .body(
                    serde_json::to_vec(&VerifyRequest {
                        uor_id: id.to_string(),
                    })
                    .unwrap(),
                )
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), reqwest::StatusCode::OK);
            let v: VerifyResponse = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
            assert_eq!(
                v,
                VerifyResponse {
                    uor_id: id.to_string(),
                    valid: has
                }
            );
        }
        let resp = http
            .post(format!("{base}/v1/witness/verify"))
            .header("content-type", "application/json")
            .body("{")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), reqwest::StatusCode::BAD_REQUEST);

        let _ = stop.send(());
        server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn endpoint_errors_are_clear() {
        // Nothing listens here.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let err = fetch_witness(&format!("http://{addr}"), &UorId::of(b"x"))
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("cannot reach the witness endpoint"),
            "{err:#}"
        );

        // A port in use is a clear bind error.
        let busy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = busy.local_addr().unwrap().to_string();
        let dir = tempfile::tempdir().unwrap();
        let err = run(WitnessCommand::Serve {
            listen: addr.clone(),
            dir: dir.path().to_path_buf(),
        })
        .await
        .unwrap_err();
        assert!(
            err.to_string()
                .contains(&format!("cannot listen on {addr}")),
            "{err:#}"
        );
        // A missing directory too.
        let err = run(WitnessCommand::Serve {
            listen: "127.0.0.1:0".to_string(),
            dir: dir.path().join("absent"),
        })
        .await
        .unwrap_err();
        assert!(format!("{err:#}").contains("absent"), "{err:#}");
    }
}
