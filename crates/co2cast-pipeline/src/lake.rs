//! What the processor writes to the Parquet lake at each flush, in the same commit as its
//! checkpoint: the vintages it published, the newest vintage of each row, the ensemble
//! members of changed province-months, the comparison with the inventory, and the accepted
//! inputs. Files of a flush are named by the checkpoint sequence they belong to; at start,
//! files of flushes whose checkpoint was never written are removed, so a crash between the
//! lake commit and the checkpoint leaves no duplicates.

use crate::estimates::{EstimateRow, date32, to_batch, to_batch_at};
use arrow::array::{
    Array, ArrayBuilder, ArrayRef, BooleanBuilder, Date32Array, Date32Builder, Float64Array, Float64Builder, Int32Array, Int32Builder, Int64Builder,
    RecordBatch, StringArray, StringBuilder, TimestampMicrosecondArray, UInt16Builder, UInt32Array, UInt32Builder,
};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use chrono::{DateTime, Datelike, NaiveDate, Utc};
use co2cast_ingest::ValidProxy;
use co2cast_lake::{Lake, LakeError, tables};
use co2cast_model::domain::{Province, Sector};
use co2cast_model::proxy::Scope;
use co2cast_model::estimate::{Band, RowEnsemble, SourceType};
use co2cast_model::inventory::InventoryPanel;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// An accepted input with where it came from.
pub struct AcceptedProxy {
    pub proxy: ValidProxy,
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
    pub received_at: DateTime<Utc>,
}

pub struct LakeSink {
    lake: Lake,
    /// Newest vintage of every row, by (year, month) then row (with when it was computed).
    latest: BTreeMap<(i32, u32), BTreeMap<RowId, (EstimateRow, i64)>>,
    pending: Vec<co2cast_lake::FileWrite>,
    pub accepted: Vec<AcceptedProxy>,
    /// Members kept per row in `estimate_ensemble` (all when `None`).
    ensemble_members: Option<usize>,
}

fn field(n: &str, t: DataType) -> Field {
    Field::new(n, t, false)
}

fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

fn lake_err(e: LakeError) -> crate::error::PipelineError {
    match e {
        // A lake of another format is the user's to move away, not an outage.
        LakeError::Format { .. } => crate::error::PipelineError::Config(e.to_string()),
        LakeError::Io { .. } => crate::error::PipelineError::Lake(e.to_string()),
    }
}

impl LakeSink {
    /// Opens the lake, drops files of commits after `checkpointed` (never checkpointed), and
    /// rebuilds the newest vintages from the `estimates` table.
    pub fn open(dir: &Path, checkpointed: u64, lineage: &str, ensemble_members: Option<usize>) -> Result<LakeSink, crate::error::PipelineError> {
        let mut lake = Lake::open(dir).map_err(lake_err)?;
        lake.bind_lineage(lineage).map_err(lake_err)?;
        lake.rollback_after(checkpointed).map_err(lake_err)?;
        let mut latest: BTreeMap<(i32, u32), BTreeMap<RowId, (EstimateRow, i64)>> = BTreeMap::new();
        for b in lake.read("estimates", None).map_err(lake_err)? {
            for (r, at) in rows_from_batch(&b).map_err(crate::error::PipelineError::Lake)? {
                let month = latest.entry((r.date.year(), r.date.month())).or_default();
                let id = row_id(&r);
                // The newest vintage: a province that changed members is published again by its
                // new one, whose revision count is its own.
                if month.get(&id).is_none_or(|(old, old_at)| (*old_at, old.revision) <= (at, r.revision)) {
                    month.insert(id, (r, at));
                }
            }
        }
        Ok(LakeSink { lake, latest, pending: Vec::new(), accepted: Vec::new(), ensemble_members })
    }

