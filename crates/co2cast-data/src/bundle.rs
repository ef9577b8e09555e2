//! The compact extract shipped in `data/` (and embedded in the binary), and the builder that
//! derives it from the raw public sources in `../shared/data`.

use crate::ceads;
use crate::error::{DataError, Result, Table};
use crate::proxies::{self, ProxyMonth};
use co2cast_model::domain::{CeadsSectorMap, IndustryGroup, Province, Sector};
use co2cast_model::inventory::{InventoryItem, InventoryPanel};
use co2cast_model::proxy::{ProxyPanel, Scope, Signal};
use co2cast_model::series::{MonthlyProvenance, YearMonth};
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

pub const INVENTORY_FILE: &str = "inventory/ceads_items.csv";
pub const PROXIES_FILE: &str = "proxies/monthly.csv";
pub const REFERENCES_FILE: &str = "references/national_annual.csv";
pub const GRID_REFERENCES_FILE: &str = "references/grid_intensity.csv";
/// The last year of proxy data the extract keeps: every month the raw sources hold (most
/// provincial series run to December 2024; data/PROVENANCE.md lists each series' last month).
pub const LAST_PROXY_YEAR: i32 = 2024;

const EMBEDDED_INVENTORY: &[u8] = include_bytes!("../../../data/inventory/ceads_items.csv");
const EMBEDDED_PROXIES: &[u8] = include_bytes!("../../../data/proxies/monthly.csv");
const EMBEDDED_REFERENCES: &[u8] = include_bytes!("../../../data/references/national_annual.csv");
const EMBEDDED_GRID_REFERENCES: &[u8] = include_bytes!("../../../data/references/grid_intensity.csv");

/// Inventory, proxies and national references ready for the model.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub inventory: InventoryPanel,
    pub proxies: ProxyPanel,
    /// National annual totals of other inventories (GCP, Energy Institute); empty when the
    /// data directory has none.
    pub references: Vec<co2cast_model::references::NationalReference>,
    /// Published carbon intensities of electricity (MEE provincial factors, national
    /// references); empty when the data directory has none.
    pub grid_references: Vec<co2cast_model::references::GridReference>,
    pub origin: String,
}

/// `source,year,scope,gco2_per_kwh` rows (scope: a province's ISO code, or `CN`).
pub fn grid_references_from_bytes(file: &Path, bytes: &[u8]) -> Result<Vec<co2cast_model::references::GridReference>> {
    let t = Table::from_bytes(file, bytes)?;
    let (cs, cy, cc, cv) = (t.col("source")?, t.col("year")?, t.col("scope")?, t.col("gco2_per_kwh")?);
    let mut seen = BTreeSet::new();
    (0..t.rows.len())
        .map(|i| {
            let source = t.str(i, cs);
            let year: i32 = t.str(i, cy).parse().map_err(|_| DataError::field(file, t.line(i), "year", "not a year"))?;
            if !(1990..=2100).contains(&year) {
                return Err(DataError::field(file, t.line(i), "year", "outside 1990-2100"));
            }
            let province = match t.str(i, cc) {
                "CN" => None,
                code => Some(Province::from_iso(code).ok_or_else(|| DataError::field(file, t.line(i), "scope", format!("unknown scope `{code}`")))?),
            };
            // MEE's factors are provincial; the others national.
            match (source, province) {
                ("mee_provincial", Some(_)) | ("carbon_monitor_ei" | "ember", None) => {}
                ("mee_provincial" | "carbon_monitor_ei" | "ember", _) => {
                    return Err(DataError::field(file, t.line(i), "scope", format!("`{}` does not fit source `{source}`", t.str(i, cc))));
                }
                _ => return Err(DataError::field(file, t.line(i), "source", format!("unknown source `{source}` (mee_provincial, carbon_monitor_ei, ember)"))),
            }
            if !seen.insert((source.to_string(), year, province)) {
                return Err(DataError::field(file, t.line(i), "scope", format!("a second {source} value for {} in {year}", t.str(i, cc))));
            }
            let v = t.f64(i, cv)?;
            if !(v > 0.0 && v < 2000.0) {
                return Err(DataError::field(file, t.line(i), "gco2_per_kwh", "outside (0, 2000)"));
            }
            Ok(co2cast_model::references::GridReference { source: source.to_string(), year, province, gco2_per_kwh: v })
        })
        .collect()
}

/// Writes the grid intensity references of the extract.
pub fn write_grid_references(out: &Path, refs: &[co2cast_model::references::GridReference]) -> Result<()> {
    let mut s = String::from("source,year,scope,gco2_per_kwh\n");
    for r in refs {
        let _ = writeln!(s, "{},{},{},{}", r.source, r.year, r.province.map_or("CN", |p| p.iso_code()), round_sig(r.gco2_per_kwh));
    }
    let f = out.join(GRID_REFERENCES_FILE);
    std::fs::create_dir_all(f.parent().expect("has parent")).map_err(|e| DataError::io(&f, e))?;
    std::fs::write(&f, s).map_err(|e| DataError::io(&f, e))
}

