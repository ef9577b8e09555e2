//! Proxy loaders for the real sources, each producing monthly values in canonical units
//! (GWh, t, index) with their provenance.

use crate::error::{DataError, Result, Table};
use crate::wind;
use co2cast_model::calendar::{DayFactorTable, HolidayCalendar};
use co2cast_model::domain::{Province, Sector};
use co2cast_model::proxy::{Scope, Signal};
use co2cast_model::series::{MonthlyProvenance, YearMonth, months_from_ytd};
use std::collections::BTreeMap;
use std::path::Path;

/// A monthly proxy value with where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct ProxyMonth {
    pub signal: Signal,
    pub scope: Scope,
    pub month: YearMonth,
    /// In `signal.unit()`.
    pub value: f64,
    pub provenance: MonthlyProvenance,
    pub source: String,
}

/// Differencing of YTD series per (signal, scope), splitting combined Jan–Feb releases by the
/// sector's activity-day weights.
pub fn difference_ytd(
    series: BTreeMap<(Signal, Scope), Vec<(YearMonth, f64)>>,
    sector: Sector,
    source: &str,
    file: &Path,
) -> Result<Vec<ProxyMonth>> {
    let cal = HolidayCalendar::official();
    let f = DayFactorTable::bundled();
    let mut out = Vec::new();
    for ((signal, scope), pts) in series {
        // The province's calendar: holidays, make-up days and suspensions of work (2020).
        let weight = |d| match scope {
            Scope::Province(p) => f.factor_in(sector, &cal, p, d),
            Scope::National => f.factor(sector, &cal, d),
        };
        let months = months_from_ytd(&pts, &weight).map_err(|e| DataError::content(file, format!("{signal}: {e}")))?;
        out.extend(months.into_iter().map(|m| ProxyMonth {
            signal,
            scope,
            month: m.month,
            value: m.value,
            provenance: m.provenance,
            source: source.to_string(),
        }));
    }
    Ok(out)
}

/// CREA's tidy provincial generation by source (`province,variable,year_month,
/// ytd_value_1e4kwh_inferred,…`): YTD in 1e4 kWh → monthly GWh.
pub fn load_crea_provincial_generation(path: &Path) -> Result<Vec<ProxyMonth>> {
    let t = Table::read(path)?;
    let (cp, cv, cm, cx) =
        (t.col("province")?, t.col("variable")?, t.col("year_month")?, t.col("ytd_value_1e4kwh_inferred")?);
    let mut series: BTreeMap<(Signal, Scope), Vec<(YearMonth, f64)>> = BTreeMap::new();
    for i in 0..t.rows.len() {
        let signal = match t.str(i, cv) {
            "thermal" => Signal::ThermalGeneration,
            "hydro" => Signal::HydroGeneration,
            "wind" => Signal::WindGeneration,
            "solar" => Signal::SolarGeneration,
            "nuclear" => Signal::NuclearGeneration,
            // Provincial consumption is a demand series, not a source of emissions.
            _ => continue,
        };
        let p: Province =
            t.str(i, cp).parse().map_err(|e| DataError::field(&t.file, t.line(i), "province", format!("{e}")))?;
        let ym = YearMonth::parse(t.str(i, cm))
            .ok_or_else(|| DataError::field(&t.file, t.line(i), "year_month", format!("bad month `{}`", t.str(i, cm))))?;
        if t.str(i, cx).is_empty() {
            continue;
        }
        let v = t.f64(i, cx)?;
        // An unpublished January (combined Jan–Feb release) is written as 0. A zero
        // non-thermal series is either no plant of that kind or a gap in the export (Guangdong's
        // wind reads 0 through 2024): both are "no value", which counts as no generation.
        if (ym.month == 1 || signal != Signal::ThermalGeneration) && v == 0.0 {
            continue;
        }
        // 1e4 kWh = 0.01 GWh.
        series.entry((signal, Scope::Province(p))).or_default().push((ym, v * 0.01));
    }
    difference_ytd(series, Sector::Power, "NBS via CREA chinatracker (YTD differenced)", path)
}

