//! CEADs provincial inventories: the original workbooks (one sheet per province, 47 sectors ×
//! fuel columns, MtCO2) and the tidy CSV derived from them.

use crate::error::{DataError, Result, Table};
use calamine::{Data, Reader, open_workbook_auto};
use co2cast_model::domain::{CeadsSectorMap, Province, normalise_ceads_fuel, normalise_ceads_sector};
use co2cast_model::inventory::{InventoryItem, InventoryPanel};
use std::path::Path;

/// One cell of a CEADs inventory: a sector's emissions from one fuel column (or `Process`).
#[derive(Debug, Clone, PartialEq)]
pub struct CeadsRecord {
    pub year: i32,
    pub province: Province,
    pub ceads_sector: String,
    /// Normalised fuel column, or `*` when only the sector total is known.
    pub fuel: String,
    pub mtco2: f64,
}

/// Labels of the total row across vintages.
const TOTAL_LABELS: [&str; 3] = ["Total Consumption", "TotalEmissions", "Total Emissions"];

fn is_total(label: &str) -> bool {
    TOTAL_LABELS.iter().any(|t| t.eq_ignore_ascii_case(label))
}

fn cell_f64(c: &Data) -> Option<f64> {
    match c {
        Data::Float(f) => Some(*f),
        Data::Int(i) => Some(*i as f64),
        Data::String(s) => crate::error::parse_number(s),
        Data::Empty => Some(0.0),
        _ => None,
    }
}

fn cell_str(c: &Data) -> String {
    match c {
        Data::String(s) => s.clone(),
        Data::Empty => String::new(),
        other => other.to_string(),
    }
}

/// Year from a file name such as `Emission_Inventories_for_30_Provinces_2019.xlsx`.
fn year_from_name(path: &Path) -> Option<i32> {
    let stem = path.file_stem()?.to_string_lossy().to_string();
    let digits: String = stem.chars().rev().take_while(|c| c.is_ascii_digit()).collect::<Vec<_>>().into_iter().rev().collect();
    digits.parse().ok().filter(|y| (1990..2100).contains(y))
}

/// Reads one provincial workbook. Each sheet's sectors must add up to its total row.
pub fn load_workbook(path: &Path) -> Result<Vec<CeadsRecord>> {
    let year = year_from_name(path).ok_or_else(|| DataError::content(path, "file name does not end in a year"))?;
    let mut wb = open_workbook_auto(path).map_err(|e| DataError::Workbook { file: path.to_path_buf(), msg: e.to_string() })?;
    let sheets = wb.sheet_names().to_vec();
    let mut out = Vec::new();
    let mut provinces_seen = 0;
    for sheet in sheets {
        if sheet.eq_ignore_ascii_case("NOTE") {
            continue;
        }
        let sheet_err = |msg: String| DataError::Sheet { file: path.to_path_buf(), sheet: sheet.clone(), msg };
        let name: String = sheet.trim_end_matches(|c: char| c.is_ascii_digit()).to_string();
        let province: Province = name.parse().map_err(|_| sheet_err(format!("`{name}` is not a province")))?;
        let range = wb.worksheet_range(&sheet).map_err(|e| sheet_err(e.to_string()))?;
        let rows: Vec<&[Data]> = range.rows().collect();
        if rows.len() < 4 {
            return Err(sheet_err("fewer than 4 rows".into()));
        }
        let header: Vec<String> = rows[0].iter().map(cell_str).collect();
        let units: Vec<String> = rows[1].iter().map(cell_str).collect();
        let fuels: Vec<(usize, String)> = header
            .iter()
            .enumerate()
            .skip(1)
            .filter(|(_, h)| !h.trim().is_empty())
            .map(|(i, h)| (i, normalise_ceads_fuel(h)))
            .collect();
        let total_col = fuels
            .iter()
            .find(|(_, f)| f == "Scope_1_Total")
            .map(|(i, _)| *i)
            .ok_or_else(|| sheet_err("missing column `Scope_1_Total`".into()))?;
        for (i, f) in &fuels {
            let u = units.get(*i).map(|s| s.trim().to_string()).unwrap_or_default();
            if u.replace(' ', "") != "MtCO2" {
                return Err(DataError::Unit {
                    file: path.to_path_buf(),
                    field: format!("{sheet}/{f}"),
                    found: u,
                    expected: "Mt CO2".into(),
                });
            }
        }
        let mut total_row = None;
        let mut sector_sum = 0.0;
        for (r, row) in rows.iter().enumerate().skip(2) {
            let label = normalise_ceads_sector(&row.first().map(cell_str).unwrap_or_default());
            if label.is_empty() {
                continue;
            }
            let value = |i: usize| -> Result<f64> {
                row.get(i)
                    .map(cell_f64)
                    .unwrap_or(Some(0.0))
                    .ok_or_else(|| sheet_err(format!("row {} (`{label}`), column {i}: not a number", r + 1)))
            };
            if is_total(&label) {
                total_row = Some(value(total_col)?);
                continue;
            }
            let mut fuel_sum = 0.0;
            for (i, fuel) in &fuels {
                if fuel.starts_with("Scope_2") || fuel == "Scope_1_Total" {
                    continue;
                }
                let v = value(*i)?;
                fuel_sum += v;
                if v != 0.0 {
                    out.push(CeadsRecord { year, province, ceads_sector: label.clone(), fuel: fuel.clone(), mtco2: v });
                }
            }
            let stated = value(total_col)?;
            if (fuel_sum - stated).abs() > 1e-3 * stated.abs().max(1.0) {
                return Err(sheet_err(format!(
                    "row `{label}`: fuel columns sum to {fuel_sum:.4} Mt but Scope_1_Total says {stated:.4} Mt"
                )));
            }
            sector_sum += stated;
        }
        let total = total_row.ok_or_else(|| sheet_err(format!("no total row (one of {TOTAL_LABELS:?})")))?;
        if (sector_sum - total).abs() > 2e-3 * total.abs().max(1.0) {
            return Err(sheet_err(format!("sectors sum to {sector_sum:.3} Mt but the total row says {total:.3} Mt")));
        }
        provinces_seen += 1;
    }
    if provinces_seen == 0 {
        return Err(DataError::content(path, "no province sheets"));
    }
    Ok(out)
}

