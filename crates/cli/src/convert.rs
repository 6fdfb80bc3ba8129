//! `hologram convert SRC DST`: rewrite an image's layers into eStargz and
//! push the result, so an image can be lazily pulled with no other tool.
//!
//! Per layer: download ([`download_layer`]: in pieces, to a temporary file,
//! digest checked) → decompress (gzip or plain tar) and
//! `hologram_estargz::convert` ([`convert_file`]) → push ([`push_layer`]).
//! With `--record`, a first conversion is mounted and run
//! ([`crate::record`]) to learn the order of the files the workload opens,
//! and the layers are converted again with those files first. Then ([`push_image`]) a new config (new
//! diff IDs: an eStargz tar carries its TOC and landmark entries) and an OCI
//! manifest whose layers carry the TOC-digest and uncompressed-size
//! annotations that snapshotters read.

use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};

use anyhow::{bail, Context as _};
use hologram_estargz::{convert, ConvertOptions, Converted};
use hologram_oci::{
    labels, media_types, Descriptor, Digest, ImageConfig, ImageManifest, Reference,
};
use hologram_remote::{RegistryClient, RegistryConfig};
use serde_json::Value;

use crate::progress::Progress;

const PIECE: u64 = 4 * 1024 * 1024;

/// Files a container runtime reads in the image before the workload runs:
/// first in every recorded profile.
const RUNTIME_READS: &[&str] = &["etc/passwd", "etc/group"];

/// Options of `hologram convert`.
#[derive(Debug, Clone)]
pub struct ConvertArgs {
    pub source: String,
    pub target: String,
    pub registry: RegistryConfig,
    pub chunk_size: usize,
    /// Files to put before the prefetch landmark (fetched at mount).
    pub prefetch: Vec<String>,
    /// Record a profile first (`--record`): `Some("")` runs the image's
    /// own Entrypoint + Cmd, `Some(cmd)` runs `/bin/sh -c cmd`.
    pub record: Option<String>,
    /// Bound on the recorded workload.
    pub record_timeout: std::time::Duration,
}

/// Runs the conversion; returns the pushed manifest's digest.
pub async fn run(args: &ConvertArgs) -> anyhow::Result<Digest> {
    let client =
        RegistryClient::new(args.registry.clone()).context("cannot set up the registry client")?;
    let src = Reference::parse(&args.source)
        .with_context(|| format!("invalid reference {:?}", args.source))?;
    let dst = Reference::parse(&args.target)
        .with_context(|| format!("invalid reference {:?}", args.target))?;
    let image = crate::pull::resolve(&client, &src).await?;
    let n = image.doc.layers.len();
    let bar = Progress::layers(n);
    let mut raws = Vec::with_capacity(n);
    for layer in &image.doc.layers {
        raws.push(download_layer(&client, &src, layer, &bar).await?);
    }
    let mut prioritized = vec![args.prefetch.clone(); n];
    if let Some(command) = &args.record {
        // A first conversion (no profile), mounted and run to learn the order.
        let dir = tempfile::tempdir().context("temporary directory")?;
        let mut blobs = Vec::with_capacity(n);
        let mut first = Vec::with_capacity(n);
        for (i, (raw, layer)) in raws.iter_mut().zip(&image.doc.layers).enumerate() {
            bar.step(format!(
                "converting layer {} for the recording",
                layer.digest
            ));
            let path = dir.path().join(format!("layer{i}"));
            let mut out = std::fs::File::create(&path)?;
            first.push(convert_file(
                raw,
                layer,
                &mut out,
                args.chunk_size,
                &args.prefetch,
            )?);
            blobs.push(path);
        }
        let workload = crate::record::Workload::from_config(&image.config, Some(command.as_str()))?;
        let rt = tokio::runtime::Handle::current();
        let timeout = args.record_timeout;
        let profile = tokio::task::spawn_blocking(move || {
            crate::record::record(&blobs, &first, &workload, timeout, &rt)
        })
        .await
        .context("the recording panicked")??;
        for (p, rec) in prioritized.iter_mut().zip(profile) {
            // What the container runtime reads before the workload starts
            // (containerd resolves the user in /etc/passwd and /etc/group),
            // then what the workload opened. Files not in a layer are skipped.
            for f in RUNTIME_READS.iter().map(|f| (*f).to_owned()).chain(rec) {
                if !p.contains(&f) {
                    p.push(f);
                }
            }
        }
    }
    let mut converted = Vec::with_capacity(n);
    for (i, (raw, layer)) in raws.iter_mut().zip(&image.doc.layers).enumerate() {
        bar.step(format!("converting layer {}", layer.digest));
        let mut out = tempfile::tempfile().context("temporary file")?;
        let c = convert_file(raw, layer, &mut out, args.chunk_size, &prioritized[i])?;
        push_layer(&client, &dst, &mut out, &c, &bar).await?;
        bar.layer_done(format!(
            "layer {}/{} {} -> {} ({} bytes, TOC {}{})",
            i + 1,
            n,
            layer.digest,
            c.digest,
            c.size,
            c.toc_digest,
            if prioritized[i].is_empty() {
                String::new()
            } else {
                format!(
                    ", {} files before the prefetch landmark",
                    prioritized[i].len()
                )
            }
        ));
        converted.push(c);
    }
    bar.finish();
    push_image(&client, &dst, &image.doc, &image.config, &converted).await
}

