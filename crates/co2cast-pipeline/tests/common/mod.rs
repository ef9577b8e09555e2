//! Helpers of the Kafka integration tests: the real sample, a broker under test (librdkafka's
//! mock cluster, or `CO2CAST_TEST_BROKERS`), producing, reading topics back, comparing runs.
#![allow(dead_code)]

use co2cast_data::Dataset;
use co2cast_pipeline::processor::header_map;
use co2cast_pipeline::replay::{ProxyRecord, produce_paced, records_from_dataset};
use co2cast_pipeline::{Processor, ProcessorConfig, TopicNames};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};

/// A small real sample: 2018 and 2019 proxies of five provinces plus the national series.
/// Heilongjiang's non-ferrous output has no 2018 values and resumes in January 2019, so the
/// status of its 2018 months (nowcast, then gap) depends on data of the next year.
pub fn sample() -> (Dataset, Vec<ProxyRecord>) {
    let data = co2cast_data::embedded().unwrap();
    let keep = ["CN-HE", "CN-BJ", "CN-GD", "CN-SC", "CN-HL", "/CN/"];
    let records: Vec<ProxyRecord> = records_from_dataset(&data, 2018..=2019, Some(2019))
        .into_iter()
        .filter(|r| keep.iter().any(|k| r.key.contains(k)))
        .collect();
    (data, records)
}

/// The broker under test, with topics of the test's own.
pub struct TestBroker {
    pub _cluster: Option<rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext>>,
    pub brokers: String,
    pub topics: TopicNames,
}

impl TestBroker {
    pub fn start(test: &str) -> TestBroker {
        match std::env::var("CO2CAST_TEST_BROKERS") {
            Ok(b) if !b.is_empty() => {
                let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
                let topics = TopicNames::with_suffix(&format!(".{test}-{nanos}"));
                co2cast_pipeline::embedded::create_topics(&b, &topics, co2cast_pipeline::embedded::PARTITIONS).unwrap();
                TestBroker { _cluster: None, brokers: b, topics }
            }
            _ => {
                let topics = TopicNames::default();
                let cluster = co2cast_pipeline::embedded::start_cluster_with(&topics).unwrap();
                TestBroker { brokers: cluster.bootstrap_servers(), _cluster: Some(cluster), topics }
            }
        }
    }
}

pub fn produce(b: &TestBroker, records: &[ProxyRecord]) {
    if b._cluster.is_none() {
        // tansu 0.6 returns nothing for a fetch that starts inside a produced batch (and
        // reports the batch count as the high watermark), so a restart at a checkpointed
        // offset would stall there: give it one message per batch.
        use rdkafka::producer::{BaseProducer, Producer};
        let p: BaseProducer =
            ClientConfig::new().set("bootstrap.servers", &b.brokers).set("linger.ms", "0").set("batch.num.messages", "1").create().unwrap();
        let mut counts = co2cast_pipeline::replay::PartitionCounts::default();
        for r in records {
            co2cast_pipeline::replay::send_partitioned(&p, &mut counts, b.topics.proxy(r.topic), &r.key, r.payload.as_bytes()).unwrap();
        }
        p.flush(std::time::Duration::from_secs(60)).unwrap();
        return;
    }
    produce_paced(&b.brokers, &b.topics, records, u64::MAX, None, Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false))).unwrap();
}

pub fn raw(b: &TestBroker, topic: &str, key: &str, payload: &[u8]) {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let p: BaseProducer = ClientConfig::new().set("bootstrap.servers", &b.brokers).create().unwrap();
    p.send(BaseRecord::to(topic).key(key).payload(payload)).unwrap();
    p.flush(std::time::Duration::from_secs(10)).unwrap();
}

pub fn config(b: &TestBroker, dir: &std::path::Path) -> ProcessorConfig {
    ProcessorConfig {
        brokers: b.brokers.clone(),
        topics: b.topics.clone(),
        checkpoint_dir: dir.to_path_buf(),
        checkpoint_every_messages: 1_500,
        idle_after_ms: 800,
        ensemble_members: 60,
        // The mock broker keeps a bounded log: estimate only the sample's provinces.
        provinces: Some(vec!["CN-HE".into(), "CN-BJ".into(), "CN-GD".into(), "CN-SC".into(), "CN-HL".into()]),
        ..ProcessorConfig::default()
    }
}

