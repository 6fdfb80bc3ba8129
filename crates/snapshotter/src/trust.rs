//! The trust gate: before an image layer is mounted lazily or unpacked,
//! check the chain witness signature → UOR-ID → manifest bytes.
//!
//! The gate receives an image whose manifest was fetched by digest and
//! checked against it ([`ImageFacts`], from the layer plan), gathers
//! witnesses of its UOR-ID (the endpoint, the local witness directory, the
//! registry's attached artifacts), and verifies them locally against the
//! trusted keys (`hologram-trust`). A server's `valid: true` is never
//! trusted. The policy then allows, warns (counted) or, in enforce mode,
//! refuses the Prepare with a message naming the image, its UOR-ID and the
//! reason. Verdicts are cached per manifest digest, so a pull verifies once,
//! not once per layer.
//!
//! Refused in both modes, because no policy makes them trustworthy: a
//! manifest whose bytes do not match its digest (the plan's
//! [`crate::plan::ImageError::Invalid`]).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use hologram_oci::Digest;
use hologram_remote::{Reference, RegistryClient, RegistryConfig};
use hologram_store::StoreError;
use hologram_telemetry::Metrics;
use hologram_trust::{
    decide, verify_any, Decision, Envelope, Mode, PublicKey, UorId, WitnessResponse,
};

use crate::plan::ImageFacts;

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
    /// Credentials given at run time (the CRI proxy's pull secrets).
    pub credentials: Option<Arc<hologram_remote::SessionCredentials>>,
}

/// What the gate established about one image.
#[derive(Debug, Clone)]
pub struct Provenance {
    pub uor_id: UorId,
    pub witness_ok: bool,
    /// The id of the key whose witness verified.
    pub key_id: Option<String>,
    /// Why it was not verified (allowed in warn mode).
    pub reason: Option<String>,
}

#[derive(Debug, Clone)]
enum Verdict {
    Allow(Provenance),
    Warn(Provenance, String),
    Deny(String),
}

/// See the module documentation.
pub struct TrustGate {
    cfg: TrustConfig,
    client: RegistryClient,
    http: reqwest::Client,
    rt: tokio::runtime::Handle,
    cache: Mutex<HashMap<Digest, (Instant, Verdict)>>,
    metrics: Option<Arc<Metrics>>,
}

impl std::fmt::Debug for TrustGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustGate")
            .field("mode", &self.cfg.mode)
            .finish_non_exhaustive()
    }
}

pub(crate) fn mode_name(m: Mode) -> &'static str {
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
        let client =
            RegistryClient::with_session_credentials(cfg.registry.clone(), cfg.credentials.clone())
                .context("trust: registry client")?;
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

    /// How many trusted keys are configured.
    pub fn trusted_keys(&self) -> usize {
        self.cfg.keys.len()
    }

    /// `enforce` or `warn`.
    pub fn mode_name(&self) -> &'static str {
        mode_name(self.cfg.mode)
    }

    pub fn enforcing(&self) -> bool {
        matches!(self.cfg.mode, Mode::Enforce)
    }

    fn count(&self, op: &str, ok: bool) {
        if let Some(m) = &self.metrics {
            m.witness_op(op, if ok { "ok" } else { "error" });
        }
    }

    /// Checks an image (its manifest already fetched by digest and
    /// checked). `Ok` with what was established (allowed, or allowed with a
    /// warning in warn mode); `Err` (FailedPrecondition) when refused.
    pub fn check(&self, image: &ImageFacts) -> Result<Provenance, StoreError> {
        let key = image.manifest_digest;
        let cached = self.cache.lock().ok().and_then(|c| {
            c.get(&key)
                .filter(|(until, _)| *until > Instant::now())
                .map(|(_, v)| v.clone())
        });
        let verdict = match cached {
            Some(v) => v,
            None => {
                let (v, ttl) = self.evaluate(image);
                if let Ok(mut c) = self.cache.lock() {
                    c.retain(|_, (until, _)| *until > Instant::now());
                    c.insert(key, (Instant::now() + ttl, v.clone()));
                }
                v
            }
        };
        match verdict {
            Verdict::Allow(p) => Ok(p),
            Verdict::Warn(p, reason) => {
                tracing::warn!(image = %image.name(), reason = %reason, "image not verified; allowed because trust mode is warn");
                Ok(p)
            }
            Verdict::Deny(reason) => Err(StoreError::FailedPrecondition(reason)),
        }
    }

    /// A layer that cannot be checked at all (no provenance, its image
    /// unreachable, labels that do not fit the image): refused in enforce
    /// mode, allowed with a warning (and a count) otherwise.
    pub fn unverifiable(&self, reason: &str) -> Result<(), StoreError> {
        self.count("no_provenance", false);
        if self.enforcing() {
            return Err(StoreError::FailedPrecondition(format!(
                "enforce mode: {reason}"
            )));
        }
        tracing::warn!(reason = %reason, "unverified layer allowed because trust mode is warn");
        Ok(())
    }

    /// Resolves witnesses and verifies them; returns the verdict and how
    /// long it may be cached.
    fn evaluate(&self, image: &ImageFacts) -> (Verdict, Duration) {
        let mode = self.cfg.mode;
        let name = image.name();
        let uor = image.uor_id;
        if let Some(m) = &self.metrics {
            m.resolver_op("resolve", "ok");
        }
        let prov = Provenance {
            uor_id: uor,
            witness_ok: false,
            key_id: None,
            reason: None,
        };
        let (envelopes, notes) = self.witnesses(&uor, &image.reference, &image.manifest_digest);
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
                &image.manifest_digest,
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
                tracing::info!(image = %name, uor_id = %uor, keyid = %v.keyid, "witness verified");
                let ttl = v
                    .expires_at
                    .duration_since(SystemTime::now())
                    .unwrap_or_default()
                    .min(POSITIVE_TTL);
                (
                    Verdict::Allow(Provenance {
                        witness_ok: true,
                        key_id: Some(v.keyid.clone()),
                        ..prov
                    }),
                    ttl,
                )
            }
            Err(reason) => {
                self.count("verify", false);
                let full = format!("image {name} (UOR-ID {uor}) is not verified: {reason}");
                match mode {
                    Mode::Enforce => (Verdict::Deny(full), NEGATIVE_TTL),
                    Mode::Warn => (
                        Verdict::Warn(
                            Provenance {
                                reason: Some(full.clone()),
                                ..prov
                            },
                            full,
                        ),
                        NEGATIVE_TTL,
                    ),
                }
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
        manifest_digest: &Digest,
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
        self.labels_for(p, "registry")
    }

    /// The provenance labels, naming the network the bytes come over.
    pub fn labels_for(&self, p: Option<&Provenance>, network: &str) -> BTreeMap<String, String> {
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
        l.insert(LABEL_NETWORK.to_owned(), network.to_owned());
        l
    }
}