/// `source,year,mtco2` rows → one series per source.
pub fn references_from_bytes(file: &Path, bytes: &[u8]) -> Result<Vec<co2cast_model::references::NationalReference>> {
    let t = Table::from_bytes(file, bytes)?;
    let (cs, cy, cv) = (t.col("source")?, t.col("year")?, t.col("mtco2")?);
    let mut by: std::collections::BTreeMap<String, std::collections::BTreeMap<i32, f64>> = Default::default();
    for i in 0..t.rows.len() {
        let y: i32 = t.str(i, cy).parse().map_err(|_| DataError::field(file, t.line(i), "year", "not a year"))?;
        let v = t.f64(i, cv)?;
        if v <= 0.0 {
            return Err(DataError::field(file, t.line(i), "mtco2", "not positive"));
        }
        by.entry(t.str(i, cs).to_string()).or_default().insert(y, v);
    }
    Ok(by.into_iter().map(|(s, v)| proxies::national_reference(&s, v)).collect())
}

pub fn item_name(item: InventoryItem) -> String {
    match item {
        InventoryItem::Sector(s) => s.as_str().to_string(),
        InventoryItem::Industry(g) => format!("industry/{}", g.as_str()),
    }
}

pub fn parse_item(s: &str) -> Option<InventoryItem> {
    match s.strip_prefix("industry/") {
        Some(g) => g.parse::<IndustryGroup>().ok().map(InventoryItem::Industry),
        None => s.parse::<Sector>().ok().map(InventoryItem::Sector),
    }
}


fn provenance_name(p: &MonthlyProvenance) -> String {
    match p {
        MonthlyProvenance::Reported => "reported".into(),
        MonthlyProvenance::DifferencedFromYtd => "ytd_differenced".into(),
        MonthlyProvenance::JanFebSplit { share } => format!("jan_feb_split:{share:.4}"),
        MonthlyProvenance::GapSpread { months } => format!("gap_spread:{months}"),
        MonthlyProvenance::NegativeClampedToZero { raw } => format!("negative_clamped:{raw:.4}"),
    }
}

pub fn inventory_from_bytes(file: &Path, bytes: &[u8]) -> Result<InventoryPanel> {
    let t = Table::from_bytes(file, bytes)?;
    let (cy, cp, ci, cv) = (t.col("year")?, t.col("province")?, t.col("item")?, t.col("mtco2")?);
    let mut inv = InventoryPanel::new("CEADs provincial inventories (derived extract, see data/PROVENANCE.md)");
    for i in 0..t.rows.len() {
        let year: i32 = t.str(i, cy).parse().map_err(|_| DataError::field(file, t.line(i), "year", "not a year"))?;
        let p: Province = t.str(i, cp).parse().map_err(|e| DataError::field(file, t.line(i), "province", format!("{e}")))?;
        let item = parse_item(t.str(i, ci)).ok_or_else(|| DataError::field(file, t.line(i), "item", format!("unknown item `{}`", t.str(i, ci))))?;
        inv.add(p, item, year, t.f64(i, cv)?);
    }
    Ok(inv)
}

pub fn proxies_from_bytes(file: &Path, bytes: &[u8]) -> Result<ProxyPanel> {
    let t = Table::from_bytes(file, bytes)?;
    let (cs, cc, cm, cv, cu) = (t.col("signal")?, t.col("scope")?, t.col("month")?, t.col("value")?, t.col("unit")?);
    let mut px = ProxyPanel::new();
    for i in 0..t.rows.len() {
        let signal: Signal = t.str(i, cs).parse().map_err(|e: String| DataError::field(file, t.line(i), "signal", e))?;
        let unit = t.str(i, cu);
        if unit != signal.unit() {
            return Err(DataError::Unit { file: file.to_path_buf(), field: format!("unit (line {})", t.line(i)), found: unit.into(), expected: signal.unit().into() });
        }
        let scope = t.str(i, cc).parse::<Scope>().ok().ok_or_else(|| DataError::field(file, t.line(i), "scope", format!("unknown scope `{}`", t.str(i, cc))))?;
        let month = YearMonth::parse(t.str(i, cm)).ok_or_else(|| DataError::field(file, t.line(i), "month", "bad month"))?;
        let v = t.f64(i, cv)?;
        if v < 0.0 {
            return Err(DataError::field(file, t.line(i), "value", "negative"));
        }
        px.set_monthly(signal, scope, month, v);
    }
    Ok(px)
}

