//! Hostile image publishers (issue "close the holes between layer labels, the
//! filesystem and credentials"), each attack as its publisher would mount it,
//! with a real registry, containerd, `hologram pull` and the daemon:
//!
//! 1. a TOC-digest annotation that names a file (`sha256:/victim`,
//!    `sha256:../../..`): the file survives;
//! 2. the same pointing at `/dev/zero` and at a FIFO: the daemon neither
//!    grows nor hangs;
//! 3. an image whose config claims another image's diff ID (cross-image
//!    poisoning): the other image runs its own bytes, the liar's layer is
//!    caught by its check and refused;
//! 4. layer annotations naming a private image, its layer and TOC: the
//!    private layer is never served (nor fetched);
//! 5. a label-less unpack (`ctr pull`) of a chain the daemon already serves:
//!    it works;
//! 6. a TOC of half a million entries in a tiny blob: refused within the
//!    budget, loudly, with bounded daemon memory.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hologram_e2e::lazy::{json_strings, parse_pull_summary, LazyEnv, LazyOptions, LAZY_CONFIG};
use hologram_e2e::prom::scrape;
use hologram_e2e::util::{free_port, wait_until};

const TOC: &str = "containerd.io/snapshot/stargz/toc.digest";

fn env_with(config: &str) -> Result<(LazyEnv, String)> {
    let metrics = format!("127.0.0.1:{}", free_port()?);
    let env = LazyEnv::start_with(LazyOptions {
        config: config.to_owned(),
        metrics_address: Some(metrics.clone()),
        ..LazyOptions::default()
    })?;
    Ok((env, metrics))
}

/// `hologram pull` that must succeed; its stdout.
fn pull_ok(env: &LazyEnv, ns: &str, reference: &str) -> Result<String> {
    let out = env.hologram_pull_in(ns, reference)?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    anyhow::ensure!(
        out.status.success(),
        "hologram pull {reference} failed:\n{stdout}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        env.diagnostics()
    );
    Ok(stdout)
}

fn vm_hwm_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmHWM")
}

#[test]
fn attack_1_2_toc_digest_annotations_naming_files_touch_nothing() -> Result<()> {
    let (env, metrics) = env_with(LAZY_CONFIG)?;
    let victim_dir = env.dir().join("victim");
    std::fs::create_dir(&victim_dir)?;
    let victim = victim_dir.join("root-owned");
    std::fs::write(&victim, b"precious\n")?;
    std::fs::set_permissions(&victim, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    let fifo = victim_dir.join("fifo");
    anyhow::ensure!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()?
        .success());
    let pid = env.snapshotter.pid().context("daemon pid")?;
    let hwm_before = vm_hwm_kib(pid)?;
    let hostile_values = [
        format!("sha256:{}", victim.display()),
        "sha256:../../../../../../../../../../../../../../../../../..".to_owned(),
        format!(
            "sha256:../../../../../../../../../../../../../../../..{}",
            victim.display()
        ),
        "sha256:/dev/zero".to_owned(),
        format!("sha256:{}", fifo.display()),
    ];
    for (i, v) in hostile_values.iter().enumerate() {
        let image = env.push_crafted(
            &format!("e2e/toc-path:{i}"),
            &[
                "--good",
                &format!("image {i}\n"),
                "--annotate",
                &format!("1:{TOC}={v}"),
            ],
        )?;
        let t = Instant::now();
        let out = pull_ok(&env, env.containerd.namespace(), &image.reference)?;
        let took = t.elapsed();
        eprintln!("{v}: pulled in {took:?}\n{out}");
        assert!(
            took < Duration::from_secs(60),
            "{v}: the pull took {took:?}"
        );
        let sum = parse_pull_summary(&out)?;
        // Layer 1 is the same in every image: lazy the first time, present after.
        assert_eq!(
            (sum.layers, sum.lazy + sum.present, sum.unpacked),
            (2, 1, 1),
            "{v}: {out}"
        );
        let seen = env.run(
            &image.reference,
            &format!("c{i}"),
            &["/bin/cat", "/good.txt"],
        )?;
        assert_eq!(seen, format!("image {i}\n"));
    }
    assert_eq!(
        std::fs::read(&victim)?,
        b"precious\n",
        "the victim file changed"
    );
    assert!(fifo.exists());
    assert!(
        env.snapshotter.pid() == Some(pid),
        "the daemon was restarted"
    );
    let hwm_after = vm_hwm_kib(pid)?;
    eprintln!("daemon peak RSS: {hwm_before} KiB before, {hwm_after} KiB after");
    assert!(hwm_after < hwm_before + 256 * 1024, "{hwm_after} KiB");
    let m = scrape(&metrics)?;
    assert_eq!(
        m.sum(
            "hologram_remote_fallbacks_total",
            &[("reason", "not_estargz")]
        ),
        hostile_values.len() as f64
    );
    // The daemon's own TOC copies: named by digests only.
    for e in std::fs::read_dir(env.snapshotter.root().join("cache/tocs"))? {
        let name = e?.file_name().to_string_lossy().into_owned();
        assert!(
            name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()),
            "{name}"
        );
    }
    Ok(())
}

