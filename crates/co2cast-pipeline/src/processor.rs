//! The stream processor: consume proxy topics, validate, keep keyed state, dead-letter what
//! is rejected, re-estimate the affected years and publish changed rows as new revisions,
//! then checkpoint offsets and state together.

use crate::checkpoint::{Checkpoint, CheckpointError, partition_key};
use crate::estimates::{EstimateRow, batch_to_json_lines, to_batch};
use chrono::{DateTime, Datelike, Duration, NaiveDate, Utc};
use co2cast_data::Dataset;
use co2cast_ingest::watermark::Arrival;
use co2cast_ingest::{PlausibilityCaps, Topic, ValidationRules, Watermarks, validate};
use co2cast_model::calendar::{DayFactorTable, HolidayCalendar, shanghai_day};
use co2cast_model::calibration::{Calibration, ModelConfig, calibrate};
use co2cast_model::estimate::{Band, EnsembleSettings, Estimator, SourceType};
use co2cast_model::proxy::ProxyPanel;
use co2cast_model::series::YearMonth;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

pub const DLQ_TOPIC: &str = "co2cast.dlq";
pub const ESTIMATES_TOPIC: &str = "co2cast.estimates.daily";

/// Settings of the processor. Durations and units are in the field names.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProcessorConfig {
    pub brokers: String,
    pub group_id: String,
    pub checkpoint_dir: PathBuf,
    /// Re-estimate, publish and checkpoint after this many messages (and whenever input is idle).
    pub checkpoint_every_messages: u64,
    pub poll_timeout_ms: u64,
    /// How long input must be quiet before the processor counts as idle.
    pub idle_after_ms: u64,
    pub allowed_lateness_s: i64,
    pub signal_idle_timeout_s: i64,
    pub future_tolerance_s: i64,
    pub ensemble_members: usize,
    pub ensemble_seed: u64,
    /// Reference "now" for validation of replayed history (RFC 3339); the wall clock when unset.
    pub now_override: Option<String>,
    /// Estimate only these provinces (ISO codes); all when unset.
    pub provinces: Option<Vec<String>>,
}

impl Default for ProcessorConfig {
    fn default() -> Self {
        ProcessorConfig {
            brokers: "localhost:9092".into(),
            group_id: "co2cast".into(),
            checkpoint_dir: PathBuf::from("state"),
            checkpoint_every_messages: 20_000,
            poll_timeout_ms: 100,
            idle_after_ms: 1_500,
            allowed_lateness_s: 3 * 86_400,
            signal_idle_timeout_s: 60,
            future_tolerance_s: 3_600,
            ensemble_members: 200,
            ensemble_seed: 20_190_101,
            now_override: None,
            provinces: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("Kafka ({context}): {source}")]
    Kafka { context: String, source: rdkafka::error::KafkaError },
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("calibration: {0}")]
    Calibration(String),
    #[error("configuration: {0}")]
    Config(String),
}

fn kafka(context: &str) -> impl Fn(rdkafka::error::KafkaError) -> PipelineError + '_ {
    move |source| PipelineError::Kafka { context: context.to_string(), source }
}

/// What a run did, for the summary and for tests.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub counters: crate::checkpoint::Counters,
    pub national: Vec<NationalYear>,
    pub checkpoints: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct NationalYear {
    pub year: i32,
    pub days: usize,
    pub band: Band,
}

pub struct Processor {
    cfg: ProcessorConfig,
    consumer: BaseConsumer,
    producer: BaseProducer,
    ckpt: Checkpoint,
    history: Dataset,
    caps: PlausibilityCaps,
    rules: ValidationRules,
    calibrations: BTreeMap<(i32, u32), Calibration>,
    dirty_years: BTreeSet<i32>,
    since_flush: u64,
    national: BTreeMap<i32, NationalYear>,
    received_counter: Option<Arc<std::sync::atomic::AtomicU64>>,
    input_complete: Option<Arc<AtomicBool>>,
}

