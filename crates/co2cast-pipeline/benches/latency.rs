//! Produce-to-publish latency at multiples of the real-time input rate.
//!
//! The processor first takes in the bundled real sample (2018–2019, 31 provinces) and
//! publishes its estimates. Then revised daily thermal-generation values arrive at
//! `speedup` × the real-time rate of a complete hourly feed (31 provinces × 5 fuels of
//! generation + 1 mobility index = 186 messages per hour). For each message the latency is
//! from just before it is produced to when a reader of `co2cast.estimates.daily` receives the
//! new revision of that province's power estimate for that day.
//!
//! Prints one JSON line per speed-up. Settings: `CO2CAST_LATENCY_SPEEDUPS` (default
//! `10,100`), `CO2CAST_LATENCY_SAMPLES` (per speed-up, default 40).
//!
//! Run: `cargo bench -p co2cast-pipeline --bench latency`.

use co2cast_model::domain::Province;
use co2cast_pipeline::replay::{produce_paced, records_from_dataset};
use co2cast_pipeline::{Processor, ProcessorConfig, TopicNames};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const REAL_TIME_MESSAGES_PER_HOUR: f64 = 31.0 * 6.0;

/// Reads the estimates topic; reports (key, revision, arrival) of every message.
fn estimate_reader(brokers: &str, topic: &str, stop: Arc<AtomicBool>, seen: Arc<Mutex<Vec<(String, u64, Instant)>>>) {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "latency-reader")
        .set("fetch.wait.max.ms", "5")
        .create()
        .unwrap();
    let md = c.fetch_metadata(Some(topic), Duration::from_secs(5)).unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in md.topics()[0].partitions() {
        tpl.add_partition_offset(topic, p.id(), Offset::Beginning).unwrap();
    }
    c.assign(&tpl).unwrap();
    while !stop.load(Ordering::Relaxed) {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(20)) {
            let now = Instant::now();
            let key = String::from_utf8_lossy(m.key().unwrap_or(&[])).to_string();
            let v: serde_json::Value = serde_json::from_slice(m.payload().unwrap_or(b"{}")).unwrap_or_default();
            let rev = v["revision"].as_u64().unwrap_or(0);
            seen.lock().unwrap().push((key, rev, now));
        }
    }
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).ceil() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() {
    let speedups: Vec<f64> = std::env::var("CO2CAST_LATENCY_SPEEDUPS")
        .unwrap_or_else(|_| "10,100".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let samples: usize = std::env::var("CO2CAST_LATENCY_SAMPLES").ok().and_then(|s| s.parse().ok()).unwrap_or(40);
    let topics = TopicNames::default();
    let cluster = co2cast_pipeline::embedded::start_cluster_with(&topics).unwrap();
    let brokers = cluster.bootstrap_servers();
    let history = co2cast_data::embedded().unwrap();
    let records = records_from_dataset(&history, 2018..=2019, Some(2019));
    let dir = std::env::temp_dir().join(format!("co2cast-latency-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cfg = ProcessorConfig { brokers: brokers.clone(), checkpoint_dir: dir.clone(), topics: topics.clone(), ..Default::default() };

    let stop = Arc::new(AtomicBool::new(false));
    let consumed = Arc::new(AtomicU64::new(0));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let reader = {
        let (b, t, s, seen) = (brokers.clone(), topics.estimates_daily.clone(), stop.clone(), seen.clone());
        std::thread::spawn(move || estimate_reader(&b, &t, s, seen))
    };
    let processor = {
        let (stop, consumed) = (stop.clone(), consumed.clone());
        std::thread::spawn(move || {
            let mut p = Processor::new(cfg, history).unwrap().with_received_counter(consumed);
            p.run(stop, false, |_| {}).unwrap()
        })
    };
    // Warm-up: the real sample, paced by the consumer (the mock broker's log is capped).
    let t = Instant::now();
    produce_paced(&brokers, &topics, &records, 2_000, Some(consumed.clone()), Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)))
        .unwrap();
    while consumed.load(Ordering::Relaxed) < records.len() as u64 {
        std::thread::sleep(Duration::from_millis(50));
    }
    // Until the estimates have settled.
    loop {
        let n = seen.lock().unwrap().len();
        std::thread::sleep(Duration::from_secs(3));
        if seen.lock().unwrap().len() == n && n > 0 {
            break;
        }
    }
    eprintln!("warm-up: {} messages, {} estimate rows, {:.1} s", records.len(), seen.lock().unwrap().len(), t.elapsed().as_secs_f64());

    // Daily thermal generation of December 2019, the message each revision rewrites.
    let daily: HashMap<String, &co2cast_pipeline::replay::ProxyRecord> = records
        .iter()
        .filter(|r| r.key.starts_with("power.generation/") && r.key.contains("/2019-12-") && r.payload.contains("\"day\""))
        .map(|r| (r.key.clone(), r))
        .collect();
    let provinces: Vec<Province> = Province::ALL.into_iter().filter(|p| *p != Province::Tibet).collect();
    let producer: BaseProducer = ClientConfig::new().set("bootstrap.servers", &brokers).set("linger.ms", "0").create().unwrap();
    let mut revision = 1_000u64;
    for speedup in speedups {
        let interval = Duration::from_secs_f64(3600.0 / (REAL_TIME_MESSAGES_PER_HOUR * speedup));
        let mut sent: Vec<(String, Instant)> = Vec::new();
        let start = Instant::now();
        for i in 0..samples {
            let p = provinces[i % provinces.len()];
            let day = 1 + (i / provinces.len()) % 28;
            let Some(rec) = daily
                .iter()
                .find(|(k, _)| k.contains(&format!("/{}/", p.iso_code())) && k.contains(&format!("2019-12-{day:02}T")))
                .map(|(_, r)| *r)
            else {
                continue;
            };
            let mut v: serde_json::Value = serde_json::from_str(&rec.payload).unwrap();
            revision += 1;
            v["revision"] = revision.into();
            v["value"] = (v["value"].as_f64().unwrap() * (1.0 + 0.001 * (revision % 50) as f64)).into();
            let target = start + interval * i as u32;
            if let Some(d) = target.checked_duration_since(Instant::now()) {
                std::thread::sleep(d);
            }
            let estimate_key = format!("{}/power/2019-12-{day:02}", p.iso_code());
            sent.push((estimate_key, Instant::now()));
            producer.send(BaseRecord::to(topics.proxy(rec.topic)).key(&rec.key).payload(&v.to_string())).unwrap();
            producer.poll(Duration::ZERO);
        }
        producer.flush(Duration::from_secs(10)).unwrap();
        std::thread::sleep(Duration::from_secs(3));
        // The first arrival of the key after each send.
        let seen = seen.lock().unwrap();
        let mut lat: Vec<f64> = sent
            .iter()
            .filter_map(|(k, t0)| seen.iter().find(|(key, _, at)| key == k && at > t0).map(|(_, _, at)| (*at - *t0).as_secs_f64() * 1e3))
            .collect();
        lat.sort_by(|a, b| a.total_cmp(b));
        println!(
            "{{\"bench\":\"produce_to_publish_latency\",\"speedup\":{speedup},\"messages_per_s\":{:.3},\"sent\":{},\"answered\":{},\"p50_ms\":{:.1},\"p95_ms\":{:.1},\"p99_ms\":{:.1},\"max_ms\":{:.1},\"target_p99_ms\":1000}}",
            1.0 / interval.as_secs_f64(),
            sent.len(),
            lat.len(),
            percentile(&lat, 0.5),
            percentile(&lat, 0.95),
            percentile(&lat, 0.99),
            lat.last().copied().unwrap_or(f64::NAN)
        );
    }
    stop.store(true, Ordering::Relaxed);
    let _ = processor.join();
    let _ = reader.join();
    let _ = std::fs::remove_dir_all(&dir);
    drop(cluster);
}