/// Downloads one layer to a temporary file, checked against its digest.
async fn download_layer(
    client: &RegistryClient,
    src: &Reference,
    layer: &Descriptor,
    bar: &Progress,
) -> anyhow::Result<std::fs::File> {
    let digest = layer.digest;
    let mut raw = tempfile::tempfile().context("temporary file")?;
    let mut hasher = Digest::hasher();
    let mut off = 0;
    while off < layer.size {
        let len = PIECE.min(layer.size - off);
        let bytes = client
            .read_range(src, &digest, off, len)
            .await
            .with_context(|| format!("downloading layer {digest}"))?;
        hasher.update(&bytes);
        raw.write_all(&bytes)?;
        off += len;
        bar.bytes("downloading", &digest.to_string(), off, layer.size);
    }
    let got = hasher.finish();
    if got != digest {
        bail!("layer {digest} downloaded with digest {got}");
    }
    Ok(raw)
}

/// Converts the downloaded layer `raw` (gzip or plain tar, by media type)
/// into eStargz in `out`, `prioritized` files first.
fn convert_file(
    raw: &mut std::fs::File,
    layer: &Descriptor,
    out: &mut std::fs::File,
    chunk_size: usize,
    prioritized: &[String],
) -> anyhow::Result<Converted> {
    let digest = layer.digest;
    raw.seek(SeekFrom::Start(0))?;
    let media = layer.media_type.as_str();
    let reader = BufReader::new(&*raw);
    let input: Box<dyn Read + '_> = if media.ends_with("+zstd") || media.ends_with(".zstd") {
        bail!("layer {digest} is zstd-compressed ({media}); only gzip and plain tar layers can be converted");
    } else if media.ends_with("tar") || media.ends_with(".tar") {
        Box::new(reader)
    } else {
        Box::new(flate2::read::MultiGzDecoder::new(reader))
    };
    let opts = ConvertOptions {
        chunk_size,
        prioritized_files: prioritized.to_vec(),
        ..ConvertOptions::default()
    };
    let mut w = BufWriter::new(out);
    let c = convert(input, &mut w, &opts).with_context(|| format!("converting layer {digest}"))?;
    w.flush()?;
    Ok(c)
}

/// Pushes a converted blob (`out`, written by [`convert_file`]).
async fn push_layer(
    client: &RegistryClient,
    dst: &Reference,
    out: &mut std::fs::File,
    converted: &Converted,
    bar: &Progress,
) -> anyhow::Result<()> {
    out.seek(SeekFrom::Start(0))?;
    let mut blob = Vec::with_capacity(usize::try_from(converted.size).unwrap_or(0));
    out.read_to_end(&mut blob)?;
    bar.step(format!("pushing layer {}", converted.digest));
    client
        .push_blob(dst, &converted.digest, bytes::Bytes::from(blob))
        .await
        .with_context(|| format!("pushing layer {}", converted.digest))
}

/// Pushes the new config (diff IDs of the converted layers; everything else
/// as it was) and the OCI manifest naming the eStargz layers.
async fn push_image(
    client: &RegistryClient,
    dst: &Reference,
    source: &ImageManifest,
    source_config: &[u8],
    converted: &[Converted],
) -> anyhow::Result<Digest> {
    // The config is rewritten as JSON so fields this tool does not know survive.
    let mut config: Value =
        serde_json::from_slice(source_config).context("the config is not JSON")?;
    config["rootfs"] = serde_json::json!({
        "type": "layers",
        "diff_ids": converted.iter().map(|c| c.diff_id.to_string()).collect::<Vec<_>>(),
    });
    let config_out = serde_json::to_vec(&config)?;
    let config_digest = Digest::of(&config_out);
    let config_len = config_out.len() as u64;
    client
        .push_blob(dst, &config_digest, bytes::Bytes::from(config_out))
        .await
        .context("pushing the config")?;
    let layers = converted
        .iter()
        .map(|c| {
            let mut d = Descriptor::new(media_types::OCI_LAYER_GZIP, c.digest, c.size);
            d.annotations
                .insert(labels::TOC_DIGEST.to_owned(), c.toc_digest.to_string());
            d.annotations.insert(
                labels::UNCOMPRESSED_SIZE.to_owned(),
                c.uncompressed_size.to_string(),
            );
            d
        })
        .collect();
    let manifest = ImageManifest {
        schema_version: 2,
        media_type: Some(media_types::OCI_MANIFEST.to_owned()),
        artifact_type: None,
        config: Descriptor::new(media_types::OCI_CONFIG, config_digest, config_len),
        layers,
        subject: None,
        annotations: source.annotations.clone(),
    };
    let bytes = manifest.to_bytes();
    // What we push must read back as a valid image.
    ImageConfig::parse_for(&serde_json::to_vec(&config)?, &manifest)
        .context("the converted config")?;
    let digest = client
        .push_manifest(dst, media_types::OCI_MANIFEST, bytes::Bytes::from(bytes))
        .await
        .context("pushing the manifest")?;
    Ok(digest)
}
