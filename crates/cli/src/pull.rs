//! `hologram pull`: a remote-snapshot pull through containerd's API, the way
//! containerd's own unpacker does it, but with the layer labels a remote
//! snapshotter needs (plain `ctr pull` passes none, so it can never be lazy).
//!
//! 1. resolve the reference in the registry (platform manifest, config);
//! 2. under a lease, store index/manifest/config in containerd's content
//!    store with the GC labels containerd's own pull sets;
//! 3. for each layer, Prepare on the snapshotter with `snapshot.ref` = chain
//!    ID plus the CRI layer labels (and the layer's `containerd.io/snapshot/`
//!    annotations, e.g. the eStargz TOC digest). AlreadyExists = mounted
//!    lazily. Mounts = the snapshotter could not: fetch the layer (streamed,
//!    digest-checked), apply it with containerd's diff service, check the
//!    diff ID, commit — and say so in the summary;
//! 4. label the config with the snapshot GC root and create the image record.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context as _};
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
use hologram_api::types::Descriptor;
use hologram_remote::{Reference, RegistryClient, RegistryConfig};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use tonic::transport::Channel;
use tonic::Code;

use crate::progress::Progress;

/// Labels a remote snapshotter reads (containerd's `snapshotters` package).
const LABEL_SNAPSHOT_REF: &str = "containerd.io/snapshot.ref";
const LABEL_IMAGE_REF: &str = "containerd.io/snapshot/cri.image-ref";
const LABEL_LAYER_DIGEST: &str = "containerd.io/snapshot/cri.layer-digest";
const LABEL_MANIFEST_DIGEST: &str = "containerd.io/snapshot/cri.manifest-digest";
const LABEL_IMAGE_LAYERS: &str = "containerd.io/snapshot/cri.image-layers";
const TOC_DIGEST: &str = "containerd.io/snapshot/stargz/toc.digest";
/// containerd's label size limit (key + value).
const MAX_LABEL: usize = 4096;
/// Streamed layer downloads go in pieces of this size.
const PIECE: u64 = 4 * 1024 * 1024;

/// What to pull and where.
#[derive(Debug, Clone)]
pub struct PullArgs {
    pub address: std::path::PathBuf,
    pub namespace: String,
    pub snapshotter: String,
    pub registry: RegistryConfig,
    pub reference: String,
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

#[derive(Debug, Deserialize)]
struct DescriptorDoc {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    size: i64,
    #[serde(default)]
    annotations: HashMap<String, String>,
}

#[derive(Debug, Deserialize)]
struct ManifestDoc {
    config: DescriptorDoc,
    #[serde(default)]
    layers: Vec<DescriptorDoc>,
}

#[derive(Debug, Deserialize)]
struct IndexDoc {
    #[serde(default)]
    manifests: Vec<DescriptorDoc>,
}

#[derive(Debug, Deserialize)]
struct RootFs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct ConfigDoc {
    rootfs: RootFs,
}

fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// containerd's chain IDs: `chain[0] = diff[0]`; `chain[i] = H(chain[i-1] + " " + diff[i])`.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => sha256(format!("{prev} {d}").as_bytes()),
        };
        out.push(next);
    }
    out
}

