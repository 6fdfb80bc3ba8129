//! `hologram status`: a terminal summary of a running snapshotter, read from
//! its Prometheus endpoint (`/metrics`, Prometheus text format 0.0.4; the
//! OpenMetrics text format parses too).
//!
//! The GET goes through reqwest, the HTTP client the CLI already uses.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context as _};

/// Where the daemon serves its metrics unless configured otherwise.
pub const DEFAULT_METRICS_URL: &str = "http://127.0.0.1:8080/metrics";

/// The largest response accepted.
const MAX_RESPONSE: u64 = 32 << 20;

/// `hologram status`
#[derive(clap::Args, Debug, Clone)]
pub struct StatusArgs {
    /// URL of the snapshotter's metrics endpoint (plain http://)
    #[arg(
        long = "metrics",
        value_name = "URL",
        default_value = DEFAULT_METRICS_URL,
        env = "HOLOGRAM_METRICS_URL"
    )]
    pub metrics: String,
    /// Seconds to wait for the endpoint
    #[arg(long, default_value_t = 5)]
    pub timeout: u64,
    /// Print the parsed samples (name, labels, value) instead of the summary
    #[arg(long)]
    pub raw: bool,
}

/// Fetches the metrics and prints the summary.
pub async fn run(args: StatusArgs) -> anyhow::Result<()> {
    let url = args.metrics.clone();
    let timeout = Duration::from_secs(args.timeout.max(1));
    let body = http_get(&url, timeout).await?;
    let exposition = Exposition::parse(&body).with_context(|| {
        format!(
            "{} did not answer in the Prometheus text format",
            args.metrics
        )
    })?;
    if args.raw {
        for s in &exposition.samples {
            println!("{}{} {}", s.name, format_labels(&s.labels), s.value);
        }
    } else {
        print!("{}", render(&exposition, &args.metrics, unix_now()));
        // The images, from the JSON API behind the node's page (a daemon
        // without it, or with metrics elsewhere, just has no such section).
        if let Some(state) = node_state(&args.metrics, timeout).await {
            print!("{}", render_images(&state));
        }
    }
    Ok(())
}

/// `/api/v1/node` next to the metrics URL, when the daemon serves it.
async fn node_state(
    metrics: &str,
    timeout: Duration,
) -> Option<hologram_telemetry::api::NodeState> {
    let mut u = metrics_url(metrics).ok()?;
    u.set_path(hologram_telemetry::api::NODE_PATH);
    u.set_query(None);
    let body = http_get(u.as_str(), timeout).await.ok()?;
    serde_json::from_str(&body).ok()
}

/// A string an image chose, safe for a terminal: control characters
/// (escape sequences) shown escaped, bounded.
fn term(s: &str) -> String {
    let mut out: String = s
        .chars()
        .take(300)
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect();
    if s.chars().count() > 300 {
        out.push('…');
    }
    out
}

/// The images section: per image its trust verdict and layers (state,
/// fetched of size, why unpacked).
pub fn render_images(s: &hologram_telemetry::api::NodeState) -> String {
    use hologram_telemetry::api::LayerMode;
    let mut o = String::new();
    if !s.restoring.is_empty() {
        let _ = writeln!(
            o,
            "\nRestoring in the background (snapshots on these layers are refused until they are mounted)"
        );
        for r in &s.restoring {
            let _ = writeln!(
                o,
                "  {}  snapshot {}  {}  {} failed attempt(s)",
                term(&r.digest),
                r.snapshot_id,
                term(&r.image),
                r.attempts
            );
            if let Some(e) = &r.last_error {
                let _ = writeln!(o, "    last error: {}", term(e));
            }
        }
    }
    if s.images.is_empty() {
        return o;
    }
    let _ = writeln!(o, "\nImages (from {})", hologram_telemetry::api::NODE_PATH);
    for img in &s.images {
        let _ = writeln!(o, "  {}", term(&img.reference));
        if let Some(t) = &img.trust {
            let mut line = format!(
                "    trust: {} ({} mode), {}",
                term(&t.decision),
                term(&t.mode),
                term(&t.uor_id)
            );
            if let Some(k) = &t.key_id {
                let _ = write!(line, ", witness key {}", term(k));
            }
            let _ = writeln!(o, "{line}");
            if let Some(r) = &t.reason {
                let _ = writeln!(o, "      {}", term(r));
            }
        }
        for l in &img.layers {
            let digest = term(&l.digest);
            let short: String = digest.chars().take(19).collect();
            let state = match l.mode {
                LayerMode::Lazy => "lazy",
                LayerMode::Unpacked => "unpacked",
                LayerMode::Present => "present",
                LayerMode::Pending => "pending",
            };
            let mut line = format!("    {short}  {state:<8}");
            match l.mode {
                LayerMode::Lazy => {
                    let _ = write!(
                        line,
                        " fetched {} of {}",
                        human_bytes(l.fetched_bytes() as f64),
                        human_bytes(l.size as f64)
                    );
                    if let Some(c) = &l.check {
                        let _ = write!(line, ", check {}", term(c));
                    }
                }
                _ => {
                    if l.size > 0 {
                        let _ = write!(line, " {}", human_bytes(l.size as f64));
                    }
                }
            }
            if let Some(f) = &l.fallback {
                let _ = write!(line, " — {}: {}", term(&f.category), term(&f.reason));
            }
            let _ = writeln!(o, "{line}");
        }
    }
    o
}

