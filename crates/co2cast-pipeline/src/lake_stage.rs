//! The lake writer (`co2cast run --role lake`): the one process that writes the Parquet lake
//! when the pipeline is scaled out. It reads the published estimates (`co2cast.estimates.daily`,
//! provincial rows from every province member and national rows from the national stage) and
//! appends them, each with the time of its own vintage, to `estimates` and `estimates_latest`.
//!
//! Exactly-once: each flush is one lake commit per vintage and then a checkpoint of offsets
//! and the commit number; on start the lake drops commits after the checkpointed one, and the
//! messages after the checkpointed offsets are read again.
//!
//! Not written in this role (they need the processor's in-memory state): the per-sector
//! `estimate_ensemble`, the comparison tables, grid intensity and the `proxies` changelog.

use crate::error::PipelineError;
use crate::estimates::EstimateRow;
use chrono::{DateTime, Utc};
use co2cast_data::Dataset;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

pub const LAKE_CHECKPOINT_VERSION: u32 = 1;
const CHECKPOINT_FILE: &str = "lake-checkpoint.json";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LakeCounters {
    pub received: u64,
    /// Rows written to `estimates`.
    pub written: u64,
    /// Messages that are not estimate rows (kept out of the lake, logged and counted).
    pub rejected: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LakeCheckpoint {
    pub version: u32,
    /// Next offset to read, per partition of the estimates topic.
    pub offsets: BTreeMap<i32, i64>,
    /// The lake commit this checkpoint covers.
    pub sequence: u64,
    pub lineage: String,
    pub counters: LakeCounters,
}

pub struct LakeStage {
    cfg: crate::ProcessorConfig,
    consumer: Arc<BaseConsumer>,
    lake: crate::lake::LakeSink,
    ckpt: LakeCheckpoint,
    next: BTreeMap<i32, i64>,
    /// Rows read since the last flush, with their vintage (µs).
    buffer: Vec<(EstimateRow, i64)>,
    _locks: Vec<std::fs::File>,
}

impl LakeStage {
    pub fn new(cfg: crate::ProcessorConfig, history: &Dataset) -> Result<LakeStage, PipelineError> {
        cfg.validate().map_err(PipelineError::Config)?;
        let Some(dir) = cfg.lake_dir.clone() else { return Err(PipelineError::Config("the lake role needs a lake (--lake)".into())) };
        let locks = vec![
            crate::processor::writer_lock(&cfg.checkpoint_dir, "LOCK", "state directory")?,
            crate::processor::writer_lock(&dir, "_writer.lock", "lake")?,
        ];
        let ckpt = crate::checkpoint::load_versioned::<LakeCheckpoint>(&cfg.checkpoint_dir.join(CHECKPOINT_FILE), LAKE_CHECKPOINT_VERSION)?.unwrap_or_else(|| LakeCheckpoint {
            version: LAKE_CHECKPOINT_VERSION,
            offsets: BTreeMap::new(),
            sequence: 0,
            lineage: crate::checkpoint::new_lineage(),
            counters: LakeCounters::default(),
        });
        let mut lake = crate::lake::LakeSink::open(&dir, ckpt.sequence, &ckpt.lineage, None)?;
        lake.write_inventory(&history.inventory, ckpt.sequence)?;
        let consumer = crate::source::assigned_reader(&cfg.brokers, &format!("{}.lake", cfg.group_id), cfg.fetch_wait_max_ms)?;
        co2cast_metrics::enable(co2cast_metrics::Role::Processor, env!("CARGO_PKG_VERSION"), co2cast_model::estimate::MODEL_VERSION);
        Ok(LakeStage { next: ckpt.offsets.clone(), cfg, consumer: Arc::new(consumer), lake, ckpt, buffer: Vec::new(), _locks: locks })
    }

    fn assign(&mut self, stop: &AtomicBool) -> Result<bool, PipelineError> {
        let topic = self.cfg.topics.estimates_daily.clone();
        let mut backoff = crate::retry::Backoff::new(Duration::from_millis(self.cfg.broker_retry_max_backoff_ms.max(100)));
        let partitions = loop {
            match self.consumer.fetch_metadata(Some(&topic), Duration::from_secs(5)) {
                Ok(md) => {
                    let ps: Vec<i32> = md.topics().iter().filter(|t| t.error().is_none()).flat_map(|t| t.partitions().iter().map(|p| p.id())).collect();
                    if !ps.is_empty() {
                        break ps;
                    }
                }
                Err(e) => {
                    co2cast_metrics::events::BrokerRequestFailed { operation: "metadata", error: &e, domain: co2cast_metrics::ErrorDomain::External, retry_in: None, attempt: backoff.attempt }.emit();
                }
            }
            if !crate::retry::sleep_unless_stopped(backoff.next_delay(), stop) {
                return Ok(false);
            }
        };
        let mut tpl = TopicPartitionList::new();
        for p in partitions {
            let at = self.ckpt.offsets.get(&p).map_or(Offset::Beginning, |o| Offset::Offset(*o));
            tpl.add_partition_offset(&topic, p, at).map_err(|source| PipelineError::Kafka { context: "assign".into(), source })?;
            self.next.entry(p).or_insert(0);
        }
        self.consumer.assign(&tpl).map_err(|source| PipelineError::Kafka { context: "assign".into(), source })?;
        co2cast_metrics::state::set_broker_up(true);
        co2cast_metrics::health::set_check("processor", || Ok(()));
        Ok(true)
    }

    /// Consumes until `stop`, or with `exit_when_idle` until read to the end and quiet.
    pub fn run(&mut self, stop: Arc<AtomicBool>, exit_when_idle: bool) -> Result<LakeCounters, PipelineError> {
        if !self.assign(&stop)? {
            return Ok(self.ckpt.counters.clone());
        }
        let ms = Duration::from_millis;
        let consumer = self.consumer.clone();
        let mut last_message = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            match consumer.poll(ms(self.cfg.poll_timeout_ms.max(1))) {
                Some(Ok(m)) => {
                    self.handle(m.partition(), m.offset(), m.key(), m.payload());
                    last_message = Instant::now();
                }
                Some(Err(e)) => {
                    co2cast_metrics::events::BrokerRequestFailed { operation: "consume", error: &e, domain: co2cast_metrics::ErrorDomain::External, retry_in: None, attempt: 0 }.emit();
                }
                None => {}
            }
            let quiet = last_message.elapsed() >= ms(self.cfg.flush_linger_ms);
            if self.buffer.len() as u64 >= self.cfg.checkpoint_every_messages || (quiet && self.next != self.ckpt.offsets) {
                self.flush()?;
            }
            // Idle once something was read: a writer started beside the stages waits for them.
            let read_any = self.next.values().any(|o| *o > 0);
            if exit_when_idle && read_any && last_message.elapsed() >= ms(self.cfg.idle_after_ms) && self.next == self.ckpt.offsets && self.caught_up() {
                break;
            }
        }
        if self.next != self.ckpt.offsets {
            self.flush()?;
        }
        Ok(self.ckpt.counters.clone())
    }

    fn caught_up(&self) -> bool {
        self.next.iter().all(|(p, next)| {
            self.consumer.fetch_watermarks(&self.cfg.topics.estimates_daily, *p, Duration::from_secs(5)).is_ok_and(|(_, high)| *next >= high)
        })
    }

    fn handle(&mut self, partition: i32, offset: i64, key: Option<&[u8]>, payload: Option<&[u8]>) {
        self.next.insert(partition, offset + 1);
        self.ckpt.counters.received += 1;
        let row = payload.ok_or_else(|| "empty payload".to_string()).and_then(row_from_json).and_then(|(r, at)| {
            check_row(&r, key)?;
            Ok((r, at))
        });
        match row {
            Ok(r) => self.buffer.push(r),
            Err(e) => {
                self.ckpt.counters.rejected += 1;
                co2cast_metrics::events::LakeWriterRejected { error: &e, topic: &self.cfg.topics.estimates_daily, partition, offset }.emit();
            }
        }
    }

    /// One lake commit per vintage in the buffer, then the checkpoint.
    fn flush(&mut self) -> Result<(), PipelineError> {
        let mut by_vintage: BTreeMap<i64, Vec<EstimateRow>> = BTreeMap::new();
        for (r, at) in std::mem::take(&mut self.buffer) {
            by_vintage.entry(at).or_default().push(r);
        }
        for (at, rows) in by_vintage {
            let at = DateTime::<Utc>::from_timestamp_micros(at).unwrap_or_else(Utc::now);
            self.ckpt.sequence += 1;
            self.lake.published(&rows, at, self.ckpt.sequence);
            crate::sink::Sink::barrier(&mut self.lake, self.ckpt.sequence)?;
            self.ckpt.counters.written += rows.len() as u64;
        }
        self.ckpt.offsets = self.next.clone();
        crate::checkpoint::save_atomically(&self.cfg.checkpoint_dir, CHECKPOINT_FILE, &self.ckpt)?;
        Ok(())
    }
}

