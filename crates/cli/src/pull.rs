//! `hologram pull`: a remote-snapshot pull through containerd's API, the way
//! containerd's own unpacker does it, but with the layer labels a remote
//! snapshotter needs (plain `ctr pull` passes none, so it can never be lazy).
//!
//! 1. [`resolve`]: the reference in the registry (platform manifest, config),
//!    typed and checked (every digest strict, one diff ID per layer);
//! 2. under a lease, [`Puller::store_documents`]: index/manifest/config into
//!    containerd's content store with the GC labels containerd's own pull
//!    sets;
//! 3. for each layer, [`Puller::layer`]: Prepare on the snapshotter with
//!    `snapshot.ref` = chain ID plus the CRI layer labels (set after the
//!    layer's own `containerd.io/snapshot/` annotations, so an image cannot
//!    redirect them). AlreadyExists = mounted lazily. Mounts = the
//!    snapshotter could not: fetch the layer (streamed, digest-checked),
//!    apply it with containerd's diff service, check the diff ID, commit —
//!    and say so in the summary;
//! 4. [`Puller::record_image`]: the config labelled with the snapshot GC root, and
//!    the image record.
//!
//! A chain already present but served by another image's bytes (two images
//! claiming one diff ID) is not taken on trust: see [`Puller::present`].

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context as _};
use bytes::Bytes;
use hologram_api::content::{
    content_client::ContentClient, Info, UpdateRequest, WriteAction, WriteContentRequest,
};
use hologram_api::diff::{diff_client::DiffClient, ApplyRequest};
use hologram_api::images::{
    images_client::ImagesClient, CreateImageRequest, Image, UpdateImageRequest,
};
use hologram_api::leases::{leases_client::LeasesClient, CreateRequest, DeleteRequest};
use hologram_api::snapshots::{
    snapshots_client::SnapshotsClient, CommitSnapshotRequest, PrepareSnapshotRequest,
    RemoveSnapshotRequest, StatSnapshotRequest,
};
use hologram_api::types::Descriptor as PbDescriptor;
use hologram_oci::{labels, Descriptor, Digest, ImageConfig, ImageManifest, Reference};
use hologram_remote::{Manifest, RegistryClient, RegistryConfig};
use tonic::transport::Channel;
use tonic::Code;

use crate::progress::Progress;

/// containerd's label size limit (key + value).
const MAX_LABEL: usize = 4096;
/// Streamed layer downloads go in pieces of this size.
const PIECE: u64 = 4 * 1024 * 1024;
/// Largest image config accepted.
const MAX_CONFIG: u64 = 4 * 1024 * 1024;

/// What to pull and where.
#[derive(Debug, Clone)]
pub struct PullArgs {
    pub address: std::path::PathBuf,
    pub namespace: String,
    pub snapshotter: String,
    pub registry: RegistryConfig,
    pub reference: String,
    /// The snapshotter's own socket, to watch the check of a chain another
    /// image's bytes serve.
    pub snapshotter_socket: std::path::PathBuf,
    /// How long to wait for that check.
    pub check_timeout: Duration,
}

/// What happened, for the summary line (and tests).
#[derive(Debug, Default, Clone)]
pub struct Summary {
    pub image: String,
    pub manifest_digest: String,
    pub layers: usize,
    pub lazy: usize,
    pub unpacked: usize,
    pub present: usize,
    /// (layer digest, reason) of every layer that was not mounted lazily.
    pub fallbacks: Vec<(String, String)>,
    /// Bytes this command downloaded (manifests, config, unpacked layers).
    pub bytes_fetched: u64,
    /// Compressed size of all layers, for comparison.
    pub image_bytes: u64,
    pub elapsed: Duration,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}): {} layers: {} mounted lazily, {} unpacked, {} already present; fetched {} of {} layer bytes in {:.2?}",
            self.image,
            self.manifest_digest,
            self.layers,
            self.lazy,
            self.unpacked,
            self.present,
            human(self.bytes_fetched),
            human(self.image_bytes),
            self.elapsed
        )?;
        for (layer, why) in &self.fallbacks {
            write!(f, "\n  not lazy: {layer}: {why}")?;
        }
        Ok(())
    }
}

fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// The CRI `image-layers` label: this and the following layer digests,
/// comma-separated, cut to containerd's label size ("skipping layers is allowed").
pub fn image_layers_label(digests: &[Digest]) -> String {
    let budget = MAX_LABEL - labels::CRI_IMAGE_LAYERS.len();
    let mut out = String::new();
    for d in digests {
        let d = d.to_string();
        let extra = if out.is_empty() { d.len() } else { d.len() + 1 };
        if out.len() + extra > budget {
            break;
        }
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(&d);
    }
    out
}

/// The labels of a layer's Prepare: the layer's own `containerd.io/snapshot/`
/// annotations (stargz-snapshotter reads its TOC digest from them), then the
/// labels this client resolved, which no annotation can override; keys only
/// the snapshotter may write are dropped.
pub fn layer_labels(image: &Resolved, i: usize) -> HashMap<String, String> {
    let mut l: HashMap<String, String> = HashMap::new();
    let Some(layer) = image.doc.layers.get(i) else {
        return l;
    };
    for (k, v) in &layer.annotations {
        if k.starts_with(labels::INHERITED_PREFIX)
            && !labels::is_reserved(k)
            && k.len() + v.len() <= MAX_LABEL
        {
            l.insert(k.clone(), v.clone());
        }
    }
    let ours = [
        (labels::SNAPSHOT_REF, image.chains[i].to_string()),
        (labels::CRI_IMAGE_REF, image.name.clone()),
        (labels::CRI_LAYER_DIGEST, layer.digest.to_string()),
        (
            labels::CRI_MANIFEST_DIGEST,
            image.manifest.digest.to_string(),
        ),
        (
            labels::CRI_IMAGE_LAYERS,
            image_layers_label(&image.layer_digests()[i..]),
        ),
    ];
    for k in [
        labels::STARGZ_REFERENCE,
        labels::STARGZ_DIGEST,
        labels::STARGZ_LAYERS,
    ] {
        l.remove(k);
    }
    for (k, v) in ours {
        l.insert(k.to_owned(), v);
    }
    l
}

/// An image as resolved in the registry, typed and checked.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub reference: Reference,
    pub name: String,
    pub index: Option<Manifest>,
    pub manifest: Manifest,
    pub doc: ImageManifest,
    pub config: Bytes,
    pub diff_ids: Vec<Digest>,
    pub chains: Vec<Digest>,
}

impl Resolved {
    fn layer_digests(&self) -> Vec<Digest> {
        self.doc.layers.iter().map(|l| l.digest).collect()
    }
}

/// Step 1: the platform manifest and config of `reference`.
pub async fn resolve(registry: &RegistryClient, reference: &Reference) -> anyhow::Result<Resolved> {
    let name = reference.to_string();
    let (index, manifest) = registry
        .resolve_platform(reference)
        .await
        .with_context(|| format!("resolving {name}"))?;
    let doc =
        ImageManifest::parse(&manifest.bytes).with_context(|| format!("the manifest of {name}"))?;
    let config = registry
        .fetch_blob(reference, &doc.config.digest, MAX_CONFIG)
        .await
        .context("fetching the image config")?;
    let diff_ids = ImageConfig::parse_for(&config, &doc)
        .with_context(|| format!("the config of {name}"))?
        .rootfs
        .diff_ids;
    Ok(Resolved {
        reference: reference.clone(),
        name,
        chains: hologram_oci::chain_ids(&diff_ids),
        diff_ids,
        index,
        manifest,
        doc,
        config,
    })
}

/// A containerd API client with a namespace and (once created) a lease on
/// every request.
struct Ctd {
    channel: Channel,
    namespace: String,
    lease: Option<String>,
}

impl Ctd {
    fn req<T>(&self, msg: T) -> anyhow::Result<tonic::Request<T>> {
        let mut r = tonic::Request::new(msg);
        r.metadata_mut().insert(
            "containerd-namespace",
            self.namespace.parse().context("invalid namespace")?,
        );
        if let Some(l) = &self.lease {
            r.metadata_mut()
                .insert("containerd-lease", l.parse().context("invalid lease id")?);
        }
        Ok(r)
    }

