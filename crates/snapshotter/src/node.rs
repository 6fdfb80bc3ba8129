//! The node's page, the daemon's side: what happened to the images whose
//! layers were prepared here ([`NodeBook`]), and the callback that turns it,
//! the mounted layers and the trust and CTP-96 settings into the JSON API's
//! [`NodeState`] at each request ([`install_node_collector`]).
//!
//! The book is memory only, filled as Prepares happen (an image's layers
//! from its manifest, each layer's fate: mounted lazily, already present,
//! unpacked and why; the trust verdict); layers mounted again after a
//! restart come from the remote snapshots' labels. It is bounded: the most
//! recent [`MAX_IMAGES`] images, each string cut to a few hundred bytes.
//! Everything in it that an image chose (references, annotations, reasons
//! quoting them) is data for the page, which renders it as text.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use hologram_telemetry::api::{
    Ctp96State, FallbackInfo, ImageState, LayerMode, LayerState, NodeState, TrustGateState,
    TrustVerdict,
};
use hologram_telemetry::{unix_now, Metrics};

use crate::plan::{ImageFacts, LayerPlan};
use crate::remote::{Fallback, RemoteLayers};
use crate::trust::TrustGate;

/// Images remembered.
pub const MAX_IMAGES: usize = 64;
/// Layers remembered per image.
const MAX_LAYERS: usize = 256;
/// Annotations kept per layer.
const MAX_ANNOTATIONS: usize = 16;
/// Longest string kept (references, annotation keys and values, reasons).
const MAX_TEXT: usize = 1024;

