//! How much witness verification adds to a pull: `hologram pull` of a
//! signed eStargz image with a fresh daemon each time, trust off vs
//! enforce mode (witness from `hologram witness serve`, and from a witness
//! directory), five runs each, interleaved. Prints the medians; asserts only
//! that every pull succeeds (timing is not asserted).

use std::time::Duration;

use anyhow::{bail, Result};
use hologram_e2e::trust::{median, TrustDaemon, TrustSettings, TrustWorld};

const RUNS: usize = 5;

/// Seconds since midnight of a log line's RFC 3339 timestamp.
fn log_time(line: &str) -> Option<f64> {
    let ts = line.split_whitespace().next()?;
    let (_, time) = ts.split_once('T')?;
    let time = time.trim_end_matches('Z');
    let mut parts = time.split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

/// Wall time of `hologram pull` and, with trust on, the gate's time inside
/// the daemon (first layer Prepare received → "witness verified").
fn timed_pull(settings: &TrustSettings, reference: &str) -> Result<(Duration, Option<Duration>)> {
    let d = TrustDaemon::start(settings)?;
    let (out, took) = d.pull_raw(reference)?;
    if !out.status.success() {
        bail!(
            "pull failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            d.diagnostics()
        );
    }
    let log = d.log();
    let prepare = log
        .lines()
        .find(|l| l.contains("prepare key=") && l.contains("extract-"))
        .and_then(log_time);
    let verified = log
        .lines()
        .find(|l| l.contains("witness verified"))
        .and_then(log_time);
    let gate = match (prepare, verified) {
        (Some(p), Some(v)) if v >= p => Some(Duration::from_secs_f64(v - p)),
        _ => None,
    };
    Ok((took, gate))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[test]
fn trust_latency_of_verification_per_pull() -> Result<()> {
    let world = TrustWorld::start()?;
    let img = world.variant("latency")?;
    world.sign_into_dir(&world.trusted.private, &img.reference, None, "latency.json")?;
    let server = world.start_witness_server()?;
    let off = TrustSettings::default();
    let endpoint = TrustSettings {
        enforce: true,
        endpoint: Some(server.url()),
        keys: vec![world.trusted.public.clone()],
        ..TrustSettings::default()
    };
    let dir = TrustSettings {
        enforce: true,
        dir: Some(world.witness_dir.clone()),
        keys: vec![world.trusted.public.clone()],
        ..TrustSettings::default()
    };
    // One warm-up of each (page cache, registry).
    timed_pull(&off, &img.reference)?;
    timed_pull(&endpoint, &img.reference)?;
    let (mut t_off, mut t_ep, mut t_dir) = (Vec::new(), Vec::new(), Vec::new());
    let (mut g_ep, mut g_dir) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        t_off.push(timed_pull(&off, &img.reference)?.0);
        let (t, g) = timed_pull(&endpoint, &img.reference)?;
        t_ep.push(t);
        g_ep.extend(g);
        let (t, g) = timed_pull(&dir, &img.reference)?;
        t_dir.push(t);
        g_dir.extend(g);
    }
    assert_eq!(
        (g_ep.len(), g_dir.len()),
        (RUNS, RUNS),
        "every enforce-mode pull logs one \"witness verified\""
    );
    let list = |v: &[Duration]| {
        v.iter()
            .map(|d| format!("{:.0}", ms(*d)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (m_off, m_ep, m_dir) = (
        median(t_off.clone()),
        median(t_ep.clone()),
        median(t_dir.clone()),
    );
    println!(
        "hologram pull of a {}-layer signed eStargz image, fresh daemon each (ms): trust off [{}], enforce+endpoint [{}], enforce+witness_dir [{}]",
        img.layers.len(),
        list(&t_off),
        list(&t_ep),
        list(&t_dir)
    );
    println!(
        "medians: trust off {:.0} ms, enforce with endpoint {:.0} ms, enforce with witness_dir {:.0} ms",
        ms(m_off),
        ms(m_ep),
        ms(m_dir)
    );
    println!(
        "verification adds {:.0} ms per pull (median of {RUNS}; witness endpoint); {:.0} ms with a witness directory",
        ms(m_ep) - ms(m_off),
        ms(m_dir) - ms(m_off)
    );
    println!(
        "inside the daemon (first layer Prepare -> \"witness verified\": manifest fetch, witness fetch, verification): median {:.1} ms with the endpoint, {:.1} ms with the directory",
        ms(median(g_ep)),
        ms(median(g_dir))
    );
    Ok(())
}