    /// Creates a lease that expires on its own (if this process dies) and
    /// puts every following request under it.
    async fn take_lease(&mut self) -> anyhow::Result<String> {
        let lease_id = format!("hologram-pull-{}", nanos());
        let expire =
            hologram_oci::time::format_rfc3339(SystemTime::now() + Duration::from_secs(3600));
        LeasesClient::new(self.channel.clone())
            .create(self.req(CreateRequest {
                id: lease_id.clone(),
                labels: HashMap::from([("containerd.io/gc.expire".to_owned(), expire)]),
            })?)
            .await
            .context("creating a lease")?;
        self.lease = Some(lease_id.clone());
        Ok(lease_id)
    }

    /// Drops the lease (the image record and GC labels hold everything now).
    async fn release_lease(&mut self, id: String) {
        self.lease = None;
        if let Ok(req) = self.req(DeleteRequest { id, sync: false }) {
            let _ = LeasesClient::new(self.channel.clone()).delete(req).await;
        }
    }

    /// Writes a small blob as content `digest` (skipped if present).
    async fn write_content(
        &self,
        digest: &Digest,
        data: Vec<u8>,
        labels: HashMap<String, String>,
    ) -> anyhow::Result<()> {
        let total = i64::try_from(data.len()).unwrap_or(i64::MAX);
        let msg = WriteContentRequest {
            action: WriteAction::Commit as i32,
            r#ref: format!("hologram-pull-{digest}"),
            total,
            expected: digest.to_string(),
            offset: 0,
            data,
            labels,
        };
        self.write_stream(digest, tokio_stream::iter(vec![msg]))
            .await
    }

    /// Runs one content Write stream to its end.
    async fn write_stream(
        &self,
        digest: &Digest,
        stream: impl tokio_stream::Stream<Item = WriteContentRequest> + Send + 'static,
    ) -> anyhow::Result<()> {
        let mut client = ContentClient::new(self.channel.clone());
        match client.write(self.req(stream)?).await {
            Ok(resp) => {
                let mut s = resp.into_inner();
                while s
                    .message()
                    .await
                    .with_context(|| format!("writing content {digest}"))?
                    .is_some()
                {}
                Ok(())
            }
            Err(e) if e.code() == Code::AlreadyExists => Ok(()),
            Err(e) => Err(e).with_context(|| format!("writing content {digest}")),
        }
    }

    async fn label_content(&self, digest: &Digest, key: &str, value: &str) -> anyhow::Result<()> {
        let mut client = ContentClient::new(self.channel.clone());
        let info = Info {
            digest: digest.to_string(),
            labels: HashMap::from([(key.to_owned(), value.to_owned())]),
            ..Default::default()
        };
        client
            .update(self.req(UpdateRequest {
                info: Some(info),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec![format!("labels.{key}")],
                }),
            })?)
            .await
            .with_context(|| format!("labelling content {digest}"))?;
        Ok(())
    }
}

fn nanos() -> u128 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

fn pb_desc(d: &Descriptor) -> PbDescriptor {
    PbDescriptor {
        media_type: d.media_type.clone(),
        digest: d.digest.to_string(),
        size: i64::try_from(d.size).unwrap_or(i64::MAX),
        annotations: d.annotations.clone().into_iter().collect(),
    }
}

/// Runs the pull; prints progress on a terminal; returns the summary.
pub async fn pull(args: &PullArgs) -> anyhow::Result<Summary> {
    let started = Instant::now();
    let reference = Reference::parse(&args.reference)
        .with_context(|| format!("invalid reference {:?}", args.reference))?;
    let registry =
        RegistryClient::new(args.registry.clone()).context("cannot set up the registry client")?;
    let image = resolve(&registry, &reference).await?;
    let mut sum = Summary {
        image: image.name.clone(),
        manifest_digest: image.manifest.digest.to_string(),
        layers: image.doc.layers.len(),
        image_bytes: image.doc.layers.iter().map(|l| l.size).sum(),
        bytes_fetched: (image.manifest.bytes.len()
            + image.config.len()
            + image.index.as_ref().map_or(0, |i| i.bytes.len())) as u64,
        ..Summary::default()
    };
    let channel = hologram_api::connect_unix(&args.address)
        .await
        .with_context(|| format!("cannot connect to containerd at {}", args.address.display()))?;
    let mut ctd = Ctd {
        channel,
        namespace: args.namespace.clone(),
        lease: None,
    };
    let lease = ctd.take_lease().await?;
    let bar = Progress::layers(image.doc.layers.len());
    let result = Puller {
        ctd: &ctd,
        registry: &registry,
        image: &image,
        args,
        bar: &bar,
    }
    .run(&mut sum)
    .await;
    bar.finish();
    ctd.release_lease(lease).await;
    result?;
    sum.elapsed = started.elapsed();
    Ok(sum)
}

