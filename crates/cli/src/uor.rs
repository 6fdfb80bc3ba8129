//! `hologram uor`: UOR-IDs of bytes and of images.
//!
//! * `hologram uor id [FILE|-]` — the UOR-ID of a file (or standard input),
//!   streamed, so files of any size work in constant memory;
//! * `hologram uor resolve [--plain-http] REF` — the image's UOR-ID: the
//!   UOR-ID of the bytes of the manifest that runs on this platform (for a
//!   multi-platform index, the platform manifest, not the index).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use hologram_remote::{Reference, RegistryClient, RegistryConfig};
use hologram_trust::UorId;

/// `hologram uor …`
#[derive(clap::Subcommand, Debug)]
pub enum UorCommand {
    /// Print the UOR-ID of a file's bytes (standard input for `-` or none)
    Id {
        /// The file; `-` or nothing reads standard input
        file: Option<PathBuf>,
    },
    /// Print an image's UOR-ID (that of its platform manifest's bytes)
    Resolve {
        #[command(flatten)]
        registry: crate::RegistryArgs,
        /// Also print the manifest digest and media type (to standard error)
        #[arg(long)]
        details: bool,
        /// Also save the manifest bytes as `DIR/<uor-id>.json` (a resolver directory)
        #[arg(long, value_name = "DIR")]
        save: Option<PathBuf>,
        /// Image reference
        reference: String,
    },
    /// Resolve a UOR-ID to its manifest bytes, from a resolver endpoint
    /// (`GET {endpoint}/v1/manifests/{uor_id}`) or a directory, checked by
    /// recomputing the UOR-ID
    Manifest {
        /// Resolver endpoint (e.g. `hologram witness serve`, later CTP-96)
        #[arg(long, env = "HOLOGRAM_CTP96_ENDPOINT")]
        endpoint: Option<String>,
        /// Resolver directory (files of any name)
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Write the manifest here instead of standard output
        #[arg(long)]
        out: Option<PathBuf>,
        /// The UOR-ID
        uor_id: String,
    },
}

/// Runs a `hologram uor` command.
pub async fn run(cmd: UorCommand) -> anyhow::Result<()> {
    match cmd {
        UorCommand::Id { file } => {
            let id = tokio::task::spawn_blocking(move || id_of_file(file.as_deref()))
                .await
                .context("the hashing task failed")??;
            write_stdout(&format!("{id}\n"))?;
        }
        UorCommand::Resolve {
            registry,
            details,
            save,
            reference,
        } => {
            let image = resolve_image(&reference, registry.config()).await?;
            if let Some(dir) = save {
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
                let path = dir.join(format!("{}.json", image.uor_id));
                std::fs::write(&path, &image.bytes)
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
            if details {
                eprintln!(
                    "{}: manifest {} ({}, {} bytes)",
                    image.reference, image.manifest_digest, image.media_type, image.size
                );
            }
            write_stdout(&format!("{}\n", image.uor_id))?;
        }
        UorCommand::Manifest {
            endpoint,
            dir,
            out,
            uor_id,
        } => {
            let uor =
                UorId::parse(&uor_id).with_context(|| format!("invalid UOR-ID {uor_id:?}"))?;
            let bytes = resolve_uor(&uor, endpoint.as_deref(), dir.as_deref()).await?;
            match out {
                Some(p) => std::fs::write(&p, &bytes)
                    .with_context(|| format!("cannot write {}", p.display()))?,
                None => {
                    use std::io::Write as _;
                    std::io::stdout()
                        .write_all(&bytes)
                        .context("cannot write to standard output")?;
                }
            }
        }
    }
    Ok(())
}

/// Largest manifest a resolver may hand out.
const MAX_MANIFEST: u64 = 4 * 1024 * 1024;

/// UOR-ID → manifest bytes, from the endpoint first, then the directory.
/// Whatever the source, the bytes are accepted only if their UOR-ID is `uor`.
pub(crate) async fn resolve_uor(
    uor: &UorId,
    endpoint: Option<&str>,
    dir: Option<&Path>,
) -> anyhow::Result<Vec<u8>> {
    let mut tried = Vec::new();
    if let Some(ep) = endpoint {
        let url = format!("{}/v1/manifests/{uor}", ep.trim_end_matches('/'));
        let got = async {
            let resp = reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(30))
                .build()?
                .get(&url)
                .send()
                .await?;
            let status = resp.status();
            let body = resp.bytes().await?;
            Ok::<_, reqwest::Error>((status, body))
        }
        .await;
        match got {
            Ok((s, body)) if s.is_success() => {
                if body.len() as u64 > MAX_MANIFEST {
                    tried.push(format!("{url}: answer over {MAX_MANIFEST} bytes"));
                } else if UorId::of(&body) == *uor {
                    return Ok(body.to_vec());
                } else {
                    tried.push(format!(
                        "{url}: answered bytes whose UOR-ID is {}, not {uor}",
                        UorId::of(&body)
                    ));
                }
            }
            Ok((s, _)) => tried.push(format!("{url}: HTTP {s}")),
            Err(e) => tried.push(format!("{url}: {e}")),
        }
    }
    if let Some(d) = dir {
        let (d2, u) = (d.to_path_buf(), *uor);
        match tokio::task::spawn_blocking(move || find_in_dir(&d2, &u))
            .await
            .context("directory task failed")?
        {
            Ok(Some(bytes)) => return Ok(bytes),
            Ok(None) => tried.push(format!("{}: no file with that UOR-ID", d.display())),
            Err(e) => tried.push(format!("{}: {e:#}", d.display())),
        }
    }
    if tried.is_empty() {
        bail!("no resolver: give --endpoint (or HOLOGRAM_CTP96_ENDPOINT) or --dir");
    }
    bail!("cannot resolve {uor}: {}", tried.join("; "))
}

