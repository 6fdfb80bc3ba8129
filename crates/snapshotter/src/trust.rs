//! The trust gate: before an image layer is mounted lazily or unpacked,
//! check the chain witness signature → UOR-ID → manifest bytes → layer.
//!
//! For the layer's image (from the remote-snapshot labels) the gate fetches
//! the manifest by digest (the registry client checks the bytes against the
//! digest), computes its UOR-ID, gathers witnesses (the endpoint, the local
//! witness directory), and verifies them locally against the trusted keys
//! (`hologram-trust`). A server's `valid: true` is never trusted. The policy
//! then allows, warns (counted) or, in enforce mode, refuses the Prepare with
//! a message naming the image, its UOR-ID and the reason. Results are cached
//! per manifest digest, so a pull verifies once, not once per layer.
//!
//! Refused in both modes, because no policy makes them trustworthy: a
//! manifest whose bytes do not match its digest, and a layer that is not in
//! its image's manifest.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use hologram_remote::{Reference, RegistryClient, RegistryConfig};
use hologram_store::StoreError;
use hologram_telemetry::Metrics;
use hologram_trust::{
    decide, verify_any, Decision, Envelope, Mode, PublicKey, UorId, WitnessResponse,
};

use crate::remote::{
    LABEL_CRI_IMAGE_REF, LABEL_CRI_LAYER_DIGEST, LABEL_CRI_MANIFEST_DIGEST, LABEL_STARGZ_DIGEST,
    LABEL_STARGZ_REFERENCE,
};

/// Provenance labels (with `HOLOGRAM_VERBOSE=1`).
pub const LABEL_UOR_ID: &str = "hologram.uor_id";
pub const LABEL_WITNESS_OK: &str = "hologram.witness_ok";
pub const LABEL_LEASE_ID: &str = "hologram.lease_id";
pub const LABEL_CTP96_SESSION: &str = "hologram.ctp96_session";
pub const LABEL_ENFORCE_MODE: &str = "hologram.enforce_mode";
pub const LABEL_NETWORK: &str = "hologram.network";

/// How long a verdict that is not an allow is remembered: long enough for
/// the layers of one pull, short enough that a fixed witness takes effect.
const NEGATIVE_TTL: Duration = Duration::from_secs(5);
/// Longest an allow is remembered (also bounded by the witness's expiry).
const POSITIVE_TTL: Duration = Duration::from_secs(600);

/// Settings of the gate.
#[derive(Debug, Clone)]
pub struct TrustConfig {
    pub mode: Mode,
    pub endpoint: Option<String>,
    pub dir: Option<PathBuf>,
    pub keys: Vec<PublicKey>,
    pub verbose: bool,
    /// Also look for witnesses attached to the manifest in the registry.
    pub referrers: bool,
    pub registry: RegistryConfig,
}

/// What the gate established about one image.
#[derive(Debug, Clone)]
pub struct Provenance {
    pub image: String,
    pub manifest_digest: String,
    pub uor_id: UorId,
    /// The manifest, parsed (its bytes matched the digest).
    pub manifest: serde_json::Value,
    pub witness_ok: bool,
}

#[derive(Debug, Clone)]
enum Verdict {
    Allow(Provenance),
    Warn(Option<Provenance>, String),
    Deny(String),
}

/// See the module documentation.
pub struct TrustGate {
    cfg: TrustConfig,
    client: RegistryClient,
    http: reqwest::Client,
    rt: tokio::runtime::Handle,
    cache: Mutex<HashMap<String, (Instant, Verdict)>>,
    metrics: Option<Arc<Metrics>>,
}

impl std::fmt::Debug for TrustGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustGate")
            .field("mode", &self.cfg.mode)
            .finish_non_exhaustive()
    }
}

fn mode_name(m: Mode) -> &'static str {
    match m {
        Mode::Enforce => "enforce",
        Mode::Warn => "warn",
    }
}

