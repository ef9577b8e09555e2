//! Wind-terminal CSV exports: metadata rows (`Name`, `Frequency`, `Unit`, `ID`, `Source`, …),
//! then one row per date with one column per series; numbers carry thousands separators.

use crate::error::{DataError, Result, parse_number};
use std::path::Path;

#[derive(Debug, Clone, PartialEq)]
pub struct WindSeries {
    pub name: String,
    pub unit: String,
    pub frequency: String,
    pub id: String,
    pub source: String,
    /// (date label as written, e.g. `2019-12` or `2019-12-31`, value). Empty cells are skipped.
    pub points: Vec<(String, f64)>,
}

fn looks_like_date(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 7 && b[..4].iter().all(u8::is_ascii_digit) && b[4] == b'-' && b[5].is_ascii_digit()
}

pub fn load(path: &Path) -> Result<Vec<WindSeries>> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    parse(path, &bytes)
}

pub fn parse(path: &Path, bytes: &[u8]) -> Result<Vec<WindSeries>> {
    let bytes = bytes.strip_prefix("\u{feff}".as_bytes()).unwrap_or(bytes);
    let mut rdr = csv::ReaderBuilder::new().has_headers(false).flexible(true).from_reader(bytes);
    let mut meta: Vec<(String, Vec<String>)> = Vec::new();
    let mut series: Vec<WindSeries> = Vec::new();
    let mut started = false;
    for (line, rec) in rdr.records().enumerate() {
        let rec = rec.map_err(|e| DataError::content(path, e.to_string()))?;
        let first = rec.get(0).unwrap_or("").trim().to_string();
        if !started && !looks_like_date(&first) {
            meta.push((first, rec.iter().skip(1).map(|s| s.trim().to_string()).collect()));
            continue;
        }
        if !started {
            started = true;
            let get = |k: &str| meta.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
            let names = get("Name").ok_or_else(|| DataError::missing(path, "Name"))?;
            let units = get("Unit").unwrap_or_default();
            let freq = get("Frequency").unwrap_or_default();
            let ids = get("ID").unwrap_or_default();
            let sources = get("Source").unwrap_or_default();
            let at = |v: &Vec<String>, i: usize| v.get(i).cloned().unwrap_or_default();
            series = names
                .iter()
                .enumerate()
                .filter(|(_, n)| !n.is_empty())
                .map(|(i, n)| WindSeries {
                    name: n.clone(),
                    unit: at(&units, i),
                    frequency: at(&freq, i),
                    id: at(&ids, i),
                    source: at(&sources, i),
                    points: Vec::new(),
                })
                .collect();
        }
        if !looks_like_date(&first) {
            continue;
        }
        for (i, s) in series.iter_mut().enumerate() {
            let raw = rec.get(i + 1).unwrap_or("");
            if raw.trim().is_empty() {
                continue;
            }
            let v = parse_number(raw)
                .ok_or_else(|| DataError::field(path, line + 1, &s.name, format!("not a number: `{raw}`")))?;
            s.points.push((first.clone(), v));
        }
    }
    if series.is_empty() {
        return Err(DataError::content(path, "no series found (expected Wind header rows and dated rows)"));
    }
    Ok(series)
}