fn bounded(s: &str) -> String {
    if s.len() <= MAX_TEXT {
        return s.to_owned();
    }
    let mut end = MAX_TEXT;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[derive(Debug, Clone, Default)]
struct LayerRecord {
    digest: String,
    size: u64,
    annotations: BTreeMap<String, String>,
    mode: LayerMode,
    fallback: Option<FallbackInfo>,
    /// The snapshot serving it (lazy or present).
    snapshot_id: Option<u64>,
}

#[derive(Debug, Clone, Default)]
struct ImageRecord {
    reference: String,
    manifest: Option<String>,
    trust: Option<TrustVerdict>,
    layers: Vec<LayerRecord>,
    last_seen: f64,
}

/// What happened to the images prepared on this node; see the module
/// documentation.
#[derive(Debug, Default)]
pub struct NodeBook {
    images: Mutex<Vec<ImageRecord>>,
}

impl NodeBook {
    pub fn new() -> Self {
        NodeBook::default()
    }

    /// The record of the image named `reference` (by `manifest` when
    /// known), created when new; `f` edits it.
    fn with_image(
        &self,
        reference: &str,
        manifest: Option<&str>,
        f: impl FnOnce(&mut ImageRecord),
    ) {
        let Ok(mut images) = self.images.lock() else {
            return;
        };
        let pos = images.iter().position(|i| match (manifest, &i.manifest) {
            (Some(m), Some(have)) => m == have,
            _ => i.reference == reference,
        });
        let idx = match pos {
            Some(p) => p,
            None => {
                if images.len() >= MAX_IMAGES {
                    // Forget the image seen longest ago.
                    if let Some(oldest) = images
                        .iter()
                        .enumerate()
                        .min_by(|a, b| a.1.last_seen.total_cmp(&b.1.last_seen))
                        .map(|(i, _)| i)
                    {
                        images.remove(oldest);
                    }
                }
                images.push(ImageRecord {
                    reference: bounded(reference),
                    manifest: manifest.map(bounded),
                    ..ImageRecord::default()
                });
                images.len() - 1
            }
        };
        let img = &mut images[idx];
        if img.manifest.is_none() {
            img.manifest = manifest.map(bounded);
        }
        img.last_seen = unix_now();
        f(img);
    }

    /// The layer `digest` of an image record, created when new.
    fn layer<'a>(img: &'a mut ImageRecord, digest: &str) -> Option<&'a mut LayerRecord> {
        let pos = img.layers.iter().position(|l| l.digest == digest);
        match pos {
            Some(p) => img.layers.get_mut(p),
            None if img.layers.len() < MAX_LAYERS => {
                img.layers.push(LayerRecord {
                    digest: bounded(digest),
                    ..LayerRecord::default()
                });
                img.layers.last_mut()
            }
            None => None,
        }
    }

    /// An image whose manifest was read: its layers, in order, pending.
    pub fn image(&self, facts: &ImageFacts) {
        let manifest = facts.manifest_digest.to_string();
        self.with_image(&facts.name(), Some(&manifest), |img| {
            for d in facts.manifest.layers.iter() {
                let digest = d.digest.to_string();
                let Some(l) = Self::layer(img, &digest) else {
                    break;
                };
                l.size = d.size;
                if l.annotations.is_empty() {
                    l.annotations = d
                        .annotations
                        .iter()
                        .take(MAX_ANNOTATIONS)
                        .map(|(k, v)| (bounded(k), bounded(v)))
                        .collect();
                }
            }
        });
    }

    /// The trust gate's verdict on an image.
    pub fn verdict(&self, facts: &ImageFacts, mut v: TrustVerdict) {
        self.image(facts);
        v.reason = v.reason.as_deref().map(bounded);
        v.at = unix_now();
        let manifest = facts.manifest_digest.to_string();
        self.with_image(&facts.name(), Some(&manifest), |img| img.trust = Some(v));
    }

    fn planned(&self, plan: &LayerPlan, f: impl FnOnce(&mut LayerRecord)) {
        self.image(&plan.image);
        let manifest = plan.image.manifest_digest.to_string();
        let digest = plan.layer.digest.to_string();
        self.with_image(&plan.image.name(), Some(&manifest), |img| {
            if let Some(l) = Self::layer(img, &digest) {
                f(l);
            }
        });
    }

    /// A layer mounted lazily as snapshot `id`.
    pub fn lazy(&self, plan: &LayerPlan, id: u64) {
        self.planned(plan, |l| {
            l.mode = LayerMode::Lazy;
            l.fallback = None;
            l.snapshot_id = Some(id);
        });
    }

    /// A layer already on the node as snapshot `id` (`None`: not known).
    pub fn present(&self, plan: &LayerPlan, id: Option<u64>) {
        self.planned(plan, |l| {
            l.mode = LayerMode::Present;
            l.snapshot_id = id;
        });
    }

    /// A planned layer that containerd unpacks, and why.
    pub fn unpacked(&self, plan: &LayerPlan, why: &Fallback) {
        self.planned(plan, |l| Self::set_fallback(l, why));
    }

    /// A layer that containerd unpacks, known only by the Prepare's labels
    /// (raw: they may not parse, and name anything).
    pub fn unpacked_by_labels(
        &self,
        image: Option<&str>,
        manifest: Option<&str>,
        layer: &str,
        why: &Fallback,
    ) {
        let reference = image.unwrap_or("(layers unpacked without an image reference)");
        self.with_image(reference, manifest, |img| {
            if let Some(l) = Self::layer(img, layer) {
                Self::set_fallback(l, why);
            }
        });
    }

    /// Whether layer `digest` was just recorded as unpacked for `why`
    /// (through its plan: no second record by labels).
    pub fn has_fallback(&self, digest: &str, why: &Fallback) -> bool {
        self.images.lock().is_ok_and(|images| {
            images.iter().any(|i| {
                i.layers.iter().any(|l| {
                    l.digest == digest
                        && l.fallback
                            .as_ref()
                            .is_some_and(|f| f.reason == bounded(&why.reason))
                })
            })
        })
    }

    /// An image refused before the trust gate reached a verdict on it
    /// (known only by the Prepare's raw labels); a verdict already
    /// recorded stays.
    pub fn refused_by_labels(
        &self,
        image: Option<&str>,
        manifest: Option<&str>,
        mode: &str,
        reason: &str,
    ) {
        let reference = image.unwrap_or("(layers unpacked without an image reference)");
        self.with_image(reference, manifest, |img| {
            if img.trust.is_none() {
                img.trust = Some(TrustVerdict {
                    decision: "refused".to_owned(),
                    mode: mode.to_owned(),
                    reason: Some(bounded(reason)),
                    at: unix_now(),
                    ..TrustVerdict::default()
                });
            }
        });
    }

    fn set_fallback(l: &mut LayerRecord, why: &Fallback) {
        l.mode = LayerMode::Unpacked;
        l.snapshot_id = None;
        l.fallback = Some(FallbackInfo {
            category: why.category.to_owned(),
            reason: bounded(&why.reason),
        });
    }

    /// The images with each layer's live numbers (`remote`: the mounted
    /// layers), most recently seen first; then the mounted layers no
    /// record names (mounted again after a restart), by image.
    fn images(&self, remote: &RemoteLayers) -> Vec<ImageState> {
        let mounted = remote.mounted();
        let mut named: std::collections::HashSet<u64> = Default::default();
        // Layers on this node: mounted ones by digest, and those another
        // image had unpacked. An image whose layer containerd already had
        // never asks for it: it is "present".
        let mut on_node: HashMap<String, Option<u64>> = mounted
            .iter()
            .map(|(id, m)| (m.layer.to_string(), Some(*id)))
            .collect();
        let mut out: Vec<ImageState> = match self.images.lock() {
            Ok(images) => {
                for l in images.iter().flat_map(|i| i.layers.iter()) {
                    if l.mode == LayerMode::Unpacked {
                        on_node.entry(l.digest.clone()).or_insert(None);
                    }
                }
                images
                    .iter()
                    .map(|img| ImageState {
                        reference: img.reference.clone(),
                        manifest_digest: img.manifest.clone(),
                        trust: img.trust.clone(),
                        last_seen: img.last_seen,
                        layers: img
                            .layers
                            .iter()
                            .map(|l| {
                                let mut l = l.clone();
                                if l.mode == LayerMode::Pending {
                                    if let Some(id) = on_node.get(&l.digest) {
                                        l.mode = LayerMode::Present;
                                        l.snapshot_id = *id;
                                    }
                                }
                                let live = l.snapshot_id.and_then(|id| mounted.get(&id));
                                if let Some(id) = l.snapshot_id {
                                    named.insert(id);
                                }
                                let mut s = LayerState {
                                    digest: l.digest.clone(),
                                    size: l.size,
                                    mode: l.mode,
                                    fallback: l.fallback.clone(),
                                    snapshot_id: l.snapshot_id,
                                    annotations: l.annotations.clone(),
                                    ..LayerState::default()
                                };
                                match live {
                                    // Served by a lazily mounted snapshot.
                                    // An already present layer keeps saying so.
                                    Some(m) => {
                                        if s.mode != LayerMode::Present {
                                            s.mode = LayerMode::Lazy;
                                        }
                                        live_numbers(&mut s, m);
                                    }
                                    // Its snapshot is gone.
                                    None if l.mode == LayerMode::Lazy => {
                                        s.mode = LayerMode::Pending
                                    }
                                    None => {}
                                }
                                s
                            })
                            .collect(),
                    })
                    .collect()
            }
            Err(_) => Vec::new(),
        };
        out.sort_by(|a, b| b.last_seen.total_cmp(&a.last_seen));
        // Mounted layers no record names: mounted again after a restart.
        let mut restored: BTreeMap<String, ImageState> = BTreeMap::new();
        let mut ids: Vec<&u64> = mounted.keys().filter(|id| !named.contains(id)).collect();
        ids.sort();
        for id in ids {
            let Some(m) = mounted.get(id) else { continue };
            let img = restored
                .entry(m.image.clone())
                .or_insert_with(|| ImageState {
                    reference: m.image.clone(),
                    manifest_digest: m.manifest.clone(),
                    ..ImageState::default()
                });
            let mut s = LayerState {
                digest: m.layer.to_string(),
                size: m.size,
                mode: LayerMode::Lazy,
                snapshot_id: Some(*id),
                ..LayerState::default()
            };
            live_numbers(&mut s, m);
            img.layers.push(s);
        }
        out.extend(restored.into_values());
        out
    }
}