impl TrustGate {
    pub fn new(
        cfg: TrustConfig,
        rt: tokio::runtime::Handle,
        metrics: Option<Arc<Metrics>>,
    ) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let client = RegistryClient::new(cfg.registry.clone()).context("trust: registry client")?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .context("trust: HTTP client for the witness endpoint")?;
        Ok(TrustGate {
            cfg,
            client,
            http,
            rt,
            cache: Mutex::new(HashMap::new()),
            metrics,
        })
    }

    pub fn enforcing(&self) -> bool {
        matches!(self.cfg.mode, Mode::Enforce)
    }

    fn count(&self, op: &str, ok: bool) {
        if let Some(m) = &self.metrics {
            m.witness_op(op, if ok { "ok" } else { "error" });
        }
    }

    /// Checks the image of an image-layer Prepare. `Ok(Some)` with what was
    /// established, `Ok(None)` when allowed without provenance (warn mode),
    /// `Err` (FailedPrecondition) when refused.
    pub fn check_layer(
        &self,
        chain_id: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<Option<Provenance>, StoreError> {
        let image = labels
            .get(LABEL_CRI_IMAGE_REF)
            .or_else(|| labels.get(LABEL_STARGZ_REFERENCE));
        let layer = labels
            .get(LABEL_CRI_LAYER_DIGEST)
            .or_else(|| labels.get(LABEL_STARGZ_DIGEST));
        let (Some(image), Some(layer)) = (image, layer) else {
            let reason = format!(
                "layer {chain_id} has no provenance (the client passed no image or layer labels, as plain `ctr pull` does); pull with `hologram pull` or through CRI"
            );
            return self.no_verdict(&reason);
        };
        let manifest_digest = labels.get(LABEL_CRI_MANIFEST_DIGEST).cloned();
        let key = manifest_digest
            .clone()
            .unwrap_or_else(|| format!("ref:{image}"));
        let cached = self.cache.lock().ok().and_then(|c| {
            c.get(&key)
                .filter(|(until, _)| *until > Instant::now())
                .map(|(_, v)| v.clone())
        });
        let verdict = match cached {
            Some(v) => v,
            None => {
                let (v, ttl) = self.evaluate(image, manifest_digest.as_deref());
                if let Ok(mut c) = self.cache.lock() {
                    c.retain(|_, (until, _)| *until > Instant::now());
                    c.insert(key, (Instant::now() + ttl, v.clone()));
                }
                v
            }
        };
        match verdict {
            Verdict::Allow(p) => {
                in_manifest(&p, layer)?;
                Ok(Some(p))
            }
            Verdict::Warn(p, reason) => {
                if let Some(p) = &p {
                    in_manifest(p, layer)?;
                }
                tracing::warn!(image = %image, reason = %reason, "image not verified; allowed because trust mode is warn");
                Ok(p)
            }
            Verdict::Deny(reason) => Err(StoreError::FailedPrecondition(reason)),
        }
    }

    fn no_verdict(&self, reason: &str) -> Result<Option<Provenance>, StoreError> {
        self.count("no_provenance", false);
        if self.enforcing() {
            return Err(StoreError::FailedPrecondition(format!(
                "enforce mode: {reason}"
            )));
        }
        tracing::warn!(reason = %reason, "unverified layer allowed because trust mode is warn");
        Ok(None)
    }

    /// Resolves, fetches witnesses, verifies; returns the verdict and how
    /// long it may be cached.
    fn evaluate(&self, image: &str, manifest_digest: Option<&str>) -> (Verdict, Duration) {
        let mode = self.cfg.mode;
        let deny_or_warn = |p: Option<Provenance>, reason: String| match mode {
            Mode::Enforce => (Verdict::Deny(reason), NEGATIVE_TTL),
            Mode::Warn => (Verdict::Warn(p, reason), NEGATIVE_TTL),
        };
        let reference = match Reference::parse(image) {
            Ok(mut r) => {
                if let Some(d) = manifest_digest {
                    r.digest = Some(d.to_owned());
                }
                r
            }
            Err(e) => return deny_or_warn(None, format!("image {image}: invalid reference: {e}")),
        };
        let fetched = self.rt.block_on(async {
            if reference.digest.is_some() {
                self.client.fetch_manifest(&reference).await
            } else {
                self.client
                    .resolve_platform(&reference)
                    .await
                    .map(|(_, m)| m)
            }
        });
        let manifest = match fetched {
            Ok(m) => m,
            Err(hologram_remote::Error::DigestMismatch { expected, actual }) => {
                self.count("resolve", false);
                // No mode lets this through: the registry served other bytes.
                return (
                    Verdict::Deny(format!(
                        "image {image}: manifest served with bytes that do not match its digest (expected {expected}, got {actual})"
                    )),
                    NEGATIVE_TTL,
                );
            }
            Err(e) => {
                self.count("resolve", false);
                return deny_or_warn(
                    None,
                    format!("image {image}: cannot fetch its manifest to verify it: {e}"),
                );
            }
        };
        if let Some(m) = &self.metrics {
            m.resolver_op("resolve", "ok");
        }
        let uor = UorId::of(&manifest.bytes);
        let doc: serde_json::Value = match serde_json::from_slice(&manifest.bytes) {
            Ok(d) => d,
            Err(e) => {
                return (
                    Verdict::Deny(format!("image {image}: manifest is not JSON: {e}")),
                    NEGATIVE_TTL,
                )
            }
        };
        let mut prov = Provenance {
            image: image.to_owned(),
            manifest_digest: manifest.digest.clone(),
            uor_id: uor,
            manifest: doc,
            witness_ok: false,
        };
        let (envelopes, notes) = self.witnesses(&uor, &reference, &manifest.digest);
        let result = if self.cfg.keys.is_empty() {
            Err("no trusted witness keys are configured".to_owned())
        } else if envelopes.is_empty() {
            let why = if notes.is_empty() {
                "no witness found".to_owned()
            } else {
                format!("no witness found ({})", notes.join("; "))
            };
            Err(why)
        } else {
            verify_any(
                &envelopes,
                &self.cfg.keys,
                &manifest.digest,
                &uor,
                SystemTime::now(),
            )
            .map_err(|e| e.to_string())
        };
        match result {
            Ok(v) => {
                self.count("verify", true);
                let decision = decide(mode, Ok(v.clone()));
                debug_assert!(matches!(decision, Decision::Allow(_)));
                tracing::info!(image = %image, uor_id = %uor, keyid = %v.keyid, "witness verified");
                prov.witness_ok = true;
                let ttl = v
                    .expires_at
                    .duration_since(SystemTime::now())
                    .unwrap_or_default()
                    .min(POSITIVE_TTL);
                (Verdict::Allow(prov), ttl)
            }
            Err(reason) => {
                self.count("verify", false);
                let full = format!("image {image} (UOR-ID {uor}) is not verified: {reason}");
                deny_or_warn(Some(prov), full)
            }
        }
    }

    /// Witnesses for `uor` from the endpoint, the directory and the
    /// manifest's attached artifacts, with notes on sources that failed (an
    /// unreachable endpoint is a failure to report, not an empty answer).
    fn witnesses(
        &self,
        uor: &UorId,
        image: &Reference,
        manifest_digest: &str,
    ) -> (Vec<Envelope>, Vec<String>) {
        let mut out = Vec::new();
        let mut notes = Vec::new();
        if let Some(ep) = &self.cfg.endpoint {
            let url = format!("{}/v1/witness/{uor}", ep.trim_end_matches('/'));
            let got = self.rt.block_on(async {
                let resp = self.http.get(&url).send().await?;
                let status = resp.status();
                let body = resp.bytes().await?;
                Ok::<_, reqwest::Error>((status, body))
            });
            match got {
                Ok((s, body)) if s.is_success() => {
                    match serde_json::from_slice::<WitnessResponse>(&body) {
                        Ok(r) => match r.envelope {
                            Some(e) => out.push(e),
                            None => notes.push(format!(
                                "witness endpoint {ep} answered without an envelope"
                            )),
                        },
                        Err(e) => {
                            notes.push(format!("witness endpoint {ep} answered garbage: {e}"))
                        }
                    }
                }
                Ok((s, _)) if s.as_u16() == 404 => {
                    notes.push(format!("witness endpoint {ep} has none"))
                }
                Ok((s, _)) => notes.push(format!("witness endpoint {ep} answered HTTP {s}")),
                Err(e) => notes.push(format!("witness endpoint {ep} unreachable: {e}")),
            }
        }
        if let Some(dir) = &self.cfg.dir {
            match hologram_trust::load_dir(dir) {
                Ok(d) => out.extend(d.get(uor).iter().cloned()),
                Err(e) => notes.push(format!("witness directory {}: {e}", dir.display())),
            }
        }
        if self.cfg.referrers {
            let found = self.rt.block_on(hologram_remote::referrers::fetch_attached(
                &self.client,
                image,
                manifest_digest,
                hologram_trust::DSSE_ARTIFACT_TYPE,
            ));
            match found {
                Ok(blobs) => {
                    for b in blobs {
                        match hologram_trust::parse_witness_json(&b) {
                            Ok(e) => out.push(e),
                            Err(e) => {
                                notes.push(format!("attached artifact is not a witness: {e}"))
                            }
                        }
                    }
                }
                Err(e) => notes.push(format!("witnesses attached in the registry: {e}")),
            }
        }
        (out, notes)
    }

    /// The provenance labels `HOLOGRAM_VERBOSE=1` adds to snapshots.
    pub fn labels(&self, p: Option<&Provenance>) -> BTreeMap<String, String> {
        let mut l = BTreeMap::new();
        if !self.cfg.verbose {
            return l;
        }
        if let Some(p) = p {
            l.insert(LABEL_UOR_ID.to_owned(), p.uor_id.to_string());
        }
        l.insert(
            LABEL_WITNESS_OK.to_owned(),
            p.is_some_and(|p| p.witness_ok).to_string(),
        );
        l.insert(LABEL_LEASE_ID.to_owned(), "none".to_owned());
        l.insert(LABEL_CTP96_SESSION.to_owned(), "none".to_owned());
        l.insert(
            LABEL_ENFORCE_MODE.to_owned(),
            mode_name(self.cfg.mode).to_owned(),
        );
        l.insert(LABEL_NETWORK.to_owned(), "registry".to_owned());
        l
    }
}

/// The layer must belong to the verified manifest.
fn in_manifest(p: &Provenance, layer: &str) -> Result<(), StoreError> {
    let found = p.manifest["layers"]
        .as_array()
        .is_some_and(|ls| ls.iter().any(|l| l["digest"].as_str() == Some(layer)));
    if found {
        Ok(())
    } else {
        Err(StoreError::FailedPrecondition(format!(
            "layer {layer} is not part of the manifest {} of image {} (UOR-ID {})",
            p.manifest_digest, p.image, p.uor_id
        )))
    }
}

/// The manifest's record of `layer`: (TOC digest annotation, size).
pub fn layer_facts(p: &Provenance, layer: &str) -> (Option<String>, Option<u64>) {
    let entry = p.manifest["layers"]
        .as_array()
        .and_then(|ls| ls.iter().find(|l| l["digest"].as_str() == Some(layer)));
    match entry {
        Some(l) => (
            l["annotations"][hologram_estargz::TOC_DIGEST_ANNOTATION]
                .as_str()
                .map(str::to_owned),
            l["size"].as_u64(),
        ),
        None => (None, None),
    }
}