/// One pull in progress.
struct Puller<'a> {
    ctd: &'a Ctd,
    registry: &'a RegistryClient,
    image: &'a Resolved,
    args: &'a PullArgs,
    bar: &'a Progress,
}

impl Puller<'_> {
    async fn run(&self, sum: &mut Summary) -> anyhow::Result<()> {
        self.store_documents().await?;
        for i in 0..self.image.doc.layers.len() {
            self.layer(i, sum).await?;
        }
        self.record_image().await
    }

    /// Step 2: config, manifest (GC refs to config and layers), index.
    async fn store_documents(&self) -> anyhow::Result<()> {
        let (ctd, image) = (self.ctd, self.image);
        ctd.write_content(
            &image.doc.config.digest,
            image.config.to_vec(),
            HashMap::new(),
        )
        .await?;
        let mut mlabels = HashMap::from([(
            "containerd.io/gc.ref.content.config".to_owned(),
            image.doc.config.digest.to_string(),
        )]);
        for (i, l) in image.doc.layers.iter().enumerate() {
            mlabels.insert(
                format!("containerd.io/gc.ref.content.l.{i}"),
                l.digest.to_string(),
            );
        }
        ctd.write_content(
            &image.manifest.digest,
            image.manifest.bytes.to_vec(),
            mlabels,
        )
        .await?;
        if let Some(ix) = &image.index {
            let doc = hologram_oci::ImageIndex::parse(&ix.bytes).context("the image index")?;
            let labels = doc
                .manifests
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    (
                        format!("containerd.io/gc.ref.content.m.{i}"),
                        m.digest.to_string(),
                    )
                })
                .collect();
            ctd.write_content(&ix.digest, ix.bytes.to_vec(), labels)
                .await?;
        }
        Ok(())
    }

    /// Step 3, one layer: present, mounted lazily, or unpacked here.
    async fn layer(&self, i: usize, sum: &mut Summary) -> anyhow::Result<()> {
        let layer = &self.image.doc.layers[i];
        let n = self.image.doc.layers.len();
        let say = |what: String| {
            self.bar
                .layer_done(format!("layer {}/{n} {}: {what}", i + 1, layer.digest))
        };
        if self.present(i).await? {
            sum.present += 1;
            say("already present".into());
            return Ok(());
        }
        let chain = self.image.chains[i].to_string();
        let parent = i
            .checked_sub(1)
            .map(|p| self.image.chains[p].to_string())
            .unwrap_or_default();
        let key = format!("extract-{}-{i} {chain}", nanos());
        let mut snaps = SnapshotsClient::new(self.ctd.channel.clone());
        let prepared = snaps
            .prepare(self.ctd.req(PrepareSnapshotRequest {
                snapshotter: self.args.snapshotter.clone(),
                key: key.clone(),
                parent,
                labels: layer_labels(self.image, i),
            })?)
            .await;
        let mounts = match prepared {
            Err(e) if e.code() == Code::AlreadyExists => {
                sum.lazy += 1;
                say("mounted lazily".into());
                return Ok(());
            }
            Err(e) => return Err(e).with_context(|| format!("preparing layer {}", layer.digest)),
            Ok(r) => r.into_inner().mounts,
        };
        let why = if layer.annotation(labels::TOC_DIGEST).is_some() {
            format!(
                "the {} snapshotter did not serve it remotely (see its log)",
                self.args.snapshotter
            )
        } else {
            "not eStargz (no TOC digest annotation)".to_owned()
        };
        say(format!("unpacking ({why})"));
        sum.fallbacks.push((layer.digest.to_string(), why));
        let remove = |key: String| async move {
            if let Ok(req) = self.ctd.req(RemoveSnapshotRequest {
                snapshotter: self.args.snapshotter.clone(),
                key,
            }) {
                let _ = SnapshotsClient::new(self.ctd.channel.clone())
                    .remove(req)
                    .await;
            }
        };
        match self
            .fetch_and_apply(layer, &self.image.diff_ids[i], mounts)
            .await
        {
            Ok(n) => sum.bytes_fetched += n,
            Err(e) => {
                remove(key).await;
                return Err(e);
            }
        }
        let commit = snaps
            .commit(self.ctd.req(CommitSnapshotRequest {
                snapshotter: self.args.snapshotter.clone(),
                name: chain.clone(),
                key: key.clone(),
                labels: HashMap::from([(labels::SNAPSHOT_REF.to_owned(), chain)]),
            })?)
            .await;
        match commit {
            Ok(_) => {}
            Err(e) if e.code() == Code::AlreadyExists => remove(key).await,
            Err(e) => return Err(e).with_context(|| format!("committing layer {}", layer.digest)),
        }
        sum.unpacked += 1;
        Ok(())
    }

    /// Whether layer `i`'s chain is already here with this image's bytes.
    ///
    /// A chain names content by diff ID; when another image's layer serves
    /// it (two blobs claiming one diff ID), the snapshotter checks that
    /// layer against its diff ID in the background. This waits for that
    /// check (asking the snapshotter directly: containerd's copy of the
    /// labels is not kept current). Verified: present. Bad: the chain is
    /// removed here and this image's own layer is prepared instead.
    async fn present(&self, i: usize) -> anyhow::Result<bool> {
        let chain = self.image.chains[i].to_string();
        let mut snaps = SnapshotsClient::new(self.ctd.channel.clone());
        let stat = snaps
            .stat(self.ctd.req(StatSnapshotRequest {
                snapshotter: self.args.snapshotter.clone(),
                key: chain.clone(),
            })?)
            .await;
        let Ok(stat) = stat else { return Ok(false) };
        let labels_now = stat.into_inner().info.map(|i| i.labels).unwrap_or_default();
        let ours = self.image.doc.layers[i].digest.to_string();
        match labels_now.get(labels::HOLOGRAM_LAYER) {
            None => return Ok(true), // unpacked (and verified) by containerd
            Some(l) if *l == ours => return Ok(true),
            Some(_) => {}
        }
        match self.wait_for_check(&chain).await? {
            Check::Verified => Ok(true),
            Check::Bad(layer) => {
                tracing::warn!(chain = %chain, served_by = %layer, "the chain's bytes failed their check: removing it and preparing this image's own layer");
                snaps
                    .remove(self.ctd.req(RemoveSnapshotRequest {
                        snapshotter: self.args.snapshotter.clone(),
                        key: chain.clone(),
                    })?)
                    .await
                    .with_context(|| format!(
                        "chain {chain} is served by layer {layer} of another image, which failed its check, and cannot be removed here (remove the image that brought it, then pull again)"
                    ))?;
                Ok(false)
            }
        }
    }

    /// Asks the snapshotter for the check of `chain` until it is decided.
    async fn wait_for_check(&self, chain: &str) -> anyhow::Result<Check> {
        let socket = &self.args.snapshotter_socket;
        let channel = hologram_api::connect_unix(socket).await.with_context(|| {
            format!(
                "chain {chain} is served by another image's layer; watching its check needs the snapshotter's socket {} (--snapshotter-socket)",
                socket.display()
            )
        })?;
        let mut client = SnapshotsClient::new(channel);
        let deadline = Instant::now() + self.args.check_timeout;
        loop {
            let info = client
                .stat(StatSnapshotRequest {
                    snapshotter: String::new(),
                    key: chain.to_owned(),
                })
                .await
                .with_context(|| format!("asking {} about chain {chain}", socket.display()))?
                .into_inner()
                .info
                .unwrap_or_default();
            let served = info
                .labels
                .get(labels::HOLOGRAM_LAYER)
                .cloned()
                .unwrap_or_default();
            match info
                .labels
                .get(labels::HOLOGRAM_VERIFIED)
                .map(String::as_str)
            {
                Some("verified") => return Ok(Check::Verified),
                Some("bad") => return Ok(Check::Bad(served)),
                _ => {}
            }
            if Instant::now() >= deadline {
                bail!(
                    "chain {chain} is served by layer {served} of another image, whose check did not finish within {:?}",
                    self.args.check_timeout
                );
            }
            self.bar
                .step(format!("waiting for the snapshotter's check of {served}"));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Step 4: the config labelled with the snapshot GC root, and the image.
    async fn record_image(&self) -> anyhow::Result<()> {
        let (ctd, image) = (self.ctd, self.image);
        if let Some(top) = image.chains.last() {
            ctd.label_content(
                &image.doc.config.digest,
                &format!("containerd.io/gc.ref.snapshot.{}", self.args.snapshotter),
                &top.to_string(),
            )
            .await?;
        }
        let target = match &image.index {
            Some(ix) => PbDescriptor {
                media_type: ix.media_type.clone(),
                digest: ix.digest.to_string(),
                size: i64::try_from(ix.bytes.len()).unwrap_or(i64::MAX),
                annotations: HashMap::new(),
            },
            None => PbDescriptor {
                media_type: image.manifest.media_type.clone(),
                digest: image.manifest.digest.to_string(),
                size: i64::try_from(image.manifest.bytes.len()).unwrap_or(i64::MAX),
                annotations: HashMap::new(),
            },
        };
        let record = Image {
            name: image.name.clone(),
            labels: HashMap::new(),
            target: Some(target),
            created_at: None,
            updated_at: None,
        };
        let mut images = ImagesClient::new(ctd.channel.clone());
        match images
            .create(ctd.req(CreateImageRequest {
                image: Some(record.clone()),
                source_date_epoch: None,
            })?)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Code::AlreadyExists => {
                images
                    .update(ctd.req(UpdateImageRequest {
                        image: Some(record),
                        update_mask: None,
                        source_date_epoch: None,
                    })?)
                    .await
                    .context("updating the image record")?;
                Ok(())
            }
            Err(e) => Err(e).context("creating the image record"),
        }
    }

    /// Streams a layer from the registry into containerd's content store
    /// (digest checked on the way and by containerd), applies it to the
    /// mounts with containerd's diff service and checks the result's diff ID.
    async fn fetch_and_apply(
        &self,
        layer: &Descriptor,
        diff_id: &Digest,
        mounts: Vec<hologram_api::types::Mount>,
    ) -> anyhow::Result<u64> {
        let size = layer.size;
        // Download in pieces straight into the content stream; the last
        // message commits with the expected digest, which containerd checks too.
        let (tx, rx) = tokio::sync::mpsc::channel::<WriteContentRequest>(2);
        let (reg, r, digest, bar) = (
            self.registry.clone(),
            self.image.reference.clone(),
            layer.digest,
            self.bar.clone(),
        );
        let download = tokio::spawn(async move {
            let reference_name = format!("hologram-pull-{digest}");
            let mut hasher = Digest::hasher();
            let mut off = 0u64;
            while off < size {
                let len = PIECE.min(size - off);
                let bytes = reg
                    .read_range(&r, &digest, off, len)
                    .await
                    .with_context(|| format!("downloading layer {digest}"))?;
                hasher.update(&bytes);
                bar.bytes("downloading", &digest.to_string(), off + len, size);
                let last = off + len == size;
                if last {
                    let got = std::mem::take(&mut hasher).finish();
                    if got != digest {
                        bail!("layer {digest} downloaded with digest {got}");
                    }
                }
                let msg = WriteContentRequest {
                    action: if last {
                        WriteAction::Commit as i32
                    } else {
                        WriteAction::Write as i32
                    },
                    r#ref: reference_name.clone(),
                    total: i64::try_from(size).unwrap_or(i64::MAX),
                    expected: digest.to_string(),
                    offset: i64::try_from(off).unwrap_or(i64::MAX),
                    data: bytes.to_vec(),
                    labels: HashMap::new(),
                };
                if tx.send(msg).await.is_err() {
                    bail!("containerd closed the content stream for {digest}");
                }
                off += len;
            }
            Ok(())
        });
        let written = self
            .ctd
            .write_stream(
                &layer.digest,
                tokio_stream::wrappers::ReceiverStream::new(rx),
            )
            .await;
        download.await.context("download task failed")??;
        written?;
        let applied = DiffClient::new(self.ctd.channel.clone())
            .apply(self.ctd.req(ApplyRequest {
                diff: Some(pb_desc(layer)),
                mounts,
                payloads: HashMap::new(),
                sync_fs: false,
            })?)
            .await
            .with_context(|| format!("applying layer {}", layer.digest))?
            .into_inner()
            .applied
            .context("diff service returned no descriptor")?;
        if applied.digest != diff_id.to_string() {
            bail!(
                "layer {} unpacked to {} but the config says {diff_id}",
                layer.digest,
                applied.digest
            );
        }
        Ok(size)
    }
}

