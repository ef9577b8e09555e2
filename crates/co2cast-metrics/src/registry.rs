//! The metrics of `docs/metrics.md`, in one registry per process. A role (processor, SQL
//! endpoint) registers its metrics when it starts, so a process exposes what it does.

use prometheus::core::{Collector, Desc};
use prometheus::proto::{Gauge as GaugeProto, LabelPair, Metric, MetricFamily, MetricType};
use prometheus::{GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};
use std::collections::BTreeMap;
use std::sync::{LazyLock, Mutex};

/// The parts of co2cast a process runs; each exposes its own metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The stream processor (`co2cast run`).
    Processor,
    /// The SQL endpoint (`co2cast serve`, and `run` unless `--no-sql`).
    Sql,
}

const SECONDS_FAST: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
const SECONDS_SLOW: &[f64] = &[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];
const ROWS: &[f64] = &[1.0, 10.0, 100.0, 1_000.0, 10_000.0, 100_000.0, 1_000_000.0];

pub struct Metrics {
    registry: Registry,
    registered: Mutex<Vec<Role>>,
    pub build_info: GaugeVec,
    // Ingest.
    pub proxy_received: IntCounterVec,
    pub proxy_accepted: IntCounterVec,
    pub proxy_dead_lettered: IntCounterVec,
    pub proxy_late: IntCounterVec,
    pub proxy_revised: IntCounterVec,
    pub consumer_lag: IntGaugeVec,
    pub consumer_assigned: IntGauge,
    pub watermark_age: AgeGauge,
    pub proxy_coverage: GaugeVec,
    // Brokers.
    pub broker_errors: IntCounterVec,
    pub broker_retries: IntCounterVec,
    pub broker_up: IntGauge,
    // Checkpoints.
    pub checkpoint_writes: IntCounter,
    pub checkpoint_errors: IntCounter,
    pub checkpoint_duration: Histogram,
    pub checkpoint_age: AgeGauge,
    // Estimates.
    pub estimate_published: IntCounterVec,
    pub estimate_revised: IntCounterVec,
    pub estimate_freshness: AgeGauge,
    pub estimate_reestimation_duration: Histogram,
    // Scaled-out stages.
    pub member_sums_dead_lettered: IntCounter,
    pub lake_writer_rejected: IntCounter,
    pub estimate_flush_rows: Histogram,
    pub grid_intensity_published: IntCounter,
    pub grid_intensity_revised: IntCounter,
    // SQL.
    pub sql_query_duration: HistogramVec,
    pub sql_query_errors: IntCounterVec,
    pub sql_active_connections: IntGauge,
    pub sql_refused_connections: IntCounterVec,
}

fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition")
}

fn histogram(name: &str, help: &str, buckets: &[f64]) -> Histogram {
    Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec())).expect("valid metric definition")
}

