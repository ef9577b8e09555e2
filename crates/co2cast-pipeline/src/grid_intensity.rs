//! Daily grid carbon intensity rows (topic `co2cast.grid_intensity.daily`, lake table
//! `grid_intensity`) and the annual comparison with published factors (lake table
//! `grid_intensity_comparison`).
//!
//! Schema of a daily row (one JSON object per row, keyed `<province>/<date>`; national rows
//! use `CN`; JSON omits null sources):
//!
//! | column | type | meaning |
//! |---|---|---|
//! | date | Date32 | Asia/Shanghai day |
//! | province | Utf8 | ISO 3166-2:CN code, or `CN` |
//! | generation_gwh | Float64 | generation from every source with data, GWh/day |
//! | thermal_gwh, hydro_gwh, wind_gwh, solar_gwh, nuclear_gwh | Float64 (null: no data) | generation by source, GWh/day |
//! | generation_sources | Utf8 | sources with data (`thermal,hydro,…`) |
//! | power_mtco2 | Float64 | power-sector CO2 (central), MtCO2/day |
//! | heat_share | Float64 | share of it attributed to CHP heat (central) |
//! | electricity_mtco2 | Float64 | CO2 attributed to electricity (central), MtCO2/day |
//! | intensity_gco2_per_kwh | Float64 | electricity CO2 over generation (central) |
//! | p2_5, p50, p97_5 | Float64 | ensemble percentiles of the intensity, gCO2/kWh |
//! | power_basis | Utf8 | where power CO2 comes from: `estimate` (the power sector's), `national_thermal_factor` (a province without an inventory, Tibet: thermal generation × the other provinces' CO2 per kWh of thermal), `mixed` (a national sum of both) |
//! | provinces | Int32 | provinces in the row (1, or those summed for `CN`) |
//! | base_year | Int32 | inventory year of the calibration |
//! | model_version | Utf8 | estimator version |
//! | revision | UInt32 | 0 for the first publication, +1 for each change |
//! | computed_at | Timestamp(µs, UTC) | when this vintage was computed |

use crate::estimates::{Fingerprint, Revisioned, date32, fnv1a};
use arrow::array::{ArrayRef, Date32Builder, Float64Builder, Int32Builder, RecordBatch, StringBuilder, TimestampMicrosecondArray, UInt32Builder};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use chrono::{DateTime, NaiveDate, Utc};
use co2cast_model::estimate::MODEL_VERSION;
use co2cast_model::grid_intensity::{GenerationMix, IntensitySum};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// One province-day (or national day) of grid intensity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GridIntensityRow {
    pub date: NaiveDate,
    pub province: String,
    pub generation_gwh: f64,
    pub thermal_gwh: f64,
    pub hydro_gwh: Option<f64>,
    pub wind_gwh: Option<f64>,
    pub solar_gwh: Option<f64>,
    pub nuclear_gwh: Option<f64>,
    pub generation_sources: String,
    pub power_mtco2: f64,
    /// `estimate`, `national_thermal_factor` (no inventory: Tibet) or `mixed` (national sums).
    pub power_basis: String,
    pub heat_share: f64,
    pub electricity_mtco2: f64,
    pub intensity_gco2_per_kwh: f64,
    pub p2_5: f64,
    pub p50: f64,
    pub p97_5: f64,
    pub provinces: i32,
    pub base_year: i32,
    pub model_version: String,
    pub revision: u32,
}

