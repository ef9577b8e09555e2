//! Charts, drawn with plotters into SVG text or a PNG file.

use crate::{ReportError, font};
use chrono::{Datelike, Duration, NaiveDate};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;

/// Daily values of one province and sector, MtCO2 per day, with the 95 % band.
#[derive(Debug, Clone)]
pub struct SeriesChart {
    pub title: String,
    /// (day, central, 2.5th percentile, 97.5th percentile, is a nowcast), in date order.
    pub days: Vec<(NaiveDate, f64, f64, f64, bool)>,
    /// Inventory (yearbook) totals, MtCO2 per year.
    pub inventory: Vec<(i32, f64)>,
}

/// Annual estimates with their bands against the inventory, one line per label.
#[derive(Debug, Clone)]
pub struct ComparisonChart {
    pub title: String,
    /// (label, estimate, 2.5th, 97.5th, inventory), MtCO2 per year.
    pub lines: Vec<(String, f64, f64, f64, f64)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    Png,
    Svg,
}

impl ImageFormat {
    /// From the output file's extension.
    pub fn from_path(p: &Path) -> Option<ImageFormat> {
        match p.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "png" => Some(ImageFormat::Png),
            "svg" => Some(ImageFormat::Svg),
            _ => None,
        }
    }
}

const SIZE: (u32, u32) = (1200, 560);
const ESTIMATE: RGBColor = RGBColor(31, 119, 180);
const NOWCAST: RGBColor = RGBColor(255, 127, 14);
const INVENTORY: RGBColor = RGBColor(200, 30, 40);

fn draw_err<E: std::fmt::Debug>(e: E) -> ReportError {
    ReportError::Draw(format!("{e:?}"))
}

/// Writes the series chart to `out` (PNG or SVG by `format`).
pub fn render_series(chart: &SeriesChart, format: ImageFormat, out: &Path) -> Result<(), ReportError> {
    match format {
        ImageFormat::Svg => std::fs::write(out, series_svg(chart)?).map_err(|e| ReportError::io(out, e)),
        ImageFormat::Png => {
            font::ensure()?;
            check_series(chart)?;
            let (w, h) = SIZE;
            let mut rgb = vec![0u8; (w * h * 3) as usize];
            {
                let root = BitMapBackend::with_buffer(&mut rgb, SIZE).into_drawing_area();
                draw_series(&root, chart)?;
                root.present().map_err(draw_err)?;
            }
            write_png(out, &rgb, SIZE)
        }
    }
}

/// The series chart as SVG text.
pub fn series_svg(chart: &SeriesChart) -> Result<String, ReportError> {
    font::ensure()?;
    check_series(chart)?;
    let mut s = String::new();
    {
        let root = SVGBackend::with_string(&mut s, SIZE).into_drawing_area();
        draw_series(&root, chart)?;
        root.present().map_err(draw_err)?;
    }
    Ok(s)
}

/// The comparison chart as SVG text.
pub fn comparison_svg(chart: &ComparisonChart) -> Result<String, ReportError> {
    font::ensure()?;
    if chart.lines.is_empty() {
        return Err(ReportError::Empty(format!("{}: no lines", chart.title)));
    }
    let mut s = String::new();
    {
        let h = 120 + 22 * chart.lines.len() as u32;
        let root = SVGBackend::with_string(&mut s, (1000, h)).into_drawing_area();
        draw_comparison(&root, chart)?;
        root.present().map_err(draw_err)?;
    }
    Ok(s)
}

fn check_series(chart: &SeriesChart) -> Result<(), ReportError> {
    if chart.days.is_empty() {
        return Err(ReportError::Empty(format!("{}: no days", chart.title)));
    }
    if chart.days.iter().any(|d| !(d.1.is_finite() && d.2.is_finite() && d.3.is_finite())) {
        return Err(ReportError::Draw("a value or band is not finite".into()));
    }
    Ok(())
}

