//! The point of lazy pulling, measured: a real image (Debian bookworm
//! minbase + python3, ≥ 150 MB uncompressed), converted with `hologram
//! convert`, pulled lazily with background fetch off, runs `python3 -c
//! 'print(1)'` while the registry serves less than a quarter of the
//! image's compressed layer bytes. The bytes are counted by a TCP proxy in
//! front of the registry that both `hologram pull` and the daemon go
//! through.
//!
//! The image is built once per machine by scripts/mkpython.sh (debootstrap
//! through the apt mirror, minutes) and cached in /var/cache/hologram-e2e.

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hologram_e2e::lazy::{image_facts, LazyEnv};
use hologram_e2e::process::wait_timeout;
use hologram_e2e::proxy::CountingProxy;
use hologram_e2e::util::workspace_root;

const BUILD_TIMEOUT: Duration = Duration::from_secs(15 * 60);
const SIZE_ANNOTATION: &str = "io.containers.estargz.uncompressed-size";

/// Progress on the terminal even while libtest captures output.
fn progress(msg: &str) {
    let _ = writeln!(std::io::stderr(), "[lazy_python] {msg}");
}

/// Runs scripts/mkpython.sh (its progress goes straight to our stderr);
/// returns the OCI layout directory and tag.
fn python_image() -> Result<(std::path::PathBuf, String)> {
    let script = workspace_root().join("scripts").join("mkpython.sh");
    let mut child = Command::new("bash")
        .arg(&script)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("spawning {}", script.display()))?;
    let mut stdout = child.stdout.take().context("mkpython stdout")?;
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut s);
        s
    });
    let Some(status) = wait_timeout(&mut child, BUILD_TIMEOUT)? else {
        let _ = child.kill();
        let _ = child.wait();
        bail!(
            "{} did not finish within {BUILD_TIMEOUT:?}",
            script.display()
        );
    };
    let out = reader.join().unwrap_or_default();
    if !status.success() {
        bail!("{} failed ({status})", script.display());
    }
    let last = out.lines().last().context("mkpython.sh printed nothing")?;
    let (layout, tag) = last
        .rsplit_once(':')
        .with_context(|| format!("unexpected mkpython.sh output {last:?}"))?;
    Ok((layout.into(), tag.to_owned()))
}

#[test]
fn python_runs_after_fetching_a_fraction_of_the_image() -> Result<()> {
    let t0 = Instant::now();
    progress("building or reusing the python image (first build: minutes)");
    let (layout, tag) = python_image()?;
    progress(&format!(
        "image {}:{tag} ready after {:?}",
        layout.display(),
        t0.elapsed()
    ));

    let env = LazyEnv::start()?;
    let source = env.push_layout(&layout, &tag, "e2e/python:gzip")?;
    let src = image_facts(&source)?;
    progress(&format!(
        "pushed {source}: {} layer(s), {} compressed bytes",
        src.layers.len(),
        src.layer_bytes()
    ));
    let target = format!("{}/e2e/python:esgz", env.registry.addr());
    let t = Instant::now();
    env.convert(&source, &target, &[])?;
    let conv = image_facts(&target)?;
    progress(&format!(
        "converted in {:?}: {} compressed bytes",
        t.elapsed(),
        conv.layer_bytes()
    ));
    let uncompressed: u64 = conv
        .layers
        .iter()
        .map(|l| {
            l.annotations
                .get(SIZE_ANNOTATION)
                .and_then(|s| s.parse::<u64>().ok())
                .context("layer without uncompressed-size annotation")
        })
        .sum::<Result<u64>>()?;
    assert!(
        uncompressed >= 150_000_000,
        "the python image is only {uncompressed} bytes uncompressed"
    );

    // Everything from here goes through the counting proxy.
    let proxy = CountingProxy::start(env.registry.addr())?;
    let reference = format!("{}/e2e/python:esgz", proxy.addr());
    let t = Instant::now();
    let sum = env.hologram_pull(&reference)?;
    assert_eq!(
        (sum.layers, sum.lazy, sum.unpacked),
        (conv.layers.len(), conv.layers.len(), 0),
        "{}",
        sum.text
    );
    let after_pull = proxy.bytes_down();
    progress(&format!(
        "pulled lazily in {:?}; registry served {after_pull} bytes so far",
        t.elapsed()
    ));
    let t = Instant::now();
    let out = env.run(&reference, "py", &["python3", "-c", "print(1)"])?;
    assert_eq!(out, "1\n", "{}", env.diagnostics());
    let served = proxy.bytes_down();
    let image_bytes = conv.layer_bytes();
    let pct = 100.0 * served as f64 / image_bytes as f64;
    progress(&format!(
        "python3 ran in {:?}; registry served {served} bytes for pull+run = {pct:.1}% of {image_bytes} compressed layer bytes ({} MB uncompressed), {} connections",
        t.elapsed(),
        uncompressed / 1_000_000,
        proxy.connections()
    ));
    assert!(
        served > after_pull,
        "the run fetched nothing through the proxy"
    );
    assert!(
        pct < 25.0,
        "registry served {served} bytes = {pct:.1}% of the image's {image_bytes} compressed bytes"
    );
    Ok(())
}