const CHECKING: &str = "[remote]\n\
plain_http = true\n\
fetch_timeout_secs = 10\n\
background_fetch = true\n\
background_fetch_mib_per_sec = 0\n\
prefetch = true\n\
cache_size_mib = 1024\n";

#[test]
fn attack_3_a_poisoned_chain_never_serves_another_image() -> Result<()> {
    let (env, metrics) = env_with(CHECKING)?;
    let legit = env.push_crafted(
        "e2e/legit:1",
        &["--passwd", "legit\n", "--good", "legit top\n"],
    )?;
    let legit_diff = json_strings(&legit.summary, "diff_ids")?;
    // EVIL: one layer with other content, whose config claims LEGIT's diff ID.
    let evil = env.push_crafted(
        "e2e/evil:1",
        &[
            "--passwd",
            "EVIL\n",
            "--layers",
            "1",
            "--claim-diff-id",
            &format!("0={}", legit_diff[0]),
        ],
    )?;
    let evil_layer = json_strings(&evil.summary, "layers")?[0].clone();
    assert_eq!(
        json_strings(&evil.summary, "chain_ids")?[0],
        json_strings(&legit.summary, "chain_ids")?[0],
        "EVIL claims LEGIT's first chain"
    );

    // Another namespace first: the daemon itself must not share the chain.
    let other_ns = format!("{}-b", env.containerd.namespace());
    let own_ns = env.containerd.namespace().to_owned();
    let out = pull_ok(&env, &own_ns, &evil.reference)?;
    assert_eq!(parse_pull_summary(&out)?.lazy, 1, "{out}");
    let out = pull_ok(&env, &other_ns, &legit.reference)?;
    eprintln!("LEGIT in {other_ns}:\n{out}");
    let seen = env.containerd.run_logged(
        Some(&other_ns),
        &[
            "--rm",
            "--snapshotter",
            "hologram",
            &legit.reference,
            "l-b",
            "/bin/cat",
            "/etc/passwd",
            "/good.txt",
        ],
    )?;
    assert_eq!(
        seen, "legit\nlegit top\n",
        "LEGIT ran other bytes in {other_ns}"
    );

    // EVIL's layer is checked in the background and found out.
    wait_until(
        "EVIL's layer to fail its check",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || Ok(scrape(&metrics)?.sum("hologram_layer_checks_total", &[("result", "bad")]) >= 1.0),
    )
    .with_context(|| env.diagnostics())?;
    let caught = env.log_lines("layer failed verification");
    assert!(
        caught
            .iter()
            .any(|l| l.contains(&evil_layer) && l.contains("diff ID")),
        "{caught:?}"
    );
    // Nothing new is built on it: EVIL no longer runs.
    let refused = env.containerd.ctr_raw(&[
        "run",
        "--rm",
        "--snapshotter",
        "hologram",
        &evil.reference,
        "e-1",
        "/bin/cat",
        "/etc/passwd",
    ])?;
    assert!(!refused.status.success(), "EVIL still runs");
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(why.contains("failed its check"), "{why}");

    // The same namespace: containerd would reuse EVIL's chain by name;
    // `hologram pull` waits for the check, drops the bad chain and unpacks
    // LEGIT's own layer.
    let out = pull_ok(&env, &own_ns, &legit.reference)?;
    eprintln!("LEGIT in {own_ns}:\n{out}");
    let seen = env.run(
        &legit.reference,
        "l-a",
        &["/bin/cat", "/etc/passwd", "/good.txt"],
    )?;
    assert_eq!(seen, "legit\nlegit top\n", "LEGIT ran EVIL's bytes");
    // And with EVIL pulled again, LEGIT still runs its own bytes.
    let _ = env.hologram_pull_in(&own_ns, &evil.reference)?;
    let seen = env.run(&legit.reference, "l-c", &["/bin/cat", "/etc/passwd"])?;
    assert_eq!(seen, "legit\n");
    let _ = env
        .containerd
        .ctr_ns(&other_ns, &["images", "rm", &legit.reference]);
    Ok(())
}