impl Processor {
    pub fn new(cfg: ProcessorConfig, history: Dataset) -> Result<Processor, PipelineError> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &cfg.brokers)
            .set("group.id", &cfg.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .create()
            .map_err(kafka("create consumer"))?;
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", &cfg.brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("queue.buffering.max.messages", "200000")
            .create()
            .map_err(kafka("create producer"))?;
        let watermarks = Watermarks::new(Duration::seconds(cfg.allowed_lateness_s), Duration::seconds(cfg.signal_idle_timeout_s));
        let ckpt = Checkpoint::load(&cfg.checkpoint_dir)?.unwrap_or_else(|| Checkpoint::empty(watermarks));
        let caps = PlausibilityCaps::from_history(&history.proxies);
        let rules = ValidationRules { future_tolerance: Duration::seconds(cfg.future_tolerance_s), ..ValidationRules::default() };
        let mut p = Processor {
            cfg,
            consumer,
            producer,
            ckpt,
            history,
            caps,
            rules,
            calibrations: BTreeMap::new(),
            dirty_years: BTreeSet::new(),
            since_flush: 0,
            national: BTreeMap::new(),
            received_counter: None,
            input_complete: None,
        };
        p.assign()?;
        Ok(p)
    }

    /// Manual assignment of every partition of the proxy topics, at the checkpointed offsets.
    /// The source of truth for offsets is the checkpoint; commits to Kafka are only for lag
    /// monitoring.
    fn assign(&mut self) -> Result<(), PipelineError> {
        let mut tpl = TopicPartitionList::new();
        for t in Topic::ALL {
            let md = self
                .consumer
                .fetch_metadata(Some(t.name()), std::time::Duration::from_secs(10))
                .map_err(kafka("fetch metadata"))?;
            for topic in md.topics() {
                for part in topic.partitions() {
                    let key = partition_key(t.name(), part.id());
                    let offset = match self.ckpt.offsets.get(&key) {
                        Some(o) => Offset::Offset(*o),
                        None => Offset::Beginning,
                    };
                    tpl.add_partition_offset(t.name(), part.id(), offset).map_err(kafka("assign"))?;
                }
            }
        }
        if tpl.count() == 0 {
            return Err(PipelineError::Config("no partitions found for the proxy topics".into()));
        }
        self.consumer.assign(&tpl).map_err(kafka("assign"))?;
        Ok(())
    }

    fn now(&self) -> DateTime<Utc> {
        self.cfg
            .now_override
            .as_deref()
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_else(Utc::now)
    }

    /// Counts every message received (for pacing a replay and progress bars).
    pub fn with_received_counter(mut self, c: Arc<std::sync::atomic::AtomicU64>) -> Self {
        c.store(self.ckpt.counters.received, Ordering::Relaxed);
        self.received_counter = Some(c);
        self
    }

    /// With `exit_when_idle`, also wait for this flag (set when a replay has produced
    /// everything), so a pause between batches is not mistaken for the end of input.
    pub fn with_input_complete(mut self, f: Arc<AtomicBool>) -> Self {
        self.input_complete = Some(f);
        self
    }

    pub fn counters(&self) -> &crate::checkpoint::Counters {
        &self.ckpt.counters
    }

    /// Consumes until `stop` is set, or, with `exit_when_idle`, until every assigned partition
    /// is read to its end and input has been quiet for `idle_after_ms`.
    pub fn run(
        &mut self,
        stop: Arc<AtomicBool>,
        exit_when_idle: bool,
        mut on_progress: impl FnMut(&crate::checkpoint::Counters),
    ) -> Result<RunSummary, PipelineError> {
        let poll = std::time::Duration::from_millis(self.cfg.poll_timeout_ms);
        let mut last_message = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            match self.consumer.poll(poll) {
                Some(Ok(m)) => {
                    let topic = m.topic().to_string();
                    let (partition, offset) = (m.partition(), m.offset());
                    let key = m.key().map(|k| k.to_vec());
                    let payload = m.payload().map(|p| p.to_vec());
                    drop(m);
                    self.handle(&topic, partition, offset, key.as_deref(), payload.as_deref())?;
                    last_message = Instant::now();
                    if self.since_flush >= self.cfg.checkpoint_every_messages {
                        self.flush()?;
                        on_progress(&self.ckpt.counters);
                    }
                }
                Some(Err(e)) => {
                    tracing::warn!(message = "Kafka consumer error.", error = %e);
                }
                None => {
                    let idle = last_message.elapsed() >= std::time::Duration::from_millis(self.cfg.idle_after_ms);
                    if self.since_flush > 0 && idle {
                        self.flush()?;
                        on_progress(&self.ckpt.counters);
                    }
                    let complete = self.input_complete.as_ref().is_none_or(|f| f.load(Ordering::Relaxed));
                    if exit_when_idle && idle && complete && self.caught_up()? {
                        break;
                    }
                }
            }
        }
        if self.since_flush > 0 {
            self.flush()?;
        }
        Ok(RunSummary {
            counters: self.ckpt.counters.clone(),
            national: self.national.values().cloned().collect(),
            checkpoints: self.ckpt.sequence,
        })
    }

    /// Every assigned partition has been read to its high watermark.
    fn caught_up(&self) -> Result<bool, PipelineError> {
        let assignment = self.consumer.assignment().map_err(kafka("assignment"))?;
        for e in assignment.elements() {
            let (_, high) = self
                .consumer
                .fetch_watermarks(e.topic(), e.partition(), std::time::Duration::from_secs(5))
                .map_err(kafka("fetch watermarks"))?;
            let next = self.ckpt.offsets.get(&partition_key(e.topic(), e.partition())).copied().unwrap_or(0);
            if next < high {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn handle(&mut self, topic: &str, partition: i32, offset: i64, key: Option<&[u8]>, payload: Option<&[u8]>) -> Result<(), PipelineError> {
        let now = self.now();
        let c = &mut self.ckpt.counters;
        c.received += 1;
        if let Some(rc) = &self.received_counter {
            rc.store(c.received, Ordering::Relaxed);
        }
        let result = match payload {
            None => Err(co2cast_ingest::Reject { code: co2cast_ingest::RejectCode::MalformedJson, reason: "empty payload".into() }),
            Some(p) => validate(topic, key, p, now, &self.caps, &self.rules),
        };
        match result {
            Ok(v) => {
                c.accepted += 1;
                let up = self.ckpt.state.upsert(&v);
                match up {
                    co2cast_ingest::Upsert::Revised { .. } => c.revisions += 1,
                    co2cast_ingest::Upsert::Duplicate | co2cast_ingest::Upsert::Stale => c.accepted_unchanged += 1,
                    co2cast_ingest::Upsert::Inserted => {}
                }
                if let Arrival::Late { .. } =
                    self.ckpt.watermarks.observe(&co2cast_ingest::watermark::stream_key(v.signal, v.granularity), v.period_end(), now)
                {
                    c.late += 1;
                }
                if up.changed() {
                    let y = shanghai_day(&v.period_start).year();
                    // A base-year value changes the ratios of the following year too.
                    self.dirty_years.insert(y);
                    self.dirty_years.insert(y + 1);
                }
            }
            Err(r) => {
                c.dead_lettered += 1;
                *c.dead_lettered_by_code.entry(r.code.as_str().to_string()).or_insert(0) += 1;
                let headers = OwnedHeaders::new()
                    .insert(Header { key: "source_topic", value: Some(topic) })
                    .insert(Header { key: "source_partition", value: Some(&partition.to_string()) })
                    .insert(Header { key: "source_offset", value: Some(&offset.to_string()) })
                    .insert(Header { key: "error_code", value: Some(r.code.as_str()) })
                    .insert(Header { key: "error_reason", value: Some(&r.reason) });
                let mut rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(DLQ_TOPIC).payload(payload.unwrap_or(&[])).headers(headers);
                if let Some(k) = key {
                    rec = rec.key(k);
                }
                self.send(rec)?;
            }
        }
        self.ckpt.offsets.insert(partition_key(topic, partition), offset + 1);
        self.since_flush += 1;
        Ok(())
    }

    fn send(&self, mut rec: BaseRecord<'_, [u8], [u8]>) -> Result<(), PipelineError> {
        loop {
            match self.producer.send(rec) {
                Ok(()) => return Ok(()),
                Err((rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull), r)) => {
                    // Back-pressure: let the producer drain.
                    self.producer.poll(std::time::Duration::from_millis(20));
                    rec = r;
                }
                Err((e, _)) => return Err(PipelineError::Kafka { context: "produce".into(), source: e }),
            }
        }
    }

    /// Re-estimates dirty years, publishes changed rows, then checkpoints offsets and state.
    pub fn flush(&mut self) -> Result<(), PipelineError> {
        let years: Vec<i32> = std::mem::take(&mut self.dirty_years).into_iter().collect();
        let live = self.ckpt.state.to_panel();
        for year in years {
            self.estimate_year(year, &live)?;
        }
        self.producer.flush(std::time::Duration::from_secs(30)).map_err(kafka("flush"))?;
        self.ckpt.save(&self.cfg.checkpoint_dir)?;
        // Offsets to Kafka are for lag monitoring only; failures are not fatal.
        let mut tpl = TopicPartitionList::new();
        for (k, o) in &self.ckpt.offsets {
            if let Some((t, p)) = k.rsplit_once('/')
                && let Ok(p) = p.parse::<i32>()
            {
                let _ = tpl.add_partition_offset(t, p, Offset::Offset(*o));
            }
        }
        if let Err(e) = self.consumer.commit(&tpl, rdkafka::consumer::CommitMode::Async) {
            tracing::debug!(message = "Offset commit for lag monitoring failed.", error = %e);
        }
        self.since_flush = 0;
        Ok(())
    }

    fn estimate_year(&mut self, year: i32, live: &ProxyPanel) -> Result<(), PipelineError> {
        let inv_years = self.history.inventory.years();
        let Some(&last_inv) = inv_years.iter().filter(|y| **y < year).max() else { return Ok(()) };
        // Days up to the furthest signal watermark: later days have no data at all yet.
        let Some(last_event) = self.ckpt.watermarks.signals.values().map(|w| w.max_event_end).max() else { return Ok(()) };
        let last_day = shanghai_day(&(last_event - Duration::seconds(1)));
        if last_day.year() < year {
            return Ok(());
        }
        let through = if last_day.year() > year { NaiveDate::from_ymd_opt(year, 12, 31).expect("valid") } else { last_day };
        let horizon = (year - last_inv) as u32;
        let key = (last_inv, horizon);
        if !self.calibrations.contains_key(&key) {
            let cfg = ModelConfig::default();
            let cal = calibrate(&self.history.inventory, &self.history.proxies, last_inv, horizon, &cfg)
                .map_err(|e| PipelineError::Calibration(e.to_string()))?;
            self.calibrations.insert(key, cal);
        }
        let cal = &self.calibrations[&key];
        // Reference history up to the base year, overlaid by everything received live.
        let mut panel = self.history.proxies.truncated(YearMonth::new(last_inv, 12));
        for (s, sc, m, v) in live.iter_monthly() {
            panel.set_monthly(s, sc, m, v);
        }
        for (s, sc, d, v) in live.iter_daily() {
            panel.set_daily(s, sc, d, v);
        }
        let base_inv = self.history.inventory.up_to(last_inv);
        let (hc, df) = (HolidayCalendar::official(), DayFactorTable::bundled());
        let est = Estimator { calibration: cal, inventory: &base_inv, proxies: &panel, calendar: &hc, day_factors: &df };
        let months: Vec<YearMonth> = (1..=through.month()).map(|m| YearMonth::new(year, m)).collect();
        let settings = EnsembleSettings { members: self.cfg.ensemble_members, seed: self.cfg.ensemble_seed };
        let wanted: Option<Vec<co2cast_model::Province>> = self
            .cfg
            .provinces
            .as_ref()
            .map(|v| v.iter().filter_map(|p| co2cast_model::Province::parse_lenient(p)).collect());
        let rows: Vec<_> = est
            .all_rows(&months, settings)
            .into_iter()
            .filter(|r| wanted.as_ref().is_none_or(|w| w.contains(&r.province)))
            .collect();
        let mut out = Vec::new();
        let ndays = rows.first().map(|r| r.days.iter().filter(|d| **d <= through).count()).unwrap_or(0);
        let mut nat_central = vec![0.0; ndays];
        let mut nat_members = vec![vec![0.0; ndays]; settings.members];
        let mut nat_source = vec![SourceType::Proxy; ndays];
        let mut nat_cov = vec![(0.0, 0.0); ndays];
        for r in &rows {
            for (i, d) in r.daily_estimates(last_inv).into_iter().enumerate().take(ndays) {
                nat_central[i] += d.value_mtco2;
                nat_source[i] = nat_source[i].max(d.source_type);
                nat_cov[i].0 += d.coverage * d.value_mtco2;
                nat_cov[i].1 += d.value_mtco2;
                out.push(EstimateRow::from_daily(&d));
            }
            for (acc, m) in nat_members.iter_mut().zip(&r.members) {
                for (x, y) in acc.iter_mut().zip(m) {
                    *x += y;
                }
            }
        }
        let days: Vec<NaiveDate> = rows.first().map(|r| r.days[..ndays].to_vec()).unwrap_or_default();
        for (i, d) in days.iter().enumerate() {
            let col: Vec<f64> = nat_members.iter().map(|m| m[i]).collect();
            let cov = if nat_cov[i].1 > 0.0 { nat_cov[i].0 / nat_cov[i].1 } else { 0.0 };
            out.push(EstimateRow::national(*d, &Band::from_members(nat_central[i], &col), nat_source[i], cov, last_inv));
        }
        let annual_members: Vec<f64> = nat_members.iter().map(|m| m.iter().sum()).collect();
        self.national.insert(
            year,
            NationalYear { year, days: ndays, band: Band::from_members(nat_central.iter().sum(), &annual_members) },
        );
        let changed = self.ckpt.published.diff(out);
        if changed.is_empty() {
            return Ok(());
        }
        let c = &mut self.ckpt.counters;
        c.estimates_published += changed.len() as u64;
        c.estimate_revisions_published += changed.iter().filter(|r| r.revision > 0).count() as u64;
        let keys: Vec<String> = changed.iter().map(|r| r.key()).collect();
        let batch = to_batch(&changed);
        for (k, json) in keys.iter().zip(batch_to_json_lines(&batch)) {
            let rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(ESTIMATES_TOPIC).key(k.as_bytes()).payload(&json);
            self.send(rec)?;
        }
        Ok(())
    }
}

/// Reads DLQ headers back (for tests and tools).
pub fn header_map<H: Headers>(h: &H) -> BTreeMap<String, String> {
    h.iter()
        .map(|x| (x.key.to_string(), x.value.map(|v| String::from_utf8_lossy(v).to_string()).unwrap_or_default()))
        .collect()
}