/// Reads every `*_<year>.xlsx` provincial workbook in a directory.
pub fn load_workbooks(dir: &Path, years: Option<std::ops::RangeInclusive<i32>>) -> Result<Vec<CeadsRecord>> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| DataError::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let n = p.file_name().map(|n| n.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
            n.starts_with("emission_inventories_for_30_provinces") && n.ends_with(".xlsx")
        })
        .filter(|p| years.as_ref().is_none_or(|r| year_from_name(p).is_some_and(|y| r.contains(&y))))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(DataError::content(dir, "no `Emission_Inventories_for_30_Provinces_<year>.xlsx` workbooks"));
    }
    let mut out = Vec::new();
    for f in files {
        out.extend(load_workbook(&f)?);
    }
    Ok(out)
}

/// Reads the tidy CSV `year,province,sector,scope1_total_mtco2,process_mtco2`. It has no fuel
/// split, so fuel-specific mapping rows (kerosene → aviation) cannot apply: records carry `*`.
pub fn load_tidy_csv(path: &Path) -> Result<Vec<CeadsRecord>> {
    let t = Table::read(path)?;
    let (cy, cp, cs, cv) = (t.col("year")?, t.col("province")?, t.col("sector")?, t.col("scope1_total_mtco2")?);
    let mut out = Vec::new();
    for i in 0..t.rows.len() {
        let year = t.str(i, cy).parse::<i32>().map_err(|_| DataError::field(&t.file, t.line(i), "year", "not a year"))?;
        let province: Province = t
            .str(i, cp)
            .parse()
            .map_err(|e| DataError::field(&t.file, t.line(i), "province", format!("{e}")))?;
        let sector = normalise_ceads_sector(t.str(i, cs));
        if is_total(&sector) {
            continue;
        }
        let v = t.f64(i, cv)?;
        out.push(CeadsRecord { year, province, ceads_sector: sector, fuel: "*".into(), mtco2: v });
    }
    Ok(out)
}

/// Aggregates records onto co2cast sectors and industry groups with the sector map.
pub fn to_inventory(records: &[CeadsRecord], map: &CeadsSectorMap, source: &str) -> std::result::Result<InventoryPanel, co2cast_model::domain::MappingError> {
    let mut inv = InventoryPanel::new(source);
    for r in records {
        let (sector, group) = map.resolve(&r.ceads_sector, if r.fuel == "*" { "" } else { &r.fuel })?;
        let item = match group {
            Some(g) => InventoryItem::Industry(g),
            None => InventoryItem::Sector(sector),
        };
        inv.add(r.province, item, r.year, r.mtco2);
    }
    Ok(inv)
}