impl Metrics {
    fn new() -> Metrics {
        Metrics {
            registry: Registry::new(),
            registered: Mutex::new(Vec::new()),
            build_info: GaugeVec::new(Opts::new("co2cast_build_info", "Always 1: the build's version, model version and git revision."), &["version", "model_version", "git_revision"])
                .expect("valid metric definition"),
            proxy_received: counter("co2cast_proxy_received_messages_total", "Proxy messages read from Kafka.", &["family"]),
            proxy_accepted: counter("co2cast_proxy_accepted_messages_total", "Proxy messages that passed validation (duplicates included).", &["family"]),
            proxy_dead_lettered: counter("co2cast_proxy_dead_lettered_messages_total", "Proxy messages rejected to the dead-letter topic.", &["family", "code"]),
            proxy_late: counter("co2cast_proxy_late_messages_total", "Accepted proxy messages behind their signal's watermark.", &["family"]),
            proxy_revised: counter("co2cast_proxy_revised_messages_total", "Accepted proxy messages that replaced an earlier value (a proxy revision).", &["family"]),
            consumer_lag: IntGaugeVec::new(Opts::new("co2cast_consumer_lag_messages", "Messages in owned partitions not handled yet."), &["family"]).expect("valid metric definition"),
            consumer_assigned: IntGauge::new("co2cast_consumer_assigned_partitions", "Proxy partitions this member owns.").expect("valid metric definition"),
            watermark_age: AgeGauge::new("co2cast_watermark_age_seconds", "Wall-clock time since the end of the latest period received, per signal.", Some("signal")),
            proxy_coverage: GaugeVec::new(
                Opts::new("co2cast_proxy_coverage_ratio", "Share of the current year's months, through the signal's latest month, that a province has received."),
                &["province", "signal"],
            )
            .expect("valid metric definition"),
            broker_errors: counter("co2cast_broker_errors_total", "Failed Kafka requests and client errors.", &["operation"]),
            broker_retries: counter("co2cast_broker_retries_total", "Kafka requests retried after a backoff.", &["operation"]),
            broker_up: IntGauge::new("co2cast_broker_up", "1 while the brokers answer, 0 during an outage.").expect("valid metric definition"),
            checkpoint_writes: IntCounter::new("co2cast_checkpoint_writes_total", "Checkpoints written (offsets, state and publications together).").expect("valid metric definition"),
            checkpoint_errors: IntCounter::new("co2cast_checkpoint_errors_total", "Checkpoints that could not be written.").expect("valid metric definition"),
            member_sums_dead_lettered: IntCounter::new("co2cast_member_sums_dead_lettered_messages_total", "Province member-sum messages the national stage could not read, sent to the dead-letter topic.")
                .expect("valid metric definition"),
            lake_writer_rejected: IntCounter::new("co2cast_lake_writer_rejected_messages_total", "Messages of the estimates topic the lake writer could not read as rows (kept out of the lake).")
                .expect("valid metric definition"),
            checkpoint_duration: histogram("co2cast_checkpoint_duration_seconds", "Time to write a checkpoint.", SECONDS_FAST),
            checkpoint_age: AgeGauge::new("co2cast_checkpoint_age_seconds", "Time since the last checkpoint was written.", None),
            estimate_published: counter("co2cast_estimate_published_rows_total", "Daily estimate rows published (new rows and revisions).", &["sector"]),
            estimate_revised: counter("co2cast_estimate_revised_rows_total", "Published rows that revise an earlier vintage of the same row.", &["sector"]),
            estimate_freshness: AgeGauge::new("co2cast_estimate_freshness_seconds", "Time since the end of the newest published day (Asia/Shanghai), per sector.", Some("sector")),
            estimate_reestimation_duration: histogram("co2cast_estimate_reestimation_duration_seconds", "Time to re-estimate what changed and publish it, per flush.", SECONDS_SLOW),
            estimate_flush_rows: histogram("co2cast_estimate_flush_rows", "Rows published per flush.", ROWS),
            grid_intensity_published: IntCounter::new("co2cast_grid_intensity_published_rows_total", "Daily grid intensity rows published (new rows and revisions).").expect("valid metric definition"),
            grid_intensity_revised: IntCounter::new("co2cast_grid_intensity_revised_rows_total", "Published grid intensity rows that revise an earlier vintage.").expect("valid metric definition"),
            sql_query_duration: HistogramVec::new(HistogramOpts::new("co2cast_sql_query_duration_seconds", "Time to answer a SQL statement.").buckets(SECONDS_FAST.to_vec()), &["protocol"])
                .expect("valid metric definition"),
            sql_query_errors: counter("co2cast_sql_query_errors_total", "SQL statements answered with an error, by class.", &["class"]),
            sql_active_connections: IntGauge::new("co2cast_sql_active_connections", "SQL connections logged in.").expect("valid metric definition"),
            sql_refused_connections: counter("co2cast_sql_refused_connections_total", "SQL connections refused or closed before login.", &["reason"]),
        }
    }

