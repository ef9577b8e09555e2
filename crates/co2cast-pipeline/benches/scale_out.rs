//! The scaled-out pipeline: throughput of the province stage with 1, 2 and 3 members on one
//! broker, beside the re-estimation cost of one province-year (the batch estimator's work,
//! measured in the same run), and the produce-to-publish latency of national rows with three
//! province members and the national stage at 10× the real-time rate.
//!
//! Throughput: the real sample (2018–2019, 31 provinces, daily thermal generation for 2019)
//! is produced, partitioned by province, to members that joined their group first (flushing on
//! quiet input or a maximum delay only, so that every configuration flushes alike); the time
//! runs from the first message produced to the end of the last flush (re-estimation,
//! publication and checkpoint), once every member has read its partitions and the national
//! ones and stayed quiet for 2 s. Members run as threads of this process: on this 2-core
//! machine they share two cores, which bounds what a third member can add.
//!
//! Prints one JSON line per measurement. Settings: `CO2CAST_BENCH_BROKERS` (a running broker,
//! e.g. tansu, with topics created per round; default an in-process mock cluster per round),
//! `CO2CAST_SCALE_MEMBERS` (default `1,2,3`), `CO2CAST_LATENCY_SAMPLES` (default 40; 0 skips
//! the latency part).
//!
//! Run: `cargo bench -p co2cast-pipeline --bench scale_out`.

use co2cast_model::calendar::{DayFactorTable, HolidayCalendar};
use co2cast_model::calibration::{ModelConfig, calibrate};
use co2cast_model::domain::{Province, Sector};
use co2cast_model::estimate::{EnsembleSettings, Estimator};
use co2cast_model::series::YearMonth;
use co2cast_pipeline::national_stage::NationalStage;
use co2cast_pipeline::replay::{PartitionCounts, ProxyRecord, records_from_dataset, send_partitioned};
use co2cast_pipeline::role::Role;
use co2cast_pipeline::{Processor, ProcessorConfig, TopicNames};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const REAL_TIME_MESSAGES_PER_HOUR: f64 = 31.0 * 6.0;
const MEMBERS: usize = 200;

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[(((sorted.len() as f64 - 1.0) * q).ceil() as usize).min(sorted.len() - 1)]
}

/// The batch estimator's cost of one province-year: calibration once, then every sector of
/// every province for 2019 with `MEMBERS` members; milliseconds per province.
fn reestimation_ms_per_province_year(data: &co2cast_data::Dataset) -> (f64, usize) {
    let base = 2017;
    let cfg = ModelConfig::default();
    let cal = calibrate(&data.inventory, &data.proxies, base, 2, &cfg).unwrap();
    let base_inv = data.inventory.up_to(base);
    let (hc, df) = (HolidayCalendar::official(), DayFactorTable::bundled());
    let est = Estimator { calibration: &cal, inventory: &base_inv, proxies: &data.proxies, calendar: &hc, day_factors: &df };
    let months: Vec<YearMonth> = (1..=12).map(|m| YearMonth::new(2019, m)).collect();
    let settings = EnsembleSettings { members: MEMBERS, seed: 20_190_101 };
    let t = Instant::now();
    let mut provinces = 0;
    for p in Province::ALL {
        let rows = Sector::ALL.iter().filter_map(|s| est.row(p, *s, &months, settings)).count();
        provinces += usize::from(rows > 0);
    }
    (t.elapsed().as_secs_f64() * 1e3 / provinces.max(1) as f64, provinces)
}

struct Round {
    _cluster: Option<rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext>>,
    brokers: String,
    topics: TopicNames,
}

fn round(name: &str) -> Round {
    match std::env::var("CO2CAST_BENCH_BROKERS") {
        Ok(b) if !b.is_empty() => {
            let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
            let topics = TopicNames::with_suffix(&format!(".{name}-{nanos}"));
            co2cast_pipeline::embedded::create_topics(&b, &topics, 8).unwrap();
            Round { _cluster: None, brokers: b, topics }
        }
        _ => {
            let topics = TopicNames::default();
            let cluster = co2cast_pipeline::embedded::start_cluster_with(&topics).unwrap();
            Round { brokers: cluster.bootstrap_servers(), _cluster: Some(cluster), topics }
        }
    }
}

