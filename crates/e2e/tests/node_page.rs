//! The node's web page (`/` on the metrics listener), in a real browser:
//! headless chromium driven by chromedriver over WebDriver
//! (`hologram_e2e::browser`).
//!
//! * a lazily pulled image shows with its layers "lazy" and the bytes
//!   fetched, which grow live after the container reads big files; an image
//!   with a layer that fell back shows the reason; the throughput chart
//!   draws; the screenshot of the docs is taken here (written to
//!   `target/node-page.png`, and to `docs/images/node-page.png` with
//!   `HOLOGRAM_UPDATE_SCREENSHOT=1`);
//! * references and annotations carrying markup render as text: no element
//!   the payloads would create exists and the marker they would set is
//!   unset;
//! * under enforce, a refused image shows the verdict (decision, mode,
//!   UOR-ID, reason), and an allowed one the witness key id.

use std::time::Duration;

use anyhow::{Context, Result};
use hologram_e2e::browser::Browser;
use hologram_e2e::lazy::{hologram_ok, image_facts, LazyEnv, LazyOptions};
use hologram_e2e::registry::http_get;
use hologram_e2e::trust::{uor_resolve, TrustSettings, TrustWorld};
use hologram_e2e::util::{free_port, wait_until, workspace_root};
use serde_json::Value;

const TOC: &str = "containerd.io/snapshot/stargz/toc.digest";
/// How long the page may take to show something the daemon knows.
const PAGE_TIMEOUT: Duration = Duration::from_secs(60);

/// The JSON API.
fn node(metrics: &str) -> Result<Value> {
    let r = http_get(metrics, "/api/v1/node", &[])?;
    anyhow::ensure!(r.status == 200, "/api/v1/node: HTTP {}", r.status);
    Ok(serde_json::from_slice(&r.body)?)
}

/// A JavaScript string literal.
fn js(s: &str) -> String {
    Value::String(s.to_owned()).to_string()
}

/// The image card whose reference contains `needle` (a JS expression).
fn card(needle: &str) -> String {
    format!(
        "[...document.querySelectorAll('article.image')].find(a => \
         a.querySelector('.reference').textContent.includes({}))",
        js(needle)
    )
}

/// The `data-fetched` of layer `digest`'s row (a number; -1 if absent).
fn fetched_on_page(b: &Browser, digest: &str) -> Result<i64> {
    let v = b.execute(
        &format!(
            "const r = document.querySelector('tr[data-digest=' + CSS.escape({}) + ']'); \
             return r ? Number(r.dataset.fetched) : -1;",
            js(digest)
        ),
        &[],
    )?;
    v.as_i64().context("data-fetched is not a number")
}

