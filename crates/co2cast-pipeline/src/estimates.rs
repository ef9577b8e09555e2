//! Estimate rows as Arrow record batches, and the bookkeeping that turns recomputed
//! estimates into new revisions only where something changed.
//!
//! Schema of `co2cast.estimates.daily` (one JSON object per row, keyed
//! `<province>/<sector>/<date>`; national rows use province `CN` and sector `all`):
//!
//! | column | type | meaning |
//! |---|---|---|
//! | date | Date32 (JSON: YYYY-MM-DD) | Asia/Shanghai day |
//! | province | Utf8 | ISO 3166-2:CN code, or `CN` |
//! | sector | Utf8 | power, industry, ground_transport, residential, aviation, other, or `all` |
//! | value_mtco2 | Float64 | central estimate, MtCO2/day |
//! | p2_5, p5, p50, p95, p97_5 | Float64 | ensemble percentiles, MtCO2/day |
//! | source_type | Utf8 | proxy, gap_filled, nowcast |
//! | coverage | Float64 | share of expected proxy inputs present (0–1) |
//! | proxies | Utf8 | `;`-separated signals used |
//! | data_through | Utf8, nullable | `YYYY-MM`: the month of proxy data behind at least half of the row's CO2 (the row's own month when observed, earlier for a nowcast; components, and for national rows province rows, weighted by CO2); null when no monthly signal drives the row |
//! | base_year | Int32 | inventory year the estimate is calibrated on |
//! | model_version | Utf8 | estimator version |
//! | revision | UInt32 | 0 for the first publication, +1 for each change |
//! | computed_at | Timestamp(µs, UTC) | when this vintage was computed |

use arrow::array::{ArrayRef, Date32Builder, Float64Builder, Int32Builder, RecordBatch, StringBuilder, TimestampMicrosecondArray, UInt32Builder};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use chrono::{DateTime, NaiveDate, Utc};
use co2cast_model::estimate::{Band, DailyEstimate, MODEL_VERSION, SourceType};
use co2cast_model::proxy::Scope;
use co2cast_model::series::YearMonth;
use co2cast_model::Sector;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// A published row's content, as compared between computations.
pub type Fingerprint = [i64; 10];

/// FNV-1a: stable across runs and builds (a checkpoint stores it).
pub(crate) fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in parts.iter().flat_map(|p| p.iter()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// A published estimate row's identity, `<scope>/<sector>/<date>` (`CN/all/<date>` for the
/// national total): the Kafka key of `co2cast.estimates.daily` and of the revision ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RowKey {
    pub scope: Scope,
    /// `None`: every sector (`all`).
    pub sector: Option<Sector>,
    pub date: NaiveDate,
}

impl std::fmt::Display for RowKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.scope, self.sector.map_or(ALL_SECTORS, |s| s.as_str()), self.date)
    }
}

impl std::str::FromStr for RowKey {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut parts = s.split('/');
        let (Some(scope), Some(sector), Some(date), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err(format!("row key `{s}` is not <province>/<sector>/<date>"));
        };
        Ok(RowKey {
            scope: scope.parse()?,
            sector: if sector == ALL_SECTORS { None } else { Some(sector.parse().map_err(|e: co2cast_model::domain::UnknownSector| e.to_string())?) },
            date: NaiveDate::parse_from_str(date, "%Y-%m-%d").map_err(|e| format!("row key `{s}`: date `{date}`: {e}"))?,
        })
    }
}

/// The sector of national rows.
pub const ALL_SECTORS: &str = "all";

/// One published row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EstimateRow {
    pub date: NaiveDate,
    pub province: String,
    pub sector: String,
    pub value_mtco2: f64,
    pub p2_5: f64,
    pub p5: f64,
    pub p50: f64,
    pub p95: f64,
    pub p97_5: f64,
    pub source_type: SourceType,
    pub coverage: f64,
    pub proxies: String,
    /// `YYYY-MM`: the latest month of proxy data behind the row (its own month when observed,
    /// earlier for a nowcast); `None` when no monthly signal drives it.
    pub data_through: Option<String>,
    pub base_year: i32,
    pub model_version: String,
    pub revision: u32,
}

impl EstimateRow {
    pub fn from_daily(d: &DailyEstimate) -> EstimateRow {
        EstimateRow {
            date: d.date,
            province: d.province.iso_code().to_string(),
            sector: d.sector.as_str().to_string(),
            value_mtco2: d.value_mtco2,
            p2_5: d.p2_5,
            p5: d.p5,
            p50: d.p50,
            p95: d.p95,
            p97_5: d.p97_5,
            source_type: d.source_type,
            coverage: d.coverage,
            proxies: d.proxies.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(";"),
            data_through: d.data_through.map(|m| m.to_string()),
            base_year: d.base_year,
            model_version: d.model_version.clone(),
            revision: 0,
        }
    }