#[test]
fn attack_3b_a_layer_on_another_images_chain_is_checked_first() -> Result<()> {
    let (env, _metrics) = env_with(LAZY_CONFIG)?; // background fetch off: nothing checked yet
    let legit = env.push_crafted(
        "e2e/legit:2",
        &["--passwd", "legit\n", "--good", "legit top\n"],
    )?;
    let legit_diff = json_strings(&legit.summary, "diff_ids")?;
    let legit_chains = json_strings(&legit.summary, "chain_ids")?;
    let legit_layers = json_strings(&legit.summary, "layers")?;
    let evil = env.push_crafted(
        "e2e/evil:2",
        &[
            "--passwd",
            "EVIL\n",
            "--layers",
            "1",
            "--claim-diff-id",
            &format!("0={}", legit_diff[0]),
        ],
    )?;
    pull_ok(&env, env.containerd.namespace(), &evil.reference)?;
    // LEGIT's second layer arrives on the (unchecked) chain EVIL's bytes
    // serve, as containerd's own unpacker would send it in this namespace.
    let labels = [
        ("containerd.io/snapshot.ref", legit_chains[1].as_str()),
        (
            "containerd.io/snapshot/cri.image-ref",
            legit.reference.as_str(),
        ),
        (
            "containerd.io/snapshot/cri.layer-digest",
            legit_layers[1].as_str(),
        ),
    ];
    let res = env.prepare_direct("ns/1/extract-1 x", &legit_chains[0], &labels)?;
    let Err(err) = res else {
        anyhow::bail!("a layer on a chain that fails its check must be refused");
    };
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message().contains("failed its check"),
        "{}",
        err.message()
    );
    Ok(())
}