    /// The yearbook values, once.
    pub fn write_inventory(&mut self, inv: &InventoryPanel, commit: u64) -> Result<(), crate::error::PipelineError> {
        if self.lake.manifest().files.values().any(|f| f.table == "inventory") {
            return Ok(());
        }
        let (mut p, mut s, mut y, mut v, mut src) =
            (StringBuilder::new(), StringBuilder::new(), Int32Builder::new(), Float64Builder::new(), StringBuilder::new());
        for year in inv.years() {
            for prov in Province::ALL {
                for sec in Sector::ALL {
                    if let Some(x) = inv.sector(prov, sec, year) {
                        p.append_value(prov.iso_code());
                        s.append_value(sec.as_str());
                        y.append_value(year);
                        v.append_value(x);
                        src.append_value(&inv.source);
                    }
                }
            }
        }
        let schema = Arc::new(Schema::new(vec![
            field("province", DataType::Utf8),
            field("sector", DataType::Utf8),
            field("year", DataType::Int32),
            field("value_mtco2", DataType::Float64),
            field("source", DataType::Utf8),
        ]));
        let cols: Vec<ArrayRef> = vec![Arc::new(p.finish()), Arc::new(s.finish()), Arc::new(y.finish()), Arc::new(v.finish()), Arc::new(src.finish())];
        let batch = RecordBatch::try_new(schema, cols).expect("schema");
        self.lake
            .commit(commit, vec![tables::INVENTORY.file(&[], "data.parquet", batch)], &Utc::now().to_rfc3339())
            .map_err(lake_err)
    }

    /// Published rows of one flush: appended to `estimates` and merged into
    /// `estimates_latest`, both by month; only the months that changed are written.
    pub fn published(&mut self, rows: &[EstimateRow], computed_at: DateTime<Utc>, commit: u64) {
        let mut by_month: BTreeMap<(i32, u32), Vec<EstimateRow>> = BTreeMap::new();
        for r in rows {
            let month = (r.date.year(), r.date.month());
            by_month.entry(month).or_default().push(r.clone());
            self.latest.entry(month).or_default().insert(row_id(r), (r.clone(), computed_at.timestamp_micros()));
        }
        for ((y, m), rows) in by_month {
            let month = [y, m as i32];
            self.pending.push(tables::ESTIMATES.file(&month, format!("part-{commit:010}.parquet"), to_batch(&rows, computed_at)));
            // Each row keeps the time of its own vintage.
            let (latest, at): (Vec<EstimateRow>, Vec<i64>) = self.latest[&(y, m)].values().cloned().unzip();
            self.pending.push(tables::ESTIMATES_LATEST.file(&month, "data.parquet", to_batch_at(&latest, at)));
        }
    }

    /// Members of every row of `province` in `month` (one file per province-month).
    pub fn ensemble(&mut self, rows: &[RowEnsemble], year: i32, month: u32, revision_of: impl Fn(&str) -> u32, base_year: i32) {
        let Some(first) = rows.first() else { return };
        let (mut d, mut p, mut s, mut m, mut v, mut rev, mut by) = (
            Date32Builder::new(),
            StringBuilder::new(),
            StringBuilder::new(),
            UInt16Builder::new(),
            Float64Builder::new(),
            UInt32Builder::new(),
            Int32Builder::new(),
        );
        for r in rows {
            let k = self.ensemble_members.unwrap_or(r.members.len()).min(r.members.len());
            for (i, day) in r.days.iter().enumerate().filter(|(_, d)| d.year() == year && d.month() == month) {
                let key = crate::estimates::RowKey { scope: Scope::Province(r.province), sector: Some(r.sector), date: *day }.to_string();
                let revision = revision_of(&key);
                for (mi, member) in r.members.iter().take(k).enumerate() {
                    d.append_value(date32(*day));
                    p.append_value(r.province.iso_code());
                    s.append_value(r.sector.as_str());
                    m.append_value(mi as u16);
                    v.append_value(member[i]);
                    rev.append_value(revision);
                    by.append_value(base_year);
                }
            }
        }
        let schema = Arc::new(Schema::new(vec![
            field("date", DataType::Date32),
            field("province", DataType::Utf8),
            field("sector", DataType::Utf8),
            field("member", DataType::UInt16),
            field("value_mtco2", DataType::Float64),
            field("revision", DataType::UInt32),
            field("base_year", DataType::Int32),
        ]));
        let cols: Vec<ArrayRef> = vec![
            Arc::new(d.finish()),
            Arc::new(p.finish()),
            Arc::new(s.finish()),
            Arc::new(m.finish()),
            Arc::new(v.finish()),
            Arc::new(rev.finish()),
            Arc::new(by.finish()),
        ];
        let batch = RecordBatch::try_new(schema, cols).expect("schema");
        self.pending.push(tables::ESTIMATE_ENSEMBLE.file(&[year, month as i32], format!("{}.parquet", first.province.iso_code()), batch));
    }