/// The CRI `image-layers` label: this and the following layer digests,
/// comma-separated, cut to containerd's label size ("skipping layers is allowed").
pub fn image_layers_label(digests: &[String]) -> String {
    let budget = MAX_LABEL - LABEL_IMAGE_LAYERS.len();
    let mut out = String::new();
    for d in digests {
        let extra = if out.is_empty() { d.len() } else { d.len() + 1 };
        if out.len() + extra > budget {
            break;
        }
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(d);
    }
    out
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

    /// Writes a small blob as content `digest` (skipped if present).
    async fn write_content(
        &self,
        digest: &str,
        data: Vec<u8>,
        labels: HashMap<String, String>,
    ) -> anyhow::Result<()> {
        let total = i64::try_from(data.len()).unwrap_or(i64::MAX);
        let msg = WriteContentRequest {
            action: WriteAction::Commit as i32,
            r#ref: format!("hologram-pull-{digest}"),
            total,
            expected: digest.to_owned(),
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
        digest: &str,
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

    async fn label_content(&self, digest: &str, key: &str, value: &str) -> anyhow::Result<()> {
        let mut client = ContentClient::new(self.channel.clone());
        let info = Info {
            digest: digest.to_owned(),
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

fn desc(d: &DescriptorDoc) -> Descriptor {
    Descriptor {
        media_type: d.media_type.clone(),
        digest: d.digest.clone(),
        size: d.size,
        annotations: d.annotations.clone(),
    }
}

fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // civil from days (Howard Hinnant's algorithm)
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Runs the pull; prints progress on a terminal; returns the summary.
pub async fn pull(args: &PullArgs) -> anyhow::Result<Summary> {
    let started = Instant::now();
    let reference = Reference::parse(&args.reference)
        .with_context(|| format!("invalid reference {:?}", args.reference))?;
    let image_name = reference.to_string();
    let registry =
        RegistryClient::new(args.registry.clone()).context("cannot set up the registry client")?;
    let (index, manifest) = registry
        .resolve_platform(&reference)
        .await
        .with_context(|| format!("resolving {image_name}"))?;
    let mdoc: ManifestDoc =
        serde_json::from_slice(&manifest.bytes).context("the manifest is not an image manifest")?;
    let config = registry
        .fetch_blob(&reference, &mdoc.config.digest, 64 * 1024 * 1024)
        .await
        .context("fetching the image config")?;
    let cdoc: ConfigDoc =
        serde_json::from_slice(&config).context("the image config is not valid JSON")?;
    if cdoc.rootfs.diff_ids.len() != mdoc.layers.len() {
        bail!(
            "image config lists {} diff IDs for {} layers",
            cdoc.rootfs.diff_ids.len(),
            mdoc.layers.len()
        );
    }
    let chains = chain_ids(&cdoc.rootfs.diff_ids);
    let mut sum = Summary {
        image: image_name.clone(),
        manifest_digest: manifest.digest.clone(),
        layers: mdoc.layers.len(),
        image_bytes: mdoc
            .layers
            .iter()
            .map(|l| u64::try_from(l.size).unwrap_or(0))
            .sum(),
        bytes_fetched: (manifest.bytes.len()
            + config.len()
            + index.as_ref().map_or(0, |i| i.bytes.len())) as u64,
        ..Summary::default()
    };

    let channel = hologram_api::connect_unix(&args.address)
        .await
        .with_context(|| format!("cannot connect to containerd at {}", args.address.display()))?;
    let mut ctd = Ctd {
        channel: channel.clone(),
        namespace: args.namespace.clone(),
        lease: None,
    };
    let lease_id = format!(
        "hologram-pull-{}",
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    );
    let expire = rfc3339(SystemTime::now() + Duration::from_secs(3600));
    LeasesClient::new(channel.clone())
        .create(ctd.req(CreateRequest {
            id: lease_id.clone(),
            labels: HashMap::from([("containerd.io/gc.expire".to_owned(), expire)]),
        })?)
        .await
        .context("creating a lease")?;
    ctd.lease = Some(lease_id.clone());

    let bar = Progress::layers(mdoc.layers.len());
    let result = unpack(
        &ctd,
        &registry,
        &reference,
        args,
        &mdoc,
        &manifest,
        index.as_ref(),
        &config,
        &chains,
        &cdoc,
        &mut sum,
        &bar,
    )
    .await;
    bar.finish();

    // The image record and GC labels now hold everything; drop the lease.
    let mut plain = Ctd {
        channel: channel.clone(),
        namespace: args.namespace.clone(),
        lease: None,
    };
    plain.lease = None;
    let _ = LeasesClient::new(channel)
        .delete(plain.req(DeleteRequest {
            id: lease_id,
            sync: false,
        })?)
        .await;
    result?;
    sum.elapsed = started.elapsed();
    Ok(sum)
}

#[allow(clippy::too_many_arguments)]
async fn unpack(
    ctd: &Ctd,
    registry: &RegistryClient,
    reference: &Reference,
    args: &PullArgs,
    mdoc: &ManifestDoc,
    manifest: &hologram_remote::Manifest,
    index: Option<&hologram_remote::Manifest>,
    config: &[u8],
    chains: &[String],
    cdoc: &ConfigDoc,
    sum: &mut Summary,
    bar: &Progress,
) -> anyhow::Result<()> {
    let say = |msg: String| bar.layer_done(msg);
    // content: config, manifest (GC refs to config and layers), index
    ctd.write_content(&mdoc.config.digest, config.to_vec(), HashMap::new())
        .await?;
    let mut mlabels = HashMap::from([(
        "containerd.io/gc.ref.content.config".to_owned(),
        mdoc.config.digest.clone(),
    )]);
    for (i, l) in mdoc.layers.iter().enumerate() {
        mlabels.insert(
            format!("containerd.io/gc.ref.content.l.{i}"),
            l.digest.clone(),
        );
    }
    let mlen = i64::try_from(manifest.bytes.len()).unwrap_or(i64::MAX);
    ctd.write_content(&manifest.digest, manifest.bytes.to_vec(), mlabels)
        .await?;
    let target = match index {
        Some(ix) => {
            let idoc: IndexDoc =
                serde_json::from_slice(&ix.bytes).context("the index is not valid JSON")?;
            let labels = idoc
                .manifests
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    (
                        format!("containerd.io/gc.ref.content.m.{i}"),
                        m.digest.clone(),
                    )
                })
                .collect();
            let ilen = i64::try_from(ix.bytes.len()).unwrap_or(i64::MAX);
            ctd.write_content(&ix.digest, ix.bytes.to_vec(), labels)
                .await?;
            Descriptor {
                media_type: ix.media_type.clone(),
                digest: ix.digest.clone(),
                size: ilen,
                annotations: HashMap::new(),
            }
        }
        None => Descriptor {
            media_type: manifest.media_type.clone(),
            digest: manifest.digest.clone(),
            size: mlen,
            annotations: HashMap::new(),
        },
    };

    let mut snaps = SnapshotsClient::new(ctd.channel.clone());
    let layer_digests: Vec<String> = mdoc.layers.iter().map(|l| l.digest.clone()).collect();
    for (i, layer) in mdoc.layers.iter().enumerate() {
        let chain = &chains[i];
        let parent = if i == 0 {
            String::new()
        } else {
            chains[i - 1].clone()
        };
        let stat = snaps
            .stat(ctd.req(StatSnapshotRequest {
                snapshotter: args.snapshotter.clone(),
                key: chain.clone(),
            })?)
            .await;
        if stat.is_ok() {
            sum.present += 1;
            say(format!(
                "layer {}/{} {}: already present",
                i + 1,
                sum.layers,
                layer.digest
            ));
            continue;
        }
        let mut labels = HashMap::from([
            (LABEL_SNAPSHOT_REF.to_owned(), chain.clone()),
            (LABEL_IMAGE_REF.to_owned(), sum.image.clone()),
            (LABEL_LAYER_DIGEST.to_owned(), layer.digest.clone()),
            (LABEL_MANIFEST_DIGEST.to_owned(), manifest.digest.clone()),
            (
                LABEL_IMAGE_LAYERS.to_owned(),
                image_layers_label(&layer_digests[i..]),
            ),
        ]);
        for (k, v) in &layer.annotations {
            if k.starts_with("containerd.io/snapshot/") && k.len() + v.len() <= MAX_LABEL {
                labels.insert(k.clone(), v.clone());
            }
        }
        let key = format!(
            "extract-{}-{i} {chain}",
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        );
        let prepared = snaps
            .prepare(ctd.req(PrepareSnapshotRequest {
                snapshotter: args.snapshotter.clone(),
                key: key.clone(),
                parent: parent.clone(),
                labels: labels.clone(),
            })?)
            .await;
        let mounts = match prepared {
            Err(e) if e.code() == Code::AlreadyExists => {
                sum.lazy += 1;
                say(format!(
                    "layer {}/{} {}: mounted lazily",
                    i + 1,
                    sum.layers,
                    layer.digest
                ));
                continue;
            }
            Err(e) => return Err(e).with_context(|| format!("preparing layer {}", layer.digest)),
            Ok(r) => r.into_inner().mounts,
        };
        let why = if layer.annotations.contains_key(TOC_DIGEST) {
            format!(
                "the {} snapshotter did not serve it remotely (see its log)",
                args.snapshotter
            )
        } else {
            "not eStargz (no TOC digest annotation)".to_owned()
        };
        say(format!(
            "layer {}/{} {}: unpacking ({why})",
            i + 1,
            sum.layers,
            layer.digest
        ));
        sum.fallbacks.push((layer.digest.clone(), why));
        let res = fetch_and_apply(
            ctd,
            registry,
            reference,
            layer,
            &cdoc.rootfs.diff_ids[i],
            mounts,
            bar.clone(),
        )
        .await;
        match res {
            Ok(n) => sum.bytes_fetched += n,
            Err(e) => {
                let _ = snaps
                    .remove(ctd.req(RemoveSnapshotRequest {
                        snapshotter: args.snapshotter.clone(),
                        key: key.clone(),
                    })?)
                    .await;
                return Err(e);
            }
        }
        let commit = snaps
            .commit(ctd.req(CommitSnapshotRequest {
                snapshotter: args.snapshotter.clone(),
                name: chain.clone(),
                key: key.clone(),
                labels: HashMap::from([(LABEL_SNAPSHOT_REF.to_owned(), chain.clone())]),
            })?)
            .await;
        match commit {
            Ok(_) => {}
            Err(e) if e.code() == Code::AlreadyExists => {
                let _ = snaps
                    .remove(ctd.req(RemoveSnapshotRequest {
                        snapshotter: args.snapshotter.clone(),
                        key,
                    })?)
                    .await;
            }
            Err(e) => return Err(e).with_context(|| format!("committing layer {}", layer.digest)),
        }
        sum.unpacked += 1;
    }

    if let Some(top) = chains.last() {
        ctd.label_content(
            &mdoc.config.digest,
            &format!("containerd.io/gc.ref.snapshot.{}", args.snapshotter),
            top,
        )
        .await?;
    }
    let image = Image {
        name: sum.image.clone(),
        labels: HashMap::new(),
        target: Some(target),
        created_at: None,
        updated_at: None,
    };
    let mut images = ImagesClient::new(ctd.channel.clone());
    match images
        .create(ctd.req(CreateImageRequest {
            image: Some(image.clone()),
            source_date_epoch: None,
        })?)
        .await
    {
        Ok(_) => {}
        Err(e) if e.code() == Code::AlreadyExists => {
            images
                .update(ctd.req(UpdateImageRequest {
                    image: Some(image),
                    update_mask: None,
                    source_date_epoch: None,
                })?)
                .await
                .context("updating the image record")?;
        }
        Err(e) => return Err(e).context("creating the image record"),
    }
    Ok(())
}

/// Streams a layer from the registry into containerd's content store
/// (digest checked on the way and by containerd), applies it to the mounts
/// with containerd's diff service and checks the result's diff ID.
async fn fetch_and_apply(
    ctd: &Ctd,
    registry: &RegistryClient,
    reference: &Reference,
    layer: &DescriptorDoc,
    diff_id: &str,
    mounts: Vec<hologram_api::types::Mount>,
    bar: Progress,
) -> anyhow::Result<u64> {
    let size = u64::try_from(layer.size).context("negative layer size")?;
    // Download in pieces straight into the content stream; the last message
    // commits with the expected digest, which containerd checks too.
    let (tx, rx) = tokio::sync::mpsc::channel::<WriteContentRequest>(2);
    let (reg, r, digest) = (registry.clone(), reference.clone(), layer.digest.clone());
    let total = layer.size;
    let download = tokio::spawn(async move {
        let reference_name = format!("hologram-pull-{digest}");
        let mut hasher = Sha256::new();
        let mut off = 0u64;
        while off < size {
            let len = PIECE.min(size - off);
            let bytes = reg
                .read_range(&r, &digest, off, len)
                .await
                .with_context(|| format!("downloading layer {digest}"))?;
            hasher.update(&bytes);
            bar.bytes("downloading", &digest, off + len, size);
            let last = off + len == size;
            if last {
                let got = format!("sha256:{}", hex::encode(hasher.clone().finalize()));
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
                total,
                expected: digest.clone(),
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
    let written = ctd
        .write_stream(
            &layer.digest,
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )
        .await;
    download.await.context("download task failed")??;
    written?;
    let applied = DiffClient::new(ctd.channel.clone())
        .apply(ctd.req(ApplyRequest {
            diff: Some(desc(layer)),
            mounts,
            payloads: HashMap::new(),
            sync_fs: false,
        })?)
        .await
        .with_context(|| format!("applying layer {}", layer.digest))?
        .into_inner()
        .applied
        .context("diff service returned no descriptor")?;
    if applied.digest != diff_id {
        bail!(
            "layer {} unpacked to {} but the config says {diff_id}",
            layer.digest,
            applied.digest
        );
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_containerd() {
        let d = vec!["sha256:a".to_string(), "sha256:b".to_string()];
        let c = chain_ids(&d);
        assert_eq!(c[0], "sha256:a");
        assert_eq!(c[1], sha256(b"sha256:a sha256:b"));
    }

    #[test]
    fn image_layers_label_fits_the_limit() {
        let many: Vec<String> = (0..100).map(|i| format!("sha256:{:064x}", i)).collect();
        let l = image_layers_label(&many);
        assert!(l.len() + LABEL_IMAGE_LAYERS.len() <= MAX_LABEL);
        assert!(l.starts_with(&many[0]));
        assert_eq!(
            l.split(',').count(),
            (MAX_LABEL - LABEL_IMAGE_LAYERS.len() + 1) / 72
        );
    }

    #[test]
    fn rfc3339_known_dates() {
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000)),
            "2026-11-18T11:06:40Z"
        );
    }
}