/// A mounted layer's counters and check.
fn live_numbers(s: &mut LayerState, m: &crate::remote::MountedInfo) {
    let st = &m.layer_ref.stats;
    s.source = Some(m.layer_ref.source_kind().to_owned());
    s.demand_bytes = st.demand_bytes.load(Ordering::Relaxed);
    s.prefetch_bytes = st.prefetched_bytes.load(Ordering::Relaxed);
    s.background_bytes = st.background_bytes.load(Ordering::Relaxed);
    s.served_bytes = st.bytes_served.load(Ordering::Relaxed);
    s.verification_failures = st.verify_failures.load(Ordering::Relaxed);
    s.pending_chunks = m.layer_ref.pending_chunks();
    let (check, reason) = match m.layer_ref.verdict() {
        hologram_fs::layer::Verdict::Pending => ("pending", None),
        hologram_fs::layer::Verdict::Verified => ("verified", None),
        hologram_fs::layer::Verdict::Bad(why) => ("bad", Some(bounded(&why))),
    };
    s.check = Some(check.to_owned());
    s.check_reason = reason;
}

/// What the page says about the transport and the trust gate.
#[derive(Debug, Clone, Default)]
pub struct NodeSettings {
    pub daemon_version: String,
    /// `(mode, endpoint without user information)` when CTP-96 is configured.
    pub ctp96: Option<(String, String)>,
}