// ---------------------------------------------------------------------------
// HTTP

/// `url` as an http URL: `http://` is assumed when no scheme is given,
/// `/metrics` when no path is.
fn metrics_url(url: &str) -> anyhow::Result<reqwest::Url> {
    let full = if url.contains("://") {
        url.to_owned()
    } else {
        format!("http://{url}")
    };
    let mut u = reqwest::Url::parse(&full).with_context(|| format!("{url}: not a URL"))?;
    if u.scheme() != "http" {
        bail!("{url}: only http:// is supported (not {}://)", u.scheme());
    }
    if u.host_str().is_none_or(str::is_empty) {
        bail!("{url}: no host");
    }
    if u.path() == "/" && !full.trim_end_matches('/').ends_with(u.path()) {
        u.set_path("/metrics");
    }
    Ok(u)
}

/// GET `url` and return the body of a 200 answer.
async fn http_get(url: &str, timeout: Duration) -> anyhow::Result<String> {
    let u = metrics_url(url)?;
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .user_agent(concat!("hologram/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("cannot set up the HTTP client")?;
    let resp = client
        .get(u.clone())
        .header(reqwest::header::ACCEPT, "text/plain")
        .send()
        .await
        .with_context(|| {
            format!("cannot connect to {u} (is hologram-snapshotter running, with its metrics endpoint on?)")
        })?;
    let status = resp.status();
    if resp.content_length().is_some_and(|n| n > MAX_RESPONSE) {
        bail!("{u}: the answer is larger than {MAX_RESPONSE} bytes");
    }
    let body = resp
        .bytes()
        .await
        .with_context(|| format!("cannot read the answer of {u}"))?;
    if body.len() as u64 > MAX_RESPONSE {
        bail!("{u}: the answer is larger than {MAX_RESPONSE} bytes");
    }
    let text = String::from_utf8_lossy(&body).into_owned();
    if !status.is_success() {
        let excerpt: String = text.chars().take(200).collect();
        bail!("{u} answered HTTP {}: {}", status.as_u16(), excerpt.trim());
    }
    Ok(text)
}

// ---------------------------------------------------------------------------
// Text format

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The sample's name (`foo_total`, `foo_bucket`, ...).
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its value.
    pub value: f64,
}

/// A parsed exposition: the `# TYPE` of each family and every sample.
#[derive(Debug, Clone, Default)]
pub struct Exposition {
    /// Family name -> type (`counter`, `gauge`, `histogram`, ...).
    pub types: BTreeMap<String, String>,
    /// Samples in the order they came.
    pub samples: Vec<Sample>,
}

fn is_name_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

fn parse_value(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" | "+inf" | "inf" => Some(f64::INFINITY),
        "-Inf" | "-inf" => Some(f64::NEG_INFINITY),
        "NaN" | "nan" => Some(f64::NAN),
        _ => s.parse().ok(),
    }
}