impl GridIntensityRow {
    /// The row of `sum` (one province-day, or the national sum of a day); `None` without
    /// generation. `mix` is the day's generation by source (summed for the nation).
    pub fn new(date: NaiveDate, province: &str, sum: &IntensitySum, mix: &GenerationMix, provinces: i32, base_year: i32) -> Option<GridIntensityRow> {
        let band = sum.band()?;
        Some(GridIntensityRow {
            date,
            province: province.to_string(),
            generation_gwh: sum.generation_gwh,
            thermal_gwh: mix.thermal_gwh,
            hydro_gwh: mix.hydro_gwh,
            wind_gwh: mix.wind_gwh,
            solar_gwh: mix.solar_gwh,
            nuclear_gwh: mix.nuclear_gwh,
            generation_sources: mix.sources(),
            power_mtco2: sum.power_mtco2,
            power_basis: sum.basis.unwrap_or(co2cast_model::grid_intensity::PowerBasis::Estimate).as_str().to_string(),
            heat_share: if sum.power_mtco2 > 0.0 { 1.0 - sum.electricity_mtco2 / sum.power_mtco2 } else { 0.0 },
            electricity_mtco2: sum.electricity_mtco2,
            intensity_gco2_per_kwh: band.central,
            p2_5: band.p2_5,
            p50: band.p50,
            p97_5: band.p97_5,
            provinces,
            base_year,
            model_version: MODEL_VERSION.to_string(),
            revision: 0,
        })
    }
}

impl Revisioned for GridIntensityRow {
    fn key(&self) -> String {
        format!("{}/{}", self.province, self.date)
    }

    fn fingerprint(&self) -> Fingerprint {
        let q = |x: f64| (x * 1.0e6).round() as i64;
        let o = |x: Option<f64>| x.map_or(-1, q);
        let text = format!("{}\0{}\0{}\0{}\0{}", self.generation_sources, self.model_version, self.provinces, self.base_year, self.power_basis);
        [
            q(self.generation_gwh),
            q(self.thermal_gwh),
            fnv1a(&[&o(self.hydro_gwh).to_le_bytes(), &o(self.wind_gwh).to_le_bytes(), &o(self.solar_gwh).to_le_bytes(), &o(self.nuclear_gwh).to_le_bytes()]) as i64,
            (self.power_mtco2 * 1.0e12).round() as i64,
            (self.electricity_mtco2 * 1.0e12).round() as i64,
            q(self.intensity_gco2_per_kwh),
            q(self.p2_5),
            q(self.p50),
            q(self.p97_5),
            fnv1a(&[text.as_bytes()]) as i64,
        ]
    }

    fn set_revision(&mut self, revision: u32) {
        self.revision = revision;
    }
}

fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

pub fn schema() -> Arc<Schema> {
    let f = |n: &str, t: DataType| Field::new(n, t, false);
    let nullable = |n: &str| Field::new(n, DataType::Float64, true);
    Arc::new(Schema::new(vec![
        f("date", DataType::Date32),
        f("province", DataType::Utf8),
        f("generation_gwh", DataType::Float64),
        f("thermal_gwh", DataType::Float64),
        nullable("hydro_gwh"),
        nullable("wind_gwh"),
        nullable("solar_gwh"),
        nullable("nuclear_gwh"),
        f("generation_sources", DataType::Utf8),
        f("power_mtco2", DataType::Float64),
        f("heat_share", DataType::Float64),
        f("electricity_mtco2", DataType::Float64),
        f("intensity_gco2_per_kwh", DataType::Float64),
        f("p2_5", DataType::Float64),
        f("p50", DataType::Float64),
        f("p97_5", DataType::Float64),
        f("power_basis", DataType::Utf8),
        f("provinces", DataType::Int32),
        f("base_year", DataType::Int32),
        f("model_version", DataType::Utf8),
        f("revision", DataType::UInt32),
        f("computed_at", ts_type()),
    ]))
}