/// The extract embedded in the binary (identical to `data/` in the repository).
pub fn embedded() -> Result<Dataset> {
    Ok(Dataset {
        inventory: inventory_from_bytes(Path::new(INVENTORY_FILE), EMBEDDED_INVENTORY)?,
        proxies: proxies_from_bytes(Path::new(PROXIES_FILE), EMBEDDED_PROXIES)?,
        references: references_from_bytes(Path::new(REFERENCES_FILE), EMBEDDED_REFERENCES)?,
        grid_references: grid_references_from_bytes(Path::new(GRID_REFERENCES_FILE), EMBEDDED_GRID_REFERENCES)?,
        origin: "bundled extract (embedded)".into(),
    })
}

/// Loads `dir`: either a bundled-format directory or the raw `shared/data` tree.
pub fn load_dir(dir: &Path) -> Result<Dataset> {
    if dir.join(INVENTORY_FILE).exists() {
        let inv_path = dir.join(INVENTORY_FILE);
        let px_path = dir.join(PROXIES_FILE);
        let inv = std::fs::read(&inv_path).map_err(|e| DataError::io(&inv_path, e))?;
        let px = std::fs::read(&px_path).map_err(|e| DataError::io(&px_path, e))?;
        let ref_path = dir.join(REFERENCES_FILE);
        let references = match std::fs::read(&ref_path) {
            Ok(b) => references_from_bytes(&ref_path, &b)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(DataError::io(&ref_path, e)),
        };
        let grid_path = dir.join(GRID_REFERENCES_FILE);
        let grid_references = match std::fs::read(&grid_path) {
            Ok(b) => grid_references_from_bytes(&grid_path, &b)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(DataError::io(&grid_path, e)),
        };
        return Ok(Dataset {
            inventory: inventory_from_bytes(&inv_path, &inv)?,
            proxies: proxies_from_bytes(&px_path, &px)?,
            references,
            grid_references,
            origin: format!("bundled-format directory {}", dir.display()),
        });
    }
    if dir.join("ceads/raw_xlsx").is_dir() {
        let raw = RawSources::at(dir);
        let (inv, months) = raw.load(2005..=2019)?;
        let mut px = ProxyPanel::new();
        for m in &months {
            px.set_monthly(m.signal, m.scope, m.month, m.value);
        }
        return Ok(Dataset {
            inventory: inv,
            proxies: px,
            references: raw.references()?,
            grid_references: raw.grid_references()?,
            origin: format!("raw sources in {}", dir.display()),
        });
    }
    Err(DataError::content(dir, format!("neither a bundled extract (no {INVENTORY_FILE}) nor a raw data tree (no ceads/raw_xlsx)")))
}

/// Paths of the raw public sources inside `shared/data`.
pub struct RawSources {
    pub root: PathBuf,
}