/// NBS long-format exports (`indicator,…,value_type,unit,…,province,yyyymm,value`): monthly
/// values are used where published; YTD fills the rest (differenced).
pub fn load_nbs_long(path: &Path) -> Result<Vec<ProxyMonth>> {
    let t = Table::read(path)?;
    let (ci, ct, cu, cp, cm, cx) =
        (t.col("indicator")?, t.col("value_type")?, t.col("unit")?, t.col("province")?, t.col("yyyymm")?, t.col("value")?);
    let mut monthly: BTreeMap<(Signal, Scope, YearMonth), f64> = BTreeMap::new();
    let mut ytd: BTreeMap<(Signal, Scope), Vec<(YearMonth, f64)>> = BTreeMap::new();
    for i in 0..t.rows.len() {
        let ind = t.str(i, ci);
        let signal = match ind {
            "thermal_power_generation" => Signal::ThermalGeneration,
            "hydro_power_generation" => Signal::HydroGeneration,
            other => match other.parse::<Signal>() {
                Ok(s) => s,
                Err(_) => continue,
            },
        };
        let unit = t.str(i, cu);
        let mult = if unit.starts_with("10^8 kWh") {
            100.0
        } else if unit == "10^4 t" {
            1.0e4
        } else if unit == "10^4 weight cases" {
            // Flat glass: 1 weight case = 50 kg of 2 mm glass.
            500.0
        } else {
            return Err(DataError::Unit { file: t.file.clone(), field: format!("unit ({ind})"), found: unit.into(), expected: "10^8 kWh, 10^4 t or 10^4 weight cases".into() });
        };
        let p: Province =
            t.str(i, cp).parse().map_err(|e| DataError::field(&t.file, t.line(i), "province", format!("{e}")))?;
        let ym = YearMonth::parse(t.str(i, cm))
            .ok_or_else(|| DataError::field(&t.file, t.line(i), "yyyymm", format!("bad month `{}`", t.str(i, cm))))?;
        let v = t.f64(i, cx)? * mult;
        match t.str(i, ct) {
            "monthly" => {
                // January and February monthly values are not published (reported as 0).
                if !(ym.month <= 2 && v == 0.0) {
                    monthly.insert((signal, Scope::Province(p), ym), v);
                }
            }
            "cumulative_ytd" => {
                if !(ym.month == 1 && v == 0.0) {
                    ytd.entry((signal, Scope::Province(p))).or_default().push((ym, v));
                }
            }
            other => return Err(DataError::field(&t.file, t.line(i), "value_type", format!("unknown `{other}`"))),
        }
    }
    let sector_of = |s: Signal| if matches!(s, Signal::ThermalGeneration | Signal::HydroGeneration) { Sector::Power } else { Sector::Industry };
    let mut out = Vec::new();
    let mut by_sector: BTreeMap<Sector, BTreeMap<(Signal, Scope), Vec<(YearMonth, f64)>>> = BTreeMap::new();
    for (k, v) in ytd {
        by_sector.entry(sector_of(k.0)).or_default().insert(k, v);
    }
    for (sector, series) in by_sector {
        for m in difference_ytd(series, sector, "NBS provincial monthly (YTD differenced)", path)? {
            if !monthly.contains_key(&(m.signal, m.scope, m.month)) {
                out.push(m);
            }
        }
    }
    out.extend(monthly.into_iter().map(|((signal, scope, month), value)| ProxyMonth {
        signal,
        scope,
        month,
        value,
        provenance: MonthlyProvenance::Reported,
        source: "NBS provincial monthly (reported)".into(),
    }));
    Ok(out)
}

/// Which province a Wind series name refers to, e.g. `China: Hebei: Output: Cement: YTD`.
fn province_in_name(name: &str) -> Option<Province> {
    name.split(':').map(str::trim).find_map(|part| Province::parse_lenient(part))
}

