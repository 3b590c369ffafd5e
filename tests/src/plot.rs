//! A dashboard row as a picture: its panels' series, read back from a test's Prometheus, drawn
//! with plotters as SVG and rendered to PNG by headless Chromium, so a reviewer sees what a
//! Grafana user would (Grafana itself is AGPL and is not built here).

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};
use plotters::prelude::*;

/// One panel: its title, unit and series, each with its legend and (seconds, value) points.
#[derive(Debug, Clone)]
pub struct Panel {
    pub title: String,
    pub unit: String,
    pub series: Vec<(String, Vec<(f64, f64)>)>,
}

/// Draws `panels` two to a line under `title` as `svg`, then renders it to `png`.
pub fn row(title: &str, panels: &[Panel], svg: &Path, png: &Path) -> Result<()> {
    const WIDTH: u32 = 1400;
    const PANEL_HEIGHT: u32 = 380;
    let lines = panels.len().div_ceil(2).max(1);
    let height = 50 + PANEL_HEIGHT * lines as u32;
    {
        let root = SVGBackend::new(svg, (WIDTH, height)).into_drawing_area();
        root.fill(&WHITE)?;
        let (heading, body) = root.split_vertically(50);
        heading.draw_text(title, &("sans-serif", 26).into_font().color(&BLACK), (16, 12))?;
        for (area, panel) in body.split_evenly((lines, 2)).iter().zip(panels) {
            draw_panel(area, panel)?;
        }
        root.present()?;
    }
    screenshot(svg, png, WIDTH, height)
}

fn draw_panel<DB: DrawingBackend>(area: &DrawingArea<DB, plotters::coord::Shift>, panel: &Panel) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let points = panel
        .series
        .iter()
        .flat_map(|(_, p)| p)
        .filter(|(_, v)| v.is_finite());
    let (mut x_max, mut y_min, mut y_max) = (1.0_f64, 0.0_f64, f64::MIN);
    for &(x, y) in points {
        x_max = x_max.max(x);
        y_min = y_min.min(y);
        y_max = y_max.max(y);
    }
    if y_max <= y_min {
        y_max = y_min + 1.0;
    }
    let caption = match unit_name(&panel.unit) {
        "" => panel.title.clone(),
        unit => format!("{} ({unit})", panel.title),
    };
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(32)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..x_max / 60.0, y_min..y_max * 1.08)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc("minutes into the run")
        .y_label_formatter(&|v| match v.abs() {
            a if a >= 100.0 => format!("{v:.0}"),
            a if a >= 1.0 => format!("{v:.1}"),
            _ => format!("{v:.2}"),
        })
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    for (index, (legend, points)) in panel.series.iter().enumerate() {
        let color = Palette99::pick(index).to_rgba();
        let finite: Vec<(f64, f64)> = points
            .iter()
            .filter(|(_, v)| v.is_finite())
            .map(|&(x, y)| (x / 60.0, y))
            .collect();
        chart
            .draw_series(LineSeries::new(finite, color.stroke_width(2)))
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .label(legend.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2)));
    }
    if !panel.series.is_empty() {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .draw()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    Ok(())
}

/// A Grafana unit as a reader says it.
fn unit_name(unit: &str) -> &str {
    match unit {
        "short" => "",
        "percentunit" => "fraction",
        "s" => "seconds",
        "Bps" => "bytes/s",
        "fps" => "frames/s",
        "reqps" => "requests/s",
        "ops" => "per second",
        other => other,
    }
}

/// Renders `svg` with Debian's `chromium-headless-shell` in a network namespace of its own, so it
/// reaches nothing, not even a resolver.
fn screenshot(svg: &Path, png: &Path, width: u32, height: u32) -> Result<()> {
    let _ = std::fs::remove_file(png);
    let output = Command::new("timeout")
        .args(["120", "unshare", "--net", "chromium-headless-shell"])
        .args(["--no-sandbox", "--headless", "--disable-gpu", "--hide-scrollbars"])
        .arg(format!("--window-size={width},{height}"))
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("file://{}", svg.display()))
        .output()
        .context("chromium-headless-shell (scripts/setup --tests installs it)")?;
    if !png.exists() {
        bail!(
            "no screenshot of {}: {}",
            svg.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}
