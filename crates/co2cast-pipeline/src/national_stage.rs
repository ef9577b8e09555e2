//! The national stage (`co2cast run --role national`): reads the province stage's member sums
//! (`co2cast.ensemble.province`) and publishes `CN/all/<date>` rows to the estimates topic,
//! summed member by member over provinces, once every province expected that day has
//! reported. While input is quiet, a day still missing provinces is published from those that
//! reported, with its coverage scaled by the share of provinces in and `source_type` at least
//! `gap_filled`; the complete day revises it.
//!
//! Exactly-once: the sums are rebuilt on start by reading the (compacted) topic from its
//! beginning up to the checkpointed offsets, publishing nothing; from there on, rows are
//! diffed against the checkpointed revisions and published before the checkpoint is written.

use crate::checkpoint::NationalYear;
use crate::error::PipelineError;
use crate::estimates::{EstimateRow, Published, Revisioned};
use crate::province_ensemble::ProvinceDayEnsemble;
use crate::processor::ProcessorConfig;
use chrono::{Datelike, NaiveDate, Utc};
use co2cast_data::Dataset;
use co2cast_model::calibration::{ModelConfig, calibrate};
use co2cast_model::domain::{Province, Sector};
use co2cast_model::estimate::{Band, SourceType};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::BaseRecord;
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