/// Provincial YTD output series from Wind exports, for the named product.
pub fn load_wind_provincial_output(path: &Path, product: &str, signal: Signal) -> Result<Vec<ProxyMonth>> {
    let series = wind::load(path)?;
    let mut ytd: BTreeMap<(Signal, Scope), Vec<(YearMonth, f64)>> = BTreeMap::new();
    let needle = format!("Output: {product}: YTD");
    for s in series.iter().filter(|s| s.name.contains(&needle) && !s.name.starts_with('(')) {
        let Some(p) = province_in_name(&s.name) else { continue };
        let mult = match s.unit.as_str() {
            "ton" => 1.0,
            "10000 tons" => 1.0e4,
            other => {
                return Err(DataError::Unit { file: path.to_path_buf(), field: s.name.clone(), found: other.into(), expected: "ton or 10000 tons".into() });
            }
        };
        let entry = ytd.entry((signal, Scope::Province(p))).or_default();
        if !entry.is_empty() {
            continue; // the same series can appear twice in one export
        }
        for (date, v) in &s.points {
            if let Some(ym) = YearMonth::parse(date) {
                // Wind writes 0 for unpublished January YTD values.
                if *v > 0.0 {
                    entry.push((ym, v * mult));
                }
            }
        }
    }
    if ytd.is_empty() {
        return Err(DataError::content(path, format!("no provincial `{needle}` series")));
    }
    difference_ytd(ytd, Sector::Industry, "NBS via Wind (YTD differenced)", path)
}

/// National monthly transport series (Wind export of NBS/MOT/CAAC data).
pub fn load_wind_transport(path: &Path) -> Result<Vec<ProxyMonth>> {
    let series = wind::load(path)?;
    let pick = |name: &str| series.iter().find(|s| s.name == name);
    let mut out = Vec::new();
    let wanted = [
        ("China: Highway Freight Ton-kilometers", Signal::HighwayFreight),
        ("China: Highway Passenger-kilometers", Signal::HighwayPassengers),
        ("China: Civil Aviation Passenger-kilometers: Domestic Routes", Signal::AviationPassengers),
    ];
    for (name, signal) in wanted {
        let s = pick(name).ok_or_else(|| DataError::missing(path, name))?;
        for (date, v) in &s.points {
            if let Some(ym) = YearMonth::parse(date)
                && *v > 0.0
            {
                out.push(ProxyMonth {
                    signal,
                    scope: Scope::National,
                    month: ym,
                    value: *v,
                    provenance: MonthlyProvenance::Reported,
                    source: format!("{} ({})", s.name, s.unit),
                });
            }
        }
    }
    Ok(out)
}

/// Provincial monthly electricity consumption (Wind export of NBS/CEC data, `China:
/// <province>: Power Consumption`, 1e8 kWh, monthly values) → GWh. Zeros are unpublished
/// values (Tibet before 2015), not consumption.
pub fn load_wind_electricity_consumption(path: &Path) -> Result<Vec<ProxyMonth>> {
    let series = wind::load(path)?;
    let mut out = Vec::new();
    for s in series.iter().filter(|s| s.name.ends_with("Power Consumption")) {
        let Some(p) = province_in_name(&s.name) else { continue };
        if s.unit != "100 million kwh" {
            return Err(DataError::Unit { file: path.to_path_buf(), field: s.name.clone(), found: s.unit.clone(), expected: "100 million kwh".into() });
        }
        for (date, v) in &s.points {
            if let Some(ym) = YearMonth::parse(date)
                && *v > 0.0
            {
                out.push(ProxyMonth {
                    signal: Signal::ElectricityConsumption,
                    scope: Scope::Province(p),
                    month: ym,
                    value: co2cast_model::domain::units::GWh::from_1e8_kwh(*v).0,
                    provenance: MonthlyProvenance::Reported,
                    source: "NBS/CEC provincial power consumption via Wind".into(),
                });
            }
        }
    }
    if out.is_empty() {
        return Err(DataError::content(path, "no `China: <province>: Power Consumption` series"));
    }
    Ok(out)
}

