//! `hologram convert SRC DST`: rewrite an image's layers into eStargz and
//! push the result, so an image can be lazily pulled with no other tool.
//!
//! Per layer: download (in pieces, to a temporary file, digest checked) →
//! decompress (gzip or plain tar) → `hologram_estargz::convert` → push. Then a
//! new config (new diff IDs: an eStargz tar carries its TOC and landmark
//! entries) and an OCI manifest whose layers carry the TOC-digest and
//! uncompressed-size annotations that snapshotters read.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};

use anyhow::{bail, Context as _};
use hologram_estargz::{
    convert, ConvertOptions, TOC_DIGEST_ANNOTATION, UNCOMPRESSED_SIZE_ANNOTATION,
};
use hologram_remote::{Reference, RegistryClient, RegistryConfig};
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

const MT_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MT_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MT_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const PIECE: u64 = 4 * 1024 * 1024;
/// Largest config accepted.
const MAX_CONFIG: u64 = 64 * 1024 * 1024;

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

fn sha256_file(f: &mut File) -> anyhow::Result<String> {
    f.seek(SeekFrom::Start(0))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    f.seek(SeekFrom::Start(0))?;
    Ok(format!("sha256:{}", hex::encode(h.finalize())))
}

/// Runs the conversion; returns the pushed manifest's digest.
pub async fn run(args: &ConvertArgs) -> anyhow::Result<String> {
    let client =
        RegistryClient::new(args.registry.clone()).context("cannot set up the registry client")?;
    let src = Reference::parse(&args.source)
        .with_context(|| format!("invalid reference {:?}", args.source))?;
    let dst = Reference::parse(&args.target)
        .with_context(|| format!("invalid reference {:?}", args.target))?;
    let (_, manifest) = client
        .resolve_platform(&src)
        .await
        .with_context(|| format!("resolving {}", args.source))?;
    let mdoc: Value =
        serde_json::from_slice(&manifest.bytes).context("the manifest is not JSON")?;
    let config_digest = mdoc["config"]["digest"]
        .as_str()
        .context("manifest has no config digest")?;
    let config_bytes = client
        .fetch_blob(&src, config_digest, MAX_CONFIG)
        .await
        .context("fetching the config")?;
    let mut config: Value =
        serde_json::from_slice(&config_bytes).context("the config is not JSON")?;
    let layers = mdoc["layers"]
        .as_array()
        .context("manifest has no layers")?;

    let mut new_layers = Vec::new();
    let mut diff_ids = Vec::new();
    let bar = crate::progress::Progress::layers(layers.len());
    for (i, l) in layers.iter().enumerate() {
        let digest = l["digest"].as_str().context("layer without digest")?;
        let size = l["size"].as_u64().context("layer without size")?;
        let media = l["mediaType"].as_str().unwrap_or_default();
        let mut raw = tempfile::tempfile().context("temporary file")?;
        let mut off = 0;
        while off < size {
            let len = PIECE.min(size - off);
            let bytes = client
                .read_range(&src, digest, off, len)
                .await
                .with_context(|| format!("downloading layer {digest}"))?;
            raw.write_all(&bytes)?;
            off += len;
            bar.bytes("downloading", digest, off, size);
        }
        let got = sha256_file(&mut raw)?;
        if got != digest {
            bail!("layer {digest} downloaded with digest {got}");
        }
        let input: Box<dyn Read> = if media.ends_with("+zstd") || media.ends_with(".zstd") {
            bail!("layer {digest} is zstd-compressed ({media}); only gzip and plain tar layers can be converted");
        } else if media.ends_with("tar") || media.ends_with(".tar") {
            Box::new(BufReader::new(raw))
        } else {
            Box::new(flate2::read::MultiGzDecoder::new(BufReader::new(raw)))
        };
        bar.step(format!("converting layer {}/{}", i + 1, layers.len()));
        let mut out = tempfile::tempfile().context("temporary file")?;
        let opts = ConvertOptions {
            chunk_size: args.chunk_size,
            prioritized_files: args.prefetch.clone(),
            ..ConvertOptions::default()
        };
        let converted = {
            let mut w = BufWriter::new(&mut out);
            let c = convert(input, &mut w, &opts)
                .with_context(|| format!("converting layer {digest}"))?;
            w.flush()?;
            c
        };
        out.seek(SeekFrom::Start(0))?;
        let mut blob = Vec::with_capacity(usize::try_from(converted.size).unwrap_or(0));
        out.read_to_end(&mut blob)?;
        bar.step(format!("pushing layer {}/{}", i + 1, layers.len()));
        client
            .push_blob(&dst, &converted.digest, bytes::Bytes::from(blob))
            .await
            .with_context(|| format!("pushing layer {}", converted.digest))?;
        bar.layer_done(format!(
            "layer {}/{} {digest} -> {} ({} bytes, TOC {})",
            i + 1,
            layers.len(),
            converted.digest,
            converted.size,
            converted.toc_digest
        ));
        new_layers.push(json!({
            "mediaType": MT_LAYER_GZIP,
            "digest": converted.digest,
            "size": converted.size,
            "annotations": {
                TOC_DIGEST_ANNOTATION: converted.toc_digest,
                UNCOMPRESSED_SIZE_ANNOTATION: converted.uncompressed_size.to_string(),
            }
        }));
        diff_ids.push(Value::String(converted.diff_id));
    }
    bar.finish();
    config["rootfs"] = json!({ "type": "layers", "diff_ids": diff_ids });
    let config_out = serde_json::to_vec(&config)?;
    let config_out_digest = format!("sha256:{}", hex::encode(Sha256::digest(&config_out)));
    let config_len = config_out.len();
    client
        .push_blob(&dst, &config_out_digest, bytes::Bytes::from(config_out))
        .await
        .context("pushing the config")?;
    let mut manifest_out = json!({
        "schemaVersion": 2,
        "mediaType": MT_MANIFEST,
        "config": { "mediaType": MT_CONFIG, "digest": config_out_digest, "size": config_len },
        "layers": new_layers,
    });
    if let Some(a) = mdoc.get("annotations") {
        manifest_out["annotations"] = a.clone();
    }
    let bytes = serde_json::to_vec(&manifest_out)?;
    let digest = client
        .push_manifest(&dst, MT_MANIFEST, bytes::Bytes::from(bytes))
        .await
        .context("pushing the manifest")?;
    Ok(digest)
}
