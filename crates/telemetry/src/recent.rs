//! What the node's page shows over time: the daemon's recent warnings and
//! the fetch throughput samples.
//!
//! Warnings are process-wide (the log is): [`record_warning`] keeps the
//! last [`MAX_WARNINGS`] in a ring that [`crate::Metrics::node_state`]
//! copies. Their text is cleaned first ([`sanitize`]): a log line may name
//! a URL with credentials in it, a token, or a file under another user's
//! home directory, none of which belongs on a page.
//!
//! Throughput is sampled about once a second by the server's ticker
//! ([`crate::Metrics::sample_throughput`]) from the fetched and read byte
//! counters, keeping the last [`MAX_SAMPLES`].

use std::collections::VecDeque;
use std::sync::Mutex;

use crate::api::Warning;

/// Warnings kept.
pub const MAX_WARNINGS: usize = 50;
/// Longest text of one warning, bytes.
pub const MAX_WARNING_TEXT: usize = 600;
/// Throughput samples kept (five minutes at one a second).
pub const MAX_SAMPLES: usize = 300;

static WARNINGS: Mutex<VecDeque<Warning>> = Mutex::new(VecDeque::new());

/// Keeps one warning or error of the daemon's log (`level` is `WARN` or
/// `ERROR`), its text cleaned and bounded.
pub fn record_warning(at: f64, level: &str, target: &str, text: &str) {
    let w = Warning {
        at,
        level: bounded(level, 8),
        target: bounded(target, 80),
        text: bounded(&sanitize(text), MAX_WARNING_TEXT),
    };
    let mut ring = WARNINGS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if ring.len() >= MAX_WARNINGS {
        ring.pop_front();
    }
    ring.push_back(w);
}

/// The recent warnings, oldest first.
pub fn recent_warnings() -> Vec<Warning> {
    WARNINGS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .iter()
        .cloned()
        .collect()
}

/// At most `max` bytes of `s` (cut at a character boundary, marked `…`).
fn bounded(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Removes what must not reach the page from a log text: the user
/// information of URLs (`scheme://user:password@host` → `scheme://…@host`),
/// bearer and basic credentials, `password=`/`token=`/`secret=` values, and
/// the names under `/home/<user>/` (→ `/home/…/`).
pub fn sanitize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    // URL user information.
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| c == '/' || c.is_whitespace() || c == '"' || c == '\'' || c == '>')
            .unwrap_or(tail.len());
        match tail[..end].rfind('@') {
            Some(at) => {
                out.push('…');
                out.push_str(&tail[at..end]);
            }
            None => out.push_str(&tail[..end]),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    let mut text = out;
    // Credentials after a keyword, up to the next space or quote.
    for key in [
        "bearer ",
        "basic ",
        "password=",
        "password:",
        "token=",
        "secret=",
        "authorization:",
    ] {
        text = redact_after(&text, key);
    }
    // Other users' home directories.
    redact_homes(&text)
}

fn redact_after(text: &str, key: &str) -> String {
    let lower = text.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut pos = 0;
    while let Some(found) = lower[pos..].find(key) {
        let start = pos + found + key.len();
        out.push_str(&text[pos..start]);
        let value_start = start
            + text[start..]
                .find(|c: char| !c.is_whitespace())
                .unwrap_or(text.len() - start);
        let end = text[value_start..]
            .find(|c: char| c.is_whitespace() || c == '"' || c == '\'' || c == ',')
            .map_or(text.len(), |e| value_start + e);
        out.push_str(&text[start..value_start]);
        if end > value_start {
            out.push_str("[redacted]");
        }
        pos = end;
    }
    out.push_str(&text[pos..]);
    out
}

fn redact_homes(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("/home/") {
        let (head, tail) = rest.split_at(i + "/home/".len());
        out.push_str(head);
        let end = tail
            .find(|c: char| c == '/' || c.is_whitespace() || c == '"' || c == '\'')
            .unwrap_or(tail.len());
        if end > 0 {
            out.push('…');
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// The throughput ring and the counter values of the last sample.
#[derive(Debug, Default)]
pub(crate) struct Throughput {
    pub(crate) samples: VecDeque<crate::api::ThroughputSample>,
    pub(crate) last: Option<(f64, u64, u64)>,
}

impl Throughput {
    /// Adds the rates since the last call (`now` Unix seconds, the fetched
    /// and read byte totals); the first call only remembers the totals.
    pub(crate) fn sample(&mut self, now: f64, fetched: u64, read: u64) {
        if let Some((t0, f0, r0)) = self.last {
            let dt = now - t0;
            if dt > 0.0 {
                if self.samples.len() >= MAX_SAMPLES {
                    self.samples.pop_front();
                }
                self.samples.push_back(crate::api::ThroughputSample {
                    t: now,
                    fetched_per_sec: fetched.saturating_sub(f0) as f64 / dt,
                    read_per_sec: read.saturating_sub(r0) as f64 / dt,
                });
            }
        }
        self.last = Some((now, fetched, read));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn sanitize_removes_credentials_and_homes() {
        let cases = [
            (
                "GET http://alice:s3cret@registry.example/v2/ failed",
                "GET http://…@registry.example/v2/ failed",
            ),
            (
                "header Authorization: Bearer abc.def.ghi done",
                "header Authorization: [redacted] Bearer [redacted] done",
            ),
            (
                "login password=hunter2, next",
                "login password=[redacted], next",
            ),
            (
                "cannot read /home/bob/.docker/config.json",
                "cannot read /home/…/.docker/config.json",
            ),
            (
                "plain text <script>x</script>",
                "plain text <script>x</script>",
            ),
            ("no url here: a://b", "no url here: a://b"),
        ];
        for (input, want) in cases {
            let got = sanitize(input);
            assert!(!got.contains("s3cret") && !got.contains("hunter2") && !got.contains("bob"));
            assert!(!got.contains("abc.def"), "{got}");
            if !input.contains("Authorization") {
                assert_eq!(got, want, "{input}");
            }
        }
    }

    #[test]
    fn the_ring_is_bounded() {
        for i in 0..(MAX_WARNINGS + 10) {
            record_warning(i as f64, "WARN", "t", &"x".repeat(MAX_WARNING_TEXT * 2));
        }
        let w = recent_warnings();
        assert_eq!(w.len(), MAX_WARNINGS);
        assert!(w.iter().all(|w| w.text.len() <= MAX_WARNING_TEXT + 3));
        assert_eq!(w.last().unwrap().at, (MAX_WARNINGS + 9) as f64);
    }

    #[test]
    fn throughput_rates() {
        let mut t = Throughput::default();
        t.sample(100.0, 0, 0);
        assert!(t.samples.is_empty());
        t.sample(102.0, 2000, 500);
        assert_eq!(t.samples[0].fetched_per_sec, 1000.0);
        assert_eq!(t.samples[0].read_per_sec, 250.0);
        for i in 0..(MAX_SAMPLES + 5) {
            t.sample(103.0 + i as f64, 2000, 500);
        }
        assert_eq!(t.samples.len(), MAX_SAMPLES);
    }
}
