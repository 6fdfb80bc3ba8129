//! Against a real `docker-registry` (distribution 2.8) on 127.0.0.1, started
//! per test and killed by PID when the test ends.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Command;

use bytes::Bytes;
use common::*;
use hologram_remote::{
    media_types, Digest, Error, Platform, Reference, RegistryBlob, RegistryClient,
};
use hologram_source::BlobSource;

fn manifest_json(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes).unwrap()
}

#[tokio::test]
async fn pulls_image_pushed_by_skopeo() {
    let reg = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let (summary, layout) = push_test_image(&reg.host, "e2e/layers", "1", work.path());
    let c = RegistryClient::new(test_config(work.path())).unwrap();
    let r = Reference::parse(&format!("{}/e2e/layers:1", reg.host)).unwrap();

    let (index, m) = c.resolve_platform(&r).await.unwrap();
    assert!(index.is_none());
    assert_eq!(m.digest, summary.manifest_digest);
    assert_eq!(m.media_type, media_types::OCI_MANIFEST);
    assert_eq!(
        &m.bytes[..],
        &layout_blob(&layout, &summary.manifest_digest)[..]
    );

    // By digest too (only needs the pull capability).
    let by_digest = c.fetch_manifest(&r.with_digest(&m.digest)).await.unwrap();
    assert_eq!(by_digest, m);

    let mj = manifest_json(&m.bytes);
    assert_eq!(mj["config"]["digest"], summary.config_digest.to_string());
    let config = c
        .fetch_blob(&r, &summary.config_digest, 1 << 20)
        .await
        .unwrap();
    assert_eq!(
        &config[..],
        &layout_blob(&layout, &summary.config_digest)[..]
    );

    let layers = mj["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 3);
    for (desc, digest) in layers.iter().zip(&summary.layers) {
        assert_eq!(desc["digest"], digest.to_string());
        let size = desc["size"].as_u64().unwrap();
        let whole = c.fetch_blob(&r, digest, 64 << 20).await.unwrap();
        assert_eq!(whole.len() as u64, size);
        assert_eq!(&whole[..], &layout_blob(&layout, digest)[..]);
        assert_eq!(c.blob_size(&r, digest).await.unwrap(), size);

        let blob = RegistryBlob::new(c.clone(), r.clone(), *digest, size);
        assert_eq!(blob.digest(), digest);
        let mut probes = vec![
            (0, size.min(1)),
            (0, size),
            (size - 1, 1),
            (size / 2, (size / 2).min(4096)),
        ];
        if size > 1000 {
            probes.extend([
                (1, 999),
                (size / 3, size / 3),
                (size - 513, 513),
                (size - 100_000.min(size), 100_000.min(size)),
            ]);
        }
        for (off, len) in probes {
            let got = blob.read_at(off, len).await.unwrap();
            assert_eq!(
                &got[..],
                &whole[off as usize..(off + len) as usize],
                "{digest} [{off}, +{len})"
            );
        }
    }

    // The busybox layer is the big one: check the limits on it.
    let big = &summary.layers[0];
    let big_size = c.blob_size(&r, big).await.unwrap();
    assert!(big_size > 100_000, "{big_size}");
    let err = c.fetch_blob(&r, big, big_size - 1).await.unwrap_err();
    assert!(matches!(err, Error::TooLarge(_)), "{err}");
    // Starting past the end: distribution answers 416.
    let err = c.read_range(&r, big, big_size, 10).await.unwrap_err();
    assert!(matches!(err, Error::OutOfRange(_)), "{err}");
    // Running past the end: distribution clamps the range; that is a short read.
    let err = c.read_range(&r, big, big_size - 5, 10).await.unwrap_err();
    assert!(matches!(err, Error::OutOfRange(_)), "{err}");

    // Unknown things.
    let err = c.fetch_manifest(&r.with_tag("nope")).await.unwrap_err();
    assert!(matches!(err, Error::NotFound(_)), "{err}");
    let missing = Digest::of(b"not pushed");
    assert!(matches!(
        c.fetch_blob(&r, &missing, 1 << 20).await,
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        c.blob_size(&r, &missing).await,
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        c.read_range(&r, &missing, 0, 1).await,
        Err(Error::NotFound(_))
    ));
    let other_repo = Reference::parse(&format!("{}/e2e/other:1", reg.host)).unwrap();
    assert!(matches!(
        c.fetch_manifest(&other_repo).await,
        Err(Error::NotFound(_))
    ));
}

#[tokio::test]
async fn pushes_blobs_and_manifests_and_reads_them_back() {
    let reg = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let c = RegistryClient::new(test_config(work.path())).unwrap();
    let r = Reference::parse(&format!("{}/pushed/app:v1", reg.host)).unwrap();

    let layer = Bytes::from(pseudo_random(300_000, 42));
    let layer_digest = Digest::of(&layer);
    let config = Bytes::from(
        serde_json::json!({"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[layer_digest]}})
            .to_string(),
    );
    let config_digest = Digest::of(&config);
    c.push_blob(&r, &layer_digest, layer.clone()).await.unwrap();
    c.push_blob(&r, &layer_digest, layer.clone()).await.unwrap(); // exists: skipped
    c.push_blob(&r, &config_digest, config.clone())
        .await
        .unwrap();
    assert_eq!(
        c.fetch_blob(&r, &layer_digest, 1 << 20).await.unwrap(),
        layer
    );
    assert_eq!(
        c.blob_size(&r, &config_digest).await.unwrap(),
        config.len() as u64
    );
    assert_eq!(
        &c.read_range(&r, &layer_digest, 1234, 5678).await.unwrap()[..],
        &layer[1234..1234 + 5678]
    );

    // Data that does not match the digest is refused before any upload.
    let err = c
        .push_blob(&r, &layer_digest, Bytes::from_static(b"other"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");

    let manifest = Bytes::from(
        serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media_types::OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer_digest, "size": layer.len()}]
        })
        .to_string(),
    );
    let digest = c
        .push_manifest(&r, media_types::OCI_MANIFEST, manifest.clone())
        .await
        .unwrap();
    assert_eq!(digest, Digest::of(&manifest));
    let got = c.fetch_manifest(&r).await.unwrap();
    assert_eq!(got.bytes, manifest);
    assert_eq!(got.digest, digest);
    assert_eq!(got.media_type, media_types::OCI_MANIFEST);
    let (idx, resolved) = c.resolve_platform(&r).await.unwrap();
    assert!(idx.is_none());
    assert_eq!(resolved.digest, digest);

    // Push by digest into another tagless reference, then fetch it by digest.
    let r2 = Reference::parse(&format!("{}/pushed/app@{digest}", reg.host)).unwrap();
    assert_eq!(
        c.push_manifest(&r2, media_types::OCI_MANIFEST, manifest.clone())
            .await
            .unwrap(),
        digest
    );
    assert_eq!(c.fetch_manifest(&r2).await.unwrap().bytes, manifest);
    let wrong = r.with_digest(&Digest::of(b"something else"));
    let err = c
        .push_manifest(&wrong, media_types::OCI_MANIFEST, manifest.clone())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");

    // A manifest whose blobs are missing is refused by the registry (a 400).
    let r3 = r.with_tag("broken");
    let missing_layer = Digest::of(b"never pushed");
    let bad = Bytes::from(
        String::from_utf8(manifest.to_vec())
            .unwrap()
            .replace(&layer_digest.to_string(), &missing_layer.to_string()),
    );
    let err = c
        .push_manifest(&r3, media_types::OCI_MANIFEST, bad)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Http { status: 400, body_excerpt, .. } if body_excerpt.contains("MANIFEST_BLOB_UNKNOWN")),
        "{err}"
    );
}