    fn collectors(&self, role: Role) -> Vec<Box<dyn Collector>> {
        match role {
            Role::Processor => vec![
                Box::new(self.proxy_received.clone()),
                Box::new(self.proxy_accepted.clone()),
                Box::new(self.proxy_dead_lettered.clone()),
                Box::new(self.proxy_late.clone()),
                Box::new(self.proxy_revised.clone()),
                Box::new(self.consumer_lag.clone()),
                Box::new(self.consumer_assigned.clone()),
                Box::new(self.watermark_age.clone()),
                Box::new(self.proxy_coverage.clone()),
                Box::new(self.broker_errors.clone()),
                Box::new(self.broker_retries.clone()),
                Box::new(self.broker_up.clone()),
                Box::new(self.checkpoint_writes.clone()),
                Box::new(self.checkpoint_errors.clone()),
                Box::new(self.member_sums_dead_lettered.clone()),
                Box::new(self.lake_writer_rejected.clone()),
                Box::new(self.checkpoint_duration.clone()),
                Box::new(self.checkpoint_age.clone()),
                Box::new(self.estimate_published.clone()),
                Box::new(self.estimate_revised.clone()),
                Box::new(self.estimate_freshness.clone()),
                Box::new(self.estimate_reestimation_duration.clone()),
                Box::new(self.estimate_flush_rows.clone()),
                Box::new(self.grid_intensity_published.clone()),
                Box::new(self.grid_intensity_revised.clone()),
            ],
            Role::Sql => vec![
                Box::new(self.sql_query_duration.clone()),
                Box::new(self.sql_query_errors.clone()),
                Box::new(self.sql_active_connections.clone()),
                Box::new(self.sql_refused_connections.clone()),
            ],
        }
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics (counting works whether or not a role is enabled; only enabled
/// roles are exposed).
pub fn metrics() -> &'static Metrics {
    &METRICS
}

/// Exposes a role's metrics (idempotent), with the build information.
pub fn enable(role: Role, version: &str, model_version: &str) {
    let m = metrics();
    let mut done = m.registered.lock().unwrap_or_else(|e| e.into_inner());
    if done.is_empty() {
        m.build_info.with_label_values(&[version, model_version, env!("CO2CAST_GIT_REVISION")]).set(1.0);
        m.registry.register(Box::new(m.build_info.clone())).expect("registered once");
    }
    if done.contains(&role) {
        return;
    }
    for c in m.collectors(role) {
        m.registry.register(c).expect("metric names are unique");
    }
    done.push(role);
}

/// The Prometheus text exposition (format 0.0.4) of every enabled metric.
pub fn render() -> String {
    let families = metrics().registry.gather();
    TextEncoder::new().encode_to_string(&families).unwrap_or_else(|e| format!("# encoding failed: {e}\n"))
}

/// A gauge whose value is the time since a stored Unix timestamp, computed when scraped (an
/// age keeps growing while nothing updates it, which is what staleness alerts need).
#[derive(Clone)]
pub struct AgeGauge {
    desc: Desc,
    label: Option<&'static str>,
    stamps: std::sync::Arc<Mutex<BTreeMap<String, f64>>>,
}

impl AgeGauge {
    fn new(name: &str, help: &str, label: Option<&'static str>) -> AgeGauge {
        let labels = label.map(|l| vec![l.to_string()]).unwrap_or_default();
        AgeGauge {
            desc: Desc::new(name.into(), help.into(), labels, Default::default()).expect("valid metric definition"),
            label,
            stamps: Default::default(),
        }
    }

    /// Sets the reference time (Unix seconds) of a label value (`""` when unlabelled).
    pub fn set_since(&self, label_value: &str, unix_s: f64) {
        self.stamps.lock().unwrap_or_else(|e| e.into_inner()).insert(label_value.to_string(), unix_s);
    }

    /// The current age of a label value, if set.
    pub fn age(&self, label_value: &str) -> Option<f64> {
        let t = *self.stamps.lock().unwrap_or_else(|e| e.into_inner()).get(label_value)?;
        Some(crate::unix_now_s() - t)
    }
}

impl Collector for AgeGauge {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let now = crate::unix_now_s();
        let stamps = self.stamps.lock().unwrap_or_else(|e| e.into_inner());
        if stamps.is_empty() {
            return Vec::new();
        }
        let metrics = stamps
            .iter()
            .map(|(v, t)| {
                let mut g = GaugeProto::default();
                g.set_value(now - t);
                let mut m = Metric::from_gauge(g);
                if let Some(l) = self.label {
                    let mut pair = LabelPair::default();
                    pair.set_name(l.to_string());
                    pair.set_value(v.clone());
                    m.set_label(vec![pair]);
                }
                m
            })
            .collect();
        let mut family = MetricFamily::default();
        family.set_name(self.desc.fq_name.clone());
        family.set_help(self.desc.help.clone());
        family.set_field_type(MetricType::GAUGE);
        family.set_metric(metrics);
        vec![family]
    }
}