    /// Every grid intensity row of `province` in `month` (one file per province-month,
    /// replaced when any of its rows changes).
    pub fn grid_intensity(&mut self, rows: &[crate::grid_intensity::GridIntensityRow], year: i32, month: u32, province: &str, computed_at: DateTime<Utc>) {
        if rows.is_empty() {
            return;
        }
        let batch = crate::grid_intensity::to_batch(rows, computed_at);
        self.pending.push(tables::GRID_INTENSITY.file(&[year, month as i32], format!("{province}.parquet"), batch));
    }

    /// Annual grid intensity beside published factors, for a complete year.
    pub fn grid_comparison(&mut self, year: i32, lines: &[crate::grid_intensity::GridComparisonLine], computed_at: DateTime<Utc>) {
        if !lines.is_empty() {
            self.pending.push(tables::GRID_INTENSITY_COMPARISON.file(&[year], "data.parquet", crate::grid_intensity::comparison_batch(lines, computed_at)));
        }
    }

    /// Annual estimates against the inventory and the national references, for a complete year.
    pub fn comparison(&mut self, year: i32, lines: &[ComparisonLine], computed_at: DateTime<Utc>) {
        let mut b = ComparisonBuilders::default();
        for l in lines {
            b.push(l);
        }
        self.pending.push(tables::COMPARISON.file(&[year], "data.parquet", b.finish(computed_at)));
    }

    /// Accepted inputs since the last flush, by month of their period.
    fn proxies(&mut self, commit: u64) {
        let mut by_month: BTreeMap<(i32, u32), Vec<AcceptedProxy>> = BTreeMap::new();
        for a in std::mem::take(&mut self.accepted) {
            let d = co2cast_model::calendar::shanghai_day(&a.proxy.period_start());
            by_month.entry((d.year(), d.month())).or_default().push(a);
        }
        for ((y, m), list) in by_month {
            let mut sig = StringBuilder::new();
            let mut scope = StringBuilder::new();
            let mut gran = StringBuilder::new();
            let mut start = Vec::with_capacity(list.len());
            let mut val = Float64Builder::new();
            let mut unit = StringBuilder::new();
            let mut ytd = BooleanBuilder::new();
            let mut src = StringBuilder::new();
            let mut rev = UInt32Builder::new();
            let mut topic = StringBuilder::new();
            let mut part = Int32Builder::new();
            let mut off = Int64Builder::new();
            let mut recv = Vec::with_capacity(list.len());
            for a in &list {
                let p = &a.proxy;
                sig.append_value(p.signal.as_str());
                scope.append_value(p.scope.code());
                gran.append_value(format!("{:?}", p.granularity).to_lowercase());
                start.push(p.period_start_s * 1_000_000);
                val.append_value(p.value);
                unit.append_value(p.signal.unit());
                ytd.append_value(p.ytd);
                src.append_value(&p.source);
                rev.append_value(p.revision);
                topic.append_value(&*a.topic);
                part.append_value(a.partition);
                off.append_value(a.offset);
                recv.push(a.received_at.timestamp_micros());
            }
            let schema = Arc::new(Schema::new(vec![
                field("signal", DataType::Utf8),
                field("province", DataType::Utf8),
                field("granularity", DataType::Utf8),
                field("period_start", ts_type()),
                field("value", DataType::Float64),
                field("unit", DataType::Utf8),
                field("ytd", DataType::Boolean),
                field("source", DataType::Utf8),
                // The producer's revision of the value, not an estimate's revision.
                field("proxy_revision", DataType::UInt32),
                field("topic", DataType::Utf8),
                field("partition", DataType::Int32),
                field("offset", DataType::Int64),
                field("received_at", ts_type()),
            ]));
            let cols: Vec<ArrayRef> = vec![
                Arc::new(sig.finish()),
                Arc::new(scope.finish()),
                Arc::new(gran.finish()),
                Arc::new(TimestampMicrosecondArray::from(start).with_timezone("UTC")),
                Arc::new(val.finish()),
                Arc::new(unit.finish()),
                Arc::new(ytd.finish()),
                Arc::new(src.finish()),
                Arc::new(rev.finish()),
                Arc::new(topic.finish()),
                Arc::new(part.finish()),
                Arc::new(off.finish()),
                Arc::new(TimestampMicrosecondArray::from(recv).with_timezone("UTC")),
            ];
            let batch = RecordBatch::try_new(schema, cols).expect("schema");
            self.pending.push(tables::PROXIES.file(&[y, m as i32], format!("part-{commit:010}.parquet"), batch));
        }
    }