    /// The national row of a day; `data_through` is the month behind at least half of its CO2.
    pub fn national(date: NaiveDate, band: &Band, source_type: SourceType, coverage: f64, data_through: Option<YearMonth>, base_year: i32) -> EstimateRow {
        EstimateRow {
            date,
            province: Scope::National.to_string(),
            sector: ALL_SECTORS.into(),
            value_mtco2: band.central,
            p2_5: band.p2_5,
            p5: band.p5,
            p50: band.p50,
            p95: band.p95,
            p97_5: band.p97_5,
            source_type,
            coverage,
            proxies: String::new(),
            data_through: data_through.map(|m| m.to_string()),
            base_year,
            model_version: MODEL_VERSION.to_string(),
            revision: 0,
        }
    }

    /// The row's [`RowKey`], as text.
    pub fn key(&self) -> String {
        format!("{}/{}/{}", self.province, self.sector, self.date)
    }

    /// What decides whether a recomputed row is a new revision: every published column but
    /// the revision and its time (numbers to 1e-12 MtCO2, text by a stable hash). A column
    /// left out would keep the value of whichever computation happened to publish first.
    pub fn fingerprint(&self) -> Fingerprint {
        let q = |x: f64| if x == 0.0 { 0 } else { (x * 1.0e12).round() as i64 };
        [
            q(self.value_mtco2),
            q(self.p2_5),
            q(self.p5),
            q(self.p50),
            q(self.p95),
            q(self.p97_5),
            self.source_type as i64,
            (self.coverage * 1.0e6).round() as i64,
            self.base_year as i64,
            fnv1a(&[self.proxies.as_bytes(), b"\0", self.model_version.as_bytes(), b"\0", self.data_through.as_deref().unwrap_or("-").as_bytes()]) as i64,
        ]
    }
}

pub fn schema() -> Arc<Schema> {
    let f = |n: &str, t: DataType| Field::new(n, t, false);
    Arc::new(Schema::new(vec![
        f("date", DataType::Date32),
        f("province", DataType::Utf8),
        f("sector", DataType::Utf8),
        f("value_mtco2", DataType::Float64),
        f("p2_5", DataType::Float64),
        f("p5", DataType::Float64),
        f("p50", DataType::Float64),
        f("p95", DataType::Float64),
        f("p97_5", DataType::Float64),
        f("source_type", DataType::Utf8),
        f("coverage", DataType::Float64),
        f("proxies", DataType::Utf8),
        Field::new("data_through", DataType::Utf8, true),
        f("base_year", DataType::Int32),
        f("model_version", DataType::Utf8),
        f("revision", DataType::UInt32),
        f("computed_at", DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))),
    ]))
}

/// Rows of one publication, all computed at `computed_at` (their vintage).
pub fn to_batch(rows: &[EstimateRow], computed_at: DateTime<Utc>) -> RecordBatch {
    to_batch_at(rows, vec![computed_at.timestamp_micros(); rows.len()])
}

/// Rows with each its own vintage time (µs since the epoch, UTC).
pub fn to_batch_at(rows: &[EstimateRow], computed_at_us: Vec<i64>) -> RecordBatch {
    let mut date = Date32Builder::with_capacity(rows.len());
    let mut province = StringBuilder::new();
    let mut sector = StringBuilder::new();
    let mut floats: Vec<Float64Builder> = (0..6).map(|_| Float64Builder::with_capacity(rows.len())).collect();
    let mut source = StringBuilder::new();
    let mut coverage = Float64Builder::new();
    let mut proxies = StringBuilder::new();
    let mut through = StringBuilder::new();
    let mut base = Int32Builder::new();
    let mut version = StringBuilder::new();
    let mut revision = UInt32Builder::new();
    for r in rows {
        date.append_value(date32(r.date));
        province.append_value(&r.province);
        sector.append_value(&r.sector);
        for (b, v) in floats.iter_mut().zip([r.value_mtco2, r.p2_5, r.p5, r.p50, r.p95, r.p97_5]) {
            b.append_value(v);
        }
        source.append_value(r.source_type.as_str());
        coverage.append_value(r.coverage);
        proxies.append_value(&r.proxies);
        through.append_option(r.data_through.as_deref());
        base.append_value(r.base_year);
        version.append_value(&r.model_version);
        revision.append_value(r.revision);
    }
    let mut cols: Vec<ArrayRef> = vec![Arc::new(date.finish()), Arc::new(province.finish()), Arc::new(sector.finish())];
    for mut b in floats {
        cols.push(Arc::new(b.finish()));
    }
    cols.push(Arc::new(source.finish()));
    cols.push(Arc::new(coverage.finish()));
    cols.push(Arc::new(proxies.finish()));
    cols.push(Arc::new(through.finish()));
    cols.push(Arc::new(base.finish()));
    cols.push(Arc::new(version.finish()));
    cols.push(Arc::new(revision.finish()));
    cols.push(Arc::new(TimestampMicrosecondArray::from(computed_at_us).with_timezone("UTC")));
    RecordBatch::try_new(schema(), cols).expect("columns match the schema")
}