pub const NATIONAL_CHECKPOINT_VERSION: u32 = 1;
const CHECKPOINT_FILE: &str = "national-checkpoint.json";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NationalCounters {
    /// Province-day messages read past the checkpoint (not those of a rebuild).
    pub received: u64,
    pub accepted: u64,
    pub dead_lettered: u64,
    pub estimates_published: u64,
    pub estimate_revisions_published: u64,
    /// Of `estimates_published`, days published before every province had reported.
    pub incomplete_days_published: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NationalCheckpoint {
    pub version: u32,
    /// Next offset to read, per partition of the member-sums topic.
    pub offsets: BTreeMap<i32, i64>,
    pub published: Published,
    pub national: BTreeMap<i32, NationalYear>,
    pub counters: NationalCounters,
    pub sequence: u64,
    /// Settings of the estimates (as the province members'); resumed only with the same.
    pub settings: String,
}

/// What a run of the national stage did.
#[derive(Debug, Clone, Serialize)]
pub struct NationalSummary {
    pub counters: NationalCounters,
    pub national: Vec<NationalYear>,
    pub checkpoints: u64,
    /// Days whose newest publication still lacks provinces.
    pub incomplete_days: usize,
    /// The first of them, with the provinces it lacks.
    pub first_incomplete: Option<(NaiveDate, Vec<String>)>,
}

pub struct NationalStage {
    cfg: ProcessorConfig,
    consumer: Arc<BaseConsumer>,
    kafka: crate::kafka_sink::KafkaSink,
    ckpt: NationalCheckpoint,
    history: Dataset,
    model: ModelConfig,
    /// Newest member sums per day and province.
    sums: BTreeMap<NaiveDate, BTreeMap<Province, ProvinceDayEnsemble>>,
    /// Days whose sums changed and are not published as complete yet.
    pending: BTreeSet<NaiveDate>,
    /// Days last published before every province had reported.
    incomplete: BTreeSet<NaiveDate>,
    /// Next offset read, per partition (the checkpoint's once written).
    next: BTreeMap<i32, i64>,
    /// Below these offsets, messages rebuild what the checkpoint already published.
    rebuild_until: BTreeMap<i32, i64>,
    /// Provinces with an estimate, per base year (those the calibration scales).
    expected: BTreeMap<i32, BTreeSet<Province>>,
    since_flush: u64,
    /// Of the settings the estimates depend on (sums made with others are refused).
    settings_fingerprint: String,
    stop: Arc<AtomicBool>,
    _lock: std::fs::File,
}

impl NationalStage {
    pub fn new(cfg: ProcessorConfig, history: Dataset) -> Result<NationalStage, PipelineError> {
        cfg.validate().map_err(PipelineError::Config)?;
        if cfg.lake_dir.is_some() {
            return Err(PipelineError::Config("the national stage does not write the lake: run one `co2cast run --role lake` for it".into()));
        }
        let model = crate::processor::load_model_config(cfg.model_config.as_deref())?;
        let settings = crate::processor::estimate_settings_with_model(&cfg, &model)?;
        let lock = crate::processor::writer_lock(&cfg.checkpoint_dir, "LOCK", "state directory")?;
        let path = cfg.checkpoint_dir.join(CHECKPOINT_FILE);
        let ckpt = crate::checkpoint::load_versioned::<NationalCheckpoint>(&path, NATIONAL_CHECKPOINT_VERSION)?.unwrap_or_else(|| NationalCheckpoint {
            version: NATIONAL_CHECKPOINT_VERSION,
            offsets: BTreeMap::new(),
            published: Published::default(),
            national: BTreeMap::new(),
            counters: NationalCounters::default(),
            sequence: 0,
            settings: settings.clone(),
        });
        if ckpt.settings != settings {
            return Err(PipelineError::Config(format!(
                "the state in {} was made with other settings ({}); this run has ({settings})",
                cfg.checkpoint_dir.display(),
                ckpt.settings
            )));
        }
        let consumer = Arc::new(crate::source::assigned_reader(&cfg.brokers, &format!("{}.national", cfg.group_id), cfg.fetch_wait_max_ms)?);
        let kafka = crate::kafka_sink::KafkaSink::new(&cfg.brokers, cfg.broker_retry_max_backoff_ms, None)?;
        co2cast_metrics::enable(co2cast_metrics::Role::Processor, env!("CARGO_PKG_VERSION"), co2cast_model::estimate::MODEL_VERSION);
        Ok(NationalStage {
            rebuild_until: ckpt.offsets.clone(),
            cfg,
            consumer,
            kafka,
            ckpt,
            history,
            model,
            sums: BTreeMap::new(),
            pending: BTreeSet::new(),
            incomplete: BTreeSet::new(),
            next: BTreeMap::new(),
            expected: BTreeMap::new(),
            since_flush: 0,
            settings_fingerprint: crate::province_ensemble::settings_fingerprint(&settings),
            stop: Arc::new(AtomicBool::new(false)),
            _lock: lock,
        })
    }

    /// Reads every partition of the member-sums topic from its beginning (retried with
    /// backoff while the brokers are away). Returns false if stopped first.
    fn assign(&mut self) -> Result<bool, PipelineError> {
        let topic = self.cfg.topics.ensemble_province.clone();
        let mut backoff = crate::retry::Backoff::new(Duration::from_millis(self.cfg.broker_retry_max_backoff_ms.max(100)));
        let partitions = loop {
            let found = self
                .consumer
                .fetch_metadata(Some(&topic), Duration::from_secs(5))
                .map(|md| md.topics().iter().filter(|t| t.error().is_none()).flat_map(|t| t.partitions().iter().map(|p| p.id())).collect::<Vec<i32>>());
            match found {
                Ok(ps) if !ps.is_empty() => break ps,
                other => {
                    let d = backoff.next_delay();
                    let error = match other {
                        Err(e) => e.to_string(),
                        Ok(_) => format!("no partitions found for {topic}"),
                    };
                    co2cast_metrics::events::BrokerRequestFailed { operation: "metadata", error: &error, domain: co2cast_metrics::ErrorDomain::External, retry_in: Some(d), attempt: backoff.attempt }.emit();
                    if !crate::retry::sleep_unless_stopped(d, &self.stop) {
                        return Ok(false);
                    }
                }
            }
        };
        let mut tpl = TopicPartitionList::new();
        for p in &partitions {
            // The sums are rebuilt from the beginning: a log that lost its start cannot give them.
            if let Ok((low, high)) = self.consumer.fetch_watermarks(&topic, *p, Duration::from_secs(5)) {
                if low > 0 {
                    return Err(PipelineError::Config(format!(
                        "{topic}/{p} starts at offset {low}: the broker dropped member sums (a capped log, or retention instead of compaction), so the national sums cannot be rebuilt; give the topic cleanup.policy=compact"
                    )));
                }
                if let Some(o) = self.ckpt.offsets.get(p)
                    && high < *o
                {
                    return Err(PipelineError::Config(format!(
                        "{topic}/{p}: the log ends at offset {high}, before the checkpointed offset {o}: the topic was recreated; start on a new state directory"
                    )));
                }
            }
            tpl.add_partition_offset(&topic, *p, Offset::Beginning).map_err(|source| PipelineError::Kafka { context: "assign".into(), source })?;
            self.next.insert(*p, 0);
        }
        self.consumer.assign(&tpl).map_err(|source| PipelineError::Kafka { context: "assign".into(), source })?;
        co2cast_metrics::state::set_broker_up(true);
        co2cast_metrics::health::set_check("processor", || Ok(()));
        Ok(true)
    }

    /// Today in Asia/Shanghai (`now_override` when set): no estimate runs past it.
    fn today(&self) -> NaiveDate {
        co2cast_model::calendar::shanghai_day(&self.cfg.now())
    }

    fn rebuilding(&self) -> bool {
        self.rebuild_until.iter().any(|(p, until)| self.next.get(p).copied().unwrap_or(0) < *until)
    }

    /// Consumes until `stop` is set, or, with `exit_when_idle`, until the topic is read to its
    /// end and input has been quiet for `idle_after_ms`.
    pub fn run(&mut self, stop: Arc<AtomicBool>, exit_when_idle: bool) -> Result<NationalSummary, PipelineError> {
        self.stop = stop.clone();
        self.kafka.set_stop(stop.clone());
        if !self.assign()? {
            return Ok(self.summary());
        }
        let ms = Duration::from_millis;
        let mut last_message = Instant::now();
        let consumer = self.consumer.clone();
        while !stop.load(Ordering::Relaxed) {
            match consumer.poll(ms(self.cfg.poll_timeout_ms.max(1))) {
                Some(Ok(m)) => {
                    self.handle(m.partition(), m.offset(), m.key(), m.payload())?;
                    last_message = Instant::now();
                }
                Some(Err(e)) => {
                    co2cast_metrics::events::BrokerRequestFailed { operation: "consume", error: &e, domain: co2cast_metrics::ErrorDomain::External, retry_in: None, attempt: 0 }.emit();
                }
                None => {}
            }
            if self.rebuilding() {
                continue;
            }
            let quiet = last_message.elapsed() >= ms(self.cfg.flush_linger_ms);
            if self.since_flush >= self.cfg.checkpoint_every_messages || (quiet && (self.since_flush > 0 || !self.pending.is_empty())) {
                self.flush(quiet)?;
            }
            // Idle once something was read: a stage started beside its members waits for them.
            let read_any = self.next.values().any(|o| *o > 0);
            if exit_when_idle && read_any && last_message.elapsed() >= ms(self.cfg.idle_after_ms) && self.since_flush == 0 && self.caught_up() {
                break;
            }
        }
        if self.since_flush > 0 && !self.rebuilding() {
            self.flush(true)?;
        }
        Ok(self.summary())
    }

    fn summary(&self) -> NationalSummary {
        NationalSummary {
            counters: self.ckpt.counters.clone(),
            national: self.ckpt.national.values().cloned().collect(),
            checkpoints: self.ckpt.sequence,
            incomplete_days: self.incomplete.len(),
            first_incomplete: self.incomplete.first().map(|d| {
                let have = self.sums.get(d);
                let base = have.and_then(|h| h.values().next()).map(|e| e.base_year);
                let missing = base
                    .and_then(|b| self.expected.get(&b))
                    .map(|exp| exp.iter().filter(|p| !have.is_some_and(|h| h.contains_key(*p))).map(|p| p.iso_code().to_string()).collect())
                    .unwrap_or_default();
                (*d, missing)
            }),
        }
    }

    fn caught_up(&self) -> bool {
        self.next.iter().all(|(p, next)| {
            self.consumer
                .fetch_watermarks(&self.cfg.topics.ensemble_province, *p, Duration::from_secs(5))
                .is_ok_and(|(_, high)| *next >= high)
        })
    }

    fn handle(&mut self, partition: i32, offset: i64, key: Option<&[u8]>, payload: Option<&[u8]>) -> Result<(), PipelineError> {
        self.next.insert(partition, offset + 1);
        let replayed = self.rebuild_until.get(&partition).is_some_and(|until| offset < *until);
        if !replayed {
            self.ckpt.counters.received += 1;
            self.since_flush += 1;
        }
        let parsed = payload
            .ok_or_else(|| "empty payload".to_string())
            .and_then(|p| serde_json::from_slice::<ProvinceDayEnsemble>(p).map_err(|e| format!("not a province-day member sum: {e}")))
            .and_then(|e| {
                if e.settings_fingerprint != self.settings_fingerprint {
                    return Ok(Err(e.settings_fingerprint));
                }
                let p = e.check(self.cfg.ensemble_members)?;
                let k = e.key();
                if key.is_some_and(|key| key != k.as_bytes()) {
                    return Err(format!("key `{}` does not name the message's province and day ({k})", String::from_utf8_lossy(key.unwrap_or_default())));
                }
                let base = co2cast_model::estimate::base_year_for(e.date.year(), &self.history.inventory.years());
                if base != Some(e.base_year) {
                    return Err(format!("{k}: base year {} is not the inventory year a {} estimate is calibrated on ({base:?})", e.base_year, e.date.year()));
                }
                if e.date > self.today() {
                    return Err(format!("{k}: a day after today"));
                }
                if !self.expected(e.base_year).map_err(|err| err.to_string())?.contains(&p) {
                    return Err(format!("{k}: not a province this pipeline estimates (provinces: {})", self.cfg.provinces.as_ref().map_or("all".into(), |v| v.join(","))));
                }
                Ok(Ok((p, e)))
            });
        let parsed = match parsed {
            Ok(Err(theirs)) => {
                return Err(PipelineError::Config(format!(
                    "member sums in {} were made with other settings (fingerprint {theirs}, this stage's {}): run the national stage with the province members' settings (provinces, members, seed, model)",
                    self.cfg.topics.ensemble_province, self.settings_fingerprint
                )));
            }
            Ok(Ok(x)) => Ok(x),
            Err(e) => Err(e),
        };
        match parsed {
            Ok((p, e)) => {
                if !replayed {
                    self.ckpt.counters.accepted += 1;
                }
                self.pending.insert(e.date);
                self.sums.entry(e.date).or_default().insert(p, e);
                Ok(())
            }
            // A rebuild meets again what was dead-lettered before: counted and sent once.
            Err(_) if replayed => Ok(()),
            Err(reason) => {
                self.ckpt.counters.dead_lettered += 1;
                let topic = self.cfg.topics.ensemble_province.clone();
                co2cast_metrics::events::MemberSumsDeadLettered { reason: &reason, topic: &topic, partition, offset }.emit();
                let headers = OwnedHeaders::new()
                    .insert(Header { key: "source_topic", value: Some(&topic) })
                    .insert(Header { key: "source_partition", value: Some(&partition.to_string()) })
                    .insert(Header { key: "source_offset", value: Some(&offset.to_string()) })
                    .insert(Header { key: "error_code", value: Some("invalid_field") })
                    .insert(Header { key: "error_reason", value: Some(&reason) });
                let mut rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&self.cfg.topics.dead_letter).payload(payload.unwrap_or(&[])).headers(headers);
                if let Some(k) = key {
                    rec = rec.key(k);
                }
                self.kafka.send(rec)
            }
        }
    }

    /// The provinces the province stage estimates for a base year: those the calibration
    /// scales (a province without an inventory, Tibet, has no rows), limited to `provinces`.
    fn expected(&mut self, base_year: i32) -> Result<&BTreeSet<Province>, PipelineError> {
        if !self.expected.contains_key(&base_year) {
            let cal = calibrate(&self.history.inventory, &self.history.proxies, base_year, 1, &self.model).map_err(|e| PipelineError::Calibration(e.to_string()))?;
            let wanted: Option<Vec<Province>> = self.cfg.provinces.as_ref().map(|v| v.iter().filter_map(|p| Province::parse_lenient(p)).collect());
            let set = Province::ALL
                .into_iter()
                .filter(|p| wanted.as_ref().is_none_or(|w| w.contains(p)) && Sector::ALL.iter().any(|s| cal.scale(*p, *s).is_some()))
                .collect();
            self.expected.insert(base_year, set);
        }
        Ok(&self.expected[&base_year])
    }

    /// The national row of a day from the provinces in, summed in province order as the
    /// single process does; `None` when nothing is in.
    fn row(&mut self, day: NaiveDate) -> Result<Option<(EstimateRow, bool, Vec<f64>, f64)>, PipelineError> {
        let Some(in_day) = self.sums.get(&day) else { return Ok(None) };
        let Some(first) = in_day.values().next() else { return Ok(None) };
        let base_year = first.base_year;
        let members = self.cfg.ensemble_members;
        let mut central = 0.0;
        let mut cov = 0.0;
        let mut col = vec![0.0; members];
        let mut source = SourceType::Proxy;
        let mut months = Vec::new();
        for e in in_day.values() {
            central += e.central_mtco2;
            cov += e.coverage_weighted_mtco2;
            source = source.max(e.source_type);
            months.extend_from_slice(&e.data_months);
            for (acc, x) in col.iter_mut().zip(&e.members_mtco2) {
                *acc += x;
            }
        }
        let in_set: BTreeSet<Province> = in_day.keys().copied().collect();
        let expected = self.expected(base_year)?;
        let missing = expected.difference(&in_set).count();
        let complete = missing == 0;
        let mut c = if central > 0.0 { cov / central } else { 0.0 };
        if !complete {
            c *= (expected.len() - missing) as f64 / expected.len().max(1) as f64;
            source = source.max(SourceType::GapFilled);
        }
        let through = co2cast_model::estimate::month_behind_half(&mut months);
        let row = EstimateRow::national(day, &Band::from_members(central, &col), source, c, through, base_year);
        Ok(Some((row, complete, col, central)))
    }

    /// Publishes the national rows of changed days (complete ones; with `quiet`, incomplete
    /// ones too), then checkpoints offsets and revisions.
    fn flush(&mut self, quiet: bool) -> Result<(), PipelineError> {
        let computed_at = Utc::now();
        let mut rows = Vec::new();
        let mut years = BTreeSet::new();
        for day in std::mem::take(&mut self.pending) {
            match self.row(day)? {
                Some((row, complete, _, _)) if complete || quiet => {
                    if complete {
                        self.incomplete.remove(&day);
                    } else {
                        self.incomplete.insert(day);
                    }
                    years.insert(day.year());
                    rows.push(row);
                }
                Some(_) => {
                    self.pending.insert(day);
                }
                None => {}
            }
        }
        let changed = self.ckpt.published.diff(rows);
        if !changed.is_empty() {
            self.kafka.publish_estimates(&self.cfg.topics.estimates_daily, &changed, computed_at)?;
            let revisions = changed.iter().filter(|r| r.revision > 0).count() as u64;
            let c = &mut self.ckpt.counters;
            c.estimates_published += changed.len() as u64;
            c.estimate_revisions_published += revisions;
            c.incomplete_days_published += changed.iter().filter(|r| self.incomplete.contains(&r.date)).count() as u64;
            co2cast_metrics::events::EstimatesPublished { sector: crate::estimates::ALL_SECTORS, rows: changed.len() as u64, revisions }.emit();
        }
        // Annual totals over the year's complete days, for summaries.
        for year in years {
            let (mut central, mut annual) = (0.0, vec![0.0; self.cfg.ensemble_members]);
            let days: Vec<NaiveDate> = self.sums.range(NaiveDate::from_ymd_opt(year, 1, 1).expect("valid")..NaiveDate::from_ymd_opt(year + 1, 1, 1).expect("valid")).map(|(d, _)| *d).collect();
            let mut n = 0;
            for d in days {
                if let Some((_, true, col, c)) = self.row(d)? {
                    central += c;
                    for (a, x) in annual.iter_mut().zip(&col) {
                        *a += x;
                    }
                    n += 1;
                }
            }
            if n > 0 {
                self.ckpt.national.insert(year, NationalYear { year, days: n, band: Band::from_members(central, &annual) });
            }
        }
        crate::sink::Sink::barrier(&mut self.kafka, self.ckpt.sequence + 1)?;
        self.ckpt.offsets = self.next.clone();
        self.ckpt.sequence += 1;
        let writing = Instant::now();
        if let Err(e) = crate::checkpoint::save_atomically(&self.cfg.checkpoint_dir, CHECKPOINT_FILE, &self.ckpt) {
            co2cast_metrics::events::CheckpointFailed { error: &e }.emit();
            return Err(e.into());
        }
        co2cast_metrics::events::CheckpointWritten { sequence: self.ckpt.sequence, duration: writing.elapsed() }.emit();
        self.since_flush = 0;
        Ok(())
    }
}