/// Parses `{a="x",b="y"}` at the start of `s`; returns the labels and the rest.
fn parse_labels(s: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    let mut rest = s.strip_prefix('{').ok_or("expected '{'")?;
    loop {
        rest = rest.trim_start();
        if let Some(r) = rest.strip_prefix('}') {
            return Ok((labels, r));
        }
        let name_len = rest.find(|c: char| !is_name_char(c)).unwrap_or(rest.len());
        if name_len == 0 {
            return Err(format!("expected a label name at {rest:?}"));
        }
        let name = &rest[..name_len];
        rest = rest[name_len..].trim_start();
        rest = rest
            .strip_prefix('=')
            .ok_or_else(|| format!("expected '=' after label {name}"))?;
        rest = rest.trim_start();
        rest = rest
            .strip_prefix('"')
            .ok_or_else(|| format!("expected '\"' for label {name}"))?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err(format!("unterminated value of label {name}")),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, c)) => {
                        value.push('\\');
                        value.push(c);
                    }
                    None => return Err(format!("unterminated value of label {name}")),
                },
                Some((_, c)) => value.push(c),
            }
        };
        labels.insert(name.to_owned(), value);
        rest = rest[end + 1..].trim_start();
        if let Some(r) = rest.strip_prefix(',') {
            rest = r;
        } else if !rest.starts_with('}') {
            return Err(format!("expected ',' or '}}' after label {name}"));
        }
    }
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    if !line.starts_with(is_name_start) {
        return Err("a sample must start with a metric name".into());
    }
    let name_len = line.find(|c: char| !is_name_char(c)).unwrap_or(line.len());
    let name = &line[..name_len];
    let mut rest = &line[name_len..];
    let labels = if rest.starts_with('{') {
        let (labels, r) = parse_labels(rest)?;
        rest = r;
        labels
    } else {
        BTreeMap::new()
    };
    let mut fields = rest.split_whitespace();
    let value_text = fields
        .next()
        .ok_or_else(|| format!("no value for {name}"))?;
    let value =
        parse_value(value_text).ok_or_else(|| format!("bad value {value_text:?} for {name}"))?;
    // An optional timestamp may follow (ignored); an OpenMetrics exemplar
    // starts with '#'.
    let mut after_value = fields.take_while(|f| !f.starts_with('#'));
    if let Some(ts) = after_value.next() {
        if ts.parse::<f64>().is_err() {
            return Err(format!("bad timestamp {ts:?} after the value of {name}"));
        }
    }
    if let Some(extra) = after_value.next() {
        return Err(format!("unexpected {extra:?} after the value of {name}"));
    }
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

impl Exposition {
    /// Parses the Prometheus text format (0.0.4; OpenMetrics text parses
    /// too). Comments other than `# TYPE` are ignored.
    pub fn parse(text: &str) -> anyhow::Result<Exposition> {
        let mut e = Exposition::default();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            if let Some(comment) = line.strip_prefix('#') {
                let mut words = comment.split_whitespace();
                if words.next() == Some("TYPE") {
                    if let (Some(name), Some(typ)) = (words.next(), words.next()) {
                        e.types.insert(name.to_owned(), typ.to_owned());
                    }
                }
                continue;
            }
            let sample =
                parse_sample(line).map_err(|m| anyhow!("line {}: {m}: {line:?}", i + 1))?;
            e.samples.push(sample);
        }
        Ok(e)
    }

    fn matching<'a>(
        &'a self,
        name: &'a str,
        filter: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name
                && filter
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }

    /// Whether any sample is called `name`.
    pub fn has(&self, name: &str) -> bool {
        self.samples.iter().any(|s| s.name == name)
    }

    /// The sum of the samples `name` whose labels include `filter`.
    pub fn sum(&self, name: &str, filter: &[(&str, &str)]) -> f64 {
        self.matching(name, filter).map(|s| s.value).sum()
    }

    /// The samples `name` summed by the value of `label`.
    pub fn by_label(&self, name: &str, label: &str) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for s in self.matching(name, &[]) {
            let key = s.labels.get(label).cloned().unwrap_or_default();
            *out.entry(key).or_insert(0.0) += s.value;
        }
        out
    }

    /// Estimates the `q` quantile of the histogram `family` (samples
    /// `family_bucket`) over the series whose labels include `filter`,
    /// interpolating linearly inside the bucket, as PromQL's
    /// `histogram_quantile` does. None without observations.
    pub fn quantile(&self, family: &str, q: f64, filter: &[(&str, &str)]) -> Option<f64> {
        let bucket_name = format!("{family}_bucket");
        let mut buckets: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
        for s in self.matching(&bucket_name, filter) {
            let le = s.labels.get("le").and_then(|v| parse_value(v))?;
            // Key by the bound's bits so that equal bounds of several series add up.
            let entry = buckets.entry(order_key(le)).or_insert((le, 0.0));
            entry.1 += s.value;
        }
        let total = buckets.values().last().map(|(_, c)| *c)?;
        if total <= 0.0 {
            return None;
        }
        let rank = q * total;
        let mut prev_bound = 0.0;
        let mut prev_count = 0.0;
        for (bound, count) in buckets.values() {
            if *count >= rank {
                if bound.is_infinite() {
                    return Some(prev_bound);
                }
                let in_bucket = count - prev_count;
                if in_bucket <= 0.0 {
                    return Some(*bound);
                }
                return Some(prev_bound + (bound - prev_bound) * (rank - prev_count) / in_bucket);
            }
            prev_bound = *bound;
            prev_count = *count;
        }
        Some(prev_bound)
    }
}

/// A u64 that sorts like the (non-NaN) f64 `v`.
fn order_key(v: f64) -> u64 {
    let bits = v.to_bits();
    if bits >> 63 == 1 {
        !bits
    } else {
        bits | (1 << 63)
    }
}

fn format_labels(labels: &BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        return String::new();
    }
    let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{{{}}}", inner.join(","))
}