/// Days since 1970-01-01 (Arrow Date32).
pub fn date32(d: NaiveDate) -> i32 {
    (d - NaiveDate::from_ymd_opt(1970, 1, 1).expect("valid")).num_days() as i32
}

/// One JSON object per row of the batch, in row order, every column present (nulls as
/// `null`, so a consumer sees the same keys in every message). Errors are arrow's (an
/// unsupported type or time zone).
pub fn batch_to_json_lines(batch: &RecordBatch) -> Result<Vec<Vec<u8>>, arrow::error::ArrowError> {
    let mut buf = Vec::new();
    {
        let mut w = arrow::json::WriterBuilder::new().with_explicit_nulls(true).build::<_, arrow::json::writer::LineDelimited>(&mut buf);
        w.write(batch)?;
        w.finish()?;
    }
    Ok(buf.split(|b| *b == b'\n').filter(|l| !l.is_empty()).map(|l| l.to_vec()).collect())
}

/// What has been published: per key, the last revision and its fingerprint.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Published {
    #[serde(with = "published_serde")]
    pub rows: BTreeMap<String, (u32, Fingerprint)>,
}

mod published_serde {
    use super::*;
    use serde::{Deserializer, Serializer};
    pub fn serialize<S: Serializer>(m: &BTreeMap<String, (u32, Fingerprint)>, s: S) -> Result<S::Ok, S::Error> {
        m.iter().collect::<Vec<_>>().serialize(s)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, (u32, Fingerprint)>, D::Error> {
        Ok(Vec::<(String, (u32, Fingerprint))>::deserialize(d)?.into_iter().collect())
    }
}

/// A published row with a key, a content fingerprint and co2cast's revision of it.
pub trait Revisioned {
    fn key(&self) -> String;
    fn fingerprint(&self) -> Fingerprint;
    fn set_revision(&mut self, revision: u32);
}

impl Revisioned for EstimateRow {
    fn key(&self) -> String {
        EstimateRow::key(self)
    }
    fn fingerprint(&self) -> Fingerprint {
        EstimateRow::fingerprint(self)
    }
    fn set_revision(&mut self, revision: u32) {
        self.revision = revision;
    }
}

impl Published {
    /// Keeps the rows that are new or changed, assigning their revision.
    pub fn diff<R: Revisioned>(&mut self, rows: Vec<R>) -> Vec<R> {
        let mut out = Vec::new();
        for mut r in rows {
            let fp = r.fingerprint();
            let key = r.key();
            let revision = match self.rows.get(&key) {
                Some((_, old)) if *old == fp => continue,
                Some((rev, _)) => rev + 1,
                None => 0,
            };
            r.set_revision(revision);
            self.rows.insert(key, (revision, fp));
            out.push(r);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use co2cast_model::Province;

    #[test]
    fn a_row_key_reads_back_what_it_writes_and_refuses_what_is_not_one() {
        let d = NaiveDate::from_ymd_opt(2024, 2, 29).unwrap();
        for k in [
            RowKey { scope: Scope::Province(Province::ALL[18]), sector: Some(Sector::Power), date: d },
            RowKey { scope: Scope::National, sector: None, date: d },
        ] {
            assert_eq!(k.to_string().parse::<RowKey>(), Ok(k));
        }
        assert_eq!(RowKey { scope: Scope::National, sector: None, date: d }.to_string(), "CN/all/2024-02-29");
        let band = Band { central: 1.0, p2_5: 0.9, p5: 0.92, p50: 1.0, p95: 1.08, p97_5: 1.1 };
        let national = EstimateRow::national(d, &band, SourceType::Proxy, 1.0, None, 2019);
        assert_eq!(national.key().parse::<RowKey>().unwrap(), RowKey { scope: Scope::National, sector: None, date: d });
        for bad in ["CN-GD/power", "CN-GD/power/2024-02-30", "XX/power/2024-01-01", "CN-GD/steel/2024-01-01", "CN/all/2024-01-01/x"] {
            assert!(bad.parse::<RowKey>().is_err(), "{bad}");
        }
    }
}