/// The bytes of the first file in `dir` (not recursive, files up to 4 MiB)
/// whose UOR-ID is `uor`.
pub(crate) fn find_in_dir(dir: &Path, uor: &UorId) -> anyhow::Result<Option<Vec<u8>>> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let entry = entry?;
        let meta = entry.metadata()?;
        if !meta.is_file() || meta.len() > MAX_MANIFEST {
            continue;
        }
        let bytes = std::fs::read(entry.path())?;
        if UorId::of(&bytes) == *uor {
            return Ok(Some(bytes));
        }
    }
    Ok(None)
}

/// The UOR-ID of a file, or of standard input for `None` / `-`.
fn id_of_file(file: Option<&Path>) -> anyhow::Result<UorId> {
    match file {
        None => UorId::from_reader(std::io::stdin().lock()).context("cannot read standard input"),
        Some(p) if p.as_os_str() == "-" => {
            UorId::from_reader(std::io::stdin().lock()).context("cannot read standard input")
        }
        Some(p) => {
            let f =
                std::fs::File::open(p).with_context(|| format!("cannot open {}", p.display()))?;
            UorId::from_reader(std::io::BufReader::with_capacity(1 << 16, f))
                .with_context(|| format!("cannot read {}", p.display()))
        }
    }
}

/// Writes `text` to standard output. A closed pipe (`| head`) is not an
/// error: the reader has what it wanted.
pub(crate) fn write_stdout(text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(e).context("cannot write to standard output")
        }
        _ => Ok(()),
    }
}

/// A registry configuration from the common CLI flags.
pub(crate) fn registry_config(plain_http: bool, hosts_dir: Option<PathBuf>) -> RegistryConfig {
    RegistryConfig {
        plain_http,
        hosts_dir,
        ..Default::default()
    }
}

/// An image as resolved for trust decisions.
#[derive(Debug, Clone)]
pub(crate) struct ResolvedImage {
    /// The reference as given.
    pub reference: String,
    /// UOR-ID of the platform manifest's bytes.
    pub uor_id: UorId,
    /// Digest of the platform manifest.
    pub manifest_digest: hologram_oci::Digest,
    pub media_type: String,
    pub size: usize,
    /// The manifest's bytes.
    pub bytes: Vec<u8>,
}

