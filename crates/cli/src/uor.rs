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
        /// Use plain HTTP for the registry
        #[arg(long)]
        plain_http: bool,
        /// containerd hosts.toml directory (mirrors, plain-HTTP hosts, CAs)
        #[arg(long)]
        hosts_dir: Option<PathBuf>,
        /// Also print the manifest digest and media type (to standard error)
        #[arg(long, short = 'v')]
        verbose: bool,
        /// Image reference
        reference: String,
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
            plain_http,
            hosts_dir,
            verbose,
            reference,
        } => {
            let image = resolve_image(&reference, registry_config(plain_http, hosts_dir)).await?;
            if verbose {
                eprintln!(
                    "{}: manifest {} ({}, {} bytes)",
                    image.reference, image.manifest_digest, image.media_type, image.size
                );
            }
            write_stdout(&format!("{}\n", image.uor_id))?;
        }
    }
    Ok(())
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
    /// `sha256:<hex>` of the platform manifest.
    pub manifest_digest: String,
    pub media_type: String,
    pub size: usize,
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
    hologram_remote::verify_digest(&manifest.digest, &manifest.bytes)
        .with_context(|| format!("manifest of {reference} does not match its digest"))?;
    if !manifest.digest.starts_with("sha256:") {
        bail!(
            "manifest of {reference} has digest {}; witnesses need a sha256 digest",
            manifest.digest
        );
    }
    Ok(ResolvedImage {
        reference: reference.to_string(),
        uor_id: UorId::of(&manifest.bytes),
        manifest_digest: manifest.digest.clone(),
        media_type: manifest.media_type.clone(),
        size: manifest.bytes.len(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

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
