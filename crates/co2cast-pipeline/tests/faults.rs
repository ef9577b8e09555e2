//! Faults operators see every week, injected into a three-broker mock cluster while the
//! processor runs: every broker down for several seconds, partition leaders moving, requests
//! failing with retriable errors and timing out. The processor must ride through them (retry
//! with backoff, count them, report the outage), and end with exactly the estimates and
//! accounting of a fault-free run: nothing lost, nothing doubled.

mod common;

use co2cast_pipeline::{Processor, ProcessorConfig, TopicNames};
use common::*;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

fn wait_until(what: &str, limit: Duration, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn fingerprints(dir: &std::path::Path) -> BTreeMap<String, co2cast_pipeline::estimates::Fingerprint> {
    let ckpt = co2cast_pipeline::checkpoint::Checkpoint::load(dir).unwrap().unwrap();
    ckpt.published.rows.into_iter().map(|(k, (_, fp))| (k, fp)).collect()
}

/// A broker counter summed over its operations.
fn over_operations(counter: impl Fn(&co2cast_metrics::registry::Metrics, &str) -> u64) -> u64 {
    let m = co2cast_metrics::metrics();
    co2cast_pipeline::processor::BROKER_OPERATIONS.iter().map(|op| counter(m, op)).sum()
}

fn broker_errors() -> u64 {
    over_operations(|m, op| m.broker_errors.with_label_values(&[op]).get())
}

fn broker_retries() -> u64 {
    over_operations(|m, op| m.broker_retries.with_label_values(&[op]).get())
}

#[test]
fn an_outage_leader_moves_and_failing_requests_lose_and_double_nothing() {
    let (data, records) = sample();
    let fault_free = {
        let broker = TestBroker::start("t");
        produce(&broker, &records);
        let dir = tempdir("fault-free");
        let s = run_to_idle(ProcessorConfig { checkpoint_every_messages: 400, ..config(&broker, &dir) }, &data);
        (s.counters, latest_estimates(&broker), fingerprints(&dir))
    };

    let topics = TopicNames::default();
    let cluster = co2cast_pipeline::embedded::start_cluster_of(3, &topics).unwrap();
    let broker = TestBroker { brokers: cluster.bootstrap_servers(), _cluster: None, topics };
    produce(&broker, &records);
    let dir = tempdir("faults");
    let cfg = ProcessorConfig { checkpoint_every_messages: 400, broker_retry_max_backoff_ms: 1_000, ..config(&broker, &dir) };
    let received = Arc::new(AtomicU64::new(0));
    let flushes = Arc::new(AtomicU64::new(0));
    let errors_before = broker_errors();
    let worker = {
        let (data, received, flushes) = (data.clone(), received.clone(), flushes.clone());
        std::thread::spawn(move || {
            let mut p = Processor::new(cfg, data).unwrap().with_received_counter(received);
            p.run(Arc::new(AtomicBool::new(false)), true, move |_| {
                flushes.fetch_add(1, Ordering::Relaxed);
            })
        })
    };

    // 1. Every broker down for 12 s (longer than a flush waits for its deliveries), once the processor is consuming: fetches, watermark
    //    queries and the flush's deliveries fail until they come back.
    wait_until("the first messages", Duration::from_secs(60), || received.load(Ordering::Relaxed) > 0);
    cluster.broker_down(-1).unwrap();
    let down_at = received.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_secs(12));
    assert!(!worker.is_finished(), "the processor ended during the outage");
    assert_eq!(co2cast_metrics::metrics().broker_up.get(), 0, "the outage is reported");
    let up_before = co2cast_metrics::metrics().broker_up.get();
    cluster.broker_up(-1).unwrap();
    assert!(received.load(Ordering::Relaxed) < records.len() as u64, "the outage must come before the end (received {down_at} at its start)");

    // 2. Leaders move while it goes on, and produce and fetch requests fail with retriable
    //    errors and time out.
    wait_until("progress after the outage", Duration::from_secs(60), || flushes.load(Ordering::Relaxed) >= 2);
    use co2cast_pipeline::embedded::{ESTIMATE_PARTITIONS, PARTITIONS};
    let partitioned = broker.topics.proxies().into_iter().map(|t| (t.to_string(), PARTITIONS)).chain([(broker.topics.estimates_daily.clone(), ESTIMATE_PARTITIONS)]);
    for (t, n) in partitioned {
        for p in 0..n {
            cluster.partition_leader(&t, p, Some(1 + (p + 1) % 3)).unwrap();
        }
    }
    let retriable = [
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE,
        RDKafkaRespErr::RD_KAFKA_RESP_ERR__TRANSPORT,
    ];
    cluster.request_errors(RDKafkaApiKey::Produce, &retriable);
    cluster.request_errors(RDKafkaApiKey::Fetch, &retriable);
    cluster.request_errors(RDKafkaApiKey::ListOffsets, &retriable[..2]);

    let summary = worker.join().unwrap().expect("the processor rides through broker faults");
    assert_eq!(up_before, 0);
    let m = co2cast_metrics::metrics();
    assert_eq!(m.broker_up.get(), 1, "the recovery is reported");
    assert!(broker_errors() > errors_before, "broker errors are counted");
    assert!(broker_retries() > 0, "retries are counted");

    // Nothing lost, nothing doubled: the same accounting, and the same estimates, row by row
    // and fingerprint by fingerprint, as without faults.
    let (counters, expected, prints) = fault_free;
    assert_eq!(summary.counters.received, records.len() as u64);
    assert_eq!(summary.counters.received, counters.received);
    assert_eq!(summary.counters.accepted, counters.accepted);
    assert_eq!(summary.counters.dead_lettered, counters.dead_lettered);
    assert_same_estimates(&expected, &latest_estimates(&broker));
    assert_eq!(prints, fingerprints(&dir));
    // Each (key, revision) published once, though deliveries were retried.
    let mut seen = BTreeSet::new();
    for (k, v, _) in estimates(&broker) {
        let row: serde_json::Value = serde_json::from_slice(&v).unwrap();
        let id = (k.unwrap(), row["revision"].as_u64().unwrap());
        assert!(seen.insert(id.clone()), "{:?} revision {} published twice", String::from_utf8_lossy(&id.0), id.1);
    }
    drop(cluster);
}