/// What the lake relies on: the message key is the row's, the scope and sector are known
/// (`CN` with `all`), the values are finite.
fn check_row(r: &EstimateRow, key: Option<&[u8]>) -> Result<(), String> {
    let k = r.key();
    if key != Some(k.as_bytes()) {
        return Err(format!("key `{}` is not the row's ({k})", String::from_utf8_lossy(key.unwrap_or_default())));
    }
    let parsed: crate::estimates::RowKey = k.parse()?;
    if (parsed.scope == co2cast_model::proxy::Scope::National) != parsed.sector.is_none() {
        return Err(format!("{k}: national rows and only they are of sector `all`"));
    }
    let values = [r.value_mtco2, r.p2_5, r.p5, r.p50, r.p95, r.p97_5, r.coverage];
    if !values.iter().all(|x| x.is_finite()) || !(0.0..=1.0).contains(&r.coverage) {
        return Err(format!("{k}: a value is not finite, or coverage is outside 0–1"));
    }
    Ok(())
}

/// An estimate row and its vintage (µs) from a message of `co2cast.estimates.daily`, read with
/// the topic's Arrow schema.
pub fn row_from_json(payload: &[u8]) -> Result<(EstimateRow, i64), String> {
    let mut reader = arrow::json::ReaderBuilder::new(crate::estimates::schema()).build(std::io::Cursor::new(payload)).map_err(|e| e.to_string())?;
    let batch = reader.next().ok_or("no row")?.map_err(|e| e.to_string())?;
    let mut rows = crate::lake::rows_from_batch(&batch)?;
    if rows.len() != 1 {
        return Err(format!("{} rows in one message", rows.len()));
    }
    Ok(rows.remove(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_published_message_reads_back_as_its_row_and_vintage() {
        let row = EstimateRow {
            date: chrono::NaiveDate::from_ymd_opt(2019, 5, 6).unwrap(),
            province: "CN-HE".into(),
            sector: "power".into(),
            value_mtco2: 0.123456789012345,
            p2_5: 0.1,
            p5: 0.11,
            p50: 0.12,
            p95: 0.13,
            p97_5: 0.14,
            source_type: co2cast_model::estimate::SourceType::Nowcast,
            coverage: 0.75,
            proxies: "thermal_generation".into(),
            data_through: None,
            base_year: 2017,
            model_version: "m".into(),
            revision: 3,
        };
        let at = DateTime::<Utc>::from_timestamp_micros(1_700_000_000_123_456).unwrap();
        let line = crate::estimates::batch_to_json_lines(&crate::estimates::to_batch(std::slice::from_ref(&row), at)).unwrap().remove(0);
        assert_eq!(row_from_json(&line), Ok((row.clone(), at.timestamp_micros())));
        assert_eq!(check_row(&row, Some(b"CN-HE/power/2019-05-06")), Ok(()));
        assert!(check_row(&row, Some(b"CN-HE/power/2019-05-07")).is_err(), "a key that is not the row's");
        assert!(check_row(&row, None).is_err());
        let mut national_power = row.clone();
        national_power.province = "CN".into();
        assert!(check_row(&national_power, Some(b"CN/power/2019-05-06")).is_err());
        let mut unknown = row.clone();
        unknown.province = "CN-ZZ".into();
        assert!(check_row(&unknown, Some(b"CN-ZZ/power/2019-05-06")).is_err());
        assert!(row_from_json(b"{\"date\":\"2019-05-06\"}").is_err());
        assert!(row_from_json(b"not json").is_err());
    }
}
