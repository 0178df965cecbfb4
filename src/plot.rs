//! Line plots as SVG and PNG (plotters): the sweeps' curves and the LMC lines.

use std::path::{Path, PathBuf};

use plotters::prelude::*;

/// Where a TrueType font is looked for (plotters draws text with it): `SELFSPEC_FONT`, then the
/// usual places of DejaVu Sans and Liberation Sans.
const FONTS: [&str; 5] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/Library/Fonts/Arial Unicode.ttf",
];

/// Registers a font for plotters' text, once; None (with the reason) when none is found.
fn font() -> Result<(), String> {
    static FONT: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    FONT.get_or_init(|| {
        let candidates: Vec<PathBuf> = std::env::var_os("SELFSPEC_FONT")
            .map(PathBuf::from)
            .into_iter()
            .chain(FONTS.iter().map(PathBuf::from))
            .collect();
        for path in &candidates {
            if let Ok(bytes) = std::fs::read(path) {
                // plotters keeps the font for the process's life.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return Ok(());
                }
            }
        }
        Err("no TrueType font found for the plots' text; set SELFSPEC_FONT=FILE.ttf".into())
    })
    .clone()
}

/// Line colours (the Okabe–Ito palette, told apart by colour-blind readers too).
const COLORS: [RGBColor; 7] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(86, 180, 233),
    RGBColor(230, 159, 0),
    RGBColor(0, 0, 0),
];

/// One line of a plot: its label and (x, y) points.
pub type Line = (String, Vec<(f64, f64)>);

/// A line's interval band: (x, low, high) at each of its points; empty for none.
pub type Band = Vec<(f64, f64, f64)>;

/// Writes one plot as `dir/plots/STEM.svg` and `.png`: `lines` against `x`, scored by `y` (a
/// label with "0-100" keeps the axis within 0–100); returns the two files.
pub fn chart(dir: &Path, stem: &str, title: &str, x: &str, y: &str, lines: &[Line]) -> anyhow::Result<Vec<PathBuf>> {
    chart_with_bands(dir, stem, title, x, y, lines, &[])
}

/// [`chart`] with each line's interval drawn as a shaded band in its colour (`bands[i]` for
/// `lines[i]`; a missing or empty one draws none).
pub fn chart_with_bands(
    dir: &Path,
    stem: &str,
    title: &str,
    x: &str,
    y: &str,
    lines: &[Line],
    bands: &[Band],
) -> anyhow::Result<Vec<PathBuf>> {
    font().map_err(anyhow::Error::msg)?;
    let out = dir.join("plots");
    std::fs::create_dir_all(&out)?;
    let svg = out.join(format!("{stem}.svg"));
    draw(SVGBackend::new(&svg, (720, 440)).into_drawing_area(), title, x, y, lines, bands)?;
    let png = out.join(format!("{stem}.png"));
    draw(BitMapBackend::new(&png, (720, 440)).into_drawing_area(), title, x, y, lines, bands)?;
    Ok(vec![svg, png])
}

fn draw<DB: DrawingBackend>(
    area: DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    axis: &str,
    y_desc: &str,
    lines: &[Line],
    bands: &[Band],
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let error = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow::anyhow!("cannot draw {title}: {e:?}");
    area.fill(&WHITE).map_err(error)?;
    let xs = lines.iter().flat_map(|(_, p)| p.iter().map(|p| p.0));
    let (x0, x1) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| (a.min(x), b.max(x)));
    let band_ys = bands.iter().flat_map(|b| b.iter().flat_map(|&(_, lo, hi)| [lo, hi]));
    let ys = lines.iter().flat_map(|(_, p)| p.iter().map(|p| p.1)).chain(band_ys.filter(|y| y.is_finite()));
    let (y0, y1) = ys.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), y| (a.min(y), b.max(y)));
    let percent = y_desc.contains("0-100");
    let (y0, y1) = if percent {
        let pad = ((y1 - y0) * 0.1).max(1.0);
        ((y0 - pad).max(0.0), (y1 + pad).min(100.0).max(y0 + pad))
    } else {
        let pad = ((y1 - y0) * 0.1).max(1e-3);
        (y0 - pad, y1 + pad)
    };
    let decimals = if x1 - x0 <= 2.0 { 2 } else { 0 };
    let mut chart = ChartBuilder::on(&area)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(x0..x1.max(x0 + 1e-9), y0..y1)
        .map_err(error)?;
    chart
        .configure_mesh()
        .x_desc(axis)
        .y_desc(y_desc)
        .x_label_formatter(&|x| format!("{x:.decimals$}"))
        .draw()
        .map_err(error)?;
    for (i, band) in bands.iter().enumerate().filter(|(_, b)| b.len() >= 2) {
        let color = COLORS[i % COLORS.len()];
        let mut outline: Vec<(f64, f64)> = band.iter().map(|&(x, lo, _)| (x, lo)).collect();
        outline.extend(band.iter().rev().map(|&(x, _, hi)| (x, hi)));
        chart.draw_series(std::iter::once(Polygon::new(outline, color.mix(0.18).filled()))).map_err(error)?;
    }
    for (i, (label, points)) in lines.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(points.iter().copied(), color.stroke_width(2)))
            .map_err(error)?
            .label(label.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled()))).map_err(error)?;
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw().map_err(error)?;
    area.present().map_err(error)?;
    Ok(())
}