/// Fills the daemon's part of the JSON API at each request.
pub fn install_node_collector(
    metrics: &Metrics,
    book: Arc<NodeBook>,
    remote: Arc<RemoteLayers>,
    trust: Option<Arc<TrustGate>>,
    settings: NodeSettings,
) {
    metrics.set_node_collector(Box::new(move |s: &mut NodeState| {
        s.daemon_version = settings.daemon_version.clone();
        let layers = remote.layers();
        s.mounted_layers = layers.len() as u64;
        s.restoring = remote
            .restoring()
            .into_iter()
            .map(|r| hologram_telemetry::api::RestoringLayerState {
                digest: r.layer.to_string(),
                snapshot_id: r.snapshot_id,
                image: r.image,
                attempts: r.attempts,
                last_error: r.last_error,
                since: r.since,
            })
            .collect();
        s.cache.bytes = remote.cache().total();
        s.cache.limit_bytes = remote.cache().limit();
        for l in &layers {
            s.transfer.prefetch_bytes += l.stats.prefetched_bytes.load(Ordering::Relaxed);
            s.transfer.background_bytes += l.stats.background_bytes.load(Ordering::Relaxed);
            s.transfer.background_pending_chunks += l.pending_chunks();
            s.cache.write_failures += l.stats.cache_write_failures.load(Ordering::Relaxed);
        }
        s.images = book.images(&remote);
        s.trust = trust.as_ref().map(|g| TrustGateState {
            mode: if g.enforcing() { "enforce" } else { "warn" }.to_owned(),
            trusted_keys: g.trusted_keys() as u64,
        });
        if let Some((mode, endpoint)) = &settings.ctp96 {
            let c = s.ctp96.get_or_insert_with(Ctp96State::default);
            c.mode = mode.clone();
            c.endpoint = endpoint.clone();
            if let Some((session, lease)) = remote.ctp96_session() {
                c.session_id = Some(session);
                c.lease_id = Some(lease);
            }
        }
    }));
}

