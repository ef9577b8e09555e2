//! The stream processor: consume proxy topics, validate, keep keyed state, dead-letter what
//! is rejected, re-estimate the affected years and publish changed rows as new revisions,
//! then checkpoint offsets and state together.

use crate::checkpoint::{Checkpoint, Dirty, Frontier, partition_key};
use crate::estimates::{EstimateRow, Revisioned, batch_to_json_lines};
use crate::grid_intensity::{GridComparisonLine, GridIntensityRow};
use co2cast_model::grid_intensity::{CHP_HEAT, GenerationMix, IntensityPath, IntensitySum};
use chrono::{DateTime, Datelike, Duration, NaiveDate, Utc};
use co2cast_data::Dataset;
use co2cast_ingest::watermark::Arrival;
use co2cast_ingest::{PlausibilityCaps, ValidationRules, Watermarks, validate_family};
use co2cast_model::calendar::{DayFactorTable, HolidayCalendar, shanghai_day};
use co2cast_model::calibration::{Calibration, ModelConfig, calibrate};
use co2cast_model::estimate::{Band, EnsembleSettings, Estimator, SourceType};
use co2cast_model::proxy::ProxyPanel;
use co2cast_model::series::YearMonth;
use crate::topics::TopicNames;
use crate::source::{BatchChannel, FetchQueue, GroupContext, MessageBatch, Positions, spawn_poll_thread};
use co2cast_model::domain::{Province, Sector};
use co2cast_model::proxy::Scope;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::BaseRecord;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

mod estimation;
mod ingest;
mod ownership;

use estimation::YearCache;
use ingest::national_reader_key;


/// Settings of the processor. Durations and units are in the field names.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProcessorConfig {
    pub brokers: String,
    pub group_id: String,
    pub checkpoint_dir: PathBuf,
    /// Re-estimate, publish and checkpoint after this many messages (and whenever input is idle).
    pub checkpoint_every_messages: u64,
    /// Re-estimate once input has been quiet this long (low latency for sparse streams).
    pub flush_linger_ms: u64,
    /// Re-estimate at the latest this long after the oldest unpublished message.
    pub max_flush_delay_ms: u64,
    pub poll_timeout_ms: u64,
    /// Longest a fetch may wait at the broker for data. Kafka answers as soon as data is
    /// there; some brokers (tansu 0.6) hold every fetch this long, so a short wait keeps
    /// throughput and latency up there at the cost of more idle fetch requests.
    pub fetch_wait_max_ms: u64,
    /// How long fetching from a partition pauses once the local prefetch queue is full.
    /// librdkafka's default (1000 ms) left a processor working through a backlog idle for
    /// whole seconds after each pause; a short pause resumes as soon as it has caught up.
    pub fetch_queue_backoff_ms: u64,
    pub session_timeout_ms: u64,
    pub heartbeat_interval_ms: u64,
    /// How long input must be quiet before the processor counts as idle.
    pub idle_after_ms: u64,
    pub allowed_lateness_s: i64,
    pub future_tolerance_s: i64,
    pub ensemble_members: usize,
    pub ensemble_seed: u64,
    /// Reference "now" for validation of replayed history and for the end of nowcasts
    /// (RFC 3339); the wall clock when unset.
    pub now_override: Option<String>,
    /// Months estimated past the latest month any signal has reached, as nowcasts whose bands
    /// widen with each month ahead; never past today (Asia/Shanghai). 0: estimates stop at
    /// the data.
    pub nowcast_months_beyond_data: u32,
    /// Estimate only these provinces (ISO codes); all when unset.
    pub provinces: Option<Vec<String>>,
    /// The estimator's model settings (JSON, as `co2cast model-config` prints and
    /// `pipelines/estimator-default.json` holds); the built-in default when unset.
    pub model_config: Option<PathBuf>,
    pub topics: TopicNames,
    /// Parquet lake to write (estimates with vintages, ensemble, comparison, inputs); none when unset.
    pub lake_dir: Option<PathBuf>,
    /// Members per row kept in `estimate_ensemble` (all when unset).
    pub lake_ensemble_members: Option<usize>,
    /// Extra librdkafka consumer properties (e.g. `queued.min.messages`), applied after
    /// co2cast's own; properties co2cast relies on cannot be overridden.
    pub consumer_options: std::collections::BTreeMap<String, String>,
    /// The brokers' log is new (the embedded broker starts empty every run): checkpointed
    /// offsets name nothing there, so reading starts at the beginning while the checkpointed
    /// state, owed work and publications are kept. Input read again changes nothing (keyed
    /// values are idempotent), so nothing is re-estimated or republished that did not change.
    #[serde(skip)]
    pub fresh_log: bool,
    /// `/readyz` fails while more messages than this wait in the owned partitions.
    pub ready_max_lag_messages: u64,
    /// `/readyz` fails while input handled longer ago than this is not checkpointed.
    pub ready_max_checkpoint_delay_s: u64,
    /// Longest wait between two attempts at a request the brokers failed.
    pub broker_retry_max_backoff_ms: u64,
    /// What this process does (`co2cast run --role`); `All` or `Province` for a processor.
    #[serde(skip)]
    pub role: crate::role::Role,
}

