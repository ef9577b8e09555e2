//! The HTML report of one year's estimates against the yearbook inventory: a self-contained
//! page (charts inline as SVG) plus the table as CSV.

use crate::chart::{ComparisonChart, SeriesChart, comparison_svg, series_svg};
use crate::ReportError;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// One line of the lake's `comparison` table.
#[derive(Debug, Clone)]
pub struct ComparisonRow {
    pub province: String,
    pub sector: String,
    pub estimate_mtco2: f64,
    pub p2_5: f64,
    pub p97_5: f64,
    /// `ceads` (the inventory), `gcp` or `energy_institute`.
    pub reference: String,
    pub reference_mtco2: f64,
    pub reference_scope: String,
    pub scope_difference: String,
    pub relative_difference: f64,
    pub z_score: f64,
    pub inside_band_95: bool,
}

#[derive(Debug, Clone)]
pub struct ReportInput {
    pub year: i32,
    pub rows: Vec<ComparisonRow>,
    /// The national daily series of the year.
    pub national: SeriesChart,
    /// Calibration base year of the estimates, and when they were computed.
    pub base_year: i32,
    pub computed_at: String,
    /// Per signal, the latest month (`YYYY-MM`) of its data up to the year's end.
    pub data_as_of: Vec<(String, String)>,
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Share inside the band, as "k of n (p %)".
fn coverage(rows: &[&ComparisonRow]) -> String {
    let k = rows.iter().filter(|r| r.inside_band_95).count();
    if rows.is_empty() {
        return "none".into();
    }
    format!("{k} of {} ({:.0} %)", rows.len(), 100.0 * k as f64 / rows.len() as f64)
}

fn table(out: &mut String, rows: &[&ComparisonRow]) {
    out.push_str("<table><thead><tr><th>province</th><th>sector</th><th>estimate</th><th>95 % band</th><th>inventory</th><th>difference</th><th>z</th><th>inside</th></tr></thead><tbody>\n");
    for r in rows {
        let _ = writeln!(
            out,
            "<tr class=\"{}\"><td>{}</td><td>{}</td><td>{:.1}</td><td>{:.1} – {:.1}</td><td>{:.1}</td><td>{:+.1} %</td><td>{:+.2}</td><td>{}</td></tr>",
            if r.inside_band_95 { "in" } else { "out" },
            esc(&r.province),
            esc(&r.sector),
            r.estimate_mtco2,
            r.p2_5,
            r.p97_5,
            r.reference_mtco2,
            100.0 * r.relative_difference,
            r.z_score,
            if r.inside_band_95 { "yes" } else { "no" }
        );
    }
    out.push_str("</tbody></table>\n");
}

/// The national total against each reference, with the reference's scope.
fn references_table(out: &mut String, rows: &[&ComparisonRow]) {
    out.push_str("<table><thead><tr><th>reference</th><th>scope</th><th>reference</th><th>estimate</th><th>95 % band</th><th>difference</th><th>inside</th></tr></thead><tbody>\n");
    for r in rows {
        let _ = writeln!(
            out,
            "<tr class=\"{}\"><td>{}</td><td style=\"text-align:left\">{}<br><span class=\"note\">against co2cast: {}</span></td><td>{:.0}</td><td>{:.0}</td><td>{:.0} – {:.0}</td><td>{:+.1} %</td><td>{}</td></tr>",
            if r.inside_band_95 { "in" } else { "out" },
            esc(&r.reference),
            esc(&r.reference_scope),
            esc(&r.scope_difference),
            r.reference_mtco2,
            r.estimate_mtco2,
            r.p2_5,
            r.p97_5,
            100.0 * r.relative_difference,
            if r.inside_band_95 { "yes" } else { "no" }
        );
    }
    out.push_str("</tbody></table>\n");
}

/// Writes `index.html` and `comparison.csv` into `dir` (created if missing); returns the page.
pub fn write_report(input: &ReportInput, dir: &Path) -> Result<PathBuf, ReportError> {
    if input.rows.is_empty() {
        return Err(ReportError::Empty(format!("no comparison rows for {}", input.year)));
    }
    std::fs::create_dir_all(dir).map_err(|e| ReportError::io(dir, e))?;
    let national = input.rows.iter().find(|r| r.province == "CN" && r.sector == "all" && r.reference == "ceads");
    let national_references: Vec<&ComparisonRow> = input.rows.iter().filter(|r| r.province == "CN" && r.sector == "all").collect();
    let mut provinces: Vec<&ComparisonRow> = input.rows.iter().filter(|r| r.province != "CN" && r.sector == "all").collect();
    provinces.sort_by(|a, b| b.reference_mtco2.total_cmp(&a.reference_mtco2));
    let mut sectors: Vec<&ComparisonRow> = input.rows.iter().filter(|r| r.sector != "all").collect();
    sectors.sort_by(|a, b| b.z_score.abs().total_cmp(&a.z_score.abs()));

    let series = series_svg(&input.national)?;
    let chart = ComparisonChart {
        title: format!("{}: provinces, estimate against inventory", input.year),
        lines: provinces.iter().map(|r| (r.province.clone(), r.estimate_mtco2, r.p2_5, r.p97_5, r.reference_mtco2)).collect(),
    };
    let compare = if chart.lines.is_empty() { String::new() } else { comparison_svg(&chart)? };

    let mut h = String::new();
    let _ = write!(
        h,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>co2cast {y}: estimates against the inventory and national references</title>\n<style>body{{font-family:sans-serif;max-width:1240px;margin:1em auto;padding:0 1em;color:#222}}table{{border-collapse:collapse;margin:1em 0}}td,th{{padding:2px 8px;border-bottom:1px solid #ddd;text-align:right}}td:nth-child(-n+2),th:nth-child(-n+2){{text-align:left}}tr.out td{{background:#fdecea}}.note{{color:#555;font-size:90%}}</style></head><body>\n<h1>co2cast {y}: daily estimates against the yearbook inventory and national references</h1>\n",
        y = input.year
    );
    if let Some(n) = national {
        let _ = write!(
            h,
            "<p>National total {y}: estimate <b>{:.0} MtCO2</b> (95 % band {:.0} – {:.0}); inventory {:.0} MtCO2; difference {:+.1} %, z = {:+.2}, {} the band.</p>\n",
            n.estimate_mtco2,
            n.p2_5,
            n.p97_5,
            n.reference_mtco2,
            100.0 * n.relative_difference,
            n.z_score,
            if n.inside_band_95 { "inside" } else { "outside" },
            y = input.year
        );
    }
    if national.is_none() {
        let _ = write!(h, "<p>No yearbook inventory for {}: the estimates are forecasts from the base year {} driven by the year's signals, set against national references only.</p>\n", input.year, input.base_year);
    } else {
        let _ = write!(
            h,
            "<p>Inventory values inside the 95 % band: provinces {}; province-sectors {}. A calibrated band contains about 95 % of them.</p>\n",
            coverage(&provinces),
            coverage(&sectors)
        );
    }
    if !national_references.is_empty() {
        h.push_str("<h2>National total against every reference</h2>\n<p class=\"note\">References differ in scope: read each difference with the scope note beside it.</p>\n");
        references_table(&mut h, &national_references);
    }
    if !input.data_as_of.is_empty() {
        let list: Vec<String> = input.data_as_of.iter().map(|(s, m)| format!("{} {}", esc(s), esc(m))).collect();
        let _ = write!(
            h,
            "<p class=\"note\">Data as of (the latest month of each signal up to December {}; months after it are nowcast): {}.</p>\n",
            input.year,
            list.join(", ")
        );
    }
    let _ = write!(h, "<h2>National daily series</h2>\n<figure>{series}</figure>\n");
    if !compare.is_empty() {
        let _ = write!(h, "<h2>Provinces</h2>\n<figure>{compare}</figure>\n");
        table(&mut h, &provinces);
    }
    if !sectors.is_empty() {
        h.push_str("<h2>Province-sectors, largest |z| first</h2>\n");
        table(&mut h, &sectors);
    }
    let _ = write!(
        h,
        "<p class=\"note\">MtCO2 per year. Estimates calibrated on inventory years up to {}; vintage computed at {}. z is the difference over the standard deviation implied by the 95 % band. The table is also in comparison.csv.</p>\n</body></html>\n",
        input.base_year,
        esc(&input.computed_at)
    );
    let page = dir.join("index.html");
    std::fs::write(&page, h).map_err(|e| ReportError::io(&page, e))?;

    let quote = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    let mut csv = String::from("province,sector,reference,estimate_mtco2,p2_5,p97_5,reference_mtco2,difference_mtco2,relative_difference,z_score,inside_band_95,base_year,reference_scope,scope_difference\n");
    for r in &input.rows {
        let _ = writeln!(
            csv,
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
            r.province,
            r.sector,
            r.reference,
            r.estimate_mtco2,
            r.p2_5,
            r.p97_5,
            r.reference_mtco2,
            r.estimate_mtco2 - r.reference_mtco2,
            r.relative_difference,
            r.z_score,
            r.inside_band_95,
            input.base_year,
            quote(&r.reference_scope),
            quote(&r.scope_difference)
        );
    }
    let path = dir.join("comparison.csv");
    std::fs::write(&path, csv).map_err(|e| ReportError::io(&path, e))?;
    Ok(page)
}
