//! Progress on a terminal, as `pull` and `convert` show it: one bar counting
//! layers and a message for the step under way. indicatif draws nothing when
//! standard error is not a terminal; lines printed with [`Progress::line`]
//! appear either way.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar over `layers` layers.
#[derive(Debug, Clone)]
pub struct Progress {
    bar: ProgressBar,
}

impl Progress {
    pub fn layers(layers: usize) -> Self {
        let bar = ProgressBar::with_draw_target(Some(layers as u64), ProgressDrawTarget::stderr());
        if let Ok(style) =
            ProgressStyle::with_template("{spinner} [{bar:24}] {pos}/{len} layers  {msg}")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.enable_steady_tick(Duration::from_millis(120));
        Progress { bar }
    }

    /// What is happening now (replaces the previous message).
    pub fn step(&self, msg: impl Into<String>) {
        self.bar.set_message(msg.into());
    }

    /// `what` of layer `digest`: `done` of `total` bytes.
    pub fn bytes(&self, what: &str, digest: &str, done: u64, total: u64) {
        let short: String = digest.chars().take(19).collect();
        self.step(format!("{what} {short} {}%", done * 100 / total.max(1)));
    }

    /// A line above the bar (printed plainly when there is no terminal).
    pub fn line(&self, msg: impl AsRef<str>) {
        if self.bar.is_hidden() {
            eprintln!("{}", msg.as_ref());
        } else {
            self.bar.println(msg.as_ref());
        }
    }

    /// One layer finished, with its line.
    pub fn layer_done(&self, msg: impl AsRef<str>) {
        self.line(msg);
        self.bar.inc(1);
        self.step("");
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