/// An annual provincial register (`name,date,data`: Chinese province name, `2019年`, value)
/// as the level of each month of its year, in `multiplier` × the file's unit. A zero is an
/// unpublished value; a province whose register is all zeros has none.
pub fn load_annual_register(path: &Path, signal: Signal, multiplier: f64, source: &str) -> Result<Vec<ProxyMonth>> {
    let t = Table::read(path)?;
    let (cn, cd, cv) = (t.col("name")?, t.col("date")?, t.col("data")?);
    let mut out = Vec::new();
    for i in 0..t.rows.len() {
        let name = t.str(i, cn);
        let p = Province::parse_lenient(name).ok_or_else(|| DataError::field(path, t.line(i), "name", format!("unknown province `{name}`")))?;
        let d = t.str(i, cd);
        let year: i32 = d
            .strip_suffix('年')
            .and_then(|y| y.parse().ok())
            .ok_or_else(|| DataError::field(path, t.line(i), "date", format!("bad year `{d}`")))?;
        let v = t.f64(i, cv)?;
        if v < 0.0 {
            return Err(DataError::field(path, t.line(i), "data", "negative level"));
        }
        if v == 0.0 {
            continue;
        }
        for m in 1..=12 {
            out.push(ProxyMonth {
                signal,
                scope: Scope::Province(p),
                month: YearMonth::new(year, m),
                value: v * multiplier,
                provenance: MonthlyProvenance::Reported,
                source: source.to_string(),
            });
        }
    }
    if out.is_empty() {
        return Err(DataError::content(path, "no values"));
    }
    Ok(out)
}

/// National monthly refinery output of transport fuels (Wind export of NBS data, `Output:
/// Diesel Oil: YTD` etc., 1e4 t, year to date) → monthly tonnes.
pub fn load_wind_fuel_output(path: &Path) -> Result<Vec<ProxyMonth>> {
    let series = wind::load(path)?;
    let mut ytd: BTreeMap<(Signal, Scope), Vec<(YearMonth, f64)>> = BTreeMap::new();
    for (name, signal) in [("Output: Diesel Oil: YTD", Signal::DieselOutput), ("Output: Gasoline: YTD", Signal::GasolineOutput), ("Output: Kerosene: YTD", Signal::KeroseneOutput)] {
        let s = series.iter().find(|s| s.name == name).ok_or_else(|| DataError::missing(path, name))?;
        if s.unit != "10000 tons" {
            return Err(DataError::Unit { file: path.to_path_buf(), field: s.name.clone(), found: s.unit.clone(), expected: "10000 tons".into() });
        }
        let pts = ytd.entry((signal, Scope::National)).or_default();
        for (date, v) in &s.points {
            if let Some(ym) = YearMonth::parse(date)
                && *v > 0.0
            {
                pts.push((ym, v * 1.0e4));
            }
        }
    }
    difference_ytd(ytd, Sector::Industry, "NBS refinery output via Wind (YTD differenced)", path)
}

/// The national references of `gcp/`: the Global Carbon Budget 2022's territorial fossil CO2
/// for China (`year,territorial_mtc,territorial_mtco2,…`), and the Energy Institute's
/// Statistical Review 2023 `CO2 Emissions from Energy` rows (`sheet,unit,year,value`).
pub fn load_national_references(gcp_csv: &Path, ei_csv: &Path) -> Result<Vec<co2cast_model::references::NationalReference>> {
    let t = Table::read(gcp_csv)?;
    let (cy, cv) = (t.col("year")?, t.col("territorial_mtco2")?);
    let mut gcp = std::collections::BTreeMap::new();
    for i in 0..t.rows.len() {
        let y: i32 = t.str(i, cy).parse().map_err(|_| DataError::field(gcp_csv, t.line(i), "year", "not a year"))?;
        if t.str(i, cv).is_empty() {
            continue;
        }
        let v = t.f64(i, cv)?;
        if v > 0.0 {
            gcp.insert(y, v);
        }
    }
    let t = Table::read(ei_csv)?;
    let (cs, cu, cy, cv) = (t.col("sheet")?, t.col("unit")?, t.col("year")?, t.col("value")?);
    let mut ei = std::collections::BTreeMap::new();
    for i in 0..t.rows.len() {
        if t.str(i, cs) != "CO2 Emissions from Energy" {
            continue;
        }
        if t.str(i, cu) != "Million tonnes of carbon dioxide" {
            return Err(DataError::Unit { file: ei_csv.to_path_buf(), field: "unit".into(), found: t.str(i, cu).into(), expected: "Million tonnes of carbon dioxide".into() });
        }
        let y: i32 = t.str(i, cy).parse().map_err(|_| DataError::field(ei_csv, t.line(i), "year", "not a year"))?;
        ei.insert(y, t.f64(i, cv)?);
    }
    if gcp.is_empty() || ei.is_empty() {
        return Err(DataError::content(gcp_csv, "no national reference values"));
    }
    Ok(vec![national_reference("gcp", gcp), national_reference("energy_institute", ei)])
}