impl ProcessorConfig {
    /// The settings estimates depend on besides their input, as one comparable string.
    /// Settings that would otherwise be dropped silently later: every province must be known,
    /// `now_override` must be an RFC 3339 time, the ensemble must have members.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(v) = &self.provinces {
            if let Some(bad) = v.iter().find(|p| Province::parse_lenient(p).is_none()) {
                return Err(format!("provinces: unknown province `{bad}`"));
            }
            if v.is_empty() {
                return Err("provinces: empty list (leave it unset for every province)".into());
            }
        }
        if let Some(t) = &self.now_override {
            DateTime::parse_from_rfc3339(t).map_err(|e| format!("now_override `{t}` is not an RFC 3339 time: {e}"))?;
        }
        if self.ensemble_members == 0 {
            return Err("ensemble_members must be at least 1".into());
        }
        if self.nowcast_months_beyond_data > MAX_NOWCAST_MONTHS_BEYOND_DATA {
            return Err(format!(
                "nowcast_months_beyond_data {} is more than {MAX_NOWCAST_MONTHS_BEYOND_DATA} (each month ahead widens the band by the model's nowcast_rel_sd_per_month; a longer walk says little)",
                self.nowcast_months_beyond_data
            ));
        }
        self.topics.check()
    }

    /// The reference "now": `now_override` when set, else the wall clock.
    pub fn now(&self) -> DateTime<Utc> {
        self.now_override.as_deref().and_then(|s| DateTime::parse_from_rfc3339(s).ok()).map(|t| t.with_timezone(&Utc)).unwrap_or_else(Utc::now)
    }

    pub fn estimate_settings(&self) -> String {
        let provinces = match &self.provinces {
            None => "all".to_string(),
            Some(v) => {
                let mut codes: Vec<&str> = v.iter().filter_map(|p| Province::parse_lenient(p)).map(|p| p.iso_code()).collect();
                codes.sort_unstable();
                codes.dedup();
                codes.join(",")
            }
        };
        format!(
            "model {}; provinces {provinces}; members {}; seed {}; nowcast months beyond data {}; lake members {}",
            co2cast_model::estimate::MODEL_VERSION,
            self.ensemble_members,
            self.ensemble_seed,
            self.nowcast_months_beyond_data,
            self.lake_ensemble_members.map_or("all".to_string(), |n| n.to_string())
        )
    }
}

impl Default for ProcessorConfig {
    fn default() -> Self {
        ProcessorConfig {
            brokers: "localhost:9092".into(),
            group_id: "co2cast".into(),
            checkpoint_dir: PathBuf::from("state"),
            checkpoint_every_messages: 20_000,
            flush_linger_ms: 50,
            max_flush_delay_ms: 500,
            poll_timeout_ms: 100,
            fetch_wait_max_ms: 10,
            fetch_queue_backoff_ms: 10,
            session_timeout_ms: 10_000,
            heartbeat_interval_ms: 1_000,
            idle_after_ms: 1_500,
            allowed_lateness_s: 3 * 86_400,
            future_tolerance_s: 3_600,
            ensemble_members: 200,
            ensemble_seed: 20_190_101,
            now_override: None,
            nowcast_months_beyond_data: 3,
            provinces: None,
            model_config: None,
            topics: TopicNames::default(),
            lake_dir: None,
            lake_ensemble_members: None,
            consumer_options: Default::default(),
            fresh_log: false,
            ready_max_lag_messages: 100_000,
            ready_max_checkpoint_delay_s: 300,
            broker_retry_max_backoff_ms: 10_000,
            role: crate::role::Role::All,
        }
    }
}

/// A published fingerprint no row has: the next computation of the row is a new revision.
const FORCE_REPUBLISH: crate::estimates::Fingerprint = [i64::MIN; 10];

/// The furthest `nowcast_months_beyond_data` may reach.
pub const MAX_NOWCAST_MONTHS_BEYOND_DATA: u32 = 12;

/// Consumer properties exactly-once and group membership rest on.
const PINNED_CONSUMER_OPTIONS: [&str; 8] = [
    "bootstrap.servers",
    "group.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "auto.offset.reset",
    "enable.partition.eof",
    "isolation.level",
    "partition.assignment.strategy",
];

pub use crate::error::{PipelineError, retryable};

fn kafka(context: &str) -> impl Fn(rdkafka::error::KafkaError) -> PipelineError + '_ {
    move |source| PipelineError::Kafka { context: context.to_string(), source }
}

/// What a run did, for the summary and for tests.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub counters: crate::checkpoint::Counters,
    pub national: Vec<NationalYear>,
    pub checkpoints: u64,
    /// Provinces estimated (all of them unless the run was limited).
    pub provinces: usize,
    /// Per signal, the latest month received and how many scopes reached it.
    pub data_as_of: Vec<SignalAsOf>,
    /// National references for the years of `national` (source, year, MtCO2).
    pub references: Vec<(String, i32, f64)>,
    /// Days estimated past the latest day any signal reached (nowcasts), first and last.
    pub nowcast_beyond_data: Option<(NaiveDate, NaiveDate)>,
}

/// The latest month of one signal that went into the estimates.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SignalAsOf {
    pub signal: String,
    /// `YYYY-MM`.
    pub last_month: String,
    /// Scopes (provinces, or `CN`) whose series reach `last_month`, of `scopes` with any data.
    pub scopes_at_last_month: usize,
    pub scopes: usize,
}

/// Per signal, the newest month of the frontier, and how many scopes reach it.
pub fn data_as_of(frontier: &crate::checkpoint::Frontier) -> Vec<SignalAsOf> {
    let mut by: BTreeMap<co2cast_model::proxy::Signal, Vec<YearMonth>> = BTreeMap::new();
    for ((signal, _), m) in &frontier.0 {
        by.entry(*signal).or_default().push(*m);
    }
    by.into_iter()
        .filter_map(|(signal, months)| {
            let last = *months.iter().max()?;
            Some(SignalAsOf {
                signal: signal.as_str().to_string(),
                last_month: format!("{}-{:02}", last.year, last.month),
                scopes_at_last_month: months.iter().filter(|m| **m == last).count(),
                scopes: months.len(),
            })
        })
        .collect()
}