    /// Writes everything of this flush as commit `commit` (before its checkpoint).
    pub fn commit(&mut self, commit: u64) -> Result<(), crate::error::PipelineError> {
        self.proxies(commit);
        let files = std::mem::take(&mut self.pending);
        self.lake.commit(commit, files, &Utc::now().to_rfc3339()).map_err(lake_err)
    }
}

impl crate::sink::Sink for LakeSink {
    /// The lake commit of the flush: its files and the manifest naming them.
    fn barrier(&mut self, checkpoint: u64) -> Result<(), crate::error::PipelineError> {
        self.commit(checkpoint)
    }
}

/// One line of the comparison table: an estimated annual total against one reference.
pub struct ComparisonLine {
    pub province: String,
    pub sector: String,
    pub band: Band,
    /// `ceads` (the yearbook inventory co2cast is calibrated on), `gcp` or `energy_institute`.
    pub reference: String,
    pub reference_mtco2: f64,
    /// What the reference covers, and how that differs from co2cast's scope.
    pub reference_scope: String,
    pub scope_difference: String,
    pub base_year: i32,
}

#[derive(Default)]
struct ComparisonBuilders {
    p: StringBuilder,
    s: StringBuilder,
    r: StringBuilder,
    f: [Float64Builder; 7],
    inside: BooleanBuilder,
    base: Int32Builder,
    scope: StringBuilder,
    difference: StringBuilder,
}

impl ComparisonBuilders {
    fn push(&mut self, l: &ComparisonLine) {
        let b = &l.band;
        let diff = b.central - l.reference_mtco2;
        // Standard deviation implied by the 95 % band (±1.96 σ for a normal ensemble).
        let sigma = (b.p97_5 - b.p2_5) / (2.0 * 1.959_964);
        let z = if sigma > 0.0 { diff / sigma } else { f64::NAN };
        self.p.append_value(&l.province);
        self.s.append_value(&l.sector);
        self.r.append_value(&l.reference);
        for (bld, v) in self.f.iter_mut().zip([b.central, b.p2_5, b.p97_5, l.reference_mtco2, diff, diff / l.reference_mtco2, z]) {
            bld.append_value(v);
        }
        self.inside.append_value(b.contains_95(l.reference_mtco2));
        self.base.append_value(l.base_year);
        self.scope.append_value(&l.reference_scope);
        self.difference.append_value(&l.scope_difference);
    }