/// `url` without user information (`http://user:pw@host/` → `http://host/`).
pub fn strip_userinfo(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let end = rest.find('/').unwrap_or(rest.len());
            let host = match rest[..end].rfind('@') {
                Some(at) => &rest[at + 1..],
                None => rest,
            };
            format!("{scheme}://{host}")
        }
        None => url.to_owned(),
    }
}

/// A log layer that keeps the daemon's warnings and errors for the page
/// ([`hologram_telemetry::record_warning`]: cleaned of credentials and
/// other users' paths, bounded).
#[derive(Debug, Default)]
pub struct RecentWarnings;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for RecentWarnings {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let level = *event.metadata().level();
        if level > tracing::Level::WARN {
            return;
        }
        let mut text = TextVisitor::default();
        event.record(&mut text);
        hologram_telemetry::record_warning(
            unix_now(),
            if level == tracing::Level::ERROR {
                "ERROR"
            } else {
                "WARN"
            },
            event.metadata().target(),
            &text.0,
        );
    }
}

/// The message, then `field=value` for the other fields.
#[derive(Default)]
struct TextVisitor(String);

impl tracing::field::Visit for TextVisitor {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write as _;
        if self.0.len() > 4096 {
            return;
        }
        if field.name() == "message" {
            let rest = std::mem::take(&mut self.0);
            let _ = write!(self.0, "{value:?}");
            if !rest.is_empty() {
                self.0.push(' ');
                self.0.push_str(&rest);
            }
        } else {
            if !self.0.is_empty() {
                self.0.push(' ');
            }
            let _ = write!(self.0, "{}={value:?}", field.name());
        }
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.record_debug(field, &format_args!("{value}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_is_stripped() {
        assert_eq!(strip_userinfo("http://a:b@h:1/x"), "http://h:1/x");
        assert_eq!(strip_userinfo("http://h:1"), "http://h:1");
        assert_eq!(strip_userinfo("h:1"), "h:1");
    }

    #[test]
    fn a_refusal_by_labels_keeps_an_earlier_verdict() {
        let book = NodeBook::new();
        let m = format!("sha256:{}", "a".repeat(64));
        book.refused_by_labels(Some("reg/x:1"), Some(&m), "enforce", "no provenance");
        book.refused_by_labels(Some("reg/x:1"), Some(&m), "enforce", "second");
        let images = book.images.lock().map(|i| i.clone()).unwrap_or_default();
        assert_eq!(images.len(), 1);
        let t = images[0].trust.clone().unwrap_or_default();
        assert_eq!(
            (t.decision.as_str(), t.mode.as_str(), t.reason.as_deref()),
            ("refused", "enforce", Some("no provenance"))
        );
    }

    #[test]
    fn labels_only_fallbacks_are_bounded_and_grouped() {
        let book = NodeBook::new();
        let hostile = format!("<script>{}</script>", "x".repeat(5000));
        let f = Fallback::new("no_labels", hostile.clone());
        for i in 0..(MAX_IMAGES + 5) {
            book.unpacked_by_labels(Some(&format!("{hostile}{i}")), None, "sha256:1", &f);
        }
        let images = book.images.lock().map(|i| i.clone()).unwrap_or_default();
        assert_eq!(images.len(), MAX_IMAGES);
        for img in &images {
            assert!(img.reference.len() <= MAX_TEXT + 3);
            let l = &img.layers[0];
            assert_eq!(l.mode, LayerMode::Unpacked);
            assert!(l
                .fallback
                .as_ref()
                .is_some_and(|f| f.reason.len() <= MAX_TEXT + 3));
        }
        book.unpacked_by_labels(None, None, "sha256:2", &f);
        book.unpacked_by_labels(None, None, "sha256:3", &f);
        let images = book.images.lock().map(|i| i.clone()).unwrap_or_default();
        let none: Vec<_> = images
            .iter()
            .filter(|i| i.reference.starts_with("(layers unpacked"))
            .collect();
        assert_eq!(none.len(), 1);
        assert_eq!(none[0].layers.len(), 2);
    }
}