impl RawSources {
    pub fn at(root: &Path) -> RawSources {
        RawSources { root: root.to_path_buf() }
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// Grid intensity references (MEE provincial factors, national power CO2 intensity).
    pub fn grid_references(&self) -> Result<Vec<co2cast_model::references::GridReference>> {
        proxies::load_grid_references(&self.p("misc/mee_provincial_grid_emission_factors_2021_2022.csv"), &self.p("misc/china_national_power_co2_intensity_reference.csv"))
    }

    /// The national references (GCP, Energy Institute).
    pub fn references(&self) -> Result<Vec<co2cast_model::references::NationalReference>> {
        proxies::load_national_references(&self.p("gcp/gcb2022_china_fossil_co2_territorial_consumption.csv"), &self.p("gcp/energy_institute_statreview2023_china_rows.csv"))
    }

    /// Inventory (from the CEADs workbooks, fuel-aware mapping) and monthly proxies.
    pub fn load(&self, years: std::ops::RangeInclusive<i32>) -> Result<(InventoryPanel, Vec<ProxyMonth>)> {
        let records = ceads::load_workbooks(&self.p("ceads/raw_xlsx"), Some(years.clone()))?;
        let inv = ceads::to_inventory(&records, &CeadsSectorMap::bundled(), "CEADs provincial inventories (xlsx)")
            .map_err(|e| DataError::content(&self.p("ceads/raw_xlsx"), e.to_string()))?;
        let first = *years.start();
        let keep = |m: &ProxyMonth| m.month.year >= first && m.month.year <= LAST_PROXY_YEAR;
        let mut months: Vec<ProxyMonth> = Vec::new();
        months.extend(proxies::load_crea_provincial_generation(&self.p("crea_china_co2/provincial_generation_by_source_monthly_ytd_1997_2024_tidy.csv"))?.into_iter().filter(|m| co2cast_model::grid_intensity::SOURCES.contains(&m.signal)));
        let wind_dir = "crea_china_co2/wind_format_raw/";
        months.extend(proxies::load_wind_provincial_output(&self.p(&format!("{wind_dir}provincial_outputs_and_thermal_capacity.csv")), "Cement", Signal::Cement)?);
        months.extend(proxies::load_wind_provincial_output(&self.p(&format!("{wind_dir}iron_and_steel_output_by_province.csv")), "Pig Iron", Signal::PigIron)?);
        months.extend(proxies::load_wind_provincial_output(&self.p(&format!("{wind_dir}iron_and_steel_output_by_province.csv")), "Crude Steel", Signal::CrudeSteel)?);
        months.extend(proxies::load_wind_provincial_output(&self.p(&format!("{wind_dir}provincial_outputs_and_thermal_capacity.csv")), "Ten Kinds of Non-ferrous Metals", Signal::NonferrousMetals)?);
        months.extend(proxies::load_wind_provincial_output(&self.p(&format!("{wind_dir}provincial_outputs_and_thermal_capacity.csv")), "Chemical Fibers", Signal::ChemicalFiber)?);
        let from_wind: BTreeSet<Signal> = months.iter().map(|m| m.signal).collect();
        months.extend(
            proxies::load_nbs_long(&self.p("nbs_proxies/nbs_provincial_monthly_industrial_output_2015_2021_long.csv"))?
                .into_iter()
                .filter(|m| !from_wind.contains(&m.signal)),
        );
        months.extend(proxies::load_wind_transport(&self.p("crea_china_co2/transport_volumes_monthly.csv"))?);
        months.extend(proxies::load_wind_fuel_output(&self.p(&format!("{wind_dir}monthly_industry_stats.csv")))?);
        months.extend(proxies::load_wind_electricity_consumption(&self.p(&format!("{wind_dir}Electricity_Consumption_by_province_2023.csv")))?);
        months.extend(crate::activity::load_caac_throughput(&self.p("misc/caac_passenger_throughput_by_region.csv"), &self.p("misc/caac_airport_regions.csv"))?);
        months.extend(proxies::load_annual_register(&self.p("misc/vehicle_stock_by_province.csv"), Signal::VehicleStock, 1.0e4, "NBS civil vehicle stock by province (万辆) via CM_China_Database")?);
        months.extend(proxies::load_annual_register(&self.p("misc/heating_area_by_province.csv"), Signal::HeatingArea, 1.0e8, "NBS district-heating area by province (1e8 m²) via CM_China_Database")?);
        months.retain(keep);
        months.sort_by(|a, b| (a.signal, a.scope, a.month).cmp(&(b.signal, b.scope, b.month)));
        Ok((inv, months))
    }
}

/// Seven significant digits: more than any source publishes.
fn round_sig(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let digits = 7 - (v.abs().log10().floor() as i32 + 1);
    format!("{:.*}", digits.max(0) as usize, v)
}

/// Writes the national references of the extract (`source,year,mtco2`, from 1990).
pub fn write_references(out: &Path, refs: &[co2cast_model::references::NationalReference]) -> Result<()> {
    let mut s = String::from("source,year,mtco2\n");
    for r in refs {
        for (y, v) in r.values.range(1990..) {
            let _ = writeln!(s, "{},{y},{}", r.source, round_sig(*v));
        }
    }
    let f = out.join(REFERENCES_FILE);
    std::fs::create_dir_all(f.parent().expect("has parent")).map_err(|e| DataError::io(&f, e))?;
    std::fs::write(&f, s).map_err(|e| DataError::io(&f, e))
}

/// Writes the bundled extract to `out` (inventory and monthly proxies as CSV).
pub fn write_extract(out: &Path, inv: &InventoryPanel, months: &[ProxyMonth]) -> Result<()> {
    let mut s = String::from("year,province,item,mtco2\n");
    // The industry sector total is derived from its groups on load; do not write it twice.
    for (p, item, year, v) in inv.iter().filter(|x| x.1 != InventoryItem::Sector(Sector::Industry)) {
        let _ = writeln!(s, "{year},{},{},{v:.6}", p.name_en(), item_name(item));
    }
    let f = out.join(INVENTORY_FILE);
    std::fs::create_dir_all(f.parent().expect("has parent")).map_err(|e| DataError::io(&f, e))?;
    std::fs::write(&f, s).map_err(|e| DataError::io(&f, e))?;
    let mut s = String::from("signal,scope,month,value,unit,provenance\n");
    for m in months {
        let _ = writeln!(
            s,
            "{},{},{},{},{},{}",
            m.signal,
            m.scope,
            m.month,
            round_sig(m.value),
            m.signal.unit(),
            provenance_name(&m.provenance),
        );
    }
    let f = out.join(PROXIES_FILE);
    std::fs::create_dir_all(f.parent().expect("has parent")).map_err(|e| DataError::io(&f, e))?;
    std::fs::write(&f, s).map_err(|e| DataError::io(&f, e))?;
    Ok(())
}