// ---------------------------------------------------------------------------
// Summary

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// `1536` -> `1.5 KiB`.
pub fn human_bytes(v: f64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = v.max(0.0);
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{v:.0} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

fn human_seconds(s: f64) -> String {
    if !s.is_finite() {
        "-".into()
    } else if s < 0.001 {
        format!("{:.0} µs", s * 1e6)
    } else if s < 1.0 {
        format!("{:.1} ms", s * 1e3)
    } else {
        format!("{s:.2} s")
    }
}

fn human_duration(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    let (d, h, m) = (s / 86_400, (s % 86_400) / 3600, (s % 3600) / 60);
    if d > 0 {
        format!("{d}d {h}h {m}m")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else if m > 0 {
        format!("{m}m {}s", s % 60)
    } else {
        format!("{s}s")
    }
}

fn count(v: f64) -> String {
    // An empty sum is -0.0: shown as 0.
    format!("{:.0}", v + 0.0)
}

fn percent(part: f64, whole: f64) -> String {
    if whole > 0.0 {
        format!("{:.1}%", 100.0 * part / whole)
    } else {
        "-".into()
    }
}

/// The terminal summary of `e`, read from `url`, at Unix time `now`.
pub fn render(e: &Exposition, url: &str, now: f64) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "hologram-snapshotter metrics from {url}");

    let start = e.sum("process_start_time_seconds", &[]);
    if start > 0.0 {
        let _ = writeln!(
            o,
            "  uptime                 {}",
            human_duration(now - start)
        );
    }
    if e.has("process_resident_memory_bytes") {
        let _ = writeln!(
            o,
            "  memory (RSS)           {}",
            human_bytes(e.sum("process_resident_memory_bytes", &[]))
        );
    }
    let _ = writeln!(
        o,
        "  mounted layers         {}",
        count(e.sum("hologram_mounted_layers", &[]))
    );
    let restoring = e.sum("hologram_restoring_layers", &[]);
    if restoring > 0.0 {
        let _ = writeln!(
            o,
            "  RESTORING layers       {} (not mounted again yet after a restart: the registry is needed)",
            count(restoring)
        );
    }

    let _ = writeln!(o, "\nData");
    let fetched = e.by_label("hologram_fetched_bytes_total", "source");
    let fetched_total: f64 = fetched.values().sum();
    let parts: Vec<String> = fetched
        .iter()
        .map(|(s, v)| format!("{s} {}", human_bytes(*v)))
        .collect();
    let _ = writeln!(
        o,
        "  fetched                {} ({})",
        human_bytes(fetched_total),
        if parts.is_empty() {
            "none".to_owned()
        } else {
            parts.join(", ")
        }
    );
    let served = e.sum("hologram_served_bytes_total", &[]);
    let _ = writeln!(o, "  served to readers      {}", human_bytes(served));
    let remote: f64 = fetched
        .iter()
        .filter(|(s, _)| s.as_str() != "cache")
        .map(|(_, v)| *v)
        .sum();
    if served > 0.0 {
        let _ = writeln!(o, "  remote / served        {}", percent(remote, served));
    }
    let _ = writeln!(
        o,
        "  prefetched             {}",
        human_bytes(e.sum("hologram_prefetch_bytes_total", &[]))
    );
    let _ = writeln!(
        o,
        "  background fetch       {} ({} chunks pending)",
        human_bytes(e.sum("hologram_background_fetch_bytes", &[])),
        count(e.sum("hologram_background_pending_chunks", &[]))
    );
    let fetch_errors = e.sum("hologram_remote_fetches_total", &[("result", "error")]);
    if fetch_errors > 0.0 {
        let _ = writeln!(o, "  fetch errors           {}", count(fetch_errors));
    }

    let _ = writeln!(o, "\nCache");
    let used = e.sum("hologram_cache_bytes", &[]);
    let limit = e.sum("hologram_cache_limit_bytes", &[]);
    let _ = writeln!(
        o,
        "  use                    {} / {} ({})",
        human_bytes(used),
        if limit > 0.0 {
            human_bytes(limit)
        } else {
            "no limit".into()
        },
        percent(used, limit)
    );
    let hits = e.sum("hologram_cache_requests_total", &[("result", "hit")]);
    let misses = e.sum("hologram_cache_requests_total", &[("result", "miss")]);
    let _ = writeln!(
        o,
        "  lookups                {} (hit ratio {})",
        count(hits + misses),
        percent(hits, hits + misses)
    );
    let unstored = e.sum("hologram_cache_write_failures", &[]);
    if unstored > 0.0 {
        let _ = writeln!(
            o,
            "  NOT STORED             {} verified chunks (cache disk full or failing; served from memory)",
            count(unstored)
        );
    }

    let _ = writeln!(o, "\nIntegrity");
    let _ = writeln!(
        o,
        "  verification failures  {}",
        count(e.sum("hologram_chunk_verification_failures_total", &[]))
    );
    let fallbacks: Vec<String> = e
        .by_label("hologram_remote_fallbacks_total", "reason")
        .into_iter()
        .filter(|(_, v)| *v > 0.0)
        .map(|(r, v)| format!("{r} {}", count(v)))
        .collect();
    let _ = writeln!(
        o,
        "  fallbacks              {}",
        if fallbacks.is_empty() {
            "none".to_owned()
        } else {
            fallbacks.join(", ")
        }
    );

    render_ctp96(e, &mut o);

    let _ = writeln!(o, "\nSnapshotter operations");
    let ops_name = "hologram_snapshotter_operations_total";
    let dur = "hologram_snapshotter_operation_duration_seconds";
    let mut rows = Vec::new();
    for (op, total) in e.by_label(ops_name, "op") {
        if total <= 0.0 {
            continue;
        }
        let errors: f64 = e
            .matching(ops_name, &[])
            .filter(|s| {
                // already_exists (a lazily mounted layer) and not_found (a
                // Stat before unpack) are containerd's normal answers.
                s.labels.get("op") == Some(&op)
                    && !matches!(
                        s.labels.get("result").map(String::as_str),
                        Some("ok" | "already_exists" | "not_found")
                    )
            })
            .map(|s| s.value)
            .sum();
        let filter = [("op", op.as_str())];
        let n = e.sum(&format!("{dur}_count"), &filter);
        let mean = if n > 0.0 {
            e.sum(&format!("{dur}_sum"), &filter) / n
        } else {
            f64::NAN
        };
        let p95 = e.quantile(dur, 0.95, &filter).unwrap_or(f64::NAN);
        rows.push((op.clone(), total, errors, mean, p95));
    }
    if rows.is_empty() {
        let _ = writeln!(o, "  none yet");
    } else {
        let _ = writeln!(
            o,
            "  {:<10} {:>10} {:>8} {:>10} {:>10}",
            "op", "total", "errors", "mean", "p95"
        );
        for (op, total, errors, mean, p95) in rows {
            let _ = writeln!(
                o,
                "  {:<10} {:>10} {:>8} {:>10} {:>10}",
                op,
                count(total),
                count(errors),
                human_seconds(mean),
                human_seconds(p95)
            );
        }
    }

    let reads = e.sum("hologram_fuse_read_duration_seconds_count", &[]);
    if reads > 0.0 {
        let _ = writeln!(o, "\nFUSE reads");
        let mean = e.sum("hologram_fuse_read_duration_seconds_sum", &[]) / reads;
        let p95 = e
            .quantile("hologram_fuse_read_duration_seconds", 0.95, &[])
            .unwrap_or(f64::NAN);
        let _ = writeln!(
            o,
            "  {} reads, {} returned, mean {}, p95 {}",
            count(reads),
            human_bytes(e.sum("hologram_fuse_read_bytes_total", &[])),
            human_seconds(mean),
            human_seconds(p95)
        );
    }
    o
}