#[tokio::test]
async fn index_resolves_to_this_platform() {
    let reg = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let (summary, layout) = push_test_image(&reg.host, "multi/img", "single", work.path());
    let c = RegistryClient::new(test_config(work.path())).unwrap();
    let base = Reference::parse(&format!("{}/multi/img:single", reg.host)).unwrap();

    let here = Platform::current();
    let other_arch = if here.architecture == "amd64" {
        "arm64"
    } else {
        "amd64"
    };

    // A second image for the other architecture: same layers, its own config.
    let mut config = manifest_json(&layout_blob(&layout, &summary.config_digest));
    config["architecture"] = other_arch.into();
    let config = Bytes::from(config.to_string());
    let config_digest = Digest::of(&config);
    c.push_blob(&base, &config_digest, config.clone())
        .await
        .unwrap();
    let mut other = manifest_json(&layout_blob(&layout, &summary.manifest_digest));
    other["config"]["digest"] = config_digest.to_string().into();
    other["config"]["size"] = config.len().into();
    let other = Bytes::from(other.to_string());
    let other_digest = Digest::of(&other);
    c.push_manifest(
        &base.with_digest(&other_digest),
        media_types::OCI_MANIFEST,
        other.clone(),
    )
    .await
    .unwrap();

    let this_size = layout_blob(&layout, &summary.manifest_digest).len();
    let index = Bytes::from(
        serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media_types::OCI_INDEX,
            "manifests": [
                {"mediaType": media_types::OCI_MANIFEST, "digest": other_digest, "size": other.len(),
                 "platform": {"os": "linux", "architecture": other_arch}},
                {"mediaType": media_types::OCI_MANIFEST, "digest": summary.manifest_digest, "size": this_size,
                 "platform": {"os": "linux", "architecture": here.architecture}}
            ]
        })
        .to_string(),
    );
    let multi = base.with_tag("multi");
    let index_digest = c
        .push_manifest(&multi, media_types::OCI_INDEX, index.clone())
        .await
        .unwrap();

    let (idx, m) = c.resolve_platform(&multi).await.unwrap();
    let idx = idx.unwrap();
    assert!(idx.is_index());
    assert_eq!(idx.media_type, media_types::OCI_INDEX);
    assert_eq!(idx.digest, index_digest);
    assert_eq!(idx.bytes, index);
    assert_eq!(m.digest, summary.manifest_digest);
    assert!(!m.is_index());

    let other_platform = Platform {
        os: "linux".into(),
        architecture: other_arch.into(),
        variant: None,
    };
    let (_, m2) = c
        .resolve_platform_for(&multi, &other_platform)
        .await
        .unwrap();
    assert_eq!(m2.digest, other_digest);
    assert_eq!(m2.bytes, other);

    let nowhere = Platform {
        os: "linux".into(),
        architecture: "s390x".into(),
        variant: None,
    };
    assert!(matches!(
        c.resolve_platform_for(&multi, &nowhere).await,
        Err(Error::NotFound(_))
    ));
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl must be installed");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and a server certificate for 127.0.0.1 signed by it.
fn make_certs(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=hologram test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    );
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    );
}