/// A reference series with its scope, as co2cast describes it.
pub fn national_reference(source: &str, values: std::collections::BTreeMap<i32, f64>) -> co2cast_model::references::NationalReference {
    let (scope, difference) = match source {
        "ceads" => (
            "CEADs provincial inventories: territorial CO2 from 17 fossil fuels and cement process, by IPCC sector, summed over 30 provinces (Tibet absent)",
            "none: co2cast is calibrated on this inventory",
        ),
        "gcp" => (
            "Global Carbon Budget 2022: territorial CO2 from fossil fuels and cement, international bunkers excluded",
            "built on national energy statistics (the provincial sum CEADs uses runs higher, the 'gigatonne gap'); cement process CO2 from GCP's own factors",
        ),
        "energy_institute" => (
            "Energy Institute Statistical Review 2023: CO2 from burning oil, gas and coal",
            "energy only: no cement or other process CO2 (CEADs includes cement process, about 0.7-0.8 Gt a year); national energy statistics",
        ),
        _ => ("", ""),
    };
    co2cast_model::references::NationalReference { source: source.into(), scope: scope.into(), scope_difference: difference.into(), values }
}

/// Grid intensity references: MEE's provincial factors (`province_zh,province_en,
/// ef_2021_tco2_per_mwh,ef_2022_tco2_per_mwh`) and the national power CO2 intensity points
/// (`year,metric,value,unit,…`; ranges such as MEE's regional spread are skipped).
pub fn load_grid_references(mee_provincial_csv: &Path, national_csv: &Path) -> Result<Vec<co2cast_model::references::GridReference>> {
    use co2cast_model::references::GridReference;
    let mut out = Vec::new();
    let t = Table::read(mee_provincial_csv)?;
    let cp = t.col("province_en")?;
    for (year, col) in [(2021, "ef_2021_tco2_per_mwh"), (2022, "ef_2022_tco2_per_mwh")] {
        let c = t.col(col)?;
        for i in 0..t.rows.len() {
            let p: Province = t.str(i, cp).parse().map_err(|e| DataError::field(&t.file, t.line(i), "province_en", format!("{e}")))?;
            // tCO2/MWh = kgCO2/kWh: ×1000 for g/kWh.
            out.push(GridReference { source: "mee_provincial".into(), year, province: Some(p), gco2_per_kwh: t.f64(i, c)? * 1000.0 });
        }
    }
    let t = Table::read(national_csv)?;
    let (cy, cm, cv, cu) = (t.col("year")?, t.col("metric")?, t.col("value")?, t.col("unit")?);
    for i in 0..t.rows.len() {
        let source = match t.str(i, cm) {
            "cm_power_co2_over_ei_generation" => "carbon_monitor_ei",
            "ember_emissions_intensity" => "ember",
            _ => continue,
        };
        if t.str(i, cu) != "gCO2/kWh" {
            return Err(DataError::Unit { file: t.file.clone(), field: "unit".into(), found: t.str(i, cu).into(), expected: "gCO2/kWh".into() });
        }
        let year: i32 = t.str(i, cy).parse().map_err(|_| DataError::field(&t.file, t.line(i), "year", "not a year"))?;
        out.push(GridReference { source: source.into(), year, province: None, gco2_per_kwh: t.f64(i, cv)? });
    }
    Ok(out)
}
