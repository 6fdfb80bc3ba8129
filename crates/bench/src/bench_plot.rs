//! `bench-plot RESULTS.json OUTDIR`: the charts of `scripts/bench_lazy.py`
//! (PNG, drawn here, no external tool): cold start to first output, bytes
//! received before it, and warm re-runs, per workload and mode (medians,
//! with the min–max range as a whisker).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use plotters::prelude::*;
use serde::Deserialize;

/// Looked up at run time (Debian's fonts-dejavu-core); the charts need a
/// font for their labels.
const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

#[derive(Debug, Deserialize)]
struct Results {
    machine: String,
    link: String,
    date: String,
    samples: Vec<Sample>,
}

#[derive(Debug, Deserialize)]
struct Sample {
    workload: String,
    mode: String,
    cold_s: f64,
    bytes_first: f64,
    warm_s: f64,
}

/// (median, min, max)
type Stats = (f64, f64, f64);

/// The statistics of one (workload, mode) cell, if it has samples.
type Cell<'a> = &'a dyn Fn(&str, &str) -> Option<Stats>;

/// (median, min, max)
fn stats(mut xs: Vec<f64>) -> Option<Stats> {
    if xs.is_empty() {
        return None;
    }
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    let med = if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    };
    Some((med, xs[0], xs[n - 1]))
}

const COLORS: [RGBColor; 6] = [
    RGBColor(120, 120, 120),
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(214, 39, 40),
];

fn chart(
    path: &Path,
    title: &str,
    unit: &str,
    workloads: &[String],
    modes: &[String],
    value: Cell<'_>,
) -> anyhow::Result<()> {
    let root = BitMapBackend::new(path, (1300, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let top = workloads
        .iter()
        .flat_map(|w| modes.iter().filter_map(move |m| value(w, m).map(|v| v.2)))
        .fold(0.0f64, f64::max)
        .max(1e-9)
        * (1.2 + 0.07 * modes.len() as f64);
    let groups = workloads.len();
    let per = modes.len() as f64 + 1.0;
    let mut ch = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..(groups as f64 * per), 0.0..top)?;
    ch.configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc(unit)
        .label_style(("sans-serif", 16))
        .draw()?;
    for (gi, w) in workloads.iter().enumerate() {
        let x0 = gi as f64 * per;
        ch.draw_series(std::iter::once(Text::new(
            w.clone(),
            (x0 + per / 2.0 - 0.5, -top * 0.04),
            ("sans-serif", 18).into_font(),
        )))?;
        for (mi, m) in modes.iter().enumerate() {
            let Some((med, lo, hi)) = value(w, m) else {
                continue;
            };
            let x = x0 + 0.5 + mi as f64;
            let color = COLORS[mi % COLORS.len()];
            ch.draw_series(std::iter::once(Rectangle::new(
                [(x, 0.0), (x + 0.9, med)],
                color.filled(),
            )))?;
            ch.draw_series(std::iter::once(PathElement::new(
                vec![(x + 0.45, lo), (x + 0.45, hi)],
                BLACK.stroke_width(2),
            )))?;
            ch.draw_series(std::iter::once(Text::new(
                format!("{med:.2}"),
                (x, med + top * 0.02),
                ("sans-serif", 14).into_font(),
            )))?;
        }
    }
    // Legend.
    for (mi, m) in modes.iter().enumerate() {
        let color = COLORS[mi % COLORS.len()];
        ch.draw_series(std::iter::once(Rectangle::new(
            [
                (0.2, top * (0.97 - 0.06 * mi as f64)),
                (0.5, top * (0.94 - 0.06 * mi as f64)),
            ],
            color.filled(),
        )))?;
        ch.draw_series(std::iter::once(Text::new(
            m.clone(),
            (0.6, top * (0.975 - 0.06 * mi as f64)),
            ("sans-serif", 15).into_font(),
        )))?;
    }
    root.present()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args_os().skip(1);
    let (Some(input), Some(out)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: bench-plot RESULTS.json OUTDIR");
    };
    let out = PathBuf::from(out);
    let font = FONTS
        .iter()
        .find_map(|p| std::fs::read(p).ok())
        .context("no DejaVuSans.ttf (apt-get install fonts-dejavu-core)")?;
    let font: &'static [u8] = Box::leak(font.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, font)
        .map_err(|_| anyhow::anyhow!("cannot load the font"))?;
    let text = std::fs::read_to_string(&input)
        .with_context(|| format!("reading {}", PathBuf::from(&input).display()))?;
    let r: Results = serde_json::from_str(&text).context("results.json")?;
    let mut workloads: Vec<String> = Vec::new();
    let mut modes: Vec<String> = Vec::new();
    let mut by: BTreeMap<(String, String), Vec<&Sample>> = BTreeMap::new();
    for s in &r.samples {
        if !workloads.contains(&s.workload) {
            workloads.push(s.workload.clone());
        }
        if !modes.contains(&s.mode) {
            modes.push(s.mode.clone());
        }
        by.entry((s.workload.clone(), s.mode.clone()))
            .or_default()
            .push(s);
    }
    let get = |f: fn(&Sample) -> f64| {
        let by = &by;
        move |w: &str, m: &str| {
            stats(
                by.get(&(w.to_owned(), m.to_owned()))?
                    .iter()
                    .map(|s| f(s))
                    .collect(),
            )
        }
    };
    let sub = format!("{} — {} — {}", r.date, r.machine, r.link);
    chart(
        &out.join("cold-start.png"),
        &format!("Cold start to first output (median, min–max) — {sub}"),
        "seconds",
        &workloads,
        &modes,
        &get(|s| s.cold_s),
    )?;
    chart(
        &out.join("bytes-before-output.png"),
        "MB received over the link before the first output",
        "MB",
        &workloads,
        &modes,
        &get(|s| s.bytes_first / 1e6),
    )?;
    chart(
        &out.join("warm-run.png"),
        "Warm re-run to first output",
        "seconds",
        &workloads,
        &modes,
        &get(|s| s.warm_s),
    )?;
    println!(
        "charts: {}",
        ["cold-start.png", "bytes-before-output.png", "warm-run.png"]
            .map(|f| out.join(f).display().to_string())
            .join(", ")
    );
    Ok(())
}