/// The decided check of a chain served by another image's layer.
enum Check {
    Verified,
    /// It failed; the layer that serves it.
    Bad(String),
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn image_layers_label_fits_the_limit() {
        let many: Vec<Digest> = (0..100u8).map(|i| Digest::from_bytes([i; 32])).collect();
        let l = image_layers_label(&many);
        assert!(l.len() + labels::CRI_IMAGE_LAYERS.len() <= MAX_LABEL);
        assert!(l.starts_with(&many[0].to_string()));
        assert_eq!(
            l.split(',').count(),
            (MAX_LABEL - labels::CRI_IMAGE_LAYERS.len() + 1) / 72
        );
    }

    fn resolved(annotations: &[(&str, &str)]) -> Resolved {
        let mut layer = Descriptor::new("l", Digest::of(b"layer"), 10);
        for (k, v) in annotations {
            layer.annotations.insert((*k).into(), (*v).into());
        }
        let doc = ImageManifest {
            schema_version: 2,
            media_type: None,
            artifact_type: None,
            config: Descriptor::new("c", Digest::of(b"config"), 1),
            layers: vec![layer],
            subject: None,
            annotations: Default::default(),
        };
        let bytes = Bytes::from(doc.to_bytes());
        let diff_ids = vec![Digest::of(b"diff")];
        Resolved {
            reference: Reference::parse("r.example/public:1").unwrap(),
            name: "r.example/public:1".into(),
            index: None,
            manifest: Manifest {
                digest: Digest::of(&bytes),
                bytes,
                media_type: hologram_oci::media_types::OCI_MANIFEST.into(),
            },
            doc,
            config: Bytes::new(),
            chains: hologram_oci::chain_ids(&diff_ids),
            diff_ids,
        }
    }