/// Rows as one batch, every row computed at `computed_at`.
pub fn to_batch(rows: &[GridIntensityRow], computed_at: DateTime<Utc>) -> RecordBatch {
    let mut date = Date32Builder::new();
    let (mut province, mut sources, mut version, mut basis) = (StringBuilder::new(), StringBuilder::new(), StringBuilder::new(), StringBuilder::new());
    let mut num: Vec<Float64Builder> = (0..13).map(|_| Float64Builder::new()).collect();
    let (mut provinces, mut base, mut rev) = (Int32Builder::new(), Int32Builder::new(), UInt32Builder::new());
    for r in rows {
        date.append_value(date32(r.date));
        province.append_value(&r.province);
        let values = [
            Some(r.generation_gwh),
            Some(r.thermal_gwh),
            r.hydro_gwh,
            r.wind_gwh,
            r.solar_gwh,
            r.nuclear_gwh,
            Some(r.power_mtco2),
            Some(r.heat_share),
            Some(r.electricity_mtco2),
            Some(r.intensity_gco2_per_kwh),
            Some(r.p2_5),
            Some(r.p50),
            Some(r.p97_5),
        ];
        for (b, v) in num.iter_mut().zip(values) {
            b.append_option(v);
        }
        sources.append_value(&r.generation_sources);
        basis.append_value(&r.power_basis);
        provinces.append_value(r.provinces);
        base.append_value(r.base_year);
        version.append_value(&r.model_version);
        rev.append_value(r.revision);
    }
    let mut num = num.into_iter().map(|mut b| Arc::new(b.finish()) as ArrayRef);
    let mut take = |k: usize| (0..k).map(|_| num.next().expect("13 numeric columns")).collect::<Vec<_>>();
    let mut cols: Vec<ArrayRef> = vec![Arc::new(date.finish()), Arc::new(province.finish())];
    cols.extend(take(6));
    cols.push(Arc::new(sources.finish()));
    cols.extend(take(7));
    cols.push(Arc::new(basis.finish()));
    cols.push(Arc::new(provinces.finish()));
    cols.push(Arc::new(base.finish()));
    cols.push(Arc::new(version.finish()));
    cols.push(Arc::new(rev.finish()));
    cols.push(Arc::new(TimestampMicrosecondArray::from(vec![computed_at.timestamp_micros(); rows.len()]).with_timezone("UTC")));
    RecordBatch::try_new(schema(), cols).expect("schema")
}

/// One province's (or China's) annual intensity set beside a published factor.
#[derive(Debug, Clone, PartialEq)]
pub struct GridComparisonLine {
    pub province: String,
    pub intensity_gco2_per_kwh: f64,
    pub p2_5: f64,
    pub p97_5: f64,
    pub generation_gwh: f64,
    /// Electricity consumed in the province, GWh (when every month of the year has data).
    pub consumption_gwh: Option<f64>,
    /// `reference` factor and what it measures; `None` when no reference covers the row.
    pub reference: Option<(String, f64)>,
    pub base_year: i32,
}

