//! Activity series beyond monthly statistics: the hourly provincial load shape, daily
//! national passenger traffic, monthly airport throughput by region, and coal burned for power.

use crate::error::{DataError, Result, Table};
use crate::proxies::{ProxyMonth, difference_ytd};
use crate::wind;
use chrono::{Duration, NaiveDate, NaiveDateTime};
use co2cast_model::domain::{Province, Sector};
use co2cast_model::proxy::{Scope, Signal};
use co2cast_model::series::{MonthlyProvenance, YearMonth};
use std::collections::BTreeMap;
use std::path::Path;

/// Hourly electricity demand per province for one year, MW, Asia/Shanghai hours.
#[derive(Debug, Clone)]
pub struct HourlyLoad {
    pub year: i32,
    /// `mw[province]` has one value per hour of the year, starting 00:00 on 1 January.
    pub mw: BTreeMap<Province, Vec<f64>>,
}

impl HourlyLoad {
    pub fn hour_start(&self, i: usize) -> NaiveDateTime {
        NaiveDate::from_ymd_opt(self.year, 1, 1).expect("valid").and_hms_opt(0, 0, 0).expect("valid")
            + Duration::hours(i as i64)
    }

    /// Daily energy per province, GWh.
    pub fn daily_gwh(&self, p: Province) -> Vec<(NaiveDate, f64)> {
        let mut out: BTreeMap<NaiveDate, f64> = BTreeMap::new();
        if let Some(v) = self.mw.get(&p) {
            for (i, mw) in v.iter().enumerate() {
                *out.entry(self.hour_start(i).date()).or_insert(0.0) += mw / 1000.0;
            }
        }
        out.into_iter().collect()
    }

    /// Share of the day's energy in each hour (24 values summing to 1) for `d`.
    pub fn hourly_shape(&self, p: Province, d: NaiveDate) -> Option<[f64; 24]> {
        let v = self.mw.get(&p)?;
        let start = (d - NaiveDate::from_ymd_opt(self.year, 1, 1)?).num_days();
        if start < 0 || (start as usize + 1) * 24 > v.len() {
            return None;
        }
        let day = &v[start as usize * 24..start as usize * 24 + 24];
        let sum: f64 = day.iter().sum();
        let mut out = [0.0; 24];
        for (o, x) in out.iter_mut().zip(day) {
            *o = x / sum;
        }
        Some(out)
    }
}

/// The PyPSA-China hourly provincial demand file (`Time Series,AH,BJ,…`: hour index 1–8760
/// and one MW column per province, ISO 3166-2:CN suffixes). The year is given by the caller
/// (2018 for the NDRC reconstruction).
pub fn load_hourly_load(path: &Path, year: i32) -> Result<HourlyLoad> {
    let t = Table::read(path)?;
    let hour_col = t.col("Time Series")?;
    let mut cols = Vec::new();
    for (c, h) in t.headers.iter().enumerate() {
        if c == hour_col {
            continue;
        }
        let p = Province::parse_lenient(h)
            .ok_or_else(|| DataError::field(path, 1, h, "column is not a province code"))?;
        cols.push((c, p));
    }
    if cols.len() != 31 {
        return Err(DataError::content(path, format!("expected 31 province columns, found {}", cols.len())));
    }
    let hours = if chrono::NaiveDate::from_ymd_opt(year, 2, 29).is_some() { 8784 } else { 8760 };
    if t.rows.len() != hours {
        return Err(DataError::content(path, format!("expected {hours} hourly rows for {year}, found {}", t.rows.len())));
    }
    let mut mw: BTreeMap<Province, Vec<f64>> = BTreeMap::new();
    for i in 0..t.rows.len() {
        for (c, p) in &cols {
            let v = t.f64(i, *c)?;
            if v < 0.0 {
                return Err(DataError::field(path, t.line(i), &t.headers[*c], "negative load"));
            }
            mw.entry(*p).or_default().push(v);
        }
    }
    Ok(HourlyLoad { year, mw })
}