fn produce(r: &Round, records: &[ProxyRecord]) {
    let p: BaseProducer = ClientConfig::new().set("bootstrap.servers", &r.brokers).set("linger.ms", "5").create().unwrap();
    let mut counts = PartitionCounts::default();
    for rec in records {
        send_partitioned(&p, &mut counts, r.topics.proxy(rec.topic), &rec.key, rec.payload.as_bytes()).unwrap();
        p.poll(Duration::ZERO);
    }
    p.flush(Duration::from_secs(60)).unwrap();
}

/// Province members running in threads; per member, when its last flush ended and the
/// messages received up to it.
struct Members {
    stop: Arc<AtomicBool>,
    received: Vec<Arc<AtomicU64>>,
    flushed: Vec<Arc<Mutex<(Instant, u64)>>>,
    threads: Vec<std::thread::JoinHandle<co2cast_pipeline::RunSummary>>,
    dirs: Vec<std::path::PathBuf>,
}

fn start_members(r: &Round, n: usize, data: &co2cast_data::Dataset) -> Members {
    let stop = Arc::new(AtomicBool::new(false));
    let mut m = Members { stop: stop.clone(), received: Vec::new(), flushed: Vec::new(), threads: Vec::new(), dirs: Vec::new() };
    for i in 0..n {
        let dir = std::env::temp_dir().join(format!("co2cast-scale-{}-{n}-{i}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let cfg = ProcessorConfig {
            brokers: r.brokers.clone(),
            topics: r.topics.clone(),
            group_id: format!("scale-{n}"),
            checkpoint_dir: dir.clone(),
            role: Role::Province,
            ensemble_members: MEMBERS,
            // The same flush policy whatever a member's share: re-estimate when input is quiet
            // or has waited `max_flush_delay_ms`, never because a share passed a count (one
            // member's 22,846 messages would pass 20,000 once, two members' shares would not).
            checkpoint_every_messages: 1_000_000,
            ..ProcessorConfig::default()
        };
        let received = Arc::new(AtomicU64::new(0));
        let flushed = Arc::new(Mutex::new((Instant::now(), 0)));
        let (data, stop, f, rc) = (data.clone(), stop.clone(), flushed.clone(), received.clone());
        m.threads.push(std::thread::spawn(move || {
            let mut p = Processor::new(cfg, data).unwrap().with_received_counter(rc);
            p.run(stop, false, |c| *f.lock().unwrap() = (Instant::now(), c.received)).unwrap()
        }));
        m.flushed.push(flushed);
        m.received.push(received);
        m.dirs.push(dir);
    }
    m
}

impl Members {
    fn received(&self) -> u64 {
        self.received.iter().map(|r| r.load(Ordering::Relaxed)).sum()
    }

    /// Waits until `expected` messages are in and no flush has ended for `quiet`; returns when
    /// the last one ended.
    fn settle(&self, expected: u64, quiet: Duration) -> Instant {
        let t = Instant::now();
        while self.received() < expected {
            assert!(t.elapsed() < Duration::from_secs(900), "members read {} of {expected}", self.received());
            std::thread::sleep(Duration::from_millis(20));
        }
        // Until the flushes have covered every message and none has ended for `quiet`.
        loop {
            let flushed: Vec<(Instant, u64)> = self.flushed.iter().map(|f| *f.lock().unwrap()).collect();
            let last = flushed.iter().map(|f| f.0).max().expect("members");
            if flushed.iter().map(|f| f.1).sum::<u64>() >= expected && last.elapsed() >= quiet {
                return last;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(self) -> Vec<co2cast_pipeline::RunSummary> {
        self.stop.store(true, Ordering::Relaxed);
        let s = self.threads.into_iter().map(|t| t.join().unwrap()).collect();
        for d in self.dirs {
            let _ = std::fs::remove_dir_all(d);
        }
        s
    }
}

/// Reads the estimates topic: (key, arrival) of every message.
fn reader(brokers: String, topic: String, stop: Arc<AtomicBool>, seen: Arc<Mutex<Vec<(String, Instant)>>>) {
    let c: BaseConsumer = ClientConfig::new().set("bootstrap.servers", &brokers).set("group.id", "scale-reader").set("fetch.wait.max.ms", "5").create().unwrap();
    let md = c.fetch_metadata(Some(&topic), Duration::from_secs(5)).unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in md.topics()[0].partitions() {
        tpl.add_partition_offset(&topic, p.id(), Offset::Beginning).unwrap();
    }
    c.assign(&tpl).unwrap();
    while !stop.load(Ordering::Relaxed) {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(20)) {
            let key = String::from_utf8_lossy(m.key().unwrap_or(&[])).to_string();
            seen.lock().unwrap().push((key, Instant::now()));
        }
    }
}

fn main() {
    let counts: Vec<usize> = std::env::var("CO2CAST_SCALE_MEMBERS").unwrap_or_else(|_| "1,2,3".into()).split(',').filter_map(|s| s.trim().parse().ok()).collect();
    let samples: usize = std::env::var("CO2CAST_LATENCY_SAMPLES").ok().and_then(|s| s.parse().ok()).unwrap_or(40);
    let data = co2cast_data::embedded().unwrap();
    let records = records_from_dataset(&data, 2018..=2019, Some(2019));
    let national = records.iter().filter(|r| co2cast_pipeline::partitioner::key_scope(&r.key) == Some(co2cast_model::proxy::Scope::National)).count() as u64;
    let (cost_ms, provinces) = reestimation_ms_per_province_year(&data);
    println!("{{\"bench\":\"reestimation_cost\",\"ensemble_members\":{MEMBERS},\"provinces\":{provinces},\"ms_per_province_year\":{cost_ms:.1}}}");
    let mut one_member: Option<f64> = None;
    for &n in &counts {
        let r = round(&format!("scale{n}"));
        let members = start_members(&r, n, &data);
        let national_stage = (n == 3 && samples > 0).then(|| {
            // The national stage runs beside the members from the start, as deployed: the
            // development broker keeps a bounded log, so it could not rebuild later.
            let stop = Arc::new(AtomicBool::new(false));
            let seen = Arc::new(Mutex::new(Vec::new()));
            let read = {
                let (b, t, s, seen) = (r.brokers.clone(), r.topics.estimates_daily.clone(), stop.clone(), seen.clone());
                std::thread::spawn(move || reader(b, t, s, seen))
            };
            let ndir = std::env::temp_dir().join(format!("co2cast-scale-national-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&ndir);
            let ncfg = ProcessorConfig {
                brokers: r.brokers.clone(),
                topics: r.topics.clone(),
                group_id: "scale-3".into(),
                checkpoint_dir: ndir.clone(),
                role: Role::National,
                ensemble_members: MEMBERS,
                ..ProcessorConfig::default()
            };
            let national_thread = {
                let (data, stop) = (data.clone(), stop.clone());
                std::thread::spawn(move || NationalStage::new(ncfg, data).unwrap().run(stop, false).unwrap())
            };
            (stop, seen, read, national_thread, ndir)
        });
        // Let the group settle before the input arrives (a member that joins later moves
        // provinces mid-run, and the round then measures a rebalance too).
        std::thread::sleep(Duration::from_secs(10));
        let t0 = Instant::now();
        produce(&r, &records);
        // Every member reads the national series itself; the holder of partition 0 twice.
        let end = members.settle(records.len() as u64 + n as u64 * national, Duration::from_secs(2));
        let secs = (end - t0).as_secs_f64();
        let rate = records.len() as f64 / secs;
        let ratio = one_member.map_or(1.0, |one| rate / one);
        if n == 1 {
            one_member = Some(rate);
        }
        let Some((stop, seen, read, national_thread, ndir)) = national_stage else {
            let summaries = members.stop();
            let published: u64 = summaries.iter().map(|s| s.counters.estimates_published).sum();
            println!(
                "{{\"bench\":\"province_stage_throughput\",\"members\":{n},\"messages\":{},\"seconds\":{secs:.2},\"messages_per_s\":{rate:.0},\"messages_per_s_per_member\":{:.0},\"ratio_to_one_member\":{ratio:.2},\"rows_published\":{published}}}",
                records.len(),
                rate / n as f64
            );
            continue;
        };
        println!(
            "{{\"bench\":\"province_stage_throughput\",\"members\":{n},\"national_stage_beside\":true,\"messages\":{},\"seconds\":{secs:.2},\"messages_per_s\":{rate:.0},\"messages_per_s_per_member\":{:.0},\"ratio_to_one_member\":{ratio:.2}}}",
            records.len(),
            rate / n as f64
        );
        // Then revised daily thermal generation arrives at 10× the real-time rate, once the
        // national rows have settled.
        loop {
            let n = seen.lock().unwrap().iter().filter(|(k, _)| k.starts_with("CN/all/")).count();
            std::thread::sleep(Duration::from_secs(3));
            if n > 0 && seen.lock().unwrap().iter().filter(|(k, _)| k.starts_with("CN/all/")).count() == n {
                break;
            }
        }
        // Tibet has no estimate (no inventory): its generation moves no national row.
        let daily: Vec<&ProxyRecord> = records
            .iter()
            .filter(|r| r.key.starts_with("power.generation/") && r.key.contains("/2019-12-") && r.payload.contains("\"day\"") && !r.key.contains("/CN-XZ/"))
            .collect();
        let producer: BaseProducer = ClientConfig::new().set("bootstrap.servers", &r.brokers).set("linger.ms", "0").create().unwrap();
        let mut pc = PartitionCounts::default();
        let interval = Duration::from_secs_f64(3600.0 / (REAL_TIME_MESSAGES_PER_HOUR * 10.0));
        let mut sent: Vec<(String, Instant)> = Vec::new();
        let start = Instant::now();
        for i in 0..samples {
            let rec = daily[(i * 37) % daily.len()];
            let mut v: serde_json::Value = serde_json::from_str(&rec.payload).unwrap();
            v["revision"] = (1_000 + i as u64).into();
            v["value"] = (v["value"].as_f64().unwrap() * (1.0 + 0.001 * (1 + i % 50) as f64)).into();
            if let Some(d) = (start + interval * i as u32).checked_duration_since(Instant::now()) {
                std::thread::sleep(d);
            }
            let day = &rec.key.split('/').nth(2).unwrap()[..10];
            sent.push((format!("CN/all/{day}"), Instant::now()));
            send_partitioned(&producer, &mut pc, r.topics.proxy(rec.topic), &rec.key, v.to_string().as_bytes()).unwrap();
            producer.poll(Duration::ZERO);
        }
        producer.flush(Duration::from_secs(10)).unwrap();
        std::thread::sleep(Duration::from_secs(5));
        let mut lat: Vec<f64> = {
            let seen = seen.lock().unwrap();
            sent.iter().filter_map(|(k, t0)| seen.iter().find(|(key, at)| key == k && at > t0).map(|(_, at)| (*at - *t0).as_secs_f64() * 1e3)).collect()
        };
        eprintln!("national latencies in sending order (ms): {:?}", lat.iter().map(|x| x.round()).collect::<Vec<_>>());
        lat.sort_by(|a, b| a.total_cmp(b));
        println!(
            "{{\"bench\":\"national_produce_to_publish_latency\",\"province_members\":3,\"speedup\":10,\"messages_per_s\":{:.3},\"sent\":{},\"answered\":{},\"p50_ms\":{:.1},\"p95_ms\":{:.1},\"p99_ms\":{:.1},\"max_ms\":{:.1},\"target_p99_ms\":1000}}",
            1.0 / interval.as_secs_f64(),
            sent.len(),
            lat.len(),
            percentile(&lat, 0.5),
            percentile(&lat, 0.95),
            percentile(&lat, 0.99),
            lat.last().copied().unwrap_or(f64::NAN)
        );
        stop.store(true, Ordering::Relaxed);
        let _ = national_thread.join();
        let _ = read.join();
        members.stop();
        let _ = std::fs::remove_dir_all(&ndir);
    }
}