/// Every message of a topic, in partition order.
pub fn read_all(b: &TestBroker, topic: &str) -> Vec<(Option<Vec<u8>>, Vec<u8>, BTreeMap<String, String>)> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &b.brokers)
        .set("group.id", "test-reader")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let md = c.fetch_metadata(Some(topic), std::time::Duration::from_secs(5)).unwrap();
    let mut tpl = TopicPartitionList::new();
    let mut ends = BTreeMap::new();
    for p in md.topics()[0].partitions() {
        let (low, high) = c.fetch_watermarks(topic, p.id(), std::time::Duration::from_secs(5)).unwrap();
        // The mock broker drops the oldest messages beyond its log cap; the tests keep
        // volumes below it, and this assertion says so if they ever do not.
        assert_eq!(low, 0, "{topic}/{}: the broker dropped {low} messages (log cap)", p.id());
        tpl.add_partition_offset(topic, p.id(), Offset::Beginning).unwrap();
        ends.insert(p.id(), high - low);
    }
    c.assign(&tpl).unwrap();
    let total: i64 = ends.values().sum();
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    // Up to the high watermarks, then on until quiet (some brokers under-report watermarks).
    let mut quiet_since = std::time::Instant::now();
    while std::time::Instant::now() < deadline
        && ((out.len() as i64) < total || quiet_since.elapsed() < std::time::Duration::from_millis(400))
    {
        if let Some(Ok(m)) = c.poll(std::time::Duration::from_millis(50)) {
            let headers = m.headers().map(header_map).unwrap_or_default();
            out.push((m.key().map(|k| k.to_vec()), m.payload().unwrap_or(&[]).to_vec(), headers));
            quiet_since = std::time::Instant::now();
        }
    }
    assert!(out.len() as i64 >= total, "could not read all of {topic}");
    out
}

/// Latest revision of every estimate key, as JSON values without volatile fields.
pub fn estimates(b: &TestBroker) -> Vec<(Option<Vec<u8>>, Vec<u8>, BTreeMap<String, String>)> {
    read_all(b, &b.topics.estimates_daily)
}

pub fn latest_estimates(b: &TestBroker) -> BTreeMap<String, serde_json::Value> {
    let mut latest: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    for (k, v, _) in estimates(b) {
        let key = String::from_utf8(k.unwrap()).unwrap();
        let row: serde_json::Value = serde_json::from_slice(&v).unwrap();
        let rev = row["revision"].as_u64().unwrap();
        if latest.get(&key).is_none_or(|old| old["revision"].as_u64().unwrap() <= rev) {
            latest.insert(key, row);
        }
    }
    // Revision numbers depend on how often a run re-estimated; values must not.
    for v in latest.values_mut() {
        v["revision"] = serde_json::Value::Null;
        // When a vintage was computed is wall-clock time; what it says must not differ.
        v["computed_at"] = serde_json::Value::Null;
    }
    latest
}

/// The newest message of every estimate key (a key's messages share a partition, read in
/// order): with several members, a province that changed members is published again by the
/// new one, whose revision count is its own.
pub fn newest_estimates(b: &TestBroker) -> BTreeMap<String, serde_json::Value> {
    let mut newest: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    for (k, v, _) in estimates(b) {
        let mut row: serde_json::Value = serde_json::from_slice(&v).unwrap();
        row["revision"] = serde_json::Value::Null;
        row["computed_at"] = serde_json::Value::Null;
        newest.insert(String::from_utf8(k.unwrap()).unwrap(), row);
    }
    newest
}

pub fn run_to_idle(cfg: ProcessorConfig, data: &Dataset) -> co2cast_pipeline::RunSummary {
    let mut p = Processor::new(cfg, data.clone()).unwrap();
    p.run(Arc::new(AtomicBool::new(false)), true, |_| {}).unwrap()
}

/// Identical estimates: same keys, same strings, numbers equal to the publication tolerance
/// (a recomputation that differs by less is not a new revision, by design).
pub fn assert_same_estimates(a: &BTreeMap<String, serde_json::Value>, b: &BTreeMap<String, serde_json::Value>) {
    assert_eq!(a.len(), b.len(), "different sets of estimate keys");
    for (k, v) in a {
        let w = b.get(k).unwrap_or_else(|| panic!("{k} missing"));
        for (field, x) in v.as_object().unwrap() {
            let y = &w[field];
            match (x.as_f64(), y.as_f64()) {
                (Some(x), Some(y)) => assert!((x - y).abs() <= 1e-9 * x.abs().max(y.abs()), "{k}.{field}: {x} vs {y}"),
                _ => assert_eq!(x, y, "{k}.{field}"),
            }
        }
    }
}

pub fn tempdir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("co2cast-test-{name}-{}-{:?}", std::process::id(), std::thread::current().id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}