/// The comparison lines as a batch (`year` is the partition column).
pub fn comparison_batch(lines: &[GridComparisonLine], computed_at: DateTime<Utc>) -> RecordBatch {
    let f = |n: &str, t: DataType| Field::new(n, t, false);
    let o = |n: &str, t: DataType| Field::new(n, t, true);
    let schema = Arc::new(Schema::new(vec![
        f("province", DataType::Utf8),
        f("intensity_gco2_per_kwh", DataType::Float64),
        f("p2_5", DataType::Float64),
        f("p97_5", DataType::Float64),
        f("generation_gwh", DataType::Float64),
        o("consumption_gwh", DataType::Float64),
        o("net_export_share", DataType::Float64),
        o("reference", DataType::Utf8),
        o("reference_gco2_per_kwh", DataType::Float64),
        o("relative_difference", DataType::Float64),
        o("reference_basis", DataType::Utf8),
        o("basis_difference", DataType::Utf8),
        f("base_year", DataType::Int32),
        f("computed_at", ts_type()),
    ]));
    let mut p = StringBuilder::new();
    let mut num: Vec<Float64Builder> = (0..8).map(|_| Float64Builder::new()).collect();
    let (mut r, mut basis, mut diff) = (StringBuilder::new(), StringBuilder::new(), StringBuilder::new());
    let mut base = Int32Builder::new();
    for l in lines {
        p.append_value(&l.province);
        let export = l.consumption_gwh.filter(|_| l.generation_gwh > 0.0).map(|c| (l.generation_gwh - c) / l.generation_gwh);
        let reference = l.reference.as_ref().map(|x| x.1);
        let rel = reference.map(|v| l.intensity_gco2_per_kwh / v - 1.0);
        for (b, v) in num.iter_mut().zip([Some(l.intensity_gco2_per_kwh), Some(l.p2_5), Some(l.p97_5), Some(l.generation_gwh), l.consumption_gwh, export, reference, rel]) {
            b.append_option(v);
        }
        r.append_option(l.reference.as_ref().map(|x| x.0.as_str()));
        let (b, d) = l.reference.as_ref().map(|x| co2cast_model::references::GridReference::basis(&x.0)).unzip();
        basis.append_option(b);
        diff.append_option(d);
        base.append_value(l.base_year);
    }
    let mut num = num.into_iter().map(|mut b| Arc::new(b.finish()) as ArrayRef);
    let mut cols: Vec<ArrayRef> = vec![Arc::new(p.finish())];
    cols.extend((0..6).map(|_| num.next().expect("numbers")));
    cols.push(Arc::new(r.finish()));
    cols.extend((0..2).map(|_| num.next().expect("numbers")));
    cols.push(Arc::new(basis.finish()));
    cols.push(Arc::new(diff.finish()));
    cols.push(Arc::new(base.finish()));
    cols.push(Arc::new(TimestampMicrosecondArray::from(vec![computed_at.timestamp_micros(); lines.len()]).with_timezone("UTC")));
    RecordBatch::try_new(schema, cols).expect("schema")
}

#[cfg(test)]
mod tests {
    use super::*;
    use co2cast_model::grid_intensity::GenerationMix;

    fn row() -> GridIntensityRow {
        let sum = IntensitySum { power_mtco2: 1.0, electricity_mtco2: 0.9, electricity_members_mtco2: vec![0.85, 0.9, 0.95], generation_gwh: 1500.0, thermal_gwh: 1400.0, basis: Some(co2cast_model::grid_intensity::PowerBasis::Estimate) };
        let mix = GenerationMix { thermal_gwh: 1400.0, hydro_gwh: Some(100.0), wind_gwh: None, solar_gwh: None, nuclear_gwh: None, carried_forward: 0 };
        GridIntensityRow::new(NaiveDate::from_ymd_opt(2021, 3, 1).unwrap(), "CN-SD", &sum, &mix, 1, 2019).unwrap()
    }

    #[test]
    fn a_row_is_intensity_with_its_band_and_every_column_decides_a_revision() {
        let r = row();
        assert_eq!(r.key(), "CN-SD/2021-03-01");
        assert!((r.intensity_gco2_per_kwh - 600.0).abs() < 1e-9 && (r.heat_share - 0.1).abs() < 1e-12);
        assert!(r.p2_5 < r.p50 && r.p50 < r.p97_5);
        let batch = to_batch(&[r.clone()], Utc::now());
        assert_eq!(batch.num_columns(), schema().fields().len());
        let json = String::from_utf8(crate::estimates::batch_to_json_lines(&batch).unwrap().remove(0)).unwrap();
        assert!(json.contains("\"hydro_gwh\":100.0") && json.contains("\"wind_gwh\":null"), "{json}");
        let changed = [
            GridIntensityRow { wind_gwh: Some(0.5), ..r.clone() },
            GridIntensityRow { generation_sources: "thermal".into(), ..r.clone() },
            GridIntensityRow { power_basis: "mixed".into(), ..r.clone() },
            GridIntensityRow { p97_5: r.p97_5 + 0.01, ..r.clone() },
            GridIntensityRow { provinces: 2, ..r.clone() },
        ];
        for c in changed {
            assert_ne!(c.fingerprint(), r.fingerprint(), "{c:?}");
        }
        assert_eq!(GridIntensityRow { revision: 4, ..r.clone() }.fingerprint(), r.fingerprint());
    }
}