#[test]
fn node_page_shows_a_lazy_pull_live_in_a_browser() -> Result<()> {
    let metrics = format!("127.0.0.1:{}", free_port()?);
    let env = LazyEnv::start_with(LazyOptions {
        metrics_address: Some(metrics.clone()),
        ..LazyOptions::default()
    })?;
    // The 4-layer image: layer 4 holds three 64 KiB files of random bytes.
    let original = env.push_mkimage(true, "e2e/page:src")?;
    let target = format!("{}/e2e/page:esgz", env.registry.addr());
    env.convert(&original.reference, &target, &[])?;
    let facts = image_facts(&target)?;
    let sum = env.hologram_pull(&target)?;
    assert_eq!((sum.layers, sum.lazy), (4, 4), "{}", sum.text);
    let top = facts.layers[3].digest.clone();

    let b = Browser::start(1400, 1700)?;
    b.goto(&format!("http://{metrics}/"))?;
    let img = card("e2e/page:esgz");
    b.wait_for(
        "the image and its 4 lazy layers on the page",
        PAGE_TIMEOUT,
        &format!("const c = {img}; return !!c && c.querySelectorAll('tr[data-mode=\"lazy\"]').length === 4;"),
    )?;
    for l in &facts.layers {
        let shown = b.execute(
            &format!(
                "const r = document.querySelector('tr[data-digest=' + CSS.escape({}) + ']'); \
                 return r ? r.textContent : null;",
                js(&l.digest)
            ),
            &[],
        )?;
        let text = shown.as_str().unwrap_or_default().to_owned();
        assert!(text.contains("lazy"), "layer {}: {text:?}", l.digest);
    }
    let before = fetched_on_page(&b, &top)?;
    assert!(before >= 0, "no row for the top layer");

    // The container reads the three random files: the top layer's fetched
    // bytes grow, on the page as in the API.
    let out = env.run(
        &target,
        "reader",
        &[
            "/bin/sha256sum",
            "/data/rand-1.bin",
            "/data/rand-2.bin",
            "/data/rand-3.bin",
        ],
    )?;
    assert_eq!(out.lines().count(), 3, "{out}");
    let api_fetched = |v: &Value| -> i64 {
        v["images"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|i| i["layers"].as_array().into_iter().flatten())
            .filter(|l| l["digest"] == top.as_str())
            .map(|l| {
                ["demand_bytes", "prefetch_bytes", "background_bytes"]
                    .iter()
                    .map(|k| l[k].as_i64().unwrap_or(0))
                    .sum::<i64>()
            })
            .max()
            .unwrap_or(-1)
    };
    let after_api = api_fetched(&node(&metrics)?);
    assert!(
        after_api >= before + 3 * 64 * 1024 / 2,
        "the API says {after_api} bytes fetched for the top layer, {before} before the reads"
    );
    let mut seen = before;
    wait_until(
        "the page to show the bytes the reads fetched",
        PAGE_TIMEOUT,
        Duration::from_millis(200),
        || {
            seen = fetched_on_page(&b, &top)?;
            Ok(seen >= after_api)
        },
    )
    .with_context(|| format!("page shows {seen}, API {after_api}"))?;
    eprintln!("top layer: {before} bytes fetched before the reads, {seen} after");

    // The throughput chart has drawn the fetch.
    wait_until(
        "a throughput sample with fetched bytes",
        PAGE_TIMEOUT,
        Duration::from_millis(200),
        || {
            Ok(node(&metrics)?["throughput"]
                .as_array()
                .is_some_and(|a| a.iter().any(|s| s["fetched_per_sec"].as_f64() > Some(0.0))))
        },
    )?;
    b.wait_for(
        "the chart to draw its lines",
        PAGE_TIMEOUT,
        "const p = document.querySelector('#chart polyline.fetched'); \
         return !!p && p.getAttribute('points').split(' ').length > 1;",
    )?;

    // An image whose first layer cannot be served lazily: it is unpacked,
    // and the page says why.
    let fallback = env.push_crafted(
        "e2e/page-fallback:1",
        &[
            "--good",
            "fallback\n",
            "--annotate",
            &format!("1:{TOC}=sha256:not-a-digest"),
        ],
    )?;
    let sum = env.hologram_pull(&fallback.reference)?;
    assert_eq!(sum.unpacked, 1, "{}", sum.text);
    let v = node(&metrics)?;
    let reason = v["images"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| {
            i["reference"]
                .as_str()
                .is_some_and(|r| r.contains("e2e/page-fallback"))
        })
        .flat_map(|i| i["layers"].as_array().into_iter().flatten())
        .find_map(|l| l["fallback"]["reason"].as_str())
        .with_context(|| format!("no fallback in the API: {v:#}"))?
        .to_owned();
    assert!(reason.contains("not eStargz"), "{reason}");
    let fb = card("e2e/page-fallback:1");
    b.wait_for(
        "the fallback and its reason on the page",
        PAGE_TIMEOUT,
        &format!(
            "const c = {fb}; if (!c) return false; \
             const r = c.querySelector('tr[data-mode=\"unpacked\"] .fallback'); \
             return !!r && r.textContent.includes('not_estargz') && r.textContent.includes({});",
            js(&reason)
        ),
    )?;
    // The screenshot of the docs.
    let shot = workspace_root().join("target/node-page.png");
    b.screenshot(&shot)?;
    if std::env::var_os("HOLOGRAM_UPDATE_SCREENSHOT").is_some_and(|v| v == "1") {
        let docs = workspace_root().join("docs/images/node-page.png");
        b.screenshot(&docs)?;
        eprintln!("screenshot written to {}", docs.display());
    }
    eprintln!("screenshot: {}", shot.display());

    // Another image on the same bottom layer: "present" on the page.
    let again = env.push_crafted("e2e/page-present:1", &["--good", "present\n"])?;
    let sum = env.hologram_pull(&again.reference)?;
    assert_eq!((sum.present, sum.lazy), (1, 1), "{}", sum.text);
    b.wait_for(
        "the already present layer",
        PAGE_TIMEOUT,
        &format!(
            "const c = {}; return !!c && c.querySelectorAll('tr[data-mode=\"present\"]').length === 1 \
               && c.querySelectorAll('tr[data-mode=\"lazy\"]').length === 1;",
            card("e2e/page-present:1")
        ),
    )?;

    let text = b.text()?.to_lowercase();
    for needle in [
        "fetch throughput",
        "cache hit ratio",
        "e2e/page:esgz",
        "lazy",
    ] {
        assert!(text.contains(needle), "no {needle:?} on the page:\n{text}");
    }
    let console = b.console()?;
    assert!(
        !console
            .iter()
            .any(|m| m.contains("Content Security Policy") || m.contains("SEVERE")),
        "browser console: {console:#?}"
    );

    // `hologram status` reads the same API.
    let status = hologram_ok(
        &["status", "--metrics", &format!("http://{metrics}/metrics")],
        Duration::from_secs(30),
    )?;
    assert!(status.contains("\nImages"), "{status}");
    assert!(status.contains("e2e/page:esgz"), "{status}");
    assert!(
        status.lines().filter(|l| l.contains(" lazy ")).count() >= 4,
        "{status}"
    );
    assert!(status.contains("not_estargz: not eStargz"), "{status}");

    Ok(())
}