    #[test]
    fn annotations_cannot_redirect_the_layer_labels() {
        let private = Digest::of(b"private layer").to_string();
        let image = resolved(&[
            (labels::CRI_IMAGE_REF, "private.example/secret:1"),
            (labels::CRI_LAYER_DIGEST, &private),
            (labels::CRI_MANIFEST_DIGEST, &private),
            (labels::STARGZ_REFERENCE, "private.example/secret:1"),
            (labels::STARGZ_DIGEST, &private),
            (labels::HOLOGRAM_VERIFIED, "verified"),
            (labels::REMOTE, "remote snapshot"),
            (labels::TOC_DIGEST, "sha256:t"),
            ("org.example/other", "x"),
        ]);
        let l = layer_labels(&image, 0);
        assert_eq!(l[labels::CRI_IMAGE_REF], "r.example/public:1");
        assert_eq!(
            l[labels::CRI_LAYER_DIGEST],
            Digest::of(b"layer").to_string()
        );
        assert_eq!(
            l[labels::CRI_MANIFEST_DIGEST],
            image.manifest.digest.to_string()
        );
        assert_eq!(l[labels::SNAPSHOT_REF], image.chains[0].to_string());
        for gone in [
            labels::STARGZ_REFERENCE,
            labels::STARGZ_DIGEST,
            labels::HOLOGRAM_VERIFIED,
            labels::REMOTE,
            "org.example/other",
        ] {
            assert!(!l.contains_key(gone), "{gone} passed through");
        }
        // stargz-snapshotter still finds its TOC digest annotation.
        assert_eq!(l[labels::TOC_DIGEST], "sha256:t");
    }
}