fn write_png(out: &Path, rgb: &[u8], (w, h): (u32, u32)) -> Result<(), ReportError> {
    let file = std::fs::File::create(out).map_err(|e| ReportError::io(out, e))?;
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), w, h);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut writer = enc.write_header().map_err(|e| ReportError::Draw(format!("PNG: {e}")))?;
    writer.write_image_data(rgb).map_err(|e| ReportError::Draw(format!("PNG: {e}")))?;
    writer.finish().map_err(|e| ReportError::Draw(format!("PNG: {e}")))
}

fn days_in_year(y: i32) -> f64 {
    if NaiveDate::from_ymd_opt(y, 2, 29).is_some() { 366.0 } else { 365.0 }
}

fn draw_series<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, c: &SeriesChart) -> Result<(), ReportError> {
    root.fill(&WHITE).map_err(draw_err)?;
    let first = c.days[0].0;
    let last = c.days[c.days.len() - 1].0;
    let x = |d: NaiveDate| (d - first).num_days() as f64;
    let span = x(last).max(1.0);
    // Inventory years as a mean per day, drawn over the days of the year that are shown.
    let inventory: Vec<(f64, f64, f64)> = c
        .inventory
        .iter()
        .filter(|(y, _)| *y >= first.year() && *y <= last.year())
        .map(|&(y, v)| {
            let start = NaiveDate::from_ymd_opt(y, 1, 1).unwrap().max(first);
            let end = NaiveDate::from_ymd_opt(y, 12, 31).unwrap().min(last);
            (x(start), x(end), v / days_in_year(y))
        })
        .collect();
    let top = c.days.iter().map(|d| d.3.max(d.1)).chain(inventory.iter().map(|i| i.2)).fold(0.0, f64::max) * 1.08;
    let top = if top > 0.0 { top } else { 1.0 };
    let mut chart = ChartBuilder::on(root)
        .caption(&c.title, (font::FAMILY, 22))
        .margin(14)
        .x_label_area_size(42)
        .y_label_area_size(80)
        .build_cartesian_2d(0.0..span, 0.0..top)
        .map_err(draw_err)?;
    let date_label = |v: &f64| (first + Duration::days(v.round() as i64)).format("%Y-%m-%d").to_string();
    chart
        .configure_mesh()
        .x_labels(8)
        .y_labels(8)
        .x_label_formatter(&date_label)
        .y_label_formatter(&|v| format!("{v:.3}"))
        .y_desc("MtCO2 per day")
        .light_line_style(WHITE.mix(0.0))
        .label_style((font::FAMILY, 13))
        .draw()
        .map_err(draw_err)?;
    // Year marks.
    for y in first.year() + 1..=last.year() {
        let at = x(NaiveDate::from_ymd_opt(y, 1, 1).unwrap());
        chart.draw_series(LineSeries::new([(at, 0.0), (at, top)], BLACK.mix(0.35))).map_err(draw_err)?;
    }
    let mut band: Vec<(f64, f64)> = c.days.iter().map(|d| (x(d.0), d.3)).collect();
    band.extend(c.days.iter().rev().map(|d| (x(d.0), d.2)));
    chart
        .draw_series(std::iter::once(Polygon::new(band, ESTIMATE.mix(0.22))))
        .map_err(draw_err)?
        .label("95 % band")
        .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 18, y + 5)], ESTIMATE.mix(0.22).filled()));
    chart
        .draw_series(LineSeries::new(c.days.iter().map(|d| (x(d.0), d.1)), ESTIMATE.stroke_width(2)))
        .map_err(draw_err)?
        .label("estimate (central)")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 18, y)], ESTIMATE.stroke_width(2)));
    let nowcasts: Vec<(f64, f64)> = c.days.iter().filter(|d| d.4).map(|d| (x(d.0), d.1)).collect();
    if !nowcasts.is_empty() {
        chart
            .draw_series(nowcasts.iter().map(|&p| Circle::new(p, 2, NOWCAST.filled())))
            .map_err(draw_err)?
            .label("nowcast (monthly data not yet published)")
            .legend(|(x, y)| Circle::new((x + 9, y), 3, NOWCAST.filled()));
    }
    if !inventory.is_empty() {
        for (i, &(a, b, v)) in inventory.iter().enumerate() {
            let s = chart.draw_series(LineSeries::new([(a, v), (b, v)], INVENTORY.stroke_width(3))).map_err(draw_err)?;
            if i == 0 {
                s.label("inventory (CEADs, annual total / days)")
                    .legend(|(x, y)| PathElement::new([(x, y), (x + 18, y)], INVENTORY.stroke_width(3)));
            }
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .label_font((font::FAMILY, 13))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .draw()
        .map_err(draw_err)
}

fn draw_comparison<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, c: &ComparisonChart) -> Result<(), ReportError> {
    root.fill(&WHITE).map_err(draw_err)?;
    let n = c.lines.len();
    let right = c.lines.iter().map(|l| l.3.max(l.4).max(l.1)).fold(0.0, f64::max) * 1.08;
    let right = if right > 0.0 { right } else { 1.0 };
    let mut chart = ChartBuilder::on(root)
        .caption(&c.title, (font::FAMILY, 20))
        .margin(14)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..right, -0.5..n as f64 - 0.5)
        .map_err(draw_err)?;
    let labels: Vec<String> = c.lines.iter().map(|l| l.0.clone()).collect();
    let label = move |v: &f64| {
        let i = v.round();
        if (v - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < labels.len() { labels[i as usize].clone() } else { String::new() }
    };
    chart
        .configure_mesh()
        .y_labels(n)
        .y_label_formatter(&label)
        .x_desc("MtCO2 per year")
        .light_line_style(WHITE.mix(0.0))
        .label_style((font::FAMILY, 12))
        .draw()
        .map_err(draw_err)?;
    let y = |i: usize| i as f64;
    chart
        .draw_series(c.lines.iter().enumerate().map(|(i, l)| ErrorBar::new_horizontal(y(i), l.2, l.1, l.3, ESTIMATE.stroke_width(2), 6)))
        .map_err(draw_err)?
        .label("estimate with 95 % band")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 18, y)], ESTIMATE.stroke_width(2)));
    chart
        .draw_series(c.lines.iter().enumerate().map(|(i, l)| TriangleMarker::new((l.4, y(i)), 6, INVENTORY.filled())))
        .map_err(draw_err)?
        .label("inventory (CEADs)")
        .legend(|(x, y)| TriangleMarker::new((x + 9, y), 5, INVENTORY.filled()));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .label_font((font::FAMILY, 13))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .draw()
        .map_err(draw_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SeriesChart {
        let d0 = NaiveDate::from_ymd_opt(2018, 12, 1).unwrap();
        let days = (0..90)
            .map(|i| {
                let v = 1.0 + 0.1 * ((i as f64) / 7.0).sin();
                (d0 + Duration::days(i), v, v * 0.9, v * 1.1, i > 80)
            })
            .collect();
        SeriesChart { title: "CN-GD power".into(), days, inventory: vec![(2018, 370.0), (2019, 380.0)] }
    }

    #[test]
    fn svg_has_the_series_band_inventory_and_year_labels() {
        let svg = series_svg(&sample()).unwrap();
        assert!(svg.starts_with("<svg"));
        for text in ["CN-GD power", "95 % band", "inventory (CEADs", "nowcast", "MtCO2 per day", "2019-01"] {
            assert!(svg.contains(text), "missing {text}");
        }
        assert!(svg.contains("<polygon"), "the band is a polygon");
    }

    #[test]
    fn png_is_a_png_of_the_chart_size() {
        let out = std::env::temp_dir().join(format!("co2cast-chart-{}.png", std::process::id()));
        render_series(&sample(), ImageFormat::Png, &out).unwrap();
        let bytes = std::fs::read(&out).unwrap();
        let _ = std::fs::remove_file(&out);
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        let dec = png::Decoder::new(std::io::Cursor::new(bytes)).read_info().unwrap();
        assert_eq!((dec.info().width, dec.info().height), SIZE);
    }

    #[test]
    fn empty_and_non_finite_series_are_errors_not_panics() {
        let mut c = sample();
        c.days.clear();
        assert!(matches!(series_svg(&c), Err(ReportError::Empty(_))));
        let mut c = sample();
        c.days[3].2 = f64::NAN;
        assert!(series_svg(&c).is_err());
    }
}