#[tokio::test]
async fn tls_registry_needs_hosts_toml_ca_or_skip_verify() {
    let certs = tempfile::tempdir().unwrap();
    make_certs(certs.path());
    let reg = Registry::start_with_tls(Some((
        &certs.path().join("server.pem"),
        &certs.path().join("server.key"),
    )));
    let work = tempfile::tempdir().unwrap();
    let r = Reference::parse(&format!("{}/tls/repo:t", reg.host)).unwrap();
    let data = Bytes::from(pseudo_random(10_000, 7));
    let digest = Digest::of(&data);

    let client_with = |name: &str, extra: &str| {
        let hosts = work.path().join(name);
        let d = hosts.join(reg.host.replace(':', "_") + "_");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(
            d.join("hosts.toml"),
            format!("server = \"https://{}\"\n{extra}", reg.host),
        )
        .unwrap();
        let mut cfg = test_config(work.path());
        cfg.hosts_dir = Some(hosts);
        cfg.plain_http = false;
        cfg.retries = 0;
        RegistryClient::new(cfg).unwrap()
    };

    // The CA from hosts.toml (relative paths are relative to its directory).
    std::fs::create_dir_all(
        work.path()
            .join("with-ca")
            .join(reg.host.replace(':', "_") + "_"),
    )
    .unwrap();
    std::fs::copy(
        certs.path().join("ca.pem"),
        work.path()
            .join("with-ca")
            .join(reg.host.replace(':', "_") + "_")
            .join("ca.pem"),
    )
    .unwrap();
    let with_ca = client_with("with-ca", "ca = \"ca.pem\"\n");
    with_ca.push_blob(&r, &digest, data.clone()).await.unwrap();
    assert_eq!(
        with_ca.fetch_blob(&r, &digest, 1 << 20).await.unwrap(),
        data
    );
    assert_eq!(
        &with_ca.read_range(&r, &digest, 100, 100).await.unwrap()[..],
        &data[100..200]
    );

    // No CA: the certificate is rejected.
    let plain = client_with("no-ca", "");
    let err = plain.fetch_blob(&r, &digest, 1 << 20).await.unwrap_err();
    assert!(
        matches!(&err, Error::Transport(m) if m.to_lowercase().contains("certificate")),
        "{err}"
    );

    // skip_verify accepts it.
    let skip = client_with("skip", "skip_verify = true\n");
    assert_eq!(skip.fetch_blob(&r, &digest, 1 << 20).await.unwrap(), data);

    // A CA file that is not PEM is a configuration error.
    std::fs::create_dir_all(
        work.path()
            .join("bad-ca")
            .join(reg.host.replace(':', "_") + "_"),
    )
    .unwrap();
    std::fs::write(
        work.path()
            .join("bad-ca")
            .join(reg.host.replace(':', "_") + "_")
            .join("ca.pem"),
        "junk",
    )
    .unwrap();
    let bad = client_with("bad-ca", "ca = \"ca.pem\"\n");
    assert!(matches!(
        bad.fetch_blob(&r, &digest, 1 << 20).await,
        Err(Error::Config(_))
    ));
}