/// Payloads that would set `window.__hologram_pwned` if the page parsed
/// them as HTML (or let them out of an attribute).
const PAYLOADS: &[&str] = &[
    "<script>window.__hologram_pwned=1</script>",
    "<img src=x onerror=\"window.__hologram_pwned=2\">",
    "\"><svg onload=window.__hologram_pwned=3>",
];

#[test]
fn node_page_renders_hostile_references_and_annotations_as_text() -> Result<()> {
    let metrics = format!("127.0.0.1:{}", free_port()?);
    let env = LazyEnv::start_with(LazyOptions {
        metrics_address: Some(metrics.clone()),
        ..LazyOptions::default()
    })?;
    // Annotations are the image's to choose: the TOC digest one makes the
    // layer fall back with a reason quoting it.
    let image = env.push_crafted(
        "e2e/page-xss:1",
        &[
            "--good",
            "xss\n",
            "--annotate",
            &format!("1:org.example.note={}", PAYLOADS[1]),
            "--annotate",
            &format!("1:org.example.other={}", PAYLOADS[2]),
            "--annotate",
            &format!("1:{TOC}={}", PAYLOADS[0]),
        ],
    )?;
    let sum = env.hologram_pull(&image.reference)?;
    assert_eq!(sum.unpacked, 1, "{}", sum.text);
    // A reference containerd would not send, but labels are strings: one
    // Prepare naming it (it falls back, recorded under that name).
    let hostile_ref = format!("e2e/page{}:1", PAYLOADS[0]);
    let chain = format!("sha256:{}", "7".repeat(64));
    let hostile_layer = PAYLOADS[1].to_owned();
    let prepared = env.prepare_direct(
        &format!("extract-1 {chain}"),
        "",
        &[
            ("containerd.io/snapshot.ref", &chain),
            ("containerd.io/snapshot/cri.image-ref", &hostile_ref),
            ("containerd.io/snapshot/cri.layer-digest", &hostile_layer),
            ("containerd.io/snapshot/cri.manifest-digest", PAYLOADS[2]),
        ],
    )?;
    assert!(prepared.is_ok(), "the hostile Prepare: {prepared:?}");

    let b = Browser::start(1400, 1200)?;
    b.goto(&format!("http://{metrics}/"))?;
    b.wait_for(
        "both images on the page",
        PAGE_TIMEOUT,
        &format!(
            "return !!({}) && !!({});",
            card("e2e/page-xss:1"),
            card(&hostile_ref)
        ),
    )?;
    // Let a few refreshes happen: each re-renders everything.
    let updated = b.execute("return Number(document.body.dataset.updated || 0);", &[])?;
    b.wait_for(
        "two more refreshes",
        PAGE_TIMEOUT,
        &format!(
            "return Number(document.body.dataset.updated || 0) >= {} + 2;",
            updated.as_f64().unwrap_or(0.0)
        ),
    )?;
    let text = b.text()?;
    for p in PAYLOADS {
        assert!(text.contains(p), "{p:?} is not shown as text:\n{text}");
    }
    let checks = b.execute(
        "return { \
           pwned: window.__hologram_pwned === undefined ? null : String(window.__hologram_pwned), \
           scripts: [...document.querySelectorAll('script')].map(s => s.getAttribute('src')), \
           imgs: document.querySelectorAll('img').length, \
           svgs: document.querySelectorAll('svg').length, \
           handlers: [...document.querySelectorAll('*')].filter(e => \
             [...e.attributes].some(a => a.name.startsWith('on'))).length \
         };",
        &[],
    )?;
    assert_eq!(checks["pwned"], Value::Null, "a payload ran: {checks}");
    assert_eq!(checks["scripts"], serde_json::json!(["/ui.js"]), "{checks}");
    assert_eq!(checks["imgs"], 0, "{checks}");
    assert_eq!(checks["svgs"], 1, "only the chart: {checks}");
    assert_eq!(checks["handlers"], 0, "{checks}");
    Ok(())
}

