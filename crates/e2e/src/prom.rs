//! Scraping the daemon's `/metrics` and parsing it with the reference
//! parser, Python's `prometheus_client` (an independent implementation:
//! what it cannot parse, Prometheus would likely reject too).

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::process::run_with_timeout;
use crate::registry::{http_get, HttpResponse};

/// Reads a file of Prometheus text and prints its families as JSON with
/// `prometheus_client.parser.text_string_to_metric_families`.
const PARSER: &str = r#"
import json, math, sys
from prometheus_client.parser import text_string_to_metric_families
text = open(sys.argv[1], encoding="utf-8").read()
out = []
for f in text_string_to_metric_families(text):
    out.append({
        "name": f.name,
        "type": f.type,
        "documentation": f.documentation,
        "samples": [
            {"name": s.name, "labels": dict(s.labels),
             "value": s.value if math.isfinite(s.value) else str(s.value)}
            for s in f.samples
        ],
    })
json.dump(out, sys.stdout)
"#;

/// One sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// One metric family as the parser sees it (counter families are named
/// without `_total`; their samples keep it).
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    pub name: String,
    pub kind: String,
    pub samples: Vec<Sample>,
}

/// A parsed exposition.
#[derive(Debug, Clone)]
pub struct Exposition {
    pub families: Vec<Family>,
    pub text: String,
}

impl Exposition {
    /// Parses `text` with Python's prometheus_client.
    pub fn parse(text: &str) -> Result<Self> {
        let mut file = tempfile::NamedTempFile::new().context("temp file")?;
        std::io::Write::write_all(&mut file, text.as_bytes()).context("writing metrics")?;
        let out = run_with_timeout(
            Command::new("python3")
                .arg("-c")
                .arg(PARSER)
                .arg(file.path()),
            Duration::from_secs(60),
        )?;
        if !out.status.success() {
            bail!(
                "prometheus_client could not parse the exposition: {}\n--- text ---\n{text}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).context("parser output JSON")?;
        let mut families = Vec::new();
        for f in v.as_array().context("parser output")? {
            let mut samples = Vec::new();
            for s in f["samples"].as_array().context("samples")? {
                let labels = s["labels"]
                    .as_object()
                    .context("labels")?
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                    .collect();
                let value = match &s["value"] {
                    serde_json::Value::Number(n) => n.as_f64().unwrap_or(f64::NAN),
                    serde_json::Value::String(s) => s.parse().unwrap_or(f64::NAN),
                    _ => f64::NAN,
                };
                samples.push(Sample {
                    name: s["name"].as_str().unwrap_or_default().to_owned(),
                    labels,
                    value,
                });
            }
            families.push(Family {
                name: f["name"].as_str().unwrap_or_default().to_owned(),
                kind: f["type"].as_str().unwrap_or_default().to_owned(),
                samples,
            });
        }
        Ok(Self {
            families,
            text: text.to_owned(),
        })
    }

    /// The family named `name` (counters: without `_total`).
    pub fn family(&self, name: &str) -> Option<&Family> {
        self.families.iter().find(|f| f.name == name)
    }

    /// Sum of the samples named `sample` whose labels include all of `labels`.
    pub fn sum(&self, sample: &str, labels: &[(&str, &str)]) -> f64 {
        self.families
            .iter()
            .flat_map(|f| &f.samples)
            .filter(|s| s.name == sample)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
            .sum()
    }

    /// Whether any sample is named `sample`.
    pub fn has_sample(&self, sample: &str) -> bool {
        self.families
            .iter()
            .flat_map(|f| &f.samples)
            .any(|s| s.name == sample)
    }
}

/// GET `http://ADDR/metrics`, checks 200 and the content type, parses.
pub fn scrape(addr: &str) -> Result<Exposition> {
    let resp = http_get(addr, "/metrics", &[])?;
    if resp.status != 200 {
        bail!(
            "GET /metrics: {} {}",
            resp.status,
            String::from_utf8_lossy(&resp.body)
        );
    }
    let ct = resp.header("content-type").unwrap_or_default().to_owned();
    if !ct.starts_with("text/plain") || !ct.contains("version=0.0.4") {
        bail!("GET /metrics: content type {ct:?}, expected text/plain; version=0.0.4");
    }
    let text = String::from_utf8(resp.body).context("metrics are not UTF-8")?;
    Exposition::parse(&text)
}

/// GET `http://ADDR/healthz`.
pub fn healthz(addr: &str) -> Result<HttpResponse> {
    http_get(addr, "/healthz", &[])
}