pub use crate::checkpoint::NationalYear;

pub struct Processor {
    cfg: ProcessorConfig,
    consumer: Arc<BaseConsumer<GroupContext>>,
    /// Where assigned partitions deliver their messages (holds the consumer too).
    fetch_queue: Arc<FetchQueue>,
    positions: Positions,
    /// The estimates, member sums, grid intensity and DLQ topics.
    kafka: crate::kafka_sink::KafkaSink,
    ckpt: Checkpoint,
    history: Dataset,
    caps: PlausibilityCaps,
    rules: ValidationRules,
    calibrations: BTreeMap<(i32, u32), Calibration>,
    /// The estimator's model settings.
    model: ModelConfig,
    /// CHP heat share of each province's power CO2, by base year.
    heat_shares: BTreeMap<i32, BTreeMap<Province, f64>>,
    /// Years with a yearbook inventory (base years of estimates).
    inventory_years: Vec<i32>,
    /// Latest month of each series in the bundled history up to a base year, by base year.
    history_frontiers: BTreeMap<i32, BTreeMap<(co2cast_model::proxy::Signal, Scope), YearMonth>>,
    /// Per scope (provinces by index, then national), the Asia/Shanghai year it last marked
    /// dirty since the last flush, as a range of Unix seconds.
    marked_year: [Option<(i64, i64)>; Province::ALL.len() + 1],
    /// Watermark stream names by signal and granularity (no allocation per message).
    stream_keys: Vec<Option<Box<str>>>,
    /// The family of the topic seen last (the poll thread interns topic names, and messages
    /// come in runs per partition: a pointer test instead of string compares per message).
    last_topic: Option<(Arc<str>, Option<co2cast_ingest::Topic>)>,
    cache: BTreeMap<i32, YearCache>,
    since_flush: u64,
    oldest_unflushed: Option<Instant>,
    /// A flush under a backlog left years past the data (nowcasts only) owed in `dirty`:
    /// the next quiet moment estimates them.
    nowcast_deferred: bool,
    last_flush_cost: std::time::Duration,
    /// Messages were taken from Kafka but not handled: positions must go back to the checkpoint.
    resync: bool,
    lake: Option<crate::lake::LakeSink>,
    /// Wall-clock start of the current flush: the vintage of what it publishes.
    flush_started_at: DateTime<Utc>,
    received_counter: Option<Arc<std::sync::atomic::AtomicU64>>,
    /// Held for the life of the processor (see `writer_lock`).
    _writer_locks: Vec<std::fs::File>,
    /// The checkpoint's `received` when this processor started.
    received_at_start: u64,
    input_complete: Option<Arc<AtomicBool>>,
    /// What `/readyz` reads.
    status: Arc<crate::readiness::ProcessorStatus>,
    /// The current run's stop flag (retry loops give up when it is set).
    stop: Arc<AtomicBool>,
    /// Joined the group: done at the start of the first run, retried while brokers are away.
    subscribed: bool,
    /// Newest published day per sector (`all` for national rows), for freshness.
    newest_published: BTreeMap<String, NaiveDate>,
    /// Per topic family (`Topic as usize`, unknown last): received, accepted, late, revised
    /// since they were last emitted as metrics.
    family_counts: [[u64; 4]; FAMILY_SLOTS],
    last_tick: Instant,
    /// Partitions of each proxy topic (all equal; known once subscribed).
    proxy_partitions: i32,
    /// Province stage: reads the national partition of every proxy topic by assignment, for
    /// the national series every member needs (see `partitioner`).
    national_reader: Option<BaseConsumer>,
    /// Province stage: the provinces owned at the last flush (for logs when it changes).
    owned_before: Vec<Province>,
}

const FAMILY_SLOTS: usize = co2cast_ingest::Topic::ALL.len() + 1;

/// The family label of a topic (`power.generation` for `proxy.power.generation`).
pub fn family_label(f: Option<co2cast_ingest::Topic>) -> &'static str {
    f.map(|t| t.name().strip_prefix("proxy.").unwrap_or(t.name())).unwrap_or("unknown")
}

pub use crate::kafka_sink::DeliveryContext;

