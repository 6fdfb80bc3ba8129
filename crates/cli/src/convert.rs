//! `hologram convert SRC DST`: rewrite an image's layers into eStargz and
//! push the result, so an image can be lazily pulled with no other tool.
//!
//! Per layer ([`convert_layer`]): download (in pieces, to a temporary file,
//! digest checked) → decompress (gzip or plain tar) →
//! `hologram_estargz::convert` → push. Then ([`push_image`]) a new config (new
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

/// Options of `hologram convert`.
#[derive(Debug, Clone)]
pub struct ConvertArgs {
    pub source: String,
    pub target: String,
    pub registry: RegistryConfig,
    pub chunk_size: usize,
    /// Files to put before the prefetch landmark (fetched at mount).
    pub prefetch: Vec<String>,
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
    let bar = Progress::layers(image.doc.layers.len());
    let mut converted = Vec::new();
    for (i, layer) in image.doc.layers.iter().enumerate() {
        let c = convert_layer(&client, &src, &dst, layer, args, &bar).await?;
        bar.layer_done(format!(
            "layer {}/{} {} -> {} ({} bytes, TOC {})",
            i + 1,
            image.doc.layers.len(),
            layer.digest,
            c.digest,
            c.size,
            c.toc_digest
        ));
        converted.push(c);
    }
    bar.finish();
    push_image(&client, &dst, &image.doc, &image.config, &converted).await
}

/// Downloads one layer (checked against its digest), converts it and
/// pushes the eStargz blob.
async fn convert_layer(
    client: &RegistryClient,
    src: &Reference,
    dst: &Reference,
    layer: &Descriptor,
    args: &ConvertArgs,
    bar: &Progress,
) -> anyhow::Result<Converted> {
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
    raw.seek(SeekFrom::Start(0))?;
    let media = layer.media_type.as_str();
    let input: Box<dyn Read> = if media.ends_with("+zstd") || media.ends_with(".zstd") {
        bail!("layer {digest} is zstd-compressed ({media}); only gzip and plain tar layers can be converted");
    } else if media.ends_with("tar") || media.ends_with(".tar") {
        Box::new(BufReader::new(raw))
    } else {
        Box::new(flate2::read::MultiGzDecoder::new(BufReader::new(raw)))
    };
    bar.step(format!("converting layer {digest}"));
    let mut out = tempfile::tempfile().context("temporary file")?;
    let opts = ConvertOptions {
        chunk_size: args.chunk_size,
        prioritized_files: args.prefetch.clone(),
        ..ConvertOptions::default()
    };
    let converted = {
        let mut w = BufWriter::new(&mut out);
        let c =
            convert(input, &mut w, &opts).with_context(|| format!("converting layer {digest}"))?;
        w.flush()?;
        c
    };
    out.seek(SeekFrom::Start(0))?;
    let mut blob = Vec::with_capacity(usize::try_from(converted.size).unwrap_or(0));
    out.read_to_end(&mut blob)?;
    bar.step(format!("pushing layer {}", converted.digest));
    client
        .push_blob(dst, &converted.digest, bytes::Bytes::from(blob))
        .await
        .with_context(|| format!("pushing layer {}", converted.digest))?;
    Ok(converted)
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