#[test]
fn attack_4_labels_cannot_redirect_a_pull_to_a_private_layer() -> Result<()> {
    let (env, metrics) = env_with(LAZY_CONFIG)?;
    let private = env.push_crafted("e2e/private/secret:1", &["--secret", "TOP SECRET\n"])?;
    let p_layers = json_strings(&private.summary, "layers")?;
    let p_tocs = json_strings(&private.summary, "toc_digests")?;
    let p_manifest = private.summary["manifest_digest"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let redirect = [
        format!(
            "1:containerd.io/snapshot/cri.image-ref={}",
            private.reference
        ),
        format!("1:containerd.io/snapshot/cri.layer-digest={}", p_layers[1]),
        format!("1:containerd.io/snapshot/cri.manifest-digest={p_manifest}"),
        format!(
            "1:containerd.io/snapshot/remote/stargz.reference={}",
            private.reference
        ),
        format!(
            "1:containerd.io/snapshot/remote/stargz.digest={}",
            p_layers[1]
        ),
        format!("1:{TOC}={}", p_tocs[1]),
    ];
    let mut args = vec!["--good", "public\n"];
    for r in &redirect {
        args.push("--annotate");
        args.push(r);
    }
    let public = env.push_crafted("e2e/public/app:1", &args)?;
    let log_before = std::fs::read_to_string(env.registry.log())?.len();

    // Through `hologram pull`: the client's labels win over the annotations.
    let out = pull_ok(&env, env.containerd.namespace(), &public.reference)?;
    eprintln!("{out}");
    let seen = env.run(
        &public.reference,
        "pub",
        &[
            "/bin/sh",
            "-c",
            "cat /good.txt; cat /secret.txt 2>&1 || true",
        ],
    )?;
    assert!(seen.starts_with("public\n"), "{seen}");
    assert!(
        !seen.contains("TOP SECRET"),
        "the private layer was served: {seen}"
    );

    // A client that forwards the annotations as labels (they name the
    // private image outright): the chain containerd unpacks is the public
    // image's, which the private config does not give for that layer.
    let chains = json_strings(&public.summary, "chain_ids")?;
    let labels = [
        (
            "containerd.io/snapshot.ref",
            "sha256:1111111111111111111111111111111111111111111111111111111111111111",
        ),
        (
            "containerd.io/snapshot/cri.image-ref",
            private.reference.as_str(),
        ),
        (
            "containerd.io/snapshot/cri.layer-digest",
            p_layers[1].as_str(),
        ),
        (
            "containerd.io/snapshot/cri.manifest-digest",
            p_manifest.as_str(),
        ),
        (TOC, p_tocs[1].as_str()),
    ];
    let res = env.prepare_direct("ns/2/extract-9 y", &chains[0], &labels)?;
    let n = res.map_err(|e| anyhow::anyhow!("{e:?}"))?;
    assert!(
        n > 0,
        "an ordinary snapshot to unpack into, not a lazy mount"
    );
    let m = scrape(&metrics)?;
    assert_eq!(
        m.sum(
            "hologram_remote_fallbacks_total",
            &[("reason", "label_mismatch")]
        ),
        1.0
    );
    // The private layer's bytes were never asked for.
    let log = std::fs::read_to_string(env.registry.log())?;
    let after = &log[log_before.min(log.len())..];
    assert!(
        !after.contains(&format!("/blobs/{}", p_layers[1])),
        "the private layer was fetched:\n{after}"
    );
    Ok(())
}

#[test]
fn attack_5_a_label_less_unpack_of_a_shared_chain_works() -> Result<()> {
    let (env, _metrics) = env_with(LAZY_CONFIG)?;
    let image = env.push_crafted("e2e/shared:1", &["--good", "shared\n"])?;
    let out = pull_ok(&env, env.containerd.namespace(), &image.reference)?;
    assert_eq!(parse_pull_summary(&out)?.lazy, 2, "{out}");
    // Plain `ctr pull` (no labels) in another namespace and in this one.
    let other = format!("{}-ctr", env.containerd.namespace());
    for ns in [other.as_str(), env.containerd.namespace()] {
        env.containerd.ctr_ns(
            ns,
            &[
                "images",
                "pull",
                "--plain-http",
                "--snapshotter",
                "hologram",
                &image.reference,
            ],
        )?;
        let seen = env.containerd.run_logged(
            Some(ns),
            &[
                "--rm",
                "--snapshotter",
                "hologram",
                &image.reference,
                "plain",
                "/bin/cat",
                "/good.txt",
            ],
        )?;
        assert_eq!(seen, "shared\n", "{ns}");
    }
    let _ = env
        .containerd
        .ctr_ns(&other, &["images", "rm", &image.reference]);
    Ok(())
}

#[test]
fn attack_6_a_huge_toc_is_refused_within_budget() -> Result<()> {
    let (env, metrics) = env_with(LAZY_CONFIG)?;
    let pid = env.snapshotter.pid().context("daemon pid")?;
    let before = vm_hwm_kib(pid)?;
    let image = env.push_crafted("e2e/huge-toc:1", &["--extra-entries", "600000"])?;
    let t = Instant::now();
    let out = pull_ok(&env, env.containerd.namespace(), &image.reference)?;
    eprintln!("pulled in {:?}:\n{out}", t.elapsed());
    let sum = parse_pull_summary(&out)?;
    assert_eq!((sum.lazy, sum.unpacked), (1, 1), "{out}");
    let m = scrape(&metrics)?;
    assert_eq!(
        m.sum(
            "hologram_remote_fallbacks_total",
            &[("reason", "over_budget")]
        ),
        1.0
    );
    let refused = env.log_lines("cannot be served lazily");
    assert!(
        refused
            .iter()
            .any(|l| l.contains("more than 500000 entries")),
        "{refused:?}"
    );
    let after = vm_hwm_kib(pid)?;
    eprintln!("daemon peak RSS: {before} KiB before, {after} KiB after the 600k-entry TOC");
    assert!(after < 1024 * 1024, "peak RSS {after} KiB");
    let seen = env.run(&image.reference, "huge", &["/bin/cat", "/good.txt"])?;
    assert_eq!(seen, "good file of the hostile layer\n");
    Ok(())
}