    fn finish(mut self, computed_at: DateTime<Utc>) -> RecordBatch {
        let n = self.p.len();
        let names = ["estimate_mtco2", "p2_5", "p97_5", "reference_mtco2", "difference_mtco2", "relative_difference", "z_score"];
        // `year` is the partition column.
        let mut fields = vec![field("province", DataType::Utf8), field("sector", DataType::Utf8), field("reference", DataType::Utf8)];
        fields.extend(names.iter().map(|n| field(n, DataType::Float64)));
        fields.extend([
            field("inside_band_95", DataType::Boolean),
            field("base_year", DataType::Int32),
            field("reference_scope", DataType::Utf8),
            field("scope_difference", DataType::Utf8),
            field("computed_at", ts_type()),
        ]);
        let mut cols: Vec<ArrayRef> = vec![Arc::new(self.p.finish()), Arc::new(self.s.finish()), Arc::new(self.r.finish())];
        for b in self.f.iter_mut() {
            cols.push(Arc::new(b.finish()));
        }
        cols.push(Arc::new(self.inside.finish()));
        cols.push(Arc::new(self.base.finish()));
        cols.push(Arc::new(self.scope.finish()));
        cols.push(Arc::new(self.difference.finish()));
        cols.push(Arc::new(TimestampMicrosecondArray::from(vec![computed_at.timestamp_micros(); n]).with_timezone("UTC")));
        RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).expect("schema")
    }
}

/// A row's identity, ordered as the files are: by date, then province and sector.
type RowId = (NaiveDate, String, String);

fn row_id(r: &EstimateRow) -> RowId {
    (r.date, r.province.clone(), r.sector.clone())
}

/// Rows back from an `estimates` batch (with each row's `computed_at`, µs).
pub fn rows_from_batch(b: &RecordBatch) -> Result<Vec<(EstimateRow, i64)>, String> {
    fn col<'a, T: 'static>(b: &'a RecordBatch, n: &str) -> Result<&'a T, String> {
        b.column_by_name(n).and_then(|c| c.as_any().downcast_ref::<T>()).ok_or_else(|| format!("estimates: column `{n}` missing or mistyped"))
    }
    let date = col::<Date32Array>(b, "date")?;
    let s = |n| col::<StringArray>(b, n);
    let f = |n| col::<Float64Array>(b, n);
    let (prov, sec, src, prox, ver) = (s("province")?, s("sector")?, s("source_type")?, s("proxies")?, s("model_version")?);
    let (v, p2, p5, p50, p95, p97, cov) = (f("value_mtco2")?, f("p2_5")?, f("p5")?, f("p50")?, f("p95")?, f("p97_5")?, f("coverage")?);
    let through = s("data_through")?;
    let base = col::<Int32Array>(b, "base_year")?;
    let rev = col::<UInt32Array>(b, "revision")?;
    let at = col::<TimestampMicrosecondArray>(b, "computed_at")?;
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).expect("valid");
    (0..b.num_rows())
        .map(|i| {
            let source_type =
                SourceType::parse(src.value(i)).ok_or_else(|| format!("estimates: unknown source_type `{}`", src.value(i)))?;
            Ok((
                EstimateRow {
                    date: epoch + chrono::Duration::days(date.value(i) as i64),
                    province: prov.value(i).to_string(),
                    sector: sec.value(i).to_string(),
                    value_mtco2: v.value(i),
                    p2_5: p2.value(i),
                    p5: p5.value(i),
                    p50: p50.value(i),
                    p95: p95.value(i),
                    p97_5: p97.value(i),
                    source_type,
                    coverage: cov.value(i),
                    proxies: prox.value(i).to_string(),
                    data_through: through.is_valid(i).then(|| through.value(i).to_string()),
                    base_year: base.value(i),
                    model_version: ver.value(i).to_string(),
                    revision: rev.value(i),
                },
                at.value(i),
            ))
        })
        .collect()
}