/// `op=result value, ...` of the CTP-96 op `op`, non-zero only.
fn ctp96_results(e: &Exposition, op: &str) -> Vec<(String, f64)> {
    e.matching("hologram_ctp96_operations_total", &[("op", op)])
        .filter(|s| s.value > 0.0)
        .map(|s| (s.labels.get("result").cloned().unwrap_or_default(), s.value))
        .collect()
}

fn list(items: &[(String, f64)]) -> String {
    if items.is_empty() {
        "none".into()
    } else {
        items
            .iter()
            .map(|(k, v)| format!("{k} {}", count(*v)))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The CTP-96 section, when the daemon has a CTP-96 endpoint (its op
/// series exist) or fetched over it.
fn render_ctp96(e: &Exposition, o: &mut String) {
    let ops = "hologram_ctp96_operations_total";
    let fetched = e.sum("hologram_fetched_bytes_total", &[("source", "ctp96")]);
    if !e.has(ops) && fetched <= 0.0 {
        return;
    }
    let _ = writeln!(o, "\nCTP-96");
    let n = |op: &str, result: &str| e.sum(ops, &[("op", op), ("result", result)]);
    let _ = writeln!(
        o,
        "  fetched                {} in {} batched reads ({} retried, {} failed)",
        human_bytes(fetched),
        count(n("fetch", "ok")),
        count(n("fetch", "retry")),
        count(n("fetch", "error"))
    );
    let lease = e.sum("hologram_lease_duration_seconds", &[]);
    let _ = writeln!(
        o,
        "  sessions               {} opened, {} refused at the server's limit, {} renewals ({} failed, {} gone), lease {}",
        count(n("session_open", "ok")),
        count(n("session_open", "limit")),
        count(n("session_renew", "ok")),
        count(n("session_renew", "error")),
        count(n("session_renew", "gone")),
        if lease > 0.0 { human_duration(lease) } else { "-".into() }
    );
    let _ = writeln!(
        o,
        "  frames rejected        {}",
        list(&ctp96_results(e, "frame_rejected"))
    );
    let _ = writeln!(
        o,
        "  registry fallbacks     {}",
        list(&ctp96_results(e, "fallback"))
    );
    let hints = e.by_label("hologram_energy_hints", "hint");
    if !hints.is_empty() {
        let get = |k: &str| hints.get(k).copied().unwrap_or(f64::NAN);
        let _ = writeln!(
            o,
            "  energy hints           load {:.2}, concurrency {}, chunk size {}",
            get("load"),
            count(get("concurrency")),
            human_bytes(get("chunk_size"))
        );
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use hologram_telemetry::{GaugeSnapshot, Metrics};

    fn busy_metrics() -> std::sync::Arc<Metrics> {
        let m = Metrics::new();
        for _ in 0..9 {
            m.snapshotter_op("prepare", "ok", 0.004);
        }
        m.snapshotter_op("prepare", "error", 0.5);
        m.snapshotter_op("commit", "ok", 0.02);
        let h = m.fuse_handles(&[]);
        h.fetch("registry", 0.2, 3 << 20, true);
        h.fetch("ctp96", 1.0, 0, false);
        for _ in 0..3 {
            m.cache_lookup(true);
        }
        m.cache_lookup(false);
        h.verification_failure();
        m.fallback("not_estargz");
        m.fallback("not_estargz");
        m.fallback("fetch_error");
        m.fuse_read(0.003, 4096, "ok");
        m.set_collector(Box::new(|s: &mut GaugeSnapshot| {
            s.mounted_layers = 4;
            s.cache_bytes = 512 << 20;
            s.cache_limit_bytes = 2 << 30;
            s.bytes_served = 8 << 20;
            s.background_pending_chunks = 7;
            s.cache_write_failures = 3;
        }));
        m
    }

    #[test]
    fn parses_the_daemons_own_output() {
        let m = busy_metrics();
        let text = m.encode();
        let e = Exposition::parse(&text).unwrap();
        assert_eq!(
            e.types
                .get("hologram_snapshotter_operations_total")
                .map(String::as_str),
            Some("counter")
        );
        assert_eq!(
            e.types.get("hologram_mounted_layers").map(String::as_str),
            Some("gauge")
        );
        assert_eq!(
            e.types
                .get("hologram_snapshotter_operation_duration_seconds")
                .map(String::as_str),
            Some("histogram")
        );
        assert_eq!(
            e.types
                .get("hologram_resolver_operations_total")
                .map(String::as_str),
            Some("counter")
        );
        let ops = "hologram_snapshotter_operations_total";
        assert_eq!(e.sum(ops, &[("op", "prepare"), ("result", "ok")]), 9.0);
        assert_eq!(e.sum(ops, &[("op", "prepare")]), 10.0);
        assert_eq!(e.sum(ops, &[]), 11.0);
        assert_eq!(e.sum("hologram_mounted_layers", &[]), 4.0);
        assert_eq!(
            e.sum("hologram_fetched_bytes_total", &[("source", "registry")]),
            (3 << 20) as f64
        );
        let by_reason = e.by_label("hologram_remote_fallbacks_total", "reason");
        assert_eq!(by_reason.get("not_estargz"), Some(&2.0));
        assert_eq!(by_reason.get("disabled"), Some(&0.0));
        assert!(e.sum("process_resident_memory_bytes", &[]) > 0.0);
        // Every sample line was read.
        let lines = text
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .count();
        assert_eq!(e.samples.len(), lines);
        // 9 prepares took 4 ms, one 0.5 s: the p95 lies in the bucket (0.25,
        // 0.5], the median in (0.0025, 0.005].
        let p95 = e
            .quantile(
                "hologram_snapshotter_operation_duration_seconds",
                0.95,
                &[("op", "prepare")],
            )
            .unwrap();
        assert!(p95 > 0.1 && p95 <= 0.5, "{p95}");
        let p50 = e
            .quantile(
                "hologram_snapshotter_operation_duration_seconds",
                0.5,
                &[("op", "prepare")],
            )
            .unwrap();
        assert!(p50 > 0.0025 && p50 <= 0.005, "{p50}");
        assert_eq!(
            e.quantile(
                "hologram_snapshotter_operation_duration_seconds",
                0.5,
                &[("op", "view")]
            ),
            None
        );
    }

    #[test]
    fn summary_of_the_daemons_output() {
        let m = busy_metrics();
        let e = Exposition::parse(&m.encode()).unwrap();
        let start = e.sum("process_start_time_seconds", &[]);
        let out = render(&e, DEFAULT_METRICS_URL, start + 3725.0);
        assert!(out.contains("uptime                 1h 2m"), "{out}");
        assert!(out.contains("mounted layers         4"), "{out}");
        assert!(
            out.contains("fetched                3.0 MiB (cache 0 B, ctp96 0 B, registry 3.0 MiB)"),
            "{out}"
        );
        assert!(out.contains("served to readers      8.0 MiB"), "{out}");
        assert!(out.contains("remote / served        37.5%"), "{out}");
        assert!(out.contains("512.0 MiB / 2.0 GiB (25.0%)"), "{out}");
        assert!(
            out.contains("lookups                4 (hit ratio 75.0%)"),
            "{out}"
        );
        assert!(out.contains("verification failures  1"), "{out}");
        assert!(
            out.contains("fallbacks              fetch_error 1, not_estargz 2"),
            "{out}"
        );
        assert!(out.contains("fetch errors           1"), "{out}");
        assert!(out.contains("7 chunks pending"), "{out}");
        assert!(
            out.contains("NOT STORED             3 verified chunks"),
            "{out}"
        );
        let prepare = out
            .lines()
            .find(|l| l.trim_start().starts_with("prepare"))
            .unwrap();
        let cols: Vec<&str> = prepare.split_whitespace().collect();
        assert_eq!(&cols[..3], &["prepare", "10", "1"], "{prepare}");
        let commit = out
            .lines()
            .find(|l| l.trim_start().starts_with("commit"))
            .unwrap();
        assert_eq!(
            &commit.split_whitespace().collect::<Vec<_>>()[..3],
            &["commit", "1", "0"]
        );
        assert!(!out.contains("  view "), "{out}");
        assert!(out.contains("1 reads, 4.0 KiB returned"), "{out}");
    }

    #[test]
    fn summary_of_ctp96_traffic() {
        let m = busy_metrics();
        for (op, r) in [
            ("fetch", "ok"),
            ("fetch", "retry"),
            ("frame_rejected", "crc"),
        ] {
            m.declare_ctp96_op(op, r);
        }
        for _ in 0..5 {
            m.ctp96_op("fetch", "ok");
        }
        m.ctp96_op("fetch", "retry");
        m.ctp96_op("frame_rejected", "replay");
        m.ctp96_op("session_open", "ok");
        m.ctp96_op("session_renew", "ok");
        m.ctp96_op("session_renew", "ok");
        m.ctp96_op("fallback", "unreachable");
        m.set_lease_duration(300.0);
        m.set_energy_hint("load", 0.25);
        m.set_energy_hint("concurrency", 6.0);
        m.set_energy_hint("chunk_size", 8.0 * 1024.0 * 1024.0);
        m.fuse_handles(&[]).fetch("ctp96", 0.1, 2 << 20, true);
        let e = Exposition::parse(&m.encode()).unwrap();
        let out = render(&e, DEFAULT_METRICS_URL, unix_now());
        assert!(
            out.contains("fetched                2.0 MiB in 5 batched reads (1 retried, 0 failed)"),
            "{out}"
        );
        assert!(
            out.contains("sessions               1 opened, 0 refused at the server's limit, 2 renewals (0 failed, 0 gone), lease 5m 0s"),
            "{out}"
        );
        assert!(out.contains("frames rejected        replay 1"), "{out}");
        assert!(
            out.contains("registry fallbacks     unreachable 1"),
            "{out}"
        );
        assert!(
            out.contains("energy hints           load 0.25, concurrency 6, chunk size 8.0 MiB"),
            "{out}"
        );
        // a daemon without CTP-96 shows no such section
        let plain = Exposition::parse(&Metrics::new().encode()).unwrap();
        assert!(!render(&plain, DEFAULT_METRICS_URL, unix_now()).contains("CTP-96"));
    }

    #[test]
    fn summary_of_a_fresh_daemon() {
        let e = Exposition::parse(&Metrics::new().encode()).unwrap();
        let out = render(&e, DEFAULT_METRICS_URL, unix_now());
        assert!(out.contains("mounted layers         0"), "{out}");
        assert!(out.contains("hit ratio -"), "{out}");
        assert!(out.contains("fallbacks              none"), "{out}");
        assert!(out.contains("none yet"), "{out}");
    }

    #[test]
    fn parser_details() {
        let text = "# HELP x_total Some help with \\\\ and \\n.\n\
                    # TYPE x_total counter\n\
                    x_total{a=\"q\\\"uo\\\\te\\n\",b=\"2\",} 3 1700000000000\n\
                    \n\
                    # a free comment\n\
                    y -Inf\n\
                    y_bucket{le=\"+Inf\"} 4\n\
                    z NaN\n\
                    w{ a = \"1\" } 1.5e3\n\
                    # EOF\n";
        let e = Exposition::parse(text).unwrap();
        assert_eq!(e.types.get("x_total").map(String::as_str), Some("counter"));
        assert_eq!(e.samples.len(), 5);
        assert_eq!(
            e.samples[0].labels.get("a").map(String::as_str),
            Some("q\"uo\\te\n")
        );
        assert_eq!(e.samples[0].value, 3.0);
        assert_eq!(e.samples[1].value, f64::NEG_INFINITY);
        assert_eq!(
            e.samples[2].labels.get("le").map(String::as_str),
            Some("+Inf")
        );
        assert!(e.samples[3].value.is_nan());
        assert_eq!(e.sum("w", &[("a", "1")]), 1500.0);

        for bad in [
            "x{a=\"1\"",
            "x{a=1} 2",
            "x",
            "x 1 2 3x",
            "{a=\"1\"} 2",
            "x{=\"1\"} 2",
            "x abc",
        ] {
            let err = Exposition::parse(bad).unwrap_err().to_string();
            assert!(err.starts_with("line 1:"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn urls() {
        let u = metrics_url("http://127.0.0.1:8080/metrics").unwrap();
        assert_eq!(u.as_str(), "http://127.0.0.1:8080/metrics");
        assert_eq!(
            metrics_url("localhost:9100").unwrap().as_str(),
            "http://localhost:9100/metrics"
        );
        assert_eq!(
            metrics_url("http://[::1]:8080/m").unwrap().as_str(),
            "http://[::1]:8080/m"
        );
        assert!(metrics_url("https://127.0.0.1:8080/metrics").is_err());
        assert!(metrics_url("http://:8080/metrics").is_err());
        assert!(metrics_url("http://h:port/").is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fetches_from_a_live_endpoint() {
        let metrics = busy_metrics();
        let listener = hologram_telemetry::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let health: hologram_telemetry::HealthCheck =
            std::sync::Arc::new(|| Err("store closed".into()));
        let server = tokio::spawn(hologram_telemetry::serve_on(
            listener,
            metrics,
            health,
            async move {
                let _ = stopped.await;
            },
        ));
        let url = format!("http://{addr}/metrics");
        let body = http_get(&url, Duration::from_secs(5)).await.unwrap();
        let e = Exposition::parse(&body).unwrap();
        assert_eq!(e.sum("hologram_mounted_layers", &[]), 4.0);
        // A non-200 answer is an error that carries the body.
        let health_url = format!("http://{addr}/healthz");
        let err = http_get(&health_url, Duration::from_secs(5))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("HTTP 503") && err.contains("store closed"),
            "{err}"
        );
        // The whole command.
        run(StatusArgs {
            metrics: url,
            timeout: 5,
            raw: false,
        })
        .await
        .unwrap();
        stop.send(()).unwrap();
        server.await.unwrap().unwrap();

        // Nobody listening: a clear error.
        let err = http_get(&format!("http://{addr}/metrics"), Duration::from_secs(2))
            .await
            .unwrap_err();
        assert!(format!("{err:#}").contains("cannot connect"), "{err:#}");
    }

    #[test]
    fn images_section_from_the_api_escapes_terminal_controls() {
        use hologram_telemetry::api::*;
        let state = NodeState {
            images: vec![ImageState {
                reference: "reg/x:1\u{1b}]0;pwned\u{7}".into(),
                trust: Some(TrustVerdict {
                    decision: "refused".into(),
                    mode: "enforce".into(),
                    uor_id: "uor:v1:r1:ab".into(),
                    reason: Some("no witness found".into()),
                    ..TrustVerdict::default()
                }),
                layers: vec![
                    LayerState {
                        digest: format!("sha256:{}", "a".repeat(64)),
                        size: 2048,
                        mode: LayerMode::Lazy,
                        demand_bytes: 1024,
                        check: Some("pending".into()),
                        ..LayerState::default()
                    },
                    LayerState {
                        digest: format!("sha256:{}", "b".repeat(64)),
                        size: 10,
                        mode: LayerMode::Unpacked,
                        fallback: Some(FallbackInfo {
                            category: "not_estargz".into(),
                            reason: "no TOC".into(),
                        }),
                        ..LayerState::default()
                    },
                ],
                ..ImageState::default()
            }],
            ..NodeState::default()
        };
        let out = render_images(&state);
        assert!(!out.contains('\u{1b}') && !out.contains('\u{7}'), "{out:?}");
        assert!(out.contains("reg/x:1\\u{1b}]0;pwned"), "{out}");
        assert!(
            out.contains("trust: refused (enforce mode), uor:v1:r1:ab"),
            "{out}"
        );
        assert!(out.contains("no witness found"), "{out}");
        assert!(
            out.contains("lazy     fetched 1.0 KiB of 2.0 KiB, check pending"),
            "{out}"
        );
        assert!(out.contains("unpacked 10 B — not_estargz: no TOC"), "{out}");
        assert_eq!(render_images(&NodeState::default()), "");
    }
}
