//! The stream processor: consume proxy topics, validate, keep keyed state, dead-letter what
//! is rejected, re-estimate the affected years and publish changed rows as new revisions,
//! then checkpoint offsets and state together.

use crate::checkpoint::{Checkpoint, Dirty, Frontier, partition_key};
use crate::estimates::{EstimateRow, Revisioned, batch_to_json_lines, to_batch};
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
use rdkafka::producer::{BaseProducer, BaseRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;


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
    producer: Arc<BaseProducer<DeliveryContext>>,
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

/// A province's rows of one year, kept so that a change in one province re-estimates only
/// that province; national rows are re-summed from the members.
struct ProvinceYear {
    rows: Vec<EstimateRow>,
    central: Vec<f64>,
    /// Members × days, summed over sectors.
    members: Vec<Vec<f64>>,
    /// Σ coverage·value and source type per day, for the national rows.
    coverage_weighted: Vec<f64>,
    source: Vec<SourceType>,
    /// Per day, each row's `data_through` and central CO2 (rows a monthly signal drives).
    data_months: Vec<Vec<(YearMonth, f64)>>,
    /// Per sector: central and member sums over the days estimated (for the comparison).
    sector_totals: Vec<(Sector, f64, Vec<f64>)>,
    /// Power CO2 split into heat and electricity, with generation (grid intensity).
    intensity: Option<IntensityPath>,
    /// The province's grid intensity rows (computed once per re-estimation).
    grid: Vec<GridIntensityRow>,
}

struct YearCache {
    base_year: i32,
    through: NaiveDate,
    days: Vec<NaiveDate>,
    provinces: BTreeMap<Province, ProvinceYear>,
    /// Intensity of provinces with generation but no power estimate (no inventory: Tibet).
    fallback: BTreeMap<Province, IntensityPath>,
}

impl YearCache {
    /// Every province's intensity path: from its power estimate, or its fallback.
    fn intensity_paths(&self) -> impl Iterator<Item = (Province, &IntensityPath)> {
        self.provinces.iter().filter_map(|(p, py)| py.intensity.as_ref().map(|i| (*p, i))).chain(self.fallback.iter().map(|(p, i)| (*p, i)))
    }

    /// Estimated totals of the year against the inventory: per province and sector, per
    /// province (sectors with an inventory value), and national (`national` band); and the
    /// national total against every national reference holding the year.
    fn comparison(
        &self,
        inv: &co2cast_model::inventory::InventoryPanel,
        references: &[co2cast_model::references::NationalReference],
        year: i32,
        national: &Band,
        base_year: i32,
        whole_country: bool,
    ) -> Vec<crate::lake::ComparisonLine> {
        let ceads = co2cast_data::proxies::national_reference("ceads", BTreeMap::new());
        let line = |province: &str, sector: &str, band: Band, reference: &co2cast_model::references::NationalReference, value: f64| crate::lake::ComparisonLine {
            province: province.into(),
            sector: sector.into(),
            band,
            reference: reference.source.clone(),
            reference_mtco2: value,
            reference_scope: reference.scope.clone(),
            scope_difference: reference.scope_difference.clone(),
            base_year,
        };
        let mut lines = Vec::new();
        let mut nat_inv = 0.0;
        for (p, py) in &self.provinces {
            let mut prov_central = 0.0;
            let mut prov_members: Vec<f64> = Vec::new();
            let mut prov_inv = 0.0;
            for (s, central, members) in &py.sector_totals {
                prov_central += central;
                prov_members.resize(members.len(), 0.0);
                prov_members.iter_mut().zip(members).for_each(|(a, b)| *a += b);
                if let Some(v) = inv.sector(*p, *s, year) {
                    prov_inv += v;
                    lines.push(line(p.iso_code(), s.as_str(), Band::from_members(*central, members), &ceads, v));
                }
            }
            if prov_inv > 0.0 {
                nat_inv += prov_inv;
                lines.push(line(p.iso_code(), "all", Band::from_members(prov_central, &prov_members), &ceads, prov_inv));
            }
        }
        if nat_inv > 0.0 {
            lines.push(line("CN", "all", *national, &ceads, nat_inv));
        }
        // National references cover the whole country: a run over some provinces does not compare.
        if whole_country {
            for r in references.iter().filter(|r| r.source != "ceads") {
                if let Some(v) = r.values.get(&year) {
                    lines.push(line("CN", "all", *national, r, *v));
                }
            }
        }
        lines
    }
}

impl Processor {
    pub fn new(cfg: ProcessorConfig, history: Dataset) -> Result<Processor, PipelineError> {
        cfg.validate().map_err(PipelineError::Config)?;
        let watermarks = Watermarks::new(Duration::seconds(cfg.allowed_lateness_s));
        let model = load_model_config(cfg.model_config.as_deref())?;
        let settings = settings_fingerprint(&cfg, &model)?;
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
        let producer = Arc::new(crate::kafka_sink::producer(&cfg.brokers)?);
        let national_reader = match cfg.role {
            crate::role::Role::All => None,
            crate::role::Role::Province => {
                if cfg.lake_dir.is_some() {
                    return Err(PipelineError::Config("a province member does not write the lake: run one `co2cast run --role lake` for it".into()));
                }
                let c: BaseConsumer = ClientConfig::new()
                    .set("bootstrap.servers", &cfg.brokers)
                    .set("group.id", format!("{}.national-reader", cfg.group_id))
                    .set("enable.auto.commit", "false")
                    .set("enable.auto.offset.store", "false")
                    .set("enable.partition.eof", "false")
                    .set("fetch.wait.max.ms", cfg.fetch_wait_max_ms.to_string())
                    .create()
                    .map_err(kafka("create the national partitions' reader"))?;
                Some(c)
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
        let p = Processor {
            lake,
            cfg,
            fetch_queue: Arc::new(FetchQueue::new(consumer.clone())),
            consumer,
            positions,
            producer,
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

    /// Province stage: national messages from the national partition of every proxy topic,
    /// read by assignment (messages of provinces there belong to that partition's owner).
    /// Returns how many were handled.
    fn poll_national(&mut self) -> Result<usize, PipelineError> {
        let Some(reader) = self.national_reader.take() else { return Ok(0) };
        let result = (|| {
            let now = self.now();
            let received_at = Utc::now();
            let mut handled = 0;
            while handled < 10_000 {
                let m = match reader.poll(std::time::Duration::ZERO) {
                    None => break,
                    Some(Err(e)) => {
                        co2cast_metrics::events::BrokerRequestFailed { operation: "consume", error: &e, domain: co2cast_metrics::ErrorDomain::External, retry_in: None, attempt: 0 }.emit();
                        break;
                    }
                    Some(Ok(m)) => m,
                };
                use rdkafka::Message;
                let key = m.key();
                let national = key.and_then(|k| std::str::from_utf8(k).ok()).and_then(crate::partitioner::key_scope) == Some(Scope::National);
                if national {
                    if self.oldest_unflushed.is_none() {
                        self.oldest_unflushed = Some(Instant::now());
                    }
                    let e = crate::source::BatchEntry::located(Arc::from(m.topic()), m.partition(), m.offset());
                    self.handle(now, received_at, &e, key, m.payload())?;
                    handled += 1;
                }
                let slot = self.ckpt.offsets.entry(national_reader_key(m.topic())).or_insert(0);
                *slot = (*slot).max(m.offset() + 1);
            }
            Ok(handled)
        })();
        self.national_reader = Some(reader);
        if let Some(rc) = &self.received_counter {
            rc.store(self.ckpt.counters.received - self.received_at_start, Ordering::Relaxed);
        }
        result
    }

    /// The provinces this member estimates now: every one while it holds every partition
    /// (`all`), or those of the partition numbers it holds in every proxy topic (`province`);
    /// `None` while it holds nothing it can estimate from.
    fn owned_provinces(&self) -> Option<BTreeSet<Province>> {
        let ctx = self.consumer.context();
        let owned: BTreeSet<Province> = match self.cfg.role {
            crate::role::Role::Province if self.proxy_partitions > 0 => {
                let assignment = ctx.assignment();
                let proxies = self.cfg.topics.proxies();
                let held: BTreeSet<i32> = (0..self.proxy_partitions)
                    .filter(|k| proxies.iter().all(|t| assignment.iter().any(|(at, ap)| at == t && ap == k)))
                    .collect();
                crate::partitioner::provinces_of(&held, self.proxy_partitions).into_iter().collect()
            }
            _ if ctx.owns_all() => Province::ALL.into_iter().collect(),
            _ => BTreeSet::new(),
        };
        let wanted: Option<Vec<Province>> = self.cfg.provinces.as_ref().map(|v| v.iter().filter_map(|p| Province::parse_lenient(p)).collect());
        let owned: BTreeSet<Province> = owned.into_iter().filter(|p| wanted.as_ref().is_none_or(|w| w.contains(p))).collect();
        (!owned.is_empty()).then_some(owned)
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

    /// Coverage of the current year per province and signal: months received through the
    /// signal's latest month (over all scopes), divided by that month's number; for the
    /// provinces that publish the signal.
    fn update_coverage(&self, live: &ProxyPanel) {
        let Some(year) = self.latest_event_year() else { return };
        let mut months: BTreeMap<(co2cast_model::proxy::Signal, Scope), BTreeSet<u32>> = BTreeMap::new();
        for (s, sc, m, _) in live.iter_monthly() {
            if m.year == year {
                months.entry((s, sc)).or_default().insert(m.month);
            }
        }
        for (s, sc, d, _) in live.iter_daily() {
            if d.year() == year {
                months.entry((s, sc)).or_default().insert(d.month());
            }
        }
        let mut latest: BTreeMap<co2cast_model::proxy::Signal, (u32, bool)> = BTreeMap::new();
        for ((s, sc), ms) in &months {
            let e = latest.entry(*s).or_insert((0, false));
            e.0 = e.0.max(ms.iter().copied().max().unwrap_or(0));
            e.1 |= matches!(sc, Scope::Province(_));
        }
        // Signals without months this year (series that ended) leave the gauge, as do
        // provinces that stopped publishing: only what is set below is current.
        co2cast_metrics::metrics().proxy_coverage.reset();
        for (signal, (through, provincial)) in latest {
            let scopes: Vec<Scope> = if provincial { Province::ALL.iter().map(|p| Scope::Province(*p)).collect() } else { vec![Scope::National] };
            for scope in scopes {
                // Only provinces that publish the signal (it had values the year before, in
                // the history or received): a province that never reports alumina is not a
                // coverage gap.
                let published_before = (1..=12).any(|m| {
                    let ym = YearMonth::new(year - 1, m);
                    self.history.proxies.monthly(signal, scope, ym).is_some() || live.monthly(signal, scope, ym).is_some()
                });
                if !published_before && !months.contains_key(&(signal, scope)) {
                    continue;
                }
                let have = months.get(&(signal, scope)).map_or(0, |ms| ms.iter().filter(|m| **m <= through).count());
                let label = scope.code();
                co2cast_metrics::state::set_proxy_coverage(label, signal.as_str(), have as f64 / through.max(1) as f64);
            }
        }
    }

    /// A series whose latest month moves changes the gap/nowcast status of the months after
    /// its earlier frontier, in every year that reads it: the frontier a year's estimate sees
    /// is that of the bundled history up to its base year overlaid with what was received.
    fn mark_frontier_moves(&mut self, live: &ProxyPanel) {
        let frontier = Frontier(live.last_months());
        let first_live_year = live.iter_monthly().map(|(_, _, m, _)| m.year).chain(live.iter_daily().map(|(_, _, d, _)| d.year())).min();
        let changes: Vec<_> = self.ckpt.frontier.changes(&frontier).collect();
        if let Some(first) = first_live_year {
            for ((signal, scope), before, after) in changes {
                let last = before.max(after).map_or(first, |m| m.year);
                for year in first..=last {
                    let Some(base) = co2cast_model::estimate::base_year_for(year, &self.inventory_years) else { continue };
                    let history = self
                        .history_frontiers
                        .entry(base)
                        .or_insert_with(|| self.history.proxies.truncated(YearMonth::new(base, 12)).last_months())
                        .get(&(signal, scope))
                        .copied();
                    // The earlier of the two frontiers this year saw.
                    let from = history.max(before.min(after));
                    if from.is_none_or(|f| year >= f.year) {
                        self.ckpt.dirty.entry(year).or_insert(Dirty::Provinces(0)).add(scope);
                    }
                }
            }
        }
        self.ckpt.frontier = frontier;
    }

    /// The last day estimates run to: the latest day any signal has reached, then
    /// `nowcast_months_beyond_data` more months of nowcasts, but never past today.
    fn estimate_end(&self) -> Option<NaiveDate> {
        let last_day = self.latest_data_day()?;
        let bound = YearMonth::of(last_day).add_months(self.cfg.nowcast_months_beyond_data as i32).last_day();
        Some(last_day.max(bound.min(shanghai_day(&self.now()))))
    }

    /// The days `estimate_end` adds past the latest day any signal reached.
    fn nowcast_beyond_data(&self) -> Option<(NaiveDate, NaiveDate)> {
        let last_day = self.latest_data_day()?;
        let end = self.estimate_end()?;
        (end > last_day).then(|| (last_day + Duration::days(1), end))
    }

    /// The Asia/Shanghai day of the latest period end any signal has reached.
    fn latest_data_day(&self) -> Option<NaiveDate> {
        let last = self.ckpt.watermarks.signals.values().map(|w| w.max_event_end).max()?;
        Some(shanghai_day(&(last - Duration::seconds(1))))
    }

    /// The Asia/Shanghai year of the latest period end any signal has reached.
    fn latest_event_year(&self) -> Option<i32> {
        self.latest_data_day().map(|d| d.year())
    }

    fn now(&self) -> DateTime<Utc> {
        self.cfg
            .now_override
            .as_deref()
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_else(Utc::now)
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

    /// Every assigned partition has been read to its high watermark. (Some brokers report a
    /// stale high watermark, e.g. tansu 0.6 after batched produce; callers therefore also
    /// require input to have been quiet.)
    fn caught_up(&self) -> Result<bool, PipelineError> {
        let assignment = self.consumer.assignment().map_err(kafka("assignment"))?;
        if assignment.count() == 0 {
            return Ok(false);
        }
        for e in assignment.elements() {
            let high = match self.consumer.fetch_watermarks(e.topic(), e.partition(), std::time::Duration::from_secs(5)) {
                Ok((_, high)) => high,
                Err(err) => {
                    // Not known to be caught up; asked again at the next idle check.
                    co2cast_metrics::events::BrokerRequestFailed { operation: "watermarks", error: &err, domain: co2cast_metrics::ErrorDomain::External, retry_in: None, attempt: 0 }
                        .emit();
                    return Ok(false);
                }
            };
            let next = self.ckpt.offsets.get(&partition_key(e.topic(), e.partition())).copied().unwrap_or(0);
            if next < high {
                return Ok(false);
            }
        }
        if let Some(reader) = &self.national_reader {
            for t in self.cfg.topics.proxies() {
                let Ok((_, high)) = reader.fetch_watermarks(t, crate::partitioner::NATIONAL_PARTITION, std::time::Duration::from_secs(5)) else { return Ok(false) };
                if self.ckpt.offsets.get(&national_reader_key(t)).copied().unwrap_or(0) < high {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    /// Handles a batch; flushes inside it when `checkpoint_every_messages` is reached, with
    /// offsets recorded up to the message handled last.
    /// Returns false when `stop` was set at an in-batch flush; the rest of the batch is then
    /// left unhandled (it is after the checkpoint, so a restart reads it again).
    fn handle_batch(
        &mut self,
        batch: &MessageBatch,
        stop: &AtomicBool,
        on_progress: &mut dyn FnMut(&crate::checkpoint::Counters),
    ) -> Result<bool, PipelineError> {
        let now = self.now();
        let received_at = Utc::now();
        if !batch.entries.is_empty() && self.oldest_unflushed.is_none() {
            self.oldest_unflushed = batch.first_polled.or(Some(Instant::now()));
        }
        // The current run of messages from one partition: (entry index of its start, next offset).
        let mut run: Option<(usize, i64)> = None;
        for (i, e) in batch.entries.iter().enumerate() {
            if let Some((start, next)) = run
                && (batch.entries[start].partition != e.partition || !Arc::ptr_eq(&batch.entries[start].topic, &e.topic))
            {
                self.record_offset(&batch.entries[start], next);
                run = None;
            }
            self.handle(now, received_at, e, batch.key(e), batch.payload(e))?;
            run = Some((run.map_or(i, |r| r.0), e.offset + 1));
            if self.since_flush >= self.cfg.checkpoint_every_messages {
                if let Some((start, next)) = run.take() {
                    self.record_offset(&batch.entries[start], next);
                }
                self.flush_with(true)?;
                on_progress(&self.ckpt.counters);
                if stop.load(Ordering::Relaxed) {
                    return Ok(false);
                }
                if i + 1 < batch.entries.len() {
                    self.oldest_unflushed = Some(Instant::now());
                }
            }
        }
        if let Some((start, next)) = run {
            self.record_offset(&batch.entries[start], next);
        }
        if let Some(rc) = &self.received_counter {
            rc.store(self.ckpt.counters.received - self.received_at_start, Ordering::Relaxed);
        }
        self.emit_family_counts();
        Ok(true)
    }

    fn record_offset(&mut self, e: &crate::source::BatchEntry, next: i64) {
        let k = partition_key(&e.topic, e.partition);
        let slot = self.ckpt.offsets.entry(k).or_insert(next);
        *slot = (*slot).max(next);
    }

    /// `now` is the reference time of validation; `received_at` the wall clock of the batch.
    fn handle(
        &mut self,
        now: DateTime<Utc>,
        received_at: DateTime<Utc>,
        e: &crate::source::BatchEntry,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
    ) -> Result<(), PipelineError> {
        let (topic, partition, offset) = (&*e.topic, e.partition, e.offset);
        let family = match &self.last_topic {
            Some((t, f)) if Arc::ptr_eq(t, &e.topic) => *f,
            _ => {
                let f = self.cfg.topics.family(topic);
                self.last_topic = Some((e.topic.clone(), f));
                f
            }
        };
        let fi = family.map_or(FAMILY_SLOTS - 1, |f| f as usize);
        self.family_counts[fi][0] += 1;
        let c = &mut self.ckpt.counters;
        c.received += 1;
        self.since_flush += 1;
        let result = match payload {
            None => Err(co2cast_ingest::Reject { code: co2cast_ingest::RejectCode::MalformedJson, reason: "empty payload".into() }),
            Some(p) => match family {
                Some(family) => validate_family(family, key, p, now, &self.caps, &self.rules),
                None => Err(co2cast_ingest::Reject {
                    code: co2cast_ingest::RejectCode::UnknownTopic,
                    reason: format!("`{topic}` is not a proxy topic of this pipeline"),
                }),
            },
        };
        // Province members own provinces by partition: a province's message elsewhere would
        // reach a member that does not estimate it.
        let result = match result {
            Ok(v) if self.cfg.role == crate::role::Role::Province => match v.scope {
                Scope::Province(p) if self.proxy_partitions > 0 && crate::partitioner::province_partition(p, self.proxy_partitions) != partition => {
                    Err(co2cast_ingest::Reject {
                        code: co2cast_ingest::RejectCode::WrongPartition,
                        reason: format!(
                            "{} belongs to partition {} of {} (its index in the province list modulo the partitions; see docs/pipeline.md, Partitioning)",
                            p.iso_code(),
                            crate::partitioner::province_partition(p, self.proxy_partitions),
                            self.proxy_partitions
                        ),
                    })
                }
                Scope::National if self.proxy_partitions > 0 && partition != crate::partitioner::NATIONAL_PARTITION => Err(co2cast_ingest::Reject {
                    code: co2cast_ingest::RejectCode::WrongPartition,
                    reason: format!("national messages belong to partition {} (see docs/pipeline.md, Partitioning)", crate::partitioner::NATIONAL_PARTITION),
                }),
                _ => Ok(v),
            },
            other => other,
        };
        match result {
            Ok(v) => {
                c.accepted += 1;
                self.family_counts[fi][1] += 1;
                let up = self.ckpt.state.upsert(&v);
                match up {
                    co2cast_ingest::Upsert::Revised { .. } => {
                        c.revisions += 1;
                        self.family_counts[fi][3] += 1;
                    }
                    co2cast_ingest::Upsert::Duplicate | co2cast_ingest::Upsert::Stale => c.accepted_unchanged += 1,
                    co2cast_ingest::Upsert::Inserted => {}
                }
                // Four granularities (hour, day, month, year) per signal.
                let slot = v.signal as usize * 4 + v.granularity as usize;
                if self.stream_keys.len() <= slot {
                    self.stream_keys.resize(slot + 1, None);
                }
                let stream = self.stream_keys[slot]
                    .get_or_insert_with(|| co2cast_ingest::watermark::stream_key(v.signal, v.granularity).into_boxed_str());
                if let Arrival::Late { .. } = self.ckpt.watermarks.observe(stream, v.period_end_s(), now) {
                    c.late += 1;
                    self.family_counts[fi][2] += 1;
                }
                if up.changed() {
                    // A scope's messages mostly fall in the year it marked last.
                    let slot = match v.scope {
                        Scope::Province(p) => p.index(),
                        Scope::National => Province::ALL.len(),
                    };
                    if !self.marked_year[slot].is_some_and(|(from, to)| (from..to).contains(&v.period_start_s)) {
                        use co2cast_model::calendar::civil::{shanghai_year, shanghai_year_start};
                        let y = shanghai_year(v.period_start_s);
                        // Every year whose estimate reads values of year y.
                        let last = self.estimate_end().map_or(y as i32, |d| d.year());
                        for year in co2cast_model::estimate::years_reading(y as i32, &self.inventory_years, last) {
                            // The year before reads only January (its December's days run into
                            // it): re-estimated when it has estimates, never started for it.
                            if year < y as i32 && !self.ckpt.estimated_years.contains(&year) {
                                continue;
                            }
                            self.ckpt.dirty.entry(year).or_insert(Dirty::Provinces(0)).add(v.scope);
                        }
                        self.marked_year[slot] = Some((shanghai_year_start(y), shanghai_year_start(y + 1)));
                    }
                }
                // The lake's `proxies` table is the state's changelog: values read again
                // (duplicates, stale revisions, a replay after a restart) add nothing.
                if let Some(l) = &mut self.lake
                    && up.changed()
                {
                    l.accepted.push(crate::lake::AcceptedProxy { proxy: v, topic: e.topic.clone(), partition, offset, received_at });
                }
                Ok(())
            }
            Err(r) => {
                c.dead_lettered += 1;
                *c.dead_lettered_by_code.entry(r.code.as_str().to_string()).or_insert(0) += 1;
                co2cast_metrics::events::ProxyMessageDeadLettered {
                    family: family_label(family),
                    code: r.code.as_str(),
                    reason: &r.reason,
                    topic,
                    partition,
                    offset,
                }
                .emit();
                let headers = OwnedHeaders::new()
                    .insert(Header { key: "source_topic", value: Some(topic) })
                    .insert(Header { key: "source_partition", value: Some(&partition.to_string()) })
                    .insert(Header { key: "source_offset", value: Some(&offset.to_string()) })
                    .insert(Header { key: "error_code", value: Some(r.code.as_str()) })
                    .insert(Header { key: "error_reason", value: Some(&r.reason) });
                let mut rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&self.cfg.topics.dead_letter).payload(payload.unwrap_or(&[])).headers(headers);
                if let Some(k) = key {
                    rec = rec.key(k);
                }
                self.send(rec)
            }
        }
    }

    fn send(&self, rec: BaseRecord<'_, [u8], [u8], ()>) -> Result<(), PipelineError> {
        let recovered = crate::kafka_sink::send(&self.producer, rec, &self.stop, self.cfg.broker_retry_max_backoff_ms, &|| self.mark_broker_down())?;
        if recovered {
            self.status.broker_down_since_ms.store(0, Ordering::Release);
        }
        Ok(())
    }

    /// Waits until every message sent is delivered, retrying with backoff while the brokers
    /// are away. A message refused for good fails the flush: the checkpoint is not written
    /// and a restart publishes again from the previous one.
    fn deliver(&mut self) -> Result<(), PipelineError> {
        let (producer, stop) = (self.producer.clone(), self.stop.clone());
        let recovered = crate::kafka_sink::deliver(&producer, &stop, self.cfg.broker_retry_max_backoff_ms, &mut || {
            self.mark_broker_down();
            self.tick();
        })?;
        if recovered {
            self.status.broker_down_since_ms.store(0, Ordering::Release);
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
        self.deliver()?;
        if years > 0 {
            co2cast_metrics::events::FlushCompleted { reestimation: started.elapsed(), rows, years }.emit();
        }
        // The lake commit carries the number of the checkpoint written next.
        if let Some(l) = &mut self.lake {
            l.commit(self.ckpt.sequence + 1)?;
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

    /// Province stage: provinces this member has just been given may have been published by
    /// another member since it last estimated them (from part of their input, if that member
    /// held them only a while). It re-estimates them and publishes every row again as a new
    /// revision, after the other member's, so that the newest message of each key is right.
    fn republish(&mut self, gained: &[Province]) {
        if gained.is_empty() {
            return;
        }
        for year in self.ckpt.estimated_years.clone() {
            for p in gained {
                self.ckpt.dirty.entry(year).or_insert(Dirty::Provinces(0)).add(Scope::Province(*p));
            }
        }
        let prefixes: Vec<String> = gained.iter().map(|p| format!("{}/", p.iso_code())).collect();
        for store in [&mut self.ckpt.published, &mut self.ckpt.published_ensemble, &mut self.ckpt.published_grid_intensity] {
            for (key, (_, fingerprint)) in store.rows.iter_mut() {
                if prefixes.iter().any(|x| key.starts_with(x.as_str())) {
                    *fingerprint = FORCE_REPUBLISH;
                }
            }
        }
        // The year caches hold rows computed before the gap.
        for p in gained {
            for c in self.cache.values_mut() {
                c.provinces.remove(p);
            }
        }
    }

    /// Re-estimates a year's dirty provinces and publishes the rows that changed; returns
    /// how many.
    fn estimate_year(&mut self, year: i32, dirty: &Dirty, live: &ProxyPanel, owned: &BTreeSet<Province>) -> Result<u64, PipelineError> {
        let inv_years = self.history.inventory.years();
        let Some(&last_inv) = inv_years.iter().filter(|y| **y < year).max() else { return Ok(0) };
        // Days up to the furthest signal watermark and the nowcast months beyond it.
        let Some(last_day) = self.estimate_end() else { return Ok(0) };
        if last_day.year() < year {
            return Ok(0);
        }
        let through = if last_day.year() > year { NaiveDate::from_ymd_opt(year, 12, 31).expect("valid") } else { last_day };
        let horizon = (year - last_inv) as u32;
        let key = (last_inv, horizon);
        if !self.calibrations.contains_key(&key) {
            let cal = calibrate(&self.history.inventory, &self.history.proxies, last_inv, horizon, &self.model)
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
        let heat = self.heat_shares.entry(last_inv).or_insert_with(|| heat_shares(&self.history.proxies, last_inv)).clone();
        let heat_multipliers = CHP_HEAT.member_multipliers(self.cfg.ensemble_seed, self.cfg.ensemble_members);
        let base_inv = self.history.inventory.up_to(last_inv);
        let (hc, df) = (HolidayCalendar::official(), DayFactorTable::bundled());
        let est = Estimator { calibration: cal, inventory: &base_inv, proxies: &panel, calendar: &hc, day_factors: &df };
        let months: Vec<YearMonth> = (1..=through.month()).map(|m| YearMonth::new(year, m)).collect();
        let settings = EnsembleSettings { members: self.cfg.ensemble_members, seed: self.cfg.ensemble_seed };
        let wanted: Option<Vec<Province>> =
            self.cfg.provinces.as_ref().map(|v| v.iter().filter_map(|p| Province::parse_lenient(p)).collect());
        let province_stage = self.cfg.role == crate::role::Role::Province;
        self.ckpt.estimated_years.insert(year);
        // A cache for another day range or base year is of no use.
        let reuse = self.cache.get(&year).is_some_and(|c| c.through == through && c.base_year == last_inv);
        let cache = if reuse {
            self.cache.get_mut(&year).expect("checked")
        } else {
            self.cache.insert(year, YearCache { base_year: last_inv, through, days: Vec::new(), provinces: BTreeMap::new(), fallback: BTreeMap::new() });
            self.cache.get_mut(&year).expect("inserted")
        };
        let mut out = Vec::new();
        let mut fresh: BTreeMap<Province, Vec<co2cast_model::estimate::RowEnsemble>> = BTreeMap::new();
        let mut estimated: Vec<Province> = Vec::new();
        for p in Province::ALL {
            if !owned.contains(&p) || (reuse && !dirty.includes(p)) {
                continue;
            }
            let rows: Vec<_> = Sector::ALL.iter().filter_map(|s| est.row(p, *s, &months, settings)).collect();
            if rows.is_empty() {
                cache.provinces.remove(&p);
                continue;
            }
            let ndays = rows[0].days.iter().filter(|d| **d <= through).count();
            cache.days = rows[0].days[..ndays].to_vec();
            let mut py = ProvinceYear {
                rows: Vec::new(),
                central: vec![0.0; ndays],
                members: vec![vec![0.0; ndays]; settings.members],
                coverage_weighted: vec![0.0; ndays],
                source: vec![SourceType::Proxy; ndays],
                data_months: vec![Vec::new(); ndays],
                sector_totals: Vec::new(),
                intensity: rows.iter().find(|r| r.sector == Sector::Power).map(|r| {
                    let generation = co2cast_model::grid_intensity::daily_generation(&panel, p, &r.days[..ndays], &r.central[..ndays]);
                    let h = heat.get(&p).copied().unwrap_or(CHP_HEAT.national_share);
                    co2cast_model::grid_intensity::allocate(r, h, &heat_multipliers, generation, &CHP_HEAT)
                }),
                grid: Vec::new(),
            };
            py.grid = province_grid_rows(p, py.intensity.as_ref(), last_inv);
            for r in &rows {
                for (i, d) in r.daily_estimates(last_inv).into_iter().enumerate().take(ndays) {
                    py.central[i] += d.value_mtco2;
                    py.source[i] = py.source[i].max(d.source_type);
                    if let Some(m) = d.data_through {
                        py.data_months[i].push((m, d.value_mtco2));
                    }
                    py.coverage_weighted[i] += d.coverage * d.value_mtco2;
                    py.rows.push(EstimateRow::from_daily(&d));
                }
                for (acc, m) in py.members.iter_mut().zip(&r.members) {
                    for (x, y) in acc.iter_mut().zip(m) {
                        *x += y;
                    }
                }
                let central: f64 = r.central.iter().take(ndays).sum();
                py.sector_totals.push((r.sector, central, r.members.iter().map(|m| m.iter().take(ndays).sum()).collect()));
            }
            out.extend(py.rows.iter().cloned());
            cache.provinces.insert(p, py);
            estimated.push(p);
            if self.lake.is_some() {
                fresh.insert(p, rows);
            }
        }
        let (grid, sums) = if province_stage {
            // The national stage sums members; Tibet's fallback and national grid rows need
            // every province, so the province stage publishes its own provinces' rows only.
            let mut sums = Vec::new();
            for p in &estimated {
                let py = &cache.provinces[p];
                for (i, d) in cache.days.iter().enumerate() {
                    sums.push(crate::province_ensemble::ProvinceDayEnsemble {
                        province: p.iso_code().to_string(),
                        date: *d,
                        base_year: last_inv,
                        central_mtco2: py.central[i],
                        coverage_weighted_mtco2: py.coverage_weighted[i],
                        source_type: py.source[i],
                        data_months: py.data_months[i].clone(),
                        members_mtco2: py.members.iter().map(|m| m[i]).collect(),
                        revision: 0,
                    });
                }
            }
            (estimated.iter().flat_map(|p| cache.provinces[p].grid.iter().cloned()).collect(), sums)
        } else {
            // Provinces with generation but no power estimate (no inventory: Tibet) take the CO2
            // per kWh of thermal generation of those with one, over the same days.
            cache.fallback.clear();
            let pairs: Vec<(f64, f64)> = cache
                .provinces
                .values()
                .filter_map(|py| py.intensity.as_ref())
                .map(|path| {
                    let mut s = IntensitySum::default();
                    for d in 0..path.days.len() {
                        s.add_day(path, d);
                    }
                    (s.power_mtco2, s.thermal_gwh)
                })
                .collect();
            if let Some(factor) = co2cast_model::grid_intensity::ThermalFactor::from_provinces(&pairs) {
                for p in Province::ALL {
                    if wanted.as_ref().is_some_and(|w| !w.contains(&p)) || cache.provinces.contains_key(&p) {
                        continue;
                    }
                    let generation = co2cast_model::grid_intensity::daily_generation(&panel, p, &cache.days, &vec![1.0; cache.days.len()]);
                    if generation.iter().all(Option::is_none) {
                        continue;
                    }
                    let h = heat.get(&p).copied().unwrap_or(CHP_HEAT.national_share);
                    cache.fallback.insert(p, factor.path(p, &cache.days, generation, h, &heat_multipliers, self.cfg.ensemble_seed, &CHP_HEAT));
                }
            }
            // National rows from the joint ensemble of every province.
            let ndays = cache.days.len();
            let mut central = vec![0.0; ndays];
            let mut members = vec![vec![0.0; ndays]; settings.members];
            let mut cov = vec![0.0; ndays];
            let mut source = vec![SourceType::Proxy; ndays];
            let mut data_months: Vec<Vec<(YearMonth, f64)>> = vec![Vec::new(); ndays];
            for py in cache.provinces.values() {
                for i in 0..ndays {
                    central[i] += py.central[i];
                    cov[i] += py.coverage_weighted[i];
                    source[i] = source[i].max(py.source[i]);
                    data_months[i].extend_from_slice(&py.data_months[i]);
                }
                for (acc, m) in members.iter_mut().zip(&py.members) {
                    for (x, y) in acc.iter_mut().zip(m) {
                        *x += y;
                    }
                }
            }
            for (i, d) in cache.days.iter().enumerate() {
                let col: Vec<f64> = members.iter().map(|m| m[i]).collect();
                let c = if central[i] > 0.0 { cov[i] / central[i] } else { 0.0 };
                let through_month = co2cast_model::estimate::month_behind_half(&mut data_months[i]);
                out.push(EstimateRow::national(*d, &Band::from_members(central[i], &col), source[i], c, through_month, last_inv));
            }
            let grid = grid_rows(cache, last_inv);
            let annual_members: Vec<f64> = members.iter().map(|m| m.iter().sum()).collect();
            self.ckpt.national.insert(year, NationalYear { year, days: ndays, band: Band::from_members(central.iter().sum(), &annual_members) });
            (grid, Vec::new())
        };
        for e in &self.ckpt.published_ensemble.diff(sums) {
            let json = serde_json::to_vec(e).map_err(|e| PipelineError::Internal(format!("encoding member sums as JSON: {e}")))?;
            let key = crate::estimates::Revisioned::key(e);
            self.send(BaseRecord::to(&self.cfg.topics.ensemble_province).key(key.as_bytes()).payload(&json))?;
        }
        let changed = self.ckpt.published.diff(out);
        let grid_changed = self.ckpt.published_grid_intensity.diff(grid.clone());
        if let Some(lake) = &mut self.lake {
            let at = self.flush_started_at;
            // Every row of each province-month with a changed row (one file each).
            let touched: BTreeSet<(String, u32)> = grid_changed.iter().map(|r| (r.province.clone(), r.date.month())).collect();
            let revisions = &self.ckpt.published_grid_intensity.rows;
            for (province, month) in &touched {
                let rows: Vec<GridIntensityRow> = grid
                    .iter()
                    .filter(|r| r.province == *province && r.date.month() == *month)
                    .map(|r| GridIntensityRow { revision: revisions.get(&r.key()).map_or(0, |x| x.0), ..r.clone() })
                    .collect();
                lake.grid_intensity(&rows, year, *month, province, at);
            }
            if through.month() == 12 && through.day() == 31 && !grid_changed.is_empty() {
                let lines = grid_comparison(&self.cache[&year], &panel, &self.history.grid_references, year, last_inv);
                lake.grid_comparison(year, &lines, at);
            }
        }
        if !grid_changed.is_empty() {
            let batch = crate::grid_intensity::to_batch(&grid_changed, self.flush_started_at);
            let lines = batch_to_json_lines(&batch).map_err(|e| PipelineError::Internal(format!("encoding grid intensity as JSON: {e}")))?;
            for (r, json) in grid_changed.iter().zip(lines) {
                let key = r.key();
                let rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&self.cfg.topics.grid_intensity_daily).key(key.as_bytes()).payload(&json);
                self.send(rec)?;
            }
            let revisions = grid_changed.iter().filter(|r| r.revision > 0).count() as u64;
            let c = &mut self.ckpt.counters;
            c.grid_intensity_published += grid_changed.len() as u64;
            c.grid_intensity_revisions_published += revisions;
            co2cast_metrics::events::GridIntensityPublished { rows: grid_changed.len() as u64, revisions }.emit();
        }
        if let Some(lake) = &mut self.lake {
            let commit = self.ckpt.sequence + 1;
            let at = self.flush_started_at;
            lake.published(&changed, at, commit);
            // Members of every province-month that changed (all of them when the year's cache
            // was rebuilt, e.g. after a restart).
            let mut months: BTreeSet<(Province, u32)> = BTreeSet::new();
            for r in &changed {
                if let Some(p) = Province::from_iso(&r.province) {
                    months.insert((p, r.date.month()));
                }
            }
            if !reuse {
                for p in fresh.keys() {
                    months.extend((1..=through.month()).map(|m| (*p, m)));
                }
            }
            let published = &self.ckpt.published;
            for (p, m) in months {
                if let Some(rows) = fresh.get(&p) {
                    lake.ensemble(rows, year, m, |k| published.rows.get(k).map(|x| x.0).unwrap_or(0), last_inv);
                }
            }
            // A complete year with an inventory or a national reference value: compare.
            if through.month() == 12 && through.day() == 31 && !changed.is_empty() {
                let lines = self.cache[&year].comparison(&self.history.inventory, &self.history.references, year, &self.ckpt.national[&year].band, last_inv, self.cfg.provinces.is_none());
                if !lines.is_empty() {
                    lake.comparison(year, &lines, at);
                }
            }
        }
        if changed.is_empty() {
            return Ok(0);
        }
        let c = &mut self.ckpt.counters;
        c.estimates_published += changed.len() as u64;
        c.estimate_revisions_published += changed.iter().filter(|r| r.revision > 0).count() as u64;
        let mut by_sector: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
        for r in &changed {
            let e = by_sector.entry(r.sector.as_str()).or_default();
            e.0 += 1;
            e.1 += u64::from(r.revision > 0);
            let newest = self.newest_published.entry(r.sector.clone()).or_insert(r.date);
            if r.date >= *newest {
                *newest = r.date;
                co2cast_metrics::state::set_newest_published_day_end(&r.sector, day_end_unix_s(r.date));
            }
        }
        for (sector, (rows, revisions)) in by_sector {
            co2cast_metrics::events::EstimatesPublished { sector, rows, revisions }.emit();
        }
        let keys: Vec<String> = changed.iter().map(|r| r.key()).collect();
        let batch = to_batch(&changed, self.flush_started_at);
        let lines = batch_to_json_lines(&batch).map_err(|e| PipelineError::Internal(format!("encoding estimates as JSON: {e}")))?;
        for (k, json) in keys.iter().zip(lines) {
            let rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&self.cfg.topics.estimates_daily).key(k.as_bytes()).payload(&json);
            self.send(rec)?;
        }
        Ok(keys.len() as u64)
    }
}

/// What a state depends on besides its input: a state estimated with other settings (model
/// ones included) is not resumed with these.
pub(crate) fn settings_fingerprint(cfg: &ProcessorConfig, model: &ModelConfig) -> Result<String, PipelineError> {
    let model_json = serde_json::to_string(model).map_err(|e| PipelineError::Internal(format!("model settings: {e}")))?;
    Ok(format!("{}; model settings {:016x}", cfg.estimate_settings(), crate::estimates::fnv1a(&[model_json.as_bytes()])))
}

/// The model settings at `path` (JSON), or the built-in default.
pub fn load_model_config(path: Option<&std::path::Path>) -> Result<ModelConfig, PipelineError> {
    let Some(path) = path else { return Ok(ModelConfig::default()) };
    let text = std::fs::read_to_string(path).map_err(|e| PipelineError::Config(format!("model_config {}: {e}", path.display())))?;
    serde_json::from_str(&text).map_err(|e| PipelineError::Config(format!("model_config {}: {e}", path.display())))
}

/// CHP heat shares of every province's power CO2 for base year `base_year`: its district
/// heating area (the latest register up to the base year) and thermal generation.
fn heat_shares(history: &ProxyPanel, base_year: i32) -> BTreeMap<Province, f64> {
    let (mut area, mut thermal) = (BTreeMap::new(), BTreeMap::new());
    for p in Province::ALL {
        let scope = Scope::Province(p);
        if let Some(a) = (base_year - 5..=base_year).rev().find_map(|y| history.monthly(co2cast_model::proxy::Signal::HeatingArea, scope, YearMonth::new(y, 12))) {
            area.insert(p, a);
        }
        let t: f64 = (1..=12).filter_map(|m| history.monthly(co2cast_model::proxy::Signal::ThermalGeneration, scope, YearMonth::new(base_year, m))).sum();
        if t > 0.0 {
            thermal.insert(p, t);
        }
    }
    CHP_HEAT.provincial_shares(&area, &thermal)
}

/// A province's grid intensity rows: every day with generation.
fn province_grid_rows(p: Province, path: Option<&IntensityPath>, base_year: i32) -> Vec<GridIntensityRow> {
    let Some(path) = path else { return Vec::new() };
    (0..path.days.len())
        .filter_map(|d| {
            let mix = path.generation[d]?;
            let mut day = IntensitySum::default();
            day.add_day(path, d);
            GridIntensityRow::new(path.days[d], p.iso_code(), &day, &mix, 1, base_year)
        })
        .collect()
}

/// Grid intensity rows of a year: every province-day with generation, and the national sum of
/// the provinces with generation that day (member-wise).
fn grid_rows(cache: &YearCache, base_year: i32) -> Vec<GridIntensityRow> {
    let n = cache.days.len();
    let mut national: Vec<(IntensitySum, Option<GenerationMix>, i32)> = vec![(IntensitySum::default(), None, 0); n];
    let mut rows = Vec::new();
    for py in cache.provinces.values() {
        rows.extend(py.grid.iter().cloned());
    }
    for (p, path) in &cache.fallback {
        rows.extend(province_grid_rows(*p, Some(path), base_year));
    }
    for (_, path) in cache.intensity_paths() {
        for d in 0..path.days.len().min(n) {
            let Some(mix) = path.generation[d] else { continue };
            let (sum, total, count) = &mut national[d];
            sum.add_day(path, d);
            *count += 1;
            let add = |a: Option<f64>, b: Option<f64>| match (a, b) {
                (None, None) => None,
                (a, b) => Some(a.unwrap_or(0.0) + b.unwrap_or(0.0)),
            };
            *total = Some(match total {
                None => mix,
                Some(t) => GenerationMix {
                    thermal_gwh: t.thermal_gwh + mix.thermal_gwh,
                    hydro_gwh: add(t.hydro_gwh, mix.hydro_gwh),
                    wind_gwh: add(t.wind_gwh, mix.wind_gwh),
                    solar_gwh: add(t.solar_gwh, mix.solar_gwh),
                    nuclear_gwh: add(t.nuclear_gwh, mix.nuclear_gwh),
                    carried_forward: t.carried_forward | mix.carried_forward,
                },
            });
        }
    }
    for (d, (sum, mix, count)) in national.iter().enumerate() {
        if let Some(mix) = mix {
            rows.extend(GridIntensityRow::new(cache.days[d], "CN", sum, mix, *count, base_year));
        }
    }
    rows
}

/// Annual intensity of each province and of China (days with generation, member-wise) beside
/// the published factors of the year, with each province's consumption for its trade balance.
fn grid_comparison(cache: &YearCache, panel: &ProxyPanel, references: &[co2cast_model::references::GridReference], year: i32, base_year: i32) -> Vec<GridComparisonLine> {
    let reference = |p: Option<Province>| {
        references.iter().find(|r| r.year == year && r.province == p).map(|r| (r.source.clone(), r.gco2_per_kwh))
    };
    let mut national = IntensitySum::default();
    let mut national_consumption = Some(0.0);
    let mut lines = Vec::new();
    for (p, path) in cache.intensity_paths() {
        let mut sum = IntensitySum::default();
        for d in 0..path.days.len() {
            sum.add_day(path, d);
        }
        let Some(band) = sum.band() else { continue };
        let months: Vec<f64> = (1..=12).filter_map(|m| panel.monthly(co2cast_model::proxy::Signal::ElectricityConsumption, Scope::Province(p), YearMonth::new(year, m))).collect();
        let consumption = (months.len() == 12).then(|| months.iter().sum::<f64>());
        national_consumption = national_consumption.zip(consumption).map(|(a, b)| a + b);
        national.add(&sum);
        lines.push(GridComparisonLine {
            province: p.iso_code().to_string(),
            intensity_gco2_per_kwh: band.central,
            p2_5: band.p2_5,
            p97_5: band.p97_5,
            generation_gwh: sum.generation_gwh,
            consumption_gwh: consumption,
            reference: reference(Some(p)),
            base_year,
        });
    }
    if let Some(band) = national.band() {
        lines.push(GridComparisonLine {
            province: "CN".into(),
            intensity_gco2_per_kwh: band.central,
            p2_5: band.p2_5,
            p97_5: band.p97_5,
            generation_gwh: national.generation_gwh,
            consumption_gwh: national_consumption,
            reference: reference(None),
            base_year,
        });
    }
    lines
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

/// An exclusive lock on `<dir>/<name>` (created with the directory), released when the file
/// is closed, also when the process is killed; or a configuration error naming the holder.
/// The checkpoint key of the province stage's own read of a topic's national partition.
fn national_reader_key(topic: &str) -> String {
    format!("{topic}/{}@national", crate::partitioner::NATIONAL_PARTITION)
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use co2cast_model::inventory::{InventoryItem, InventoryPanel};

    fn cache(provinces: &[Province]) -> YearCache {
        let band_members = |v: f64| vec![v * 0.98, v, v * 1.02];
        let provinces = provinces
            .iter()
            .map(|p| {
                let py = ProvinceYear {
                    rows: Vec::new(),
                    central: Vec::new(),
                    members: Vec::new(),
                    coverage_weighted: Vec::new(),
                    source: Vec::new(),
                    data_months: Vec::new(),
                    sector_totals: vec![(Sector::Power, 100.0, band_members(100.0)), (Sector::Industry, 50.0, band_members(50.0))],
                    intensity: None,
                    grid: Vec::new(),
                };
                (*p, py)
            })
            .collect();
        YearCache { base_year: 2019, through: NaiveDate::from_ymd_opt(2021, 12, 31).unwrap(), days: Vec::new(), provinces, fallback: BTreeMap::new() }
    }

    fn reference(source: &str, year: i32, v: f64) -> co2cast_model::references::NationalReference {
        co2cast_data::proxies::national_reference(source, BTreeMap::from([(year, v)]))
    }

    #[test]
    fn settings_that_would_be_dropped_later_are_refused_when_loaded() {
        let ok = ProcessorConfig { provinces: Some(vec!["CN-GD".into(), "Hebei".into()]), now_override: Some("2020-01-01T00:00:00+08:00".into()), ..ProcessorConfig::default() };
        ok.validate().unwrap();
        let bad = [
            ProcessorConfig { provinces: Some(vec!["CN-GD".into(), "Atlantis".into()]), ..ProcessorConfig::default() },
            ProcessorConfig { provinces: Some(Vec::new()), ..ProcessorConfig::default() },
            ProcessorConfig { now_override: Some("yesterday".into()), ..ProcessorConfig::default() },
            ProcessorConfig { ensemble_members: 0, ..ProcessorConfig::default() },
            ProcessorConfig { nowcast_months_beyond_data: MAX_NOWCAST_MONTHS_BEYOND_DATA + 1, ..ProcessorConfig::default() },
        ];
        for c in bad {
            assert!(c.validate().is_err(), "{c:?}");
        }
        assert!(load_model_config(Some(std::path::Path::new("/nonexistent/model.json"))).is_err());
        let default = load_model_config(Some(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../pipelines/estimator-default.json"))).unwrap();
        assert_eq!(serde_json::to_string(&default).unwrap(), serde_json::to_string(&ModelConfig::default()).unwrap());
    }

    #[test]
    fn a_year_after_the_inventory_is_compared_with_every_national_reference_holding_it() {
        let refs = [reference("gcp", 2021, 11_472.0), reference("energy_institute", 2021, 10_523.0), reference("energy_institute", 2022, 10_550.0)];
        let national = Band::from_members(11_000.0, &[10_500.0, 11_000.0, 11_600.0]);
        let c = cache(&Province::ALL);
        let lines = c.comparison(&InventoryPanel::new("none"), &refs, 2021, &national, 2019, true);
        let got: Vec<(&str, &str, f64)> = lines.iter().map(|l| (l.province.as_str(), l.reference.as_str(), l.reference_mtco2)).collect();
        assert_eq!(got, vec![("CN", "gcp", 11_472.0), ("CN", "energy_institute", 10_523.0)], "no inventory in 2021: national references only");
        assert!(lines.iter().all(|l| l.band == national && !l.reference_scope.is_empty() && !l.scope_difference.is_empty()));
        // A run over some provinces is not the country.
        assert!(c.comparison(&InventoryPanel::new("none"), &refs, 2021, &national, 2019, false).is_empty());
    }

    #[test]
    fn an_inventory_year_compares_provinces_and_the_nation_with_ceads_and_the_references() {
        let mut inv = InventoryPanel::new("test");
        inv.add(Province::Guangdong, InventoryItem::Sector(Sector::Power), 2019, 110.0);
        inv.add(Province::Hebei, InventoryItem::Sector(Sector::Industry), 2019, 40.0);
        let national = Band::from_members(300.0, &[290.0, 300.0, 310.0]);
        let c = cache(&[Province::Guangdong, Province::Hebei]);
        let lines = c.comparison(&inv, &[reference("gcp", 2019, 10_740.0)], 2019, &national, 2018, true);
        let got: Vec<(&str, &str, &str, f64)> = lines.iter().map(|l| (l.province.as_str(), l.sector.as_str(), l.reference.as_str(), l.reference_mtco2)).collect();
        assert_eq!(
            got,
            vec![
                ("CN-HE", "industry", "ceads", 40.0),
                ("CN-HE", "all", "ceads", 40.0),
                ("CN-GD", "power", "ceads", 110.0),
                ("CN-GD", "all", "ceads", 110.0),
                ("CN", "all", "ceads", 150.0),
                ("CN", "all", "gcp", 10_740.0),
            ]
        );
        // A province's band sums its sectors' members (only sectors with an inventory value
        // count towards the inventory, every sector towards the estimate).
        assert_eq!(lines[1].band.central, 150.0);
    }
}