impl Processor {
    pub fn new(cfg: ProcessorConfig, history: Dataset) -> Result<Processor, PipelineError> {
        cfg.validate().map_err(PipelineError::Config)?;
        let watermarks = Watermarks::new(Duration::seconds(cfg.allowed_lateness_s));
        let model = load_model_config(cfg.model_config.as_deref())?;
        let settings = estimate_settings_with_model(&cfg, &model)?;
        // One writer per state directory and per lake: a second process would interleave
        // checkpoints and lake commits with this one's.
        let mut writer_locks = vec![writer_lock(&cfg.checkpoint_dir, "LOCK", "state directory")?];
        if let Some(dir) = &cfg.lake_dir {
            writer_locks.push(writer_lock(dir, "_writer.lock", "lake")?);
        }
        let mut ckpt = Checkpoint::load(&cfg.checkpoint_dir)?.unwrap_or_else(|| Checkpoint::empty(watermarks, settings.clone()));
        let national_years: Vec<i32> = ckpt.national.keys().copied().collect();
        ckpt.estimated_years.extend(national_years);
        if ckpt.settings != settings {
            return Err(PipelineError::Config(format!(
                "the state in {} was made with other settings ({}); this run has ({settings}). Resume it with those, or start over with another --state-dir (and --lake)",
                cfg.checkpoint_dir.display(),
                ckpt.settings
            )));
        }
        // The lake first: it rolls back what was written after the checkpoint.
        let lake = match &cfg.lake_dir {
            Some(dir) => {
                let mut l = crate::lake::LakeSink::open(dir, ckpt.sequence, &ckpt.lineage, cfg.lake_ensemble_members)?;
                l.write_inventory(&history.inventory, ckpt.sequence)?;
                Some(l)
            }
            None => None,
        };
        if cfg.fresh_log {
            ckpt.offsets.clear();
        }
        let positions = Positions::from_offsets(&ckpt.offsets);
        let mut consumer_config = ClientConfig::new();
        // Watermarks and broker states for lag and outage metrics (overridable).
        consumer_config.set("statistics.interval.ms", "1000");
        for (k, v) in &cfg.consumer_options {
            if PINNED_CONSUMER_OPTIONS.contains(&k.as_str()) {
                return Err(PipelineError::Config(format!("consumer option `{k}` is managed by co2cast and cannot be set")));
            }
            consumer_config.set(k, v);
        }
        let consumer: BaseConsumer<GroupContext> = consumer_config
            .set("bootstrap.servers", &cfg.brokers)
            .set("group.id", &cfg.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .set("fetch.wait.max.ms", cfg.fetch_wait_max_ms.to_string())
            .set("fetch.queue.backoff.ms", cfg.fetch_queue_backoff_ms.to_string())
            .set("session.timeout.ms", cfg.session_timeout_ms.to_string())
            .set("heartbeat.interval.ms", cfg.heartbeat_interval_ms.to_string())
            // Partition k of every proxy topic to the same member: the provinces of partition
            // k are then wholly that member's (see `partitioner`).
            .set("partition.assignment.strategy", "range")
            .create_with_context(GroupContext::new(positions.clone()))
            .map_err(kafka("create consumer"))?;
        let national_reader = match cfg.role {
            crate::role::Role::All => None,
            crate::role::Role::Province => {
                if cfg.lake_dir.is_some() {
                    return Err(PipelineError::Config("a province member does not write the lake: run one `co2cast run --role lake` for it".into()));
                }
                Some(crate::source::assigned_reader(&cfg.brokers, &format!("{}.national-reader", cfg.group_id), cfg.fetch_wait_max_ms)?)
            }
            other => return Err(PipelineError::Config(format!("the processor runs the `all` or `province` role, not `{other}`"))),
        };
        let caps = PlausibilityCaps::from_history(&history.proxies);
        let rules = ValidationRules { future_tolerance: Duration::seconds(cfg.future_tolerance_s), ..ValidationRules::default() };
        let consumer = Arc::new(consumer);
        let inventory_years = history.inventory.years();
        co2cast_metrics::enable(co2cast_metrics::Role::Processor, env!("CARGO_PKG_VERSION"), co2cast_model::estimate::MODEL_VERSION);
        initialise_metrics();
        // The checkpoint age counts from the last checkpoint on disk (from the start when there
        // is none), so a processor that never manages a first checkpoint still ages.
        let since = std::fs::metadata(cfg.checkpoint_dir.join("checkpoint.json"))
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or_else(co2cast_metrics::unix_now_s, |d| d.as_secs_f64());
        co2cast_metrics::metrics().checkpoint_age.set_since("", since);
        let status = crate::readiness::ProcessorStatus::new(cfg.ready_max_lag_messages, cfg.ready_max_checkpoint_delay_s);
        status.register();
        let newest_published = newest_published_days(&ckpt);
        for (sector, day) in &newest_published {
            co2cast_metrics::state::set_newest_published_day_end(sector, day_end_unix_s(*day));
        }
        let kafka = crate::kafka_sink::KafkaSink::new(&cfg.brokers, cfg.broker_retry_max_backoff_ms, Some(status.clone()))?;
        let p = Processor {
            lake,
            cfg,
            fetch_queue: Arc::new(FetchQueue::new(consumer.clone())),
            consumer,
            positions,
            kafka,
            ckpt,
            history,
            caps,
            rules,
            calibrations: BTreeMap::new(),
            heat_shares: BTreeMap::new(),
            model,
            inventory_years,
            history_frontiers: BTreeMap::new(),
            marked_year: [None; Province::ALL.len() + 1],
            stream_keys: Vec::new(),
            last_topic: None,
            cache: BTreeMap::new(),
            since_flush: 0,
            oldest_unflushed: None,
            nowcast_deferred: false,
            last_flush_cost: std::time::Duration::ZERO,
            resync: false,
            flush_started_at: Utc::now(),
            received_counter: None,
            _writer_locks: writer_locks,
            received_at_start: 0,
            input_complete: None,
            status,
            stop: Arc::new(AtomicBool::new(false)),
            subscribed: false,
            newest_published,
            family_counts: [[0; 4]; FAMILY_SLOTS],
            last_tick: Instant::now(),
            proxy_partitions: 0,
            national_reader,
            owned_before: Vec::new(),
        };
        Ok(p)
    }

    /// Joins the consumer group on every proxy topic. Assigned partitions start at this
    /// processor's checkpointed offsets (see `source::GroupContext`); the checkpoint is the
    /// source of truth, and offsets committed to the group serve lag monitoring.
    fn try_subscribe(&mut self) -> Result<(), PipelineError> {
        let mut total = 0;
        let mut counts = BTreeSet::new();
        for name in self.cfg.topics.proxies() {
            let md = self
                .consumer
                .fetch_metadata(Some(name), std::time::Duration::from_secs(5))
                .map_err(kafka("fetch metadata"))?;
            let n = md.topics().iter().filter(|x| x.error().is_none()).map(|x| x.partitions().len()).sum::<usize>();
            total += n;
            counts.insert(n);
        }
        if total == 0 {
            // Topics not created yet (an operator or an init job may be about to): retried.
            return Err(PipelineError::Kafka {
                context: format!("no partitions found for the proxy topics ({})", self.cfg.topics.proxies().join(", ")),
                source: rdkafka::error::KafkaError::MetadataFetch(rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition),
            });
        }
        if self.cfg.role == crate::role::Role::Province && counts.len() > 1 {
            return Err(PipelineError::Config(format!(
                "the proxy topics have different numbers of partitions ({counts:?}): province members own provinces by partition number, so every proxy topic needs the same number"
            )));
        }
        self.proxy_partitions = counts.into_iter().max().unwrap_or(0) as i32;
        self.consumer.context().total_partitions.store(total, Ordering::Release);
        // A log that ends before the checkpointed offset was recreated (a topic deleted, a
        // development broker restarted empty): reading on would skip its first messages.
        for (key, offset) in &self.ckpt.offsets {
            let Some((topic, partition)) = key.rsplit_once('/').and_then(|(t, p)| Some((t, p.parse::<i32>().ok()?))) else { continue };
            if let Ok((_, high)) = self.consumer.fetch_watermarks(topic, partition, std::time::Duration::from_secs(5))
                && high < *offset
            {
                return Err(PipelineError::Config(format!(
                    "{key}: the brokers' log ends at offset {high}, before the checkpointed offset {offset}: the topic was recreated or the broker restarted empty, and reading on would skip messages; start on a new state directory (and lake)"
                )));
            }
        }
        if let Some(reader) = &self.national_reader {
            let mut tpl = TopicPartitionList::new();
            for t in self.cfg.topics.proxies() {
                let at = self.ckpt.offsets.get(&national_reader_key(t)).map_or(Offset::Beginning, |o| Offset::Offset(*o));
                tpl.add_partition_offset(t, crate::partitioner::NATIONAL_PARTITION, at).map_err(kafka("national partitions"))?;
            }
            reader.assign(&tpl).map_err(kafka("assign the national partitions"))?;
        }
        self.consumer.subscribe(&self.cfg.topics.proxies()).map_err(kafka("subscribe"))?;
        Ok(())
    }

    /// Joins the group, retrying with backoff while the brokers are away. Returns false if
    /// the run was stopped first.
    fn subscribe(&mut self) -> Result<bool, PipelineError> {
        let started = Instant::now();
        let mut backoff = crate::retry::Backoff::new(std::time::Duration::from_millis(self.cfg.broker_retry_max_backoff_ms.max(100)));
        loop {
            match self.try_subscribe() {
                Ok(()) => {
                    if backoff.attempt > 0 {
                        co2cast_metrics::events::BrokerRecovered { operation: "metadata", outage: started.elapsed() }.emit();
                    }
                    co2cast_metrics::state::set_broker_up(true);
                    self.status.broker_down_since_ms.store(0, Ordering::Release);
                    self.status.subscribed.store(true, Ordering::Release);
                    self.subscribed = true;
                    return Ok(true);
                }
                Err(e) if e.retry_hint() == co2cast_metrics::RetryHint::WithBackoff => {
                    let d = backoff.next_delay();
                    co2cast_metrics::events::BrokerRequestFailed { operation: "metadata", error: &e, domain: e.domain(), retry_in: Some(d), attempt: backoff.attempt }.emit();
                    self.mark_broker_down();
                    if !crate::retry::sleep_unless_stopped(d, &self.stop) {
                        return Ok(false);
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn mark_broker_down(&self) {
        let _ = self.status.broker_down_since_ms.compare_exchange(0, crate::readiness::unix_ms(), Ordering::AcqRel, Ordering::Acquire);
    }

    /// At most once a second: lag, assignment, outage and watermark metrics, and readiness.
    fn tick(&mut self) {
        if self.last_tick.elapsed() < std::time::Duration::from_secs(1) {
            return;
        }
        self.last_tick = Instant::now();
        let ctx = self.consumer.context();
        let assigned = ctx.assigned.load(Ordering::Acquire);
        self.status.assigned_partitions.store(assigned, Ordering::Release);
        co2cast_metrics::state::set_assigned_partitions(assigned);
        let mut lag = [0i64; FAMILY_SLOTS];
        if let Ok(tpl) = self.consumer.assignment() {
            for e in tpl.elements() {
                let Some((low, high)) = ctx.watermarks(e.topic(), e.partition()) else { continue };
                let next = self.ckpt.offsets.get(&partition_key(e.topic(), e.partition())).copied().unwrap_or(low).max(low);
                let fi = self.cfg.topics.family(e.topic()).map_or(FAMILY_SLOTS - 1, |f| f as usize);
                lag[fi] += (high - next).max(0);
            }
        }
        for (fi, l) in lag.iter().enumerate() {
            let family = if fi < co2cast_ingest::Topic::ALL.len() { Some(co2cast_ingest::Topic::ALL[fi]) } else { None };
            co2cast_metrics::state::set_consumer_lag(family_label(family), *l);
        }
        self.status.lag_messages.store(lag.iter().sum(), Ordering::Release);
        match ctx.broker_outage() {
            Some(since) => {
                let ms = crate::readiness::unix_ms().saturating_sub(since.elapsed().as_millis() as u64);
                let _ = self.status.broker_down_since_ms.compare_exchange(0, ms, Ordering::AcqRel, Ordering::Acquire);
            }
            None => self.status.broker_down_since_ms.store(0, Ordering::Release),
        }
        let unflushed = self.oldest_unflushed.map_or(0, |t| crate::readiness::unix_ms().saturating_sub(t.elapsed().as_millis() as u64));
        self.status.unflushed_since_ms.store(unflushed, Ordering::Release);
        let mut ends: BTreeMap<&str, i64> = BTreeMap::new();
        for (stream, w) in &self.ckpt.watermarks.signals {
            let signal = stream.split('/').next().unwrap_or(stream);
            let e = ends.entry(signal).or_insert(i64::MIN);
            *e = (*e).max(w.max_event_end.timestamp());
        }
        for (signal, end) in ends {
            co2cast_metrics::state::set_watermark(signal, end as f64);
        }
    }

    /// Proxy messages counted since the last call, as metrics.
    fn emit_family_counts(&mut self) {
        for (fi, c) in self.family_counts.iter_mut().enumerate() {
            if c[0] == 0 {
                continue;
            }
            let family = if fi < co2cast_ingest::Topic::ALL.len() { Some(co2cast_ingest::Topic::ALL[fi]) } else { None };
            co2cast_metrics::events::ProxyMessagesHandled { family: family_label(family), received: c[0], accepted: c[1], late: c[2], revised: c[3] }.emit();
            *c = [0; 4];
        }
    }

    fn now(&self) -> DateTime<Utc> {
        self.cfg.now()
    }

    /// Counts the messages this processor receives from now on (for pacing a replay and
    /// progress bars; the checkpoint's counters hold the totals).
    pub fn with_received_counter(mut self, c: Arc<std::sync::atomic::AtomicU64>) -> Self {
        c.store(0, Ordering::Relaxed);
        self.received_at_start = self.ckpt.counters.received;
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

    /// Partitions of the proxy topics this group member holds.
    pub fn assigned_partitions(&self) -> usize {
        self.consumer.context().assigned.load(Ordering::Acquire)
    }

    /// Consumes until `stop` is set, or, with `exit_when_idle`, until every assigned partition
    /// is read to its end and input has been quiet for `idle_after_ms`.
    pub fn run(
        &mut self,
        stop: Arc<AtomicBool>,
        exit_when_idle: bool,
        mut on_progress: impl FnMut(&crate::checkpoint::Counters),
    ) -> Result<RunSummary, PipelineError> {
        self.stop = stop.clone();
        self.kafka.set_stop(stop.clone());
        let summary = |p: &Self| RunSummary {
            counters: p.ckpt.counters.clone(),
            national: p.ckpt.national.values().cloned().collect(),
            checkpoints: p.ckpt.sequence,
            provinces: p.cfg.provinces.as_ref().map_or(Province::ALL.len(), |v| v.len()),
            data_as_of: data_as_of(&p.ckpt.frontier),
            nowcast_beyond_data: p.nowcast_beyond_data(),
            references: if p.cfg.provinces.is_some() {
                Vec::new()
            } else {
                p.history
                    .references
                    .iter()
                    .flat_map(|r| p.ckpt.national.keys().filter_map(|y| Some((r.source.clone(), *y, *r.values.get(y)?))))
                    .collect()
            },
        };
        if std::mem::take(&mut self.resync) {
            // Rejoin so that partitions are reassigned at the checkpointed offsets.
            self.positions.reset(&self.ckpt.offsets);
            self.consumer.unsubscribe();
            self.subscribed = false;
        }
        if !self.subscribed && !self.subscribe()? {
            return Ok(summary(self));
        }
        let poll = std::time::Duration::from_millis(self.cfg.poll_timeout_ms);
        let poll_stop = Arc::new(AtomicBool::new(false));
        let (channel, poller) = spawn_poll_thread(self.fetch_queue.clone(), self.positions.clone(), poll_stop.clone(), poll, 16);
        let result = self.consume(&channel, &stop, exit_when_idle, &mut on_progress);
        let rx = channel.batches;
        poll_stop.store(true, Ordering::Relaxed);
        // Batches the poll thread took but nobody handled are after the checkpoint: the next
        // run (or a restart) reads them again.
        while let Ok(b) = rx.recv() {
            if !b.entries.is_empty() {
                self.resync = true;
            }
        }
        let _ = poller.join();
        result?;
        if self.since_flush > 0 || !self.ckpt.dirty.is_empty() {
            self.flush()?;
        }
        Ok(summary(self))
    }

    fn consume(
        &mut self,
        channel: &BatchChannel,
        stop: &AtomicBool,
        exit_when_idle: bool,
        on_progress: &mut dyn FnMut(&crate::checkpoint::Counters),
    ) -> Result<(), PipelineError> {
        let ms = std::time::Duration::from_millis;
        let tick = ms(self.cfg.flush_linger_ms.clamp(1, self.cfg.poll_timeout_ms.max(1)));
        let mut last_message = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            match channel.batches.recv_timeout(tick) {
                Ok(batch) => {
                    if !self.handle_batch(&batch, stop, on_progress)? {
                        self.resync = true;
                        return Ok(());
                    }
                    // Back to the poll thread for reuse (it may have ended; then it is dropped).
                    let _ = channel.recycle.send(batch);
                    last_message = Instant::now();
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(PipelineError::Internal("the Kafka poll thread ended unexpectedly".into()));
                }
            }
            if self.poll_national()? > 0 {
                last_message = Instant::now();
            }
            self.tick();
            // Quiet since the last message, or since partitions were (re)assigned.
            let quiet = match self.consumer.context().assigned_at() {
                Some(t) if t > last_message => t.elapsed(),
                _ => last_message.elapsed(),
            };
            // A flush costs a re-estimation; under a backlog, space flushes so that they take
            // at most a fifth of the time.
            let max_delay = ms(self.cfg.max_flush_delay_ms).max(self.last_flush_cost * 4);
            let is_quiet = quiet >= ms(self.cfg.flush_linger_ms);
            let due = self.since_flush >= self.cfg.checkpoint_every_messages
                || (is_quiet && (self.since_flush > 0 || self.nowcast_deferred))
                || self.oldest_unflushed.is_some_and(|t| t.elapsed() >= max_delay);
            if due {
                self.flush_with(!is_quiet)?;
                on_progress(&self.ckpt.counters);
            }
            if exit_when_idle && quiet >= ms(self.cfg.idle_after_ms) {
                let complete = self.input_complete.as_ref().is_none_or(|f| f.load(Ordering::Relaxed));
                if complete && self.since_flush == 0 && self.caught_up()? {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Re-estimates what changed, publishes changed rows, then checkpoints offsets and state.
    /// A member holding only some of the partitions has part of the inputs: it checkpoints
    /// but holds estimates back until it owns every partition.
    pub fn flush(&mut self) -> Result<(), PipelineError> {
        self.flush_with(false)
    }

    /// A flush; `under_backlog` (more input waiting) leaves years past the latest data owed,
    /// because every message still arriving re-marks them: they are estimated at the next
    /// quiet flush, and in the meantime the checkpoint keeps them owed.
    fn flush_with(&mut self, under_backlog: bool) -> Result<(), PipelineError> {
        let started = Instant::now();
        self.flush_started_at = Utc::now();
        self.emit_family_counts();
        // The partitions owned cannot be revoked while this flush publishes from them.
        let consumer = self.consumer.clone();
        let _gate = consumer.context().flush_gate.lock().unwrap_or_else(|e| e.into_inner());
        let (mut rows, mut years) = (0u64, 0usize);
        let owned = self.owned_provinces();
        if let Some(owned) = &owned
            && self.owned_before.iter().ne(owned.iter())
        {
            tracing::info!(message = "Provinces owned.", provinces = owned.len(), role = %self.cfg.role);
            if self.cfg.role == crate::role::Role::Province {
                let gained: Vec<Province> = owned.iter().copied().filter(|p| !self.owned_before.contains(p)).collect();
                self.republish(&gained);
            }
            self.owned_before = owned.iter().copied().collect();
        }
        self.mark_years_the_end_reached();
        // Owed work this member can do now (a province member owes the rest until it holds them).
        let doable = |d: &Dirty| owned.as_ref().is_some_and(|o| o.iter().any(|p| d.includes(*p)));
        if owned.is_some() {
            self.marked_year.fill(None);
        }
        if self.ckpt.dirty.values().any(doable) {
            let owned = owned.clone().expect("doable");
            let live = self.ckpt.state.to_panel();
            self.mark_frontier_moves(&live);
            let dirty = std::mem::take(&mut self.ckpt.dirty);
            let data_year = self.latest_event_year();
            self.nowcast_deferred = false;
            for (year, d) in dirty {
                if !doable(&d) || (under_backlog && data_year.is_some_and(|y| year > y)) {
                    self.nowcast_deferred |= doable(&d);
                    self.ckpt.dirty.insert(year, d);
                    continue;
                }
                rows += self.estimate_year(year, &d, &live, &owned)?;
                years += 1;
                // What is not this member's stays owed, for when it is.
                let rest: Vec<Province> = Province::ALL.into_iter().filter(|p| d.includes(*p) && !owned.contains(p)).collect();
                for p in rest {
                    self.ckpt.dirty.entry(year).or_insert(Dirty::Provinces(0)).add(Scope::Province(p));
                }
            }
            self.update_coverage(&live);
        } else if !self.ckpt.dirty.is_empty() {
            self.nowcast_deferred = false;
            tracing::debug!(message = "Estimates held back: this member holds none of the provinces they are owed for.", assigned = self.assigned_partitions());
        }
        // The flush is a checkpoint barrier for every sink, in order: Kafka (estimates, member
        // sums, grid intensity, DLQ), then the lake.
        crate::sink::Sink::barrier(&mut self.kafka, self.ckpt.sequence + 1)?;
        if years > 0 {
            co2cast_metrics::events::FlushCompleted { reestimation: started.elapsed(), rows, years }.emit();
        }
        // The lake commit carries the number of the checkpoint written next.
        if let Some(l) = &mut self.lake {
            crate::sink::Sink::barrier(l, self.ckpt.sequence + 1)?;
        }
        let writing = Instant::now();
        if let Err(e) = self.ckpt.save(&self.cfg.checkpoint_dir) {
            co2cast_metrics::events::CheckpointFailed { error: &e }.emit();
            self.status.checkpoint_failing.store(true, Ordering::Release);
            return Err(e.into());
        }
        co2cast_metrics::events::CheckpointWritten { sequence: self.ckpt.sequence, duration: writing.elapsed() }.emit();
        self.status.checkpoint_failing.store(false, Ordering::Release);
        self.status.unflushed_since_ms.store(0, Ordering::Release);
        // Offsets to Kafka are for lag monitoring only; failures are not fatal.
        let mut tpl = TopicPartitionList::new();
        for (k, o) in &self.ckpt.offsets {
            if let Some((t, p)) = k.rsplit_once('/')
                && let Ok(p) = p.parse::<i32>()
            {
                let _ = tpl.add_partition_offset(t, p, Offset::Offset(*o));
            }
        }
        if tpl.count() > 0
            && let Err(e) = self.consumer.commit(&tpl, rdkafka::consumer::CommitMode::Async)
        {
            co2cast_metrics::events::BrokerRequestFailed { operation: "commit", error: &e, domain: co2cast_metrics::ErrorDomain::External, retry_in: None, attempt: 0 }.emit();
        }
        self.since_flush = 0;
        self.oldest_unflushed = None;
        self.last_flush_cost = started.elapsed();
        Ok(())
    }

}

/// What a state depends on besides its input: a state estimated with other settings (model
/// ones included) is not resumed with these.
pub(crate) fn estimate_settings_with_model(cfg: &ProcessorConfig, model: &ModelConfig) -> Result<String, PipelineError> {
    let model_json = serde_json::to_string(model).map_err(|e| PipelineError::Internal(format!("model settings: {e}")))?;
    Ok(format!("{}; model settings {:016x}", cfg.estimate_settings(), crate::estimates::fnv1a(&[model_json.as_bytes()])))
}

/// The model settings at `path` (JSON), or the built-in default.
pub fn load_model_config(path: Option<&std::path::Path>) -> Result<ModelConfig, PipelineError> {
    let Some(path) = path else { return Ok(ModelConfig::default()) };
    let text = std::fs::read_to_string(path).map_err(|e| PipelineError::Config(format!("model_config {}: {e}", path.display())))?;
    serde_json::from_str(&text).map_err(|e| PipelineError::Config(format!("model_config {}: {e}", path.display())))
}

/// Zero-valued series for every bounded label value the processor emits.
fn initialise_metrics() {
    use co2cast_metrics::events::initialise;
    let m = co2cast_metrics::metrics();
    let families: Vec<&str> = co2cast_ingest::Topic::ALL.iter().map(|t| family_label(Some(*t))).chain(["unknown"]).collect();
    for f in &families {
        initialise(&m.proxy_received, [vec![*f]]);
        initialise(&m.proxy_accepted, [vec![*f]]);
        initialise(&m.proxy_late, [vec![*f]]);
        initialise(&m.proxy_revised, [vec![*f]]);
        initialise(&m.proxy_dead_lettered, co2cast_ingest::RejectCode::ALL.iter().map(|c| vec![*f, c.as_str()]));
        m.consumer_lag.with_label_values(&[f]).add(0);
    }
    let sectors: Vec<&str> = Sector::ALL.iter().map(|s| s.as_str()).chain(["all"]).collect();
    for s in sectors {
        initialise(&m.estimate_published, [vec![s]]);
        initialise(&m.estimate_revised, [vec![s]]);
    }
    for op in BROKER_OPERATIONS {
        initialise(&m.broker_errors, [vec![op]]);
        initialise(&m.broker_retries, [vec![op]]);
    }
}

/// The `operation` label values of broker errors and retries.
pub const BROKER_OPERATIONS: [&str; 6] = ["consume", "produce", "flush", "metadata", "watermarks", "commit"];

pub(crate) fn writer_lock(dir: &std::path::Path, name: &str, what: &str) -> Result<std::fs::File, PipelineError> {
    use std::io::{Read, Seek, Write};
    let path = dir.join(name);
    let io = |e: std::io::Error| PipelineError::Config(format!("{what} {}: {e}", dir.display()));
    std::fs::create_dir_all(dir).map_err(io)?;
    let mut f = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(io)?;
    match f.try_lock() {
        Ok(()) => {
            f.set_len(0).map_err(io)?;
            let _ = write!(f, "{}", std::process::id());
            Ok(f)
        }
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = f.seek(std::io::SeekFrom::Start(0)).and_then(|_| f.read_to_string(&mut holder));
            Err(PipelineError::Config(format!(
                "{what} {} is in use by another co2cast process (pid {}); stop it, or use another directory",
                dir.display(),
                holder.trim()
            )))
        }
        Err(std::fs::TryLockError::Error(e)) => Err(io(e)),
    }
}

/// The newest day of each sector in what a checkpoint has published.
fn newest_published_days(ckpt: &Checkpoint) -> BTreeMap<String, NaiveDate> {
    let mut out: BTreeMap<String, NaiveDate> = BTreeMap::new();
    for key in ckpt.published.rows.keys() {
        let mut parts = key.rsplitn(3, '/');
        let (Some(date), Some(sector)) = (parts.next(), parts.next()) else { continue };
        if let Ok(d) = NaiveDate::parse_from_str(date, "%Y-%m-%d") {
            let e = out.entry(sector.to_string()).or_insert(d);
            *e = (*e).max(d);
        }
    }
    out
}

/// The end of an Asia/Shanghai day (midnight after it, UTC+8) in Unix seconds.
fn day_end_unix_s(day: NaiveDate) -> f64 {
    let next = day.succ_opt().unwrap_or(day).and_hms_opt(0, 0, 0).expect("midnight exists");
    (next.and_utc().timestamp() - 8 * 3600) as f64
}

/// Reads DLQ headers back (for tests and tools).
pub fn header_map<H: Headers>(h: &H) -> BTreeMap<String, String> {
    h.iter()
        .map(|x| (x.key.to_string(), x.value.map(|v| String::from_utf8_lossy(v).to_string()).unwrap_or_default()))
        .collect()
}