/// Resolves `reference` to its platform manifest (digest-verified by the
/// registry client, and checked again here) and computes its UOR-ID.
pub(crate) async fn resolve_image(
    reference: &str,
    cfg: RegistryConfig,
) -> anyhow::Result<ResolvedImage> {
    let r = Reference::parse(reference)
        .with_context(|| format!("invalid image reference {reference:?}"))?;
    let client = RegistryClient::new(cfg).context("cannot set up the registry client")?;
    let (_index, manifest) = client
        .resolve_platform(&r)
        .await
        .with_context(|| format!("cannot resolve {reference}"))?;
    // The UOR-ID and the witness subject must describe the same bytes.
    hologram_remote::verify(&manifest.digest, &manifest.bytes)
        .with_context(|| format!("manifest of {reference} does not match its digest"))?;
    Ok(ResolvedImage {
        reference: reference.to_string(),
        uor_id: UorId::of(&manifest.bytes),
        manifest_digest: manifest.digest,
        media_type: manifest.media_type.clone(),
        size: manifest.bytes.len(),
        bytes: manifest.bytes.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    const MANIFEST: &[u8] = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}"#;

    #[test]
    fn a_resolver_directory_finds_manifests_by_uor_id_whatever_their_names() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("junk.txt"), b"not it").unwrap();
        std::fs::write(dir.path().join("any-name"), MANIFEST).unwrap();
        let uor = UorId::of(MANIFEST);
        // the known-answer vector "oci-manifest" of ../shared/uor-id-vectors.json
        assert_eq!(
            uor.to_string(),
            "uor:v1:r70:80d9de483b432c486ffd9f8bfb7a5f79897729f8a7ea4acd09c625082aa63939"
        );
        assert_eq!(
            find_in_dir(dir.path(), &uor).unwrap().as_deref(),
            Some(MANIFEST)
        );
        assert_eq!(find_in_dir(dir.path(), &UorId::of(b"other")).unwrap(), None);
    }

    #[tokio::test]
    async fn the_endpoint_resolves_and_a_lying_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("m.json"), MANIFEST).unwrap();
        let uor = UorId::of(MANIFEST);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(crate::witness::serve(
            listener,
            dir.path().to_path_buf(),
            async {
                let _ = rx.await;
            },
        ));
        let ep = format!("http://{addr}");
        assert_eq!(resolve_uor(&uor, Some(&ep), None).await.unwrap(), MANIFEST);
        let missing = resolve_uor(&UorId::of(b"nothing"), Some(&ep), None)
            .await
            .unwrap_err();
        assert!(format!("{missing:#}").contains("404"), "{missing:#}");

        // a server that answers other bytes for the UOR-ID: refused
        let liar = axum::Router::new().route(
            "/v1/manifests/{id}",
            axum::routing::get(|| async { &br#"{"schemaVersion":2}"#[..] }),
        );
        let l2 = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a2 = l2.local_addr().unwrap();
        let liar_task = tokio::spawn(async move { axum::serve(l2, liar).await });
        let e = resolve_uor(&uor, Some(&format!("http://{a2}")), None)
            .await
            .unwrap_err();
        assert!(format!("{e:#}").contains("not uor:v1:"), "{e:#}");
        // ... but the directory still answers
        assert_eq!(
            resolve_uor(&uor, Some(&format!("http://{a2}")), Some(dir.path()))
                .await
                .unwrap(),
            MANIFEST
        );
        liar_task.abort();
        let _ = tx.send(());
        server.await.unwrap().unwrap();
    }

    #[test]
    fn id_of_a_file_is_the_uor_id_of_its_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hello");
        std::fs::write(&path, b"hello").unwrap();
        let id = id_of_file(Some(&path)).unwrap();
        assert_eq!(
            id.to_string(),
            "uor:v1:r52:22b1c50fd03da7f96a3bf493053110ada993dbd9b98a8f6d969d95ae786ce39e"
        );
        let err = id_of_file(Some(&dir.path().join("absent"))).unwrap_err();
        assert!(format!("{err:#}").contains("cannot open"), "{err:#}");
    }
}