/// Daily national passenger traffic (Ministry of Transport, Wind export), 1e4 person-trips:
/// returns (series name, date, trips).
pub fn load_daily_passengers(path: &Path) -> Result<Vec<(String, NaiveDate, f64)>> {
    let series = wind::load(path)?;
    let mut out = Vec::new();
    for s in &series {
        if !s.unit.contains("person") {
            continue;
        }
        for (d, v) in &s.points {
            let date = NaiveDate::parse_from_str(d, "%Y-%m-%d")
                .map_err(|_| DataError::field(path, 0, &s.name, format!("bad date `{d}`")))?;
            out.push((s.name.clone(), date, v * 1.0e4));
        }
    }
    if out.is_empty() {
        return Err(DataError::content(path, "no passenger series"));
    }
    Ok(out)
}

/// CAAC monthly airport passenger throughput by macro-region (万人次), spread to every
/// province of the region as a regional index (`AirportPassengers`, passengers).
pub fn load_caac_throughput(path: &Path, regions: &Path) -> Result<Vec<ProxyMonth>> {
    let map = Table::read(regions)?;
    let (cr, cp) = (map.col("地区")?, map.col("省份")?);
    let mut region_of: Vec<(String, Province)> = Vec::new();
    for i in 0..map.rows.len() {
        let name = map.str(i, cp);
        // The table truncates 内蒙古 to 内蒙.
        let p = if name == "内蒙" { Some(Province::InnerMongolia) } else { Province::parse_lenient(name) };
        let p = p.ok_or_else(|| DataError::field(regions, map.line(i), "省份", format!("unknown province `{name}`")))?;
        region_of.push((map.str(i, cr).to_string(), p));
    }
    let t = Table::read(path)?;
    let (cd, cu) = (t.col("date")?, t.col("unit")?);
    let mut out = Vec::new();
    for i in 0..t.rows.len() {
        let unit = t.str(i, cu);
        if unit != "万人次" {
            return Err(DataError::Unit { file: path.to_path_buf(), field: "unit".into(), found: unit.into(), expected: "万人次".into() });
        }
        let d = t.str(i, cd);
        let ym = d
            .strip_suffix('月')
            .and_then(|x| x.split_once('年'))
            .and_then(|(y, m)| Some(YearMonth { year: y.parse().ok()?, month: m.parse().ok()? }))
            .ok_or_else(|| DataError::field(path, t.line(i), "date", format!("bad month `{d}`")))?;
        for (c, h) in t.headers.iter().enumerate() {
            let region = h.trim_start_matches("其中：");
            let provinces: Vec<Province> = region_of.iter().filter(|(r, _)| r == region).map(|(_, p)| *p).collect();
            if provinces.is_empty() || t.str(i, c).is_empty() {
                continue;
            }
            let v = t.f64(i, c)? * 1.0e4;
            for p in provinces {
                out.push(ProxyMonth {
                    signal: Signal::AirportPassengers,
                    scope: Scope::Province(p),
                    month: ym,
                    value: v,
                    provenance: MonthlyProvenance::Reported,
                    source: format!("CAAC airport throughput, region {region} (regional index)"),
                });
            }
        }
    }
    Ok(out)
}

/// Raw coal burned for power generation by province (Wind export of NBS data), YTD in 1e4 t,
/// differenced to monthly tonnes.
pub fn load_coal_for_power(path: &Path) -> Result<Vec<ProxyMonth>> {
    let series = wind::load(path)?;
    let mut ytd: BTreeMap<(Signal, Scope), Vec<(YearMonth, f64)>> = BTreeMap::new();
    for s in &series {
        let Some(p) = s.name.split(':').map(str::trim).find_map(Province::parse_lenient) else { continue };
        if s.unit != "10000 tons" {
            return Err(DataError::Unit { file: path.to_path_buf(), field: s.name.clone(), found: s.unit.clone(), expected: "10000 tons".into() });
        }
        for (d, v) in &s.points {
            if let Some(ym) = YearMonth::parse(d)
                && *v > 0.0
            {
                ytd.entry((Signal::CoalForPower, Scope::Province(p))).or_default().push((ym, v * 1.0e4));
            }
        }
    }
    if ytd.is_empty() {
        return Err(DataError::content(path, "no provincial coal-for-power series"));
    }
    difference_ytd(ytd, Sector::Power, "NBS raw coal for power via Wind (YTD differenced)", path)
}