#[test]
fn node_page_shows_trust_verdicts_under_enforce() -> Result<()> {
    let world = TrustWorld::start()?;
    let signed = world.variant("page-signed")?;
    world.sign_into_dir(
        &world.trusted.private,
        &signed.reference,
        None,
        "signed.json",
    )?;
    let unsigned = world.variant("page-unsigned")?;
    let d = world.daemon(&TrustSettings {
        enforce: true,
        dir: Some(world.witness_dir.clone()),
        keys: vec![world.trusted.public.clone()],
        metrics: true,
        ..TrustSettings::default()
    })?;
    let metrics = d.metrics_addr.clone().context("no metrics address")?;
    // The refused one first: containerd does not ask for layers it has.
    let refusal = d.pull_refused(&unsigned.reference)?;
    let sum = d.pull(&signed.reference)?;
    assert_eq!(sum.lazy, sum.layers, "{}", sum.text);
    let uor = uor_resolve(&unsigned.reference)?;
    let v = node(&metrics)?;
    assert_eq!(v["trust"]["mode"], "enforce", "{v:#}");
    let verdict = |reference: &str| -> Value {
        v["images"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|i| {
                i["reference"]
                    .as_str()
                    .is_some_and(|r| r.ends_with(reference.rsplit('/').next().unwrap_or(reference)))
            })
            .map(|i| i["trust"].clone())
            .unwrap_or(Value::Null)
    };
    let refused = verdict(&unsigned.reference);
    assert_eq!(refused["decision"], "refused", "{v:#}");
    assert_eq!(refused["mode"], "enforce");
    assert_eq!(refused["uor_id"], uor.as_str());
    let reason = refused["reason"].as_str().unwrap_or_default().to_owned();
    assert!(
        reason.contains("not verified"),
        "{reason}\n(the pull said: {refusal})"
    );
    let allowed = verdict(&signed.reference);
    assert_eq!(allowed["decision"], "allowed", "{v:#}");
    let key_id = allowed["key_id"].as_str().unwrap_or_default().to_owned();
    assert!(!key_id.is_empty(), "{allowed}");

    let b = Browser::start(1400, 1200)?;
    b.goto(&format!("http://{metrics}/"))?;
    let refused_card = card("e2e/trust:page-unsigned");
    b.wait_for(
        "the refused image with its verdict",
        PAGE_TIMEOUT,
        &format!(
            "const c = {refused_card}; if (!c) return false; const t = c.textContent; \
             return c.dataset.decision === 'refused' && t.includes('enforce mode') \
               && t.includes({}) && t.includes({});",
            js(&uor),
            js(&reason)
        ),
    )?;
    let allowed_card = card("e2e/trust:page-signed");
    b.wait_for(
        "the allowed image with its witness key",
        PAGE_TIMEOUT,
        &format!(
            "const c = {allowed_card}; return !!c && c.dataset.decision === 'allowed' \
               && c.textContent.includes({});",
            js(&key_id)
        ),
    )?;
    Ok(())
}
